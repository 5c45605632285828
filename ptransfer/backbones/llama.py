"""Decoder-only LLaMA-family backbone (LLaMA 2/3, SmolLM, Mistral-style dense).

Architecture (HF `LlamaForCausalLM` semantics): token embedding, N pre-norm
blocks of [RMSNorm -> grouped-query attention with RoPE -> residual, RMSNorm
-> SwiGLU MLP -> residual], final RMSNorm, vocabulary head tied to the
embedding or separate. No biases.

Parameter tree (T5X-like names, kernels [in, out]):

  token_embedder/embedding                    [V, D]       ('vocab', 'embed')
  layers_N/pre_attention_layer_norm/scale     [D]          ('embed',)
  layers_N/attention/{query,key,value}/kernel [D, H*Dh]    ('embed', 'joined_kv')
  layers_N/attention/out/kernel               [H*Dh, D]    ('joined_kv', 'embed')
  layers_N/pre_mlp_layer_norm/scale           [D]
  layers_N/mlp/{wi_0,wi_1}/kernel             [D, F]       ('embed', 'mlp')   gate, up
  layers_N/mlp/wo/kernel                      [F, D]       ('mlp', 'embed')   down
  decoder_norm/scale                          [D]
  logits_dense/kernel                         [D, V]       ('embed', 'vocab') untied only

Sequence layout of every forward pass: [prompt; inputs (left-padded); targets
(right-padded)]. Positions are cumsum(mask) - 1 over that sequence and padded
keys are masked, so padding never changes the result for real tokens. RoPE
rotates halves (x_i, x_{i+Dh/2}) as HF does; GGUF files are un-permuted to that
convention when read (`ptransfer.checkpoints.gguf`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptransfer.backbones import layers
from ptransfer.backbones.base import batched_prompt
from ptransfer.backbones.decoder_only import (
    DecoderKernels,
    DecoderOnlyBackbone,
    check_share_prompt,
    decode_sharing_prompt,
    shared_prefix_length,
)
from ptransfer.checkpoints.gguf import GGUFCheckpoint, llama_hparams, llama_tensors
from ptransfer.checkpoints.safetensors_io import SafetensorsCheckpoint
from ptransfer.checkpoints.tree import ParamTreeBuilder
from ptransfer.core.errors import CheckpointError, ConfigError, close_matches_hint
from ptransfer.core.sharding import shard_params
from ptransfer.core.vocab import TokenizersVocabulary

log = logging.getLogger(__name__)

HF_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shapes and numerics of a LLaMA-family model.

    `dtype` is the compute dtype (activations, matmuls); the storage dtype of
    the frozen params is chosen at load time. Softmax, norms and logits are
    always float32. `remat`: rematerialization of each decoder layer in the
    backward pass, 'none' | 'full' | 'dots' (see `layers.REMAT_POLICIES`); it
    changes memory and speed, never the parameters or the results.
    `share_prompt`: 'auto' | 'always' | 'never', whether one [P, D] prompt's
    positions are computed once per batch (`decoder_only.shared_prefix_length`);
    speed only, like `remat`.
    """

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    dtype: str = "float32"
    remat: str = "none"
    share_prompt: str = "auto"

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def validate(self, where: str = "config") -> "LlamaConfig":
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"{where}: num_heads {self.num_heads} is not a multiple of "
                              f"num_kv_heads {self.num_kv_heads}.")
        if self.head_dim % 2:
            raise ConfigError(f"{where}: head_dim {self.head_dim} must be even for RoPE.")
        layers.check_remat(self.remat, where)
        check_share_prompt(self.share_prompt, where)
        return self


PRESETS: dict[str, LlamaConfig] = {
    # Test size: GQA (4 query heads share 2 kv heads), untied head, every
    # sharded dimension divisible by 4; vocab >= seqio.ByteVocabulary's 259.
    "llama_tiny": LlamaConfig(vocab_size=320, d_model=64, num_layers=2, num_heads=4,
                              num_kv_heads=2, head_dim=16, d_ff=128, rope_theta=10000.0,
                              norm_eps=1e-6, tie_word_embeddings=False),
    # HuggingFaceTB/SmolLM2-135M(-Instruct), as in its GGUF metadata.
    "smollm2_135m": LlamaConfig(vocab_size=49152, d_model=576, num_layers=30, num_heads=9,
                                num_kv_heads=3, head_dim=64, d_ff=1536, rope_theta=100000.0,
                                norm_eps=1e-5, tie_word_embeddings=True),
}


