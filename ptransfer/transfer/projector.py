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

Partitioning follows the trainer's rules (`ptransfer.training.partitioning`):
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
import shutil
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ptransfer.backbones.layers import Dense, LayerNorm
from ptransfer.errors import CheckpointError, ConfigError, close_matches_hint

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
        parent = os.path.dirname(directory)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
        try:
            import orbax.checkpoint as ocp

            with ocp.StandardCheckpointer() as ckpt:
                ckpt.save(os.path.join(tmp, PARAMS_DIR), jax.device_get(self.params))
                ckpt.wait_until_finished()
            import ptransfer

            meta = {"spec": self.spec.to_json(), "summary": self.summary,
                    "ptransfer_version": ptransfer.__version__}
            with open(os.path.join(tmp, SPEC_FILE), "w") as f:
                json.dump(meta, f, indent=2, sort_keys=True)
            if os.path.exists(directory):
                old = directory + f".old-{os.getpid()}"
                os.replace(directory, old)
                os.replace(tmp, directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, directory)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
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


# ---- objectives ----------------------------------------------------------------


def distance_loss(module: PromptProjector, params, source, target) -> jax.Array:
    """Mean over pairs of ||Proj(source) - target||^2 / (L*d_tgt).

    source [N, L, d_src], target [N, L, d_tgt] -> scalar float32.
    """
    diff = module.apply({"params": params}, source) - target.astype(jnp.float32)
    return jnp.mean(jnp.square(diff))


def l2_distances(projected, target) -> np.ndarray:
    """||projected_i - target_i|| on flattened prompts: [N, L, D] x2 -> [N]."""
    d = np.asarray(projected, np.float64) - np.asarray(target, np.float64)
    return np.sqrt(np.sum(np.square(d.reshape(d.shape[0], -1)), axis=-1))


def task_loss(module: PromptProjector, params, target_ll: Callable, target_params,
              source_prompt, batch) -> jax.Array:
    """Mean per-token NLL of the batch's targets on the frozen target backbone.

    Args:
      target_ll: the target backbone's `target_log_likelihood(params, prompt, batch)`.
      source_prompt: [L, d_src] (shared) or [B, L, d_src] (one per example).
      batch: the shared batch layout (inputs, inputs_mask, targets, targets_mask).
    """
    prompt = module.apply({"params": params}, source_prompt)  # [(B,) L, d_tgt]
    ll = target_ll(target_params, prompt, batch)               # [B]
    tokens = jnp.maximum(jnp.sum(batch["targets_mask"]), 1).astype(jnp.float32)
    return -jnp.sum(ll) / tokens


# ---- training ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How the projector is trained (optax AdamW, constant lr after warmup)."""

    objective: str = "distance"     # distance | task | both
    steps: int = 1000
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 0
    schedule: str = "constant"      # constant | cosine (decays to 0 at `steps`)
    clip_norm: float | None = 1.0
    distance_weight: float = 1.0    # weight of the distance term in "both"
    pair_batch_size: int = 0        # distance pairs per step; 0 = all pairs
    seed: int = 0
    log_every: int = 50

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown projector objective {self.objective!r}."
                              + close_matches_hint(self.objective, OBJECTIVES))
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"projector schedule {self.schedule!r}: use 'constant' or 'cosine'.")
        if self.steps < 0 or self.learning_rate <= 0:
            raise ConfigError(f"projector steps must be >= 0 and learning_rate > 0; got "
                              f"steps={self.steps}, learning_rate={self.learning_rate}.")

    def learning_rate_schedule(self) -> optax.Schedule:
        """Linear warmup over `warmup_steps`, then constant or cosine decay to 0."""
        rest = max(self.steps - self.warmup_steps, 1)
        after = (optax.constant_schedule(self.learning_rate) if self.schedule == "constant"
                 else optax.cosine_decay_schedule(self.learning_rate, rest))
        if self.warmup_steps <= 0:
            return after
        return optax.join_schedules(
            [optax.linear_schedule(0.0, self.learning_rate, self.warmup_steps), after],
            [self.warmup_steps])

    def optimizer(self) -> optax.GradientTransformation:
        lr = self.learning_rate_schedule()
        opt = optax.adamw(lr, weight_decay=self.weight_decay)
        if self.clip_norm:
            opt = optax.chain(optax.clip_by_global_norm(self.clip_norm), opt)
        return opt


