"""A decoder-only family computes one [P, D] prompt once for the batch.

Reference: the same prompt given per example ([B, P, D]), which runs the whole
sequence for every row as before. Scores, greedy tokens and the gradient with
respect to the prompt must agree within float32 tolerance. The tiny presets
would not share under 'auto' (too few FLOPs saved), so the fixture forces it.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptransfer.backbones import load_backbone
from ptransfer.backbones.base import shared_prompt_length
from ptransfer.backbones.decoder_only import (
    SHARED_PROMPT_MIN_FLOPS,
    matmul_flops_per_position,
    shared_prefix_length,
)
from ptransfer.backbones.gemma3.config import PRESETS as GEMMA_PRESETS
from ptransfer.backbones.llama import PRESETS as LLAMA_PRESETS
from ptransfer.core.errors import ConfigError


def with_sharing(bb, mode):
    """`bb` with its config's share_prompt set (params shared)."""
    init = {f.name: getattr(bb, f.name) for f in dataclasses.fields(bb) if f.init}
    init["config"] = dataclasses.replace(bb.config, share_prompt=mode).validate()
    return type(bb)(**init)


@pytest.fixture(scope="module", params=["llama_tiny", "gemma3_tiny"])
def case(request):
    bb = with_sharing(load_backbone(f"preset:{request.param}"), "always")
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


def test_share_prompt_modes_and_the_auto_threshold():
    tiny, small = LLAMA_PRESETS["llama_tiny"], LLAMA_PRESETS["smollm2_135m"]
    prompt = np.zeros((4, tiny.d_model), np.float32)
    # (q + 2 kv heads) * 16 * 64 + 4 * 16 * 64 + 3 * 64 * 128 per layer, 2 layers, 2 FLOPs each
    assert matmul_flops_per_position(tiny) == 2 * 2 * (8 * 16 * 64 + 64 * 64 + 3 * 64 * 128)
    assert shared_prefix_length(tiny, prompt, 8) == 0  # 7 * 4 * 147k FLOPs: not worth it
    assert shared_prefix_length(dataclasses.replace(tiny, share_prompt="always"), prompt, 8) == 4
    assert shared_prefix_length(small, prompt, 8) == 4
    assert shared_prefix_length(dataclasses.replace(small, share_prompt="never"), prompt, 8) == 0
    assert shared_prefix_length(small, prompt, 1) == 0  # one row: nothing to share
    assert shared_prefix_length(small, prompt[None], 8) == 0  # per-example prompts
    # the boundary: exactly the threshold shares, one position fewer does not
    per = matmul_flops_per_position(small)
    rows = int(np.ceil(SHARED_PROMPT_MIN_FLOPS / per))
    assert shared_prefix_length(small, np.zeros((rows, 1)), 2) == rows
    assert shared_prefix_length(small, np.zeros((rows - 1, 1)), 2) == 0
    gemma = GEMMA_PRESETS["gemma3_270m"]
    assert shared_prefix_length(gemma, np.zeros((10, 1)), 4) == 10
    with pytest.raises(ConfigError, match="share_prompt 'sometimes' is not one of auto"):
        dataclasses.replace(tiny, share_prompt="sometimes").validate()
