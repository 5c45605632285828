"""T5 encoder-decoder (v1.0, v1.1, LM-adapted) in Flax linen with T5X names.

Parameter tree (kernels `[in, out]`, relative-position tables `[heads, buckets]`,
exactly the `target/...` layout of a T5X checkpoint):

  token_embedder/embedding                                  [V, D]
  encoder/relpos_bias/rel_embedding                         [H, buckets]
  encoder/layers_N/pre_attention_layer_norm/scale           [D]
  encoder/layers_N/attention/{query,key,value}/kernel       [D, H*Dh]
  encoder/layers_N/attention/out/kernel                     [H*Dh, D]
  encoder/layers_N/pre_mlp_layer_norm/scale                 [D]
  encoder/layers_N/mlp/{wi | wi_0, wi_1}/kernel             [D, F]
  encoder/layers_N/mlp/wo/kernel                            [F, D]
  encoder/encoder_norm/scale                                [D]
  decoder/relpos_bias/rel_embedding                         [H, buckets]
  decoder/layers_N/{pre_self_attention_layer_norm, self_attention,
                    pre_cross_attention_layer_norm, encoder_decoder_attention,
                    pre_mlp_layer_norm, mlp}/...
  decoder/decoder_norm/scale                                [D]
  decoder/logits_dense/kernel                               [D, V]  (untied head only)

v1.0: ReLU FFN, logits = (h * D**-0.5) @ embedding.T.  v1.1 / LM-adapted:
gated-GELU FFN (gelu(wi_0 x) * wi_1 x, tanh-approximate GELU), untied head.
Attention logits are never scaled at run time (T5 folds 1/sqrt(Dh) into the
query weights). One relative-position table per stack: bidirectional buckets in
the encoder, causal buckets in the decoder; bucket count and max distance come
from the config.

A soft prompt `[P, D]` is prepended to the encoder input embeddings. Inputs
are left-padded, so encoder positions are `cumsum(mask) - 1` over
[prompt; inputs]: padding changes no result.

Vocabulary: `spiece.model` (HF dirs; `sentencepiece.model` / `spiece.model`
next to a T5X checkpoint, or `spm_path=`) gives a `seqio.SentencePieceVocabulary`;
without one, presets and checkpoints fall back to `seqio.ByteVocabulary()`
(259 ids, file-free), which fits every preset's embedding table but is not
the tokenizer a pretrained T5 was trained with.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptransfer.backbones.base import GATED_FFN_RULES, UNGATED_FFN_RULES, Backbone, batched_prompt
from ptransfer.backbones.layers import (
    ACTIVATIONS,
    Dense,
    Embed,
    RMSNorm,
    activation_dtype,
    causal_mask,
    check_remat,
    dot_product_attention,
    gather_log_probs,
    mask_to_bias,
    param_with_axes,
    remat_layer,
)
from ptransfer.checkpoints.safetensors_io import SafetensorsCheckpoint
from ptransfer.checkpoints.t5x import T5XCheckpoint
from ptransfer.checkpoints.tree import ParamTreeBuilder, flatten
from ptransfer.core.errors import CheckpointError, ConfigError, close_matches_hint
from ptransfer.core.vocab import TokenizersVocabulary

log = logging.getLogger(__name__)

HF_ARCHITECTURES = ("T5ForConditionalGeneration", "T5WithLMHeadModel")


# ---------------------------------------------------------------------------
# Config and presets
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class T5Config:
    """Shapes and numerics of a T5 model.

    `feed_forward` is "relu" (v1.0) or "gated-gelu" (v1.1 / LM-adapted); more
    generally "<act>" or "gated-<act>" with <act> a key of `layers.ACTIVATIONS`
    ("gated-gelu" means the tanh approximation, as in T5 and HF).
    `tie_word_embeddings`: logits from the input embedding (v1.0), scaled by
    d_model**-0.5 when `scale_tied_logits` (always for real v1.0 checkpoints;
    False only for v1.1 models re-saved by transformers 5.x, which ties heads).
    `dtype` is the compute dtype; storage dtype is chosen when loading.
    `remat`: rematerialization of each encoder / decoder layer in the backward
    pass, 'none' | 'full' | 'dots' (see `layers.REMAT_POLICIES`); it changes
    memory and speed, never the parameters or the results.
    """

    vocab_size: int = 32128
    d_model: int = 512
    num_heads: int = 8
    head_dim: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int = 6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward: str = "relu"
    tie_word_embeddings: bool = True
    scale_tied_logits: bool = True
    layer_norm_epsilon: float = 1e-6
    dtype: str = "float32"
    remat: str = "none"
    eos_id: int = 1
    pad_id: int = 0
    decoder_start_id: int = 0

    @property
    def d_kv(self) -> int:
        return self.head_dim

    @property
    def gated(self) -> bool:
        return self.feed_forward.startswith("gated-")

    @property
    def activation_name(self) -> str:
        if self.feed_forward == "gated-gelu":
            return "gelu_new"
        return self.feed_forward.split("-", 1)[-1]

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def validate(self) -> "T5Config":
        if self.activation_name not in ACTIVATIONS or self.feed_forward.count("-") > 1 or (
                "-" in self.feed_forward and not self.gated):
            raise ConfigError(f"T5 feed_forward {self.feed_forward!r} is not supported; use 'relu', "
                              f"'gated-gelu' or '[gated-]<act>' with <act> in {sorted(ACTIVATIONS)}.")
        if self.relative_attention_num_buckets < 4 or self.relative_attention_max_distance < 2:
            raise ConfigError("T5 relative attention needs >= 4 buckets and max distance >= 2.")
        check_remat(self.remat, "T5 config")
        return self


def _v1_0(d_model, num_heads, head_dim, d_ff, layers):
    return T5Config(d_model=d_model, num_heads=num_heads, head_dim=head_dim, d_ff=d_ff,
                    num_layers=layers, num_decoder_layers=layers, feed_forward="relu",
                    tie_word_embeddings=True)


def _v1_1(d_model, num_heads, head_dim, d_ff, layers):
    return T5Config(d_model=d_model, num_heads=num_heads, head_dim=head_dim, d_ff=d_ff,
                    num_layers=layers, num_decoder_layers=layers, feed_forward="gated-gelu",
                    tie_word_embeddings=False)


# Published shapes (T5 paper / T5X gin files; vocab 32128 = 32000 pieces +
# 100 sentinels, padded). LM-adapted checkpoints share the v1.1 shapes.
_V1_1_SHAPES = {
    "small": (512, 6, 64, 1024, 8),
    "base": (768, 12, 64, 2048, 12),
    "large": (1024, 16, 64, 2816, 24),
    "xl": (2048, 32, 64, 5120, 24),
    "xxl": (4096, 64, 64, 10240, 24),
}

PRESETS: dict[str, T5Config] = {
    # Test sizes: vocab 260 >= seqio.ByteVocabulary's 259; every sharded dim
    # (vocab, heads*Dh, d_ff) divisible by 4; 8 buckets / distance 20 so short
    # test sequences reach the logarithmic buckets. The gated one has more
    # decoder than encoder layers so a swapped count cannot go unnoticed.
    "t5_tiny": T5Config(vocab_size=260, d_model=32, num_heads=4, head_dim=8, d_ff=64,
                        num_layers=2, num_decoder_layers=2, relative_attention_num_buckets=8,
                        relative_attention_max_distance=20, feed_forward="relu",
                        tie_word_embeddings=True),
    "t5_1_1_tiny": T5Config(vocab_size=260, d_model=32, num_heads=4, head_dim=8, d_ff=48,
                            num_layers=2, num_decoder_layers=3, relative_attention_num_buckets=8,
                            relative_attention_max_distance=20, feed_forward="gated-gelu",
                            tie_word_embeddings=False),
    "t5_small": _v1_0(512, 8, 64, 2048, 6),
    "t5_base": _v1_0(768, 12, 64, 3072, 12),
    "t5_large": _v1_0(1024, 16, 64, 4096, 24),
    "t5_3b": _v1_0(1024, 32, 128, 16384, 24),
    "t5_11b": _v1_0(1024, 128, 128, 65536, 24),
    **{f"t5_1_1_{size}": _v1_1(*shape) for size, shape in _V1_1_SHAPES.items()},
    **{f"t5_lm_adapt_{size}": _v1_1(*shape) for size, shape in _V1_1_SHAPES.items()},
}


def get_preset(name: str) -> T5Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown T5 preset {name!r}." + close_matches_hint(name, PRESETS))
    return PRESETS[name]


# ---------------------------------------------------------------------------
# Flax modules
# ---------------------------------------------------------------------------

def relative_position_buckets(num_buckets: int, max_distance: int,
                              bidirectional: bool) -> np.ndarray:
    """Bucket of every relative position key - query in [-max_distance, max_distance].

    Returns int32 [2 * max_distance + 1]; index `rel + max_distance`. Positions
    beyond +-max_distance fall in the same bucket as +-max_distance, so callers
    clip. Computed in float32 like the reference implementations.
    """
    rel = np.arange(-max_distance, max_distance + 1)
    n = num_buckets
    out = np.zeros_like(rel)
    if bidirectional:
        n //= 2
        out += (rel > 0).astype(rel.dtype) * n
        dist = np.abs(rel)
    else:
        dist = -np.minimum(rel, 0)
    max_exact = n // 2
    with np.errstate(divide="ignore"):
        scaled = (np.log(dist.astype(np.float32) / np.float32(max_exact))
                  / np.float32(math.log(max_distance / max_exact)) * np.float32(n - max_exact))
    large = max_exact + np.where(dist < max_exact, 0, scaled).astype(np.int32)
    large = np.minimum(large, n - 1)
    return (out + np.where(dist < max_exact, dist, large)).astype(np.int32)


class RelativePositionBias(nn.Module):
    """T5 relative-position attention bias: positions -> float32 [B, H, T, S]."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool

    @nn.compact
    def __call__(self, q_pos, k_pos):
        """q_pos [B|1, T], k_pos [B|1, S] int positions -> [B|1, H, T, S]."""
        table = param_with_axes(self, "rel_embedding",
                                nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0),
                                (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"))
        lut = jnp.asarray(relative_position_buckets(self.num_buckets, self.max_distance,
                                                    self.bidirectional))
        rel = k_pos[:, None, :] - q_pos[:, :, None]
        bucket = lut[jnp.clip(rel, -self.max_distance, self.max_distance) + self.max_distance]
        bias = jnp.take(table.astype(jnp.float32).T, bucket, axis=0)  # [B, T, S, H]
        return jnp.moveaxis(bias, -1, 1)


class MultiHeadAttention(nn.Module):
    """T5 attention (no 1/sqrt(Dh) at run time) with T5X names query/key/value/out."""

    num_heads: int
    head_dim: int
    features: int
    dtype: Any = jnp.float32

    def setup(self):
        inner = self.num_heads * self.head_dim
        init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        q_init = nn.initializers.variance_scaling(1.0 / self.head_dim, "fan_in", "normal")
        self.query = Dense(inner, ("embed", "joined_kv"), dtype=self.dtype, kernel_init=q_init)
        self.key = Dense(inner, ("embed", "joined_kv"), dtype=self.dtype, kernel_init=init)
        self.value = Dense(inner, ("embed", "joined_kv"), dtype=self.dtype, kernel_init=init)
        self.out = Dense(self.features, ("joined_kv", "embed"), dtype=self.dtype, kernel_init=init)

    def _heads(self, x):
        return x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))

    def project_kv(self, x):
        """[B, S, D] -> keys, values [B, S, H, Dh]."""
        return self._heads(self.key(x)), self._heads(self.value(x))

    def __call__(self, x, kv, bias):
        """Attends queries from x [Bq, T, D] over kv = (k, v) [Bk, S, H, Dh].

        Bq may be a multiple G of Bk: rows b*G..b*G+G-1 then share key row b
        (candidates scored against one encoded input), and `bias` must
        broadcast over queries ([Bk, 1, 1, S]). Returns [Bq, T, D].
        """
        k, v = kv
        q = self._heads(self.query(x))
        bq, t = q.shape[0], q.shape[1]
        groups = bq // k.shape[0]
        if groups > 1:
            q = q.reshape((k.shape[0], groups * t) + q.shape[2:])
        y = dot_product_attention(q, k, v, bias, scale=1.0, dtype=self.dtype)
        y = y.reshape(bq, t, self.num_heads * self.head_dim)
        return self.out(y)


