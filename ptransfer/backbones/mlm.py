"""BERT / RoBERTa encoders with their masked-LM head (the paper's RoBERTa rows).

Architecture (post-LN, as HF `BertForMaskedLM` / `RobertaForMaskedLM`):
  word + token-type (type 0) + learned absolute position embeddings -> LayerNorm
  -> N x [self-attention (+biases) -> residual -> LayerNorm -> dense -> GELU
  (exact erf) -> dense -> residual -> LayerNorm]
  -> MLM head: dense -> GELU -> LayerNorm -> decoder tied to the word
  embeddings + output bias.

Parameter names (T5X-like, kernels [in, out]):
  token_embedder/embedding [V, D]          position_embedder/embedding [Pmax, D]
  token_type_embedder/embedding [T, D]     embedding_norm/{scale, bias}
  layers_N/attention/{query,key,value,out}/{kernel, bias}
  layers_N/post_attention_layer_norm/{scale, bias}
  layers_N/mlp/{wi, wo}/{kernel, bias}     layers_N/post_mlp_layer_norm/{scale, bias}
  mlm_head/dense/{kernel, bias}  mlm_head/layer_norm/{scale, bias}  mlm_head/bias [V]

Inputs and the prompt (the choices every caller relies on):
  * `inputs` are what the HF tokenizer produces for the task's MLM template:
    the start token (<s> / [CLS]) first, the end token (</s> / [SEP]) last and
    exactly one mask token (<mask> / [MASK]) where the label word goes. They
    follow the shared batch layout (left-padded + `inputs_mask`). When an
    input holds several mask tokens the first one is read.
  * The prompt goes right AFTER the start token: [CLS] [prompt] text ... The
    prompt vectors replace word embeddings; like every other token they get
    the token-type-0 embedding and a position embedding: the start token takes
    the first position, the prompt the next P, the text the rest. This is what
    HF computes when given `inputs_embeds = [emb(CLS), prompt, emb(text)]`
    (RoBERTa: sequential positions from padding_idx + 1; BERT: from 0). (The
    official code's layout differs; it is the 'official' input layout below.)
  * Position ids come from `inputs_mask` (RoBERTa: padding_idx + rank, pads
    keep padding_idx; BERT: rank from 0), so left padding never changes a
    result. Internally the columns are laid out [prompt, inputs]; an encoder
    without causal masking depends on order only through the position ids, so
    no per-example gather is needed to put the prompt after the start token.
  * Classification reads the MLM logits at the mask position only (the head
    is never computed elsewhere); targets are single label-word tokens
    ([B, 1]; `add_eos_to_targets` is False). An example without a mask token
    or a target with more than one token is a ConfigError when the arrays are
    concrete; inside jit its score is NaN, so it cannot pass unnoticed.
  * `ffn_activations` captures (flax `sow`) the GELU output of every layer's
    FFN at the mask position: [num_layers, B, 1, d_ff] -- the paper's ON
    setting for RoBERTa (mask position, all layers, activation > 0).
  * This family does not generate: `greedy_decode` raises ConfigError, so
    QA / summarization tasks are not served by it.

Input layouts (`MlmConfig.input_layout`; the bullets above are 'ptransfer',
the default). 'official' is the layout of the paper's official RoBERTa code
(thunlp/Prompt-Transferability, Prompt-Transferability-1.0:
formatter/SST2PromptRobertaFormatter.py builds `prompt ids + <s> text </s>`,
model/modelling_roberta.py `RobertaEmbeddings.forward` writes the <mask>
embedding into prompt slot 0 and zeroes the position embeddings of the prompt
columns, model/PromptRoberta.py reads `logits[:, 0]`). How they differ:

    ptransfer:  <s> [p_0 .. p_P-1] {template text with <mask>} </s>
    official:   [<mask> p_1 .. p_P-1] <s> {fields} </s>

  * Order: the P prompt slots come BEFORE the start token, not after it.
  * Slot 0 holds the word embedding of <mask> instead of the prompt's row 0
    (that row is unused: it gets no gradient and changes nothing); slots 1..P-1
    are the prompt's rows 1..P-1. Without a prompt the layout is [<mask>] <s>
    ... (one slot), i.e. a prompt of length 1.
  * Position embeddings: the prompt slots get a zero vector (not the row of
    any position id); the start token takes rank P (id P + position_offset,
    as the official code's ids count the prompt slots), the text follows.
    Token-type-0 embeddings and the embedding LayerNorm apply to every
    column in both layouts.
  * The input holds no template text and no mask token: the task's MLM
    template fields, each ended by the end token (`<s> a </s>` or
    `<s> a </s> b </s>`, as the official formatters; `tasks.get_task(...,
    mlm=config)` builds it from the config's `input_layout`).
  * The label is read at the <mask> column, which is column 0; the FFN
    activations for ON are captured there too. `stimulus_ids()` is
    `<s> </s>` (the mask comes with the layout).
  Pads, left padding and the key mask are handled as in 'ptransfer'.

Label words. Each task declares single-token MLM label words (RoBERTa style,
with the leading space: " positive"); `check_single_token_label_words` refuses
a word that is not one token of the backbone's vocabulary, naming the word and
the task (`tasks.get_task(..., mlm=...)` and `features.label_candidates(...,
mlm=True)` call it). The main path is the checkpoint's own `tokenizer.json`.

Test presets (`mlm_tiny`: RoBERTa flavour, `bert_tiny`: BERT flavour) have no
tokenizer file; their vocabulary (`mlm_vocab.tiny_vocab`) is a small
byte-level BPE, built like RoBERTa's, whose merges make every registered MLM
label word one token, on top of the byte vocabulary's ids: pad 0, end 1,
unk 2, bytes 3..258 (as seqio.ByteVocabulary), start 259, mask 260, label-word
merge tokens from 261 (vocab_size 384 leaves room for more tasks' words). A
template encodes its text with the vocabulary and places `config.bos_id` /
`config.mask_id` itself.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptransfer.backbones.base import Backbone, batched_prompt, prompt_length
from ptransfer.backbones.layers import (
    ACTIVATIONS,
    Dense,
    Embed,
    LayerNorm,
    activation_dtype,
    check_remat,
    dot_product_attention,
    gather_log_probs,
    is_low_precision,
    mask_to_bias,
    matmul,
    param_with_axes,
    remat_layer,
)
from ptransfer.backbones.mlm_vocab import tiny_vocab
from ptransfer.checkpoints.safetensors_io import SafetensorsCheckpoint
from ptransfer.checkpoints.tree import ParamTreeBuilder, flatten
from ptransfer.core.errors import CheckpointError, ConfigError, close_matches_hint
from ptransfer.core.vocab import TokenizersVocabulary

log = logging.getLogger(__name__)

HF_ARCHITECTURES = ("RobertaForMaskedLM", "BertForMaskedLM")
FLAVORS = ("bert", "roberta")
INPUT_LAYOUTS = ("ptransfer", "official")  # see the module docstring
_INIT = nn.initializers.normal(0.02)  # BERT's initializer_range


# ---- config and presets -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MlmConfig:
    """Shapes and special ids of a BERT / RoBERTa masked LM.

    flavor: "roberta" (position ids start at pad_id + 1, pads keep pad_id) or
      "bert" (position ids start at 0).
    bos_id / eos_id: the start ([CLS], <s>) and end ([SEP], </s>) tokens a
      template puts around the text; mask_id: the mask slot token.
    dtype: compute dtype (storage dtype is chosen when loading).
    remat: rematerialization of each encoder layer in the backward pass,
      'none' | 'full' | 'dots' (see `layers.REMAT_POLICIES`).
    input_layout: 'ptransfer' (prompt after the start token, the template's
      mask read) or 'official' (the official code's: prompt slots before the
      start token, <mask> in slot 0, zero position embeddings on the slots);
      the module docstring says precisely how they differ.
    """

    d_model: int
    num_heads: int
    d_ff: int
    num_layers: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int = 1
    layer_norm_epsilon: float = 1e-5
    flavor: str = "roberta"
    pad_id: int = 1
    bos_id: int = 0
    eos_id: int = 2
    mask_id: int = 50264
    activation: str = "gelu"
    dtype: Any = jnp.float32
    remat: str = "none"
    input_layout: str = "ptransfer"

    def __post_init__(self):
        if self.flavor not in FLAVORS:
            raise ConfigError(f"MLM flavor {self.flavor!r} is unknown; use one of {FLAVORS}.")
        check_input_layout(self.input_layout)
        if self.d_model % self.num_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}.")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation {self.activation!r} is not supported."
                              + close_matches_hint(self.activation, ACTIVATIONS))
        for field in ("pad_id", "bos_id", "eos_id", "mask_id"):
            if not 0 <= getattr(self, field) < self.vocab_size:
                raise ConfigError(f"{field}={getattr(self, field)} is outside the vocabulary "
                                  f"(vocab_size {self.vocab_size}).")
        check_remat(self.remat, "MLM config")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def position_offset(self) -> int:
        """Position id of the first real token."""
        return self.pad_id + 1 if self.flavor == "roberta" else 0

    @property
    def max_length(self) -> int:
        """Most tokens (prompt included) one sequence may hold."""
        return self.max_positions - self.position_offset


def check_input_layout(layout) -> str:
    """`layout` if it is one of INPUT_LAYOUTS, else one ConfigError."""
    if layout not in INPUT_LAYOUTS:
        raise ConfigError(f"MLM input_layout {layout!r} is unknown; use one of {INPUT_LAYOUTS} "
                          "('official': the official RoBERTa code's layout, e.g. the backbone "
                          "spec 'hf:/path/roberta_base?input_layout=official')."
                          + close_matches_hint(str(layout), INPUT_LAYOUTS))
    return layout


# Ids of the test presets' vocabulary (module docstring; `mlm_vocab.tiny_vocab`).
TINY_VOCAB = dict(vocab_size=384, pad_id=0, eos_id=1, bos_id=259, mask_id=260)

PRESETS: dict[str, MlmConfig] = {
    "roberta_base": MlmConfig(d_model=768, num_heads=12, d_ff=3072, num_layers=12, vocab_size=50265,
                              max_positions=514, type_vocab_size=1, layer_norm_epsilon=1e-5,
                              flavor="roberta", pad_id=1, bos_id=0, eos_id=2, mask_id=50264),
    "roberta_large": MlmConfig(d_model=1024, num_heads=16, d_ff=4096, num_layers=24, vocab_size=50265,
                               max_positions=514, type_vocab_size=1, layer_norm_epsilon=1e-5,
                               flavor="roberta", pad_id=1, bos_id=0, eos_id=2, mask_id=50264),
    "bert_base_uncased": MlmConfig(d_model=768, num_heads=12, d_ff=3072, num_layers=12,
                                   vocab_size=30522, max_positions=512, type_vocab_size=2,
                                   layer_norm_epsilon=1e-12, flavor="bert", pad_id=0, bos_id=101,
                                   eos_id=102, mask_id=103),
    "mlm_tiny": MlmConfig(d_model=32, num_heads=4, d_ff=64, num_layers=2, max_positions=258,
                          type_vocab_size=1, layer_norm_epsilon=1e-5, flavor="roberta", **TINY_VOCAB),
    "bert_tiny": MlmConfig(d_model=32, num_heads=4, d_ff=64, num_layers=2, max_positions=256,
                           type_vocab_size=2, layer_norm_epsilon=1e-12, flavor="bert", **TINY_VOCAB),
}


# ---- Flax modules ------------------------------------------------------------


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention with biases: [B, S, D] -> [B, S, D]."""

    config: MlmConfig

    @nn.compact
    def __call__(self, x, bias):
        c = self.config
        b, s, _ = x.shape
        proj = lambda name: Dense(c.num_heads * c.head_dim, ("embed", "joined_kv"), use_bias=True,
                                  dtype=c.dtype, kernel_init=_INIT, name=name)
        q, k, v = (proj(n)(x).reshape(b, s, c.num_heads, c.head_dim) for n in ("query", "key", "value"))
        out = dot_product_attention(q, k, v, bias, dtype=c.dtype)
        return Dense(c.d_model, ("joined_kv", "embed"), use_bias=True, dtype=c.dtype,
                     kernel_init=_INIT, name="out")(out.reshape(b, s, c.num_heads * c.head_dim))