@dataclasses.dataclass
class PromptPairs:
    """Paired prompts of the same tasks: source [N, L, d_src], target [N, L, d_tgt]."""

    source: np.ndarray
    target: np.ndarray
    tasks: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.source = np.asarray(self.source, np.float32)
        self.target = np.asarray(self.target, np.float32)
        if self.source.ndim != 3 or self.target.ndim != 3 or len(self.source) != len(self.target):
            raise ConfigError(f"prompt pairs need source [N, L, d_src] and target [N, L, d_tgt] "
                              f"with the same N; got {self.source.shape} and {self.target.shape}.")
        if len(self.source) == 0:
            raise ConfigError("no prompt pairs for distance minimizing; train prompts of the "
                              "same tasks on both backbones first.")


def make_train_step(module: PromptProjector, optimizer: optax.GradientTransformation,
                    target_ll: Callable | None, distance_weight: float = 1.0):
    """The jitted step (params, opt_state, target_params, data) -> (params, opt_state, terms).

    `data` holds "pairs" ({"source", "target"}) for the distance term and/or
    "task" ({"source_prompt", "batch"}) for the task term. Only `params` is
    differentiated; `target_params` is read-only (never donated).
    """

    def loss_fn(params, target_params, data):
        terms = {}
        total = jnp.float32(0.0)
        if "task" in data:
            terms["task"] = task_loss(module, params, target_ll, target_params,
                                      data["task"]["source_prompt"], data["task"]["batch"])
            total = total + terms["task"]
        if "pairs" in data:
            terms["distance"] = distance_loss(module, params, data["pairs"]["source"],
                                              data["pairs"]["target"])
            total = total + (distance_weight if "task" in data else 1.0) * terms["distance"]
        terms["loss"] = total
        return total, terms

    def step(params, opt_state, target_params, data):
        (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, target_params, data)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, terms

    return jax.jit(step, donate_argnums=(0, 1))


def _mesh_or_default(mesh):
    from ptransfer.training.partitioning import make_mesh

    return make_mesh(data=-1, model=1) if mesh is None else mesh


def _place_leading(x, mesh):
    """Arrays with a leading batch dimension go over 'data' when it divides; else replicated."""
    from ptransfer.training.partitioning import batch_sharding, replicated

    x = np.asarray(x)
    if x.ndim >= 1 and x.shape[0] % mesh.shape["data"] == 0:
        return jax.device_put(x, batch_sharding(mesh))
    return jax.device_put(x, replicated(mesh))


def _place_data(data: Mapping, mesh) -> dict:
    from ptransfer.training.partitioning import replicated

    out = {}
    if "pairs" in data:
        out["pairs"] = {k: _place_leading(data["pairs"][k], mesh) for k in ("source", "target")}
    if "task" in data:
        sp = np.asarray(data["task"]["source_prompt"], np.float32)
        out["task"] = {
            "source_prompt": (_place_leading(sp, mesh) if sp.ndim == 3
                              else jax.device_put(sp, replicated(mesh))),
            "batch": {k: _place_leading(v, mesh) for k, v in data["task"]["batch"].items()},
        }
    return out


def _pair_batches(pairs: PromptPairs, batch_size: int, seed: int) -> Iterator[dict]:
    """Endless minibatches of pairs (all pairs every step when batch_size covers them)."""
    n = len(pairs.source)
    if batch_size <= 0 or batch_size >= n:
        while True:
            yield {"source": pairs.source, "target": pairs.target}
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            yield {"source": pairs.source[idx], "target": pairs.target[idx]}


