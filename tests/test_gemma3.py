"""Gemma 3 backbone: parity with HF transformers (tiny random model, and the real 270M
GGUF against HF's own GGUF load), the batch layout, the GGUF vocabulary, errors."""

import dataclasses
import json
import os
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from ptransfer.backbones import configure_backbone, gemma3, load_backbone
from ptransfer.backbones.gemma3 import convert
from ptransfer.checkpoints.gguf import architecture_of
from ptransfer.checkpoints.tree import flatten
from ptransfer.core import assets
from ptransfer.core.errors import CheckpointError, ConfigError
from ptransfer.core.vocab import TokenizersVocabulary

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "gemma3")
TINY_DIR = os.path.join(FIXTURES, "tiny")
PARITY_TOL = 1e-4  # float32 vs float32: only summation order differs (measured ~3e-6)


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(os.path.join(FIXTURES, "tiny_expected.npz")))


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("hf:" + TINY_DIR)


def left_pad(rows, width):
    ids, mask = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    return ids, mask


def right_pad(rows, width):
    ids, mask = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ---- the tiny model against HF ------------------------------------------------------

def test_config_read_from_hf(tiny):
    c = tiny.config
    assert tiny.family == "gemma3" and isinstance(tiny, gemma3.Gemma3Backbone)
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.query_pre_attn_scalar) == (4, 2, 32, 24.0)
    assert (c.sliding_window, c.sliding_window_pattern, c.bos_id) == (4, 2, 2)
    assert (c.rope_theta, c.rope_local_theta) == (1e6, 1e4)
    assert [c.is_global(i) for i in range(3)] == [False, True, False]
    assert c == gemma3.PRESETS["gemma3_tiny"]


def test_hf_parity_without_prompt(tiny, expected):
    got = np.asarray(tiny.logits(expected["ids"]))
    assert got.dtype == np.float32 and got.shape == expected["logits"].shape == (2, 10, 320)
    np.testing.assert_allclose(got, expected["logits"], rtol=0, atol=PARITY_TOL)


def test_hf_parity_with_prompt(tiny, expected):
    got = np.asarray(tiny.logits(expected["ids"], prompt=expected["prompt"]))
    assert got.shape == expected["logits_prompt"].shape == (2, 14, 320)
    np.testing.assert_allclose(got, expected["logits_prompt"], rtol=0, atol=PARITY_TOL)


@pytest.mark.parametrize("change", [dict(sliding_window=64), dict(sliding_window_pattern=1),
                                    dict(rope_local_theta=1e6), dict(query_pre_attn_scalar=32.0),
                                    dict(bos_id=None)])
def test_fixture_sees_each_design_choice(tiny, expected, change):
    """The fixture's 14-token sequence is longer than the window, has local and global
    layers, etc.: changing any of these moves the logits far beyond the tolerance."""
    other = dataclasses.replace(tiny, config=dataclasses.replace(tiny.config, **change))
    got = np.asarray(other.logits(expected["ids"], prompt=expected["prompt"]))
    assert np.abs(got - expected["logits_prompt"]).max() > 100 * PARITY_TOL


def test_hf_norm_weights_get_the_one_added(tiny):
    # HF stores w and multiplies by (1 + w); the tree keeps the multiplier (GGUF's form).
    hf = load_file(os.path.join(TINY_DIR, "model.safetensors"))
    np.testing.assert_allclose(np.asarray(tiny.params["layers_1"]["attention"]["key_norm"]["scale"]),
                               hf["model.layers.1.self_attn.k_norm.weight"] + 1.0)
    np.testing.assert_allclose(np.asarray(tiny.params["layers_2"]["post_mlp_layer_norm"]["scale"]),
                               hf["model.layers.2.post_feedforward_layernorm.weight"] + 1.0)


# ---- the batch layout ---------------------------------------------------------------

