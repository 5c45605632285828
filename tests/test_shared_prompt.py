"""A decoder-only family computes one [P, D] prompt once for the batch.

Reference: the same prompt given per example ([B, P, D]), which runs the whole
sequence for every row as before. Scores, greedy tokens and the gradient with
respect to the prompt must agree within float32 tolerance.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptransfer.backbones import load_backbone
from ptransfer.backbones.base import shared_prompt_length


@pytest.fixture(scope="module", params=["llama_tiny", "gemma3_tiny"])
def case(request):
    bb = load_backbone(f"preset:{request.param}")
    rng = np.random.default_rng(0)
    b, li, lt, p = 3, 7, 3, 4
    inputs = rng.integers(5, 200, size=(b, li)).astype(np.int32)
    inputs_mask = np.ones((b, li), np.int32)
    inputs_mask[0, :3] = 0  # left padding between the prompt and the text
    inputs_mask[2, :1] = 0
    inputs = inputs * inputs_mask
    targets = rng.integers(5, 200, size=(b, lt)).astype(np.int32)
    targets_mask = np.ones((b, lt), np.int32)
    targets_mask[1, 2:] = 0
    prompt = (0.5 * rng.normal(size=(p, bb.d_model))).astype(np.float32)
    batch = {"inputs": inputs, "inputs_mask": inputs_mask, "targets": targets,
             "targets_mask": targets_mask}
    return bb, prompt, np.broadcast_to(prompt, (b,) + prompt.shape).copy(), batch


def test_shared_prompt_length():
    assert shared_prompt_length(None) == 0
    assert shared_prompt_length(np.zeros((4, 8))) == 4
    assert shared_prompt_length(np.zeros((2, 4, 8))) == 0


def test_loss_and_its_gradient_match_the_per_example_prompt(case):
    bb, prompt, per_example, batch = case

    def loss(p):
        return jnp.sum(bb.target_log_likelihood(bb.params, p, batch))

    shared, g_shared = jax.value_and_grad(loss)(prompt)
    full, g_full = jax.value_and_grad(loss)(per_example)
    np.testing.assert_allclose(shared, full, rtol=1e-5, atol=1e-4)
    # the per-example prompt's gradient summed over the batch is the shared prompt's
    np.testing.assert_allclose(g_shared, np.sum(g_full, axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bb.target_log_likelihood(bb.params, prompt, batch),
                               bb.target_log_likelihood(bb.params, per_example, batch),
                               rtol=1e-5, atol=1e-4)


def test_scores_and_greedy_tokens_match_the_per_example_prompt(case):
    bb, prompt, per_example, batch = case
    candidates = np.array([[11, 12, 13], [21, 22, 0]], np.int32)
    cmask = (candidates > 0).astype(np.int32)
    args = (batch["inputs"], batch["inputs_mask"], candidates, cmask)
    np.testing.assert_allclose(bb.score_candidates(bb.params, prompt, *args),
                               bb.score_candidates(bb.params, per_example, *args),
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(
        bb.greedy_decode(bb.params, prompt, batch["inputs"], batch["inputs_mask"], 4),
        bb.greedy_decode(bb.params, per_example, batch["inputs"], batch["inputs_mask"], 4))