def train_projector(projector: Projector, settings: TrainSettings, *,
                    pairs: PromptPairs | None = None,
                    task_data: Iterable[Mapping] | None = None,
                    target=None, mesh=None,
                    log: Callable[[dict], None] | None = None) -> Projector:
    """Trains `projector` and returns a new Projector with the trained params.

    Args:
      pairs: prompt pairs for the distance term (objective distance / both).
      task_data: iterable of {"source_prompt": [L, d_src] or [B, L, d_src],
        "batch": shared batch layout} for the task term (objective task / both);
        every item must have the same shapes (the step is compiled once).
      target: the frozen target Backbone (objective task / both; also checked
        against the projector's target id).
      mesh: a (data, model) mesh; None = all local devices on 'data'.
      log: called with {"step", "loss", "task"?, "distance"?} every `log_every` steps.
    """
    from ptransfer.training.partitioning import (check_batch_divisible, replicated,
                                                 shard_params)

    objective = settings.objective
    needs_task = objective in ("task", "both")
    needs_pairs = objective in ("distance", "both")
    if needs_pairs:
        if pairs is None:
            raise ConfigError(f"objective {objective!r} needs prompt pairs for distance minimizing.")
        projector.check_source_prompt(pairs.source, "source prompts of the pairs")
        if pairs.target.shape[1:] != (projector.spec.prompt_length, projector.spec.d_tgt):
            raise ConfigError(
                f"target prompts of the pairs have shape {pairs.target.shape[1:]}, but the "
                f"projector outputs [{projector.spec.prompt_length}, {projector.spec.d_tgt}] for "
                f"{projector.spec.target_backbone!r}; use that backbone's prompts of the same length.")
    if needs_task:
        if task_data is None or target is None:
            raise ConfigError(f"objective {objective!r} needs task batches and the target backbone.")
    if target is not None:
        projector.check_target(target)

    mesh = _mesh_or_default(mesh)
    module = projector.spec.module()
    optimizer = settings.optimizer()
    step_fn = make_train_step(module, optimizer,
                              target.target_log_likelihood if needs_task else None,
                              settings.distance_weight)

    rep = replicated(mesh)
    # From host copies: the step donates its params, and the caller's projector keeps its own.
    params = jax.device_put(jax.device_get(projector.params), rep)
    opt_state = jax.device_put(optimizer.init(params), rep)
    target_params = (shard_params(target.params, target.logical_axes(), mesh)
                     if needs_task else None)

    pair_iter = _pair_batches(pairs, settings.pair_batch_size, settings.seed) if needs_pairs else None
    task_iter = iter(task_data) if needs_task else None
    history = []
    t0 = time.time()
    for step in range(1, settings.steps + 1):
        data = {}
        if needs_pairs:
            data["pairs"] = next(pair_iter)
        if needs_task:
            try:
                item = next(task_iter)
            except StopIteration:
                raise ConfigError(f"task batches ran out at projector step {step} of "
                                  f"{settings.steps}; use a repeating batch iterator.") from None
            check_batch_divisible(int(np.shape(item["batch"]["targets"])[0]), mesh)
            data["task"] = item
        params, opt_state, terms = step_fn(params, opt_state, target_params,
                                           _place_data(data, mesh))
        if step == settings.steps or (settings.log_every and step % settings.log_every == 0):
            row = {"step": step, **{k: float(v) for k, v in terms.items()}}
            if not np.isfinite(row["loss"]):
                raise ConfigError(f"projector loss became {row['loss']} at step {step}; lower the "
                                  "learning rate (or enable clip_norm).")
            history.append(row)
            if log is not None:
                log(row)
    summary = {"objective": objective, "steps": settings.steps,
               "settings": dataclasses.asdict(settings), "history": history,
               "train_seconds": round(time.time() - t0, 3)}
    if pairs is not None:
        summary["tasks"] = sorted(set(pairs.tasks))
    return Projector(projector.spec, jax.device_get(params), summary)