# ---- Flax modules --------------------------------------------------------------

def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, HF "rotate half" convention. x [B, T, H, Dh], positions [B, T]."""
    dh = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
    cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
    x1, x2 = x[..., : dh // 2], x[..., dh // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE and an optional KV cache."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, bias, cache=None, cache_index=None):
        """x [B, T, D], positions [B, T], bias [B, 1, T, S].

        cache: None (keys are this call's own, S = T), or (k, v) [B, S_c, Hkv, Dh]
          with cache_index None (new keys appended: S = S_c + T) or an int
          (new keys written at cache_index: S = S_c).
        Returns (out [B, T, D], (k, v) as attended over).
        """
        c = self.config
        dt = c.compute_dtype
        b, t, _ = x.shape
        dense = lambda n, name: layers.Dense(n, ("embed", "joined_kv"), dtype=dt, name=name)  # noqa: E731
        q = dense(c.num_heads * c.head_dim, "query")(x).reshape(b, t, c.num_heads, c.head_dim)
        k = dense(c.num_kv_heads * c.head_dim, "key")(x).reshape(b, t, c.num_kv_heads, c.head_dim)
        v = dense(c.num_kv_heads * c.head_dim, "value")(x).reshape(b, t, c.num_kv_heads, c.head_dim)
        q = apply_rope(q, positions, c.rope_theta)
        k = apply_rope(k, positions, c.rope_theta)
        if cache is not None:
            ck, cv = cache
            if cache_index is None:
                k = jnp.concatenate([ck.astype(k.dtype), k], axis=1)
                v = jnp.concatenate([cv.astype(v.dtype), v], axis=1)
            else:
                k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
                v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
        out = layers.dot_product_attention(q, k, v, bias, dtype=dt)
        out = layers.Dense(c.d_model, ("joined_kv", "embed"), dtype=dt, name="out")(
            out.reshape(b, t, c.num_heads * c.head_dim))
        return out, (k, v)


class MLP(nn.Module):
    """SwiGLU: wo(silu(wi_0 x) * wi_1 x).

    Captures (sow 'intermediates', [B, T, F]) the gate's pre-activation
    `wi_0 x` as 'gate' (ON's default rule: neuron i is active when its gate is
    open, > 0, as a ReLU/GELU neuron is when its pre-activation is) and the
    product `silu(gate) * up`, the input of `wo`, as 'activations' (the
    'product' rule).
    """

    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        dt = c.compute_dtype
        gate = layers.Dense(c.d_ff, ("embed", "mlp"), dtype=dt, name="wi_0")(x)
        up = layers.Dense(c.d_ff, ("embed", "mlp"), dtype=dt, name="wi_1")(x)
        h = jax.nn.silu(gate) * up
        self.sow("intermediates", "gate", gate)
        self.sow("intermediates", "activations", h)
        return layers.Dense(c.d_model, ("mlp", "embed"), dtype=dt, name="wo")(h)


class DecoderLayer(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, bias, cache=None, cache_index=None):
        c = self.config
        h = layers.RMSNorm(c.norm_eps, c.compute_dtype, name="pre_attention_layer_norm")(x)
        a, kv = Attention(c, name="attention")(h, positions, bias, cache, cache_index)
        x = x + a
        h = layers.RMSNorm(c.norm_eps, c.compute_dtype, name="pre_mlp_layer_norm")(x)
        return x + MLP(c, name="mlp")(h), kv


class LlamaModel(nn.Module):
    """The frozen network. Methods: embed, decode, head (and __call__ for init)."""

    config: LlamaConfig

    def setup(self):
        c = self.config
        self.token_embedder = layers.Embed(c.vocab_size, c.d_model, c.compute_dtype)
        layer = layers.remat_layer(DecoderLayer, c.remat)
        self.layers = [layer(c) for _ in range(c.num_layers)]  # named layers_0 ...
        self.decoder_norm = layers.RMSNorm(c.norm_eps, c.compute_dtype)
        if not c.tie_word_embeddings:
            self.logits_dense = layers.Dense(c.vocab_size, ("embed", "vocab"), dtype=c.compute_dtype)

    def embed(self, ids):
        """ids [...] -> [..., D]."""
        return self.token_embedder(ids)

    def decode(self, x, positions, bias, caches=None, cache_index=None):
        """Embedded sequence -> final-norm hidden states.

        x [B, T, D], positions [B, T], bias [B, 1, T, S]; caches: None or one
        (k, v) per layer (see `Attention`). Returns (h [B, T, D], [(k, v)] per layer).
        """
        new = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, positions, bias, None if caches is None else caches[i], cache_index)
            new.append(kv)
        return self.decoder_norm(x), new

    def head(self, h):
        """[..., D] -> float32 logits [..., V]."""
        if self.config.tie_word_embeddings:
            return self.token_embedder.attend(h).astype(jnp.float32)
        return self.logits_dense(h).astype(jnp.float32)

    def __call__(self, ids):
        mask = jnp.ones(ids.shape, jnp.int32)
        h, _ = self.decode(self.embed(ids), positions_from_mask(mask), causal_bias(mask))
        return self.head(h)


# ---- masks and positions --------------------------------------------------------

def positions_from_mask(mask: jax.Array) -> jax.Array:
    """[B, S] 0/1 -> int32 [B, S]: index among real tokens (padding gets a clipped value)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def causal_allowed(mask: jax.Array) -> jax.Array:
    """[B, S] key mask -> bool [B, 1, S, S]: causal and no padded keys."""
    return layers.causal_mask(mask.shape[-1]) & mask[:, None, None, :].astype(bool)


def causal_bias(mask: jax.Array) -> jax.Array:
    """[B, S] key mask -> additive bias [B, 1, S, S]: causal and no padded keys."""
    return layers.mask_to_bias(causal_allowed(mask))


# ---- forward functions (pure; config static, so equal configs share compiled code) ----

def _apply(config, params, *args, method, **kwargs):
    return LlamaModel(config).apply({"params": params}, *args, method=method, **kwargs)


def _embed(config, params, ids):
    return _apply(config, params, ids, method=LlamaModel.embed)


def _head(config, params, h):
    return _apply(config, params, h, method=LlamaModel.head)


def _prefix(config, params, prompt, inputs, inputs_mask):
    """[prompt; embedded inputs] [B, P + Li, D] and its mask [B, P + Li]."""
    x = _embed(config, params, inputs)
    mask = inputs_mask.astype(jnp.int32)
    p = batched_prompt(prompt, inputs.shape[0], x.dtype)
    if p is not None:
        x = jnp.concatenate([p, x], axis=1)
        mask = jnp.concatenate([jnp.ones(p.shape[:2], jnp.int32), mask], axis=1)
    return x, mask


def _decode(config, params, x, mask, prompt=None, **kwargs):
    """Causal pass over a whole masked sequence: (h [B, S, D], caches); a [P, D]
    `prompt` in front is computed once for the batch where
    `decoder_only.shared_prefix_length` says it pays."""
    def decode(x, positions, key_positions, allowed, caches, **kw):
        return _apply(config, params, x, positions, layers.mask_to_bias(allowed), caches,
                      method=LlamaModel.decode, **kw)

    return decode_sharing_prompt(decode, x, positions_from_mask(mask), causal_allowed(mask),
                                 shared_prefix_length(config, prompt, x.shape[0]), **kwargs)


@functools.partial(jax.jit, static_argnums=0)
def _target_log_likelihood(config, params, prompt, inputs, inputs_mask, targets, targets_mask):
    x, mask = _prefix(config, params, prompt, inputs, inputs_mask)
    s0, lt = x.shape[1], targets.shape[1]
    x = jnp.concatenate([x, _embed(config, params, targets)], axis=1)
    mask = jnp.concatenate([mask, targets_mask.astype(jnp.int32)], axis=1)
    h, _ = _decode(config, params, x, mask, prompt)
    # Only the Lt positions that predict a target reach the vocabulary head.
    logits = _head(config, params, h[:, s0 - 1: s0 - 1 + lt])
    lp = layers.gather_log_probs(logits, targets)
    return jnp.sum(lp * targets_mask.astype(jnp.float32), axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def _score_candidates(config, params, prompt, inputs, inputs_mask, candidates, candidates_mask):
    """Prefix once -> KV cache; then all C continuations in one call.

    The C * (Lt - 1) continuation tokens form one query block of length T per
    example; a block-diagonal causal mask keeps each candidate to its own
    tokens, so the cache is shared, not copied C times.
    """
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
    own = (cand[:, None] == cand[None, :]) & (step[None, :] <= step[:, None])  # [T, T]
    allowed = jnp.concatenate([
        jnp.broadcast_to(mask[:, None, None, :].astype(bool), (b, 1, t, s0)),
        jnp.broadcast_to(own[None, None], (b, 1, t, t))], axis=-1)
    hc, _ = _apply(config, params, xc, positions, layers.mask_to_bias(allowed), caches,
                   method=LlamaModel.decode)
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

    def step(carry, i):
        tok, caches, key_mask = carry
        key_mask = jax.lax.dynamic_update_slice(key_mask, jnp.ones((b, 1), jnp.int32), (0, s0 + i))
        bias = layers.mask_to_bias(key_mask[:, None, None, :])
        hs, caches = _apply(config, params, _embed(config, params, tok[:, None]), (n + i)[:, None],
                            bias, caches, s0 + i, method=LlamaModel.decode)
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
    return jnp.stack(acts).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _all_logits(config, params, prompt, inputs, targets):
    x, mask = _prefix(config, params, prompt, inputs, jnp.ones(inputs.shape, jnp.int32))
    if targets is not None:
        x = jnp.concatenate([x, _embed(config, params, targets)], axis=1)
        mask = jnp.concatenate([mask, jnp.ones(targets.shape, jnp.int32)], axis=1)
    h, _ = _decode(config, params, x, mask)
    return _head(config, params, h)


# ---- parameter shapes and axes ------------------------------------------------------

def abstract_params(config: LlamaConfig):
    """(nested dict of ShapeDtypeStruct, nested dict of logical-axis tuples)."""
    shapes, axes = _abstract_params(config)
    copy = lambda t: {k: copy(v) for k, v in t.items()} if isinstance(t, dict) else t  # noqa: E731
    return copy(shapes), copy(axes)


@functools.lru_cache(maxsize=16)
def _abstract_params(config: LlamaConfig):
    module = LlamaModel(config)
    boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))
    boxed = boxed["params"]
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
    axes = jax.tree_util.tree_map(lambda b: tuple(b.names), boxed, is_leaf=is_box)
    return _to_dict(nn.unbox(boxed)), _to_dict(axes)