class Mlp(nn.Module):
    """wi -> activation -> wo with biases. [B, S, D] -> [B, S, D].

    With `capture_at` (int [B]) it sows the activation output at that column
    of each example into the 'intermediates' collection as [B, 1, F].
    """

    config: MlmConfig

    @nn.compact
    def __call__(self, x, capture_at=None):
        c = self.config
        h = Dense(c.d_ff, ("embed", "mlp"), use_bias=True, dtype=c.dtype, kernel_init=_INIT, name="wi")(x)
        h = ACTIVATIONS[c.activation](h)
        if capture_at is not None:
            self.sow("intermediates", "activations",
                     jnp.take_along_axis(h, capture_at[:, None, None], axis=1))
        return Dense(c.d_model, ("mlp", "embed"), use_bias=True, dtype=c.dtype, kernel_init=_INIT,
                     name="wo")(h)


class EncoderLayer(nn.Module):
    """Post-LN transformer layer: [B, S, D] -> [B, S, D]."""

    config: MlmConfig

    @nn.compact
    def __call__(self, x, bias, capture_at=None):
        c = self.config
        ln = lambda name: LayerNorm(epsilon=c.layer_norm_epsilon, dtype=c.dtype, name=name)
        x = ln("post_attention_layer_norm")(x + SelfAttention(c, name="attention")(x, bias))
        return ln("post_mlp_layer_norm")(x + Mlp(c, name="mlp")(x, capture_at))