def repeat_task_batches(source_prompts: Mapping[str, np.ndarray],
                        batches: Mapping[str, Iterable[Mapping]]) -> Iterator[dict]:
    """Round-robin over tasks: {"source_prompt": that task's prompt, "batch": its next batch}.

    `batches[task]` must be re-iterable or endless; it is restarted when exhausted.
    """
    tasks = sorted(source_prompts)
    missing = [t for t in tasks if t not in batches]
    if missing:
        raise ConfigError(f"no target-task batches for {', '.join(missing)}.")
    iters = {t: iter(batches[t]) for t in tasks}
    while True:
        for t in tasks:
            try:
                batch = next(iters[t])
            except StopIteration:
                iters[t] = iter(batches[t])
                try:
                    batch = next(iters[t])
                except StopIteration:
                    raise ConfigError(f"task {t!r} yields no batches (empty split?).") from None
            yield {"source_prompt": source_prompts[t], "batch": batch}


# ---- data from the prompt bank ---------------------------------------------------


def bank_prompt_pairs(bank_dir: str, source_backbone: str, target_backbone: str,
                      tasks: Iterable[str]) -> PromptPairs:
    """Same-task prompt pairs from the bank for distance minimizing.

    Per task: runs with a seed present on both backbones are paired by seed;
    when no seed is shared, every source run is paired with every target run
    (all are prompts of the same task). A task without a complete entry on
    either backbone is a ConfigError naming every such task and backbone.
    """
    from ptransfer.transfer import bank

    tasks = list(dict.fromkeys(tasks))
    if not tasks:
        raise ConfigError("no tasks given for distance minimizing; pass --tasks.")
    found = {}
    for bb in (source_backbone, target_backbone):
        found[bb] = {t: bank.list_entries(bank_dir, bb, t) for t in tasks}
    missing = [(t, bb) for t in tasks for bb in (source_backbone, target_backbone)
               if not found[bb][t]]
    if missing:
        by_task: dict[str, list[str]] = {}
        for t, bb in missing:
            by_task.setdefault(t, []).append(bb)
        listed = "; ".join(f"{t} (no prompt on {', '.join(bbs)})" for t, bbs in by_task.items())
        raise ConfigError(
            f"distance minimizing needs prompts of the same tasks on both backbones; missing "
            f"pairs for task(s): {listed}. Train those prompts first (`ptransfer train`) or drop "
            f"the tasks from --tasks.")
    src, tgt, names = [], [], []
    for t in tasks:
        s_entries, t_entries = found[source_backbone][t], found[target_backbone][t]
        s_seeds = {e.meta.get("seed"): e for e in s_entries if e.meta.get("seed") is not None}
        t_seeds = {e.meta.get("seed"): e for e in t_entries if e.meta.get("seed") is not None}
        shared = sorted(set(s_seeds) & set(t_seeds), key=str)
        combos = ([(s_seeds[k], t_seeds[k]) for k in shared] if shared else
                  [(a, b) for a in s_entries for b in t_entries])
        for a, b in combos:
            src.append(a.read()[0])
            tgt.append(b.read()[0])
            names.append(t)
    shapes = {(p.shape, q.shape) for p, q in zip(src, tgt)}
    if len(shapes) > 1:
        raise ConfigError(f"bank prompts of these tasks have different shapes {sorted(shapes)}; "
                          "a projector maps one prompt length; choose runs of one length.")
    return PromptPairs(np.stack(src), np.stack(tgt), names)


def bank_source_prompts(bank_dir: str, source_backbone: str, tasks: Iterable[str]) -> dict:
    """task -> the source prompt used for task tuning: its best-scoring run (ties: first run)."""
    from ptransfer.transfer import bank

    out, missing = {}, []
    for t in dict.fromkeys(tasks):
        entries = bank.list_entries(bank_dir, source_backbone, t)
        if not entries:
            missing.append(t)
            continue
        def key(e):
            s = e.meta.get("best_score")
            return -(s if isinstance(s, (int, float)) else float("-inf"))
        out[t] = sorted(entries, key=key)[0].read()[0]
    if missing:
        raise ConfigError(f"task tuning needs a source prompt of each task on "
                          f"{source_backbone!r}; the bank has none for: {', '.join(missing)}. "
                          "Train them first (`ptransfer train`) or drop those tasks.")
    return out


