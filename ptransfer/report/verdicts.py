"""One verdict per finding of Su et al. 2022, computed from the results JSON and
its 95% intervals (pure: dicts in, `Verdict` out).

Every rule reads two intervals and asks whether they are apart:

  reproduced       the intervals say the paper's direction (A's interval
                   entirely above B's),
  not reproduced   they say the reverse (A's entirely below B's),
  inconclusive     they overlap, or an interval is missing.

Overlap of two 95% intervals is a conservative test (two intervals that just
touch correspond to p well below .05), so "reproduced" is never claimed from a
difference the evaluation noise could make.

  cross_task_verdict     (a) zero-shot cross-task transfer (cross_task.json)
  tpt_task_verdict       (b) TPT_TASK speedups (tpt.json + task types)
  cross_model_verdicts   (c) mappers' zero-shot transfer and TPT_MODEL per
                             direction (cross_model.json)
  indicator_verdict      (d) ON vs the embedding similarities (indicators.json)
"""

from __future__ import annotations

import dataclasses
import math
from statistics import mean

import numpy as np
from scipy import stats

from ptransfer.core import intervals

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
Z95 = 1.959963984540054


@dataclasses.dataclass(frozen=True)
class Verdict:
    """finding: which finding; scope: the model or direction it is about;
    numbers: {name: {"mean": x, "ci": [low, high] | None, ...}} that decided it."""

    finding: str
    scope: str
    verdict: str
    sentence: str
    numbers: dict

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def apart(a_ci, b_ci) -> str:
    """'above' when interval a lies entirely above b, 'below' entirely below, else
    'overlap' (also when either is missing)."""
    if not a_ci or not b_ci or not all(_finite(v) for v in (*a_ci, *b_ci)):
        return "overlap"
    if a_ci[0] > b_ci[1]:
        return "above"
    if a_ci[1] < b_ci[0]:
        return "below"
    return "overlap"


def verdict_of(a_ci, b_ci) -> str:
    """The verdict for "A is higher than B" from their intervals."""
    return {"above": REPRODUCED, "below": NOT_REPRODUCED}.get(apart(a_ci, b_ci), INCONCLUSIVE)


def _ci_text(ci, digits: int = 2) -> str:
    return f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else " (no interval)"


def _num(m, ci, **extra) -> dict:
    return {"mean": m, "ci": None if ci is None else [float(ci[0]), float(ci[1])], **extra}


# ---- (a) zero-shot cross-task transfer -------------------------------------------

def _replicate_rows(cross: dict, rows: dict, targets: list[str], resamples: int,
                    seed: int) -> dict | None:
    """{row: [B, T]} bootstrap replicates of relative transfer row->t (rows: name ->
    {target: predictions [n] or [R, n]}), each target's examples resampled once per
    replicate for every row (as `experiments.matrix.relative_replicates`); None when a
    target lacks per-example predictions or a per-example metric."""
    per = cross.get("per_example")
    if not per:
        return None
    labels, own_preds = per.get("labels", {}), per.get("predictions", {})
    out = {r: np.full((resamples, len(targets)), np.nan) for r in rows}
    for j, t in enumerate(targets):
        metric, own = cross["metric"].get(t), own_preds.get(t, {}).get(t)
        if t not in labels or own is None or metric not in intervals.BATCHED_METRICS:
            return None
        idx = intervals.resample_indices(len(labels[t]), resamples, seed + j)
        den = intervals.metric_on(metric, labels[t], own, idx)
        for r, preds in rows.items():
            if t not in preds:
                continue
            num = intervals.metric_on(metric, labels[t], preds[t], idx)
            out[r][:, j] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def _mean_interval(values: list[float], reps: list[np.ndarray] | None, seed: int):
    """95% interval of the mean of cells: from their example replicates ([B] each) when
    given, else a bootstrap over the cells themselves (None with fewer than 2)."""
    if reps:
        return intervals.percentile_interval(np.nanmean(np.stack(reps, axis=1), axis=1))
    if len(values) < 2:
        return None
    v = np.asarray(values, np.float64)
    idx = intervals.resample_indices(len(v), intervals.RESAMPLES, seed)
    return intervals.percentile_interval(v[idx].mean(axis=1))


