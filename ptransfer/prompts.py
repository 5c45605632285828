"""The soft prompt and its initializers.

A prompt is a plain float32 array `[L, D]` (D = the backbone's d_model) that
the backbone prepends to the embedded input. It is never a parameter of the
frozen model: the trainer differentiates with respect to this array only and
passes it to every backbone function as an argument, so one compiled function
serves any prompt of the same shape.

`INIT_FROM` (a gin macro, the `init_from` argument below) picks the initializer:

  random            uniform, scaled so its std equals the std of the backbone's
                    token-embedding table (a unit-variance prompt is far off the
                    scale real embeddings live at: SmolLM2's have std ~0.14)
  vocab             embeddings of L distinct token ids sampled from the first
                    `top_k` (5000) ids of the vocabulary (Lester et al. 2021;
                    SentencePiece ids are roughly frequency-ordered), specials excluded
  labels            the task's label words' embeddings (a multi-token word is
                    the mean of its tokens), cycled to fill L
  text:<string>     the embedded string, cycled to fill L (truncated if longer)
  file:<path>       a `.npy` file (read with allow_pickle=False), a prompt bank
                    entry directory, a PEFT prompt-tuning adapter directory, or a
                    finished training model dir (its best_prompt.npy);
                    a bare path (ending in .npy or naming a directory) also works
  projected:<path>  a prompt from another backbone: a bank entry written by
                    `ptransfer project apply`, or, when `from_projected.projector`
                    names a trained projector directory, a source-backbone prompt
                    (any `file:` form) mapped through it now

Other modules can add schemes with `register_initializer`, and `init_prompt`
also takes a callable `fn(InitContext)` directly. Every initializer
returns float32 `[L, D]`; a width that does not match the backbone is a
ConfigError that points to `ptransfer project apply`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Sequence

import gin
import numpy as np

from ptransfer.bank import peft_format
from ptransfer.bank import store as bank
from ptransfer.core import fileio
from ptransfer.core.errors import CheckpointError, ConfigError, DataError, close_matches_hint
from ptransfer.projector.model import Projector

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InitContext:
    """What an initializer may use: the frozen backbone, the wanted length, a seed,
    and the task's label words (for `labels`)."""

    backbone: object
    length: int
    seed: int = 0
    label_words: Sequence[str] = ()

    @property
    def d_model(self) -> int:
        return int(self.backbone.d_model)


Initializer = Callable[[InitContext, str], np.ndarray]
_INITIALIZERS: dict[str, Initializer] = {}


def register_initializer(scheme: str, fn: Initializer) -> None:
    """Adds an `INIT_FROM` scheme: `fn(ctx, argument) -> float32 [L, D]`."""
    _INITIALIZERS[scheme] = fn


# ---- helpers -----------------------------------------------------------------

def embed_ids(backbone, ids) -> np.ndarray:
    """Input embeddings of token ids: [N] -> float32 [N, D]."""
    import jax
    import jax.numpy as jnp

    out = jax.jit(backbone.embed)(backbone.params, jnp.asarray(ids, jnp.int32))
    return np.asarray(out, np.float32)


def embedding_std(backbone) -> float:
    """Standard deviation of all entries of the token-embedding table."""
    import jax
    import jax.numpy as jnp

    table = backbone.embedding_table(backbone.params)
    std = jax.jit(lambda t: jnp.std(t.astype(jnp.float32)))(table)
    return float(std)


def random_prompt_like(prompts, seed: int = 0) -> np.ndarray:
    """The random-prompt baseline: a Gaussian float32 prompt [L, D] whose Frobenius
    norm is the mean norm of `prompts` ([L, D], or [K, L, D] for several)."""
    prompts = np.asarray(prompts, np.float32)
    if prompts.ndim == 2:
        prompts = prompts[None]
    rng = np.random.default_rng(seed)
    out = rng.standard_normal(prompts.shape[1:]).astype(np.float32)
    target = float(np.mean(np.linalg.norm(prompts.reshape(len(prompts), -1), axis=1)))
    return out * (target / float(np.linalg.norm(out)))