class Mlp(nn.Module):
    """T5 FFN: wo(act(wi x)) or wo(act(wi_0 x) * wi_1 x).

    The hidden activation [.., F] (the input of `wo`) is sown into the
    'intermediates' collection as 'activations', and for gated FFNs the gate's
    pre-activation `wi_0 x` as 'gate'; this costs nothing unless the caller
    makes that collection mutable.
    """

    config: T5Config

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dtype = cfg.compute_dtype
        act = ACTIVATIONS[cfg.activation_name]
        init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        if cfg.gated:
            gate = Dense(cfg.d_ff, ("embed", "mlp"), dtype=dtype, kernel_init=init, name="wi_0")(x)
            self.sow("intermediates", "gate", gate)
            h = act(gate) * Dense(cfg.d_ff, ("embed", "mlp"), dtype=dtype, kernel_init=init, name="wi_1")(x)
        else:
            h = act(Dense(cfg.d_ff, ("embed", "mlp"), dtype=dtype, kernel_init=init, name="wi")(x))
        self.sow("intermediates", "activations", h)
        return Dense(cfg.d_model, ("mlp", "embed"), dtype=dtype, kernel_init=init, name="wo")(h)


def _attention(cfg: T5Config) -> MultiHeadAttention:
    return MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.d_model, dtype=cfg.compute_dtype)


