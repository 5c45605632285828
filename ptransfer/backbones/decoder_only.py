"""The `Backbone` contract for decoder-only families (LLaMA, Gemma 3), given their kernels.

A family supplies its jitted forward functions as `DecoderKernels` (each takes
the static config first); `DecoderOnlyBackbone` turns them into the contract
every layer above uses. What decoder-only means here: the prompt goes before
the text ([P + Li] positions), targets follow the inputs without EOS
(`add_eos_to_targets = False`), inputs are truncated from the left, and
`ffn_activations` covers every prompt + input position (S = P + Li) under the
gated-FFN rules ('gate': the gate's pre-activation, default; 'product':
act(gate) * up).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp

from ptransfer.backbones.base import GATED_FFN_RULES, Backbone
from ptransfer.core.errors import ConfigError


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
