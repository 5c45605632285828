"""T5 backbone: parity with HF transformers, the batch contract, presets, errors, SPMD."""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptransfer.backbones import load_backbone, t5
from ptransfer.checkpoints.tree import flatten
from ptransfer.core.errors import CheckpointError, ConfigError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "t5")
KINDS = ["t5_v1_0", "t5_v1_1"]


def _ref(kind):
    return dict(np.load(os.path.join(FIXTURES, kind, "reference.npz")))


@pytest.fixture(scope="module", params=KINDS)
def kind(request):
    return request.param


_CACHE = {}


def backbone_for(kind):
    if kind not in _CACHE:
        bb = t5.from_hf(os.path.join(FIXTURES, kind))
        _CACHE[kind] = dict(
            bb=bb,
            tll=jax.jit(bb.target_log_likelihood),
            score=jax.jit(bb.score_candidates),
            greedy=jax.jit(bb.greedy_decode, static_argnums=4),
            ffn=jax.jit(bb.ffn_activations, static_argnames=("stack", "rule")),
            encode=jax.jit(bb._encode),
        )
    return _CACHE[kind]


# ---- parity ----------------------------------------------------------------

@pytest.mark.parametrize("with_prompt", [False, True])
def test_logits_match_hf(kind, with_prompt):
    bb = backbone_for(kind)["bb"]
    ref = _ref(kind)
    prompt = ref["prompt"] if with_prompt else None
    got = bb.logits(ref["inputs"], ref["targets"], prompt=prompt)
    want = ref["logits_prompt" if with_prompt else "logits"]
    assert got.dtype == jnp.float32 and got.shape == want.shape
    err = float(np.max(np.abs(np.asarray(got) - want)))
    print(f"{kind} prompt={with_prompt} max abs err {err:.2e}")
    assert err < 1e-4


def test_hf_config_flags():
    v10 = backbone_for("t5_v1_0")["bb"].config
    v11 = backbone_for("t5_v1_1")["bb"].config
    assert v10.tie_word_embeddings and v10.feed_forward == "relu"
    assert not v11.tie_word_embeddings and v11.gated and v11.num_decoder_layers == 3
    # transformers 5.x writes tie=true and puts the v1.0 rescale flag elsewhere
    cfg = t5.config_from_hf(dict(vocab_size=260, d_model=32, num_heads=4, d_kv=8, d_ff=48,
                                 num_layers=2, feed_forward_proj="gated-gelu",
                                 tie_word_embeddings=True, scale_decoder_outputs=False))
    assert cfg.tie_word_embeddings and not cfg.scale_tied_logits


# ---- the batch contract ----------------------------------------------------

def _left_pad(rows, width):
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


# The batch-contract tests share shapes ([2, 7] inputs, [2, 5] targets, prompt
# on) so each jitted function compiles once. They run on the v1.1 model (untied
# head, gated FFN, 2 encoder / 3 decoder layers); the code paths they check do
# not depend on the FFN or head kind, which the parity tests cover for both.
CONTRACT = "t5_v1_1"

def _full_batch(ref, inputs=None, mask=None, targets=None):
    inputs = ref["inputs"] if inputs is None else inputs
    targets = ref["targets"] if targets is None else targets
    return dict(inputs=inputs, inputs_mask=np.ones_like(inputs) if mask is None else mask,
                targets=targets, targets_mask=np.ones_like(targets))


def test_left_padding_changes_nothing():
    """Row 1 shortened to 4 tokens and left-padded to 7 scores and decodes
    exactly like the unpadded 4 tokens; row 0 (no padding) like the full batch."""
    fns = backbone_for(CONTRACT)
    bb, ref = fns["bb"], _ref(CONTRACT)
    short = ref["inputs"][1][3:]
    ids, mask = _left_pad([ref["inputs"][0], short], 7)
    padded = fns["tll"](bb.params, ref["prompt"], _full_batch(ref, ids, mask))
    full = fns["tll"](bb.params, ref["prompt"], _full_batch(ref))
    alone = fns["tll"](bb.params, ref["prompt"],
                       _full_batch(ref, short[None], None, ref["targets"][1:]))
    np.testing.assert_allclose(padded, [full[0], alone[0]], rtol=0, atol=1e-4)
    assert abs(float(full[1] - alone[0])) > 1e-3  # the shortening really changed row 1
    # the likelihood is that of the HF-checked logits
    x = ref["logits_prompt"][0].astype(np.float64)
    lp = x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)
    want = np.take_along_axis(lp, ref["targets"][0][:, None], axis=-1).sum()
    np.testing.assert_allclose(full[0], want, rtol=0, atol=1e-4)

    g_padded = fns["greedy"](bb.params, ref["prompt"], ids, mask, 5)
    g_full = fns["greedy"](bb.params, ref["prompt"], ref["inputs"], np.ones_like(ids), 5)
    g_alone = fns["greedy"](bb.params, ref["prompt"], short[None], np.ones((1, 4), np.int32), 5)
    np.testing.assert_array_equal(g_padded, np.stack([g_full[0], g_alone[0]]))


