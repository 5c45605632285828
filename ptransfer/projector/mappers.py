"""Cross-model prompt mappers behind one interface: `[L, d_src] -> [L, d_tgt]`.

A mapper moves a prompt trained on a source backbone to a target backbone of
another width (and vocabulary). Each is fit from what it needs:

* `v2v-lin` (Lester et al., 2022, linear prompt recycling): W [d_src, d_tgt]
  by least squares so that E_src[a] @ W ~= E_tgt[b] over the tokens both
  vocabularies share (`recycling.token_alignment`); each prompt vector maps as
  p @ W. Needs the two embedding tables.
* `lin-comb` (same paper): each source prompt vector is expressed in a
  dictionary of source embeddings of shared tokens, p ~= c @ D_src (least
  squares, minimum norm, or non-negative c >= 0), and rebuilt on the target
  side with the same coefficients: c @ D_tgt. With every shared token as the
  dictionary the minimum-norm solution IS `v2v-lin`'s map; the default
  dictionary is the `d_src` most frequent shared tokens (lowest source ids),
  where the coefficients are unique.
* `relative` (Wu et al., ICLR 2024, relative representations): a prompt
  vector is described by its cosine similarities to K shared anchor tokens,
  r(p) = cos(p, A_src[k]) [K]; the target vector q is found by gradient
  descent (optax Adam, jitted) so that cos(q, A_tgt[k]) matches r(p). The
  description is invariant to rotations of the embedding space. Cosines fix
  a direction only: q is rescaled so ||q|| / mean ||A_tgt|| = ||p|| /
  mean ||A_src||. Needs the embedding tables only (no forward passes, no
  task data).
* `projector` (Su et al., 2022): the MLP of `ptransfer.projector.model`,
  trained by `ptransfer.projector.training` on prompt pairs (distance) or
  through the target model (task) and wrapped with
  `ProjectorMapper.from_projector`; it maps a whole prompt at once.

Every mapper records its pair: source and target backbone ids, their
vocabulary keys (`tasks.registry.vocab_key`), widths and the prompt length it
serves; `apply` refuses prompts of another width or length, and another
backbone pair when one is given. A mapper is a directory of files:

    <dir>/mapper.json   kind, pair, config, array index (file, shape), summary
    <dir>/<name>.npy    its float32 arrays (no pickles)

written into a temp directory and renamed into place (readers see the old
mapper or the new one, never a mix).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any, ClassVar, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ptransfer
from ptransfer.core import fileio
from ptransfer.core.errors import CheckpointError, ConfigError, close_matches_hint
from ptransfer.projector import recycling
from ptransfer.projector.model import Projector, ProjectorSpec, backbone_id, init_params
from tasks.registry import vocab_key

SPEC_FILE = "mapper.json"
FORMAT = "ptransfer-mapper"
FORMAT_VERSION = 1
_ARRAY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


# ---- the pair a mapper serves ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MapperPair:
    """Source and target backbones (ids, vocabulary keys, widths) and the prompt length."""

    source_backbone: str
    target_backbone: str
    source_vocab: str
    target_vocab: str
    d_src: int
    d_tgt: int
    prompt_length: int

    @classmethod
    def of(cls, source, target, prompt_length: int) -> "MapperPair":
        """From two Backbone objects."""
        if int(prompt_length) <= 0:
            raise ConfigError(f"a mapper's prompt length must be positive, got {prompt_length}.")
        return cls(backbone_id(source), backbone_id(target), vocab_key(source.vocab),
                   vocab_key(target.vocab), int(source.d_model), int(target.d_model),
                   int(prompt_length))

    def describe(self) -> str:
        return (f"{self.source_backbone!r} (vocabulary {self.source_vocab}, width {self.d_src}) "
                f"-> {self.target_backbone!r} (vocabulary {self.target_vocab}, width "
                f"{self.d_tgt}), prompt length {self.prompt_length}")

    def check_backbones(self, source=None, target=None) -> None:
        """Refuses a source / target backbone (object or id) other than the fitted pair."""
        for side, given, want_id, want_vocab, width in (
                ("source", source, self.source_backbone, self.source_vocab, self.d_src),
                ("target", target, self.target_backbone, self.target_vocab, self.d_tgt)):
            if given is None:
                continue
            got_id = backbone_id(given)
            got_vocab = None if isinstance(given, str) else vocab_key(given.vocab)
            got_width = None if isinstance(given, str) else int(given.d_model)
            if got_id != want_id or (got_vocab is not None and got_vocab != want_vocab) or \
                    (got_width is not None and got_width != width):
                what = f"{got_id!r}" + (f" (vocabulary {got_vocab}, width {got_width})"
                                        if got_vocab is not None else "")
                raise ConfigError(f"this mapper was fit for {self.describe()}; its {side} "
                                  f"backbone {what} is not that one. Fit a mapper for this pair.")

    def check_prompt(self, prompt, what: str = "prompt") -> None:
        """Raises ConfigError unless prompt is [L, d_src] or [N, L, d_src]."""
        shape = tuple(np.shape(prompt))
        if len(shape) not in (2, 3):
            raise ConfigError(f"{what} has shape {list(shape)}; a mapper takes [L, d_src] or "
                              f"[N, L, d_src] (fit for {self.describe()}).")
        if shape[-1] != self.d_src:
            raise ConfigError(f"{what} has width {shape[-1]}, but this mapper was fit for "
                              f"{self.describe()}; map prompts of {self.source_backbone!r} "
                              f"(width {self.d_src}) or fit a mapper from the prompt's backbone.")
        if shape[-2] != self.prompt_length:
            raise ConfigError(f"{what} has length {shape[-2]}, but this mapper was fit for "
                              f"{self.describe()}; fit a mapper for length {shape[-2]}.")


# ---- shared tokens ---------------------------------------------------------------


@dataclasses.dataclass
class SharedTokens:
    """The aligned tokens of a pair and both embedding tables.

    src_ids, tgt_ids [K] (source-id order: frequent tokens first),
    src_table [V_src, d_src], tgt_table [V_tgt, d_tgt] (float32).
    """

    src_ids: np.ndarray
    tgt_ids: np.ndarray
    src_table: np.ndarray
    tgt_table: np.ndarray

    @classmethod
    def of(cls, source, target) -> "SharedTokens":
        src = np.asarray(source.embedding_table(source.params), np.float32)
        tgt = np.asarray(target.embedding_table(target.params), np.float32)
        src_ids, tgt_ids = recycling.token_alignment(source.vocab, target.vocab, len(src),
                                                     len(tgt))
        return cls(src_ids, tgt_ids, src, tgt)

    @property
    def count(self) -> int:
        return int(len(self.src_ids))

    def first(self, k: int | None, what: str, at_least: int = 1):
        """(source [k, d_src], target [k, d_tgt]) embeddings of the first k shared tokens."""
        k = self.count if k is None else int(k)
        if k < at_least or k > self.count:
            raise ConfigError(f"{what} needs between {at_least} and {self.count} shared tokens "
                              f"(the pair shares {self.count}); got {k}.")
        return self.src_table[self.src_ids[:k]], self.tgt_table[self.tgt_ids[:k]]


# ---- the interface ----------------------------------------------------------------


class Mapper:
    """A fitted mapper: its pair, float32 arrays, config (JSON values) and summary."""

    kind: ClassVar[str] = ""

    def __init__(self, pair: MapperPair, arrays: Mapping[str, np.ndarray],
                 config: Mapping[str, Any] | None = None, summary: Mapping[str, Any] | None = None):
        self.pair = pair
        self.arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
        self.config = dict(config or {})
        self.summary = dict(summary or {})

    # -- use --------------------------------------------------------------------

    def apply(self, prompt, *, source=None, target=None) -> np.ndarray:
        """[L, d_src] -> [L, d_tgt] (or [N, L, d_src] -> [N, L, d_tgt]), float32.

        `source` / `target` (Backbones or ids), if given, must be the fitted pair.
        """
        self.pair.check_backbones(source, target)
        self.pair.check_prompt(prompt)
        x = jnp.asarray(prompt, jnp.float32)
        out = np.asarray(self._apply(x if x.ndim == 3 else x[None]), np.float32)
        if not np.all(np.isfinite(out)):
            raise ConfigError(f"the {self.kind} mapper produced non-finite values; is the source "
                              "prompt finite?")
        return out if x.ndim == 3 else out[0]

    def _apply(self, prompts: jax.Array) -> jax.Array:
        """[N, L, d_src] -> [N, L, d_tgt]."""
        raise NotImplementedError

    def check_arrays(self) -> None:
        """CheckpointError unless the arrays have the shapes the pair and config imply."""
        raise NotImplementedError

    # -- files --------------------------------------------------------------------

    def save(self, directory: str, *, overwrite: bool = False) -> str:
        """Writes mapper.json + one .npy per array (temp directory, then rename)."""
        directory = os.path.abspath(directory)
        if os.path.exists(directory) and os.listdir(directory) and not overwrite:
            raise ConfigError(f"{directory} already exists and is not empty; choose another "
                              "output directory or pass overwrite.")
        with fileio.atomic_directory(directory) as tmp:
            index = {}
            for name, array in self.arrays.items():
                if not _ARRAY_NAME.match(name):
                    raise ConfigError(f"mapper array name {name!r} is not a safe file name.")
                fileio.write_npy(os.path.join(tmp, f"{name}.npy"), array)
                index[name] = {"file": f"{name}.npy", "shape": list(array.shape)}
            fileio.write_json(os.path.join(tmp, SPEC_FILE), {
                "format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind,
                "pair": dataclasses.asdict(self.pair), "config": self.config, "arrays": index,
                "summary": self.summary, "ptransfer_version": ptransfer.__version__},
                sort_keys=True)
        return directory


def load(directory: str) -> Mapper:
    """The mapper saved in `directory` (any kind)."""
    path = os.path.join(directory, SPEC_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{directory} is not a mapper directory (no {SPEC_FILE}); fit one "
                              "and save it first.")
    try:
        with open(path) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        kind = meta["kind"]
        pair = MapperPair(**meta["pair"])
        index = dict(meta["arrays"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a readable mapper spec ({e}); fit the mapper "
                              "again.") from None
    if kind not in MAPPERS:
        raise CheckpointError(f"{path}: unknown mapper kind {kind!r}."
                              + close_matches_hint(kind, MAPPERS))
    arrays = {}
    for name, entry in index.items():
        file = str(entry.get("file", ""))
        if not _ARRAY_NAME.match(name) or file != f"{name}.npy":
            raise CheckpointError(f"{path}: array entry {name!r} -> {file!r} is not allowed.")
        try:
            array = np.load(os.path.join(directory, file), allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read mapper array {file} in {directory}: {e}; fit "
                                  "the mapper again.") from None
        if list(array.shape) != list(entry.get("shape", [])):
            raise CheckpointError(f"mapper array {file} in {directory} has shape "
                                  f"{list(array.shape)}, but {SPEC_FILE} says {entry.get('shape')}.")
        arrays[name] = array
    mapper = MAPPERS[kind](pair, arrays, meta.get("config"), meta.get("summary"))
    mapper.check_arrays()
    return mapper


# ---- v2v-lin ------------------------------------------------------------------------


@jax.jit
def _linear(prompts, w):
    return jnp.einsum("nld,de->nle", prompts, w)


class V2VLin(Mapper):
    """p -> p @ W, W [d_src, d_tgt] fit on the shared tokens' embeddings."""

    kind = "v2v-lin"

    @classmethod
    def fit(cls, source, target, prompt_length: int, *, shared: SharedTokens | None = None,
            max_tokens: int | None = None) -> "V2VLin":
        shared = shared or SharedTokens.of(source, target)
        pair = MapperPair.of(source, target, prompt_length)
        x, y = shared.first(max_tokens, "v2v-lin", at_least=pair.d_src)
        w = recycling.fit_linear_map(x, y)
        residual = float(np.linalg.norm(x @ w - y) / max(np.linalg.norm(y), 1e-30))
        return cls(pair, {"w": w}, {"max_tokens": max_tokens},
                   {"shared_tokens": shared.count, "fit_tokens": int(len(x)),
                    "relative_residual": residual})

    def check_arrays(self) -> None:
        _check_shape(self, "w", (self.pair.d_src, self.pair.d_tgt))

    def _apply(self, prompts):
        return _linear(prompts, self.arrays["w"])


