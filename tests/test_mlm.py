"""BERT / RoBERTa masked-LM backbones: HF parity, padding, scoring, ON capture, bad input.

Fixtures come from tests/fixtures/gen_mlm.py (HF transformers, float32).
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from safetensors.numpy import load_file, save_file

from ptransfer.backbones import mlm
from ptransfer.core.errors import CheckpointError, ConfigError
from ptransfer.core.vocab import check_single_token_label_words

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "mlm")
FAMILIES = ("roberta", "bert")
TOL = 1e-4
PAD = 3
CAND = np.array([[5], [17], [99], [250]], np.int32)  # single-token candidates [C, 1]
ONES = np.ones_like(CAND)


class Loaded:
    """A backbone from the fixture dir, its HF expectations and jitted hot paths."""

    def __init__(self, family):
        self.dir = os.path.join(FIXTURES, family)
        self.bb = mlm.from_hf(self.dir)
        self.exp = dict(np.load(os.path.join(self.dir, "expected.npz")))
        self.ids = self.exp["input_ids"].astype(np.int32)
        self.prompt = self.exp["prompt"]
        # The public methods run compiled cores; these aliases keep call sites short.
        self.tll = self.bb.target_log_likelihood
        self.score = self.bb.score_candidates
        self.ffn = self.bb.ffn_activations
        # One padded batch reused by most tests (one compile per prompt on/off).
        self.padded, self.padded_mask = _left_pad(self.ids, PAD, self.bb.config.pad_id,
                                                  np.random.default_rng(0))


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request):
    return Loaded(request.param)


@pytest.fixture(scope="module")
def roberta():
    return Loaded("roberta")


def _left_pad(ids, pad, pad_id, rng):
    """Adds `pad` padding columns on the left: junk ids, then pad ids, mask 0."""
    junk = rng.integers(3, 250, size=(ids.shape[0], pad - pad // 2)).astype(np.int32)
    pads = np.full((ids.shape[0], pad // 2), pad_id, np.int32)
    inputs = np.concatenate([junk, pads, ids], axis=1)
    mask = np.concatenate([np.zeros((ids.shape[0], pad), np.int32), np.ones_like(ids)], axis=1)
    return inputs, mask


def _hf_log_probs_at_mask(fam, with_prompt):
    logits = fam.exp["logits_prompt" if with_prompt else "logits"]
    col = fam.exp["mask_index"] + (fam.prompt.shape[0] if with_prompt else 0)
    picked = logits[np.arange(len(col)), col].astype(np.float64)
    return picked - np.log(np.exp(picked).sum(-1, keepdims=True))


# ---- parity with HF ------------------------------------------------------------


@pytest.mark.parametrize("with_prompt", [False, True])
def test_logits_match_hf(fam, with_prompt):
    prompt = fam.prompt if with_prompt else None
    got = np.asarray(fam.bb.logits(fam.ids, prompt=prompt))
    want = fam.exp["logits_prompt" if with_prompt else "logits"]
    assert got.shape == want.shape
    assert np.abs(want).max() > 1.0  # the fixture's logits are not degenerate
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_prompt_changes_logits(fam):
    p = fam.prompt.shape[0]
    a, b = fam.exp["logits"], fam.exp["logits_prompt"]
    assert np.abs(np.delete(b, np.s_[1:1 + p], axis=1) - a).max() > 1e-2


@pytest.mark.parametrize("with_prompt", [False, True])
def test_padded_hot_path_matches_hf_and_unpadded(fam, with_prompt):
    """Left padding with junk under the mask changes nothing; the mask-slot
    log-probabilities equal HF's."""
    prompt = fam.prompt if with_prompt else None
    padded = np.asarray(fam.score(fam.bb.params, prompt, fam.padded, fam.padded_mask, CAND, ONES))
    want = _hf_log_probs_at_mask(fam, with_prompt)[:, CAND[:, 0]]
    np.testing.assert_allclose(padded, want, atol=TOL, rtol=0)


def test_padded_equals_unpadded(roberta):
    args = (roberta.bb.params, roberta.prompt)
    unpadded = np.asarray(roberta.score(*args, roberta.ids, np.ones_like(roberta.ids), CAND, ONES))
    padded = np.asarray(roberta.score(*args, roberta.padded, roberta.padded_mask, CAND, ONES))
    assert np.all(np.isfinite(padded))
    np.testing.assert_allclose(padded, unpadded, atol=1e-5, rtol=0)


def test_ffn_activations_match_hf(fam):
    got = np.asarray(fam.ffn(fam.bb.params, fam.prompt, fam.padded, fam.padded_mask))
    layers, b, f = fam.exp["ffn_prompt"].shape
    assert got.shape == (layers, b, 1, f)
    np.testing.assert_allclose(got[:, :, 0], fam.exp["ffn_prompt"], atol=TOL, rtol=0)


