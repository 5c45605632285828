"""Training a prompt projector: the objectives (distance minimizing, task tuning),
the jitted step and loop, prompt pairs from the bank, and the gin recipe.

See `ptransfer.projector.model` for the architecture and the objectives' definitions.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ptransfer.bank import store as bank
from ptransfer.core.errors import ConfigError, close_matches_hint
from ptransfer.core.sharding import check_batch_divisible, make_mesh, replicated, shard_params

PyTree = Any
from ptransfer.core import sharding
from ptransfer.projector.model import OBJECTIVES, PROJECTOR_ACTIVATIONS, Projector, PromptProjector

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
    return make_mesh(data=-1, model=1) if mesh is None else mesh


def _place_data(data: Mapping, mesh) -> dict:
    out = {}
    if "pairs" in data:
        out["pairs"] = {k: sharding.place_leading(data["pairs"][k], mesh) for k in ("source", "target")}
    if "task" in data:
        sp = np.asarray(data["task"]["source_prompt"], np.float32)
        out["task"] = {
            "source_prompt": (sharding.place_leading(sp, mesh) if sp.ndim == 3
                              else sharding.place_host_array(sp, sharding.replicated(mesh))),
            "batch": {k: sharding.place_leading(v, mesh) for k, v in data["task"]["batch"].items()},
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