def _norm(cfg: T5Config) -> RMSNorm:
    return RMSNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.compute_dtype)


def _relpos(cfg: T5Config, bidirectional: bool) -> RelativePositionBias:
    return RelativePositionBias(cfg.relative_attention_num_buckets,
                                cfg.relative_attention_max_distance, cfg.num_heads, bidirectional)


class EncoderLayer(nn.Module):
    config: T5Config

    def setup(self):
        self.pre_attention_layer_norm = _norm(self.config)
        self.attention = _attention(self.config)
        self.pre_mlp_layer_norm = _norm(self.config)
        self.mlp = Mlp(self.config)

    def __call__(self, x, bias):
        h = self.pre_attention_layer_norm(x)
        x = x + self.attention(h, self.attention.project_kv(h), bias)
        return x + self.mlp(self.pre_mlp_layer_norm(x))


class Encoder(nn.Module):
    config: T5Config

    def setup(self):
        cfg = self.config
        self.relpos_bias = _relpos(cfg, bidirectional=True)
        layer = remat_layer(EncoderLayer, cfg.remat)
        self.layers = [layer(cfg) for _ in range(cfg.num_layers)]  # named layers_N
        self.encoder_norm = _norm(cfg)

    def __call__(self, x, mask, positions):
        """x [B, S, D] embeddings, mask [B, S], positions [B, S] -> [B, S, D]."""
        bias = self.relpos_bias(positions, positions) + mask_to_bias(mask[:, None, None, :])
        for layer in self.layers:
            x = layer(x, bias)
        return self.encoder_norm(x)