# ---- scoring contract -----------------------------------------------------------


def test_score_candidates_equals_target_log_likelihood(roberta):
    inputs, mask = roberta.padded, roberta.padded_mask
    scores = np.asarray(roberta.score(roberta.bb.params, roberta.prompt, inputs, mask, CAND, ONES))
    assert scores.shape == (2, len(CAND))
    for c in range(len(CAND)):
        batch = dict(inputs=inputs, inputs_mask=mask, targets=np.full((2, 1), CAND[c, 0], np.int32),
                     targets_mask=np.ones((2, 1), np.int32))
        ll = np.asarray(roberta.tll(roberta.bb.params, roberta.prompt, batch))
        np.testing.assert_allclose(scores[:, c], ll, atol=1e-6, rtol=0)


def test_mask_slot_read_matches_full_logits_in_input_order(roberta):
    """Head-at-the-mask equals the full logits at the mask's input-order
    position [start, prompt, text] (checks the prompt placement too)."""
    p = roberta.prompt.shape[0]
    full = np.asarray(roberta.bb.logits(roberta.ids, prompt=roberta.prompt)).astype(np.float64)
    cols = roberta.exp["mask_index"] + p
    picked = full[np.arange(2), cols]
    want = picked - np.log(np.exp(picked).sum(-1, keepdims=True))
    got = np.asarray(roberta.score(roberta.bb.params, roberta.prompt, roberta.ids,
                                   np.ones_like(roberta.ids), CAND, ONES))
    np.testing.assert_allclose(got, want[:, CAND[:, 0]], atol=1e-5, rtol=0)


def test_gradient_reaches_prompt_only_input(roberta):
    batch = dict(inputs=roberta.padded, inputs_mask=roberta.padded_mask,
                 targets=np.array([[11], [12]], np.int32), targets_mask=np.ones((2, 1), np.int32))
    grad = jax.grad(lambda p: roberta.tll(roberta.bb.params, p, batch).sum())(roberta.prompt)
    assert grad.shape == roberta.prompt.shape
    assert np.all(np.abs(np.asarray(grad)).sum(-1) > 0)  # every prompt vector matters


def test_ffn_activations_equal_manual_layer_computation(roberta):
    """ON capture == GELU(h @ wi + b) on the captured input of each layer's FFN."""
    bb, params = roberta.bb, roberta.bb.params
    inputs, mask = roberta.padded, roberta.padded_mask
    got = np.asarray(roberta.ffn(params, roberta.prompt, inputs, mask))
    prompt = jnp.broadcast_to(jnp.asarray(roberta.prompt)[None], (2,) + roberta.prompt.shape)
    capture = jax.jit(lambda prm, pr: bb.module.apply(
        {"params": prm}, inputs, mask, pr, method=mlm.MlmEncoder.encode,
        capture_intermediates=True, mutable=["intermediates"])[1])
    state = capture(params, prompt)
    p = roberta.prompt.shape[0]
    col = p + np.argmax(inputs == bb.config.mask_id, axis=1)
    for i in range(bb.config.num_layers):
        h = np.asarray(state["intermediates"][f"layers_{i}"]["post_attention_layer_norm"]["__call__"][0])
        h = h[np.arange(2), col].astype(np.float64)
        wi = params[f"layers_{i}"]["mlp"]["wi"]
        pre = h @ np.asarray(wi["kernel"], np.float64) + np.asarray(wi["bias"], np.float64)
        manual = np.asarray(jax.nn.gelu(jnp.asarray(pre, jnp.float32), approximate=False))
        np.testing.assert_allclose(got[i, :, 0], manual, atol=1e-5, rtol=0)
        assert 0 < (got[i] > 0).mean() < 1  # the binarized ON pattern is not trivial


# ---- loading, presets, structure --------------------------------------------------


def test_load_backbone_hf_dispatch():
    import ptransfer

    for family in FAMILIES:
        bb = ptransfer.load_backbone(f"hf:{os.path.join(FIXTURES, family)}")
        assert isinstance(bb, mlm.MlmBackbone) and bb.family == "mlm"
        assert bb.config.flavor == family and not bb.add_eos_to_targets


def test_hf_config_special_ids(fam):
    c = fam.bb.config
    want = {"roberta": (1, 0, 2, 299, 2), "bert": (0, 101, 102, 103, 0)}[c.flavor]
    assert (c.pad_id, c.bos_id, c.eos_id, c.mask_id, c.position_offset) == want


@pytest.fixture(scope="module")
def tiny():
    return mlm.from_preset("mlm_tiny", seed=3)


