"""LLaMA backbone: parity with HF transformers, padding, caching, capture, errors."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from ptransfer.backbones import llama
from ptransfer.checkpoints.tree import flatten
from ptransfer.core.errors import CheckpointError, ConfigError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "llama")
TINY_DIR = os.path.join(FIXTURES, "tiny")
PARITY_TOL = 1e-4  # float32 vs float32: only summation order differs


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(os.path.join(FIXTURES, "tiny_expected.npz")))


@pytest.fixture(scope="module")
def tiny():
    return llama.from_hf(TINY_DIR)


def left_pad(rows, width):
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def right_pad(rows, width):
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


# ---- parity with HF --------------------------------------------------------------

def test_config_read_from_hf(tiny):
    c = tiny.config
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.rope_theta) == (4, 2, 16, 50000.0)
    assert not c.tie_word_embeddings and "logits_dense" in tiny.params


def test_hf_parity_without_prompt(tiny, expected):
    got = np.asarray(tiny.logits(expected["ids"]))
    assert got.dtype == np.float32 and got.shape == expected["logits"].shape
    np.testing.assert_allclose(got, expected["logits"], rtol=0, atol=PARITY_TOL)


def test_hf_parity_with_prompt(tiny, expected):
    got = np.asarray(tiny.logits(expected["ids"], prompt=expected["prompt"]))
    assert got.shape == expected["logits_prompt"].shape  # [B, P + Li, V]
    np.testing.assert_allclose(got, expected["logits_prompt"], rtol=0, atol=PARITY_TOL)


# ---- the hot path -------------------------------------------------------------------

def _example_batch():
    # Different input lengths, equal total length (one compile for the references).
    inputs = [[5, 17, 33, 90, 41], [7, 8, 250, 3, 9, 60, 2], [200, 3, 4, 5, 6, 7]]
    targets = [[11, 12, 13], [14], [15, 16]]
    return inputs, targets


def _full_logits_ll(bb, prompt, inp, tgt):
    """Reference: log-likelihood from full-sequence logits of one unpadded example."""
    lg = np.asarray(bb.logits(np.array([inp]), np.array([tgt]), prompt=prompt))[0]
    lp = jax.nn.log_softmax(lg, axis=-1)
    start = (0 if prompt is None else len(prompt)) + len(inp) - 1
    return float(sum(lp[start + t, tok] for t, tok in enumerate(tgt)))


@pytest.mark.parametrize("with_prompt", [False, True])
def test_padded_batch_equals_unpadded_examples(tiny, expected, with_prompt):
    prompt = expected["prompt"] if with_prompt else None
    inputs, targets = _example_batch()
    ids, im = left_pad(inputs, 8)
    tg, tm = right_pad(targets, 4)
    batch = dict(inputs=ids, inputs_mask=im, targets=tg, targets_mask=tm)
    got = np.asarray(tiny.target_log_likelihood(tiny.params, prompt, batch))
    assert got.shape == (3,) and got.dtype == np.float32
    want = [_full_logits_ll(tiny, prompt, i, t) for i, t in zip(inputs, targets)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_score_candidates_equals_target_log_likelihood(tiny, expected):
    prompt = expected["prompt"]
    inputs, _ = _example_batch()
    ids, im = left_pad(inputs, 7)
    cands = [[21, 22, 23], [24], [25, 26]]
    cd, cm = right_pad(cands, 3)
    got = np.asarray(tiny.score_candidates(tiny.params, prompt, ids, im, cd, cm))
    assert got.shape == (3, 3)
    for c in range(len(cands)):
        batch = dict(inputs=ids, inputs_mask=im, targets=np.repeat(cd[c:c + 1], 3, 0),
                     targets_mask=np.repeat(cm[c:c + 1], 3, 0))
        want = np.asarray(tiny.target_log_likelihood(tiny.params, prompt, batch))
        np.testing.assert_allclose(got[:, c], want, rtol=0, atol=1e-4)


def test_greedy_decode_matches_uncached_argmax(tiny, expected):
    prompt = expected["prompt"]
    inputs = [[5, 17, 33, 90, 41], [7, 8], [200, 3, 4]]
    ids, im = left_pad(inputs, 6)
    n = 5
    got = np.asarray(tiny.greedy_decode(tiny.params, prompt, ids, im, n))
    assert got.shape == (3, n) and got.dtype == np.int32

    @jax.jit
    def next_token(ids, mask):  # full causal forward over the whole sequence, no cache
        x, m = llama._prefix(tiny.config, tiny.params, prompt, ids, mask)
        h, _ = llama._decode(tiny.config, tiny.params, x, m)
        return jnp.argmax(llama._head(tiny.config, tiny.params, h[:, -1]), axis=-1)

    seqs = [list(r) for r in inputs]
    for _ in range(n):
        nxt = np.asarray(next_token(*left_pad(seqs, 6 + n)))
        seqs = [s + [int(t)] for s, t in zip(seqs, nxt)]
    assert [s[len(i):] for s, i in zip(seqs, inputs)] == got.tolist()


def test_greedy_decode_zeroes_eos_and_after(tiny):
    ids, im = left_pad([[5, 6, 7]], 3)
    free = np.asarray(tiny.greedy_decode(tiny.params, None, ids, im, 4))[0]
    assert len(set(free.tolist())) > 1
    eos = int(free[1])
    with_eos = llama.LlamaBackbone(name="t", config=tiny.config, params=tiny.params,
                                   vocab=seqio.PassThroughVocabulary(320, eos_id=eos))
    got = np.asarray(with_eos.greedy_decode(tiny.params, None, ids, im, 4))[0]
    first = list(free).index(eos)
    assert list(got[:first]) == list(free[:first]) and not got[first:].any()


def test_ffn_activations_gate_and_silu_gate_times_up(tiny, expected):
    """Layer 0 at position 0 attends only to itself, so its FFN input is computable by hand.
    Default rule: the gate's pre-activation; rule 'product': silu(gate) * up."""
    p = flatten(jax.tree_util.tree_map(np.asarray, tiny.params))
    c = tiny.config
    ids, im = left_pad([[9, 10, 11], [12, 13]], 4)
    assert tiny.ffn_activation_rules == ("gate", "product")
    gates = np.asarray(tiny.ffn_activations(tiny.params, None, ids, im))
    np.testing.assert_array_equal(gates, tiny.ffn_activations(tiny.params, None, ids, im,
                                                              rule="gate"))
    acts = np.asarray(tiny.ffn_activations(tiny.params, None, ids, im, rule="product"))
    assert acts.shape == gates.shape == (c.num_layers, 2, 4, c.d_ff) and acts.dtype == np.float32

    def rms(x, scale):
        return x / np.sqrt(np.mean(x * x) + c.norm_eps) * scale

    x = p["token_embedder/embedding"][9]
    h = rms(x, p["layers_0/pre_attention_layer_norm/scale"])
    v = (h @ p["layers_0/attention/value/kernel"]).reshape(c.num_kv_heads, c.head_dim)
    per_head = np.repeat(v, c.num_heads // c.num_kv_heads, axis=0).reshape(-1)
    x = x + per_head @ p["layers_0/attention/out/kernel"]
    m = rms(x, p["layers_0/pre_mlp_layer_norm/scale"])
    gate, up = m @ p["layers_0/mlp/wi_0/kernel"], m @ p["layers_0/mlp/wi_1/kernel"]
    want = gate / (1 + np.exp(-gate)) * up
    np.testing.assert_allclose(acts[0, 0, 1], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gates[0, 0, 1], gate, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="no FFN activation rule 'output'.*gate, product"):
        tiny.ffn_activations(tiny.params, None, ids, im, rule="output")
    # padding does not change real positions (with a prompt in front too)
    alone = np.asarray(tiny.ffn_activations(tiny.params, expected["prompt"], ids[1:, 2:], im[1:, 2:]))
    padded = np.asarray(tiny.ffn_activations(tiny.params, expected["prompt"], ids[1:], im[1:]))
    np.testing.assert_allclose(padded[:, 0, -2:], alone[:, 0, -2:], rtol=0, atol=1e-4)
    np.testing.assert_allclose(padded[:, 0, :4], alone[:, 0, :4], rtol=0, atol=1e-4)  # the prompt


def test_prompt_gradient_flows_and_params_are_inputs(tiny, expected):
    ids, im = left_pad([[5, 6, 7]], 3)
    tg, tm = right_pad([[8, 9]], 2)
    batch = dict(inputs=ids, inputs_mask=im, targets=tg, targets_mask=tm)
    loss = lambda pr: -jnp.sum(tiny.target_log_likelihood(tiny.params, pr, batch))  # noqa: E731
    g = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(expected["prompt"])))
    assert g.shape == expected["prompt"].shape and np.isfinite(g).all() and np.abs(g).max() > 0