class DecoderLayer(nn.Module):
    config: T5Config

    def setup(self):
        cfg = self.config
        self.pre_self_attention_layer_norm = _norm(cfg)
        self.self_attention = _attention(cfg)
        self.pre_cross_attention_layer_norm = _norm(cfg)
        self.encoder_decoder_attention = _attention(cfg)
        self.pre_mlp_layer_norm = _norm(cfg)
        self.mlp = Mlp(cfg)

    def cross_kv(self, encoded):
        return self.encoder_decoder_attention.project_kv(encoded)

    def __call__(self, y, self_bias, cross_kv, cross_bias, cache=None, index=None, encoded=None):
        """One decoder block.

        `cross_kv`: the cross-attention keys/values, or None to project them
        here from `encoded` (teacher forcing: under remat they are then
        recomputed from the one encoder output instead of being stored per layer).
        Without `cache`, y is the whole [B, T, D] target prefix. With `cache`
        ((k, v) each [B, L, H, Dh]), y is the one step [B, 1, D] at `index`;
        its keys/values are written into the cache, which is returned.
        """
        if cross_kv is None:
            cross_kv = self.cross_kv(encoded)
        h = self.pre_self_attention_layer_norm(y)
        k, v = self.self_attention.project_kv(h)
        if cache is not None:
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, index, 0, 0))
            cache = (k, v)
        y = y + self.self_attention(h, (k, v), self_bias)
        h = self.pre_cross_attention_layer_norm(y)
        y = y + self.encoder_decoder_attention(h, cross_kv, cross_bias)
        y = y + self.mlp(self.pre_mlp_layer_norm(y))
        return y, cache


class Decoder(nn.Module):
    config: T5Config

    def setup(self):
        cfg = self.config
        self.relpos_bias = _relpos(cfg, bidirectional=False)
        layer = remat_layer(DecoderLayer, cfg.remat)  # only __call__ is rematerialized
        self.layers = [layer(cfg) for _ in range(cfg.num_decoder_layers)]
        self.decoder_norm = _norm(cfg)
        if not cfg.tie_word_embeddings:
            self.logits_dense = Dense(cfg.vocab_size, ("embed", "vocab"), dtype=cfg.compute_dtype,
                                      kernel_init=nn.initializers.variance_scaling(
                                          1.0, "fan_in", "normal"))

    def cross_kv(self, encoded):
        """Per-layer cross-attention keys/values of the encoder output, computed once."""
        return [layer.cross_kv(encoded) for layer in self.layers]

    def __call__(self, y, encoded, enc_mask):
        """Teacher-forced decoder: y [Bq, T, D] embedded decoder inputs,
        encoded [Bk, S, D] with Bq = G * Bk -> hidden [Bq, T, D]."""
        t = y.shape[1]
        pos = jnp.arange(t)[None]
        self_bias = self.relpos_bias(pos, pos) + mask_to_bias(causal_mask(t))
        cross_bias = mask_to_bias(enc_mask[:, None, None, :])
        for layer in self.layers:
            y, _ = layer(y, self_bias, None, cross_bias, encoded=encoded)
        return self.decoder_norm(y)

    def step(self, y, index, cache, cross_kv, enc_mask):
        """One cached step: y [B, 1, D] at position `index` -> hidden [B, 1, D], cache."""
        length = cache[0][0].shape[1]
        k_pos = jnp.arange(length)[None]
        q_pos = jnp.full((1, 1), index)
        self_bias = self.relpos_bias(q_pos, k_pos) + mask_to_bias((k_pos <= index)[:, None, None, :])
        cross_bias = mask_to_bias(enc_mask[:, None, None, :])
        new_cache = []
        for layer, layer_cache, kv in zip(self.layers, cache, cross_kv):
            y, layer_cache = layer(y, self_bias, kv, cross_bias, cache=layer_cache, index=index)
            new_cache.append(layer_cache)
        return self.decoder_norm(y), new_cache

    def untied_logits(self, hidden):
        return self.logits_dense(hidden.astype(jnp.float32))