def test_logical_axes_cover_params(tiny):
    bb = tiny
    flat_p = jax.tree_util.tree_leaves_with_path(bb.params)
    axes = bb.logical_axes()
    for path, leaf in flat_p:
        ax = axes
        for k in path:
            ax = ax[k.key]
        assert isinstance(ax, tuple) and len(ax) == leaf.ndim, path
    assert axes["layers_1"]["mlp"]["wi"]["kernel"] == ("embed", "mlp")
    assert axes["token_embedder"]["embedding"] == ("vocab", "embed")
    assert "mlm_head" in bb.params and "bias" in bb.params["layers_0"]["attention"]["query"]


def test_preset_storage_dtype_and_mesh():
    from jax.sharding import NamedSharding

    from ptransfer.core.sharding import make_mesh

    bb = mlm.from_preset("bert_tiny", seed=1, dtype=jnp.bfloat16, mesh=make_mesh(data=1, model=1))
    leaves = jax.tree_util.tree_leaves(bb.params)
    assert all(x.dtype == jnp.bfloat16 and isinstance(x.sharding, NamedSharding) for x in leaves)
    c = bb.config
    assert c.flavor == "bert" and c.position_offset == 0
    assert bb.vocab.tokenizer.id_to_token(c.mask_id) == "<mask>"
    assert bb.params["token_type_embedder"]["embedding"].shape == (2, c.d_model)
    assert bb.dummy_mlm_ids() == (c.bos_id, c.mask_id, c.eos_id)


def test_published_preset_shapes():
    """Parameter counts of HF RobertaForMaskedLM / BertForMaskedLM (tied decoder counted once)."""
    from ptransfer.core.sharding import num_params

    counts = {name: num_params(mlm._abstract_and_axes(mlm.PRESETS[name])[0])
              for name in ("roberta_base", "roberta_large", "bert_base_uncased")}
    assert counts == {"roberta_base": 124_697_433, "roberta_large": 355_412_057,
                      "bert_base_uncased": 109_514_298}


def test_tiny_preset_vocab_has_byte_ids_and_single_token_label_words(tiny):
    """The tiny presets' label-word BPE (mlm_vocab): byte ids for plain text, the
    config's special ids, and every registered task's MLM label words as one token."""
    import tasks

    bb, c = tiny, tiny.config
    tok = bb.vocab.tokenizer
    assert c.vocab_size >= bb.vocab.vocab_size and c.pad_id == bb.vocab.pad_id == 0
    assert [tok.id_to_token(i) for i in (c.pad_id, c.eos_id, c.bos_id, c.mask_id)] == [
        "<pad>", "</s>", "<s>", "<mask>"]
    text = "great movie, 10/10 \u00e9"
    assert bb.vocab.encode(text) == seqio.ByteVocabulary().encode(text)
    for name in tasks.task_names():
        words = tasks.get_spec(name).mlm_label_words
        ids = check_single_token_label_words(bb.vocab, words, name)
        assert len(set(ids)) == len(words) and min(ids, default=261) > c.mask_id
        assert [bb.vocab.decode([i]) for i in ids] == list(words)
    # a label word is one token inside text too, as in RoBERTa's BPE
    assert bb.vocab.encode("It was positive") == bb.vocab.encode("It was") + bb.vocab.encode(" positive")
    ids = np.array([[c.bos_id] + bb.vocab.encode("great movie") + [c.mask_id, c.eos_id]], np.int32)
    cand = np.array(check_single_token_label_words(bb.vocab, [" negative", " positive"], "mr"),
                    np.int32)[:, None]
    scores = np.asarray(bb.score_candidates(bb.params, None, ids, np.ones_like(ids), cand,
                                            np.ones_like(cand)))
    assert scores.shape == (1, 2) and np.all(np.isfinite(scores)) and np.all(scores < 0)


# ---- bad input ------------------------------------------------------------------


def test_no_mask_slot_is_a_config_error(roberta):
    bb, ids = roberta.bb, roberta.padded.copy()
    ids[1, ids[1] == bb.config.mask_id] = 7
    batch = dict(inputs=ids, inputs_mask=roberta.padded_mask, targets=np.ones((2, 1), np.int32),
                 targets_mask=np.ones((2, 1), np.int32))
    with pytest.raises(ConfigError, match=r"no mask token .*template"):
        bb.target_log_likelihood(bb.params, roberta.prompt, batch)
    with pytest.raises(ConfigError, match="no mask token"):
        bb.score_candidates(bb.params, roberta.prompt, ids, roberta.padded_mask, CAND, ONES)
    with pytest.raises(ConfigError, match="no mask token"):
        bb.ffn_activations(bb.params, roberta.prompt, ids, roberta.padded_mask)
    # Inside jit the check cannot raise: the row without a mask scores NaN.
    ll = np.asarray(jax.jit(bb.target_log_likelihood)(bb.params, roberta.prompt, batch))
    assert np.isfinite(ll[0]) and np.isnan(ll[1])


