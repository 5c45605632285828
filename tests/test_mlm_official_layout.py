"""The official RoBERTa code's input layout of the masked-LM family (`input_layout='official'`).

Reference: the HF RobertaForMaskedLM fixture (tests/fixtures/mlm/roberta, written by
`save_pretrained`), run by a float64 numpy forward of HF's architecture that reads the HF
tensor names and takes `inputs_embeds` and position ids explicitly. The forward is first
checked against HF's own logits recorded in the fixture (ptransfer's layout), then given
the official layout by hand: [emb(<mask>), prompt[1:], emb(<s> text </s>)], zero position
embedding rows on the prompt slots, the start token at position padding_idx + 1 + P.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file
from scipy.special import erf

import tasks
from ptransfer import data as features
from ptransfer import scoring
from ptransfer.backbones import check_backbone_spec, load_backbone, mlm
from ptransfer.core.errors import ConfigError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "mlm", "roberta")
TOL = 1e-4


# ---- the numpy reference of HF's RobertaForMaskedLM ------------------------------------


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def hf_forward(t, cfg, inputs_embeds, position_rows):
    """HF RobertaForMaskedLM logits of one sequence, float64: inputs_embeds [S, D] and
    the position embedding added to each column, position_rows [S, D]; all keys real."""
    eps, heads = cfg.layer_norm_epsilon, cfg.num_heads
    lin = lambda x, n: x @ t[n + ".weight"].T + t[n + ".bias"]  # noqa: E731
    e = "roberta.embeddings"
    x = inputs_embeds + position_rows + t[f"{e}.token_type_embeddings.weight"][0]
    x = _ln(x, t[f"{e}.LayerNorm.weight"], t[f"{e}.LayerNorm.bias"], eps)
    s, d = x.shape
    hd = d // heads
    gelu = lambda h: 0.5 * h * (1 + erf(h / np.sqrt(2)))  # noqa: E731
    for i in range(cfg.num_layers):
        p = f"roberta.encoder.layer.{i}"
        q, k, v = (lin(x, f"{p}.attention.self.{n}").reshape(s, heads, hd)
                   for n in ("query", "key", "value"))
        w = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        w = np.exp(w - w.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        att = lin(np.einsum("hqk,khd->qhd", w, v).reshape(s, d), f"{p}.attention.output.dense")
        x = _ln(x + att, t[f"{p}.attention.output.LayerNorm.weight"],
                t[f"{p}.attention.output.LayerNorm.bias"], eps)
        h = lin(gelu(lin(x, f"{p}.intermediate.dense")), f"{p}.output.dense")
        x = _ln(x + h, t[f"{p}.output.LayerNorm.weight"], t[f"{p}.output.LayerNorm.bias"], eps)
    h = _ln(gelu(lin(x, "lm_head.dense")), t["lm_head.layer_norm.weight"],
            t["lm_head.layer_norm.bias"], eps)
    return h @ t[f"{e}.word_embeddings.weight"].T + t["lm_head.bias"]


@pytest.fixture(scope="module")
def ref():
    t = {k: v.astype(np.float64) for k, v in load_file(os.path.join(FIXTURE, "model.safetensors")).items()}
    exp = dict(np.load(os.path.join(FIXTURE, "expected.npz")))
    bb = mlm.from_hf(FIXTURE)
    return t, exp, bb, mlm.with_input_layout(bb, "official")


def test_numpy_reference_reproduces_hf_logits(ref):
    """The reference forward equals HF's recorded logits (inputs_embeds = [emb(<s>), prompt,
    emb(rest)], sequential positions from padding_idx + 1), so it may stand in for HF."""
    t, exp, bb, _ = ref
    c = bb.config
    words, pos = t["roberta.embeddings.word_embeddings.weight"], t["roberta.embeddings.position_embeddings.weight"]
    prompt = exp["prompt"].astype(np.float64)
    for b, ids in enumerate(exp["input_ids"]):
        embeds = np.concatenate([words[ids[:1]], prompt, words[ids[1:]]])
        rows = pos[c.pad_id + 1 + np.arange(len(embeds))]
        np.testing.assert_allclose(hf_forward(t, c, embeds, rows), exp["logits_prompt"][b],
                                   atol=TOL, rtol=0)


def _official_reference(t, c, ids, prompt):
    """The official layout by hand: [emb(<mask>), prompt[1:], emb(ids)], zero position
    rows on the P slots, ids at positions padding_idx + 1 + P + j. Logits [S, V]."""
    words, pos = t["roberta.embeddings.word_embeddings.weight"], t["roberta.embeddings.position_embeddings.weight"]
    p = len(prompt)
    embeds = np.concatenate([words[[c.mask_id]], prompt[1:], words[ids]])
    rows = np.concatenate([np.zeros((p, c.d_model)), pos[c.pad_id + 1 + p + np.arange(len(ids))]])
    return hf_forward(t, c, embeds, rows)


def _without_mask(exp, c):
    """The fixture's inputs with their mask token dropped: [B, S - 1], <s> ... </s>."""
    ids = exp["input_ids"]
    return np.stack([row[row != c.mask_id] for row in ids]).astype(np.int32)