class T5(nn.Module):
    """The whole model; each method is one stage the backbone functions compose."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def embed(self, ids):
        return self.token_embedder(ids)

    def encode(self, ids, mask, prompt):
        """ids, mask [B, Li] (left-padded); prompt None | [B, P, D] -> encoded
        [B, P + Li, D] and its mask [B, P + Li]."""
        x = self.token_embedder(ids)
        mask = mask.astype(jnp.int32)
        if prompt is not None:
            x = jnp.concatenate([prompt.astype(x.dtype), x], axis=1)
            mask = jnp.concatenate([jnp.ones(prompt.shape[:2], jnp.int32), mask], axis=1)
        positions = jnp.cumsum(mask, axis=1) - 1
        return self.encoder(x, mask, positions), mask

    def decode(self, decoder_input_ids, encoded, enc_mask):
        """[Bq, T] teacher-forced decoder inputs -> final hidden states [Bq, T, D]."""
        return self.decoder(self.token_embedder(decoder_input_ids), encoded, enc_mask)

    def head(self, hidden):
        """Hidden states [..., D] -> float32 logits [..., V]."""
        cfg = self.config
        if cfg.tie_word_embeddings:
            h = hidden.astype(jnp.float32)
            if cfg.scale_tied_logits:
                h = h * cfg.d_model ** -0.5
            return self.token_embedder.attend(h)
        return self.decoder.untied_logits(hidden)

    def cross_kv(self, encoded):
        return self.decoder.cross_kv(encoded)

    def decode_step(self, ids, index, cache, cross_kv, enc_mask):
        """ids [B, 1] at position `index` -> float32 logits [B, V], new cache."""
        hidden, cache = self.decoder.step(self.token_embedder(ids), index, cache, cross_kv, enc_mask)
        return self.head(hidden[:, 0]), cache

    def __call__(self, ids, mask, decoder_input_ids, prompt=None):
        encoded, enc_mask = self.encode(ids, mask, prompt)
        return self.head(self.decode(decoder_input_ids, encoded, enc_mask))


# ---------------------------------------------------------------------------
# The backbone
# ---------------------------------------------------------------------------

def shift_right(targets, start_id: int = 0):
    """Decoder inputs: [B, T] targets -> [start, t_0, ..., t_{T-2}]."""
    start = jnp.full(targets.shape[:-1] + (1,), start_id, targets.dtype)
    return jnp.concatenate([start, targets[..., :-1]], axis=-1)


def _is_box(x) -> bool:
    return isinstance(x, nn.Partitioned)


def abstract_params(config: T5Config):
    """(tree of jax.ShapeDtypeStruct, tree of logical-axis tuples) for `config`."""
    module = T5(config)
    dummy = jnp.zeros((1, 2), jnp.int32)
    boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), dummy, dummy, dummy)["params"])
    axes = jax.tree_util.tree_map(lambda b: tuple(b.names), boxed, is_leaf=_is_box)
    return nn.unbox(boxed), axes


@dataclasses.dataclass
class T5Backbone(Backbone):
    """Frozen T5 (see the module docstring). `params` has the T5X layout."""

    def __post_init__(self):
        self.family = "t5"
        self.add_eos_to_targets = True
        self.module = T5(self.config)
        self._axes = None

    # ---- structure ---------------------------------------------------------

    @property
    def num_layers(self) -> int:
        """Decoder layers: `ffn_activations` reads the decoder (see there)."""
        return int(self.config.num_decoder_layers)

    def logical_axes(self):
        if self._axes is None:
            self._axes = abstract_params(self.config)[1]
        return self._axes

    def embed(self, params, ids):
        return self.module.apply({"params": params}, jnp.asarray(ids), method=T5.embed)

    # ---- pieces ------------------------------------------------------------

    def _encode(self, params, prompt, inputs, inputs_mask, mutable=False):
        self.check_prompt(prompt)
        inputs = jnp.asarray(inputs)
        prompt = batched_prompt(prompt, inputs.shape[0],
                                activation_dtype(self.config.compute_dtype))
        return self.module.apply({"params": params}, inputs, jnp.asarray(inputs_mask), prompt,
                                 method=T5.encode, mutable=mutable)

    def _decoder_logits(self, params, decoder_input_ids, encoded, enc_mask):
        def fn(mdl):
            return mdl.head(mdl.decode(decoder_input_ids, encoded, enc_mask))
        return nn.apply(fn, self.module)({"params": params})

    # ---- the hot path ------------------------------------------------------

    def target_log_likelihood(self, params, prompt, batch):
        """float32 [B]: sum over target tokens of log p(target_t | prompt, inputs, targets_<t)."""
        encoded, enc_mask = self._encode(params, prompt, batch["inputs"], batch["inputs_mask"])
        targets = jnp.asarray(batch["targets"])
        logits = self._decoder_logits(params, shift_right(targets, self.config.decoder_start_id),
                                      encoded, enc_mask)
        token_lp = gather_log_probs(logits, targets)
        return jnp.sum(token_lp * jnp.asarray(batch["targets_mask"], jnp.float32), axis=-1)

    def score_candidates(self, params, prompt, inputs, inputs_mask, candidates, candidates_mask):
        """float32 [B, C]. The encoder runs once on the [B] inputs; all B*C
        candidate rows are decoded in one call whose cross-attention reads the
        [B] encoder output directly (no copy per candidate)."""
        encoded, enc_mask = self._encode(params, prompt, inputs, inputs_mask)
        candidates = jnp.asarray(candidates)
        b, (c, t) = encoded.shape[0], candidates.shape
        rows = jnp.broadcast_to(candidates[None], (b, c, t)).reshape(b * c, t)
        logits = self._decoder_logits(params, shift_right(rows, self.config.decoder_start_id),
                                      encoded, enc_mask)
        token_lp = gather_log_probs(logits, rows).reshape(b, c, t)
        return jnp.sum(token_lp * jnp.asarray(candidates_mask, jnp.float32)[None], axis=-1)

    def greedy_decode(self, params, prompt, inputs, inputs_mask, max_decode_len: int):
        """int32 [B, max_decode_len], with a self-attention KV cache; EOS and
        everything after it are 0."""
        cfg = self.config
        encoded, enc_mask = self._encode(params, prompt, inputs, inputs_mask)
        variables = {"params": params}
        cross_kv = self.module.apply(variables, encoded, method=T5.cross_kv)
        b = encoded.shape[0]
        shape = (b, max_decode_len, cfg.num_heads, cfg.head_dim)
        cache = [(jnp.zeros(shape, cfg.compute_dtype), jnp.zeros(shape, cfg.compute_dtype))
                 for _ in range(cfg.num_decoder_layers)]

        def body(carry, index):
            token, cache = carry
            logits, cache = self.module.apply(variables, token, index, cache, cross_kv, enc_mask,
                                              method=T5.decode_step)
            nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            return (nxt[:, None], cache), nxt

        start = jnp.full((b, 1), cfg.decoder_start_id, jnp.int32)
        _, tokens = jax.lax.scan(body, (start, cache), jnp.arange(max_decode_len))
        tokens = tokens.T
        ended = jnp.cumsum((tokens == cfg.eos_id).astype(jnp.int32), axis=1) > 0
        return jnp.where(ended, 0, tokens)

    @property
    def ffn_activation_rules(self):
        return GATED_FFN_RULES if self.config.gated else UNGATED_FFN_RULES

    def ffn_activations(self, params, prompt, inputs, inputs_mask, rule=None,
                        stack: str = "decoder"):
        """FFN hidden activations for the ON indicator.

        stack="decoder" (default, the layers counted by `num_layers`): float32
        [num_decoder_layers, B, 1, F] at the first decoder step (decoder input =
        the start token), which is how the Prompt-Transferability code reads
        T5: that step is where the prompt's effect on the output starts.
        stack="encoder": [num_layers_encoder, B, P + Li, F] over prompt + inputs.

        The value (`rule`, see `Backbone.ffn_activation_rules`): ungated FFNs
        return act(wi x) ('output'); gated ones the gate's pre-activation
        wi_0 x ('gate', default: > 0 when the gate is open) or the input of `wo`,
        gelu(wi_0 x) * (wi_1 x) ('product').
        """
        sown = "gate" if self.ffn_rule(rule) == "gate" else "activations"
        if stack not in ("decoder", "encoder"):
            raise ConfigError(f"ffn_activations stack {stack!r}: use 'decoder' or 'encoder'.")
        if stack == "encoder":
            _, state = self._encode(params, prompt, inputs, inputs_mask, mutable=["intermediates"])
            layers = state["intermediates"]["encoder"]
            n = self.config.num_layers
        else:
            encoded, enc_mask = self._encode(params, prompt, inputs, inputs_mask)
            start = jnp.full((encoded.shape[0], 1), self.config.decoder_start_id, jnp.int32)
            _, state = self.module.apply({"params": params}, start, encoded, enc_mask,
                                         method=T5.decode, mutable=["intermediates"])
            layers = state["intermediates"]["decoder"]
            n = self.config.num_decoder_layers
        acts = [layers[f"layers_{i}"]["mlp"][sown][0] for i in range(n)]
        return jnp.stack(acts).astype(jnp.float32)

    # ---- convenience -------------------------------------------------------

    def _logits(self, params, inputs, targets, prompt):
        encoded, enc_mask = self._encode(params, prompt, inputs, jnp.ones_like(inputs))
        return self._decoder_logits(params, shift_right(targets, self.config.decoder_start_id),
                                    encoded, enc_mask)

    def logits(self, inputs, targets=None, prompt=None):
        """float32 decoder logits [B, Lt, V] for unpadded inputs [B, Li] (targets
        teacher-forced, shifted right); without targets, the first step [B, 1, V]."""
        inputs = jnp.asarray(inputs, jnp.int32)
        if targets is None:
            targets = jnp.zeros((inputs.shape[0], 1), jnp.int32)
        self.check_prompt(prompt)
        return _jitted_logits(self.config)(self.params, inputs, jnp.asarray(targets, jnp.int32),
                                           None if prompt is None else jnp.asarray(prompt))


@functools.lru_cache(maxsize=None)
def _jitted_logits(config: T5Config):
    """One compiled `logits` per config, shared by every backbone instance."""
    bb = T5Backbone(name="", config=config, params=None, vocab=None)
    return jax.jit(bb._logits)


# ---------------------------------------------------------------------------
# Construction: presets, HF safetensors, T5X checkpoints
# ---------------------------------------------------------------------------

def _vocabulary(spm_path: str | None = None, extra_ids: int = 0):
    import seqio

    if spm_path:
        return seqio.SentencePieceVocabulary(spm_path, extra_ids=extra_ids)
    return seqio.ByteVocabulary()


def _check_vocab_fits(vocab, config: T5Config, source: str) -> None:
    if vocab.vocab_size > config.vocab_size:
        raise ConfigError(f"{source}: the vocabulary has {vocab.vocab_size} ids but the model's "
                          f"embedding only {config.vocab_size}; use the model's own tokenizer.")


def _init_std(path: str, shape, config: T5Config) -> float | None:
    """Standard deviation of a random-init parameter (None: ones, for norm scales).

    Same distributions as the modules' initializers: kernels N(0, 1/fan_in)
    with the query's extra 1/Dh (T5 folds attention scaling into it),
    embeddings N(0, 1), relative-position tables N(0, 1/D).
    """
    if path.endswith("/scale"):
        return None
    if path == "token_embedder/embedding":
        return 1.0
    if path.endswith("rel_embedding"):
        return config.d_model ** -0.5
    std = shape[0] ** -0.5
    return std * config.head_dim ** -0.5 if path.endswith("query/kernel") else std


def from_preset(name: str, *, seed: int = 0, dtype=None, mesh=None,
                spm_path: str | None = None, compute_dtype: str | None = None,
                remat: str | None = None) -> T5Backbone:
    """Random-init T5 of a named shape (tests, benchmarks).

    Each parameter is drawn on the host (numpy, seeded) and placed on the
    device(s) before the next is drawn, through the same `ParamTreeBuilder`
    as checkpoint loading: host memory stays near one tensor, and no large
    XLA init program is compiled.

    Args:
      dtype: storage dtype of the params (None: float32).
      mesh: place params sharded by the logical rules.
      spm_path: a SentencePiece model for the vocabulary (else ByteVocabulary).
      compute_dtype: overrides the preset's compute dtype, e.g. "bfloat16".
      remat: overrides the preset's rematerialization ('none', 'full', 'dots').
    """
    config = get_preset(name)
    if compute_dtype:
        config = dataclasses.replace(config, dtype=jnp.dtype(compute_dtype).name)
    if remat:
        config = dataclasses.replace(config, remat=remat)
    config.validate()
    shapes, axes = abstract_params(config)
    builder = ParamTreeBuilder(shapes, axes, dtype=dtype, mesh=mesh, source=f"preset {name}")
    rng = np.random.default_rng(seed)
    for path, leaf in flatten(shapes).items():
        std = _init_std(path, leaf.shape, config)
        value = (np.ones(leaf.shape, np.float32) if std is None
                 else rng.standard_normal(leaf.shape, np.float32) * np.float32(std))
        builder.put(path, value)
    vocab = _vocabulary(spm_path, extra_ids=100 if spm_path else 0)
    _check_vocab_fits(vocab, config, f"preset {name}")
    return T5Backbone(name=name, config=config, params=builder.build(), vocab=vocab)


# -- HF ----------------------------------------------------------------------

_HF_ATTN = {"query": "q", "key": "k", "value": "v", "out": "o"}
# T5X sub-block -> (HF layer index, HF module name) per stack.
_HF_ENC_BLOCK = {"pre_attention_layer_norm": (0, "layer_norm"), "attention": (0, "SelfAttention"),
                 "pre_mlp_layer_norm": (1, "layer_norm"), "mlp": (1, "DenseReluDense")}
_HF_DEC_BLOCK = {"pre_self_attention_layer_norm": (0, "layer_norm"),
                 "self_attention": (0, "SelfAttention"),
                 "pre_cross_attention_layer_norm": (1, "layer_norm"),
                 "encoder_decoder_attention": (1, "EncDecAttention"),
                 "pre_mlp_layer_norm": (2, "layer_norm"), "mlp": (2, "DenseReluDense")}


def hf_name(path: str) -> tuple[str, bool]:
    """T5X path -> (T5ForConditionalGeneration tensor name, transpose?).

    HF Linear weights are [out, in] and relative-attention tables
    [buckets, heads]; both are transposed into the T5X layout.
    """
    parts = path.split("/")
    if path == "token_embedder/embedding":
        return "shared.weight", False
    if path == "decoder/logits_dense/kernel":
        return "lm_head.weight", True
    stack = parts[0]
    if parts[1] == "relpos_bias":
        return f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True
    if parts[1] in ("encoder_norm", "decoder_norm"):
        return f"{stack}.final_layer_norm.weight", False
    i = int(parts[1].split("_")[1])
    table = _HF_ENC_BLOCK if stack == "encoder" else _HF_DEC_BLOCK
    layer, module = table[parts[2]]
    prefix = f"{stack}.block.{i}.layer.{layer}.{module}"
    if module == "layer_norm":
        return f"{prefix}.weight", False
    if module == "DenseReluDense":
        return f"{prefix}.{parts[3]}.weight", True
    return f"{prefix}.{_HF_ATTN[parts[3]]}.weight", True


def config_from_hf(hf: dict, source: str = "config.json") -> T5Config:
    """T5Config from a HF T5 config.json dict."""
    try:
        num_layers = int(hf["num_layers"])
        config = T5Config(
            vocab_size=int(hf["vocab_size"]), d_model=int(hf["d_model"]),
            num_heads=int(hf["num_heads"]), head_dim=int(hf["d_kv"]), d_ff=int(hf["d_ff"]),
            num_layers=num_layers,
            num_decoder_layers=int(hf.get("num_decoder_layers") or num_layers),
            relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
            feed_forward=str(hf.get("feed_forward_proj", "relu")),
            # transformers 5.x writes tie_word_embeddings=true for every T5 and
            # records the v1.0 rescale in scale_decoder_outputs instead.
            tie_word_embeddings=hf.get("tie_word_embeddings", True) is not False,
            scale_tied_logits=hf.get("scale_decoder_outputs", True) is not False,
            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
            eos_id=int(hf.get("eos_token_id", 1) if not isinstance(hf.get("eos_token_id"), list)
                       else hf["eos_token_id"][0]),
            pad_id=int(hf.get("pad_token_id", 0) or 0),
            decoder_start_id=int(hf.get("decoder_start_token_id", 0) or 0),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source} is not a usable T5 config ({type(e).__name__}: {e}); "
                              "it needs vocab_size, d_model, num_heads, d_kv, d_ff, num_layers.") from None
    return config.validate()


def _hf_vocabulary(directory: str):
    """spiece.model (seqio SentencePiece, sentinel count from tokenizer_config.json),
    else tokenizer.json (`ptransfer.core.vocab.TokenizersVocabulary`), else bytes."""
    spm = os.path.join(directory, "spiece.model")
    if os.path.isfile(spm):
        extra_ids = 0
        tok_config = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(tok_config):
            with open(tok_config) as f:
                extra_ids = int(json.load(f).get("extra_ids", 0) or 0)
        return _vocabulary(spm, extra_ids)
    if os.path.isfile(os.path.join(directory, "tokenizer.json")):
        return TokenizersVocabulary.from_hf_dir(directory)
    log.warning("%s has no spiece.model or tokenizer.json; using seqio.ByteVocabulary "
                "(bytes as ids).", directory)
    return _vocabulary(None)


def from_hf(directory: str, *, dtype=None, mesh=None) -> T5Backbone:
    """T5ForConditionalGeneration weights from HF safetensors (+ sharded index).

    Tensors stream one at a time into (optionally sharded) device arrays.
    Vocabulary: `spiece.model`, else `tokenizer.json`, else ByteVocabulary (logged).
    """
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"no config.json in {directory!r}: a HF T5 directory needs "
                              "config.json and model.safetensors (or a sharded index).")
    try:
        with open(config_path) as f:
            hf = json.load(f)
    except ValueError as e:
        raise CheckpointError(f"{config_path} is not valid JSON: {e}") from None
    config = config_from_hf(hf, config_path)
    ckpt = SafetensorsCheckpoint(directory)
    if not config.tie_word_embeddings and "lm_head.weight" not in ckpt:
        raise CheckpointError(f"{config_path} says tie_word_embeddings=false but the checkpoint "
                              "has no lm_head.weight; the checkpoint is incomplete.")
    shapes, axes = abstract_params(config)
    builder = ParamTreeBuilder(shapes, axes, dtype=dtype, mesh=mesh, source=directory)
    for path in flatten(shapes):
        name, transpose = hf_name(path)
        array = ckpt.get(name)
        builder.put(path, array.T if transpose else array)
    params = builder.build()

    vocab = _hf_vocabulary(directory)
    _check_vocab_fits(vocab, config, directory)
    name = os.path.basename(os.path.normpath(directory))
    return T5Backbone(name=name, config=config, params=params, vocab=vocab)


# -- T5X ---------------------------------------------------------------------

def from_t5x(ckpt_dir: str, preset: str, *, dtype=None, mesh=None,
             spm_path: str | None = None) -> T5Backbone:
    """A T5X checkpoint (msgpack + tensorstore) with the shapes of `preset`.

    `ckpt_dir` is a `checkpoint_<step>` directory (or its parent: the latest
    step is used). Vocabulary: `spm_path`, else a `sentencepiece.model` /
    `spiece.model` beside or above the checkpoint (100 sentinel ids, as
    seqio's T5 vocabulary), else ByteVocabulary.
    """
    config = get_preset(preset).validate()
    ckpt = T5XCheckpoint(ckpt_dir)
    shapes, axes = abstract_params(config)
    expected = flatten(shapes)
    have = set(ckpt.keys())
    missing, extra = sorted(set(expected) - have), sorted(have - set(expected))
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if extra:
            detail.append(f"unexpected {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}")
        raise CheckpointError(f"T5X checkpoint {ckpt.directory} does not match preset {preset!r} "
                              f"({'; '.join(detail)}). Pick the preset of the model that wrote it "
                              "(t5_* for v1.0 with a tied head, t5_1_1_* / t5_lm_adapt_* for "
                              "gated-GELU with logits_dense).")
    for path, want in expected.items():
        got = ckpt.shape(path)
        if got != tuple(want.shape):
            raise CheckpointError(f"T5X checkpoint {ckpt.directory}: {path} has shape {got} but "
                                  f"preset {preset!r} expects {tuple(want.shape)}. Pick the preset "
                                  "of the model that wrote it.")
    builder = ParamTreeBuilder(shapes, axes, dtype=dtype, mesh=mesh, source=ckpt.directory)
    for path in expected:
        builder.put(path, ckpt.get(path))
    params = builder.build()

    if spm_path is None:
        for folder in (ckpt.directory, os.path.dirname(os.path.normpath(ckpt.directory))):
            for fname in ("sentencepiece.model", "spiece.model"):
                if os.path.isfile(os.path.join(folder, fname)):
                    spm_path = os.path.join(folder, fname)
                    break
            if spm_path:
                break
    vocab = _vocabulary(spm_path, extra_ids=100 if spm_path else 0)
    _check_vocab_fits(vocab, config, ckpt.directory)
    return T5Backbone(name=preset, config=config, params=params, vocab=vocab)