def _to_dict(tree):
    return {k: _to_dict(v) for k, v in tree.items()} if hasattr(tree, "items") else tree


# ---- the Backbone -------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class LlamaBackbone(DecoderOnlyBackbone):
    """LLaMA-family model implementing the `Backbone` contract (`DecoderOnlyBackbone`):
    the FFN is SwiGLU, so ON's 'product' rule reads silu(gate) * up (see `MLP`). All
    functions are jitted with the config static, so they may also be called inside the
    caller's jit.
    """

    KERNELS: ClassVar[DecoderKernels] = DecoderKernels(
        embed=_embed, target_log_likelihood=_target_log_likelihood,
        score_candidates=_score_candidates, greedy_tokens=_greedy_tokens,
        ffn_activations=_ffn_activations, all_logits=_all_logits,
        abstract_params=abstract_params)
    family: str = dataclasses.field(default="llama", init=False)


# ---- construction ---------------------------------------------------------------------

def _default_vocab(config: LlamaConfig, where: str):
    import seqio

    vocab = seqio.ByteVocabulary()
    if vocab.vocab_size > config.vocab_size:
        raise ConfigError(f"{where}: no tokenizer, and the byte fallback needs vocab_size >= "
                          f"{vocab.vocab_size} (model has {config.vocab_size}); add tokenizer.json.")
    return vocab