def test_official_logits_at_mask_slot_match_reference(ref):
    t, exp, _, off = ref
    c = off.config
    ids = _without_mask(exp, c)
    prompt = exp["prompt"]
    got = np.asarray(off.logits(ids, prompt=prompt))
    assert got.shape == (ids.shape[0], prompt.shape[0] + ids.shape[1], c.vocab_size)
    for b in range(ids.shape[0]):
        want = _official_reference(t, c, ids[b], prompt.astype(np.float64))
        assert np.abs(want[0]).max() > 1.0
        np.testing.assert_allclose(got[b], want, atol=TOL, rtol=0)
    # the layouts really differ: ptransfer's own reads another distribution
    own = np.asarray(ref[2].logits(exp["input_ids"].astype(np.int32), prompt=prompt))
    mask_col = exp["mask_index"] + prompt.shape[0]
    assert np.abs(own[np.arange(len(mask_col)), mask_col] - got[:, 0]).max() > 1e-2


def test_official_hot_paths_read_the_mask_slot_under_left_padding(ref):
    """score_candidates / target_log_likelihood (training's loss) equal log-softmax of the
    reference's column 0, with junk under left padding; without a prompt the layout is
    [<mask>] <s> ... </s>."""
    t, exp, _, off = ref
    c = off.config
    ids = _without_mask(exp, c)
    pad = 4
    junk = np.random.default_rng(0).integers(3, 250, size=(ids.shape[0], pad)).astype(np.int32)
    junk[0, 1] = c.mask_id  # a mask token under the padding is not read
    inputs = np.concatenate([junk, ids], axis=1)
    mask = np.concatenate([np.zeros_like(junk), np.ones_like(ids)], axis=1)
    vocab_ids = np.arange(c.vocab_size, dtype=np.int32)[:, None]
    for prompt in (exp["prompt"], None):
        if prompt is None:
            want = np.stack([_official_reference(t, c, row, np.zeros((1, c.d_model)))[0] for row in ids])
        else:
            want = np.stack([_official_reference(t, c, row, prompt.astype(np.float64))[0] for row in ids])
        want = want - np.log(np.exp(want).sum(-1, keepdims=True))
        got = np.asarray(off.score_candidates(off.params, prompt, inputs, mask, vocab_ids,
                                              np.ones_like(vocab_ids)))
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
        labels = np.array([[7], [123]], np.int32)
        tll = np.asarray(off.target_log_likelihood(off.params, prompt, {
            "inputs": inputs, "inputs_mask": mask, "targets": labels,
            "targets_mask": np.ones_like(labels)}))
        np.testing.assert_allclose(tll, want[np.arange(2), labels[:, 0]], atol=TOL, rtol=0)


