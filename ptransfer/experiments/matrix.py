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
eval_sizes {target: n}, split, wall_time_s, and for classification targets
(whose per-example predictions come with rank classification at no extra cost):

  per_example {labels {target: [n]}, predictions {source: {target: [[n] per seed]}},
               baselines {no_prompt|random_prompt: {target: [n]}}}
  intervals {confidence, resamples, seed, method,
             scores {source|(baseline): {target: {accuracy, accuracy_ci,
                     balanced_accuracy, balanced_accuracy_ci}}},
             relative {source: {target: [low, high]}}}

Accuracy intervals are Wilson intervals (the seed-mean accuracy as a
proportion of the n examples); balanced accuracy and relative performance
use a seeded percentile bootstrap over the target's examples, paired for
relative performance (S's and T's prompts resampled on the same examples).
`relative_replicates` turns the same predictions into bootstrap replicates of
the relative-transfer matrix, for intervals of anything computed from it.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

import tasks
from ptransfer import scoring
from ptransfer.bank import store as bank
from ptransfer.core import intervals
from ptransfer.core.errors import ConfigError
from ptransfer.data import default_truncation, load_task
from ptransfer.prompts import random_prompt_like
from tasks.specs import TYPES

log = logging.getLogger(__name__)


def order_by_type(names: Sequence[str]) -> list[str]:
    """Task names grouped by task type (sentiment first, as the paper's figure), stable within."""
    return sorted(names, key=lambda n: (TYPES.index(tasks.get_spec(n).type), list(names).index(n)))


