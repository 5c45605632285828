"""REPORT.md for a results directory of several backbones and the cross-model stage:

  run_info.json                         {"models": {backbone: setup}, shared setup,
                                         "stage times (s)": {stage: seconds}}
  models/<backbone>/cross_task.json     (and tpt.json, indicators.json when run)
  cross_model/cross_model.json          (when run)

The report: the setup, the verdicts at a glance, then one section per finding
(a table, the pictures, the verdict sentence of `report.verdicts`), per model
for (a), (b), (d) and per direction for (c), with the paper's numbers
(`report.paper`) where they exist. PNGs go next to REPORT.md, named after the
model they show.
"""

from __future__ import annotations

import json
import os
import re

from ptransfer.core import fileio
from ptransfer.report import paper, plots, verdicts
from ptransfer.report.tables import fmt, raw_scores, table, with_ci


def is_multi_model(results_dir: str) -> bool:
    """True for the layout above (a models/ directory holding a cross_task.json)."""
    models = os.path.join(results_dir, "models")
    return os.path.isdir(models) and any(
        os.path.exists(os.path.join(models, m, "cross_task.json")) for m in os.listdir(models))


def _load(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _value(v) -> str:
    return json.dumps(v) if isinstance(v, (dict, list)) else fmt(v)


def _setup(info: dict, models: list[str]) -> list[str]:
    md = ["## Setup", ""]
    shared = {k: v for k, v in info.items() if k not in ("models", "stage times (s)")}
    if shared:
        md += [table(["setting", "value"], [[k, _value(v)] for k, v in shared.items()]), ""]
    per = info.get("models", {})
    keys = list(dict.fromkeys(k for m in models for k in per.get(m, {})))
    if keys:
        md += ["Per model:", "", table(["setting"] + models,
                                       [[k] + [_value(per.get(m, {}).get(k)) for m in models]
                                        for k in keys]), ""]
    times = info.get("stage times (s)", {})
    if times:
        md += ["Wall time per stage:", "",
               table(["stage", "seconds"], [[k, fmt(float(v), 1)] for k, v in times.items()]),
               f"\nIn all: {sum(float(v) for v in times.values()):.0f} s.", ""]
    return md


def _cross_task(model: str, cross: dict, v: verdicts.Verdict, out_dir: str) -> list[str]:
    png = f"{_slug(model)}_transfer_heatmap.png"
    plots.transfer_heatmap(cross, os.path.join(out_dir, png))
    n = v.numbers
    rows = [[label, with_ci(n[k]), n[k]["cells"]] for k, label in
            (("within_type", "sentiment → sentiment (off-diagonal)"),
             ("cross_type", "sentiment ↔ other types"), ("random_prompt", "random prompt"),
             ("no_prompt", "no prompt"))]
    return [f"### {model}", "",
            table(["group", "mean relative performance [95% interval]", "cells"], rows), "",
            f"Intervals: bootstrap over the {n['interval_over']}.", "",
            f"![{model} transfer heatmap]({png})", "", *raw_scores(cross),
            f"**{v.verdict}.** {v.sentence}", ""]


def _speedup_rows(pairs: list[dict], similar: bool | None = None) -> list[list]:
    return [[p["pair"]] + ([] if similar is None else ["yes" if similar else "no"]) +
            [p["seeds"], p["reached"], with_ci(p["comparable"]), with_ci(p["convergence"]),
             fmt(p["tolerance"], 2), p["status"]] for p in pairs]


SPEEDUP_HEADER = ["seeds", "seeds reaching PT's best", "comparable speedup [95%]",
                  "convergence speedup [95%]", "reach tolerance (1 SE)", "status"]


def _tpt(model: str, tpt: dict, v: verdicts.Verdict, out_dir: str) -> list[str]:
    rows = (_speedup_rows(v.numbers["similar"], True) +
            _speedup_rows(v.numbers["dissimilar"], False))
    md = [f"### {model}", "", table(["source → target", "same type"] + SPEEDUP_HEADER, rows), ""]
    for p in tpt.get("pairs", []):
        png = f"{_slug(model)}_curves_{_slug(p['source'])}_to_{_slug(p['target'])}.png"
        plots.tpt_curves(p, os.path.join(out_dir, png))
        md += [f"![{model}: {p['source']} to {p['target']}]({png})", ""]
    return md + [f"**{v.verdict}.** {v.sentence}", ""]


def _cross_model(cm: dict, found: list[verdicts.Verdict], out_dir: str) -> list[str]:
    md = []
    plots.cross_model_bars(cm, os.path.join(out_dir, "cross_model_relative.png"))
    zero = [v for v in found if v.finding == "cross_model"]
    names = [m for m in cm.get("mappers", [])] + ["random_prompt", "no_prompt", "own_prompt"]
    plots.interval_bars({v.scope: {k: v.numbers[k] for k in names if k in v.numbers}
                         for v in zero}, os.path.join(out_dir, "cross_model_accuracy.png"),
                        ylabel="accuracy (mean over tasks)",
                        title="Zero-shot accuracy of mapped prompts, 95% intervals")
    for v in found:
        if v.finding == "cross_model":
            rows = [[k, with_ci(v.numbers[k], 1),
                     with_ci({"mean": v.numbers[k]["relative"],
                              "ci": v.numbers[k].get("relative_ci")}, 2),
                     v.numbers[k]["tasks"]] for k in names if k in v.numbers]
            md += [f"### {v.scope}", "",
                   table(["mapper / baseline", "accuracy [95%]", "relative, all tasks [95%]",
                          "tasks"], rows), "", f"**{v.verdict}.** {v.sentence}", ""]
        else:
            md += [f"TPT_MODEL ({v.scope}, from {v.numbers.get('mapper')}):", "",
                   table(["pair"] + SPEEDUP_HEADER, _speedup_rows(v.numbers["pairs"])), ""]
            direction = next(d for d in cm["directions"] if d["name"] == v.scope)
            for task, pair in direction.get("tpt", {}).items():
                png = (f"cross_model_tpt_{_slug(direction['source'])}_to_"
                       f"{_slug(direction['target'])}_{_slug(task)}.png")
                plots.tpt_curves(pair, os.path.join(out_dir, png))
                md += [f"![TPT_MODEL {v.scope} {task}]({png})", ""]
            md += [f"**{v.verdict}.** {v.sentence}", ""]
    return md + ["![relative performance per mapper](cross_model_relative.png)", "",
                 "![accuracy per mapper and direction](cross_model_accuracy.png)", ""]


def _init_control(control: dict | None) -> list[str]:
    """The same-init / independent-init Spearman table, or why there is none."""
    if not control:
        return []
    if not control.get("available"):
        return [f"Init control (prompt pairs with independent inits): not available, "
                f"{control.get('reason', 'no reason recorded')}.", ""]
    same, indep = control["summary"]["same_init"], control["summary"]["independent_init"]
    mean = lambda v: {"mean": v["mean_per_target"], "ci": v["mean_per_target_ci"]}  # noqa: E731
    rows = [[k, with_ci(mean(same[k])), with_ci(mean(indep[k]))] for k in same if k in indep]
    pairs = control.get("pairs", {})
    return ["Init control: the Spearman mean over targets [95%] again, once on the prompt pairs "
            f"that started from the same initial prompt ({pairs.get('same_init', '?')} pairs of "
            f"runs) and once on pairs with independent inits ({pairs.get('independent_init', '?')}"
            "; different seeds). An indicator that only tracks the shared init loses its "
            "signal on the second.", "",
            table(["indicator", "same init", "independent inits"], rows), ""]


def _indicators(model: str, ind: dict, v: verdicts.Verdict, out_dir: str) -> list[str]:
    png = f"{_slug(model)}_indicator_scatter.png"
    plots.indicator_scatter(ind, os.path.join(out_dir, png))
    rows = [[k, with_ci(n["mean_per_target"]), with_ci(n["pooled"]),
             paper.paper_value("indicators", k) or "—"]
            for k, n in v.numbers.items() if isinstance(n, dict)]
    md = [f"### {model}", "",
          table(["indicator", "Spearman, mean over targets [95%]", "pooled [95%]",
                 f"paper ({' / '.join(paper.MODELS)}, ×100)"], rows), "",
          f"ON's activated neuron: {ind.get('on_rule', 'pre-activation > 0')} rule. "
          f"Prompts compared: each run's {ind.get('prompt_kind', 'exported')} prompt"
          + (" (all taken at the same step)." if ind.get("prompt_kind") == "final" else "."), "",
          *_init_control(ind.get("init_control")),
          f"![{model} indicator scatter]({png})", ""]
    retrieval = {k: r for k, r in ind.get("retrieval", {}).items() if r.get("targets")}
    if retrieval:
        md += ["Top-1 source retrieval (the indicator's highest-ranked source is the best "
               "measured one): " + ", ".join(f"{k} {r['hits']}/{r['targets']}"
                                              for k, r in retrieval.items()) + ".", ""]
    windows = ind.get("spearman", {}).get("windows")
    if windows:
        win = f"{_slug(model)}_on_by_window.png"
        plots.on_by_window(ind, os.path.join(out_dir, win))
        md += ["ON by window of consecutive layers (Spearman, pooled):", "",
               table(["layers", "Spearman"], [[k, fmt(w, 2)] for k, w in windows.items()]), "",
               f"![{model} ON by layer window]({win})", ""]
    return md + [f"**{v.verdict}.** {v.sentence}", ""]


def write_report(results_dir: str, out_path: str | None = None) -> str:
    """Draws the PNGs and writes REPORT.md (the layout above); returns its path."""
    out_path = out_path or os.path.join(results_dir, "REPORT.md")
    out_dir = os.path.dirname(os.path.abspath(out_path))
    info = _load(os.path.join(results_dir, "run_info.json")) or {}
    on_disk = sorted(m for m in os.listdir(os.path.join(results_dir, "models"))
                     if os.path.exists(os.path.join(results_dir, "models", m, "cross_task.json")))
    models = [m for m in info.get("models", {}) if m in on_disk] + \
             [m for m in on_disk if m not in info.get("models", {})]
    res = {m: {k: _load(os.path.join(results_dir, "models", m, f"{k}.json"))
               for k in ("cross_task", "tpt", "indicators")} for m in models}
    cm = _load(os.path.join(results_dir, "cross_model", "cross_model.json"))

    found = {m: {"a": verdicts.cross_task_verdict(r["cross_task"]),
                 "b": r["tpt"] and verdicts.tpt_task_verdict(r["tpt"], r["cross_task"]["task_types"]),
                 "d": r["indicators"] and verdicts.indicator_verdict(r["indicators"])}
             for m, r in res.items()}
    cross_model = verdicts.cross_model_verdicts(cm) if cm else []

    md = [f"# Prompt transferability on {', '.join(models)}", ""]
    md += _setup(info, models)
    def rows(keys):
        return [[label, m, f[key].verdict] for key, label in keys for m, f in found.items() if f[key]]

    glance = rows((("a", "(a) zero-shot cross-task"), ("b", "(b) TPT_TASK")))
    glance += [[{"cross_model": "(c) cross-model zero-shot", "tpt_model": "(c) TPT_MODEL"}[v.finding],
                v.scope, v.verdict] for v in cross_model]
    glance += rows((("d", "(d) indicators"),))
    md += ["## Verdicts at a glance", "",
           "Each verdict is computed from the numbers and their 95% intervals: reproduced or "
           "not reproduced only when the intervals are apart, inconclusive when they overlap "
           "or are missing.", "", table(["finding", "model / direction", "verdict"], glance), ""]

    md += ["## (a) Zero-shot cross-task transfer", "",
           "Relative performance = score(S→T) / score(T→T) on the target's own template and "
           "label words.", ""]
    for m in models:
        md += _cross_task(m, res[m]["cross_task"], found[m]["a"], out_dir)
    if any(f["b"] for f in found.values()):
        md += ["## (b) Transfer as initialization (TPT_TASK)", "",
               "A pair is faster when every seed's TPT reaches PT's best (within one SE) and the "
               "95% interval of the mean comparable-result speedup over seeds lies above 1.", ""]
        for m in models:
            if found[m]["b"]:
                md += _tpt(m, res[m]["tpt"], found[m]["b"], out_dir)
    if cm:
        md += ["## (c) Cross-model transfer", "",
               "Accuracy intervals: the tasks' Wilson intervals combined (tasks independent); "
               "relative = score / score of the target model's own prompt.", ""]
        md += _cross_model(cm, cross_model, out_dir)
    if any(f["d"] for f in found.values()):
        md += ["## (d) Transferability indicators", "",
               "Spearman correlation of each indicator with measured relative transfer (self "
               "pairs excluded), per target over its sources and averaged (the headline), and "
               "pooled, with bias-corrected bootstrap 95% intervals (rho is bounded by 1, so a "
               "plain percentile interval can exclude its own estimate).", ""]
        for m in models:
            if found[m]["d"]:
                md += _indicators(m, res[m]["indicators"], found[m]["d"], out_dir)
    fileio.atomic_write(out_path, "\n".join(md))
    return out_path