# ---- lin-comb -----------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("iterations",))
def nonnegative_coefficients(targets, dictionary, iterations: int = 500):
    """argmin_{c >= 0} ||c @ dictionary - targets||^2 per row, by accelerated projected
    gradient (FISTA, step 1 / sigma_max(dictionary)^2).

    targets [M, d], dictionary [K, d] -> c [M, K] (float32).
    """
    gram = dictionary @ dictionary.T                       # [K, K]
    step = 1.0 / jnp.maximum(jnp.linalg.eigvalsh(gram)[-1], 1e-30)
    rhs = targets @ dictionary.T                           # [M, K]
    c0 = jnp.zeros(rhs.shape, jnp.float32)

    def body(_, state):
        c, z, t = state
        c_new = jnp.maximum(z - step * (z @ gram - rhs), 0.0)
        t_new = (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)) / 2.0
        z = c_new + ((t - 1.0) / t_new) * (c_new - c)
        return c_new, z, t_new

    c, _, _ = jax.lax.fori_loop(0, iterations, body, (c0, c0, jnp.float32(1.0)))
    return c


@jax.jit
def _lstsq_comb(prompts, src_pinv, tgt_dict):
    return jnp.einsum("nld,dk,ke->nle", prompts, src_pinv, tgt_dict)