def cross_task_verdict(cross: dict, *, family: str = "sentiment",
                       resamples: int = intervals.RESAMPLES, seed: int = 0) -> Verdict:
    """(a) Prompts transfer better within a task type than across types.

    within: off-diagonal cells s->t with both tasks of `family`; cross: cells with
    exactly one of them of `family` (both directions); baselines: the no-prompt and
    random-prompt relative performance on the `family` targets. Each group's mean
    relative performance gets a 95% interval from a bootstrap over the targets'
    evaluation examples (`per_example`), else over the cells. Verdict: within vs
    cross by `verdict_of`; the baselines are compared the same way and said beside.

    Reads: task_types, sources, targets, relative, baselines_relative, metric,
    per_example {labels, predictions, baselines}.
    """
    types, rel = cross["task_types"], cross["relative"]
    targets = list(cross["targets"])
    groups: dict[str, list[tuple[str, str]]] = {"within_type": [], "cross_type": []}
    for s in cross["sources"]:
        for t in targets:
            if s == t or rel.get(s, {}).get(t) is None or t not in types or s not in types:
                continue
            same = (types[s] == family, types[t] == family)
            if all(same):
                groups["within_type"].append((s, t))
            elif any(same):
                groups["cross_type"].append((s, t))
    fam_targets = sorted({t for _, t in groups["within_type"]})
    baselines = cross.get("baselines_relative", {})
    for b in ("random_prompt", "no_prompt"):
        groups[b] = [(b, t) for t in fam_targets if baselines.get(b, {}).get(t) is not None]

    def value(row, t):
        return baselines[row][t] if row in baselines else rel[row][t]

    per = cross.get("per_example") or {}
    rows = {**per.get("predictions", {}), **per.get("baselines", {})}
    reps = _replicate_rows(cross, rows, targets, resamples, seed) if rows else None
    numbers = {}
    for k, (name, cells) in enumerate(groups.items()):
        values = [value(r, t) for r, t in cells]
        r = [reps[row][:, targets.index(t)] for row, t in cells] if reps else None
        ci = _mean_interval(values, r, seed + k) if values else None
        numbers[name] = _num(mean(values) if values else None, ci, cells=len(values))
    numbers["interval_over"] = "examples" if reps else "cells"
    w, c = numbers["within_type"], numbers["cross_type"]
    v = verdict_of(w["ci"], c["ci"])
    if w["mean"] is None or c["mean"] is None:
        return Verdict("cross_task", cross.get("backbone", ""), INCONCLUSIVE,
                       f"No {family}->{family} or no cross-type cell was measured, so the "
                       "within- vs cross-type comparison cannot be made.", numbers)
    reading = {REPRODUCED: "reproduced: the within-type interval lies entirely above the "
                           "cross-type one",
               NOT_REPRODUCED: "not reproduced: the within-type interval lies entirely below "
                               "the cross-type one",
               INCONCLUSIVE: "inconclusive: the two 95% intervals overlap or are missing"}[v]
    text = (f"{family.capitalize()} prompts reach {w['mean']:.2f}{_ci_text(w['ci'])} of a "
            f"target's own-prompt score on other {family} tasks and {c['mean']:.2f}"
            f"{_ci_text(c['ci'])} across task types: {reading}.")
    for b, label in (("random_prompt", "a random prompt"), ("no_prompt", "no prompt")):
        if numbers[b]["mean"] is None:
            continue
        side = {"above": "above", "below": "below"}.get(apart(w["ci"], numbers[b]["ci"]),
                                                         "not distinguishable from")
        text += (f" Within-type transfer is {side} {label} ({numbers[b]['mean']:.2f}"
                 f"{_ci_text(numbers[b]['ci'])}).")
    return Verdict("cross_task", cross.get("backbone", ""), v, text, numbers)


# ---- (b) TPT_TASK and (c) TPT_MODEL speedups -------------------------------------

UNTRAINED_SOURCE = "untrained source"  # a pair_speedup status


def seed_interval(values: list[float]):
    """(mean, 95% t-interval of the mean over seeds or None with fewer than 2)."""
    if not values:
        return None, None
    m = float(np.mean(values))
    if len(values) < 2:
        return m, None
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return m, (m - half, m + half)


