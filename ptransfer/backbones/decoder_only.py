"""The `Backbone` contract for decoder-only families (LLaMA, Gemma 3), given their kernels.

A family supplies its jitted forward functions as `DecoderKernels` (each takes
the static config first); `DecoderOnlyBackbone` turns them into the contract
every layer above uses. What decoder-only means here: the prompt goes before
the text ([P + Li] positions), targets follow the inputs without EOS
(`add_eos_to_targets = False`), inputs are truncated from the left, and
`ffn_activations` covers every prompt + input position (S = P + Li) under the
gated-FFN rules ('gate': the gate's pre-activation, default; 'product':
act(gate) * up).

One [P, D] prompt for the whole batch sits first, where it attends only to
itself, so its P positions are the same rows in every example: a family may
compute them once (`decode_sharing_prompt`) and let the rest of the sequence
attend to their keys and values broadcast over the batch. That puts a second
layer stack in every jitted forward, which only pays when the FLOPs saved are
large (`shared_prefix_length`, the config's `share_prompt`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp

from ptransfer.backbones.base import GATED_FFN_RULES, Backbone, shared_prompt_length
from ptransfer.core.errors import ConfigError

SHARE_PROMPT_MODES = ("auto", "always", "never")
# 'auto' shares the prompt when it saves at least this many FLOPs per call. The
# tiny test models save a few MFLOPs, less than their extra compilation costs in
# a whole run; SmolLM2-135M and Gemma 3 270M save ~0.2 GFLOPs per prompt
# position and batch row (bench/shared_prompt.py: 0.72-0.80x the step time).
SHARED_PROMPT_MIN_FLOPS = 1e9


@dataclasses.dataclass(frozen=True)
class DecoderKernels:
    """One family's jitted functions (config first, static); shapes as in `Backbone`.

    embed(config, params, ids [B, L]) -> [B, L, D]
    target_log_likelihood(config, params, prompt, inputs, inputs_mask, targets,
        targets_mask) -> [B]
    score_candidates(config, params, prompt, inputs, inputs_mask, candidates [C, Lt],
        candidates_mask) -> [B, C]
    greedy_tokens(config, params, prompt, inputs, inputs_mask, max_decode_len) -> [B, T]
    ffn_activations(config, params, prompt, inputs, inputs_mask, rule) -> [layers, B, S, F]
    all_logits(config, params, prompt, inputs, targets) -> [B, P + Li (+ Lt), V]
    abstract_params(config) -> (shapes, logical axes), nested dicts
    """

    embed: Callable
    target_log_likelihood: Callable
    score_candidates: Callable
    greedy_tokens: Callable
    ffn_activations: Callable
    all_logits: Callable
    abstract_params: Callable


def check_share_prompt(mode, where: str = "config") -> str:
    if mode not in SHARE_PROMPT_MODES:
        raise ConfigError(f"{where}: share_prompt {mode!r} is not one of "
                          f"{', '.join(SHARE_PROMPT_MODES)}.")
    return mode


def matmul_flops_per_position(config) -> float:
    """FLOPs of the layer stack's projections for one position (attention scores excluded)."""
    c = config
    qkv = c.d_model * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    out = c.num_heads * c.head_dim * c.d_model
    return 2.0 * c.num_layers * (qkv + out + 3 * c.d_model * c.d_ff)


def shared_prefix_length(config, prompt, batch_size: int) -> int:
    """How many leading positions `decode_sharing_prompt` computes once: P for one
    [P, D] prompt when the config's `share_prompt` says so ('always'; 'auto' when
    (B - 1) * P positions' FLOPs reach SHARED_PROMPT_MIN_FLOPS), else 0."""
    p = shared_prompt_length(prompt)
    mode = config.share_prompt
    if not p or mode == "never" or batch_size < 2:
        return 0
    if mode == "always":
        return p
    saved = (batch_size - 1) * p * matmul_flops_per_position(config)
    return p if saved >= SHARED_PROMPT_MIN_FLOPS else 0