@functools.partial(jax.jit, static_argnames=("iterations",))
def _nonneg_comb(prompts, src_dict, tgt_dict, iterations):
    n, length, d = prompts.shape
    c = nonnegative_coefficients(prompts.reshape(n * length, d), src_dict, iterations)
    return (c @ tgt_dict).reshape(n, length, -1)


class LinComb(Mapper):
    """p ~= c @ D_src  ->  c @ D_tgt over a dictionary of shared tokens."""

    kind = "lin-comb"

    @classmethod
    def fit(cls, source, target, prompt_length: int, *, shared: SharedTokens | None = None,
            num_tokens: int | None = None, non_negative: bool = False,
            iterations: int = 500) -> "LinComb":
        shared = shared or SharedTokens.of(source, target)
        pair = MapperPair.of(source, target, prompt_length)
        k = min(shared.count, pair.d_src) if num_tokens is None else int(num_tokens)
        src_dict, tgt_dict = shared.first(k, "lin-comb")
        arrays = {"src_dict": src_dict, "tgt_dict": tgt_dict}
        if not non_negative:
            arrays["src_pinv"] = np.linalg.pinv(np.asarray(src_dict, np.float64))  # [d_src, K]
        return cls(pair, arrays, {"num_tokens": k, "non_negative": bool(non_negative),
                                  "iterations": int(iterations)},
                   {"shared_tokens": shared.count, "dictionary_tokens": k})

    def check_arrays(self) -> None:
        k = int(self.config["num_tokens"])
        _check_shape(self, "src_dict", (k, self.pair.d_src))
        _check_shape(self, "tgt_dict", (k, self.pair.d_tgt))
        if not self.config.get("non_negative"):
            _check_shape(self, "src_pinv", (self.pair.d_src, k))

    def coefficients(self, prompt) -> np.ndarray:
        """The combination of each prompt vector: [L, d_src] -> [L, K]."""
        self.pair.check_prompt(prompt)
        x = np.asarray(prompt, np.float32).reshape(-1, self.pair.d_src)
        if self.config.get("non_negative"):
            c = nonnegative_coefficients(x, self.arrays["src_dict"], int(self.config["iterations"]))
        else:
            c = x @ self.arrays["src_pinv"]
        return np.asarray(c, np.float32).reshape(np.shape(prompt)[:-1] + (-1,))

    def _apply(self, prompts):
        if self.config.get("non_negative"):
            return _nonneg_comb(prompts, self.arrays["src_dict"], self.arrays["tgt_dict"],
                                int(self.config["iterations"]))
        return _lstsq_comb(prompts, self.arrays["src_pinv"], self.arrays["tgt_dict"])


