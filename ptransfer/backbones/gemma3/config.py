"""Shapes and numerics of a Gemma 3 text model, and the named presets."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ptransfer.backbones import layers
from ptransfer.backbones.decoder_only import check_share_prompt
from ptransfer.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Gemma3Config:
    """A Gemma 3 decoder (HF `Gemma3ForCausalLM` semantics).

    Layer i is global (full causal attention, RoPE base `rope_theta`) when
    (i + 1) % `sliding_window_pattern` == 0, else local: a query at position
    p sees keys at positions k with p - k < `sliding_window`, RoPE base
    `rope_local_theta`. Attention logits are scaled by
    `query_pre_attn_scalar` ** -0.5 (not head_dim ** -0.5).

    `bos_id`: the token Gemma always sees before its text (it is trained
    with it); the backbone adds it between the soft prompt and the inputs,
    so callers never add it. None: no BOS.

    `dtype` is the compute dtype; norms, softmax and logits stay float32.
    `remat`: per-layer rematerialization (see `layers.REMAT_POLICIES`).
    `share_prompt`: as `LlamaConfig.share_prompt` (speed only).
    """

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    query_pre_attn_scalar: float = 256.0
    sliding_window: int = 512
    sliding_window_pattern: int = 6
    rope_theta: float = 1_000_000.0
    rope_local_theta: float = 10_000.0
    norm_eps: float = 1e-6
    bos_id: int | None = 2
    dtype: str = "float32"
    remat: str = "none"
    share_prompt: str = "auto"

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def is_global(self, layer: int) -> bool:
        return (layer + 1) % self.sliding_window_pattern == 0

    def validate(self, where: str = "config") -> "Gemma3Config":
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"{where}: num_heads {self.num_heads} is not a multiple of "
                              f"num_kv_heads {self.num_kv_heads}.")
        if self.head_dim % 2:
            raise ConfigError(f"{where}: head_dim {self.head_dim} must be even for RoPE.")
        if self.sliding_window < 1 or self.sliding_window_pattern < 1:
            raise ConfigError(f"{where}: sliding_window {self.sliding_window} and "
                              f"sliding_window_pattern {self.sliding_window_pattern} must be >= 1.")
        if self.bos_id is not None and not 0 <= self.bos_id < self.vocab_size:
            raise ConfigError(f"{where}: bos_id {self.bos_id} is outside the vocabulary "
                              f"(size {self.vocab_size}).")
        layers.check_remat(self.remat, where)
        check_share_prompt(self.share_prompt, where)
        return self


PRESETS: dict[str, Gemma3Config] = {
    # Test size: GQA 4/2, head_dim 32 != d_model / heads, a query scalar that is
    # neither head_dim nor d_model / heads, window 4 and every 2nd layer global,
    # so a mix-up of any of these changes the output.
    "gemma3_tiny": Gemma3Config(vocab_size=320, d_model=64, num_layers=3, num_heads=4,
                                num_kv_heads=2, head_dim=32, d_ff=128, query_pre_attn_scalar=24.0,
                                sliding_window=4, sliding_window_pattern=2),
    # google/gemma-3-270m, as in its GGUF metadata (the pattern of 6 is not stored there).
    "gemma3_270m": Gemma3Config(vocab_size=262144, d_model=640, num_layers=18, num_heads=4,
                                num_kv_heads=1, head_dim=256, d_ff=2048),
}
