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
from ptransfer.report import plots


def _load(path: str):
    with open(path) as f:
        return json.load(f)


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


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


def _on_verdict(rho: dict, ci: dict, best_emb: str, on_ci, emb_ci) -> str:
    """The paper's finding (ON correlates better than every embedding similarity) as a
    verdict from the two headline values and their 95% intervals: reproduced or not
    reproduced only when the intervals do not overlap (a conservative reading: two
    overlapping intervals are inconclusive), the direction alone otherwise."""
    on, emb = rho["ON"], rho[best_emb]
    both = (f"ON ({on:+.2f}{ci['ON']}) vs the best embedding similarity "
            f"{best_emb} ({emb:+.2f}{ci[best_emb]})")
    if on_ci and emb_ci and on_ci[0] > emb_ci[1]:
        return f"{both}: reproduced, ON is higher and the intervals do not overlap."
    if on_ci and emb_ci and on_ci[1] < emb_ci[0]:
        return (f"{both}: not reproduced, ON is lower and the intervals do not overlap; the "
                "paper's finding does not hold on this model and these tasks.")
    side = "higher" if on > emb else "not higher"
    return (f"{both}: inconclusive, ON is {side} but the 95% intervals overlap (or are "
            "missing), so these sizes cannot tell the two apart.")


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
        best_emb = max(emb, key=emb.get)
        out.append(_on_verdict(overall, ci, best_emb,
                               summary.get("ON", {}).get("mean_per_target_ci"),
                               summary.get(best_emb, {}).get("mean_per_target_ci")))
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

    Two layouts: one backbone's JSON at the top of `results_dir`, or the demo's
    `models/<backbone>/` directories (+ `cross_model/cross_model.json`)."""
    out_path = out_path or os.path.join(results_dir, "REPORT.md")
    info_path = os.path.join(results_dir, "run_info.json")
    info = _load(info_path) if os.path.exists(info_path) else {}
    models_dir = os.path.join(results_dir, "models")
    if not os.path.isdir(models_dir):
        md = _model_sections(results_dir, results_dir, "", info, level=1)
        fileio.atomic_write(out_path, "\n".join(md))
        return out_path
    names = sorted(os.listdir(models_dir))
    md = ["# Prompt transferability on " + " and ".join(names), ""]
    if info:
        md += ["## Setup", "", _table(["setting", "value"], [
            [k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in info.items()]), ""]
    for name in names:
        md += _model_sections(results_dir, os.path.join(models_dir, name), f"{name}_", {}, level=2)
    cm_path = os.path.join(results_dir, "cross_model", "cross_model.json")
    if os.path.exists(cm_path):
        cm = _load(cm_path)
        plots.cross_model_bars(cm, os.path.join(results_dir, "cross_model_relative.png"))
        md += ["## Cross-model transfer", "", "![cross-model relative performance]"
               "(cross_model_relative.png)", ""]
        for d in cm["directions"]:
            for task, pair in d.get("tpt", {}).items():
                name = f"cross_model_tpt_{d['source']}_to_{d['target']}_{task}.png"
                plots.tpt_curves(pair, os.path.join(results_dir, name))
                md += [f"![TPT_MODEL {d['name']} {task}]({name})", ""]
    fileio.atomic_write(out_path, "\n".join(md))
    return out_path


def _model_sections(results_dir: str, src: str, prefix: str, info: dict, level: int) -> list[str]:
    """One backbone's sections: its JSON read from `src`, its PNGs written into
    `results_dir` named `prefix` + the picture's name."""
    h = "#" * level
    path = lambda name: os.path.join(src, name)  # noqa: E731
    png = lambda name: (prefix + name, os.path.join(results_dir, prefix + name))  # noqa: E731
    cross = _load(path("cross_task.json"))
    tpt = _load(path("tpt.json")) if os.path.exists(path("tpt.json")) else None
    ind = _load(path("indicators.json")) if os.path.exists(path("indicators.json")) else None

    md = [f"{h} Prompt transferability on {cross['backbone']}", ""]
    if info:
        md += [f"{h}# Setup", "", _table(["setting", "value"], [[k, json.dumps(v) if isinstance(v, (dict, list)) else v]
                                                                for k, v in info.items()]), ""]
    md += [f"{h}# What the numbers say", ""]
    md += [f"- {s}" for s in _reading_transfer(cross)]
    if tpt:
        md += [f"- {s}" for s in _reading_tpt(tpt)]
    if ind:
        md += [f"- {s}" for s in _reading_indicators(ind)]
    md += [""]

    name, file = png("transfer_heatmap.png")
    plots.transfer_heatmap(cross, file)
    targets = cross["targets"]
    md += [f"{h}# Zero-shot cross-task transfer", "",
           "Relative performance = score(S→T) / score(T→T); metric per target: " +
           ", ".join(f"{t}: {cross['metric'][t]}" for t in targets) + ".", "",
           f"![transfer heatmap]({name})", "", "Raw scores (mean over seeds ± std):", ""]
    rows = []
    for s in cross["sources"]:
        row = [s]
        for t in targets:
            m, sd = cross["scores"][s].get(t), cross.get("scores_std", {}).get(s, {}).get(t)
            row.append(f"{m:.3f}" + (f" ± {sd:.3f}" if sd else "") if m is not None else "n/a")
        rows.append(row)
    for b, sc in cross.get("baselines", {}).items():
        rows.append([f"({b})"] + [sc.get(t) for t in targets])
    md += [_table(["source \\ target"] + targets, rows), ""]
    if cross.get("eval_sizes"):
        md += ["Evaluation examples per target: " +
               ", ".join(f"{t}: {n}" for t, n in cross["eval_sizes"].items()) + ".", ""]

    if tpt:
        md += [f"{h}# Transfer as initialization", "",
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
            name, file = png(f"curves_{p['source']}_to_{p['target']}.png")
            plots.tpt_curves(p, file)
            md += [f"![{p['source']} to {p['target']}]({name})", ""]

    if ind:
        scatter, file = png("indicator_scatter.png")
        plots.indicator_scatter(ind, file)
        summary = ind["spearman"].get("summary", {})
        per_t = list(ind["spearman"]["per_target"].get("ON", {}))
        md += [f"{h}# Transferability indicators", "",
               "Spearman correlation between each indicator and measured relative transfer "
               "(self pairs excluded): per target over its sources, their mean over targets "
               "(the headline), and all pairs pooled, with 95% bootstrap intervals"
               + (f" (resampling the {next(iter(summary.values()))['resampled']})"
                  if summary else "") + ". ON's activated neuron: "
               + str(ind.get("on_rule", "pre-activation > 0")) + " rule.", "",
               _table(["indicator", "mean over targets", "pooled"] + per_t,
                      [[k, f"{_fmt(summary.get(k, {}).get('mean_per_target'), 2)}"
                        f"{_ci_text(summary.get(k, {}).get('mean_per_target_ci'))}",
                        f"{_fmt(v, 2)}{_ci_text(summary.get(k, {}).get('pooled_ci'))}"]
                       + [ind["spearman"]["per_target"].get(k, {}).get(t) for t in per_t]
                       for k, v in ind["spearman"]["overall"].items()]), "",
               f"![indicator scatter]({scatter})", ""]
        if ind["spearman"].get("windows"):
            windows, file = png("on_by_window.png")
            plots.on_by_window(ind, file)
            md += ["ON by window of consecutive layers:", "",
                   _table(["layers", "Spearman"], list(ind["spearman"]["windows"].items())), "",
                   f"![ON by layer window]({windows})", ""]
    return md
