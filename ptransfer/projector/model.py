"""The cross-model prompt projector: maps a prompt trained on a source backbone
to a prompt for a target backbone of another width.

Architecture (Su et al., 2022, Sec. 6):

    P_src [L, d_src] --flatten--> [L*d_src] --Dense(hidden)--> activation
        --Dense--> [L*d_tgt] --reshape--> [L, d_tgt] --LayerNorm over d_tgt--> P_tgt

`activation` is tanh (default, as the official code) or leaky_relu; `hidden`
defaults to 768 (the official code used 768, and 512 from T5-XXL). Source and
target prompts have the SAME length L: the flattened map mixes positions
freely, but the output is reshaped to the source's L tokens, so a projector
serves one prompt length (retrain it for another). The final LayerNorm
centers every projected token and gives all tokens one learned scale/bias
pattern (gamma, beta) over d_tgt.

Objectives (`objective` = distance | task | both):

* distance minimizing: pairs (P_src, P_tgt) of bank prompts trained on the
  same task on the two backbones; loss = mean over pairs of
  ||Proj(P_src) - P_tgt||^2 / (L * d_tgt) (the squared L2 distance per element:
  same minimizer as the L2 distance, smooth at zero). Reported as `distance`.
* task tuning: Proj(P_src) is fed to the frozen TARGET backbone and the
  target task's mean per-token NLL of the targets trains the projector. The
  target params are an argument of the jitted step and never differentiated
  (the gradient is taken w.r.t. the projector params only) and never donated.
  The source prompt may be shared by the batch ([L, d_src]) or per example
  ([B, L, d_src]).
* both: task + distance_weight * distance.

Partitioning follows the trainer's rules (`ptransfer.core.sharding`):
target params are placed by `shard_params` from the backbone's logical axes,
batches are split over 'data', and the projector's params (kernels with no
logical axis names) and optimizer state are replicated.

A trained projector is a directory:

    <dir>/projector.json   spec (source/target backbone ids and widths, L,
                           hidden, activation) + training summary
    <dir>/params/          orbax checkpoint of the projector params

`Projector.project` refuses a prompt whose width is not d_src (or whose length
is not L) and a target backbone other than the one it was trained for.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import ptransfer
from ptransfer.backbones.layers import Dense, LayerNorm
from ptransfer.core import fileio
from ptransfer.core.errors import CheckpointError, ConfigError

PyTree = Any

PROJECTOR_ACTIVATIONS: dict[str, Callable] = {
    "tanh": jnp.tanh,
    "leaky_relu": jax.nn.leaky_relu,  # negative slope 0.01, as torch's default
}
OBJECTIVES = ("distance", "task", "both")
SPEC_FILE = "projector.json"
PARAMS_DIR = "params"


# ---- the module ------------------------------------------------------------


class PromptProjector(nn.Module):
    """[..., L, d_src] -> [..., L, d_tgt] (see module docstring)."""

    prompt_length: int
    d_tgt: int
    hidden: int = 768
    activation: str = "tanh"
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, prompt: jax.Array) -> jax.Array:
        lead = prompt.shape[:-2]
        x = prompt.astype(jnp.float32).reshape(lead + (-1,))               # [..., L*d_src]
        # Axis names None: the projector is small next to the target model and
        # replicated under every rule.
        h = Dense(self.hidden, axes=(None, None), use_bias=True, name="dense_in")(x)
        h = PROJECTOR_ACTIVATIONS[self.activation](h)                     # [..., hidden]
        y = Dense(self.prompt_length * self.d_tgt, axes=(None, None), use_bias=True,
                  name="dense_out")(h)                                     # [..., L*d_tgt]
        y = y.reshape(lead + (self.prompt_length, self.d_tgt))
        y = LayerNorm(epsilon=self.epsilon, name="layer_norm")(y)          # over d_tgt
        return y


@dataclasses.dataclass(frozen=True)
class ProjectorSpec:
    """Shapes, hyper-parameters and the two backbones a projector maps between."""

    prompt_length: int
    d_src: int
    d_tgt: int
    source_backbone: str
    target_backbone: str
    hidden: int = 768
    activation: str = "tanh"
    epsilon: float = 1e-5
    # LayerNorm scale at init: the target backbone's embedding std puts the
    # first projected prompts at the scale the target model expects.
    output_scale_init: float = 1.0

    def __post_init__(self):
        if self.activation not in PROJECTOR_ACTIVATIONS:
            raise ConfigError(f"unknown projector activation {self.activation!r}; use one of "
                              f"{', '.join(PROJECTOR_ACTIVATIONS)}.")
        for name in ("prompt_length", "d_src", "d_tgt", "hidden"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"projector {name} must be positive, got {getattr(self, name)}.")

    def module(self) -> PromptProjector:
        return PromptProjector(prompt_length=self.prompt_length, d_tgt=self.d_tgt,
                               hidden=self.hidden, activation=self.activation,
                               epsilon=self.epsilon)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> "ProjectorSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def backbone_id(backbone) -> str:
    """A backbone object or id string -> its id (the bank's backbone key)."""
    return backbone if isinstance(backbone, str) else str(backbone.name)


def init_params(spec: ProjectorSpec, seed: int = 0) -> PyTree:
    """Fresh projector params (plain arrays, logical-axis boxes removed)."""
    module = spec.module()
    dummy = jnp.zeros((spec.prompt_length, spec.d_src), jnp.float32)
    params = nn.unbox(module.init(jax.random.PRNGKey(seed), dummy))["params"]
    if spec.output_scale_init != 1.0:
        params["layer_norm"]["scale"] = params["layer_norm"]["scale"] * spec.output_scale_init
    return params


# ---- the projector object ----------------------------------------------------


@dataclasses.dataclass
class Projector:
    """A projector's spec, params and (after training) its training summary."""

    spec: ProjectorSpec
    params: PyTree
    summary: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def create(cls, spec: ProjectorSpec, seed: int = 0) -> "Projector":
        return cls(spec, init_params(spec, seed))

    @classmethod
    def for_backbones(cls, source, target, prompt_length: int, *, hidden: int = 768,
                      activation: str = "tanh", seed: int = 0,
                      output_scale_init: float = 1.0) -> "Projector":
        """A fresh projector from `source` to `target` (Backbone objects)."""
        spec = ProjectorSpec(prompt_length=int(prompt_length), d_src=int(source.d_model),
                             d_tgt=int(target.d_model), source_backbone=backbone_id(source),
                             target_backbone=backbone_id(target), hidden=int(hidden),
                             activation=activation, output_scale_init=float(output_scale_init))
        return cls.create(spec, seed)

    # -- checks ---------------------------------------------------------------

    def check_source_prompt(self, prompt, what: str = "prompt") -> None:
        """Raises ConfigError unless prompt is [L, d_src] or [N, L, d_src]."""
        s = self.spec
        shape = tuple(np.shape(prompt))
        if len(shape) not in (2, 3):
            raise ConfigError(f"{what} has shape {shape}; the projector takes [L, d_src] or "
                              f"[N, L, d_src] = [{s.prompt_length}, {s.d_src}].")
        if shape[-1] != s.d_src:
            raise ConfigError(
                f"{what} has width {shape[-1]} but this projector maps prompts of width "
                f"{s.d_src} (trained from backbone {s.source_backbone!r} to "
                f"{s.target_backbone!r}); project prompts of {s.source_backbone!r} or train a "
                f"projector from the prompt's backbone.")
        if shape[-2] != s.prompt_length:
            raise ConfigError(
                f"{what} has length {shape[-2]} but this projector maps prompts of length "
                f"{s.prompt_length} (source and target lengths are equal); train a projector "
                f"for length {shape[-2]}.")

    def check_target(self, target) -> None:
        """Refuses a target backbone other than the one the projector was trained for."""
        s = self.spec
        name = backbone_id(target)
        if name != s.target_backbone:
            raise ConfigError(
                f"this projector was trained for target backbone {s.target_backbone!r}, not "
                f"{name!r}; train a projector from {s.source_backbone!r} to {name!r} "
                f"(`ptransfer project train`).")
        if not isinstance(target, str) and int(target.d_model) != s.d_tgt:
            raise ConfigError(
                f"target backbone {name!r} has d_model {target.d_model} but the projector "
                f"outputs width {s.d_tgt}; the projector does not belong to this checkpoint.")

    def check_source(self, source) -> None:
        s = self.spec
        name = backbone_id(source)
        if name != s.source_backbone:
            raise ConfigError(
                f"this projector maps prompts of backbone {s.source_backbone!r}, not {name!r}; "
                f"train a projector from {name!r} to {s.target_backbone!r}.")

    # -- use ------------------------------------------------------------------

    def project(self, prompt, target=None) -> np.ndarray:
        """Projects [L, d_src] -> [L, d_tgt] (or [N, L, d_src] -> [N, L, d_tgt]), float32.

        `target` (a Backbone or id), if given, must be the projector's target.
        """
        self.check_source_prompt(prompt)
        if target is not None:
            self.check_target(target)
        out = _apply_fn(self.spec.module())(self.params, jnp.asarray(prompt, jnp.float32))
        return np.asarray(out, np.float32)

    apply = project

    # -- persistence ----------------------------------------------------------

    def save(self, directory: str, *, overwrite: bool = False) -> str:
        """Writes spec json + orbax params atomically (temp dir, then rename)."""
        directory = os.path.abspath(directory)
        if os.path.exists(directory) and os.listdir(directory) and not overwrite:
            raise ConfigError(f"{directory} already exists and is not empty; choose another "
                              "output directory or pass --overwrite.")
        with fileio.atomic_directory(directory) as tmp:
            import orbax.checkpoint as ocp

            with ocp.StandardCheckpointer() as ckpt:
                ckpt.save(os.path.join(tmp, PARAMS_DIR), jax.device_get(self.params))
                ckpt.wait_until_finished()
            meta = {"spec": self.spec.to_json(), "summary": self.summary,
                    "ptransfer_version": ptransfer.__version__}
            fileio.atomic_write(os.path.join(tmp, SPEC_FILE), json.dumps(meta, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str) -> "Projector":
        spec_path = os.path.join(directory, SPEC_FILE)
        params_path = os.path.abspath(os.path.join(directory, PARAMS_DIR))
        if not os.path.isfile(spec_path) or not os.path.isdir(params_path):
            raise CheckpointError(
                f"{directory} is not a projector directory (needs {SPEC_FILE} and {PARAMS_DIR}/); "
                "train one with `ptransfer project train --out DIR`.")
        try:
            with open(spec_path) as f:
                meta = json.load(f)
            spec = ProjectorSpec.from_json(meta["spec"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{spec_path} is corrupt ({e}); retrain the projector.") from None
        import orbax.checkpoint as ocp

        abstract = jax.eval_shape(lambda: init_params(spec, 0))
        try:
            with ocp.StandardCheckpointer() as ckpt:
                params = ckpt.restore(params_path, abstract)
        except Exception as e:  # orbax raises several types for missing/mismatched arrays
            raise CheckpointError(f"cannot restore projector params from {params_path}: {e}. "
                                  "The directory is incomplete or was written for other shapes; "
                                  "retrain the projector.") from None
        return cls(spec, jax.device_get(params), dict(meta.get("summary") or {}))


@functools.lru_cache(maxsize=32)
def _apply_fn(module: PromptProjector):
    """One jitted apply per module config (linen modules hash by their fields)."""
    return jax.jit(lambda params, prompt: module.apply({"params": params}, prompt))