# ---- gin ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProjectorRecipe:
    """Architecture + training settings of a projector run (what a gin file sets)."""

    hidden: int = 768
    activation: str = "tanh"
    batch_size: int = 8                 # target-task examples per task-tuning step
    settings: TrainSettings = TrainSettings()


@gin.configurable(module="ptransfer")
def projector_recipe(objective: str = "distance", hidden: int = 768, activation: str = "tanh",
                     steps: int = 1000, learning_rate: float = 1e-3, weight_decay: float = 1e-5,
                     warmup_steps: int = 0, schedule: str = "constant",
                     clip_norm: float | None = 1.0,
                     distance_weight: float = 1.0, pair_batch_size: int = 0,
                     batch_size: int = 8, seed: int = 0, log_every: int = 50) -> ProjectorRecipe:
    """The projector recipe from gin (gin_configs/projector/*.gin)."""
    settings = TrainSettings(objective=objective, steps=int(steps),
                             learning_rate=float(learning_rate), weight_decay=float(weight_decay),
                             warmup_steps=int(warmup_steps), schedule=schedule,
                             clip_norm=clip_norm,
                             distance_weight=float(distance_weight),
                             pair_batch_size=int(pair_batch_size), seed=int(seed),
                             log_every=int(log_every))
    if activation not in PROJECTOR_ACTIVATIONS:
        raise ConfigError(f"unknown projector activation {activation!r}; use one of "
                          f"{', '.join(PROJECTOR_ACTIVATIONS)}.")
    return ProjectorRecipe(hidden=int(hidden), activation=activation, batch_size=int(batch_size),
                           settings=settings)


# ---- end to end: train from the bank, apply into the bank, TPT_MODEL ---------------


BATCH_KEYS = ("inputs", "inputs_mask", "targets", "targets_mask")


def task_batches(task_name: str, target, batch_size: int, lengths: Mapping[str, int], *,
                 seed: int = 0, data_dir: str | None = None, split: str = "train") -> Iterator[dict]:
    """Endless training batches of `task_name` for the target backbone (the trainer's data path)."""
    from ptransfer import features
    from ptransfer.training.trainer import default_truncation, load_task

    task, _ = load_task(task_name, target, data_dir)
    for batch in features.iterate_batches(task, split, batch_size, lengths, seed=seed,
                                          truncate_inputs=default_truncation(target)):
        yield {k: batch[k] for k in BATCH_KEYS}