# ---- relative representation ---------------------------------------------------------


def _unit(x, axis=-1):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


@jax.jit
def relative_description(vectors, anchors):
    """Cosine of every vector to every anchor: [..., d] x [K, d] -> [..., K]."""
    return _unit(vectors) @ _unit(anchors).T


@functools.partial(jax.jit, static_argnames=("steps", "random_init"))
def match_description(description, anchors, init_key, *, steps: int, learning_rate,
                      random_init: bool = False):
    """Vectors whose cosines to `anchors` match `description`, by Adam on
    mean((cos(q, anchors) - description)^2).

    description [M, K], anchors [K, d] -> (q [M, d] (unit norm), final loss [M]).
    The start is the least-squares solution of unit(anchors) @ q = description
    (or a random direction with random_init).
    """
    unit_anchors = _unit(anchors)
    if random_init:
        q0 = jax.random.normal(init_key, (description.shape[0], anchors.shape[1]), jnp.float32)
    else:
        q0 = description @ jnp.linalg.pinv(unit_anchors).T
    opt = optax.adam(learning_rate)

    def loss_rows(q):
        return jnp.mean(jnp.square(_unit(q) @ unit_anchors.T - description), axis=-1)

    def step(state, _):
        q, opt_state = state
        grads = jax.grad(lambda q: jnp.sum(loss_rows(q)))(q)
        updates, opt_state = opt.update(grads, opt_state, q)
        return (optax.apply_updates(q, updates), opt_state), None

    (q, _), _ = jax.lax.scan(step, (q0, opt.init(q0)), None, length=steps)
    return _unit(q), loss_rows(q)