class MlmHead(nn.Module):
    """dense -> activation -> LayerNorm -> tied decoder + bias: [..., D] -> float32 [..., V]."""

    config: MlmConfig

    @nn.compact
    def __call__(self, x, embedding):
        c = self.config
        h = Dense(c.d_model, ("embed", None), use_bias=True, dtype=c.dtype, kernel_init=_INIT,
                  name="dense")(x)
        h = LayerNorm(epsilon=c.layer_norm_epsilon, dtype=c.dtype, name="layer_norm")(
            ACTIVATIONS[c.activation](h))
        bias = param_with_axes(self, "bias", nn.initializers.zeros, (c.vocab_size,), ("vocab",))
        if is_low_precision(c.dtype):
            lead = h.shape[:-1]
            logits = matmul("md,vd->mv", h.reshape(-1, h.shape[-1]), embedding, c.dtype)
            logits = logits.reshape(lead + (c.vocab_size,))
        else:
            logits = jnp.einsum("...d,vd->...v", h, embedding.astype(c.dtype),
                                preferred_element_type=jnp.float32)
        return logits + bias.astype(jnp.float32)


def layout_positions(inputs_mask, prompt_len: int, config: MlmConfig):
    """Position ids and key mask of the [prompt slots, inputs] column layout.

    Args:
      inputs_mask: [B, Li] 1 on real tokens (left padding allowed).
    Returns:
      position_ids int32 [B, P + Li] and key_mask bool [B, P + Li].
      'ptransfer': the start token (first real input) has rank 0, the prompt
      ranks 1..P and the rest of the text P+1...; 'official': the prompt slots
      ranks 0..P-1, the start token P and the text P+1... (the slots' position
      embeddings are then zeroed by the encoder). Position id = rank +
      config.position_offset; pads get pad_id (RoBERTa) or 0 (BERT) and are
      masked out as keys.
    """
    m = inputs_mask.astype(jnp.int32)
    b = m.shape[0]
    rank = jnp.cumsum(m, axis=1) - 1
    if config.input_layout == "official":
        rank = rank + prompt_len
        first_prompt_rank = 0
    else:
        rank = rank + prompt_len * (rank >= 1)
        first_prompt_rank = 1
    prompt_rank = jnp.broadcast_to(first_prompt_rank + jnp.arange(prompt_len, dtype=jnp.int32),
                                   (b, prompt_len))
    key_mask = jnp.concatenate([jnp.ones((b, prompt_len), bool), m.astype(bool)], axis=1)
    pos = jnp.concatenate([prompt_rank, rank], axis=1) + config.position_offset
    pad_pos = config.pad_id if config.flavor == "roberta" else 0
    return jnp.where(key_mask, pos, pad_pos).astype(jnp.int32), key_mask