def test_official_prompt_row_0_is_replaced_by_the_mask(ref):
    _, exp, _, off = ref
    ids = _without_mask(exp, off.config)
    prompt = jnp.asarray(exp["prompt"])
    labels = np.array([[7], [123]], np.int32)
    batch = {"inputs": ids, "inputs_mask": np.ones_like(ids), "targets": labels,
             "targets_mask": np.ones_like(labels)}
    loss = lambda p: -jnp.sum(off.target_log_likelihood(off.params, p, batch))  # noqa: E731
    grad = np.asarray(jax.grad(loss)(prompt))
    assert np.all(grad[0] == 0) and np.abs(grad[1:]).min(axis=1).max() > 0
    moved = prompt.at[0].add(3.0)
    np.testing.assert_array_equal(np.asarray(loss(moved)), np.asarray(loss(prompt)))


# ---- the task's official input form and rank classification -------------------------------


def test_official_task_form_and_rank_classification(assets_dir):
    """mr in the official form: `<s> text </s>` (no template text, no mask); the Scorer's
    prediction is the argmax over the label words of the logits at the mask slot."""
    bb = load_backbone("preset:mlm_tiny?input_layout=official")
    assert bb.name == "mlm_tiny+official" and bb.config.input_layout == "official"
    c, spec = bb.config, tasks.get_spec("mr")
    task, is_mlm = features.load_task("mr", bb, None)
    assert is_mlm and task.name.endswith("o")
    own = features.load_task("mr", mlm.from_preset("mlm_tiny"), None)[0]
    assert own.name != task.name
    lengths = {"inputs": 24, "targets": 1}
    batch = next(features.iterate_batches(task, "validation", 6, lengths, shuffle=False,
                                          repeat=False))
    texts = [r["inputs_pretokenized"].decode() for r in
             task.get_dataset(split="validation", shuffle=False).take(6).as_numpy_iterator()]
    for i in range(6):
        real = batch["inputs"][i][batch["inputs_mask"][i] == 1].tolist()
        assert c.mask_id not in real and real[0] == c.bos_id and real[-1] == c.eos_id
        full = [c.bos_id] + bb.vocab.encode(texts[i]) + [c.eos_id]
        # too long: cut at the end, the end token kept (official formatters)
        assert real == (full if len(full) <= 24 else full[:23] + [c.eos_id])
    eval_set = scoring.build_eval_set(task, spec, bb, "validation", 6, lengths, mlm=True)
    prompt = np.random.default_rng(1).standard_normal((4, c.d_model)).astype(np.float32)
    scores = np.asarray(scoring.Scorer(bb, batch_size=6).candidate_log_likelihoods(prompt, eval_set))
    cands, _ = features.label_candidates(spec, bb.vocab, False, 1, mlm=True)
    logits = np.asarray(bb.logits(batch["inputs"][:1][:, batch["inputs_mask"][0] == 1],
                                  prompt=prompt))[0, 0]
    log_probs = logits - np.log(np.exp(logits.astype(np.float64)).sum())
    np.testing.assert_allclose(scores[0], log_probs[cands[:, 0]], atol=1e-4, rtol=0)
    metrics = scoring.Scorer(bb, batch_size=6).evaluate(prompt, eval_set)
    want = 100.0 * np.mean(scores.argmax(1) == np.asarray(eval_set.labels))
    assert metrics["accuracy"] == pytest.approx(want)


# ---- bad values -----------------------------------------------------------------------------


def test_bad_input_layout_is_one_config_error():
    with pytest.raises(ConfigError, match=r"input_layout 'offical' is unknown.*'official'"):
        mlm.MlmConfig(d_model=8, num_heads=2, d_ff=8, num_layers=1, vocab_size=400,
                      max_positions=16, input_layout="offical")
    with pytest.raises(ConfigError, match=r"input_layout 'roberta' is unknown"):
        check_backbone_spec("preset:mlm_tiny?input_layout=roberta")
    with pytest.raises(ConfigError, match=r"option 'layout=official' is not understood"):
        check_backbone_spec("preset:mlm_tiny?layout=official")
    with pytest.raises(ConfigError, match=r"applies to mlm backbones only"):
        check_backbone_spec("preset:t5_tiny?input_layout=official")
