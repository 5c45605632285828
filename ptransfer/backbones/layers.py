"""Building blocks shared by every backbone family (Flax linen).

Parameters carry logical axis names (T5X vocabulary: 'vocab', 'embed', 'mlp',
'heads', 'kv', 'joined_kv', 'relpos_buckets'), so one rule table in
`ptransfer.core.sharding` shards every family. Kernels are stored
`[in, out]` as T5X does.

Precision policy. A module's `dtype` (the config's compute dtype) is the dtype
of the matmul OPERANDS only:
  * float32: every op in float32, as the HF-parity tests check.
  * bfloat16 / float16: every matmul (`matmul`) takes its operands in that
    dtype and accumulates and returns float32 (`preferred_element_type`), in
    the forward pass and in the backward pass alike (the cotangent is cast to
    the compute dtype before the transposed matmuls). Everything between the
    matmuls -- residual stream, norms, softmax, activations, RoPE, losses --
    stays float32: XLA's CPU backend has fast bf16 x bf16 -> f32 dots but no
    fast bf16 elementwise math and no fast bf16-output dot (it rewrites both
    into float32 with a convert around every op, which made a bf16 step slower
    than float32), and float32 elementwise work is cheap next to the matmuls
    on accelerators too. The frozen matmul weights (`MATMUL_PARAMS`) are
    stored once in the compute dtype (`cast_matmul_params`), never cast per step.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptransfer.core.errors import ConfigError

NEG_INF = -1e10  # finite, so fully-masked rows give a uniform softmax, not NaN

# The FFN activations each checkpoint format names.
ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


# Rematerialization (activation checkpointing) of one transformer layer, by the
# names T5X / flaxformer (`layer_remat`) and maxtext (`remat_policy`) use:
#   none  - keep every activation the backward pass needs (fastest, most memory);
#   full  - keep only each layer's inputs, recompute the whole layer backwards;
#   dots  - keep the matmul outputs that have no batch dimension (the weight
#           projections: q/k/v/out, wi/wo), recompute the rest (attention
#           scores and probabilities, norms, activations).
#           `minimal` is the same policy under flaxformer's / maxtext's name.
REMAT_POLICIES = ("none", "full", "dots", "minimal")


def check_remat(name, where: str = "config") -> str:
    """Returns `name` if it is a REMAT_POLICIES entry, else raises ConfigError."""
    if name not in REMAT_POLICIES:
        raise ConfigError(f"{where}: remat {name!r} is not a remat policy; use one of "
                          f"{', '.join(repr(p) for p in REMAT_POLICIES)}.")
    return name


def remat_layer(cls, name: str):
    """`cls` (a layer Module class) wrapped in `nn.remat` with policy `name`.

    Only `__call__` is wrapped; the wrapped class keeps the parameter names
    (the caller's attribute names, e.g. `layers_3`), so checkpoints, logical
    axes and sharding are unchanged. `prevent_cse=True` (the default) is what a
    Python loop of layers inside `jit` needs: without it XLA may merge the
    recomputation back into the forward pass (it is only safe to drop inside
    `scan`). No argument is static: every layer input is an array or None.
    """
    check_remat(name)
    if name == "none":
        return cls
    policy = (jax.checkpoint_policies.nothing_saveable if name == "full"
              else jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    return nn.remat(cls, policy=policy, prevent_cse=True)


def param_with_axes(module: nn.Module, name: str, init, shape: Sequence[int],
                    axes: Sequence[str | None], dtype=jnp.float32):
    """A parameter annotated with logical axis names (one per dimension)."""
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype)


# Leaf names of the params that only ever feed a matmul (Dense kernels, embedding
# tables): with a low-precision compute dtype they are stored in it.
MATMUL_PARAMS = ("kernel", "embedding")


def is_low_precision(dtype) -> bool:
    """True for a compute dtype narrower than float32 (bfloat16, float16)."""
    return jnp.dtype(dtype).itemsize < 4


def activation_dtype(dtype) -> jnp.dtype:
    """The dtype of activations between matmuls: float32 under every policy
    (float64 stays float64)."""
    return jnp.promote_types(jnp.dtype(dtype), jnp.float32)


def cast_matmul_params(params, dtype):
    """`params` with every MATMUL_PARAMS leaf in `dtype` (norm scales, biases,
    relative-position tables stay as they are). The cast runs once, here."""
    def cast(path, x):
        name = getattr(path[-1], "key", None)
        if name in MATMUL_PARAMS and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x
    return jax.tree_util.tree_map_with_path(cast, params)


def _transposed_specs(spec: str) -> tuple[str, str]:
    """'ab,bc->ac' -> ('ac,bc->ab', 'ac,ab->bc'): the einsums of the two operand
    gradients. Every index of an operand must occur in the other or the output."""
    ins, out = spec.replace(" ", "").split("->")
    a, b = ins.split(",")
    for x, other in ((a, b), (b, a)):
        if not set(x) <= set(other) | set(out) or "." in spec:
            raise ValueError(f"matmul spec {spec!r}: needs explicit indices, each operand's "
                             "in the other operand or the output")
    return f"{out},{b}->{a}", f"{out},{a}->{b}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _low_precision_einsum(spec, a, b):
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _lpe_fwd(spec, a, b):
    return _low_precision_einsum(spec, a, b), (a, b)


def _lpe_bwd(spec, res, ct):
    a, b = res
    da_spec, db_spec = _transposed_specs(spec)
    ct = ct.astype(a.dtype)  # the transposed matmuls run in the compute dtype too
    da = jnp.einsum(da_spec, ct, b, preferred_element_type=jnp.float32).astype(a.dtype)
    db = jnp.einsum(db_spec, ct, a, preferred_element_type=jnp.float32).astype(b.dtype)
    return da, db


_low_precision_einsum.defvjp(_lpe_fwd, _lpe_bwd)


def matmul(spec: str, a, b, dtype) -> jax.Array:
    """einsum(spec, a, b) under the precision policy (module docstring).

    float32 `dtype`: a plain float32 einsum. Low precision: operands cast to
    `dtype` (a no-op for weights stored in it), float32 accumulation and
    result, and the backward matmuls in `dtype` with float32 results.
    `spec` uses explicit indices (no '...'). Returns float32 (float64 for float64).
    """
    if not is_low_precision(dtype):
        return jnp.einsum(spec, a.astype(dtype), b.astype(dtype))
    return _low_precision_einsum(spec, a.astype(dtype), b.astype(dtype))


class RMSNorm(nn.Module):
    """x / rms(x) * scale, computed in float32 (T5, LLaMA, Gemma). [..., D] -> [..., D].

    `axes` names the scale's one dimension (Gemma's per-head q/k norms: 'kv').
    """

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    axes: tuple[str | None] = ("embed",)

    @nn.compact
    def __call__(self, x):
        scale = param_with_axes(self, "scale", nn.initializers.ones, (x.shape[-1],), self.axes)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return (x32 * scale.astype(jnp.float32)).astype(activation_dtype(self.dtype))


class LayerNorm(nn.Module):
    """Mean/variance LayerNorm with scale and bias (BERT / RoBERTa). [..., D] -> [..., D]."""

    epsilon: float = 1e-12
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = param_with_axes(self, "scale", nn.initializers.ones, (d,), ("embed",))
        bias = param_with_axes(self, "bias", nn.initializers.zeros, (d,), ("embed",))
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(
            activation_dtype(self.dtype))


class Dense(nn.Module):
    """y = x @ kernel (+ bias) with kernel [in, out] and named axes.

    `axes` names the kernel's two dimensions, e.g. ('embed', 'mlp'). x [..., in]
    -> [..., out] in the activation dtype (float32 under every policy).
    """

    features: int
    axes: tuple[str | None, str | None]
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        kernel = param_with_axes(self, "kernel", self.kernel_init,
                                 (x.shape[-1], self.features), self.axes)
        if is_low_precision(self.dtype):
            lead = x.shape[:-1]
            y = matmul("mk,kn->mn", x.reshape(-1, x.shape[-1]), kernel, self.dtype)
            y = y.reshape(lead + (self.features,))
        else:
            y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = param_with_axes(self, "bias", nn.initializers.zeros, (self.features,), self.axes[1:])
            y = y + bias.astype(y.dtype)
        return y


def mask_to_bias(mask: jax.Array) -> jax.Array:
    """Boolean/int mask [..., T, S] (1 = attend) -> additive float32 bias."""
    return jnp.where(mask.astype(bool), 0.0, NEG_INF).astype(jnp.float32)


def padding_attention_mask(query_mask: jax.Array, key_mask: jax.Array) -> jax.Array:
    """[B, T], [B, S] -> [B, 1, T, S] (1 where both positions are real)."""
    return query_mask[:, None, :, None].astype(bool) & key_mask[:, None, None, :].astype(bool)


def causal_mask(length: int) -> jax.Array:
    """[1, 1, T, T] lower-triangular."""
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


def dot_product_attention(q, k, v, bias, scale: float | None = None, dtype=jnp.float32):
    """Multi-head attention core with grouped-query support.

    Args:
      q: [B, T, H, Dh]; k, v: [B, S, Hkv, Dh] with H a multiple of Hkv.
      bias: additive float32 bias broadcastable to [B, H, T, S].
      scale: multiplier on q·k (None: 1/sqrt(Dh); T5 passes 1.0).
    Returns:
      [B, T, H, Dh] in the activation dtype. Softmax is taken in float32; both
      matmuls follow the precision policy (`matmul`).
    """
    heads, kv_heads = q.shape[2], k.shape[2]
    if scale is None:
        scale = q.shape[-1] ** -0.5
    groups = heads // kv_heads
    b, t = q.shape[0], q.shape[1]
    # [B, T, Hkv, G, Dh] keeps GQA without materializing repeated keys.
    qg = q.reshape(b, t, kv_heads, groups, q.shape[-1])
    if is_low_precision(dtype):
        logits = matmul("btkgd,bskd->bkgts", qg, k, dtype) * scale
    else:
        qg = qg.astype(dtype)
        logits = jnp.einsum("btkgd,bskd->bkgts", qg, k.astype(dtype)).astype(jnp.float32) * scale
    logits = logits.reshape(b, heads, t, k.shape[1]) + bias
    weights = jax.nn.softmax(logits, axis=-1)
    weights = weights.reshape(b, kv_heads, groups, t, k.shape[1])
    if is_low_precision(dtype):
        out = matmul("bkgts,bskd->btkgd", weights, v, dtype)
    else:
        out = jnp.einsum("bkgts,bskd->btkgd", weights.astype(dtype), v.astype(dtype))
    return out.reshape(b, t, heads, q.shape[-1])


def gather_log_probs(logits: jax.Array, ids: jax.Array) -> jax.Array:
    """log softmax(logits)[ids]: [..., V], [...] -> float32 [...]."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, ids[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


class Embed(nn.Module):
    """Token embedding table [V, D] (axes 'vocab', 'embed'), T5X's `embedding`.

    `__call__` looks ids up: [...] -> [..., D] in the activation dtype; `attend`
    is the tied output head: [..., D] -> [..., V] in float32 (its matmul in
    `dtype` under a low-precision policy).
    """

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32
    embedding_init: Callable = nn.initializers.normal(stddev=1.0)
    # Other tables (BERT's positions, token types) name their first axis differently.
    axes: tuple[str | None, str | None] = ("vocab", "embed")

    def setup(self):
        self.embedding = param_with_axes(self, "embedding", self.embedding_init,
                                         (self.num_embeddings, self.features), self.axes)

    def __call__(self, ids):
        return jnp.take(self.embedding, ids, axis=0).astype(activation_dtype(self.dtype))

    def attend(self, x):
        if is_low_precision(self.dtype):
            lead = x.shape[:-1]
            y = matmul("md,vd->mv", x.reshape(-1, x.shape[-1]), self.embedding, self.dtype)
            return y.reshape(lead + (self.num_embeddings,))
        return jnp.dot(x.astype(jnp.float32), self.embedding.astype(jnp.float32).T)