@functools.partial(jax.jit, static_argnums=0)
def _random_params(config: LlamaConfig, key):
    """Random float32 params of `config`: one init program per config and process."""
    return nn.unbox(LlamaModel(config).init(key, jnp.zeros((1, 1), jnp.int32)))["params"]


def from_preset(name: str, *, seed: int = 0, dtype=None, mesh=None) -> LlamaBackbone:
    """Random init of a named shape (tests, benchmarks), with seqio.ByteVocabulary."""
    if name not in PRESETS:
        raise ConfigError(f"unknown llama preset {name!r}." + close_matches_hint(name, PRESETS))
    config = PRESETS[name].validate(name)
    params = _random_params(config, jax.random.PRNGKey(seed))
    if dtype is not None:
        params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    params = _to_dict(params)
    backbone = LlamaBackbone(name=name, config=config, params=params,
                             vocab=_default_vocab(config, f"preset {name}"))
    if mesh is not None:
        backbone.params = shard_params(params, backbone.logical_axes(), mesh)
    return backbone


def config_from_hf(cfg: dict, where: str = "config.json") -> LlamaConfig:
    """LlamaConfig from HF config.json fields (also used for GGUF metadata)."""
    try:
        d = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        rope = cfg.get("rope_parameters") or {}
        scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling:
            raise ConfigError(f"{where}: RoPE scaling {scaling} is not supported.")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{where}: hidden_act {cfg['hidden_act']!r} is not supported (SwiGLU needs silu).")
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ConfigError(f"{where}: attention/MLP biases are not supported.")
        config = LlamaConfig(
            vocab_size=int(cfg["vocab_size"]),
            d_model=d,
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or d // heads),
            d_ff=int(cfg["intermediate_size"]),
            rope_theta=float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
    except KeyError as e:
        raise CheckpointError(f"{where}: required field {e.args[0]!r} is missing.") from None
    return config.validate(where)


_HF_GLOBAL = {
    "model.embed_tokens.weight": ("token_embedder/embedding", False),
    "model.norm.weight": ("decoder_norm/scale", False),
    "lm_head.weight": ("logits_dense/kernel", True),
}
_HF_LAYER = {
    "input_layernorm.weight": ("pre_attention_layer_norm/scale", False),
    "self_attn.q_proj.weight": ("attention/query/kernel", True),
    "self_attn.k_proj.weight": ("attention/key/kernel", True),
    "self_attn.v_proj.weight": ("attention/value/kernel", True),
    "self_attn.o_proj.weight": ("attention/out/kernel", True),
    "post_attention_layernorm.weight": ("pre_mlp_layer_norm/scale", False),
    "mlp.gate_proj.weight": ("mlp/wi_0/kernel", True),
    "mlp.up_proj.weight": ("mlp/wi_1/kernel", True),
    "mlp.down_proj.weight": ("mlp/wo/kernel", True),
}


def hf_param_path(name: str) -> tuple[str, bool] | None:
    """HF LlamaForCausalLM tensor name -> (ptransfer path, transpose); None if not a weight."""
    if name in _HF_GLOBAL:
        return _HF_GLOBAL[name]
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _HF_LAYER:
        sub, transpose = _HF_LAYER[parts[3]]
        return f"layers_{int(parts[2])}/{sub}", transpose
    return None


def _builder(config, dtype, mesh, source):
    abstract, axes = abstract_params(config)
    return ParamTreeBuilder(abstract, axes, dtype=dtype, mesh=mesh, source=source)


def from_hf(directory: str, *, dtype=None, mesh=None) -> LlamaBackbone:
    """HF LlamaForCausalLM directory: config.json + safetensors (+ tokenizer.json)."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"no config.json in {directory!r}.")
    with open(config_path) as f:
        config = config_from_hf(json.load(f), config_path)
    ckpt = SafetensorsCheckpoint(directory)
    builder = _builder(config, dtype, mesh, directory)
    for name in ckpt.keys():
        mapped = hf_param_path(name)
        if mapped is None:
            if name.endswith("rotary_emb.inv_freq"):
                continue
            raise CheckpointError(f"{directory}: tensor {name!r} is not part of a LLaMA model "
                                  "(biases, adapters?); ptransfer reads plain LlamaForCausalLM weights.")
        path, transpose = mapped
        if path.startswith("logits_dense") and config.tie_word_embeddings:
            continue  # a tied checkpoint may still store the (identical) head
        w = ckpt.get(name)
        builder.put(path, w.T if transpose else w)
    params = builder.build()
    if os.path.isfile(os.path.join(directory, "tokenizer.json")):
        vocab = TokenizersVocabulary.from_hf_dir(directory)
    else:
        log.warning("%s has no tokenizer.json; using seqio.ByteVocabulary.", directory)
        vocab = _default_vocab(config, directory)
    return LlamaBackbone(name=os.path.basename(os.path.normpath(directory)), config=config,
                         params=params, vocab=vocab)


def from_gguf(path: str, *, dtype=None, mesh=None) -> LlamaBackbone:
    """A llama.cpp GGUF file: weights dequantized to float32, then cast to `dtype`."""
    ckpt = GGUFCheckpoint(path)
    hparams = llama_hparams(ckpt)
    config = config_from_hf(hparams, path)
    builder = _builder(config, dtype, mesh, path)
    for param_path, array in llama_tensors(ckpt, hparams):
        builder.put(param_path, array)
    params = builder.build()
    vocab = TokenizersVocabulary.from_gguf_metadata(ckpt.tokenizer_metadata(), name=path)
    name = os.path.basename(path)
    name = name[: -len(".gguf")] if name.endswith(".gguf") else name
    return LlamaBackbone(name=name, config=config, params=params, vocab=vocab)
