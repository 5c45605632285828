"""The zero-shot cross-task transfer matrix.

Every bank prompt of one backbone (all seeds of every source task) is scored
on every target task with the target's own template and label words, beside
two baselines: no prompt, and a random prompt whose norm is the mean norm of
the bank prompts. Relative performance is score(S→T) / score(T→T), both
averaged over seeds; a target without its own prompt in the bank (an
evaluation-only task) has raw scores but no relative row entry.

Efficiency: the backbone is loaded and compiled once; all prompts of the
matrix form one stack `[K, L, D]` that one jitted call per eval batch scores
(`Scorer.evaluate_stack`), so swapping prompts never recompiles.

Output (`cross_task.json`): backbone, sources, targets (ordered by task type),
task_types, metric {target: name}, scores / scores_std {source: {target}},
seeds {source: [...]}, runs {source: [...]}, relative {source: {target}},
baselines {no_prompt|random_prompt: {target: score}}, baselines_relative,
eval_sizes {target: n}, split, wall_time_s.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

import tasks
from ptransfer import scoring
from ptransfer.bank import store as bank
from ptransfer.core.errors import ConfigError
from ptransfer.data import default_truncation, load_task
from ptransfer.prompts import random_prompt_like
from tasks.specs import TYPES

log = logging.getLogger(__name__)


def order_by_type(names: Sequence[str]) -> list[str]:
    """Task names grouped by task type (sentiment first, as the paper's figure), stable within."""
    return sorted(names, key=lambda n: (TYPES.index(tasks.get_spec(n).type), list(names).index(n)))


def load_bank_prompts(bank_dir: str, backbone, sources: Sequence[str] | None = None):
    """(entries, prompts [K, L, D]) for the bank prompts of `backbone`, checked to stack."""
    entries = bank.list_entries(bank_dir, backbone=backbone.name, require=True)
    if sources is not None:
        missing = sorted(set(sources) - {e.task for e in entries})
        if missing:
            raise ConfigError(f"no bank prompt of backbone {backbone.name!r} for source task(s) "
                              f"{', '.join(missing)} in {bank_dir}; train them first.")
        entries = [e for e in entries if e.task in set(sources)]
    prompts = [e.read()[0] for e in entries]
    shapes = {e.ref: tuple(p.shape) for e, p in zip(entries, prompts)}
    if len(set(shapes.values())) > 1:
        listing = "; ".join(f"{ref}: {list(s)}" for ref, s in shapes.items())
        raise ConfigError(f"bank prompts of mixed shapes cannot form one matrix ({listing}); "
                          "choose --sources whose prompts share length and width.")
    for e, p in zip(entries, prompts):
        if p.shape[-1] != backbone.d_model:
            raise ConfigError(f"bank prompt {e.ref} has width {p.shape[-1]}, but backbone "
                              f"{backbone.name!r} has d_model {backbone.d_model}; map it with "
                              "`ptransfer project apply` first.")
    return entries, np.stack(prompts).astype(np.float32)


def check_servable(backbone, spec) -> None:
    """A masked-LM backbone only ranks label words; it cannot serve generative tasks."""
    if not backbone.can_generate and not spec.is_classification:
        raise ConfigError(f"target task {spec.name!r} is {spec.type} (generative), which the "
                          f"masked-LM backbone {backbone.name!r} cannot serve; drop it from "
                          "--targets.")


def cross_task_matrix(backbone, bank_dir: str, targets: Sequence[str], *,
                      sources: Sequence[str] | None = None, split: str = "validation",
                      eval_examples: int | None = 256, input_length: int = 128,
                      target_length: int = 16, batch_size: int = 32, data_dir=None,
                      seed: int = 0, metric_name: str | None = None, progress=None) -> dict:
    """Scores every bank prompt of `backbone` on every target; returns the JSON dict above.

    `metric_name` picks the metric of every target (default: each task's primary
    metric); `split` falls back to 'validation' for a task that lacks it and for
    evaluation-only tasks (their validation split is the balanced one).
    """
    t0 = time.perf_counter()
    specs = {t: tasks.get_spec(t) for t in targets}
    for spec in specs.values():
        check_servable(backbone, spec)
    entries, stack = load_bank_prompts(bank_dir, backbone, sources)
    random_prompt = random_prompt_like(stack, seed)
    full_stack = np.concatenate([stack, random_prompt[None]])
    source_tasks = order_by_type(sorted({e.task for e in entries}))
    targets = order_by_type(list(targets))
    scorer = scoring.Scorer(backbone, batch_size=batch_size)
    lengths = {"inputs": input_length, "targets": target_length}

    per_entry: dict[str, dict[str, float]] = {e.ref: {} for e in entries}
    baselines = {"no_prompt": {}, "random_prompt": {}}
    metric, sizes = {}, {}
    for i, target in enumerate(targets):
        spec = specs[target]
        task, mlm = load_task(target, backbone, data_dir)
        # Evaluation-only tasks (e.g. rt) are scored on their balanced validation split.
        task_split = split if split in spec.splits and not spec.evaluation_only else "validation"
        eval_set = scoring.build_eval_set(task, spec, backbone, task_split, eval_examples, lengths,
                                          truncate_inputs=default_truncation(backbone), mlm=mlm)
        metric[target] = metric_name or eval_set.primary_metric
        sizes[target] = eval_set.size
        results = scorer.evaluate_stack(full_stack, eval_set)
        for e, r in zip(entries, results[:-1]):
            per_entry[e.ref][target] = float(r[metric[target]])
        baselines["random_prompt"][target] = float(results[-1][metric[target]])
        baselines["no_prompt"][target] = float(scorer.evaluate(None, eval_set)[metric[target]])
        if progress is not None:
            progress(i + 1, len(targets), target)
        log.info("matrix: target %s (%d examples) scored for %d prompts", target, eval_set.size,
                 len(full_stack))

    scores, scores_std, seeds, runs = {}, {}, {}, {}
    for s in source_tasks:
        mine = [e for e in entries if e.task == s]
        seeds[s] = [e.meta.get("seed") for e in mine]
        runs[s] = [e.run for e in mine]
        scores[s], scores_std[s] = {}, {}
        for t in targets:
            vals = [per_entry[e.ref][t] for e in mine]
            scores[s][t] = float(np.mean(vals))
            scores_std[s][t] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None

    def relative(row: dict) -> dict:
        return {t: (row[t] / scores[t][t] if t in scores and scores[t][t] else None)
                for t in targets}

    return {
        "backbone": backbone.name,
        "sources": source_tasks,
        "targets": targets,
        "task_types": {t: tasks.get_spec(t).type for t in sorted(set(targets) | set(source_tasks))},
        "metric": metric,
        "scores": scores,
        "scores_std": scores_std,
        "seeds": seeds,
        "runs": runs,
        "relative": {s: relative(scores[s]) for s in source_tasks},
        "baselines": baselines,
        "baselines_relative": {b: relative(v) for b, v in baselines.items()},
        "eval_sizes": sizes,
        "split": split,
        "prompt_shape": list(stack.shape[1:]),
        "wall_time_s": time.perf_counter() - t0,
    }
