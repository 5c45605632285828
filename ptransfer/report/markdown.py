"""The human-readable report, written from the results JSON only.

`write_report(results_dir)` reads cross_task.json, tpt.json, indicators.json
(and run_info.json when present), draws the PNGs with `report.plots` and
writes REPORT.md: tables, plots, and a plain-language reading whose every
sentence is chosen by the numbers (a finding that did not reproduce is said
to have not reproduced).
"""

from __future__ import annotations

import json
import math
import os
from statistics import mean

from ptransfer.core import fileio
from ptransfer.report import multi_model, plots, tables, verdicts


def _load(path: str):
    with open(path) as f:
        return json.load(f)


_fmt, _table = tables.fmt, tables.table


def family_means(cross_task: dict) -> dict[str, float | None]:
    """Mean off-diagonal relative transfer within the sentiment family, from a
    sentiment source to a non-sentiment target, and of the random prompt."""
    types = cross_task["task_types"]
    within, across = [], []
    for s in cross_task["sources"]:
        for t in cross_task["targets"]:
            if s == t or types.get(s) != "sentiment":
                continue
            rel = cross_task["relative"][s].get(t)
            if rel is None:
                continue
            (within if types.get(t) == "sentiment" else across).append(rel)
    # Targets without their own prompt (evaluation-only tasks) have no relative value.
    rand = [v for v in cross_task.get("baselines_relative", {}).get("random_prompt", {}).values()
            if v is not None]
    return {
        "sentiment_to_sentiment": mean(within) if within else None,
        "sentiment_to_other": mean(across) if across else None,
        "random_prompt": mean(rand) if rand else None,
    }


def _own_prompt_below_no_prompt(cross_task: dict) -> list[str]:
    """Targets whose own prompt scored <= the no-prompt baseline."""
    no_prompt = cross_task.get("baselines", {}).get("no_prompt", {})
    out = []
    for task in cross_task.get("sources", []):
        own, none = cross_task["scores"].get(task, {}).get(task), no_prompt.get(task)
        if own is not None and none is not None and own <= none:
            out.append(task)
    return out


def _reading_transfer(cross_task: dict) -> list[str]:
    fm = family_means(cross_task)
    within, across, rand = fm["sentiment_to_sentiment"], fm["sentiment_to_other"], fm["random_prompt"]
    out = []
    if within is None and across is not None:
        out.append(f"Sentiment prompts reach on average {across:.2f} of a target's own-prompt "
                   "score on the dissimilar tasks (no same-type pair was measured).")
    if within is not None and across is not None:
        gap = within - across
        verdict = ("reproduced: prompts carry over far better within the task type"
                   if gap > 0.15 else
                   "reproduced, with a modest gap: prompts carry over better within the task type"
                   if gap > 0.05 else
                   "did not reproduce clearly: the gap between same-type and cross-type "
                   "transfer is within 0.05")
        out.append(f"Sentiment prompts reach on average {within:.2f} of a target's own-prompt score "
                   f"on other sentiment tasks and {across:.2f} on the dissimilar tasks — {verdict}.")
    weak = _own_prompt_below_no_prompt(cross_task)
    if weak:
        out.append("Relative transfer to " + ", ".join(weak) + " is measured against an own "
                   "prompt that scores no better than no prompt at all, which inflates the "
                   "ratio.")
    if rand is not None and within is not None:
        out.append(f"A random prompt of the same norm reaches {rand:.2f} on average, so tuned "
                   f"same-type prompts are {'above' if within > rand else 'not above'} that baseline.")
    return out


def _first_update_change(pair: dict) -> tuple[int, float] | None:
    """(step, mean over seeds of TPT's score there minus at step 0) at TPT's first
    evaluation after training began, or None without two evaluations."""
    steps, deltas = set(), []
    for curve in pair["tpt"]["curves"].values():
        if len(curve) >= 2:
            steps.add(int(curve[1][0]))
            deltas.append(curve[1][1] - curve[0][1])
    return (min(steps), mean(deltas)) if deltas and len(steps) == 1 else None