def test_score_candidates_equals_per_candidate_likelihood():
    fns = backbone_for(CONTRACT)
    bb, ref = fns["bb"], _ref(CONTRACT)
    ids, mask = _left_pad([ref["inputs"][0], ref["inputs"][1][2:]], 7)
    cands = np.array([[17, 1, 0, 0, 0], [40, 41, 42, 43, 1], [200, 9, 1, 0, 0]], np.int32)
    cmask = (np.arange(5)[None] <= np.argmax(cands == 1, axis=1)[:, None]).astype(np.int32)
    scores = fns["score"](bb.params, ref["prompt"], ids, mask, cands, cmask)
    assert scores.shape == (2, 3) and scores.dtype == jnp.float32
    for c in range(3):
        batch = dict(inputs=ids, inputs_mask=mask, targets=np.repeat(cands[c:c + 1], 2, 0),
                     targets_mask=np.repeat(cmask[c:c + 1], 2, 0))
        np.testing.assert_allclose(scores[:, c], fns["tll"](bb.params, ref["prompt"], batch),
                                   rtol=0, atol=1e-4)


def test_greedy_decode_is_argmax_of_logits():
    fns = backbone_for(CONTRACT)
    bb, ref = fns["bb"], _ref(CONTRACT)
    mask = np.ones_like(ref["inputs"])
    tokens = np.asarray(fns["greedy"](bb.params, ref["prompt"], ref["inputs"], mask, 5))
    assert tokens.shape == (2, 5) and tokens.dtype == np.int32
    logits = np.asarray(bb.logits(ref["inputs"], tokens, prompt=ref["prompt"]))
    for b in range(2):
        eos = np.flatnonzero(np.argmax(logits[b], -1) == bb.config.eos_id)
        stop = eos[0] if len(eos) else 5  # EOS and what follows are zeroed
        np.testing.assert_array_equal(tokens[b, :stop], np.argmax(logits[b, :stop], -1))
        assert (tokens[b, stop:] == 0).all()