# ---- presets, structure ------------------------------------------------------------------

def test_tiny_preset_structure():
    bb = llama.from_preset("llama_tiny", seed=1)
    c = bb.config
    assert c.num_heads != c.num_kv_heads and c.vocab_size >= seqio.ByteVocabulary().vocab_size
    assert bb.family == "llama" and bb.add_eos_to_targets is False
    params, axes = flatten(bb.params), flatten(bb.logical_axes())
    assert params.keys() == axes.keys()
    for path, arr in params.items():
        assert len(axes[path]) == arr.ndim, path
        assert all(d % 4 == 0 for d in arr.shape), path  # shardable over model=4
    assert axes["layers_1/attention/query/kernel"] == ("embed", "joined_kv")
    assert axes["token_embedder/embedding"] == ("vocab", "embed")
    emb = np.asarray(bb.embed(bb.params, jnp.array([3, 4])))
    np.testing.assert_array_equal(emb, np.asarray(bb.params["token_embedder"]["embedding"])[[3, 4]])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="llama_tiny"):
        llama.from_preset("llama_tny")


def test_prompt_width_mismatch(tiny):
    ids, im = left_pad([[5, 6]], 2)
    with pytest.raises(ConfigError, match=r"\[P, 64\]"):
        tiny.score_candidates(tiny.params, np.zeros((3, 32), np.float32), ids, im, ids, im)
    with pytest.raises(ConfigError, match="d_model|64"):
        tiny.logits(ids, prompt=np.zeros((3, 65), np.float32))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        llama.from_hf(str(tmp_path / "nowhere"))
    shutil.copy(os.path.join(TINY_DIR, "config.json"), tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        llama.from_hf(str(tmp_path))


def test_checkpoint_shape_mismatch(tmp_path):
    shutil.copy(os.path.join(TINY_DIR, "model.safetensors"), tmp_path / "model.safetensors")
    with open(os.path.join(TINY_DIR, "config.json")) as f:
        cfg = json.load(f)
    cfg["intermediate_size"] = 96
    with open(tmp_path / "config.json", "w") as f:
        json.dump(cfg, f)
    with pytest.raises(CheckpointError, match=r"mlp/w.*has shape .*128.*expects .*96"):
        llama.from_hf(str(tmp_path))
