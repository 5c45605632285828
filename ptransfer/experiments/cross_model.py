"""Cross-model transfer end to end: a projector trained from the prompt bank,
applied into the bank, TPT_MODEL (prompt tuning on the target backbone
initialized from projected prompts), and the cross-model harness
(`run_cross_model`, `ptransfer transfer cross-model`): every mapper of
`ptransfer.projector.mappers` fit once per direction, the source backbone's
bank prompts mapped and scored zero-shot on the target beside no prompt, a
random prompt and the target's own prompt, in `cross_model.json`:

  format, bank, backbones {id: {id, vocab, d_model, table digest, layers}},
  tasks (ordered by type), train_tasks, task_types, groups {task: trained_on |
  unseen_same_type | other_types}, mappers, baselines, settings, intervals,
  directions [{source, target, name, prompt_shape, shared_tokens,
               mappers {name: {kind, settings, dir, fit_key, fit_on, fit_s (of
                               the fit, also when reused), reused, apply_s,
                               shared_tokens} or {kind, settings, skipped}},
               cells {mapper: {task: cell}},
               baselines {no_prompt|random_prompt|own_prompt: {task: cell}},
               relative {mapper|baseline: {task: value}},
               table {mapper|baseline: {group|all: mean relative}}, wall_s,
               with --tpt-steps: tpt_mapper, tpt {task: tpt.run_pair JSON + key,
               mapper, source_entry, mapped_prompt, settings}, tpt_wall_s}],
  run {fitted_mappers, reused_mappers, scored_cells, reused_cells, tpt_pairs_run,
       tpt_pairs_reused} (what this run did),
  wall_times {align_s, total_s}, complete

  cell = {key, metric, score, score_std, scores, prompts (bank refs),
          examples, accuracy, accuracy_interval [low, high] (Wilson 95%),
          stack_eval_s, relative}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

import tasks
from ptransfer import data, scoring
from ptransfer.backbones import load_backbone, resolve_backbone_spec
from ptransfer.bank import store as bank
from ptransfer.core import intervals
from ptransfer.core.errors import CheckpointError, ConfigError, close_matches_hint
from ptransfer.core.fileio import write_json, write_npy
from ptransfer.data import default_truncation, load_task
from ptransfer.experiments.matrix import check_servable, order_by_type
from ptransfer.experiments.tpt import run_pair
from ptransfer.projector import mappers
from ptransfer.projector.mappers import (
    LinComb,
    Mapper,
    ProjectorMapper,
    Relative,
    SharedTokens,
    V2VLin,
)
from ptransfer.projector.model import Projector, ProjectorSpec, backbone_id
from ptransfer.projector.training import (
    ProjectorRecipe,
    TrainSettings,
    bank_prompt_pairs,
    bank_source_prompts,
    l2_distances,
    repeat_task_batches,
    train_projector,
)
from ptransfer.prompts import embedding_std, random_prompt_like
from ptransfer.training.optimizer import OptimizerConfig
from ptransfer.training.trainer import TrainConfig
from tasks.registry import vocab_key

log = logging.getLogger(__name__)

# ---- end to end: train from the bank, apply into the bank, TPT_MODEL ---------------


BATCH_KEYS = ("inputs", "inputs_mask", "targets", "targets_mask")


def task_batches(task_name: str, target, batch_size: int, lengths: Mapping[str, int], *,
                 seed: int = 0, data_dir: str | None = None, split: str = "train") -> Iterator[dict]:
    """Endless training batches of `task_name` for the target backbone (the trainer's data path)."""
    task, _ = load_task(task_name, target, data_dir)
    for batch in data.iterate_batches(task, split, batch_size, lengths, seed=seed,
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
    name = bank.safe_name(os.path.basename(os.path.normpath(projector_dir)), default="projector")
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
    Returns the pair JSON of `tpt.run_pair` (curves of both runs per seed,
    convergence / comparable-result speedups from `transfer.speedups`) plus the
    projector, source entry and projected entry.
    """
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


# ---- the cross-model harness: every mapper x target task x direction ---------------

MAPPER_NAMES = ("v2v-lin", "lin-comb", "lin-comb-nn", "relative", "projector")
BASELINES = ("no_prompt", "random_prompt", "own_prompt")
GROUPS = ("trained_on", "unseen_same_type", "other_types")
RESULT_FILE = "cross_model.json"
# Bank entries written by a mapper (not prompt-tuned on their backbone): never used
# as a backbone's own prompt nor mapped again.
MAPPED_KINDS = frozenset({"projected", "recycled", "random", "mapped"})


@dataclasses.dataclass(frozen=True)
class CrossModelConfig:
    """What `ptransfer transfer cross-model` runs (flags of the command).

    tasks:        target tasks: each source prompt of task T is mapped and scored on T
    train_tasks:  the projector's distance-minimizing tasks (prompt pairs from the bank)
    mappers:      names from MAPPER_NAMES (`lin-comb-nn` = non-negative lin-comb)
    both_directions: also target -> source
    The rest: evaluation (as `transfer matrix`) and each mapper's settings.
    """

    tasks: tuple[str, ...]
    train_tasks: tuple[str, ...] = ()
    mappers: tuple[str, ...] = MAPPER_NAMES
    both_directions: bool = False
    split: str = "validation"
    eval_examples: int | None = 256
    input_length: int = 128
    target_length: int = 16
    batch_size: int = 32
    prompts_per_call: int = 4           # as scoring.Scorer (speed only)
    metric: str | None = None
    data_dir: str | None = None
    seed: int = 0
    lin_comb_tokens: int | None = None
    lin_comb_iterations: int = 500
    relative_anchors: int = 4096
    relative_steps: int = 300
    relative_learning_rate: float = 0.01
    projector_hidden: int = 768
    projector_activation: str = "tanh"
    projector_steps: int = 1000
    projector_learning_rate: float = 1e-3
    tpt_steps: int = 0                  # > 0: TPT_MODEL from the best mapper (see run_tpt_model)
    tpt_tasks: tuple[str, ...] = ()     # () = every task
    tpt_seeds: tuple[int, ...] = (0,)
    tpt_eval_every: int = 0             # 0: tpt_steps // 5 (at least 1)
    tpt_init: str = "vocab"             # the usual init of vanilla PT
    tpt_batch_size: int = 8
    tpt_learning_rate: float = 0.3

    def __post_init__(self):
        for name in ("tasks", "train_tasks", "mappers", "tpt_tasks", "tpt_seeds"):
            object.__setattr__(self, name, tuple(dict.fromkeys(getattr(self, name))))
        outside = [t for t in self.tpt_tasks if t not in self.tasks]
        if outside:
            raise ConfigError(f"TPT task(s) {', '.join(outside)} are not among --tasks "
                              f"({', '.join(self.tasks)}); TPT_MODEL starts from their mapped "
                              "prompts, so add them to --tasks.")
        if self.tpt_steps < 0 or (self.tpt_steps and not self.tpt_seeds):
            raise ConfigError("--tpt-steps must be >= 0 and TPT needs at least one seed.")
        if not self.tasks:
            raise ConfigError("cross-model transfer needs at least one target task (--tasks).")
        for t in self.tasks + self.train_tasks:
            tasks.get_spec(t)  # unknown names: ConfigError with close matches
        unknown = [m for m in self.mappers if m not in MAPPER_NAMES]
        if unknown or not self.mappers:
            raise ConfigError(f"unknown mapper {unknown[0] if unknown else ''!r}."
                              + close_matches_hint(unknown[0] if unknown else "", MAPPER_NAMES))

    def tpt_settings(self) -> dict:
        return {"steps": self.tpt_steps, "seeds": list(self.tpt_seeds),
                "eval_every": self.tpt_eval_every or max(1, self.tpt_steps // 5),
                "init": self.tpt_init, "batch_size": self.tpt_batch_size,
                "learning_rate": self.tpt_learning_rate, "eval_examples": self.eval_examples,
                "input_length": self.input_length, "target_length": self.target_length,
                "metric": self.metric, "data_dir": self.data_dir}

    def eval_settings(self) -> dict:
        return {k: getattr(self, k) for k in ("split", "eval_examples", "input_length",
                                              "target_length", "metric", "data_dir")}

    def mapper_settings(self, name: str) -> dict:
        """The settings a mapper is fit with (part of its fit key)."""
        if name in ("lin-comb", "lin-comb-nn"):
            return {"num_tokens": self.lin_comb_tokens, "non_negative": name == "lin-comb-nn",
                    "iterations": self.lin_comb_iterations}
        if name == "relative":
            return {"num_anchors": self.relative_anchors, "steps": self.relative_steps,
                    "learning_rate": self.relative_learning_rate, "seed": self.seed}
        if name == "projector":
            return {"objective": "distance", "tasks": list(self.train_tasks),
                    "hidden": self.projector_hidden, "activation": self.projector_activation,
                    "steps": self.projector_steps, "learning_rate": self.projector_learning_rate,
                    "seed": self.seed}
        return {}


def task_groups(task_names: Sequence[str], train_tasks: Sequence[str]) -> dict[str, str]:
    """task -> trained_on | unseen_same_type | other_types (types of `tasks.get_spec`)."""
    train_types = {tasks.get_spec(t).type for t in train_tasks}
    return {t: ("trained_on" if t in train_tasks else
                "unseen_same_type" if tasks.get_spec(t).type in train_types else "other_types")
            for t in task_names}


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a, np.float32)
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]


def backbone_key(backbone) -> dict:
    """What identifies a backbone's embeddings: id, vocabulary key, width and a digest
    of every k-th embedding row (k = V // 1024), so another checkpoint gets another key."""
    table = backbone.embedding_table(backbone.params)
    step = max(1, int(table.shape[0]) // 1024)
    return {"id": backbone.name, "vocab": vocab_key(backbone.vocab), "d_model": backbone.d_model,
            "table": _digest([np.asarray(table[::step], np.float32)])}


def trained_prompts(bank_dir: str, backbone) -> dict[str, list[tuple[bank.BankEntry, np.ndarray]]]:
    """task -> [(entry, prompt [L, D])] of the prompts tuned on `backbone` (mapped entries
    left out); ConfigError when the bank holds none or one has another width."""
    entries = [e for e in bank.list_entries(bank_dir, backbone.name)
               if (e.meta.get("provenance") or {}).get("kind") not in MAPPED_KINDS]
    if not entries:
        held = sorted({e.backbone for e in bank.list_entries(bank_dir)})
        raise ConfigError(f"the bank {bank_dir!r} holds no prompt tuned on backbone "
                          f"{backbone.name!r} (it holds: {', '.join(held) or 'nothing'}); "
                          "cross-model transfer needs bank prompts of both backbones: "
                          "prompt-tune the tasks on it first (`ptransfer train`).")
    out: dict[str, list] = {}
    for e in entries:
        prompt = e.read()[0]
        if prompt.shape[-1] != backbone.d_model:
            raise ConfigError(f"bank prompt {e.ref} has width {prompt.shape[-1]}, but backbone "
                              f"{backbone.name!r} has d_model {backbone.d_model}.")
        out.setdefault(e.task, []).append((e, prompt))
    return out


def _reversed(shared: SharedTokens) -> SharedTokens:
    """The same aligned tokens seen from the other side (target-id order)."""
    order = np.argsort(shared.tgt_ids, kind="stable")
    return SharedTokens(shared.tgt_ids[order], shared.src_ids[order], shared.tgt_table,
                        shared.src_table)


def _direction_dir(a, b) -> str:
    return f"{bank.safe_name(a.name)}_to_{bank.safe_name(b.name)}"


def _fit_mapper(name: str, a, b, length: int, shared, cfg: CrossModelConfig, bank_dir: str,
                scratch: str) -> Mapper:
    if name == "v2v-lin":
        return V2VLin.fit(a, b, length, shared=shared())
    if name in ("lin-comb", "lin-comb-nn"):
        return LinComb.fit(a, b, length, shared=shared(), num_tokens=cfg.lin_comb_tokens,
                           non_negative=name == "lin-comb-nn",
                           iterations=cfg.lin_comb_iterations)
    if name == "relative":
        return Relative.fit(a, b, length, shared=shared(), num_anchors=cfg.relative_anchors,
                            steps=cfg.relative_steps, learning_rate=cfg.relative_learning_rate,
                            seed=cfg.seed)
    recipe = ProjectorRecipe(hidden=cfg.projector_hidden, activation=cfg.projector_activation,
                             settings=TrainSettings(objective="distance",
                                                    steps=cfg.projector_steps,
                                                    learning_rate=cfg.projector_learning_rate,
                                                    seed=cfg.seed))
    with tempfile.TemporaryDirectory(prefix=".projector-", dir=scratch) as tmp:
        projector = train_from_bank(bank_dir, a.name, b.name, cfg.train_tasks, recipe,
                                    os.path.join(tmp, "projector"))
    return ProjectorMapper.from_projector(projector, a, b)


def _fit_on(name: str, mapper: Mapper, cfg: CrossModelConfig) -> dict:
    """What a mapper was fit on, in words and counts (for the JSON)."""
    s = mapper.summary
    if name == "v2v-lin":
        return {"data": "input embeddings of the shared tokens", "tokens": s.get("fit_tokens")}
    if name in ("lin-comb", "lin-comb-nn"):
        return {"data": "source / target embeddings of the first shared tokens (dictionary)",
                "tokens": mapper.config.get("num_tokens")}
    if name == "relative":
        return {"data": "cosines to shared anchor tokens (target embeddings only, no task "
                        "data)", "tokens": mapper.config.get("num_anchors")}
    return {"data": "bank prompt pairs (distance minimizing)", "tasks": list(cfg.train_tasks),
            "pairs": s.get("train_pairs"), "train_mean_l2": s.get("train_mean_l2")}


def _score_cell(key: str, results: Sequence[Mapping[str, float]], metric: str, n: int,
                refs: Sequence[str], eval_s: float) -> dict:
    """A scored cell: mean / std of `metric` over its prompts, accuracy with its interval."""
    scores = [float(r[metric]) for r in results]
    accs = [float(r["accuracy"]) for r in results if "accuracy" in r]
    accuracy = float(np.mean(accs)) if accs else None
    return {"key": key, "metric": metric, "score": float(np.mean(scores)),
            "score_std": float(np.std(scores, ddof=1)) if len(scores) > 1 else None,
            "scores": scores, "prompts": list(refs), "examples": int(n), "accuracy": accuracy,
            "accuracy_interval": _accuracy_interval(accuracy, n),
            "stack_eval_s": round(eval_s, 3)}


def _score_stack(scorer, prompts, eval_set) -> tuple[list[dict], np.ndarray | None]:
    """(metrics per prompt, argmax predictions [K, N] or None for generation tasks) of a
    stack [K, L, D] (None: the no-prompt baseline, K = 1)."""
    if not eval_set.is_classification:
        if prompts is None:
            return [scorer.evaluate(None, eval_set)], None
        return scorer.evaluate_stack(prompts, eval_set), None
    if prompts is None:
        ll = scorer.candidate_log_likelihoods(None, eval_set)[None]
    else:
        ll = scorer.candidate_log_likelihoods_stack(prompts, eval_set)  # [K, N, C]
    return [scorer.metrics_from_scores(x, eval_set) for x in ll], np.argmax(ll, axis=-1)


def _accuracy_interval(accuracy: float | None, n: int) -> list[float] | None:
    """Wilson 95% interval (percent) of an accuracy (percent, seeds averaged) on n examples."""
    if accuracy is None or n <= 0:
        return None
    correct = min(max(accuracy * n / 100.0, 0.0), float(n))
    return list(intervals.wilson_interval(correct, n))


def _previous_cells(path: str) -> dict[str, dict]:
    """key -> cell of an earlier cross_model.json at `path` (none if absent or unreadable)."""
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return {}
    out = {}
    for d in old.get("directions", []):
        for per_task in list(d.get("cells", {}).values()) + list(d.get("baselines", {}).values()):
            for cell in per_task.values():
                if isinstance(cell, dict) and "key" in cell:
                    out[cell["key"]] = cell
        for pair in d.get("tpt", {}).values():
            if isinstance(pair, dict) and "key" in pair:
                out[pair["key"]] = pair
    return out


def _group_means(relative: Mapping[str, float | None], groups: Mapping[str, str]) -> dict:
    out = {}
    for g in GROUPS + ("all",):
        vals = [v for t, v in relative.items() if v is not None and g in ("all", groups[t])]
        out[g] = float(np.mean(vals)) if vals else None
    return out


def run_cross_model(bank_dir: str, source, target, cfg: CrossModelConfig, out_dir: str, *,
                    specs: Mapping[str, str] | None = None,
                    base: TrainConfig | Mapping[str, TrainConfig] | None = None,
                    pt_model_dir: Callable[[str, str, int], str] | None = None) -> dict:
    """Fits every mapper, maps the source's bank prompts of `cfg.tasks` and scores them on
    the target (and the reverse with both_directions); writes `<out>/cross_model.json`
    (returned) and each mapper under `<out>/mappers/<name>/<source>_to_<target>/`.

    Resumable: a mapper file whose fit key (pair, embeddings, settings, training
    prompts) matches is loaded instead of fit, and a cell whose key (direction,
    mapper fit key, task, evaluation settings, prompts) is in the existing JSON is
    kept; the JSON is rewritten after each target task. With `cfg.tpt_steps`,
    TPT_MODEL runs per direction from its best mapper (`run_tpt_model`); `specs`
    {backbone id: spec} then names each backbone in the runs' configs; `base` (a
    TrainConfig, or {backbone id: TrainConfig} keyed by the target) is the run they
    copy instead of the cfg.tpt_* settings, and
    `pt_model_dir(backbone id, task, seed)` the vanilla-PT model dir to reuse (the
    target's own bank run with the same settings, so only TPT trains).
    """
    t_start = time.perf_counter()
    if source.name == target.name:
        raise ConfigError(f"source and target backbone are both {source.name!r}; cross-model "
                          "transfer maps between two backbones (`transfer matrix` is for one).")
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, RESULT_FILE)
    previous = _previous_cells(path)
    backbones = {source.name: source, target.name: target}
    prompts = {name: trained_prompts(bank_dir, bb) for name, bb in backbones.items()}
    directions = [(source, target)] + ([(target, source)] if cfg.both_directions else [])
    for a, b in directions:
        missing = [t for t in cfg.tasks if t not in prompts[a.name]]
        if missing:
            raise ConfigError(f"the bank has no prompt tuned on {a.name!r} for task(s) "
                              f"{', '.join(missing)}, so there is nothing to map to "
                              f"{b.name!r}; train them first or drop them from --tasks.")
        for t in cfg.tasks:
            check_servable(b, tasks.get_spec(t))
    order = order_by_type(list(cfg.tasks))
    for a, _ in directions:
        _sources(a, prompts[a.name], order)  # one prompt shape per direction, checked up front
    keys = {name: backbone_key(bb) for name, bb in backbones.items()}
    groups = task_groups(order, cfg.train_tasks)
    result = {
        "format": "ptransfer-cross-model", "bank": os.path.abspath(bank_dir),
        "backbones": {n: {**keys[n], "layers": getattr(bb, "num_layers", None)}
                      for n, bb in backbones.items()},
        "tasks": order, "train_tasks": list(cfg.train_tasks),
        "task_types": {t: tasks.get_spec(t).type for t in order}, "groups": groups,
        "mappers": list(cfg.mappers), "baselines": list(BASELINES),
        "settings": dataclasses.asdict(cfg),
        "intervals": {"of": "accuracy", "method": "wilson (ptransfer.core.intervals)",
                      "level": 0.95,
                      "n": "evaluation examples of the task (seeds averaged first)"},
        "relative_performance": "score / score of the target's own bank prompt(s) of the task",
        "directions": [], "complete": False,
    }
    run = {"fitted_mappers": [], "reused_mappers": [], "scored_cells": 0, "reused_cells": 0,
           "tpt_pairs_run": 0, "tpt_pairs_reused": 0}
    aligned: dict[str, SharedTokens] = {}
    align_s = [0.0]

    def shared_for(a, b):
        def get():
            if not aligned:
                t = time.perf_counter()
                aligned[source.name] = SharedTokens.of(source, target)
                align_s[0] = time.perf_counter() - t
                log.info("cross-model: %d shared tokens between %s and %s (%.1fs)",
                         aligned[source.name].count, source.name, target.name, align_s[0])
            if a.name not in aligned:
                aligned[a.name] = _reversed(aligned[source.name])
            return aligned[a.name]
        return get

    for a, b in directions:
        t = time.perf_counter()
        direction, fitted = _run_direction(a, b, bank_dir, cfg, out_dir, prompts, keys, order,
                                           groups, previous, run, shared_for(a, b), result, path)
        if direction["shared_tokens"] is None:
            direction["shared_tokens"] = shared_for(a, b)().count
        direction["wall_s"] = round(time.perf_counter() - t, 3)
        if cfg.tpt_steps:
            t = time.perf_counter()
            run_tpt_model(direction, fitted, a, b, prompts[a.name], cfg, out_dir, previous, run,
                          (specs or {}).get(b.name, b.name),
                          base=base.get(b.name) if isinstance(base, Mapping) else base,
                          pt_model_dir=pt_model_dir)
            direction["tpt_wall_s"] = round(time.perf_counter() - t, 3)
            write_json(path, result)
    result["complete"] = True
    result["run"] = run
    result["wall_times"] = {"align_s": round(align_s[0], 3),
                            "total_s": round(time.perf_counter() - t_start, 3)}
    write_json(path, result)
    return result


def _sources(a, prompts_a, order):
    """[(entry, prompt)] of `a` to map, in task order, and their stack [N, L, d]
    (ConfigError when their shapes differ)."""
    sources = [(e, p) for t in order for e, p in prompts_a[t]]
    shapes = {e.ref: tuple(p.shape) for e, p in sources}
    if len(set(shapes.values())) > 1:
        listing = "; ".join(f"{ref}: {list(s)}" for ref, s in shapes.items())
        raise ConfigError(f"the prompts of {a.name!r} to map have different shapes ({listing}); "
                          "a mapper serves one prompt length: choose tasks of one length.")
    return sources, np.stack([p for _, p in sources])


def _run_direction(a, b, bank_dir, cfg, out_dir, prompts, keys, order, groups, previous, run,
                   shared, result, path) -> tuple[dict, dict[str, Mapper]]:
    """One direction a -> b of `run_cross_model` (see there): (its JSON, fitted mappers)."""
    sources, stack = _sources(a, prompts[a.name], order)
    length = int(stack.shape[1])
    pair_key = {"source": keys[a.name], "target": keys[b.name], "prompt_length": length}
    direction = {"source": a.name, "target": b.name, "name": f"{a.name}->{b.name}",
                 "prompt_shape": list(stack.shape[1:]), "shared_tokens": None,
                 "mappers": {}, "cells": {}, "baselines": {k: {} for k in BASELINES}}
    result["directions"].append(direction)  # visible in the partial JSON written below

    fitted: dict[str, Mapper] = {}
    for name in cfg.mappers:
        info = {"kind": name.replace("-nn", ""), "settings": cfg.mapper_settings(name)}
        if name == "projector":
            lacking = [t for t in cfg.train_tasks
                       if t not in prompts[a.name] or t not in prompts[b.name]]
            if not cfg.train_tasks or lacking:
                info["skipped"] = ("no --train-tasks" if not cfg.train_tasks else
                                   f"no prompt pairs on both backbones for {', '.join(lacking)}")
                log.warning("cross-model %s: projector skipped (%s)", direction["name"],
                            info["skipped"])
                direction["mappers"][name] = info
                continue
            pairs = [p for t in cfg.train_tasks for bb in (a, b) for _, p in prompts[bb.name][t]]
            info["settings"] = {**info["settings"], "pairs_digest": _digest(pairs)}
        fit_key = _fingerprint({"mapper": name, **pair_key, **info["settings"]})
        directory = os.path.join(out_dir, "mappers", name, _direction_dir(a, b))
        mapper, t = None, time.perf_counter()
        if os.path.isfile(os.path.join(directory, mappers.SPEC_FILE)):
            try:
                loaded = mappers.load(directory)
                if loaded.summary.get("fit_key") == fit_key:
                    mapper = loaded
            except CheckpointError as e:
                log.warning("cross-model: refitting %s (%s)", directory, e)
        reused = mapper is not None
        if not reused:
            mapper = _fit_mapper(name, a, b, length, shared, cfg, bank_dir, out_dir)
            mapper.summary.update({"fit_key": fit_key, "fit_s": round(time.perf_counter() - t, 3)})
            mapper.save(directory, overwrite=True)
            run["fitted_mappers"].append(f"{direction['name']}:{name}")
        else:
            run["reused_mappers"].append(f"{direction['name']}:{name}")
        fitted[name] = mapper
        info.update({"dir": directory, "fit_key": fit_key, "fit_on": _fit_on(name, mapper, cfg),
                     "fit_s": mapper.summary.get("fit_s"), "reused": reused,
                     "shared_tokens": mapper.summary.get("shared_tokens")})
        if direction["shared_tokens"] is None and info["shared_tokens"] is not None:
            direction["shared_tokens"] = int(info["shared_tokens"])
        direction["mappers"][name] = info

    mapped: dict[str, np.ndarray] = {}

    def mapped_prompts(name):
        if name not in mapped:
            t = time.perf_counter()
            mapped[name] = fitted[name].apply(stack, source=a, target=b)
            direction["mappers"][name]["apply_s"] = round(time.perf_counter() - t, 3)
        return mapped[name]

    own_all = [p for t in prompts[b.name] for _, p in prompts[b.name][t]]
    by_shape: dict[tuple, list] = {}
    for p in own_all:
        by_shape.setdefault(tuple(p.shape), []).append(p)
    shape = (length, b.d_model) if (length, b.d_model) in by_shape else \
        max(by_shape, key=lambda s: len(by_shape[s]))
    random_prompt = random_prompt_like(np.stack(by_shape[shape]), cfg.seed)
    scorer = None
    evals = cfg.eval_settings()
    for t in order:
        idx = [i for i, (e, _) in enumerate(sources) if e.task == t]
        refs = [sources[i][0].ref for i in idx]
        own = prompts[b.name].get(t, [])
        base = {"direction": direction["name"], "task": t, "eval": evals, **pair_key}
        want = {}  # (section, name) -> (key, prompts [k, L, D] or None, refs)
        want[("baselines", "no_prompt")] = (_fingerprint({**base, "cell": "no_prompt"}), None, [])
        want[("baselines", "random_prompt")] = (
            _fingerprint({**base, "cell": "random", "prompt": _digest([random_prompt])}),
            random_prompt[None], ["random"])
        if own:
            want[("baselines", "own_prompt")] = (
                _fingerprint({**base, "cell": "own", "prompts": _digest([p for _, p in own])}),
                np.stack([p for _, p in own]), [e.ref for e, _ in own])
        for name, m in fitted.items():
            want[("cells", name)] = (
                _fingerprint({**base, "cell": name, "fit_key": m.summary["fit_key"],
                              "prompts": _digest(stack[idx])}), None, refs)
        todo = {k: v for k, v in want.items() if v[0] not in previous}
        for (section, name), (key, _, _) in want.items():
            if (section, name) not in todo:
                direction[section].setdefault(name, {})[t] = previous[key]
                run["reused_cells"] += 1
        if todo:
            if scorer is None:
                scorer = scoring.Scorer(b, batch_size=cfg.batch_size,
                                        prompts_per_call=cfg.prompts_per_call)
            task, mlm = load_task(t, b, cfg.data_dir)
            spec = tasks.get_spec(t)
            split = cfg.split if cfg.split in spec.splits and not spec.evaluation_only \
                else "validation"
            lengths = {"inputs": cfg.input_length, "targets": cfg.target_length}
            eval_set = scoring.build_eval_set(task, spec, b, split, cfg.eval_examples, lengths,
                                              truncate_inputs=default_truncation(b), mlm=mlm)
            metric = cfg.metric or eval_set.primary_metric
            parts, spans = [], {}
            for (section, name), (key, given, _) in todo.items():
                if section == "baselines" and name == "no_prompt":
                    continue
                block = given if given is not None else mapped_prompts(name)[idx]
                spans[(section, name)] = (sum(len(x) for x in parts), len(block))
                parts.append(block)
            t0 = time.perf_counter()
            results, preds = _score_stack(scorer, np.concatenate(parts) if parts else None,
                                          eval_set)
            stack_s = time.perf_counter() - t0
            for (section, name), (key, _, cell_refs) in todo.items():
                if (section, name) == ("baselines", "no_prompt"):
                    t0 = time.perf_counter()
                    rows, cell_preds = _score_stack(scorer, None, eval_set)
                    seconds = time.perf_counter() - t0
                else:
                    start, k = spans[(section, name)]
                    rows, seconds = results[start:start + k], stack_s
                    cell_preds = None if preds is None else preds[start:start + k]
                cell = _score_cell(key, rows, metric, eval_set.size, cell_refs, seconds)
                if cell_preds is not None:  # per example, for the relative-performance intervals
                    cell["predictions"] = cell_preds.tolist()
                    cell["labels"] = [int(v) for v in eval_set.labels]
                direction[section].setdefault(name, {})[t] = cell
                run["scored_cells"] += 1
            log.info("cross-model %s: %s scored (%d cells, %d examples, %.1fs)",
                     direction["name"], t, len(todo), eval_set.size, stack_s)
        _relative(direction, order, groups)
        write_json(path, result)
    return direction, fitted


def _relative(direction: dict, order: Sequence[str], groups: Mapping[str, str], *,
              seed: int = 0) -> None:
    """Fills relative performance per cell and the group means of every mapper / baseline,
    with 95% paired-bootstrap intervals where the cells carry per-example predictions
    (each task's examples resampled on their own; a group's mean over its tasks)."""
    own = direction["baselines"].get("own_prompt", {})
    rows, table_ci = {}, {}
    for section, names in (("cells", direction["cells"]), ("baselines", direction["baselines"])):
        for name, per_task in names.items():
            rel, replicates = {}, {}
            for k, t in enumerate(order):
                cell = per_task.get(t)
                if cell is None:
                    continue
                ref = own.get(t, {}).get("score")
                cell["relative"] = rel[t] = cell["score"] / ref if ref else None
                reps = _ratio_replicates(cell, own.get(t), seed + k)
                if reps is not None:
                    replicates[t] = reps
                    cell["relative_interval"] = intervals.percentile_interval(reps)
            rows[name] = rel
            table_ci[name] = {}
            for g in GROUPS + ("all",):
                ts = [t for t in rel if rel[t] is not None and g in ("all", groups[t])]
                if ts and all(t in replicates for t in ts):
                    ci = intervals.percentile_interval(
                        np.nanmean(np.stack([replicates[t] for t in ts]), axis=0))
                    table_ci[name][g] = None if ci is None else list(ci)
                else:
                    table_ci[name][g] = None
    direction["relative"] = rows
    direction["table"] = {name: _group_means(rel, groups) for name, rel in rows.items()}
    direction["table_intervals"] = table_ci


def _ratio_replicates(cell: Mapping, own: Mapping | None, seed: int) -> np.ndarray | None:
    """Bootstrap replicates [B] of cell score / own-prompt score on the same examples
    (None without per-example predictions on both sides or for other metrics)."""
    if not own or "predictions" not in cell or "predictions" not in own \
            or cell.get("labels") != own.get("labels") \
            or cell["metric"] not in intervals.BATCHED_METRICS:
        return None
    return intervals.ratio_replicates(cell["metric"], cell["labels"], cell["predictions"],
                                      own["predictions"], seed=seed)


def best_mapper(direction: Mapping) -> str | None:
    """The mapper with the highest mean relative performance over all tasks (None: none scored)."""
    scored = {m: direction["table"][m]["all"] for m in direction["cells"]
              if direction["table"].get(m, {}).get("all") is not None}
    return max(scored, key=scored.get) if scored else None


def run_tpt_model(direction: dict, fitted: Mapping[str, Mapper], a, b, source_prompts,
                  cfg: CrossModelConfig, out_dir: str, previous: Mapping[str, dict], run: dict,
                  target_spec: str, *, base: TrainConfig | None = None,
                  pt_model_dir: Callable[[str, str, int], str] | None = None) -> None:
    """TPT_MODEL on target `b`: per TPT task, vanilla PT (cfg.tpt_init) vs PT initialized from
    the best mapper's map of the source's first bank prompt of that task, with the same
    settings and seeds (`tpt.run_pair`, speedups of `experiments.speedups`). Fills
    direction["tpt"] {task: pair JSON + key, mapper, source_entry}; a pair whose key
    (mapper fit key, source prompt, settings) is in `previous` is kept. With `base`,
    both runs copy it (backbone and task replaced; TPT starts a fresh optimizer
    state, as a mapped prompt has none) and `pt_model_dir` may name vanilla PT's dir.
    """
    best = best_mapper(direction)
    direction["tpt_mapper"] = best
    direction["tpt"] = {}
    if best is None:
        log.warning("cross-model %s: no mapper scored; TPT_MODEL skipped", direction["name"])
        return
    settings = cfg.tpt_settings()
    if base is not None:
        settings = {"base": {**base.to_json(), "backbone": target_spec}, "seeds": list(cfg.tpt_seeds)}
    work = os.path.join(out_dir, "tpt", _direction_dir(a, b))
    for t in cfg.tpt_tasks or direction["cells"][best].keys():
        entry, prompt = source_prompts[t][0]
        key = _fingerprint({"tpt": direction["name"], "task": t, "mapper": best,
                            "fit_key": fitted[best].summary["fit_key"],
                            "prompt": _digest([prompt]), **settings})
        if key in previous:
            direction["tpt"][t] = previous[key]
            run["tpt_pairs_reused"] += 1
            continue
        mapped_path = os.path.join(work, "mapped", f"{best}.{t}.{entry.run}.npy")
        os.makedirs(os.path.dirname(mapped_path), exist_ok=True)
        write_npy(mapped_path, fitted[best].apply(prompt, source=a, target=b))
        run_base = dataclasses.replace(base, backbone=target_spec, task=t,
                                       model_dir=os.path.join(work, "unused")) if base else TrainConfig(
            backbone=target_spec, task=t, model_dir=os.path.join(work, "unused"),
            prompt_length=int(prompt.shape[0]), init_from=cfg.tpt_init,
            batch_size=cfg.tpt_batch_size, train_steps=cfg.tpt_steps,
            optimizer=OptimizerConfig(learning_rate=cfg.tpt_learning_rate),
            eval_every=settings["eval_every"], eval_examples=cfg.eval_examples,
            input_length=cfg.input_length, target_length=cfg.target_length,
            data_dir=cfg.data_dir, best_metric=cfg.metric, checkpoint_every=cfg.tpt_steps,
            progress=False)
        pt_dir = (None if pt_model_dir is None
                  else lambda task, seed: pt_model_dir(b.name, task, seed))
        pair = run_pair(run_base, mapped_path, f"{best}.{t}", t, list(cfg.tpt_seeds), work,
                        backbone=b, init_scheme="projected", pt_model_dir=pt_dir,
                        init_optimizer="fresh")
        pair.update({"key": key, "kind": "tpt_model", "mapper": best, "source_entry": entry.ref,
                     "source_backbone": a.name, "target_backbone": b.name,
                     "mapped_prompt": mapped_path, "settings": settings})
        direction["tpt"][t] = pair
        run["tpt_pairs_run"] += 1