def _rms(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def test_ffn_activations_match_a_manual_first_decoder_step(kind):
    """Independent numpy first decoder step (one position: self-attention is
    just out(value(h))) over the backbone's encoder output."""
    fns = backbone_for(kind)
    bb, ref = fns["bb"], _ref(kind)
    cfg, p = bb.config, jax.tree_util.tree_map(np.asarray, bb.params)
    mask = np.ones_like(ref["inputs"])
    acts = np.asarray(fns["ffn"](bb.params, ref["prompt"], ref["inputs"], mask))
    assert acts.shape == (cfg.num_decoder_layers, 2, 1, cfg.d_ff) == (bb.num_layers, 2, 1, cfg.d_ff)
    if cfg.gated:  # default rule: the gate's pre-activation; the product is an option
        assert bb.ffn_activation_rules == ("gate", "product")
        product = np.asarray(fns["ffn"](bb.params, ref["prompt"], ref["inputs"], mask,
                                        rule="product"))
    else:
        assert bb.ffn_activation_rules == ("output",)
    encoded, _ = fns["encode"](bb.params, ref["prompt"], ref["inputs"], mask)
    enc = np.asarray(encoded)
    h_, dh, eps = cfg.num_heads, cfg.head_dim, cfg.layer_norm_epsilon
    y = np.repeat(p["token_embedder"]["embedding"][0][None, None], 2, 0)  # [B, 1, D]
    for i in range(cfg.num_decoder_layers):
        lp = p["decoder"][f"layers_{i}"]
        h = _rms(y, lp["pre_self_attention_layer_norm"]["scale"], eps)
        sa = lp["self_attention"]
        y = y + h @ sa["value"]["kernel"] @ sa["out"]["kernel"]
        h = _rms(y, lp["pre_cross_attention_layer_norm"]["scale"], eps)
        ca = lp["encoder_decoder_attention"]
        q = (h @ ca["query"]["kernel"]).reshape(2, 1, h_, dh)
        k = (enc @ ca["key"]["kernel"]).reshape(2, -1, h_, dh)
        v = (enc @ ca["value"]["kernel"]).reshape(2, -1, h_, dh)
        w = np.einsum("bqhd,bkhd->bhqk", q, k)
        w = np.exp(w - w.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        y = y + np.einsum("bhqk,bkhd->bqhd", w, v).reshape(2, 1, -1) @ ca["out"]["kernel"]
        h = _rms(y, lp["pre_mlp_layer_norm"]["scale"], eps)
        m = lp["mlp"]
        if cfg.gated:
            gate = h @ m["wi_0"]["kernel"]
            np.testing.assert_allclose(acts[i], gate, rtol=0, atol=1e-4)
            a = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate ** 3)))
            a = a * (h @ m["wi_1"]["kernel"])
            np.testing.assert_allclose(product[i], a, rtol=0, atol=1e-4)
        else:
            a = np.maximum(h @ m["wi"]["kernel"], 0)
            np.testing.assert_allclose(acts[i], a, rtol=0, atol=1e-4)
        y = y + a @ m["wo"]["kernel"]
    if kind == "t5_v1_0":
        enc_acts = fns["ffn"](bb.params, ref["prompt"], ref["inputs"], mask, stack="encoder")
        assert enc_acts.shape == (cfg.num_layers, 2, 5 + 7, cfg.d_ff)
        assert (np.asarray(enc_acts) >= 0).all() and (np.asarray(enc_acts) == 0).any()  # ReLU


def test_embed_and_logical_axes(kind):
    bb = backbone_for(kind)["bb"]
    table = np.asarray(bb.params["token_embedder"]["embedding"])
    np.testing.assert_array_equal(bb.embed(bb.params, jnp.array([[3, 250]])), table[[3, 250]][None])
    assert bb.embedding_table(bb.params).shape == (260, 32)
    axes, params = flatten(bb.logical_axes()), flatten(bb.params)
    assert axes.keys() == params.keys()
    assert all(len(axes[k]) == np.ndim(params[k]) for k in axes)
    assert axes["decoder/layers_0/mlp/wo/kernel"] == ("mlp", "embed")
    assert axes["encoder/relpos_bias/rel_embedding"] == ("heads", "relpos_buckets")
    assert axes["token_embedder/embedding"] == ("vocab", "embed")


# ---- presets ---------------------------------------------------------------

# Parameter counts of the published checkpoints (HF model cards / T5 paper).
PUBLISHED = {"t5_small": 60_506_624, "t5_base": 222_903_552, "t5_large": 737_668_096,
             "t5_3b": 2_851_598_336, "t5_11b": 11_307_321_344,
             "t5_1_1_small": 76_961_152, "t5_1_1_base": 247_577_856,
             "t5_1_1_large": 783_150_080, "t5_1_1_xl": 2_849_757_184,
             "t5_1_1_xxl": 11_135_332_352}


def _count(cfg):
    """Parameter count implied by a config's shapes (T5X layout)."""
    d, inner, f, v = cfg.d_model, cfg.num_heads * cfg.head_dim, cfg.d_ff, cfg.vocab_size
    ffn = (3 if cfg.gated else 2) * d * f
    enc = cfg.num_layers * (4 * d * inner + ffn + 2 * d)
    dec = cfg.num_decoder_layers * (8 * d * inner + ffn + 3 * d)
    head = 0 if cfg.tie_word_embeddings else d * v
    return v * d + head + 2 * cfg.num_heads * cfg.relative_attention_num_buckets + enc + dec + 2 * d


