"""The contract every frozen backbone family implements.

A backbone is a frozen language model plus the pure functions the rest of
ptransfer needs from it. All functions take the frozen `params` and the
`prompt` as explicit arguments (never closed over), so they can be jitted
once and differentiated with respect to the prompt only.

Shared batch layout (built by `ptransfer.data`, identical for every
family so the trainer, scoring and indicators never branch on the family):

  inputs          int32 [B, Li]  left-padded (real tokens at the right end)
  inputs_mask     int32 [B, Li]  1 on real tokens
  targets         int32 [B, Lt]  right-padded; EOS appended where the family
                                 wants it (`Backbone.add_eos_to_targets`)
  targets_mask    int32 [B, Lt]  1 on real target tokens

Left-padded inputs put the last input token of every example at the same
column, so a decoder-only model reads the first target's logits from one
position and label continuations can share one cached prefix.

`prompt` is None, `[P, D]` (shared by the batch) or `[B, P, D]`; D must equal
`config.d_model` (checked by `check_prompt`). The prompt is never a
parameter of the frozen model.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ptransfer.core.errors import ConfigError

PyTree = Any
Batch = Mapping[str, jax.Array]


# `Backbone.ffn_activation_rules` of ungated and of gated FFNs.
UNGATED_FFN_RULES = ("output",)
GATED_FFN_RULES = ("gate", "product")


@dataclasses.dataclass
class Backbone(abc.ABC):
    """A frozen model. Subclasses fill in the family-specific functions.

    Attributes:
      name: identifier used in the prompt bank and results, e.g. "smollm2_135m".
      config: the family's frozen config dataclass; has at least `d_model`,
        `vocab_size`, `num_layers` and `d_ff`.
      params: frozen parameter pytree with T5X-like names.
      vocab: a `seqio.Vocabulary` for this model's tokenizer.
    """

    name: str
    config: Any
    params: PyTree
    vocab: Any

    family: str = dataclasses.field(default="", init=False)
    # What callers need to know about a family, so none of them tests its name:
    # T5 targets end with EOS (as seqio's append_eos); decoder-only and MLM
    # classification targets are the label words alone.
    add_eos_to_targets: bool = dataclasses.field(default=True, init=False)
    # Which end of a too-long input is cut: decoder-only models keep the END (the
    # template's cue sits right before the target), encoders keep the start, as
    # seqio does ('right' truncation).
    truncation_side: str = dataclasses.field(default="right", init=False)
    # A masked LM reads one label word at a mask slot of its own task form
    # (`tasks.get_task(..., mlm=config)`) and cannot generate text.
    masked_lm: bool = dataclasses.field(default=False, init=False)
    # Compiled functions of callers (scoring, the trainer's step), keyed by the
    # caller; shared by every run that uses this backbone object in one process.
    jit_cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False,
                                        compare=False)
    # Variants of this backbone with another compute dtype / remat setting
    # (`configure_backbone`), sharing its params.
    variants: dict = dataclasses.field(default_factory=dict, init=False, repr=False,
                                       compare=False)

    # ---- structure ---------------------------------------------------------

    @property
    def d_model(self) -> int:
        return int(self.config.d_model)

    @property
    def num_layers(self) -> int:
        """Number of layers whose FFN activations `ffn_activations` returns."""
        return int(self.config.num_layers)

    @abc.abstractmethod
    def logical_axes(self) -> PyTree:
        """Pytree matching `params` whose leaves are tuples of logical axis
        names (T5X names: 'vocab', 'embed', 'mlp', 'heads', 'kv', 'joined_kv',
        'relpos_buckets', ...), one per array dimension."""

    @abc.abstractmethod
    def embed(self, params: PyTree, ids: jax.Array) -> jax.Array:
        """Input token embeddings as the model adds them: ids [...] -> [..., D].

        Used by prompt initializers (vocabulary / label / string init) and the
        recycling baseline; it is the same lookup the forward pass uses.
        """

    def embedding_table(self, params: PyTree) -> jax.Array:
        """The input embedding matrix [V, D]."""
        return self.embed(params, jnp.arange(self.config.vocab_size))

    def embedding_std(self) -> float:
        """Standard deviation of all entries of the token-embedding table (the
        scale of random prompt inits and of projected prompts)."""
        table = self.embedding_table(self.params)
        return float(jax.jit(lambda t: jnp.std(t.astype(jnp.float32)))(table))

    def stimulus_ids(self) -> list[int]:
        """Token ids of the template-free ON stimulus (one '.'; families with a
        mask slot override it)."""
        return [int(i) for i in self.vocab.encode(".")]

    @property
    def target_delimiter(self) -> str:
        """Text put before every target: a space where the target continues the
        input text (decoder-only: no EOS, not a masked LM), as lm-eval-harness's
        `target_delimiter`, so " positive" is the word-initial token the model
        would write after "sentiment:"; nothing for T5 (a target is its own
        sequence) and masked LMs (their label words carry their own space)."""
        return "" if self.add_eos_to_targets or self.masked_lm else " "

    @property
    def can_generate(self) -> bool:
        """Whether `greedy_decode` works (every family but the masked LMs)."""
        return not self.masked_lm

    # ---- the hot path ------------------------------------------------------

    @abc.abstractmethod
    def target_log_likelihood(self, params: PyTree, prompt, batch: Batch) -> jax.Array:
        """Sum over target tokens of log p(target_t | prompt, inputs, targets_<t).

        Returns float32 [B]. The output head is computed only at the positions
        that predict a target token (a decoder-only model never projects the
        prompt or input positions onto the vocabulary).
        """

    @abc.abstractmethod
    def score_candidates(self, params: PyTree, prompt, inputs, inputs_mask,
                         candidates, candidates_mask) -> jax.Array:
        """Log-likelihood of every candidate target for every example.

        Args:
          inputs, inputs_mask: [B, Li] as in the batch layout.
          candidates, candidates_mask: [C, Lt] the label-word targets shared by
            the whole batch (right-padded, EOS included where the family adds it).
        Returns:
          float32 [B, C]. The shared part (prompt + inputs) is encoded once,
          not once per candidate.
        """

    @abc.abstractmethod
    def greedy_decode(self, params: PyTree, prompt, inputs, inputs_mask,
                      max_decode_len: int) -> jax.Array:
        """Greedy continuation: int32 [B, max_decode_len]; EOS and everything
        after it are replaced by 0."""

    @property
    def ffn_activation_rules(self) -> tuple[str, ...]:
        """The FFN values `ffn_activations(..., rule=)` can return, default first.

        A neuron counts as activated when the value is > 0 (the ON threshold):
          "output"   ungated FFNs (ReLU, GELU): act(wi x), which is > 0 exactly
                     when the pre-activation wi x is (the paper's rule).
          "gate"     gated FFNs (SwiGLU, GeGLU), the default there: the gate's
                     pre-activation wi_0 x, i.e. the gate is open; the faithful
                     analogue of the paper's rule.
          "product"  gated FFNs, an option: act(wi_0 x) * wi_1 x, the input of
                     wo; it is also > 0 when both factors are negative.
        """
        return UNGATED_FFN_RULES

    def ffn_rule(self, rule: str | None) -> str:
        """`rule` checked against `ffn_activation_rules`; None gives the default."""
        rules = self.ffn_activation_rules
        if rule is None:
            return rules[0]
        if rule not in rules:
            raise ConfigError(f"backbone {self.name!r} has no FFN activation rule {rule!r}; its "
                              f"FFN offers {', '.join(rules)} (gated FFNs: gate, product).")
        return rule

    @abc.abstractmethod
    def ffn_activations(self, params: PyTree, prompt, inputs, inputs_mask,
                        rule: str | None = None) -> jax.Array:
        """FFN intermediate activations of every layer for the ON indicator.

        Returns float32 [num_layers, B, S, F] where S indexes the positions the
        family reads (documented per family; e.g. T5: the first decoder step,
        S=1; decoder-only: every position of prompt + inputs). `rule` picks the
        value (`ffn_activation_rules`; None: the family's default). Computed by
        the same module as the forward pass with capture switched on.
        """

    @abc.abstractmethod
    def logits(self, inputs, targets=None, prompt=None) -> jax.Array:
        """float32 logits for unpadded inputs, with `self.params`.

        T5: decoder logits [B, Lt, V] (targets teacher-forced, shifted right).
        Decoder-only: logits at every position of prompt + inputs (+ targets)
        [B, P + Li (+ Lt), V]. MLM: [B, 1 + P + Li - 1, V] in input order.
        """

    # ---- helpers shared by all families -------------------------------------

    def compiled(self, key, build):
        """The compiled function stored under `key` in `jit_cache`, built by
        `build()` on first use (callers key by what their function depends on)."""
        if key not in self.jit_cache:
            self.jit_cache[key] = build()
        return self.jit_cache[key]

    def check_prompt(self, prompt) -> None:
        """Raises ConfigError unless prompt is None, [P, D] or [B, P, D] with D = d_model."""
        if prompt is None:
            return
        shape = tuple(np.shape(prompt))
        if len(shape) not in (2, 3) or shape[-1] != self.d_model:
            raise ConfigError(
                f"prompt of shape {shape} does not fit backbone {self.name!r}: it needs "
                f"[P, {self.d_model}] or [B, P, {self.d_model}]. A prompt trained on "
                f"another backbone must first be mapped with `ptransfer project apply`.")


def batched_prompt(prompt, batch_size: int, dtype) -> jax.Array | None:
    """[P, D] or [B, P, D] -> [B, P, D] in `dtype` (None stays None)."""
    if prompt is None:
        return None
    prompt = jnp.asarray(prompt, dtype)
    if prompt.ndim == 2:
        prompt = jnp.broadcast_to(prompt[None], (batch_size,) + prompt.shape)
    return prompt


def shared_prompt_length(prompt) -> int:
    """P when `prompt` is one [P, D] prompt for the whole batch, else 0 (none, or [B, P, D]).

    A decoder-only family puts the prompt first, where it attends only to
    itself: its P positions are then the same rows in every example, so the
    family computes them once and broadcasts their keys and values to the batch.
    """
    return 0 if prompt is None or np.ndim(prompt) != 2 else int(np.shape(prompt)[0])


def prompt_length(prompt) -> int:
    return 0 if prompt is None else int(np.shape(prompt)[-2])