def layout_slots(prompt_len: int, config: MlmConfig) -> int:
    """Number of prompt columns in front of the inputs: P, or at least 1 (the
    <mask> slot) in the 'official' layout."""
    return max(prompt_len, 1) if config.input_layout == "official" else prompt_len


class MlmEncoder(nn.Module):
    """Embeddings + encoder stack + MLM head (see module docstring)."""

    config: MlmConfig

    def setup(self):
        c = self.config
        table = lambda n, axes: Embed(n, c.d_model, dtype=c.dtype, embedding_init=_INIT, axes=axes)
        self.token_embedder = table(c.vocab_size, ("vocab", "embed"))
        self.position_embedder = table(c.max_positions, ("positions", "embed"))
        self.token_type_embedder = table(c.type_vocab_size, (None, "embed"))
        self.embedding_norm = LayerNorm(epsilon=c.layer_norm_epsilon, dtype=c.dtype)
        layer = remat_layer(EncoderLayer, c.remat)
        self.layers = [layer(c) for _ in range(c.num_layers)]
        self.mlm_head = MlmHead(c)

    def embed(self, ids):
        """Word embeddings: ids [...] -> [..., D]."""
        return self.token_embedder(ids)

    def encode(self, inputs, inputs_mask, prompt=None, capture_at=None):
        """Hidden states in the [prompt, inputs] layout.

        Args:
          inputs, inputs_mask: [B, Li]; prompt: None or [B, P, D].
          capture_at: None or int [B] columns (of the layout) whose FFN
            activations are sown.
        Returns:
          [B, S + Li, D], S = layout_slots(P) prompt columns first.
        """
        c = self.config
        words = self.token_embedder(inputs)
        official = c.input_layout == "official"
        if official:
            # Slot 0 is <mask>; the prompt's row 0 is replaced (official code).
            b = inputs.shape[0]
            mask = self.token_embedder(jnp.full((b, 1), c.mask_id, jnp.int32))
            rest = [] if prompt is None else [prompt[:, 1:].astype(words.dtype)]
            words = jnp.concatenate([mask.astype(words.dtype), *rest, words], axis=1)
        elif prompt is not None:
            words = jnp.concatenate([prompt.astype(words.dtype), words], axis=1)
        p = layout_slots(0 if prompt is None else prompt.shape[1], c)
        position_ids, key_mask = layout_positions(inputs_mask, p, c)
        x = words + self.token_type_embedder(jnp.zeros_like(position_ids))
        pos = self.position_embedder(position_ids)
        if official:  # zero position embeddings on the prompt slots
            pos = pos * (jnp.arange(pos.shape[1]) >= p)[None, :, None].astype(pos.dtype)
        x = self.embedding_norm(x + pos)
        bias = mask_to_bias(key_mask[:, None, None, :])
        for layer in self.layers:
            x = layer(x, bias, capture_at)
        return x

    def head(self, hidden):
        """MLM logits: [..., D] -> float32 [..., V]."""
        return self.mlm_head(hidden, self.token_embedder.embedding)

    def logits_at(self, inputs, inputs_mask, prompt, read_at, capture: bool = False):
        """MLM logits at one layout column per example: read_at int [B] -> [B, V]."""
        hidden = self.encode(inputs, inputs_mask, prompt, read_at if capture else None)
        picked = jnp.take_along_axis(hidden, read_at[:, None, None], axis=1)[:, 0]
        return self.head(picked)

    def __call__(self, inputs, inputs_mask, prompt=None):
        """MLM logits at every layout column: [B, S + Li, V]."""
        return self.head(self.encode(inputs, inputs_mask, prompt))


# ---- input checks --------------------------------------------------------------


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_mask_slots(inputs, inputs_mask, mask_id: int, task_name: str | None = None) -> None:
    """ConfigError unless every example has a mask token among its real tokens."""
    has = np.any((np.asarray(inputs) == mask_id) & (np.asarray(inputs_mask) > 0), axis=1)
    if not has.all():
        rows = np.flatnonzero(~has)
        where = f" of task {task_name!r}" if task_name else ""
        raise ConfigError(
            f"{len(rows)} example(s){where} (batch rows {rows[:5].tolist()}) have no mask token "
            f"(id {mask_id}). A masked-LM backbone reads the label at the mask slot: the task's "
            "MLM template must contain one (e.g. '<s> {text} It was <mask>. </s>').")