def _reading_tpt(tpt: dict) -> list[str]:
    out = []
    for pair in tpt["pairs"]:
        conv, comp = pair.get("mean_convergence_speedup"), pair.get("mean_comparable_speedup")
        name = f"{pair['source']}→{pair['target']}"
        head = pair.get("head_start")
        if comp is None:
            text = f"{name}: "
            if head is not None:
                text += (f"TPT started {abs(head):.1f} points {'above' if head >= 0 else 'below'} "
                         "vanilla PT before training")
                change = _first_update_change(pair)
                if change is not None and head > 0 and change[1] < 0:
                    text += (f", but its score fell by {-change[1]:.1f} points over its first "
                             f"{change[0]} updates")
                text += "; "
            text += (f"it never reached PT's best ({_fmt(pair.get('pt_best'), 1)}; TPT's best "
                     f"{_fmt(pair.get('tpt_best'), 1)}) within the budget, so the comparable-result "
                     "speedup is n/a and this pair shows no speedup.")
            out.append(text)
        else:
            faster = "faster" if comp > 1 else ("no faster" if comp == 1 else "slower")
            out.append(f"{name}: TPT reached PT's best score {comp:.2f}× as fast ({faster}); "
                       f"convergence speedup {_fmt(conv, 2)}; head start at the first evaluation "
                       f"{_fmt(head, 3)}.")
        if pair.get("source_prompt_step") == 0:
            out[-1] += (f" The {pair['source']} bank entry holds its step-0 prompt (its run "
                        "never beat its initial score), so this pair tests no transfer.")
    return out


def _ci_text(ci) -> str:
    return "" if not ci else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _headline_spearman(ind: dict) -> tuple[dict[str, float], str]:
    """(indicator -> headline rho, what it is): the mean over targets of the per-target
    rho when the JSON has it, else the pooled rho."""
    mean = {k: v for k, v in ind["spearman"].get("mean_per_target", {}).items()
            if v is not None and not math.isnan(v)}
    if mean:
        return mean, "mean over targets of the per-target Spearman"
    return ({k: v for k, v in ind["spearman"]["overall"].items()
             if v is not None and not math.isnan(v)}, "Spearman over pooled pairs")


def _reading_indicators(ind: dict) -> list[str]:
    overall, what = _headline_spearman(ind)
    if not overall:
        return ["No indicator correlation could be computed (too few pairs)."]
    summary = ind["spearman"].get("summary", {})
    ci = {k: _ci_text(summary.get(k, {}).get("mean_per_target_ci")) for k in overall}
    best = max(overall, key=overall.get)
    # ON under another FFN rule (ON_product) is not an embedding similarity
    emb = {k: v for k, v in overall.items() if not k.startswith("ON")}
    out = [f"The indicator most correlated with measured transfer is {best} "
           f"({what} {overall[best]:+.2f}{ci[best]}, 95% bootstrap interval)."]
    if "ON" in overall and emb:
        out.append(verdicts.indicator_verdict(ind).sentence)
    dropped = sorted({t for v in summary.values() for t in v.get("dropped_targets", {})})
    if dropped:
        out.append("Left out of the mean over targets (every source ties, or too few sources): "
                   + ", ".join(dropped) + ".")
    retrieval = {k: v for k, v in ind.get("retrieval", {}).items() if v.get("targets")}
    if retrieval:
        parts = [f"{k} {v['hits']}/{v['targets']}" for k, v in retrieval.items()]
        out.append("Picking each target's source by the indicator finds the best actual source "
                   "for " + ", ".join(parts) + " targets.")
    windows = {k: v for k, v in ind["spearman"].get("windows", {}).items() if v is not None}
    if windows:
        top = max(windows, key=windows.get)
        out.append(f"ON's signal is strongest in layers {top} (Spearman {windows[top]:+.2f}).")
    return out


