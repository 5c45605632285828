"""The optimized evaluation path scores exactly what the naive per-label method scores.

Optimized: `Scorer.candidate_log_likelihoods` -> `Backbone.score_candidates`
(T5: encoder once, all labels decoded in one call; decoder-only: one pass over
prompt + input, label continuations from the shared KV cache). Naive: for
each label word, every input with that label as its target through the
ordinary teacher-forced `target_log_likelihood`.
"""

from __future__ import annotations

from types import SimpleNamespace

import jax
import numpy as np
import pytest

from ptransfer.backbones import llama, t5
from ptransfer.scoring import EvalSet, Scorer

PROMPT_LEN = 3
# Multi-token label words of unequal length; two share their first token, so a
# continuation that leaked across labels in a shared pass would change scores.
LABEL_IDS = {
    2: [[11, 12, 13], [21]],
    3: [[11, 12, 13, 14], [21], [11, 40]],
}


@pytest.fixture(scope="module", params=["t5_tiny", "t5_1_1_tiny", "llama_tiny"])
def backbone(request):
    family = llama if request.param.startswith("llama") else t5
    bb = family.from_preset(request.param, seed=3)
    bb.jit_tll = jax.jit(bb.target_log_likelihood)  # one compilation per backbone
    return bb


TARGET_LEN = 5  # one Lt for every label set: the naive path compiles once per backbone


def _candidates(backbone, ids):
    """[C, TARGET_LEN] right-padded (+ EOS where the family appends it) and the mask."""
    eos = [int(backbone.vocab.eos_id)] if backbone.add_eos_to_targets else []
    seqs = [list(s) + eos for s in ids]
    lt = TARGET_LEN
    c = np.zeros((len(seqs), lt), np.int32)
    m = np.zeros((len(seqs), lt), np.int32)
    for i, s in enumerate(seqs):
        c[i, :len(s)], m[i, :len(s)] = s, 1
    return c, m


def _inputs(n=5, length=7, seed=0):
    """Left-padded inputs of unequal lengths [n, length] and their mask."""
    rng = np.random.default_rng(seed)
    x = rng.integers(3, 250, size=(n, length)).astype(np.int32)
    m = np.ones_like(x)
    for i, real in enumerate([7, 4, 6, 2, 7][:n]):
        x[i, :length - real], m[i, :length - real] = 0, 0
    return x, m


def _naive(backbone, prompt, inputs, inputs_mask, cands, cmask):
    """[N, C]: one teacher-forced pass per label word over all inputs."""
    cols = []
    for j in range(len(cands)):
        n = len(inputs)
        batch = {"inputs": inputs, "inputs_mask": inputs_mask,
                 "targets": np.repeat(cands[j:j + 1], n, 0), "targets_mask": np.repeat(cmask[j:j + 1], n, 0)}
        cols.append(np.asarray(backbone.jit_tll(backbone.params, prompt, batch)))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("num_labels", sorted(LABEL_IDS))
def test_optimized_scores_equal_naive_per_label_scores(backbone, num_labels):
    cands, cmask = _candidates(backbone, LABEL_IDS[num_labels])
    inputs, inputs_mask = _inputs()
    prompt = np.random.default_rng(1).normal(size=(PROMPT_LEN, backbone.d_model)).astype(np.float32)
    eval_set = EvalSet(spec=SimpleNamespace(name="labels", is_classification=True), split="test",
                       inputs=inputs, inputs_mask=inputs_mask, candidates=cands, candidates_mask=cmask)
    # batch 2 over 5 examples: the last call is padded, as in a real evaluation.
    got = Scorer(backbone, batch_size=2).candidate_log_likelihoods(prompt, eval_set)
    want = _naive(backbone, prompt, inputs, inputs_mask, cands, cmask)
    assert got.shape == (len(inputs), num_labels)
    # Scores are sums of several log-probs of ~-5.5 each: tight absolute tolerance.
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
    # Labels differ in length, so their scores must differ too (the comparison is not vacuous).
    assert np.all(np.std(want, axis=1) > 0.1)