def _single_token_targets(targets, targets_mask, what: str):
    """First token of each [N, Lt] target and whether it is the only real one."""
    targets = jnp.asarray(targets)
    n_real = jnp.sum(jnp.asarray(targets_mask) > 0, axis=1)
    if _concrete(n_real) and not bool(jnp.all(n_real == 1)):
        bad = np.flatnonzero(np.asarray(n_real) != 1)
        raise ConfigError(
            f"{what} {bad[:5].tolist()} have {np.asarray(n_real)[bad[:5]].tolist()} tokens; a "
            "masked-LM backbone scores exactly one label token at the mask slot. Use single-token "
            "label words (see check_single_token_label_words).")
    return targets[:, 0], n_real == 1


# ---- the backbone ---------------------------------------------------------------


@dataclasses.dataclass
class MlmBackbone(Backbone):
    """A frozen BERT / RoBERTa masked LM (see module docstring for the layout).

    Attributes (beyond Backbone's):
      axes: logical axis names of `params` (a matching pytree of tuples).
    """

    axes: Any = None
    family: str = dataclasses.field(default="mlm", init=False)
    add_eos_to_targets: bool = dataclasses.field(default=False, init=False)
    masked_lm: bool = dataclasses.field(default=True, init=False)

    def __post_init__(self):
        self.module = MlmEncoder(self.config)
        # Public methods check their input, then run these; under an outer
        # jit they inline, called eagerly they still run compiled.
        self._jit_mask_logits = jax.jit(self._mask_logits_impl)
        self._jit_ffn = jax.jit(self._ffn_impl)
        self._jit_logits = jax.jit(self._all_logits_impl)

    # ---- structure -------------------------------------------------------------

    def logical_axes(self):
        return self.axes

    def embed(self, params, ids):
        return self.module.apply({"params": params}, ids, method=MlmEncoder.embed)

    def embedding_table(self, params):
        return params["token_embedder"]["embedding"]

    @property
    def official_layout(self) -> bool:
        """Whether inputs follow the official code's layout (module docstring)."""
        return self.config.input_layout == "official"

    def dummy_mlm_ids(self) -> tuple[int, ...]:
        """The template-free ON stimulus: (start, mask, end), i.e. '<s> <mask> </s>';
        (start, end) in the 'official' layout, whose mask slot comes with the layout."""
        c = self.config
        if self.official_layout:
            return (c.bos_id, c.eos_id)
        return (c.bos_id, c.mask_id, c.eos_id)

    def stimulus_ids(self) -> list[int]:
        return list(self.dummy_mlm_ids())

    # ---- checks --------------------------------------------------------------------

    def _check_inputs(self, prompt, inputs, inputs_mask=None) -> None:
        """Prompt width, total length (static) and mask slots (when concrete)."""
        self.check_prompt(prompt)
        p = layout_slots(prompt_length(prompt), self.config)
        total = p + int(np.shape(inputs)[1])
        if total > self.config.max_length:
            raise ConfigError(
                f"prompt length {p} + input length {np.shape(inputs)[1]} = {total} exceeds the "
                f"{self.config.max_length} positions of backbone {self.name!r}; shorten the task's "
                "max input length or the prompt.")
        if (inputs_mask is not None and not self.official_layout and _concrete(inputs)
                and _concrete(inputs_mask)):
            check_mask_slots(inputs, inputs_mask, self.config.mask_id)

    # ---- compiled cores ------------------------------------------------------------

    def _mask_column(self, inputs, inputs_mask, prompt_len: int):
        """Layout column of the first mask token [B] and whether there is one [B]
        (the 'official' layout: column 0, always)."""
        if self.official_layout:
            b = inputs.shape[0]
            return jnp.zeros((b,), jnp.int32), jnp.ones((b,), bool)
        is_mask = (inputs == self.config.mask_id) & (inputs_mask > 0)
        col = jnp.argmax(is_mask, axis=1).astype(jnp.int32) + prompt_len
        return col, jnp.any(is_mask, axis=1)

    def _mask_logits_impl(self, params, prompt, inputs, inputs_mask):
        """float32 [B, V] MLM logits at the mask slot; NaN rows where there is none."""
        col, has = self._mask_column(inputs, inputs_mask, prompt_length(prompt))
        prompt = batched_prompt(prompt, inputs.shape[0], activation_dtype(self.config.dtype))
        logits = self.module.apply({"params": params}, inputs, inputs_mask, prompt, col,
                                   method=MlmEncoder.logits_at)
        return jnp.where(has[:, None], logits, jnp.nan)

    def _ffn_impl(self, params, prompt, inputs, inputs_mask):
        col, has = self._mask_column(inputs, inputs_mask, prompt_length(prompt))
        prompt = batched_prompt(prompt, inputs.shape[0], activation_dtype(self.config.dtype))
        _, state = self.module.apply({"params": params}, inputs, inputs_mask, prompt, col, True,
                                     method=MlmEncoder.logits_at, mutable=["intermediates"])
        acts = state["intermediates"]
        out = jnp.stack([acts[f"layers_{i}"]["mlp"]["activations"][0]
                         for i in range(self.config.num_layers)]).astype(jnp.float32)
        return jnp.where(has[None, :, None, None], out, jnp.nan)

    def _all_logits_impl(self, params, prompt, inputs):
        prompt = batched_prompt(prompt, inputs.shape[0], activation_dtype(self.config.dtype))
        logits = self.module.apply({"params": params}, inputs, jnp.ones_like(inputs), prompt)
        if self.official_layout:  # the layout is the input order
            return logits
        p = prompt_length(prompt)
        # layout [prompt, start, text] -> input order [start, prompt, text]
        return jnp.concatenate([logits[:, p:p + 1], logits[:, :p], logits[:, p + 1:]], axis=1)

    # ---- the hot path ------------------------------------------------------------

    def target_log_likelihood(self, params, prompt, batch):
        """log p(label token at the mask slot): targets [B, 1] -> float32 [B]."""
        inputs, mask = jnp.asarray(batch["inputs"]), jnp.asarray(batch["inputs_mask"])
        self._check_inputs(prompt, inputs, mask)
        label, single = _single_token_targets(batch["targets"], batch["targets_mask"], "targets of rows")
        logits = self._jit_mask_logits(params, prompt, inputs, mask)
        return jnp.where(single, gather_log_probs(logits, label), jnp.nan)

    def score_candidates(self, params, prompt, inputs, inputs_mask, candidates, candidates_mask):
        """One encoder pass; log-softmax at the mask slot read for all C
        single-token candidates [C, 1] -> float32 [B, C]."""
        inputs, inputs_mask = jnp.asarray(inputs), jnp.asarray(inputs_mask)
        self._check_inputs(prompt, inputs, inputs_mask)
        ids, single = _single_token_targets(candidates, candidates_mask, "candidates")
        logits = self._jit_mask_logits(params, prompt, inputs, inputs_mask)
        log_probs = jnp.take(jax.nn.log_softmax(logits, axis=-1), ids, axis=1)
        return jnp.where(single[None, :], log_probs, jnp.nan)

    def greedy_decode(self, params, prompt, inputs, inputs_mask, max_decode_len):
        raise ConfigError(
            f"backbone {self.name!r} is a masked LM (family 'mlm'): it does not generate text, so "
            "generative tasks (QA, summarization) cannot be run on it. Use a T5 or decoder-only "
            "backbone for them, or a classification task with an MLM template.")

    def ffn_activations(self, params, prompt, inputs, inputs_mask, rule=None):
        """GELU output of every layer's FFN at the mask slot: float32
        [num_layers, B, 1, d_ff] (NaN rows for examples without a mask); rule
        'output' only (> 0 exactly when the pre-activation is)."""
        self.ffn_rule(rule)
        inputs, inputs_mask = jnp.asarray(inputs), jnp.asarray(inputs_mask)
        self._check_inputs(prompt, inputs, inputs_mask)
        return self._jit_ffn(params, prompt, inputs, inputs_mask)

    def logits(self, inputs, targets=None, prompt=None):
        """MLM logits at every position of unpadded inputs, in input order:
        float32 [B, 1 + P + Li - 1, V] ([start, prompt, rest]); 'official'
        layout: [B, max(P, 1) + Li, V] ([<mask>, prompt rows 1.., start, rest]). `targets` is
        accepted for the common signature and not used (an MLM reads its label
        at the mask slot)."""
        inputs = jnp.asarray(inputs, jnp.int32)
        self._check_inputs(prompt, inputs)
        return self._jit_logits(self.params, prompt, inputs)