@pytest.mark.parametrize("name", ["t5_tiny", "t5_1_1_tiny", "t5_small"])
def test_param_count_formula_matches_the_module(name):
    shapes, _ = t5.abstract_params(t5.PRESETS[name])
    assert sum(math.prod(s.shape) for s in flatten(shapes).values()) == _count(t5.PRESETS[name])


def test_preset_shapes_match_published_sizes():
    for name, count in PUBLISHED.items():
        assert _count(t5.PRESETS[name]) == count, name
        if name.startswith("t5_1_1_"):  # LM-adapted checkpoints share the v1.1 shapes
            assert t5.PRESETS[name.replace("t5_1_1_", "t5_lm_adapt_")] == t5.PRESETS[name]
    assert t5.PRESETS["t5_11b"].d_ff == 65536 and t5.PRESETS["t5_1_1_xxl"].d_model == 4096


def test_preset_random_init_runs():
    bb = load_backbone("preset:t5_1_1_tiny")
    assert bb.vocab.vocab_size == 259 and bb.vocab.eos_id == bb.config.eos_id
    assert "logits_dense" in bb.params["decoder"]
    out = bb.logits(np.array([[5, 6, 7]]), np.array([[8, 1]]))
    assert out.shape == (1, 2, 260) and np.isfinite(np.asarray(out)).all()


# ---- bad input -------------------------------------------------------------

def test_unknown_preset():
    with pytest.raises(ConfigError, match="t5_tiny"):
        t5.from_preset("t5_tiny_")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_backbone("preset:t5_tny")


def test_prompt_width_mismatch(kind):
    fns = backbone_for(kind)
    ref = _ref(kind)
    bad = np.zeros((5, 31), np.float32)
    with pytest.raises(ConfigError, match=r"\[P, 32\]"):
        fns["bb"].logits(ref["inputs"], ref["targets"], prompt=bad)
    batch = dict(inputs=ref["inputs"], inputs_mask=np.ones_like(ref["inputs"]),
                 targets=ref["targets"], targets_mask=np.ones_like(ref["targets"]))
    with pytest.raises(ConfigError, match="project"):
        fns["bb"].target_log_likelihood(fns["bb"].params, bad, batch)


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_backbone(f"hf:{tmp_path / 'nowhere'}")
    with pytest.raises(CheckpointError, match="config.json"):
        t5.from_hf(str(tmp_path))
    shutil.copy(os.path.join(FIXTURES, "t5_v1_0", "config.json"), tmp_path)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        t5.from_hf(str(tmp_path))


def test_pytorch_pickle_refused(tmp_path):
    shutil.copy(os.path.join(FIXTURES, "t5_v1_0", "config.json"), tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02not really a pickle")
    with pytest.raises(CheckpointError, match="never unpickles.*safetensors"):
        load_backbone(f"hf:{tmp_path}")


def test_shapes_not_matching_config(tmp_path):
    src = os.path.join(FIXTURES, "t5_v1_0")
    shutil.copy(os.path.join(src, "model.safetensors"), tmp_path)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    cfg["d_ff"] = 128
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"mlp/wi/kernel has shape \(32, 64\).*\(32, 128\)"):
        t5.from_hf(str(tmp_path))