def test_padded_batch_scores_equal_hf_log_probs(tiny, expected):
    """target_log_likelihood / score_candidates on left-padded inputs and right-padded
    targets give HF's log-probs of the same continuations."""
    ids, prompt = expected["ids"], expected["prompt"]
    lp = log_softmax(expected["logits_prompt"])  # [2, 14, V] over [prompt; ids]
    p = prompt.shape[0]
    split = [6, 4]  # row i: inputs ids[i, :split], targets the rest
    inputs, inputs_mask = left_pad([ids[i, :s] for i, s in enumerate(split)], 8)
    targets, targets_mask = right_pad([ids[i, s:] for i, s in enumerate(split)], 7)
    batch = dict(inputs=inputs, inputs_mask=inputs_mask, targets=targets, targets_mask=targets_mask)
    got = np.asarray(tiny.target_log_likelihood(tiny.params, prompt, batch))
    want = [sum(lp[i, p + t - 1, ids[i, t]] for t in range(s, ids.shape[1])) for i, s in enumerate(split)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)

    cands, cmask = right_pad([ids[0, 6:9], ids[0, 6:7], ids[1, 6:8]], 3)
    scores = np.asarray(tiny.score_candidates(tiny.params, prompt, inputs[:1], inputs_mask[:1],
                                              cands, cmask))[0]
    for c in range(3):
        one = dict(inputs=inputs[:1], inputs_mask=inputs_mask[:1], targets=cands[c:c + 1],
                   targets_mask=cmask[c:c + 1])
        np.testing.assert_allclose(scores[c], tiny.target_log_likelihood(tiny.params, prompt, one)[0],
                                   rtol=0, atol=1e-4)
    np.testing.assert_allclose(scores[0], sum(lp[0, p + t - 1, ids[0, t]] for t in range(6, 9)),
                               rtol=0, atol=1e-3)


def test_greedy_decode_follows_the_argmax_past_the_window(tiny, expected):
    ids = expected["ids"][:1, :3]
    out = np.asarray(tiny.greedy_decode(tiny.params, None, ids, np.ones_like(ids), 6))[0]
    assert 1 not in out.tolist()  # no EOS in this continuation, so nothing was zeroed
    # 3 + 6 tokens after BOS: the last steps attend past the window of 4 through the cache
    full = np.asarray(tiny.logits(np.concatenate([ids[0], out[:-1]])[None]))[0]
    assert np.argmax(full[2:], axis=-1).tolist() == out.tolist()


def test_ffn_activations_cover_prompt_and_inputs(tiny, expected):
    ids = expected["ids"]
    acts = np.asarray(tiny.ffn_activations(tiny.params, expected["prompt"], ids, np.ones_like(ids)))
    assert acts.shape == (3, 2, 4 + 10, 128) and np.isfinite(acts).all()


def test_remat_and_bf16_keep_results(tiny, expected):
    ids = expected["ids"]
    full = configure_backbone(tiny, remat="full")
    assert flatten(full.logical_axes()) == flatten(tiny.logical_axes())
    np.testing.assert_allclose(np.asarray(full.logits(ids)), expected["logits"], rtol=0, atol=PARITY_TOL)
    bf16 = configure_backbone(tiny, compute_dtype="bfloat16")
    assert np.abs(np.asarray(bf16.logits(ids)) - expected["logits"]).max() < 0.5


def test_every_param_has_logical_axes():
    shapes, axes = gemma3.abstract_params(gemma3.PRESETS["gemma3_270m"])
    flat_s, flat_a = flatten(shapes), flatten(axes)
    assert set(flat_s) == set(flat_a) and len(flat_s) == 2 + 18 * 13
    for name, s in flat_s.items():
        assert len(flat_a[name]) == len(s.shape), name
    assert flat_s["token_embedder/embedding"].shape == (262144, 640)
    assert flat_a["layers_5/attention/query_norm/scale"] == ("kv",)
    assert flat_s["layers_0/attention/key/kernel"].shape == (640, 256)