class Relative(Mapper):
    """Relative-representation transfer over shared anchor tokens (module docstring)."""

    kind = "relative"

    @classmethod
    def fit(cls, source, target, prompt_length: int, *, shared: SharedTokens | None = None,
            num_anchors: int | None = 4096, steps: int = 300, learning_rate: float = 0.01,
            random_init: bool = False, seed: int = 0) -> "Relative":
        shared = shared or SharedTokens.of(source, target)
        pair = MapperPair.of(source, target, prompt_length)
        k = shared.count if num_anchors is None else min(int(num_anchors), shared.count)
        src_anchors, tgt_anchors = shared.first(k, "relative")
        if steps < 0 or learning_rate <= 0:
            raise ConfigError(f"relative mapper: steps must be >= 0 and learning_rate > 0; got "
                              f"{steps}, {learning_rate}.")
        config = {"num_anchors": k, "steps": int(steps), "learning_rate": float(learning_rate),
                  "random_init": bool(random_init), "seed": int(seed),
                  "src_mean_norm": float(np.mean(np.linalg.norm(src_anchors, axis=-1))),
                  "tgt_mean_norm": float(np.mean(np.linalg.norm(tgt_anchors, axis=-1)))}
        return cls(pair, {"src_anchors": src_anchors, "tgt_anchors": tgt_anchors}, config,
                   {"shared_tokens": shared.count, "anchors": k})

    def check_arrays(self) -> None:
        k = int(self.config["num_anchors"])
        _check_shape(self, "src_anchors", (k, self.pair.d_src))
        _check_shape(self, "tgt_anchors", (k, self.pair.d_tgt))

    def describe(self, prompt) -> np.ndarray:
        """The relative description of each source prompt vector: [..., d_src] -> [..., K]."""
        return np.asarray(relative_description(jnp.asarray(prompt, jnp.float32),
                                               self.arrays["src_anchors"]))

    def search(self, prompts: jax.Array):
        """[N, L, d_src] -> (target prompts [N, L, d_tgt], final description loss [N, L])."""
        n, length, d = prompts.shape
        flat = prompts.reshape(n * length, d)
        desc = relative_description(flat, self.arrays["src_anchors"])
        q, loss = match_description(desc, self.arrays["tgt_anchors"],
                                    jax.random.PRNGKey(int(self.config["seed"])),
                                    steps=int(self.config["steps"]),
                                    learning_rate=float(self.config["learning_rate"]),
                                    random_init=bool(self.config["random_init"]))
        scale = self.config["tgt_mean_norm"] / max(self.config["src_mean_norm"], 1e-30)
        q = q * (jnp.linalg.norm(flat, axis=-1, keepdims=True) * scale)
        return q.reshape(n, length, -1), loss.reshape(n, length)

    def _apply(self, prompts):
        return self.search(prompts)[0]