def pair_speedup(pair: dict) -> dict:
    """A TPT pair's speedups over its seeds and whether TPT was faster.

    status: 'faster' when every seed's TPT reached PT's best (within the reach
    tolerance tpt.json carries, one SE) and the t-interval of the mean
    comparable-result speedup over >= 2 seeds lies above 1; 'slower' when no seed's
    TPT ever reached it (a score deficit beyond the tolerance on every seed) or the
    interval lies below 1; 'unclear' otherwise (one seed, mixed seeds, or an
    interval containing 1); 'untrained source' when the source's bank entry holds
    its run's step-0 prompt (`source_prompt_step` 0: that run never beat its initial
    score), which tests no transfer, whatever the curves show.

    Reads: source, target, speedups {seed: {comparable, convergence}}, reach_tolerance,
    source_prompt_step (when present).
    """
    sp = list(pair.get("speedups", {}).values())
    comp = [s["comparable"] for s in sp if s.get("comparable") is not None]
    conv = [s["convergence"] for s in sp if s.get("convergence") is not None]
    c_mean, c_ci = seed_interval(comp)
    v_mean, v_ci = seed_interval(conv)
    tol = [r.get("se") for r in pair.get("reach_tolerance", {}).values() if r.get("se") is not None]
    status = "unclear"
    if sp and not comp:
        status = "slower"
    elif len(comp) == len(sp) and c_ci is not None:
        status = {"above": "faster", "below": "slower"}.get(apart(c_ci, (1.0, 1.0)), "unclear")
    if pair.get("source_prompt_step") == 0:
        status = UNTRAINED_SOURCE
    return {"pair": f"{pair['source']}->{pair['target']}", "seeds": len(sp),
            "reached": len(comp), "comparable": _num(c_mean, c_ci), "convergence": _num(v_mean, v_ci),
            "tolerance": mean(tol) if tol else None, "status": status}


def _speedup_reading(pairs: list[dict]) -> tuple[str, str]:
    faster = [p for p in pairs if p["status"] == "faster"]
    slower = [p for p in pairs if p["status"] == "slower"]
    if faster and not slower:
        v = REPRODUCED
    elif slower and not faster:
        v = NOT_REPRODUCED
    else:
        v = INCONCLUSIVE
    parts = []
    for p in pairs:
        c = p["comparable"]
        what = (f"comparable-result speedup {c['mean']:.2f}x{_ci_text(c['ci'])}"
                if c["mean"] is not None else "TPT never reached PT's best")
        status = p["status"]
        if status == UNTRAINED_SOURCE:
            status = ("not a test of transfer: the source's bank entry holds its step-0 "
                      "prompt, the initial prompt of its run")
        parts.append(f"{p['pair']} {what} over {p['seeds']} seed(s), {status}")
    return v, "; ".join(parts)


def tpt_task_verdict(tpt: dict, task_types: dict) -> Verdict:
    """(b) Initializing from a similar task's prompt speeds prompt tuning up.

    Similar-task pairs: source and target of the same type (`task_types`, e.g.
    cross_task.json's). Each is judged by `pair_speedup`; reproduced when at least
    one similar pair is faster and none slower, not reproduced when at least one is
    slower and none faster, inconclusive otherwise (mixed, unclear, or no similar
    pair). Pairs of different types are reported beside as the contrast.

    Reads: backbone, pairs[] (tpt.run_pair JSON).
    """
    similar, other = [], []
    for pair in tpt.get("pairs", []):
        s, t = task_types.get(pair["source"]), task_types.get(pair["target"])
        (similar if s is not None and s == t else other).append(pair_speedup(pair))
    numbers = {"similar": similar, "dissimilar": other}
    if not similar:
        return Verdict("tpt_task", tpt.get("backbone", ""), INCONCLUSIVE,
                       "No TPT pair of two tasks of the same type was run.", numbers)
    v, text = _speedup_reading(similar)
    sentence = f"Similar-task initialization: {text} ({v})."
    if other:
        sentence += " Dissimilar pairs, for contrast: " + _speedup_reading(other)[1] + "."
    return Verdict("tpt_task", tpt.get("backbone", ""), v, sentence, numbers)


# ---- (c) cross-model -------------------------------------------------------------