def train_from_bank(bank_dir: str, source_backbone: str, target, tasks: Iterable[str],
                    recipe: ProjectorRecipe, out_dir: str, *,
                    lengths: Mapping[str, int] | None = None, data_dir: str | None = None,
                    mesh=None, overwrite: bool = False,
                    log: Callable[[dict], None] | None = None) -> Projector:
    """`ptransfer project train`: a projector from `source_backbone` (bank id) to `target`.

    `target` is a Backbone (required for task / both) or, for distance
    minimizing, a bank id. Prompt length and d_src come from the bank's source
    prompts, d_tgt from the target. Saved to `out_dir` (see module docstring).
    """
    settings = recipe.settings
    tasks = list(dict.fromkeys(tasks))
    objective = settings.objective
    target_id = backbone_id(target)
    if objective in ("task", "both") and isinstance(target, str):
        raise ConfigError(f"objective {objective!r} runs the target model: give "
                          f"--target-backbone as a backbone spec (preset:, hf:, t5x:, gguf:), not "
                          f"the bank id {target!r}.")
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise ConfigError(f"{out_dir} already exists and is not empty; choose another --out or "
                          "pass --overwrite.")
    pairs = (bank_prompt_pairs(bank_dir, source_backbone, target_id, tasks)
             if objective in ("distance", "both") else None)
    sources = (bank_source_prompts(bank_dir, source_backbone, tasks)
               if objective in ("task", "both") else None)
    example = pairs.source[0] if pairs is not None else next(iter(sources.values()))
    length, d_src = int(example.shape[0]), int(example.shape[1])
    if sources is not None:
        shapes = {tuple(p.shape) for p in sources.values()}
        if len(shapes) > 1 or (pairs is not None and shapes != {tuple(pairs.source.shape[1:])}):
            raise ConfigError(f"source prompts of {', '.join(tasks)} have different shapes "
                              f"{sorted(shapes)}; a projector maps one prompt length.")
    if isinstance(target, str):
        d_tgt = int(pairs.target.shape[-1])
        scale = float(np.mean(np.std(pairs.target, axis=-1)))
    else:
        from ptransfer.prompts import embedding_std

        d_tgt = int(target.d_model)
        scale = embedding_std(target) if sources is not None else \
            float(np.mean(np.std(pairs.target, axis=-1)))
    spec = ProjectorSpec(prompt_length=length, d_src=d_src, d_tgt=d_tgt,
                         source_backbone=source_backbone, target_backbone=target_id,
                         hidden=recipe.hidden, activation=recipe.activation,
                         output_scale_init=scale)
    projector = Projector.create(spec, settings.seed)
    task_data = None
    if sources is not None:
        lengths = dict(lengths or {"inputs": 128, "targets": 16})
        streams = {t: _Restartable(task_batches, t, target, recipe.batch_size, lengths,
                                   seed=settings.seed, data_dir=data_dir) for t in sources}
        task_data = repeat_task_batches(sources, streams)
    trained = train_projector(projector, settings, pairs=pairs, task_data=task_data,
                              target=None if isinstance(target, str) else target,
                              mesh=mesh, log=log)
    trained.summary.update({"tasks": tasks, "bank": os.path.abspath(bank_dir),
                            "recipe": {"hidden": recipe.hidden, "activation": recipe.activation,
                                       "batch_size": recipe.batch_size}})
    if pairs is not None:
        final = trained.project(pairs.source)
        trained.summary["train_pairs"] = len(pairs.source)
        trained.summary["train_mean_l2"] = float(np.mean(l2_distances(final, pairs.target)))
    trained.save(out_dir, overwrite=overwrite)
    return trained


class _Restartable:
    """An iterable that calls `fn(*args, **kw)` for a fresh iterator each time."""

    def __init__(self, fn, *args, **kwargs):
        self._fn, self._args, self._kwargs = fn, args, kwargs

    def __iter__(self):
        return iter(self._fn(*self._args, **self._kwargs))


def projected_run_name(projector_dir: str, source_run: str) -> str:
    """Bank run name of a projected prompt: 'proj-<projector dir name>-<source run>'."""
    import re

    name = re.sub(r"[^A-Za-z0-9._+=@-]", "_", os.path.basename(os.path.normpath(projector_dir)))
    return f"proj-{name}-{source_run}"[:200]