# ---- construction ------------------------------------------------------------------


def with_input_layout(backbone: MlmBackbone, layout: str) -> MlmBackbone:
    """`backbone` with its config's input layout set (params shared, not copied).
    A non-default layout adds '+<layout>' to the name: prompts of one layout do
    not serve the other, so their bank entries stay apart."""
    check_input_layout(layout)
    if not isinstance(backbone, MlmBackbone):
        raise ConfigError(f"input_layout applies to masked-LM backbones only, not to "
                          f"{backbone.name!r} (family {backbone.family!r}).")
    if backbone.config.input_layout == layout:
        return backbone
    suffix = f"+{backbone.config.input_layout}"
    base = backbone.name[:-len(suffix)] if backbone.name.endswith(suffix) else backbone.name
    name = base if layout == "ptransfer" else f"{base}+{layout}"
    return MlmBackbone(name=name, config=dataclasses.replace(backbone.config, input_layout=layout),
                       params=backbone.params, vocab=backbone.vocab, axes=backbone.axes)


@functools.lru_cache(maxsize=8)
def _abstract_and_axes(config: MlmConfig):
    """(tree of jax.ShapeDtypeStruct, tree of logical-axis tuples) of the params."""
    module = MlmEncoder(config)
    ids = jnp.zeros((1, 2), jnp.int32)
    boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids)))["params"]
    is_boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)
    axes = jax.tree_util.tree_map(lambda x: tuple(x.names), boxed, is_leaf=is_boxed)
    return nn.unbox(boxed), axes


