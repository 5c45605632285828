"""ON: binary-cosine math against numpy loops, layer windows, and capture through a backbone."""

import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptransfer.backbones.base import Backbone, batched_prompt
from ptransfer.core.errors import ConfigError
from ptransfer.indicators import neurons


def np_on(act_a, act_b, threshold=0.0):
    """Cosine of binarized activation vectors, by counting."""
    a = [float(v) > threshold for v in np.asarray(act_a).reshape(-1)]
    b = [float(v) > threshold for v in np.asarray(act_b).reshape(-1)]
    both = sum(1 for x, y in zip(a, b) if x and y)
    na, nb = sum(a), sum(b)
    return 0.0 if na == 0 or nb == 0 else both / np.sqrt(na * nb)


# ---- math on random activations ---------------------------------------------

@pytest.fixture(scope="module")
def acts():
    rng = np.random.default_rng(1)
    return rng.normal(size=(4, 7, 2, 3, 6)).astype(np.float32)  # [K, N, B, S, F]


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_on_matrix_equals_numpy_counting(acts, threshold):
    masks = neurons.NeuronMasks(neurons.binarize(acts, threshold), "toy")
    got = neurons.on_matrix(masks)
    want = np.array([[np_on(acts[i], acts[j], threshold) for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(np.diag(got), 1.0)
    # per-window ON uses only the window's layers
    by_window = neurons.on_by_window(masks, size=3)
    assert list(by_window) == [(0, 3), (3, 6), (6, 7)]
    for (lo, hi), m in by_window.items():
        want_w = np.array([[np_on(acts[i, lo:hi], acts[j, lo:hi], threshold) for j in range(4)]
                           for i in range(4)])
        np.testing.assert_allclose(m, want_w, rtol=1e-12)


def test_binary_cosine_single_pair_and_empty_sets(acts):
    a, b = acts[0] > 0, acts[1] > 0
    assert neurons.binary_cosine(a, b) == pytest.approx(np_on(acts[0], acts[1]))
    assert neurons.binary_cosine(np.zeros(5, bool), np.ones(5, bool)) == 0.0
    chunked = neurons.binary_cosine_matrix(acts.reshape(4, -1) > 0, chunk=7)
    np.testing.assert_allclose(chunked, neurons.binary_cosine_matrix(acts.reshape(4, -1) > 0))


def test_layer_windows_and_out_of_range(acts):
    assert neurons.layer_windows(30) == [(i, i + 3) for i in range(0, 30, 3)]
    assert neurons.layer_windows(4, 3) == [(0, 3), (3, 4)]
    masks = neurons.NeuronMasks(acts > 0, "toy")
    with pytest.raises(ConfigError, match="outside backbone 'toy', which has 7 layers"):
        neurons.on_matrix(masks, layers=(6, 9))
    with pytest.raises(ConfigError, match="outside"):
        neurons.on_matrix(masks, layers=[-1])
    with pytest.raises(ConfigError, match="does not fit"):
        neurons.layer_windows(7, 8)


def test_masks_of_different_backbones_refused(acts):
    a = neurons.NeuronMasks(acts > 0, "t5_small")
    b = neurons.NeuronMasks(acts > 0, "smollm2_135m")
    with pytest.raises(ConfigError, match="different backbones.*'t5_small' vs 'smollm2_135m'"):
        neurons.on_matrix(a, b)
    c = neurons.NeuronMasks(acts[:, :, :1] > 0, "t5_small")
    with pytest.raises(ConfigError, match="do not correspond"):
        neurons.on_matrix(a, c)


# ---- capture through a backbone ----------------------------------------------

@dataclasses.dataclass
class ToyConfig:
    d_model: int = 8
    vocab_size: int = 11
    num_layers: int = 3
    d_ff: int = 12


@dataclasses.dataclass
class ToyBackbone(Backbone):
    """Residual stack of FFNs; exposes the pre-activation of every FFN for every
    position of prompt + inputs (prompt first), like a decoder-only family."""

    def logical_axes(self):
        raise NotImplementedError

    def embed(self, params, ids):
        return params["emb"][ids]

    def target_log_likelihood(self, params, prompt, batch):
        raise NotImplementedError

    def score_candidates(self, *args):
        raise NotImplementedError

    def greedy_decode(self, *args):
        raise NotImplementedError

    def logits(self, *args, **kw):
        raise NotImplementedError

    def ffn_activations(self, params, prompt, inputs, inputs_mask, rule=None):
        self.ffn_rule(rule)
        x = self.embed(params, inputs) * inputs_mask[..., None]
        p = batched_prompt(prompt, inputs.shape[0], jnp.float32)
        x = jnp.concatenate([p, x], axis=1)
        out = []
        for w_in, w_out in zip(params["w_in"], params["w_out"]):
            h = x @ w_in
            out.append(h)
            x = x + jnp.tanh(h) @ w_out
        return jnp.stack(out)


@pytest.fixture(scope="module")
def toy():
    cfg = ToyConfig()
    rng = np.random.default_rng(0)
    params = {"emb": rng.normal(size=(cfg.vocab_size, cfg.d_model)),
              "w_in": rng.normal(size=(cfg.num_layers, cfg.d_model, cfg.d_ff)) * 0.5,
              "w_out": rng.normal(size=(cfg.num_layers, cfg.d_ff, cfg.d_model)) * 0.5}
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    inputs = np.array([[0, 0, 3, 4, 5], [1, 2, 3, 4, 9]], np.int32)  # left-padded
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.int32)
    prompts = np.random.default_rng(2).normal(size=(4, 3, cfg.d_model)).astype(np.float32)
    return ToyBackbone("toy", cfg, params, None), params, inputs, mask, prompts


def _reference_masks(bb, params, prompts, inputs, mask, positions, threshold):
    out = []
    for p in prompts:
        acts = np.asarray(bb.ffn_activations(params, p, inputs, mask))  # [N, B, P+Li, F]
        n_prompt = p.shape[0]
        cols = {"last": [acts.shape[2] - 1], "all": list(range(acts.shape[2])),
                "prompt": list(range(n_prompt))}[positions]
        sel = np.zeros(acts[:, :, cols].shape, bool)
        for b in range(acts.shape[1]):
            for ci, c in enumerate(cols):
                real = c < n_prompt or mask[b, c - n_prompt] == 1
                sel[:, b, ci] = (acts[:, b, c] > threshold) & real
        out.append(sel)
    return np.stack(out)


@pytest.mark.parametrize("positions", ["last", "all", "prompt"])
def test_capture_equals_unjitted_activations(toy, positions):
    bb, params, inputs, mask, prompts = toy
    got = neurons.capture_activation_masks(bb, params, prompts, inputs, mask,
                                           positions=positions, threshold=0.1)
    want = _reference_masks(bb, params, prompts, inputs, mask, positions, 0.1)
    assert got.masks.shape == want.shape
    np.testing.assert_array_equal(got.masks, want)
    if positions == "all":  # padding columns never count
        assert not got.masks[:, :, 0, 3:5].any()
    on = neurons.on_matrix(got)
    np.testing.assert_allclose(on[0, 1], np_on(want[0], want[1], 0.5), rtol=1e-12)


def test_capture_compiles_once_for_many_prompts(toy):
    bb, params, inputs, mask, prompts = toy
    capture = neurons.ActivationCapture(bb, positions="last")
    first = capture(params, prompts, inputs, mask)
    assert capture.compilations == 1
    rng = np.random.default_rng(3)
    capture.threshold = 0.3  # threshold is a traced input: no recompilation
    second = capture(params, rng.normal(size=(5, 3, 8)).astype(np.float32), inputs, mask)
    assert capture.compilations == 1
    assert first.masks.shape[0] == 4 and second.masks.shape[0] == 5
    third = neurons.capture_activation_masks(bb, params, list(prompts[:2]), inputs, mask,
                                             capture=capture)
    assert capture.compilations == 1
    assert third.threshold == 0.3


def test_capture_bad_input(toy):
    bb, params, inputs, mask, prompts = toy
    with pytest.raises(ConfigError, match=r"b \(t5_small\) come from other backbones than 'toy'"):
        neurons.capture_activation_masks(bb, params, prompts[:2], inputs, mask,
                                         names=["a", "b"], prompt_backbones=["toy", "t5_small"])
    mixed = [prompts[0], np.zeros((3, 16), np.float32)]
    with pytest.raises(ConfigError, match=r"mixed widths: prompt 1 \(width 16\)"):
        neurons.capture_activation_masks(bb, params, mixed, inputs, mask)
    with pytest.raises(ConfigError, match="unknown positions"):
        neurons.ActivationCapture(bb, positions="first")


def _tiny_real_preset():
    try:
        backbones = importlib.import_module("ptransfer.backbones")
        presets = backbones.all_presets()
    except Exception:  # families not built yet
        return None
    tiny = sorted(n for n, fam in presets.items() if fam == "llama" and "tiny" in n)
    return tiny[0] if tiny else None


@pytest.mark.skipif(_tiny_real_preset() is None, reason="no tiny llama preset available")
def test_capture_on_real_preset_reuses_one_compilation():
    from ptransfer import load_backbone

    bb = load_backbone(f"preset:{_tiny_real_preset()}")
    inputs = np.array([[0, 5, 6, 7]], np.int32)
    mask = np.array([[0, 1, 1, 1]], np.int32)
    prompts = np.random.default_rng(0).normal(size=(3, 2, bb.d_model)).astype(np.float32) * 0.1
    capture = neurons.ActivationCapture(bb)
    masks = capture(bb.params, prompts, inputs, mask)
    assert capture.compilations == 1
    assert masks.masks.shape[:2] == (3, bb.num_layers)
    acts = np.asarray(jax.jit(bb.ffn_activations)(bb.params, prompts[2], inputs, mask))
    np.testing.assert_array_equal(masks.masks[2], acts[:, :, -1:] > 0)


@pytest.mark.skipif(_tiny_real_preset() is None, reason="no tiny llama preset available")
def test_gated_ffn_rules_gate_by_default_product_as_option():
    from ptransfer import load_backbone

    bb = load_backbone(f"preset:{_tiny_real_preset()}")
    inputs = np.array([[0, 5, 6, 7]], np.int32)
    mask = np.array([[0, 1, 1, 1]], np.int32)
    prompts = np.random.default_rng(1).normal(size=(2, 2, bb.d_model)).astype(np.float32) * 0.1
    gate = neurons.capture_activation_masks(bb, bb.params, prompts, inputs, mask, positions="all")
    product = neurons.capture_activation_masks(bb, bb.params, prompts, inputs, mask,
                                               positions="all", rule="product")
    assert gate.rule == "gate" and product.rule == "product"
    params = bb.params
    for k, p in enumerate(prompts):
        g = np.asarray(bb.ffn_activations(params, p, inputs, mask, rule="gate"))
        u = np.asarray(bb.ffn_activations(params, p, inputs, mask, rule="product"))
        # padded input column 0 (after the 2 prompt columns) never counts
        valid = np.array([True, True, False, True, True, True])[None, None, :, None]
        np.testing.assert_array_equal(gate.masks[k], (g > 0) & valid)
        np.testing.assert_array_equal(product.masks[k], (u > 0) & valid)
    # the product also fires where gate and up are both negative: the rules differ
    assert (gate.masks != product.masks).any()
    with pytest.raises(ConfigError, match="rules 'gate' and 'product'"):
        neurons.on_matrix(gate, product)
    with pytest.raises(ConfigError, match="no FFN activation rule"):
        neurons.ActivationCapture(bb, rule="output")