def mean_accuracy(cells: dict, tasks: list[str]):
    """(mean accuracy over tasks, its 95% interval) from the cells' Wilson intervals: each
    task's SE is read as (high - low) / (2 z) and the tasks are taken as independent."""
    accs = [cells[t].get("accuracy") for t in tasks]
    cis = [cells[t].get("accuracy_interval") for t in tasks]
    if not tasks or any(a is None for a in accs):
        return None, None
    m = float(np.mean(accs))
    if any(not c for c in cis):
        return m, None
    se = math.sqrt(sum(((c[1] - c[0]) / (2 * Z95)) ** 2 for c in cis)) / len(tasks)
    return m, (m - Z95 * se, m + Z95 * se)


def cross_model_verdicts(cross_model: dict) -> list[Verdict]:
    """(c) Per direction: mapped prompts transfer zero-shot better than the baselines;
    and, when run, TPT_MODEL from the best mapper.

    Zero-shot: the best mapper (highest mean relative performance, table[m]["all"]) is
    reproduced when its interval lies above both the random-prompt's and the
    no-prompt's, not reproduced when it lies below either, inconclusive otherwise. The
    intervals are those of the mean relative performance over the tasks
    (table_intervals[m]["all"], paired bootstrap) when every one of the three has one,
    else those of the mean accuracy (`mean_accuracy`). TPT_MODEL (direction["tpt"]): the pairs by `pair_speedup`,
    the verdict as `tpt_task_verdict`'s.

    Reads: directions[] {name, cells, baselines, table, table_intervals, tpt_mapper, tpt}.
    """
    out = []
    for d in cross_model.get("directions", []):
        base = d.get("baselines", {})
        common = [t for t in cross_model.get("tasks", [])
                  if all(t in base.get(b, {}) for b in ("no_prompt", "random_prompt"))]
        numbers = {}
        for name in list(d.get("cells", {})) + ["random_prompt", "no_prompt", "own_prompt"]:
            cells = d["cells"].get(name) or base.get(name, {})
            tasks = [t for t in common if t in cells]
            m, ci = mean_accuracy(cells, tasks)
            numbers[name] = _num(m, ci, tasks=len(tasks),
                                 relative=d.get("table", {}).get(name, {}).get("all"),
                                 relative_ci=d.get("table_intervals", {}).get(name, {}).get("all"))
        scored = {m: numbers[m]["relative"] for m in d.get("cells", {})
                  if numbers[m]["relative"] is not None}
        best = max(scored, key=scored.get) if scored else None
        numbers["best_mapper"] = best
        if best is None or numbers[best]["mean"] is None:
            out.append(Verdict("cross_model", d["name"], INCONCLUSIVE,
                               f"{d['name']}: no mapper was scored.", numbers))
        else:
            b = numbers[best]
            baselines = ("random_prompt", "no_prompt")
            if b.get("relative_ci") and all(numbers[k].get("relative_ci") for k in baselines):
                # relative performance (the run's metric over the target's own prompt) with
                # paired-bootstrap intervals, when the cells carry per-example predictions
                sides = [apart(b["relative_ci"], numbers[k]["relative_ci"]) for k in baselines]
                rel = lambda n: f"{n['relative']:.2f}{_ci_text(n['relative_ci'], 2)}"  # noqa: E731
                text = (f"{d['name']}: the best mapper, {best}, reaches relative performance "
                        f"{rel(b)} (accuracy {b['mean']:.1f}) vs a random prompt "
                        f"{rel(numbers['random_prompt'])} and no prompt "
                        f"{rel(numbers['no_prompt'])}")
            else:
                sides = [apart(b["ci"], numbers[k]["ci"]) for k in baselines]
                text = (f"{d['name']}: the best mapper, {best}, reaches accuracy {b['mean']:.1f}"
                        f"{_ci_text(b['ci'], 1)} (relative {b['relative']:.2f}) vs a random "
                        f"prompt {_fmt1(numbers['random_prompt'])} and no prompt "
                        f"{_fmt1(numbers['no_prompt'])}")
            v = (REPRODUCED if sides == ["above", "above"] else
                 NOT_REPRODUCED if "below" in sides else INCONCLUSIVE)
            text += f": {v}."
            out.append(Verdict("cross_model", d["name"], v, text, numbers))
        if d.get("tpt"):
            pairs = [pair_speedup(p) for p in d["tpt"].values()]
            v, text = _speedup_reading(pairs)
            out.append(Verdict("tpt_model", d["name"], v,
                               f"{d['name']} TPT_MODEL from {d.get('tpt_mapper')}: {text} ({v}).",
                               {"pairs": pairs, "mapper": d.get("tpt_mapper")}))
    return out