def test_preset_errors():
    with pytest.raises(ConfigError, match="unknown preset 'gemma3_27m'.*gemma3_270m"):
        load_backbone("preset:gemma3_27m")
    with pytest.raises(ConfigError, match="num_kv_heads"):
        dataclasses.replace(gemma3.PRESETS["gemma3_tiny"], num_kv_heads=3).validate()


def test_hf_config_that_gemma3_cannot_run_is_refused():
    with open(os.path.join(TINY_DIR, "config.json")) as f:
        cfg = json.load(f)
    with pytest.raises(CheckpointError, match="final_logit_softcapping"):
        convert.config_from_hf({**cfg, "final_logit_softcapping": 30.0})
    with pytest.raises(CheckpointError, match="layer_types"):
        convert.config_from_hf({**cfg, "layer_types": ["full_attention", "sliding_attention",
                                                       "full_attention"]})


def test_gguf_architecture_read_from_the_header(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        architecture_of(str(bad))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone(f"gguf:{tmp_path}/absent.gguf")


# ---- the SentencePiece-style vocabulary from GGUF metadata (synthetic) -----------------

def sp_meta():
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "<ctl>", "\n", "\n\n", "  "]
    types = [3, 3, 3, 3, 3, 4, 4, 4]
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    normal = ["▁", "a", "b", "1", "2", "ab", "▁a", "▁ab"]
    pieces += normal
    types += [1] * len(normal)
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces,
            "tokenizer.ggml.scores": [0.0] * len(pieces), "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
            "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.add_space_prefix": False}


def test_sentencepiece_vocab_from_metadata():
    meta = sp_meta()
    v = TokenizersVocabulary.from_gguf_metadata(meta, name="synthetic")
    piece = {p: i for i, p in enumerate(meta["tokenizer.ggml.tokens"])}
    assert (v.bos_id, v.eos_id, v.unk_id, v.vocab_size) == (2, 1, 3, len(piece))
    assert v.encode("ab") == [piece["ab"]]  # no space prefix added
    assert v.encode(" ab") == [piece["▁ab"]]
    assert v.encode("12") == [piece["1"], piece["2"]]
    assert v.encode("a\n\nb") == [piece["a"], piece["\n\n"], piece["b"]]  # user-defined: whole
    assert v.encode("  a") == [piece["  "], piece["a"]]  # a piece stored as spaces is ▁▁
    assert v.encode("é") == [piece["<0xC3>"], piece["<0xA9>"]]  # byte fallback
    assert v.encode("<ctl>a") == [piece["<ctl>"], piece["a"]]
    for text in ("ab ab", " a  b\n\n12", "é ü"):
        assert v.decode(v.encode(text)) == text


def test_sentencepiece_vocab_refuses_incomplete_metadata():
    meta = dict(sp_meta(), **{"tokenizer.ggml.token_type": [1, 1]})
    with pytest.raises(CheckpointError, match="token_type"):
        TokenizersVocabulary.from_gguf_metadata(meta, name="broken.gguf")


# ---- the real Gemma 3 270M (Q4_K_M GGUF, assembled by `ptransfer assets fetch`) ------------

# Both sides dequantize the same blocks to float32 and run float32 over 18 layers;
# measured max |diff| of the stored top-8 logits ~3e-5 (logits ~30). A misread
# quant block, a permuted q/k or a wrong norm offset moves them by > 0.1.
REAL_TOL = 1e-3


@pytest.fixture(scope="module")
def real(assets_dir):
    start = time.perf_counter()
    bb = load_backbone("gguf:" + assets.asset_path(assets.GEMMA3_GGUF, assets_dir))
    print(f"Gemma 3 GGUF load: {time.perf_counter() - start:.1f}s")
    return bb


@pytest.fixture(scope="module")
def real_ref():
    with open(os.path.join(FIXTURES, "gemma3_ref.json")) as f:
        return json.load(f)


