"""The low-precision (bfloat16) compute path against float32, on tiny models.

Policy (`ptransfer.backbones.layers`): matmul operands in bfloat16 with float32
accumulation, forward and backward; activations, norms, softmax and losses in
float32; the matmul weights stored once in bfloat16.

Stated tolerance: bfloat16 logits within 2% of the float32 logits' largest
magnitude (measured on these models: 0.4-0.8%), and the prompt gradient's
cosine with the float32 one above 0.99.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptransfer.backbones import configure_backbone, load_backbone
from ptransfer.training.optimizer import PRESETS, make_optimizer
from ptransfer.training.trainer import make_loss_fn, make_train_step

LOGIT_TOLERANCE = 0.02  # of max |float32 logit|

_COMPILES = [0]


def _on_event(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


def _data(d_model, seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(3, 250, (2, 12)).astype(np.int32)
    targets = rng.integers(3, 250, (2, 4)).astype(np.int32)
    prompt = (rng.standard_normal((4, d_model)) * 0.5).astype(np.float32)
    return inputs, targets, prompt


def _batch(inputs, targets):
    mask = lambda a: np.ones(a.shape, np.int32)  # noqa: E731
    return {"inputs": jnp.asarray(inputs), "inputs_mask": jnp.asarray(mask(inputs)),
            "targets": jnp.asarray(targets), "targets_mask": jnp.asarray(mask(targets))}


@pytest.fixture(scope="module", params=["llama_tiny", "t5_tiny", "bert_tiny"])
def pair(request):
    """(float32 backbone, its bfloat16 variant) sharing one random init."""
    b32 = load_backbone(f"preset:{request.param}")
    return b32, configure_backbone(b32, compute_dtype="bfloat16")


def test_bf16_logits_within_tolerance_of_f32(pair):
    b32, b16 = pair
    inputs, targets, prompt = _data(b32.d_model)
    kw = {} if b32.family == "mlm" else {"targets": targets}
    l32 = np.asarray(b32.logits(inputs, prompt=prompt, **kw))
    l16 = np.asarray(b16.logits(inputs, prompt=prompt, **kw))
    assert l16.dtype == np.float32 and l16.shape == l32.shape
    err = float(np.max(np.abs(l16 - l32)))
    assert 0.0 < err <= LOGIT_TOLERANCE * float(np.max(np.abs(l32))), err  # > 0: really bf16


def test_bf16_weights_stored_once_in_bf16(pair):
    b32, b16 = pair
    flat = jax.tree_util.tree_flatten_with_path(b16.params)[0]
    kinds = {path[-1].key: leaf.dtype for path, leaf in flat}
    assert kinds["kernel"] == jnp.bfloat16 and kinds["embedding"] == jnp.bfloat16
    assert kinds["scale"] == jnp.float32  # norms keep float32
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(b32.params))
    assert configure_backbone(b32, compute_dtype="bfloat16") is b16  # cast once, then reused


def test_bf16_prompt_gradient_matches_f32(pair):
    b32, b16 = pair
    inputs, targets, prompt = _data(b32.d_model, seed=1)
    if b32.masked_lm:
        # A masked LM scores label words at its mask slot: the loss is the candidates'
        # log-likelihood at '<s> <mask> </s>' (its template-free input).
        ids = np.tile(np.asarray([b32.stimulus_ids()], np.int32), (2, 1))
        cands, cmask = np.asarray([[10], [11]], np.int32), np.ones((2, 1), np.int32)

        def loss_of(bb):
            return lambda p, params: -jnp.mean(bb.score_candidates(
                params, p, ids, np.ones_like(ids), cands, cmask)[:, 0])
        g32 = np.asarray(jax.jit(jax.grad(loss_of(b32)))(jnp.asarray(prompt), b32.params))
        g16 = np.asarray(jax.jit(jax.grad(loss_of(b16)))(jnp.asarray(prompt), b16.params))
    else:
        batch = _batch(inputs, targets)
        g32 = np.asarray(jax.jit(jax.grad(make_loss_fn(b32)))(jnp.asarray(prompt), b32.params, batch))
        g16 = np.asarray(jax.jit(jax.grad(make_loss_fn(b16)))(jnp.asarray(prompt), b16.params, batch))
    assert g16.dtype == np.float32
    cos = float(np.sum(g32 * g16) / (np.linalg.norm(g32) * np.linalg.norm(g16)))
    assert cos > 0.99, cos


@pytest.mark.parametrize("preset", ["llama_tiny", "t5_tiny"])
def test_bf16_train_step_compiles_once_and_runs_bf16_matmuls(preset):
    bb = load_backbone(f"preset:{preset}", compute_dtype="bfloat16")
    inputs, targets, prompt = _data(bb.d_model, seed=2)
    batch = _batch(inputs, targets)
    optimizer = make_optimizer(PRESETS["adamw_t5"])
    step = make_train_step(bb, optimizer)
    prompt = jnp.asarray(prompt)
    state, rng = optimizer.init(prompt), jax.random.key_data(jax.random.PRNGKey(0))
    # Every matmul of the step, forward and backward, takes bfloat16 operands and
    # gives float32 (the cotangents are cast before the transposed matmuls).
    text = step.lower(prompt, state, rng, bb.params, batch).as_text()
    dots = [line for line in text.splitlines() if "dot_general" in line]
    assert dots
    for line in dots:
        operands, result = re.search(r": \((.*)\) -> (\S+)$", line.strip()).groups()
        assert operands.count("xbf16>") == 2 and result.endswith("xf32>"), line
    prompt, state, rng, loss0 = step(prompt, state, rng, bb.params, batch)
    compiles = _COMPILES[0]
    for _ in range(3):
        prompt, state, rng, loss = step(prompt, state, rng, bb.params, batch)
    jax.block_until_ready(loss)
    assert _COMPILES[0] == compiles, "the bf16 train step recompiled"
    assert step._cache_size() == 1
    assert prompt.dtype == jnp.float32 and np.isfinite(float(loss)) and float(loss) < float(loss0)