def test_mask_under_padding_does_not_count(roberta):
    ids = roberta.ids.copy()
    ids[1, ids[1] == roberta.bb.config.mask_id] = 7
    ids = np.concatenate([np.full((2, 1), roberta.bb.config.mask_id, np.int32), ids], axis=1)
    mask = np.concatenate([np.zeros((2, 1), np.int32), np.ones_like(roberta.ids)], axis=1)
    with pytest.raises(ConfigError, match="batch rows \\[1\\]"):
        mlm.check_mask_slots(ids, mask, roberta.bb.config.mask_id, task_name="sst2")


def test_multi_token_label_word_names_word_and_task():
    vocab = seqio.ByteVocabulary()
    assert check_single_token_label_words(vocab, ["a", "b"], "mr") == [100, 101]
    with pytest.raises(ConfigError, match=r"task 'mr': label word 'great' is 5 tokens"):
        check_single_token_label_words(vocab, ["a", "great"], "mr")


def test_multi_token_targets_rejected(roberta):
    cand = np.array([[5, 6], [7, 0]], np.int32)
    with pytest.raises(ConfigError, match="exactly one label token"):
        roberta.bb.score_candidates(roberta.bb.params, None, roberta.ids, np.ones_like(roberta.ids),
                                    cand, np.array([[1, 1], [1, 0]], np.int32))


def test_prompt_width_and_length_errors(roberta):
    bb = roberta.bb
    with pytest.raises(ConfigError, match=r"\[P, 32\]"):
        bb.logits(roberta.ids, prompt=np.zeros((4, 16), np.float32))
    with pytest.raises(ConfigError, match="exceeds the 38 positions"):
        bb.logits(roberta.ids, prompt=np.zeros((30, 32), np.float32))


def test_greedy_decode_refused(roberta):
    with pytest.raises(ConfigError, match="does not generate"):
        roberta.bb.greedy_decode(roberta.bb.params, None, roberta.ids, np.ones_like(roberta.ids), 4)


def test_untied_decoder_refused(tmp_path):
    src = os.path.join(FIXTURES, "roberta")
    for f in ("config.json",):
        shutil.copy(os.path.join(src, f), tmp_path / f)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    emb = tensors["roberta.embeddings.word_embeddings.weight"]
    save_file(dict(tensors, **{"lm_head.decoder.weight": emb}), str(tmp_path / "model.safetensors"))
    assert mlm.from_hf(str(tmp_path)).config.vocab_size == 300  # an identical copy is fine
    save_file(dict(tensors, **{"lm_head.decoder.weight": emb + 1}), str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="differs from the word embeddings"):
        mlm.from_hf(str(tmp_path))


def test_checkpoint_without_mlm_head_refused(tmp_path):
    src = os.path.join(FIXTURES, "bert")
    shutil.copy(os.path.join(src, "config.json"), tmp_path / "config.json")
    tensors = {k: v for k, v in load_file(os.path.join(src, "model.safetensors")).items()
               if not k.startswith("cls.")}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no masked-LM head"):
        mlm.from_hf(str(tmp_path))


def test_tokenizer_json_gives_vocab_and_mask_id(tmp_path):
    """With a tokenizer.json the mask id comes from it (not config.json) and label
    words are checked in that vocabulary."""
    import tokenizers
    from tokenizers import models, pre_tokenizers

    src = os.path.join(FIXTURES, "roberta")
    shutil.copy(os.path.join(src, "model.safetensors"), tmp_path / "model.safetensors")
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    del cfg["mask_token_id"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    words = ["<s>", "<pad>", "</s>", "<unk>", "great", "terrible", "movie", "it", "was", "very"]
    table = {w: i for i, w in enumerate(words)} | {"<mask>": 299}
    tok = tokenizers.Tokenizer(models.WordLevel(table, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"unk_token": "<unk>"}))

    bb = mlm.from_hf(str(tmp_path))
    assert bb.config.mask_id == 299 and type(bb.vocab).__name__ == "TokenizersVocabulary"
    assert check_single_token_label_words(bb.vocab, ["great", "terrible"], "mr") == [4, 5]
    with pytest.raises(ConfigError, match=r"task 'sst2': label word 'very great' is 2 tokens"):
        check_single_token_label_words(bb.vocab, ["great", "very great"], "sst2")
    with pytest.raises(ConfigError, match=r"label word 'awful' is not in this vocabulary"):
        check_single_token_label_words(bb.vocab, ["awful"], "sst2")
    (tmp_path / "tokenizer.json").unlink()
    del cfg["eos_token_id"]
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, mask_token_id=299)))
    assert mlm.from_hf(str(tmp_path)).config.eos_id == 2  # RoBERTa's published </s>
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="<mask> token id"):
        mlm.from_hf(str(tmp_path))  # no tokenizer, no config key, unpublished vocab size
