"""Embedding similarities between soft prompts of the same backbone.

For two prompts P1, P2 of shape [L, D] (Su et al., 2022, Sec. 6.1):

  E_concat  = 1 / (1 + ||flat(P1) - flat(P2)||)          flat: [L*D]
  E_average = 1 / (1 + mean over all L x L token pairs (i, j) of ||p1_i - p2_j||)
  C_concat  = cos(flat(P1), flat(P2))
  C_average = mean over all L x L token pairs (i, j) of cos(p1_i, p2_j)

E_average follows the paper's formula and the official script
(thunlp/Prompt-Transferability): the distances are averaged first, then
mapped to a similarity; the mean of 1 / (1 + distance) is a different number.
The cosine of a zero vector is defined as 0. C_average uses the identity
mean_ij <u_i, v_j> = <mean_i u_i, mean_j v_j> for unit vectors u, v.
Distances are computed from explicit differences (never from the
||a||^2 + ||b||^2 - 2ab expansion), so identical tokens are exactly 0 apart.

Every function is jit-compatible. The `*_matrix` forms compare K1 prompts
with K2 prompts at once: [K1, L, D] x [K2, L, D] -> [K1, K2] (b defaults to a).
They loop over the prompts of `a` with `lax.map`, so memory stays at one
[K2, L, D] difference at a time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ptransfer.core.errors import ConfigError

_EPS = 1e-12


def _unit(x: jax.Array) -> jax.Array:
    """x / ||x|| along the last axis; zero vectors stay zero."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return jnp.where(norm > _EPS, x / jnp.maximum(norm, _EPS), 0.0)


# ---- one pair: [L, D] x [L, D] -> scalar ------------------------------------

def e_concat(p1, p2) -> jax.Array:
    p1, p2 = jnp.asarray(p1, jnp.float32), jnp.asarray(p2, jnp.float32)
    return 1.0 / (1.0 + jnp.linalg.norm((p1 - p2).reshape(-1)))


def e_average(p1, p2) -> jax.Array:
    p1, p2 = jnp.asarray(p1, jnp.float32), jnp.asarray(p2, jnp.float32)
    # [L1, L2]: distance of token i of p1 to token j of p2, one row at a time.
    dist = jax.lax.map(lambda tok: jnp.linalg.norm(p2 - tok, axis=-1), p1)
    return 1.0 / (1.0 + jnp.mean(dist))


def c_concat(p1, p2) -> jax.Array:
    p1, p2 = jnp.asarray(p1, jnp.float32), jnp.asarray(p2, jnp.float32)
    return jnp.dot(_unit(p1.reshape(-1)), _unit(p2.reshape(-1)))


def c_average(p1, p2) -> jax.Array:
    p1, p2 = jnp.asarray(p1, jnp.float32), jnp.asarray(p2, jnp.float32)
    return jnp.dot(_unit(p1).mean(0), _unit(p2).mean(0))


# ---- many pairs: [K1, L, D] x [K2, L, D] -> [K1, K2] --------------------------

def _e_concat_matrix(a, b):
    fa, fb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    dist = jax.lax.map(lambda row: jnp.linalg.norm(fb - row, axis=-1), fa)  # [K1, K2]
    return 1.0 / (1.0 + dist)


def _e_average_matrix(a, b):
    def one_prompt(p):  # [L1, D] -> [K2]
        # [L1, K2, L2] distances of each token of p to every token of every b.
        dist = jax.lax.map(lambda tok: jnp.linalg.norm(b - tok, axis=-1), p)
        return 1.0 / (1.0 + jnp.mean(dist, axis=(0, 2)))

    return jax.lax.map(one_prompt, a)


def _c_concat_matrix(a, b):
    ua = _unit(a.reshape(a.shape[0], -1))
    ub = _unit(b.reshape(b.shape[0], -1))
    return jnp.matmul(ua, ub.T, precision=jax.lax.Precision.HIGHEST)


def _c_average_matrix(a, b):
    ma, mb = _unit(a).mean(1), _unit(b).mean(1)  # [K, D]
    return jnp.matmul(ma, mb.T, precision=jax.lax.Precision.HIGHEST)


_MATRIX_FNS = {
    "E_concat": jax.jit(_e_concat_matrix),
    "E_average": jax.jit(_e_average_matrix),
    "C_concat": jax.jit(_c_concat_matrix),
    "C_average": jax.jit(_c_average_matrix),
}

# Names of the embedding-similarity indicators, in report order.
SIMILARITIES = tuple(_MATRIX_FNS)


def _check_stack(name: str, x) -> jax.Array:
    if np.ndim(x) != 3:
        raise ConfigError(f"{name}: prompts must be stacked as [K, L, D], got shape {np.shape(x)}.")
    return jnp.asarray(x, jnp.float32)


def similarity_matrix(indicator: str, a, b=None) -> jax.Array:
    """Pairwise `indicator` between prompts a [K1, L, D] and b [K2, L, D] (default a).

    Returns float32 [K1, K2]. The *_average indicators accept different
    prompt lengths L; all need the same width D.
    """
    if indicator not in _MATRIX_FNS:
        raise ConfigError(f"unknown similarity indicator {indicator!r}; known: "
                          f"{', '.join(SIMILARITIES)} (ON is computed by indicators.neurons).")
    a = _check_stack(indicator, a)
    b = a if b is None else _check_stack(indicator, b)
    if a.shape[-1] != b.shape[-1]:
        raise ConfigError(
            f"{indicator}: prompt widths differ ({a.shape[-1]} vs {b.shape[-1]}): prompts of "
            "different backbones cannot be compared; project one with `ptransfer project apply`.")
    if indicator.endswith("_concat") and a.shape[1] != b.shape[1]:
        raise ConfigError(f"{indicator} needs prompts of equal length, got {a.shape[1]} and "
                          f"{b.shape[1]}; use E_average / C_average for prompts of unequal length.")
    return _MATRIX_FNS[indicator](a, b)


def e_concat_matrix(a, b=None):
    return similarity_matrix("E_concat", a, b)


def e_average_matrix(a, b=None):
    return similarity_matrix("E_average", a, b)


def c_concat_matrix(a, b=None):
    return similarity_matrix("C_concat", a, b)


def c_average_matrix(a, b=None):
    return similarity_matrix("C_average", a, b)