def _to_dict(tree):
    return {k: _to_dict(v) for k, v in tree.items()} if hasattr(tree, "items") else tree


def _byte_vocab():
    import seqio

    return seqio.ByteVocabulary()


def _random_params(abstract, seed: int) -> dict[str, np.ndarray]:
    """BERT's init drawn with numpy (no XLA compile): LayerNorm scales 1, biases
    0, kernels and embeddings N(0, 0.02). Returns {path: float32 array}."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in sorted(flatten(abstract).items()):
        leaf_name = path.rsplit("/", 1)[-1]
        if leaf_name == "scale":
            out[path] = np.ones(leaf.shape, np.float32)
        elif leaf_name == "bias":
            out[path] = np.zeros(leaf.shape, np.float32)
        else:
            out[path] = (0.02 * rng.standard_normal(leaf.shape, np.float32))
    return out


def from_preset(name: str, *, seed: int = 0, dtype=None, mesh=None) -> MlmBackbone:
    """Random init of a named shape (tests, benchmarks).

    Vocabulary: the tiny presets get `mlm_vocab.tiny_vocab` (byte ids plus
    single-token label words); the published shapes (roberta_*, bert_*) get
    seqio.ByteVocabulary (their real tokenizer comes with `from_hf`).
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown MLM preset {name!r}." + close_matches_hint(name, PRESETS))
    config = PRESETS[name]
    abstract, axes = _abstract_and_axes(config)
    builder = ParamTreeBuilder(abstract, axes, dtype=dtype, mesh=mesh, source=f"preset:{name}")
    for path, array in _random_params(abstract, seed).items():
        builder.put(path, array)
    return MlmBackbone(name=name, config=config, params=builder.build(), vocab=_preset_vocab(config),
                       axes=_to_dict(axes))


def _preset_vocab(config: MlmConfig):
    tiny = {k: getattr(config, k) for k in TINY_VOCAB} == TINY_VOCAB
    if not tiny:
        return _byte_vocab()
    return tiny_vocab(config.vocab_size)


# ---- HF checkpoints -------------------------------------------------------------------

# Special tokens by flavor: (tokenizer.json names, config.json key, published default).
_SPECIALS = {
    "roberta": {"pad_id": (("<pad>",), "pad_token_id", 1), "bos_id": (("<s>",), "bos_token_id", 0),
                "eos_id": (("</s>",), "eos_token_id", 2), "mask_id": (("<mask>",), "mask_token_id", None)},
    "bert": {"pad_id": (("[PAD]",), "pad_token_id", 0), "bos_id": (("[CLS]",), "bos_token_id", None),
             "eos_id": (("[SEP]",), "eos_token_id", None), "mask_id": (("[MASK]",), "mask_token_id", None)},
}
# Published vocabularies whose special ids are known without a tokenizer file.
_KNOWN_SPECIALS = {("roberta", 50265): dict(mask_id=50264),
                   ("bert", 30522): dict(bos_id=101, eos_id=102, mask_id=103),
                   ("bert", 28996): dict(bos_id=101, eos_id=102, mask_id=103)}


def _special_ids(hf: dict, flavor: str, tokenizer) -> dict[str, int]:
    out = {}
    known = _KNOWN_SPECIALS.get((flavor, hf["vocab_size"]), {})
    for field, (tok_names, key, default) in _SPECIALS[flavor].items():
        value = None
        if tokenizer is not None:
            value = next((tokenizer.token_to_id(t) for t in tok_names
                          if tokenizer.token_to_id(t) is not None), None)
        if value is None and hf.get(key) is not None:
            value = hf[key]
        if value is None:
            value = known.get(field, default)
        if value is None:
            raise ConfigError(
                f"cannot tell the {tok_names[0]} token id of this {flavor} checkpoint: put its "
                f"tokenizer.json next to config.json (or set {key!r} in config.json).")
        out[field] = int(value)
    return out


def _config_from_hf(hf: dict, tokenizer) -> MlmConfig:
    model_type = hf.get("model_type", "")
    arch = (hf.get("architectures") or [""])[0]
    flavor = "roberta" if model_type == "roberta" or arch.startswith("Roberta") else "bert"
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"position_embedding_type {hf['position_embedding_type']!r} is not "
                              "supported; only 'absolute' position embeddings are.")
    if hf.get("tie_word_embeddings", True) is False:
        raise CheckpointError("this checkpoint unties the MLM decoder from the word embeddings "
                              "(tie_word_embeddings: false), which ptransfer's MLM head does not "
                              "support.")
    return MlmConfig(
        d_model=hf["hidden_size"], num_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"],
        max_positions=hf["max_position_embeddings"], type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_epsilon=hf.get("layer_norm_eps", 1e-12), flavor=flavor,
        activation=hf.get("hidden_act", "gelu"), **_special_ids(hf, flavor, tokenizer))