def load_bank_prompts(bank_dir: str, backbone, sources: Sequence[str] | None = None,
                      kind: str = "exported"):
    """(entries, prompts [K, L, D]) for the bank prompts of `backbone`, checked to stack.

    kind: which prompt of each entry (`bank.read_prompt`): 'exported' (prompt.npy,
    the one the bank serves), or the run's 'best' / 'final' prompt.
    """
    entries = bank.list_entries(bank_dir, backbone=backbone.name, require=True)
    if sources is not None:
        missing = sorted(set(sources) - {e.task for e in entries})
        if missing:
            raise ConfigError(f"no bank prompt of backbone {backbone.name!r} for source task(s) "
                              f"{', '.join(missing)} in {bank_dir}; train them first.")
        entries = [e for e in entries if e.task in set(sources)]
    prompts = [bank.read_prompt(e.path, kind) for e in entries]
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
                      eval_examples: int | None = 256, eval_subset: str = "stratified",
                      input_length: int = 128,
                      target_length: int = 16, batch_size: int = 32, data_dir=None,
                      seed: int = 0, metric_name: str | None = None, progress=None,
                      prompts_per_call: int = 4) -> dict:
    """Scores every bank prompt of `backbone` on every target; returns the JSON dict above.

    `metric_name` picks the metric of every target (default: each task's primary
    metric); `split` falls back to 'validation' for a task that lacks it and for
    evaluation-only tasks (their validation split is the balanced one).
    `prompts_per_call` as `scoring.Scorer` (speed only).
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
    scorer = scoring.Scorer(backbone, batch_size=batch_size, prompts_per_call=prompts_per_call)
    lengths = {"inputs": input_length, "targets": target_length}

    per_entry: dict[str, dict[str, float]] = {e.ref: {} for e in entries}
    baselines = {"no_prompt": {}, "random_prompt": {}}
    metric, sizes = {}, {}
    labels: dict[str, list[int]] = {}
    preds: dict[str, dict[str, np.ndarray]] = {}  # target -> {entry ref | baseline: [n]}
    for i, target in enumerate(targets):
        spec = specs[target]
        task, mlm = load_task(target, backbone, data_dir)
        # Evaluation-only tasks (e.g. rt) are scored on their balanced validation split.
        task_split = split if split in spec.splits and not spec.evaluation_only else "validation"
        eval_set = scoring.build_eval_set(task, spec, backbone, task_split, eval_examples, lengths,
                                          truncate_inputs=default_truncation(backbone), mlm=mlm,
                                          subset=eval_subset)
        metric[target] = metric_name or eval_set.primary_metric
        sizes[target] = eval_set.size
        if eval_set.is_classification:
            ll = scorer.candidate_log_likelihoods_stack(full_stack, eval_set)  # [K + 1, N, C]
            none_ll = scorer.candidate_log_likelihoods(None, eval_set)  # [N, C]
            results = [scorer.metrics_from_scores(x, eval_set) for x in ll]
            no_prompt = scorer.metrics_from_scores(none_ll, eval_set)
            labels[target] = [int(v) for v in eval_set.labels]
            refs = [e.ref for e in entries] + ["random_prompt"]
            preds[target] = dict(zip(refs, np.argmax(ll, axis=-1)))
            preds[target]["no_prompt"] = np.argmax(none_ll, axis=-1)
        else:
            results = scorer.evaluate_stack(full_stack, eval_set)
            no_prompt = scorer.evaluate(None, eval_set)
        for e, r in zip(entries, results[:-1]):
            per_entry[e.ref][target] = float(r[metric[target]])
        baselines["random_prompt"][target] = float(results[-1][metric[target]])
        baselines["no_prompt"][target] = float(no_prompt[metric[target]])
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

    source_preds = {s: {t: np.stack([preds[t][e.ref] for e in entries if e.task == s])
                        for t in preds} for s in source_tasks}
    per_example = {
        "labels": labels,
        "predictions": {s: {t: p.tolist() for t, p in row.items()}
                        for s, row in source_preds.items()},
        "baselines": {b: {t: preds[t][b].tolist() for t in preds} for b in baselines},
    }
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
        "eval_subset": eval_subset,
        "prompt_shape": list(stack.shape[1:]),
        "per_example": per_example,
        "intervals": score_intervals(per_example, metric, seed=seed),
        "wall_time_s": time.perf_counter() - t0,
    }


def _ci(v):
    return None if v is None else [float(v[0]), float(v[1])]


def _cell_intervals(labels, predictions, seed: int) -> dict:
    """Accuracy (Wilson) and balanced accuracy (bootstrap) of predictions [R, n] or [n]."""
    labels = np.asarray(labels)
    preds = np.atleast_2d(np.asarray(predictions))
    acc = float(np.mean(preds == labels[None]))
    bal = float(np.mean([intervals.batched_balanced_accuracy(labels, p) for p in preds]))
    return {"accuracy": 100.0 * acc, "balanced_accuracy": bal,
            **intervals.classification_intervals(labels, preds, seed=seed)}


def score_intervals(per_example: dict, metric: dict[str, str], *, seed: int = 0,
                    resamples: int = intervals.RESAMPLES) -> dict:
    """The `intervals` block of the matrix JSON from its `per_example` block."""
    labels, predictions = per_example["labels"], per_example["predictions"]
    scores = {s: {t: _cell_intervals(labels[t], p, seed) for t, p in row.items()}
              for s, row in predictions.items()}
    for b, row in per_example.get("baselines", {}).items():
        scores[f"({b})"] = {t: _cell_intervals(labels[t], p, seed) for t, p in row.items()}
    relative = {}
    for s, row in predictions.items():
        relative[s] = {}
        for t, p in row.items():
            own = predictions.get(t, {}).get(t)
            ok = own is not None and metric.get(t) in intervals.BATCHED_METRICS
            relative[s][t] = _ci(intervals.ratio_interval(
                metric[t], labels[t], p, own, resamples=resamples, seed=seed)) if ok else None
    return {"confidence": intervals.CONFIDENCE, "resamples": resamples, "seed": seed,
            "method": "accuracy: Wilson; balanced accuracy: bootstrap over examples; relative: "
                      "paired bootstrap over the target's examples",
            "scores": scores, "relative": relative}


def relative_replicates(cross_task: dict, sources: Sequence[str], targets: Sequence[str], *,
                        resamples: int = intervals.RESAMPLES, seed: int = 0) -> np.ndarray | None:
    """Bootstrap replicates [B, S, T] of relative transfer score(s->t) / score(t->t).

    Each target's examples are resampled (seeded per target) once per replicate and
    shared by all its sources, so a replicate is one plausible re-draw of every
    evaluation set. None when some cell lacks per-example predictions or its
    metric has no per-example form (generative targets): callers then resample
    pairs instead.
    """
    per = cross_task.get("per_example")
    if not per:
        return None
    labels, predictions = per["labels"], per["predictions"]
    out = np.full((resamples, len(sources), len(targets)), np.nan)
    for j, t in enumerate(targets):
        m = cross_task["metric"].get(t)
        own = predictions.get(t, {}).get(t)
        if t not in labels or own is None or m not in intervals.BATCHED_METRICS:
            return None
        idx = intervals.resample_indices(len(labels[t]), resamples, seed + j)
        den = intervals.metric_on(m, labels[t], own, idx)
        for i, s in enumerate(sources):
            p = predictions.get(s, {}).get(t)
            if p is None:
                return None
            num = intervals.metric_on(m, labels[t], p, idx)
            out[:, i, j] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out