def decode_sharing_prompt(decode: Callable, x, positions, allowed, shared: int, **kwargs):
    """A causal pass over [B, S] with its first `shared` positions computed for one row.

    decode(x [B, T, D], positions [B, T], key_positions [B, S'], allowed bool
    [B, 1, T, S'], caches or None, **kwargs) -> (h [B, T, D], [(k, v)] per layer),
    the family's layer stack. positions [B, S], allowed [B, 1, S, S].
    Returns (h [B, S, D], caches with every key [B, S, ...]): the same as one
    pass over the whole batch, up to float summation order.
    """
    if not shared:
        return decode(x, positions, positions, allowed, None, **kwargs)
    if kwargs:
        raise ValueError("decode_sharing_prompt: extra apply arguments need shared=0.")
    head = slice(None, shared)
    hp, kv = decode(x[:1, head], positions[:1, head], positions[:1, head],
                    allowed[:1, :, head, head], None)
    b = x.shape[0]
    wide = lambda a: jnp.broadcast_to(a, (b,) + a.shape[1:])  # noqa: E731
    h, caches = decode(x[:, shared:], positions[:, shared:], positions, allowed[:, :, shared:],
                       [(wide(k), wide(v)) for k, v in kv])
    return jnp.concatenate([wide(hp), h], axis=1), caches


def zero_after_eos(tokens: jax.Array, eos_id: int | None) -> jax.Array:
    """[B, L]: EOS and every token after it -> 0."""
    if eos_id is None:
        return tokens
    ended = jnp.cumsum((tokens == eos_id).astype(jnp.int32), axis=-1) > 0
    return jnp.where(ended, 0, tokens)


@dataclasses.dataclass(eq=False)
class DecoderOnlyBackbone(Backbone):
    """A decoder-only `Backbone` over the subclass's `KERNELS` (module docstring)."""

    KERNELS: ClassVar[DecoderKernels]
    add_eos_to_targets: bool = dataclasses.field(default=False, init=False)
    truncation_side: str = dataclasses.field(default="left", init=False)

    def logical_axes(self):
        return self.KERNELS.abstract_params(self.config)[1]

    def embed(self, params, ids):
        return self.KERNELS.embed(self.config, params, ids)

    def target_log_likelihood(self, params, prompt, batch):
        self.check_prompt(prompt)
        return self.KERNELS.target_log_likelihood(
            self.config, params, prompt, batch["inputs"], batch["inputs_mask"], batch["targets"],
            batch["targets_mask"])

    def score_candidates(self, params, prompt, inputs, inputs_mask, candidates, candidates_mask):
        self.check_prompt(prompt)
        return self.KERNELS.score_candidates(self.config, params, prompt, inputs, inputs_mask,
                                             candidates, candidates_mask)

    def greedy_decode(self, params, prompt, inputs, inputs_mask, max_decode_len: int):
        self.check_prompt(prompt)
        if int(max_decode_len) < 1:
            raise ConfigError(f"max_decode_len must be >= 1, got {max_decode_len}.")
        tokens = self.KERNELS.greedy_tokens(self.config, params, prompt, inputs, inputs_mask,
                                            int(max_decode_len))
        return zero_after_eos(tokens, getattr(self.vocab, "eos_id", None))

    @property
    def ffn_activation_rules(self):
        return GATED_FFN_RULES

    def ffn_activations(self, params, prompt, inputs, inputs_mask, rule=None):
        self.check_prompt(prompt)
        return self.KERNELS.ffn_activations(self.config, params, prompt, inputs, inputs_mask,
                                            self.ffn_rule(rule))

    def logits(self, inputs, targets=None, prompt=None):
        self.check_prompt(prompt)
        inputs = jnp.asarray(inputs, jnp.int32)
        targets = None if targets is None else jnp.asarray(targets, jnp.int32)
        return self.KERNELS.all_logits(self.config, self.params, prompt, inputs, targets)