def test_untied_config_without_head(tmp_path):
    src = os.path.join(FIXTURES, "t5_v1_0")
    shutil.copy(os.path.join(src, "model.safetensors"), tmp_path)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    cfg["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        t5.from_hf(str(tmp_path))


# ---- SPMD ------------------------------------------------------------------

SPMD_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import jax, numpy as np
    from ptransfer.backbones import t5
    from ptransfer.checkpoints.tree import flatten
    from ptransfer.core import sharding as partitioning

    fixture = sys.argv[1]
    ref = dict(np.load(os.path.join(fixture, "reference.npz")))
    mesh = partitioning.make_mesh(data=2, model=4)
    bb = t5.from_hf(fixture, mesh=mesh)
    batch = dict(inputs=ref["inputs"], inputs_mask=np.ones_like(ref["inputs"]),
                 targets=ref["targets"], targets_mask=np.ones_like(ref["targets"]))
    batch = jax.device_put(batch, partitioning.batch_sharding(mesh))
    tll = jax.jit(bb.target_log_likelihood)(bb.params, ref["prompt"], batch)
    logits = bb.logits(ref["inputs"], ref["targets"], prompt=ref["prompt"])
    preset = t5.from_preset("t5_1_1_tiny", mesh=mesh)
    print("RESULT " + json.dumps(dict(
        devices=len(jax.devices()),
        tll=np.asarray(tll).tolist(),
        logits=np.asarray(logits).tolist(),
        specs={k: tuple(v.sharding.spec) for k, v in flatten(bb.params).items()},
        wi_devices=len(bb.params["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].sharding.device_set),
        preset_wo=tuple(preset.params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"].sharding.spec),
    )))
""")


def test_spmd_mesh_matches_one_device_and_shards_weights():
    """(data=2, model=4) over 8 simulated CPU devices, in a subprocess."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", SPMD_SCRIPT, os.path.join(FIXTURES, "t5_v1_1")],
                          env=env, capture_output=True, text=True, timeout=600)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT "):])
    assert res["devices"] == 8

    fns, ref = backbone_for("t5_v1_1"), _ref("t5_v1_1")
    one_tll = fns["tll"](fns["bb"].params, ref["prompt"], _full_batch(ref))
    one_logits = fns["bb"].logits(ref["inputs"], ref["targets"], prompt=ref["prompt"])
    np.testing.assert_allclose(res["tll"], one_tll, rtol=0, atol=1e-4)
    np.testing.assert_allclose(res["logits"], one_logits, rtol=0, atol=1e-5)

    specs = {k: list(v) for k, v in res["specs"].items()}
    assert specs["decoder/layers_0/mlp/wi_0/kernel"] == [None, "model"]
    assert specs["decoder/layers_0/mlp/wo/kernel"] == ["model", None]
    assert specs["encoder/layers_1/attention/query/kernel"] == [None, "model"]
    assert specs["encoder/layers_1/attention/out/kernel"] == ["model", None]
    assert specs["token_embedder/embedding"] == ["model", None]
    assert specs["decoder/logits_dense/kernel"] == [None, "model"]
    assert specs["decoder/relpos_bias/rel_embedding"] == ["model", None]
    assert res["wi_devices"] == 8
    assert res["preset_wo"] == ["model", None]


# ---- vocabularies ----------------------------------------------------------

def test_vocabulary_files_are_picked_up(tmp_path):
    """spiece.model -> seqio SentencePiece (sentinels from tokenizer_config.json),
    also beside a T5X checkpoint; tokenizer.json -> TokenizersVocabulary."""
    import sentencepiece as spm
    import seqio

    from ptransfer.checkpoints.t5x import write_t5x_checkpoint

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(["the movie was great fun", "a dull and boring film",
                               "prompt tuning transfers across tasks"] * 20))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "spiece"),
                                   vocab_size=30, model_type="unigram", pad_id=0, eos_id=1,
                                   unk_id=2, bos_id=-1, minloglevel=2)
    hf_dir = tmp_path / "hf"
    shutil.copytree(os.path.join(FIXTURES, "t5_v1_0"), hf_dir)
    shutil.copy(tmp_path / "spiece.model", hf_dir / "spiece.model")
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"extra_ids": 10}))
    bb = t5.from_hf(str(hf_dir))
    assert isinstance(bb.vocab, seqio.SentencePieceVocabulary)
    assert bb.vocab.vocab_size == 30 + 10 and bb.vocab.eos_id == 1
    assert bb.vocab.decode(bb.vocab.encode("great film")) == "great film"

    ckpt = write_t5x_checkpoint(bb.params, str(tmp_path / "run" / "checkpoint_5"))
    shutil.copy(tmp_path / "spiece.model", tmp_path / "run" / "sentencepiece.model")
    assert isinstance(t5.from_t5x(ckpt, "t5_tiny").vocab, seqio.SentencePieceVocabulary)

    from tokenizers import Tokenizer, models, pre_tokenizers
    words = {"<pad>": 0, "</s>": 1, "<unk>": 2, "great": 3, "film": 4}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    os.remove(hf_dir / "spiece.model")
    tok.save(str(hf_dir / "tokenizer.json"))
    vocab = t5.from_hf(str(hf_dir)).vocab
    assert type(vocab).__name__ == "TokenizersVocabulary" and vocab.eos_id == 1
    assert list(vocab.encode("great film")) == [3, 4]
