"""Cross-model transfer end to end: a projector trained from the prompt bank,
applied into the bank, and TPT_MODEL (prompt tuning on the target backbone
initialized from projected prompts)."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from ptransfer import data
from ptransfer.backbones import load_backbone, resolve_backbone_spec
from ptransfer.bank import store as bank
from ptransfer.core.errors import ConfigError, close_matches_hint
from ptransfer.data import default_truncation, load_task
from ptransfer.experiments.tpt import run_pair
from ptransfer.prompts import embedding_std

PyTree = Any
from ptransfer.projector.model import Projector, ProjectorSpec, backbone_id
from ptransfer.projector.training import (
    ProjectorRecipe,
    bank_prompt_pairs,
    bank_source_prompts,
    l2_distances,
    repeat_task_batches,
    train_projector,
)

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