# ---- the projector ----------------------------------------------------------------------


class ProjectorMapper(Mapper):
    """`ptransfer.projector.model.Projector` behind the mapper interface (params as .npy)."""

    kind = "projector"

    @classmethod
    def from_projector(cls, projector: Projector, source, target) -> "ProjectorMapper":
        """Wraps a trained projector; `source` / `target` Backbones must be its pair."""
        projector.check_source(source)
        projector.check_target(target)
        pair = MapperPair.of(source, target, projector.spec.prompt_length)
        if pair.d_src != projector.spec.d_src:
            raise ConfigError(f"source backbone {pair.source_backbone!r} has width {pair.d_src}, "
                              f"but the projector maps width {projector.spec.d_src}.")
        flat = flax.traverse_util.flatten_dict(jax.device_get(projector.params), sep=".")
        return cls(pair, flat, {"spec": projector.spec.to_json()}, dict(projector.summary))

    @property
    def projector(self) -> Projector:
        spec = ProjectorSpec.from_json(self.config["spec"])
        params = flax.traverse_util.unflatten_dict(
            {tuple(k.split(".")): v for k, v in self.arrays.items()})
        return Projector(spec, params, dict(self.summary))

    def check_arrays(self) -> None:
        spec = ProjectorSpec.from_json(self.config["spec"])
        if (spec.prompt_length, spec.d_src, spec.d_tgt) != (
                self.pair.prompt_length, self.pair.d_src, self.pair.d_tgt):
            raise CheckpointError("the projector spec does not match the mapper's pair.")
        want = flax.traverse_util.flatten_dict(jax.eval_shape(lambda: init_params(spec, 0)),
                                               sep=".")
        for name, leaf in want.items():
            _check_shape(self, name, tuple(leaf.shape))

    def _apply(self, prompts):
        return self.projector.project(prompts)


def _check_shape(mapper: Mapper, name: str, shape: tuple) -> None:
    got = mapper.arrays.get(name)
    if got is None or tuple(got.shape) != tuple(shape):
        raise CheckpointError(f"the {mapper.kind} mapper needs array {name!r} of shape "
                              f"{list(shape)}; it has "
                              f"{None if got is None else list(got.shape)}. Fit it again.")


MAPPERS: dict[str, type[Mapper]] = {m.kind: m for m in (V2VLin, LinComb, Relative,
                                                        ProjectorMapper)}