def _cycle(rows: np.ndarray, length: int) -> np.ndarray:
    """[N, D] -> [length, D] by repeating rows in order (truncating when N > length)."""
    reps = -(-length // len(rows))
    return np.tile(rows, (reps, 1))[:length]


def _special_ids(vocab) -> set[int]:
    out = set()
    for name in ("pad_id", "eos_id", "unk_id", "bos_id"):
        try:
            value = getattr(vocab, name, None)
        except Exception:  # some seqio vocabularies raise for ids they lack
            value = None
        if isinstance(value, (int, np.integer)) and value >= 0:
            out.add(int(value))
    return out


def check_width(prompt: np.ndarray, backbone, source: str) -> np.ndarray:
    """float32 [L, D] or ConfigError (wrong rank, wrong width, NaN)."""
    prompt = np.asarray(prompt)
    if prompt.ndim != 2 or not np.issubdtype(prompt.dtype, np.floating):
        raise ConfigError(f"{source}: a prompt must be a float [L, D] array, got "
                          f"{prompt.dtype} {prompt.shape}.")
    if prompt.shape[1] != backbone.d_model:
        raise ConfigError(
            f"{source}: prompt width {prompt.shape[1]} does not match backbone "
            f"{backbone.name!r} (d_model {backbone.d_model}). A prompt trained on another backbone "
            "must first be mapped with the projector: `ptransfer project apply` (then use "
            "INIT_FROM='projected:<entry>').")
    if not np.isfinite(prompt).all():
        raise CheckpointError(f"{source}: prompt contains NaN or inf values.")
    return np.ascontiguousarray(prompt, np.float32)


def load_prompt_file(path: str) -> tuple[np.ndarray, dict]:
    """A prompt from `.npy`, a bank entry dir or a PEFT adapter dir: (float [L, D], meta).

    `.npy` files, bank entries and trainer model dirs may be on gs:// (`fileio`);
    PEFT adapter dirs are read locally."""
    import io

    path = os.path.expanduser(path)
    if fileio.isdir(path):
        if fileio.exists(fileio.join(path, peft_format.CONFIG_FILE)):
            prompt, config = peft_format.import_peft(path)
            return prompt, {"peft_config": config}
        if fileio.exists(fileio.join(path, "run_identity.json")):  # a trainer's model dir
            best = fileio.join(path, "best_prompt.npy")
            if not fileio.isfile(best):
                raise DataError(f"model dir {path} has no best_prompt.npy yet (the run has not "
                                "finished); use its bank entry or a finished run.")
            return load_prompt_file(best)
        prompt, meta, _ = bank.read_entry(path)
        return prompt, meta
    if not fileio.isfile(path):
        raise DataError(f"prompt file {path!r} does not exist; give a .npy file, a prompt bank "
                        "entry directory or a PEFT adapter directory.")
    if path.endswith((".pt", ".bin", ".pth", ".pkl", ".pickle")):
        raise CheckpointError(f"{path}: pickled files are never loaded; save the prompt as .npy "
                              "(numpy.save(path, array)) or safetensors.")
    try:
        prompt = np.load(io.BytesIO(fileio.read_bytes(path)), allow_pickle=False)
    except ValueError as e:
        raise CheckpointError(f"{path} is not a plain .npy array ({e}); object arrays and "
                              "pickles are refused. Save a float32 [L, D] array with numpy.save.") from None
    if not isinstance(prompt, np.ndarray):
        raise CheckpointError(f"{path} holds several arrays (.npz); give a single [L, D] .npy.")
    return prompt, {}


def source_adam_moments(init_from: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(mu, nu, meta) of the bank entry that `init_from` ('file:<entry>') names: the
    AdamW moments its run had at its exported prompt (INIT_OPTIMIZER='source').

    ConfigError when `init_from` is not a bank entry, or when the entry has no
    moments: its run used another optimizer (Adafactor keeps factored second
    moments and no first moment, which AdamW cannot continue from), or it was
    imported or written before the bank kept them. Use INIT_OPTIMIZER='fresh' then.
    """
    scheme, arg = parse_init_from(init_from) if isinstance(init_from, str) else ("", "")
    path = os.path.expanduser(arg)
    if scheme != "file" or not fileio.isdir(path) or not bank.is_complete(path):
        raise ConfigError(f"INIT_OPTIMIZER='source' carries the optimizer state of a prompt bank "
                          f"entry, but INIT_FROM={init_from!r} is not one; give "
                          "INIT_FROM='file:<bank entry>' or use INIT_OPTIMIZER='fresh'.")
    _, meta, _ = bank.read_entry(path)
    moments = [bank.read_extra(path, name) for name in bank.ADAM_MOMENTS]
    if any(m is None for m in moments):
        used = (meta.get("optimizer") or {}).get("name", "unknown")
        raise ConfigError(
            f"bank entry {path} keeps no AdamW moments (its run's optimizer: {used}); "
            "an Adafactor state (factored second moments, no first moment) has no AdamW "
            "counterpart, and imported or older entries have none. Use "
            "INIT_OPTIMIZER='fresh', or train the source with OPTIMIZER='adamw_t5'.")
    return moments[0], moments[1], meta


def _fit_length(prompt: np.ndarray, length: int, source: str) -> np.ndarray:
    if prompt.shape[0] != length:
        raise ConfigError(f"{source}: prompt length {prompt.shape[0]} != PROMPT_LENGTH {length}; "
                          f"set --gin.PROMPT_LENGTH={prompt.shape[0]} to use it.")
    return prompt


# ---- the initializers --------------------------------------------------------

@gin.configurable(module="prompts")
def random_uniform(ctx: InitContext, arg: str = "", *, scale: float = 1.0) -> np.ndarray:
    """U(-a, a) with a = sqrt(3) * scale * std(embedding table): std = scale * embedding std."""
    std = embedding_std(ctx.backbone)
    a = np.sqrt(3.0) * scale * std
    rng = np.random.default_rng(ctx.seed)
    return rng.uniform(-a, a, size=(ctx.length, ctx.d_model)).astype(np.float32)


@gin.configurable(module="prompts")
def vocab_sample(ctx: InitContext, arg: str = "", *, top_k: int = 5000) -> np.ndarray:
    """Embeddings of `length` ids drawn from the first `top_k` ids (specials excluded);
    without replacement while there are enough ids, with replacement after."""
    vocab = ctx.backbone.vocab
    size = min(int(top_k), int(getattr(vocab, "vocab_size", ctx.backbone.config.vocab_size)),
               int(ctx.backbone.config.vocab_size))
    pool = np.array(sorted(set(range(size)) - _special_ids(vocab)), np.int64)
    if len(pool) == 0:
        raise ConfigError(f"vocab init: no regular token ids below top_k={top_k}.")
    rng = np.random.default_rng(ctx.seed)
    ids = rng.choice(pool, size=ctx.length, replace=ctx.length > len(pool))
    return embed_ids(ctx.backbone, ids)


def _text_ids(vocab, text: str) -> list[int]:
    return [int(i) for i in vocab.encode(text)]


@gin.configurable(module="prompts")
def class_labels(ctx: InitContext, arg: str = "") -> np.ndarray:
    """Each label word's embedding (mean over its tokens), cycled to fill the prompt."""
    if not ctx.label_words:
        raise ConfigError("INIT_FROM='labels' needs a classification task with label words; "
                          "this task has none. Use 'vocab' or 'random'.")
    rows = []
    for word in ctx.label_words:
        ids = _text_ids(ctx.backbone.vocab, word)
        if not ids:
            raise ConfigError(f"label word {word!r} encodes to no tokens.")
        rows.append(embed_ids(ctx.backbone, ids).mean(axis=0))
    return _cycle(np.stack(rows), ctx.length)


@gin.configurable(module="prompts")
def from_text(ctx: InitContext, arg: str = "", *, text: str | None = None) -> np.ndarray:
    """Embeddings of a string's tokens, cycled (or truncated) to the prompt length."""
    text = arg or text
    if not text:
        raise ConfigError("INIT_FROM='text:<string>' needs a non-empty string, e.g. "
                          "\"text:Classify the sentiment of this review\".")
    ids = _text_ids(ctx.backbone.vocab, text)
    if not ids:
        raise ConfigError(f"text init: {text!r} encodes to no tokens.")
    if len(ids) > ctx.length:
        log.warning("text init: %d tokens truncated to PROMPT_LENGTH=%d", len(ids), ctx.length)
    return _cycle(embed_ids(ctx.backbone, ids), ctx.length)


@gin.configurable(module="prompts")
def from_file(ctx: InitContext, arg: str = "", *, path: str | None = None) -> np.ndarray:
    """A saved prompt (.npy, bank entry dir, PEFT adapter dir) of this backbone's width."""
    arg = arg or path
    if not arg:
        raise ConfigError("INIT_FROM='file:<path>' needs a path.")
    prompt, meta = load_prompt_file(arg)
    prompt = check_width(prompt, ctx.backbone, arg)
    src = meta.get("backbone")
    if src and src != ctx.backbone.name:
        log.warning("INIT_FROM %s: prompt was trained on backbone %r, used on %r (same width)",
                    arg, src, ctx.backbone.name)
    return _fit_length(prompt, ctx.length, arg)


@gin.configurable(module="prompts")
def from_projected(ctx: InitContext, arg: str = "", *, path: str | None = None,
                   projector: str | None = None) -> np.ndarray:
    """A prompt mapped from another backbone by the cross-model projector.

    With `projector` (a trained projector directory) the source prompt `arg`
    (any `file:` form) is projected now; otherwise `arg` must already be a
    projected prompt for this backbone (a bank entry from `ptransfer project apply`).
    """
    arg = arg or path
    if not arg:
        raise ConfigError("INIT_FROM='projected:<path>' needs a path.")
    prompt, meta = load_prompt_file(arg)
    if projector:
        proj = Projector.load(projector)
        proj.check_source_prompt(prompt, f"source prompt {arg}")
        prompt = proj.project(prompt, target=ctx.backbone)
    elif meta.get("backbone") not in (None, ctx.backbone.name):
        if np.shape(prompt)[-1] != ctx.backbone.d_model:
            check_width(prompt, ctx.backbone, arg)
        log.warning("INIT_FROM projected:%s: entry is for backbone %r, used on %r",
                    arg, meta.get("backbone"), ctx.backbone.name)
    prompt = check_width(prompt, ctx.backbone, arg)
    return _fit_length(prompt, ctx.length, arg)


for _scheme, _fn in (("random", random_uniform), ("vocab", vocab_sample), ("labels", class_labels),
                     ("text", from_text), ("file", from_file), ("projected", from_projected)):
    register_initializer(_scheme, _fn)


def parse_init_from(init_from: str) -> tuple[str, str]:
    """'text:hello' -> ('text', 'hello'); a bare path -> ('file', path)."""
    if not isinstance(init_from, str) or not init_from.strip():
        raise ConfigError(f"INIT_FROM must be a non-empty string, got {init_from!r}; one of "
                          f"{', '.join(sorted(_INITIALIZERS))} (see gin_configs/prompts/).")
    scheme, sep, arg = init_from.partition(":")
    if sep and scheme in _INITIALIZERS:
        return scheme, arg
    if not sep and init_from in _INITIALIZERS:
        return init_from, ""
    if init_from.endswith(".npy") or os.path.isdir(init_from) or os.sep in init_from:
        return "file", init_from  # also gs://... (a bare remote path contains '/')
    raise ConfigError(f"unknown INIT_FROM {init_from!r}: use one of random, vocab, labels, "
                      "text:<string>, file:<path>, projected:<path>."
                      + close_matches_hint(scheme, _INITIALIZERS))


def describe_init(init_from) -> str:
    """INIT_FROM with the initializer's gin-bound settings, e.g. 'file:/bank/x' or
    'random(scale=0.5)' (recorded in run identities and bank entries)."""
    if callable(init_from):
        return f"callable:{getattr(init_from, '__module__', '?')}.{getattr(init_from, '__qualname__', repr(init_from))}"
    scheme, arg = parse_init_from(init_from)
    fn = _INITIALIZERS[scheme]
    try:
        bound = dict(gin.get_bindings(fn))
    except (ValueError, TypeError):  # not a gin configurable (a registered plug-in)
        bound = {}
    for key in ("path", "text"):
        value = bound.pop(key, None)
        if not arg and value:
            arg = str(value)
    out = f"{scheme}:{arg}" if arg else scheme
    if bound:
        out += "(" + ", ".join(f"{k}={bound[k]!r}" for k in sorted(bound)) + ")"
    return out


def init_prompt(init_from, backbone, length: int, *, seed: int = 0,
                label_words: Sequence[str] = ()) -> np.ndarray:
    """The initial prompt float32 [length, d_model] for an `INIT_FROM` spec, or
    for a callable `fn(InitContext) -> [length, d_model]` (a hook, e.g. a
    projector applied in memory)."""
    if int(length) <= 0:
        raise ConfigError(f"PROMPT_LENGTH must be positive, got {length}.")
    ctx = InitContext(backbone=backbone, length=int(length), seed=int(seed),
                      label_words=tuple(label_words))
    if callable(init_from):
        scheme, prompt = "callable", np.asarray(init_from(ctx))
    else:
        scheme, arg = parse_init_from(init_from)
        prompt = _INITIALIZERS[scheme](ctx, arg)
    prompt = check_width(prompt, backbone, f"INIT_FROM={init_from!r}")
    if prompt.shape[0] != length:
        raise ConfigError(f"initializer {scheme!r} returned {prompt.shape[0]} rows, not {length}.")
    return prompt
