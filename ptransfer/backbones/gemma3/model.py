"""Gemma 3 text decoder (Flax linen), its pure forward functions and the Backbone.

Architecture (HF `Gemma3ForCausalLM` semantics): token embedding times
sqrt(d_model); N blocks of [RMSNorm -> grouped-query attention (per-head
RMSNorm of q and k, then RoPE) -> RMSNorm -> residual, RMSNorm -> GeGLU MLP
(tanh GELU) -> RMSNorm -> residual]; final RMSNorm; the embedding as the
head. Local layers attend within a sliding window, global ones over the whole
prefix (see `Gemma3Config`). No biases, no logit soft-capping.

Parameter tree (T5X-like names, kernels [in, out]):

  token_embedder/embedding                        [V, D]     ('vocab', 'embed')  tied head
  layers_N/pre_attention_layer_norm/scale         [D]        ('embed',)
  layers_N/attention/{query,key,value}/kernel     [D, H*Dh]  ('embed', 'joined_kv')
  layers_N/attention/{query_norm,key_norm}/scale  [Dh]       ('kv',)
  layers_N/attention/out/kernel                   [H*Dh, D]  ('joined_kv', 'embed')
  layers_N/post_attention_layer_norm/scale        [D]
  layers_N/pre_mlp_layer_norm/scale               [D]
  layers_N/mlp/{wi_0,wi_1}/kernel                 [D, F]     ('embed', 'mlp')   gate, up
  layers_N/mlp/wo/kernel                          [F, D]     ('mlp', 'embed')   down
  layers_N/post_mlp_layer_norm/scale              [D]
  decoder_norm/scale                              [D]

Every norm scale is the multiplier itself: HF stores w and multiplies by
(1 + w), llama.cpp's GGUF stores 1 + w; ptransfer keeps the GGUF form.

Sequence layout of every forward pass: [prompt; BOS; inputs (left-padded);
targets (right-padded)]. The BOS is added here, so callers never add it; it
sits where HF PEFT puts it (virtual tokens first, then the tokenizer's
`<bos>` text), so a prompt exported in PEFT's format means the same thing on
both sides. No output covers the BOS position. Positions are cumsum(mask) - 1
and padded keys are masked, so padding (between BOS and the inputs) changes
nothing for real tokens; the sliding window is measured in those positions.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptransfer.backbones import layers
from ptransfer.backbones.base import batched_prompt, prompt_length
from ptransfer.backbones.decoder_only import (
    DecoderKernels,
    DecoderOnlyBackbone,
    decode_sharing_prompt,
    shared_prefix_length,
)
from ptransfer.backbones.gemma3.config import Gemma3Config
from ptransfer.backbones.llama import apply_rope, causal_allowed, positions_from_mask

# ---- Flax modules --------------------------------------------------------------

class Attention(nn.Module):
    """Grouped-query self-attention with QK-norm, RoPE and an optional KV cache."""

    config: Gemma3Config
    sliding: bool

    @nn.compact
    def __call__(self, x, positions, bias, cache=None, cache_index=None):
        """x [B, T, D], positions [B, T], bias [B, 1, T, S]; cache as `llama.Attention`.

        Returns (out [B, T, D], (k, v) as attended over).
        """
        c = self.config
        dt = c.compute_dtype
        b, t, _ = x.shape
        dense = lambda n, name: layers.Dense(n, ("embed", "joined_kv"), dtype=dt, name=name)  # noqa: E731
        q = dense(c.num_heads * c.head_dim, "query")(x).reshape(b, t, c.num_heads, c.head_dim)
        k = dense(c.num_kv_heads * c.head_dim, "key")(x).reshape(b, t, c.num_kv_heads, c.head_dim)
        v = dense(c.num_kv_heads * c.head_dim, "value")(x).reshape(b, t, c.num_kv_heads, c.head_dim)
        q = layers.RMSNorm(c.norm_eps, dt, ("kv",), name="query_norm")(q)
        k = layers.RMSNorm(c.norm_eps, dt, ("kv",), name="key_norm")(k)
        theta = c.rope_local_theta if self.sliding else c.rope_theta
        q = apply_rope(q, positions, theta)
        k = apply_rope(k, positions, theta)
        if cache is not None:
            ck, cv = cache
            if cache_index is None:
                k = jnp.concatenate([ck.astype(k.dtype), k], axis=1)
                v = jnp.concatenate([cv.astype(v.dtype), v], axis=1)
            else:
                k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
                v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
        out = layers.dot_product_attention(q, k, v, bias, scale=c.query_pre_attn_scalar ** -0.5, dtype=dt)
        out = layers.Dense(c.d_model, ("joined_kv", "embed"), dtype=dt, name="out")(
            out.reshape(b, t, c.num_heads * c.head_dim))
        return out, (k, v)


class MLP(nn.Module):
    """GeGLU: wo(gelu_tanh(wi_0 x) * wi_1 x).

    Captures (sow 'intermediates', [B, T, F]) the gate's pre-activation
    `wi_0 x` as 'gate' (ON's default rule: a neuron is active when its gate is
    open) and `gelu_tanh(gate) * up`, each neuron's coefficient on its row of
    `wo`, as 'activations' (the 'product' rule), as the LLaMA family does for
    SwiGLU.
    """

    config: Gemma3Config

    @nn.compact
    def __call__(self, x):
        c = self.config
        dt = c.compute_dtype
        gate = layers.Dense(c.d_ff, ("embed", "mlp"), dtype=dt, name="wi_0")(x)
        up = layers.Dense(c.d_ff, ("embed", "mlp"), dtype=dt, name="wi_1")(x)
        h = jax.nn.gelu(gate, approximate=True) * up
        self.sow("intermediates", "gate", gate)
        self.sow("intermediates", "activations", h)
        return layers.Dense(c.d_model, ("mlp", "embed"), dtype=dt, name="wo")(h)


class DecoderLayer(nn.Module):
    config: Gemma3Config
    sliding: bool

    @nn.compact
    def __call__(self, x, positions, bias, cache=None, cache_index=None):
        c = self.config
        norm = lambda name: layers.RMSNorm(c.norm_eps, c.compute_dtype, name=name)  # noqa: E731
        a, kv = Attention(c, self.sliding, name="attention")(
            norm("pre_attention_layer_norm")(x), positions, bias, cache, cache_index)
        x = x + norm("post_attention_layer_norm")(a)
        h = MLP(c, name="mlp")(norm("pre_mlp_layer_norm")(x))
        return x + norm("post_mlp_layer_norm")(h), kv


class Gemma3Model(nn.Module):
    """The frozen network. Methods: embed, decode, head (and __call__ for init)."""

    config: Gemma3Config

    def setup(self):
        c = self.config
        self.token_embedder = layers.Embed(c.vocab_size, c.d_model, c.compute_dtype)
        layer = layers.remat_layer(DecoderLayer, c.remat)
        self.layers = [layer(c, not c.is_global(i)) for i in range(c.num_layers)]  # layers_0 ...
        self.decoder_norm = layers.RMSNorm(c.norm_eps, c.compute_dtype)

    def embed(self, ids):
        """ids [...] -> scaled embeddings [..., D] (times sqrt(D), rounded to the compute dtype)."""
        x = self.token_embedder(ids)
        return x * jnp.asarray(self.config.d_model ** 0.5, x.dtype)

    def decode(self, x, positions, key_positions, allowed, caches=None, cache_index=None):
        """Embedded sequence -> final-norm hidden states.

        x [B, T, D]; positions [B, T] of the queries, key_positions [B, S] of
        the keys attended over; allowed bool [B, 1, T, S] (causal and real
        keys); caches: None or one (k, v) per layer (see `llama.Attention`).
        Returns (h [B, T, D], [(k, v)] per layer).
        """
        c = self.config
        near = positions[:, None, :, None] - key_positions[:, None, None, :] < c.sliding_window
        full_bias = layers.mask_to_bias(allowed)
        window_bias = layers.mask_to_bias(allowed & near)
        new = []
        for i, layer in enumerate(self.layers):
            bias = full_bias if c.is_global(i) else window_bias
            x, kv = layer(x, positions, bias, None if caches is None else caches[i], cache_index)
            new.append(kv)
        return self.decoder_norm(x), new

    def head(self, h):
        """[..., D] -> float32 logits [..., V] (the tied embedding)."""
        return self.token_embedder.attend(h).astype(jnp.float32)

    def __call__(self, ids):
        mask = jnp.ones(ids.shape, jnp.int32)
        pos = positions_from_mask(mask)
        h, _ = self.decode(self.embed(ids), pos, pos, causal_allowed(mask))
        return self.head(h)


# ---- forward functions (pure; config static, so equal configs share compiled code) ----

def _apply(config, params, *args, method, **kwargs):
    return Gemma3Model(config).apply({"params": params}, *args, method=method, **kwargs)


def _embed(config, params, ids):
    return _apply(config, params, ids, method=Gemma3Model.embed)


def _head(config, params, h):
    return _apply(config, params, h, method=Gemma3Model.head)


def _without_bos(config, x, prompt):
    """[B, P + 1 + L, ...] -> [B, P + L, ...]: drops the BOS position (none without BOS)."""
    if config.bos_id is None:
        return x
    p = prompt_length(prompt)
    return jnp.concatenate([x[:, :p], x[:, p + 1:]], axis=1)


def _prefix(config, params, prompt, inputs, inputs_mask):
    """[prompt; BOS; embedded inputs] [B, P + 1 + Li, D] and its mask."""
    b = inputs.shape[0]
    x = _embed(config, params, inputs)
    mask = inputs_mask.astype(jnp.int32)
    if config.bos_id is not None:
        bos = _embed(config, params, jnp.full((b, 1), config.bos_id, jnp.int32))
        x = jnp.concatenate([bos, x], axis=1)
        mask = jnp.concatenate([jnp.ones((b, 1), jnp.int32), mask], axis=1)
    p = batched_prompt(prompt, b, x.dtype)
    if p is not None:
        x = jnp.concatenate([p, x], axis=1)
        mask = jnp.concatenate([jnp.ones(p.shape[:2], jnp.int32), mask], axis=1)
    return x, mask


def _decode(config, params, x, mask, prompt=None, **kwargs):
    """Causal pass over a whole masked sequence: (h [B, S, D], caches); the prompt
    as in `llama._decode`."""
    def decode(x, positions, key_positions, allowed, caches, **kw):
        return _apply(config, params, x, positions, key_positions, allowed, caches,
                      method=Gemma3Model.decode, **kw)

    return decode_sharing_prompt(decode, x, positions_from_mask(mask), causal_allowed(mask),
                                 shared_prefix_length(config, prompt, x.shape[0]), **kwargs)


@functools.partial(jax.jit, static_argnums=0)
def _target_log_likelihood(config, params, prompt, inputs, inputs_mask, targets, targets_mask):
    x, mask = _prefix(config, params, prompt, inputs, inputs_mask)
    s0, lt = x.shape[1], targets.shape[1]
    x = jnp.concatenate([x, _embed(config, params, targets)], axis=1)
    mask = jnp.concatenate([mask, targets_mask.astype(jnp.int32)], axis=1)
    h, _ = _decode(config, params, x, mask, prompt)
    # Only the Lt positions that predict a target reach the 262k-row head.
    logits = _head(config, params, h[:, s0 - 1: s0 - 1 + lt])
    lp = layers.gather_log_probs(logits, targets)
    return jnp.sum(lp * targets_mask.astype(jnp.float32), axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def _score_candidates(config, params, prompt, inputs, inputs_mask, candidates, candidates_mask):
    """Prefix once -> KV cache; then all C continuations in one block-diagonal call
    (as `llama._score_candidates`)."""
    x, mask = _prefix(config, params, prompt, inputs, inputs_mask)
    b, s0 = mask.shape
    c, lt = candidates.shape
    cmask = candidates_mask.astype(jnp.float32)
    h, caches = _decode(config, params, x, mask, prompt)
    first = jax.nn.log_softmax(_head(config, params, h[:, -1]), axis=-1)  # [B, V]
    scores = first[:, candidates[:, 0]] * cmask[None, :, 0]
    if lt == 1:
        return scores
    t = c * (lt - 1)
    xc = _embed(config, params, candidates[:, :-1].reshape(t))
    xc = jnp.broadcast_to(xc[None], (b, t, xc.shape[-1]))
    step = jnp.tile(jnp.arange(lt - 1), c)  # [T] offset within its candidate
    cand = jnp.repeat(jnp.arange(c), lt - 1)  # [T] which candidate
    positions = jnp.sum(mask, axis=-1, keepdims=True) + step[None]
    key_positions = jnp.concatenate([positions_from_mask(mask), positions], axis=1)
    own = (cand[:, None] == cand[None, :]) & (step[None, :] <= step[:, None])  # [T, T]
    allowed = jnp.concatenate([
        jnp.broadcast_to(mask[:, None, None, :].astype(bool), (b, 1, t, s0)),
        jnp.broadcast_to(own[None, None], (b, 1, t, t))], axis=-1)
    hc, _ = _apply(config, params, xc, positions, key_positions, allowed, caches,
                   method=Gemma3Model.decode)
    lp = layers.gather_log_probs(_head(config, params, hc),
                                 jnp.broadcast_to(candidates[:, 1:].reshape(t), (b, t)))
    return scores + jnp.sum(lp.reshape(b, c, lt - 1) * cmask[None, :, 1:], axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _greedy_tokens(config, params, prompt, inputs, inputs_mask, max_decode_len):
    """int32 [B, max_decode_len] argmax continuation, KV-cached (EOS not handled here)."""
    x, mask = _prefix(config, params, prompt, inputs, inputs_mask)
    b, s0 = mask.shape
    h, caches = _decode(config, params, x, mask, prompt)
    first = jnp.argmax(_head(config, params, h[:, -1]), axis=-1).astype(jnp.int32)
    steps = max_decode_len - 1  # the last token is never fed back
    if steps == 0:
        return first[:, None]
    pad = ((0, 0), (0, steps), (0, 0), (0, 0))
    caches = [(jnp.pad(k, pad), jnp.pad(v, pad)) for k, v in caches]
    key_mask = jnp.pad(mask, ((0, 0), (0, steps)))
    n = jnp.sum(mask, axis=-1)  # real prefix tokens: the next position
    key_positions = jnp.concatenate([positions_from_mask(mask),
                                     n[:, None] + jnp.arange(steps)[None]], axis=1)

    def step(carry, i):
        tok, caches, key_mask = carry
        key_mask = jax.lax.dynamic_update_slice(key_mask, jnp.ones((b, 1), jnp.int32), (0, s0 + i))
        allowed = key_mask[:, None, None, :].astype(bool)
        hs, caches = _apply(config, params, _embed(config, params, tok[:, None]), (n + i)[:, None],
                            key_positions, allowed, caches, s0 + i, method=Gemma3Model.decode)
        nxt = jnp.argmax(_head(config, params, hs[:, 0]), axis=-1).astype(jnp.int32)
        return (nxt, caches, key_mask), tok

    (last, _, _), toks = jax.lax.scan(step, (first, caches, key_mask), jnp.arange(steps))
    return jnp.concatenate([toks.T, last[:, None]], axis=1)


_SOWN = {"gate": "gate", "product": "activations"}  # ffn rule -> name sown by `MLP`


@functools.partial(jax.jit, static_argnums=(0, 5))
def _ffn_activations(config, params, prompt, inputs, inputs_mask, rule="gate"):
    x, mask = _prefix(config, params, prompt, inputs, inputs_mask)
    _, state = _decode(config, params, x, mask, mutable=["intermediates"])
    inter = state["intermediates"]
    acts = [inter[f"layers_{i}"]["mlp"][_SOWN[rule]][0] for i in range(config.num_layers)]
    return jnp.stack([_without_bos(config, a, prompt) for a in acts]).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _all_logits(config, params, prompt, inputs, targets):
    x, mask = _prefix(config, params, prompt, inputs, jnp.ones(inputs.shape, jnp.int32))
    if targets is not None:
        x = jnp.concatenate([x, _embed(config, params, targets)], axis=1)
        mask = jnp.concatenate([mask, jnp.ones(targets.shape, jnp.int32)], axis=1)
    h, _ = _decode(config, params, x, mask)
    return _head(config, params, _without_bos(config, h, prompt))


# ---- parameter shapes and axes ------------------------------------------------------

def abstract_params(config: Gemma3Config):
    """(nested dict of ShapeDtypeStruct, nested dict of logical-axis tuples)."""
    shapes, axes = _abstract_params(config)
    return _copy(shapes), _copy(axes)


@functools.lru_cache(maxsize=16)
def _abstract_params(config: Gemma3Config):
    module = Gemma3Model(config)
    boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))
    boxed = boxed["params"]
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
    axes = jax.tree_util.tree_map(lambda b: tuple(b.names), boxed, is_leaf=is_box)
    return to_dict(nn.unbox(boxed)), to_dict(axes)


def to_dict(tree):
    """A (Frozen)Dict tree as nested plain dicts."""
    return {k: to_dict(v) for k, v in tree.items()} if hasattr(tree, "items") else tree


def _copy(tree):
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def init_params(config: Gemma3Config, seed: int = 0):
    """Random float32 params of `config` (nested dicts)."""
    return to_dict(_random_params(config, jax.random.PRNGKey(seed)))


@functools.partial(jax.jit, static_argnums=0)
def _random_params(config: Gemma3Config, key):
    """One init program per config and process (loading a preset again reuses it)."""
    return nn.unbox(Gemma3Model(config).init(key, jnp.zeros((1, 1), jnp.int32)))["params"]


# ---- the Backbone -------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class Gemma3Backbone(DecoderOnlyBackbone):
    """Gemma 3 implementing the `Backbone` contract (`DecoderOnlyBackbone`). BOS is added
    by the backbone itself, after the prompt (see module docstring); the FFN is GeGLU, so
    ON's 'product' rule reads gelu_tanh(gate) * up.
    """

    KERNELS: ClassVar[DecoderKernels] = DecoderKernels(
        embed=_embed, target_log_likelihood=_target_log_likelihood,
        score_candidates=_score_candidates, greedy_tokens=_greedy_tokens,
        ffn_activations=_ffn_activations, all_logits=_all_logits,
        abstract_params=abstract_params)
    family: str = dataclasses.field(default="gemma3", init=False)