def _hf_names(ckpt, num_layers: int) -> dict[str, tuple[str, bool]]:
    """ptransfer path -> (HF tensor name, transpose?)."""
    prefix = next((p for p in ("roberta.", "bert.", "") if f"{p}embeddings.word_embeddings.weight" in ckpt),
                  None)
    if prefix is None:
        raise CheckpointError(f"{ckpt.directory}: no embeddings.word_embeddings.weight tensor; this is "
                              "not a BERT/RoBERTa checkpoint.")
    if "lm_head.dense.weight" in ckpt:
        head = {"dense": "lm_head.dense", "layer_norm": "lm_head.layer_norm",
                "bias": ("lm_head.bias", "lm_head.decoder.bias")}
    elif "cls.predictions.transform.dense.weight" in ckpt:
        head = {"dense": "cls.predictions.transform.dense",
                "layer_norm": "cls.predictions.transform.LayerNorm",
                "bias": ("cls.predictions.bias", "cls.predictions.decoder.bias")}
    else:
        raise CheckpointError(f"{ckpt.directory}: the checkpoint has no masked-LM head (lm_head.* or "
                              "cls.predictions.*); save the model as RobertaForMaskedLM / "
                              "BertForMaskedLM.")

    def ln(name):  # old BERT checkpoints call LayerNorm's params gamma/beta
        w = f"{name}.weight" if f"{name}.weight" in ckpt else f"{name}.gamma"
        b = f"{name}.bias" if f"{name}.bias" in ckpt else f"{name}.beta"
        return w, b

    names: dict[str, tuple[str, bool]] = {}

    def linear(dst, src):
        names[f"{dst}/kernel"] = (f"{src}.weight", True)
        names[f"{dst}/bias"] = (f"{src}.bias", False)

    def norm(dst, src):
        w, b = ln(src)
        names[f"{dst}/scale"] = (w, False)
        names[f"{dst}/bias"] = (b, False)

    e = f"{prefix}embeddings"
    names["token_embedder/embedding"] = (f"{e}.word_embeddings.weight", False)
    names["position_embedder/embedding"] = (f"{e}.position_embeddings.weight", False)
    names["token_type_embedder/embedding"] = (f"{e}.token_type_embeddings.weight", False)
    norm("embedding_norm", f"{e}.LayerNorm")
    for i in range(num_layers):
        src, dst = f"{prefix}encoder.layer.{i}", f"layers_{i}"
        for n in ("query", "key", "value"):
            linear(f"{dst}/attention/{n}", f"{src}.attention.self.{n}")
        linear(f"{dst}/attention/out", f"{src}.attention.output.dense")
        norm(f"{dst}/post_attention_layer_norm", f"{src}.attention.output.LayerNorm")
        linear(f"{dst}/mlp/wi", f"{src}.intermediate.dense")
        linear(f"{dst}/mlp/wo", f"{src}.output.dense")
        norm(f"{dst}/post_mlp_layer_norm", f"{src}.output.LayerNorm")
    linear("mlm_head/dense", head["dense"])
    norm("mlm_head/layer_norm", head["layer_norm"])
    names["mlm_head/bias"] = (next((b for b in head["bias"] if b in ckpt), head["bias"][0]), False)
    return names


def _check_tied_decoder(ckpt, word_name: str) -> None:
    for name in ("lm_head.decoder.weight", "cls.predictions.decoder.weight"):
        if name in ckpt and not np.array_equal(ckpt.get(name), ckpt.get(word_name)):
            raise CheckpointError(f"{ckpt.directory}: {name} differs from the word embeddings; "
                                  "ptransfer's MLM head ties the decoder to them (untied decoders "
                                  "are not supported).")


def _load_tokenizer(directory: str):
    """(tokenizers.Tokenizer or None, seqio vocabulary) of an HF directory."""
    if not os.path.isfile(os.path.join(directory, "tokenizer.json")):
        log.warning("%s has no tokenizer.json; using seqio.ByteVocabulary as the vocabulary "
                    "(fine for tests; a real model needs its tokenizer).", directory)
        return None, _byte_vocab()
    vocab = TokenizersVocabulary.from_hf_dir(directory)
    return vocab.tokenizer, vocab


def from_hf(directory: str, *, dtype=None, mesh=None) -> MlmBackbone:
    """A RobertaForMaskedLM / BertForMaskedLM safetensors directory.

    Special ids (mask, start, end, pad) come from tokenizer.json when present,
    else from config.json, else from the published vocabularies.
    """
    config_path = os.path.join(directory, "config.json")
    try:
        with open(config_path) as f:
            hf = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {config_path}: {e}") from None
    tokenizer, vocab = _load_tokenizer(directory)
    try:
        config = _config_from_hf(hf, tokenizer)
    except KeyError as e:
        raise CheckpointError(f"{config_path} lacks {e.args[0]!r}; is it a BERT/RoBERTa config?") from None
    ckpt = SafetensorsCheckpoint(directory)
    abstract, axes = _abstract_and_axes(config)
    builder = ParamTreeBuilder(abstract, axes, dtype=dtype, mesh=mesh, source=directory)
    names = _hf_names(ckpt, config.num_layers)
    _check_tied_decoder(ckpt, names["token_embedder/embedding"][0])
    for path, (name, transpose) in names.items():
        array = ckpt.get(name)
        builder.put(path, array.T if transpose else array)
    name = os.path.basename(os.path.normpath(directory))
    return MlmBackbone(name=name, config=config, params=builder.build(), vocab=vocab,
                       axes=_to_dict(axes))