def write_report(results_dir: str, out_path: str | None = None) -> str:
    """Draws the plots and writes REPORT.md into results_dir; returns its path.

    A directory with models/<backbone>/ (the two-model demo) gets the per-finding
    report of `report.multi_model`; one with cross_task.json at its top this one.
    """
    if multi_model.is_multi_model(results_dir):
        return multi_model.write_report(results_dir, out_path)
    out_path = out_path or os.path.join(results_dir, "REPORT.md")
    path = lambda name: os.path.join(results_dir, name)  # noqa: E731
    info = _load(path("run_info.json")) if os.path.exists(path("run_info.json")) else {}
    cross = _load(path("cross_task.json"))
    tpt = _load(path("tpt.json")) if os.path.exists(path("tpt.json")) else None
    ind = _load(path("indicators.json")) if os.path.exists(path("indicators.json")) else None

    md = [f"# Prompt transferability on {cross['backbone']}", ""]
    if info:
        md += ["## Setup", "", _table(["setting", "value"], [[k, json.dumps(v) if isinstance(v, (dict, list)) else v]
                                                            for k, v in info.items()]), ""]
    md += ["## What the numbers say", ""]
    md += [f"- {s}" for s in _reading_transfer(cross)]
    if tpt:
        md += [f"- {s}" for s in _reading_tpt(tpt)]
    if ind:
        md += [f"- {s}" for s in _reading_indicators(ind)]
    md += [""]

    plots.transfer_heatmap(cross, path("transfer_heatmap.png"))
    targets = cross["targets"]
    md += ["## Zero-shot cross-task transfer", "",
           "Relative performance = score(S→T) / score(T→T); metric per target: " +
           ", ".join(f"{t}: {cross['metric'][t]}" for t in targets) + ".", "",
           "![transfer heatmap](transfer_heatmap.png)", ""]
    md += tables.raw_scores(cross)

    if tpt:
        md += ["## Transfer as initialization", "",
               "TPT reaches PT's best when it scores within one standard error of it (the "
               "binomial SE on the evaluation subset, else the spread over seeds); the "
               "exact-match speedup (TPT ≥ PT's best) is shown beside it.", "",
               _table(["source → target", "seeds", "head start at step 0", "conv. speedup",
                       "comparable speedup", "comparable (exact)", "PT best", "TPT best"],
                      [[f"{p['source']} → {p['target']}", len(p["pt"]["curves"]),
                        p.get("head_start"), p.get("mean_convergence_speedup"),
                        p.get("mean_comparable_speedup"), p.get("mean_comparable_speedup_exact"),
                        p.get("pt_best"), p.get("tpt_best")]
                       for p in tpt["pairs"]]), ""]
        for p in tpt["pairs"]:
            name = f"curves_{p['source']}_to_{p['target']}.png"
            plots.tpt_curves(p, path(name))
            md += [f"![{p['source']} to {p['target']}]({name})", ""]

    if ind:
        plots.indicator_scatter(ind, path("indicator_scatter.png"))
        summary = ind["spearman"].get("summary", {})
        per_t = list(ind["spearman"]["per_target"].get("ON", {}))
        md += ["## Transferability indicators", "",
               "Spearman correlation between each indicator and measured relative transfer "
               "(self pairs excluded): per target over its sources, their mean over targets "
               "(the headline), and all pairs pooled, with 95% bias-corrected bootstrap intervals"
               + (f" (resampling the {next(iter(summary.values()))['resampled']})"
                  if summary else "") + ". ON's activated neuron: "
               + str(ind.get("on_rule", "pre-activation > 0")) + " rule.", "",
               _table(["indicator", "mean over targets", "pooled"] + per_t,
                      [[k, f"{_fmt(summary.get(k, {}).get('mean_per_target'), 2)}"
                        f"{_ci_text(summary.get(k, {}).get('mean_per_target_ci'))}",
                        f"{_fmt(v, 2)}{_ci_text(summary.get(k, {}).get('pooled_ci'))}"]
                       + [ind["spearman"]["per_target"].get(k, {}).get(t) for t in per_t]
                       for k, v in ind["spearman"]["overall"].items()]), "",
               "![indicator scatter](indicator_scatter.png)", ""]
        if ind["spearman"].get("windows"):
            plots.on_by_window(ind, path("on_by_window.png"))
            md += ["ON by window of consecutive layers:", "",
                   _table(["layers", "Spearman"], list(ind["spearman"]["windows"].items())), "",
                   "![ON by layer window](on_by_window.png)", ""]
    fileio.atomic_write(out_path, "\n".join(md))
    return out_path