def test_real_config_is_the_preset(real):
    assert real.family == "gemma3" and real.config == gemma3.PRESETS["gemma3_270m"]
    assert set(real.params) == {"token_embedder", "decoder_norm"} | {f"layers_{i}" for i in range(18)}


def test_real_tokenizer_matches_hf(real, real_ref):
    for case in real_ref["tokenizer"]:
        assert real.vocab.encode(case["text"]) == case["ids"], case["text"]
    for s in real_ref["sentences"]:
        assert [2] + real.vocab.encode(s["text"]) == s["ids"]
        assert real.vocab.decode(s["ids"][1:]) == s["text"]
    for word in (" positive", " negative", " spam", " ham"):
        assert len(real.vocab.encode(word)) == 1, word


def test_real_dequantized_weights_match_hf(real, real_ref):
    p = real.params
    ours = {"Q8_0": np.asarray(p["token_embedder"]["embedding"]),  # [V, D], HF's layout
            "Q5_0": np.asarray(p["layers_0"]["attention"]["query"]["kernel"]).T,  # -> [out, in]
            "Q4_K": np.asarray(p["layers_0"]["attention"]["out"]["kernel"]).T,
            "Q6_K": np.asarray(p["layers_0"]["mlp"]["wo"]["kernel"]).T}
    for kind, ref in real_ref["dequant"].items():
        w = ours[kind]
        assert list(w.shape) == ref["shape"], kind
        np.testing.assert_allclose(w[0, :64], ref["first_row"], rtol=0, atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(w[:64].astype(np.float64).sum(1), ref["row_sums"], rtol=1e-5,
                                   atol=1e-4, err_msg=kind)


def test_real_next_tokens_match_hf_gguf_load(real, real_ref):
    for s in real_ref["sentences"]:
        logits = np.asarray(real.logits(np.array([s["ids"][1:]], np.int32)))[0]  # after BOS
        top_ids, top_vals = np.array(s["top_k_ids"])[1:], np.array(s["top_k_logits"])[1:]
        np.testing.assert_allclose(np.take_along_axis(logits, top_ids, -1), top_vals, rtol=0, atol=REAL_TOL)
        lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        np.testing.assert_allclose(lse, np.array(s["logsumexp"])[1:], rtol=0, atol=REAL_TOL)
        assert np.argsort(-logits[-1])[:5].tolist() == top_ids[-1, :5].tolist()
    first = real_ref["sentences"][0]
    assert real.vocab.decode([first["top_k_ids"][-1][0]]) == " Berlin"


def test_ffn_activations_gate_rule_by_default_and_product_as_option():
    """GeGLU follows the gated-FFN rules: 'gate' is the gate's pre-activation wi_0 x,
    'product' is gelu_tanh(gate) * up; both at every prompt + input position."""
    from ptransfer.backbones import load_backbone

    bb = load_backbone("preset:gemma3_tiny")
    assert bb.ffn_activation_rules == ("gate", "product")
    ids = np.asarray([[5, 6, 7, 8]], np.int32)
    prompt = np.random.default_rng(0).normal(size=(2, bb.d_model)).astype(np.float32)
    gate = np.asarray(bb.ffn_activations(bb.params, prompt, ids, np.ones_like(ids)))
    prod = np.asarray(bb.ffn_activations(bb.params, prompt, ids, np.ones_like(ids), rule="product"))
    assert gate.shape == prod.shape == (bb.num_layers, 1, 2 + 4, bb.config.d_ff)
    assert not np.allclose(gate, prod)
    # product = gelu_tanh(gate) * up: where the gate is well closed (gelu_tanh(-2.5) is
    # -0.015) the product is a small fraction of its largest value
    closed = gate < -2.5
    assert closed.any() and np.abs(prod[closed]).max() < 0.05 * np.abs(prod).max()
    with pytest.raises(Exception, match="no FFN activation rule"):
        bb.ffn_activations(bb.params, prompt, ids, np.ones_like(ids), rule="output")