def _fmt1(n: dict) -> str:
    return "n/a" if n["mean"] is None else f"{n['mean']:.1f}{_ci_text(n['ci'], 1)}"


# ---- (d) indicators --------------------------------------------------------------

def indicator_verdict(ind: dict) -> Verdict:
    """(d) ON correlates with transfer better than every embedding similarity.

    The headline is the mean over targets of the per-target Spearman (the pooled rho
    when no target has one); ON's interval vs that of the best embedding similarity
    (E/C; ON under another FFN rule, ON_<rule>, is not one and is reported beside).
    Pooled rhos are compared the same way and said beside.

    Reads: spearman.summary {ind: {mean_per_target, mean_per_target_ci, pooled,
    pooled_ci}}, spearman.mean_per_target, spearman.overall.
    """
    sp = ind.get("spearman", {})
    summary = sp.get("summary", {})
    names = list(summary) or list(sp.get("overall", {}))
    numbers = {}
    for k in names:
        s = summary.get(k, {})
        numbers[k] = {"mean_per_target": _num(s.get("mean_per_target",
                                                    sp.get("mean_per_target", {}).get(k)),
                                              s.get("mean_per_target_ci")),
                      "pooled": _num(s.get("pooled", sp.get("overall", {}).get(k)),
                                     s.get("pooled_ci"))}
    head = "mean_per_target" if any(_finite(n["mean_per_target"]["mean"])
                                    for n in numbers.values()) else "pooled"
    numbers["headline"] = head
    emb = {k: n[head]["mean"] for k, n in numbers.items()
           if isinstance(n, dict) and not k.startswith("ON") and _finite(n[head]["mean"])}
    backbone = ind.get("backbone", "")
    if "ON" not in numbers or not _finite(numbers["ON"][head]["mean"]) or not emb:
        return Verdict("indicators", backbone, INCONCLUSIVE,
                       "ON or the embedding similarities have no Spearman correlation here "
                       "(too few sources per target).", numbers)
    best = max(emb, key=emb.get)
    numbers["best_embedding"] = best
    on, other = numbers["ON"][head], numbers[best][head]
    v = verdict_of(on["ci"], other["ci"])
    what = "mean over targets" if head == "mean_per_target" else "pooled"
    reading = {REPRODUCED: "reproduced, ON is higher and the intervals do not overlap",
               NOT_REPRODUCED: "not reproduced, ON is lower and the intervals do not overlap",
               INCONCLUSIVE: f"inconclusive, ON is {'higher' if on['mean'] > other['mean'] else 'not higher'} "
                             "but the 95% intervals overlap (or are missing)"}[v]
    text = (f"ON (Spearman, {what}, {on['mean']:+.2f}{_ci_text(on['ci'])}) vs the best embedding "
            f"similarity {best} ({other['mean']:+.2f}{_ci_text(other['ci'])}): {reading}.")
    if "ON_product" in numbers and _finite(numbers["ON_product"][head]["mean"]):
        p = numbers["ON_product"][head]
        text += f" ON under the product rule: {p['mean']:+.2f}{_ci_text(p['ci'])}."
    if head == "mean_per_target" and _finite(numbers["ON"]["pooled"]["mean"]) \
            and _finite(numbers[best]["pooled"]["mean"]):
        side = apart(numbers["ON"]["pooled"]["ci"], numbers[best]["pooled"]["ci"])
        text += (f" Pooled over pairs: ON {numbers['ON']['pooled']['mean']:+.2f} vs "
                 f"{best} {numbers[best]['pooled']['mean']:+.2f} "
                 f"({'apart' if side != 'overlap' else 'intervals overlap'}).")
    return Verdict("indicators", backbone, v, text, numbers)