def apply_to_bank(projector_dir: str, bank_dir: str, *, tasks: Iterable[str] | None = None,
                  runs: Iterable[str] | None = None, out_bank: str | None = None,
                  target=None, overwrite: bool = False) -> list[str]:
    """`ptransfer project apply`: projects the source backbone's bank prompts into the
    target backbone's part of the bank; returns the written entry paths.

    Each entry's meta records init 'projected' and provenance {kind, source_entry
    (backbone/task/run), source_path, source_backbone, projector (its directory),
    projector_objective, projector_tasks}. `target`, if given, must be the
    projector's target backbone.
    """
    from ptransfer.transfer import bank

    projector = Projector.load(projector_dir)
    spec = projector.spec
    if target is not None:
        projector.check_target(target)
    entries = bank.list_entries(bank_dir, spec.source_backbone, require=True)
    if tasks is not None:
        wanted = list(dict.fromkeys(tasks))
        have = {e.task for e in entries}
        missing = [t for t in wanted if t not in have]
        if missing:
            raise ConfigError(f"the bank has no prompt of {spec.source_backbone!r} for task(s) "
                              f"{', '.join(missing)}." + close_matches_hint(missing[0], have))
        entries = [e for e in entries if e.task in wanted]
    if runs is not None:
        wanted_runs = set(runs)
        entries = [e for e in entries if e.run in wanted_runs]
        if not entries:
            raise ConfigError(f"no bank entry of {spec.source_backbone!r} has run name in "
                              f"{sorted(wanted_runs)}.")
    written = []
    for entry in entries:
        prompt, meta, _ = entry.read()
        projector.check_source_prompt(prompt, f"bank prompt {entry.ref}")
        out = projector.project(prompt)
        new_meta = {
            "init": "projected", "steps": 0, "best_score": None, "metric": None,
            "seed": meta.get("seed"),
            "provenance": {
                "kind": "projected", "source_entry": entry.ref,
                "source_path": os.path.abspath(entry.path),
                "source_backbone": spec.source_backbone,
                "source_best_score": meta.get("best_score"), "source_metric": meta.get("metric"),
                "projector": os.path.abspath(projector_dir),
                "projector_objective": projector.summary.get("objective"),
                "projector_tasks": projector.summary.get("tasks"),
            },
        }
        written.append(bank.write_entry(out_bank or bank_dir, spec.target_backbone, entry.task,
                                        projected_run_name(projector_dir, entry.run), out,
                                        new_meta, overwrite=overwrite))
    return written


def tpt_model(base, projector_dir: str, bank_dir: str, source_ref: str, seeds, out_dir: str, *,
              backbone=None) -> dict:
    """TPT_MODEL: PT on the target initialized from a projected prompt vs vanilla PT.

    Args:
      base: the target run's TrainConfig (backbone = the projector's target).
      source_ref: a bank ref (backbone/task[/run]) of the SOURCE backbone's prompt;
        it is projected into the bank (as `apply_to_bank`) unless the bank already
        holds exactly this projector's output for it.
      seeds: PT and TPT run with the same settings and each of these seeds.
    Returns the pair JSON of `init_transfer.run_pair` (curves of both runs per seed,
    convergence / comparable-result speedups from `transfer.speedups`) plus the
    projector, source entry and projected entry.
    """
    from ptransfer.backbones import load_backbone
    from ptransfer.training.trainer import resolve_backbone_spec
    from ptransfer.transfer import bank
    from ptransfer.transfer.init_transfer import run_pair

    projector = Projector.load(projector_dir)
    if backbone is None:
        backbone = load_backbone(resolve_backbone_spec(base.backbone))
    projector.check_target(backbone)
    source = bank.resolve_ref(bank_dir, source_ref)
    projector.check_source(source.backbone)
    run = projected_run_name(projector_dir, source.run)
    path = bank.entry_dir(bank_dir, backbone.name, source.task, run)
    # Reuse the projected entry only if it is this projector's output for this prompt
    # (a projector retrained into the same directory gives a new one).
    current = bank.is_complete(path) and np.array_equal(
        bank.read_entry(path)[0], projector.project(source.read()[0]))
    if not current:
        path = apply_to_bank(projector_dir, bank_dir, tasks=[source.task], runs=[source.run],
                             target=backbone, overwrite=True)[0]
    name = f"{source.backbone}.{source.task}"
    pair = run_pair(base, path, name, base.task, list(seeds), out_dir, backbone=backbone,
                    init_scheme="projected")
    pair.update({"kind": "tpt_model", "projector": os.path.abspath(projector_dir),
                 "source_entry": source.ref, "projected_entry": os.path.abspath(path),
                 "source_backbone": source.backbone, "target_backbone": backbone.name})
    return pair
