"""The report's verdicts come from the numbers and their intervals.

Crafted JSON in the real formats (cross_task.json of experiments.matrix, tpt.json
of experiments.tpt with experiments.speedups per seed, cross_model.json of
experiments.cross_model, indicators.json of experiments.indicators) is fed to
each verdict function: a clear effect, the reverse, overlapping intervals and
missing intervals each give their verdict. Then a crafted two-model results
directory gets its REPORT.md and every picture.
"""

import json
import os
import re

import numpy as np
import pytest

from ptransfer.core.intervals import wilson_interval
from ptransfer.experiments.matrix import score_intervals
from ptransfer.experiments.speedups import speedups
from ptransfer.report import verdicts
from ptransfer.report.markdown import write_report

R, NR, INC = verdicts.REPRODUCED, verdicts.NOT_REPRODUCED, verdicts.INCONCLUSIVE
TYPES = {"mr": "sentiment", "tweets": "sentiment", "amazon": "sentiment", "sms_spam": "spam"}


# ---- (a) cross-task ---------------------------------------------------------------

def crafted_cross(p_within: float, p_cross: float, n: int = 200, per_example: bool = True,
                  tasks=("mr", "tweets", "sms_spam"), backbone: str = "toy") -> dict:
    """A matrix whose predictions are right with probability p (own prompt 0.9, baselines
    0.5), every field computed from them as experiments.matrix does."""
    rng = np.random.default_rng(0)
    labels = {t: rng.integers(0, 2, n) for t in tasks}

    def preds(t, p):
        lab = labels[t]
        return np.where(rng.random(n) < p, lab, 1 - lab)

    def p_of(s, t):
        if s == t:
            return 0.9
        return p_within if TYPES[s] == TYPES[t] == "sentiment" else p_cross

    predictions = {s: {t: preds(t, p_of(s, t))[None] for t in tasks} for s in tasks}
    base = {b: {t: preds(t, 0.5) for t in tasks} for b in ("no_prompt", "random_prompt")}
    acc = lambda t, p: float(100 * np.mean(np.asarray(p).reshape(-1, n) == labels[t]))  # noqa: E731
    scores = {s: {t: acc(t, predictions[s][t]) for t in tasks} for s in tasks}
    baselines = {b: {t: acc(t, base[b][t]) for t in tasks} for b in base}
    rel = lambda row: {t: row[t] / scores[t][t] for t in tasks}  # noqa: E731
    per = {"labels": {t: labels[t].tolist() for t in tasks},
           "predictions": {s: {t: p.tolist() for t, p in row.items()}
                           for s, row in predictions.items()},
           "baselines": {b: {t: p.tolist() for t, p in row.items()} for b, row in base.items()}}
    out = {"backbone": backbone, "sources": list(tasks), "targets": list(tasks),
           "task_types": {t: TYPES[t] for t in tasks}, "metric": {t: "accuracy" for t in tasks},
           "scores": scores, "scores_std": {s: {t: None for t in tasks} for s in tasks},
           "seeds": {s: [0] for s in tasks}, "runs": {s: ["seed0"] for s in tasks},
           "relative": {s: rel(scores[s]) for s in tasks}, "baselines": baselines,
           "baselines_relative": {b: rel(v) for b, v in baselines.items()},
           "eval_sizes": {t: n for t in tasks}, "split": "test", "eval_subset": "stratified",
           "prompt_shape": [4, 8], "wall_time_s": 1.0}
    if per_example:
        out["per_example"] = per
        out["intervals"] = score_intervals(per, out["metric"], resamples=100)
    return out


@pytest.mark.parametrize("p_within, p_cross, n, want", [
    (0.85, 0.5, 300, R),   # within-type far above cross-type
    (0.5, 0.85, 300, NR),  # the reverse
    (0.7, 0.66, 40, INC),  # close, few examples: the intervals overlap
])
def test_cross_task_verdict(p_within, p_cross, n, want):
    v = verdicts.cross_task_verdict(crafted_cross(p_within, p_cross, n), resamples=300)
    assert v.verdict == want, v.sentence
    w, c = v.numbers["within_type"], v.numbers["cross_type"]
    assert (w["cells"], c["cells"]) == (2, 4)  # mr<->tweets; sms_spam with either, both ways
    assert w["ci"][0] <= w["mean"] <= w["ci"][1] and c["ci"][0] <= c["mean"] <= c["ci"][1]
    assert v.numbers["interval_over"] == "examples"
    assert v.numbers["random_prompt"]["ci"] is not None and v.numbers["no_prompt"]["cells"] == 2
    assert want in v.sentence


def test_cross_task_verdict_without_intervals_is_inconclusive():
    # no per-example predictions and one within-type cell: no interval can be drawn
    cross = crafted_cross(0.95, 0.3, per_example=False, tasks=("mr", "tweets", "sms_spam"))
    cross["relative"]["tweets"]["mr"] = None
    v = verdicts.cross_task_verdict(cross)
    assert v.numbers["interval_over"] == "cells" and v.numbers["within_type"]["ci"] is None
    assert v.verdict == INC
    # with cells enough, the bootstrap over cells decides
    v = verdicts.cross_task_verdict(crafted_cross(0.95, 0.3, per_example=False,
                                                  tasks=("mr", "tweets", "amazon", "sms_spam")))
    assert v.numbers["interval_over"] == "cells" and v.verdict == R


# ---- (b) TPT_TASK -----------------------------------------------------------------

def crafted_pair(source: str, target: str, reach_steps, tpt_top: float = 82.0) -> dict:
    """PT reaches its best 80 at step 40 on every seed; TPT reaches tpt_top at the seed's
    step (None: TPT stays at 60). Fields as experiments.tpt.run_pair writes them."""
    pair = {"source": source, "target": target, "seeds": list(range(len(reach_steps))),
            "pt": {"curves": {}, "model_dirs": {}}, "tpt": {"curves": {}, "model_dirs": {}},
            "speedups": {}, "reach_tolerance": {}, "metric": "accuracy", "init_optimizer": "fresh"}
    for seed, step in enumerate(reach_steps):
        pt = [[s, 50.0 + 30.0 * min(s, 40) / 40] for s in range(0, 81, 10)]
        tpt = [[s, (tpt_top if step is not None and s >= step else 60.0)] for s in range(0, 81, 10)]
        pair["pt"]["curves"][str(seed)], pair["tpt"]["curves"][str(seed)] = pt, tpt
        pair["speedups"][str(seed)] = speedups(pt, tpt, tolerance=2.0).to_json()
        pair["reach_tolerance"][str(seed)] = {"se": 2.0, "source": "binomial"}
    sp = list(pair["speedups"].values())
    comp = [s["comparable"] for s in sp]
    pair.update({"mean_convergence_speedup": float(np.mean([s["convergence"] for s in sp])),
                 "mean_comparable_speedup": None if None in comp else float(np.mean(comp)),
                 "mean_comparable_speedup_exact": None, "pt_best": 80.0,
                 "tpt_best": float(np.mean([s["tpt_best"] for s in sp])), "head_start": 10.0})
    return pair


@pytest.mark.parametrize("steps, want, status", [
    ([10, 10, 10, 20], R, "faster"),      # 4x, 4x, 4x, 2x
    ([None, None, None], NR, "slower"),   # TPT never comes within one SE of PT's best
    ([20, 40, 80], INC, "unclear"),       # 2x, 1x, 0.5x: the interval holds 1
    ([10], INC, "unclear"),               # one seed: no interval
])
def test_tpt_task_verdict(steps, want, status):
    tpt = {"backbone": "toy", "pairs": [crafted_pair("mr", "tweets", steps),
                                        crafted_pair("sms_spam", "mr", [10, 10, 10])]}
    v = verdicts.tpt_task_verdict(tpt, TYPES)
    assert v.verdict == want, v.sentence
    (similar,), (other,) = v.numbers["similar"], v.numbers["dissimilar"]
    assert similar["status"] == status and similar["pair"] == "mr->tweets"
    assert other["status"] == "faster"  # the dissimilar pair is the contrast, not the verdict
    if status == "faster":
        assert similar["comparable"]["mean"] == pytest.approx(3.5)
        assert similar["comparable"]["ci"][0] > 1 and similar["tolerance"] == 2.0


def test_a_source_entry_holding_its_step0_prompt_tests_no_transfer():
    """A pair whose curves alone would read 'faster' is inconclusive when the source's
    bank entry holds its initial prompt (its run never beat its step-0 score)."""
    fast = crafted_pair("mr", "tweets", [10, 10, 10, 20])
    for step, want, status in ((0, INC, verdicts.UNTRAINED_SOURCE), (30, R, "faster")):
        fast["source_prompt_step"] = step
        v = verdicts.tpt_task_verdict({"backbone": "toy", "pairs": [fast]}, TYPES)
        assert v.verdict == want and v.numbers["similar"][0]["status"] == status, v.sentence
    fast["source_prompt_step"] = 0
    sentence = verdicts.tpt_task_verdict({"backbone": "toy", "pairs": [fast]}, TYPES).sentence
    assert "step-0 prompt" in sentence


def test_tpt_task_verdict_needs_a_similar_pair():
    tpt = {"backbone": "toy", "pairs": [crafted_pair("sms_spam", "mr", [10, 10])]}
    assert verdicts.tpt_task_verdict(tpt, TYPES).verdict == INC


# ---- (c) cross-model ---------------------------------------------------------------

def _cell(acc: float, n: int, own: float, interval: bool = True) -> dict:
    return {"key": "k", "metric": "accuracy", "score": acc, "score_std": None, "scores": [acc],
            "prompts": ["a/mr/seed0"], "examples": n, "accuracy": acc,
            "accuracy_interval": list(wilson_interval(acc * n / 100, n)) if interval else None,
            "stack_eval_s": 0.1, "relative": acc / own}


def crafted_direction(name: str, mapper: float, random: float, none: float, n: int,
                      interval: bool = True, tasks=("mr", "sms_spam")) -> dict:
    own = 90.0
    accs = {"v2v-lin": mapper, "lin-comb": mapper - 5}
    cells = {m: {t: _cell(a, n, own, interval) for t in tasks} for m, a in accs.items()}
    base = {b: {t: _cell(a, n, own, interval) for t in tasks}
            for b, a in (("no_prompt", none), ("random_prompt", random), ("own_prompt", own))}
    rel = {k: {t: c["relative"] for t, c in row.items()} for k, row in {**cells, **base}.items()}
    src, tgt = name.split("->")
    return {"source": src, "target": tgt, "name": name, "prompt_shape": [4, 8],
            "shared_tokens": 100, "mappers": {m: {"kind": m} for m in accs}, "cells": cells,
            "baselines": base, "relative": rel,
            "table": {k: {"trained_on": r["mr"], "unseen_same_type": None,
                          "other_types": r["sms_spam"], "all": float(np.mean(list(r.values())))}
                      for k, r in rel.items()}, "wall_s": 1.0}


def crafted_cross_model(*directions) -> dict:
    return {"format": "ptransfer-cross-model", "tasks": ["mr", "sms_spam"], "train_tasks": ["mr"],
            "task_types": {"mr": "sentiment", "sms_spam": "spam"},
            "groups": {"mr": "trained_on", "sms_spam": "other_types"},
            "mappers": ["v2v-lin", "lin-comb"],
            "baselines": ["no_prompt", "random_prompt", "own_prompt"],
            "intervals": {"of": "accuracy", "method": "wilson", "level": 0.95},
            "directions": list(directions), "complete": True}


def test_cross_model_verdicts_per_direction():
    cm = crafted_cross_model(
        crafted_direction("a->b", 85, 50, 55, 400),              # above both baselines
        crafted_direction("b->a", 40, 60, 70, 400),              # below them
        crafted_direction("c->a", 62, 58, 55, 40),               # overlapping
        crafted_direction("a->c", 85, 50, 55, 400, interval=False))  # no intervals
    cm["directions"][0].update({"tpt_mapper": "v2v-lin",
                                "tpt": {"mr": crafted_pair("v2v-lin.mr", "mr", [10, 10, 10, 20])}})
    found = verdicts.cross_model_verdicts(cm)
    zero = {v.scope: v for v in found if v.finding == "cross_model"}
    assert {k: v.verdict for k, v in zero.items()} == {"a->b": R, "b->a": NR, "c->a": INC,
                                                       "a->c": INC}
    assert zero["a->b"].numbers["best_mapper"] == "v2v-lin"
    assert zero["a->b"].numbers["v2v-lin"]["mean"] == pytest.approx(85)
    (tpt,) = [v for v in found if v.finding == "tpt_model"]
    assert tpt.scope == "a->b" and tpt.verdict == R and tpt.numbers["mapper"] == "v2v-lin"


def test_a_mapper_above_random_but_below_no_prompt_is_not_reproduced():
    (v,) = verdicts.cross_model_verdicts(crafted_cross_model(
        crafted_direction("a->b", 70, 40, 88, 400)))
    assert v.verdict == NR


def test_cross_model_verdict_reads_the_relative_intervals_when_present():
    """With table_intervals (paired bootstrap of relative performance), the verdict
    compares those, not the accuracy intervals: here the accuracies are far apart but
    the relative intervals overlap, and the reverse."""
    def with_rel(d, mapper_ci, random_ci, none_ci):
        d["table_intervals"] = {"v2v-lin": {"all": mapper_ci}, "lin-comb": {"all": None},
                                "random_prompt": {"all": random_ci}, "no_prompt": {"all": none_ci},
                                "own_prompt": {"all": [1.0, 1.0]}}
        return d

    far_acc_close_rel = with_rel(crafted_direction("a->b", 85, 50, 55, 400),
                                 [0.70, 1.00], [0.50, 0.75], [0.55, 0.80])
    (v,) = verdicts.cross_model_verdicts(crafted_cross_model(far_acc_close_rel))
    assert v.verdict == INC and "relative performance" in v.sentence
    assert v.numbers["v2v-lin"]["relative_ci"] == [0.70, 1.00]
    close_acc_far_rel = with_rel(crafted_direction("c->a", 62, 58, 55, 40),
                                 [0.85, 0.95], [0.55, 0.65], [0.60, 0.70])
    (v,) = verdicts.cross_model_verdicts(crafted_cross_model(close_acc_far_rel))
    assert v.verdict == R
    below = with_rel(crafted_direction("c->a", 62, 58, 55, 40),
                     [0.40, 0.50], [0.55, 0.65], [0.60, 0.70])
    (v,) = verdicts.cross_model_verdicts(crafted_cross_model(below))
    assert v.verdict == NR


# ---- (d) indicators ----------------------------------------------------------------

def crafted_indicators(values: dict, cis: bool = True, backbone: str = "toy") -> dict:
    """values: indicator -> (mean per target, half width) (pooled: the same minus 0.05)."""
    summary = {}
    for k, (m, h) in values.items():
        summary[k] = {"indicator": k, "per_target": {"mr": m}, "per_target_ci": {"mr": None},
                      "mean_per_target": m, "mean_per_target_ci": [m - h, m + h] if cis else None,
                      "pooled": m - 0.05, "pooled_ci": [m - 0.05 - h, m - 0.05 + h] if cis else None,
                      "dropped_targets": {}, "resampled": "examples", "resamples": 1000, "seed": 0,
                      "confidence": 0.95}
    return {"backbone": backbone, "tasks": ["mr", "tweets", "sms_spam"], "on_rule": "gate",
            "pairwise": {k: {} for k in values},
            "points": {k: [[0.1 * i, 0.2 * i + m] for i in range(4)] for k, (m, _) in values.items()},
            "spearman": {"overall": {k: m - 0.05 for k, (m, _) in values.items()},
                         "per_target": {k: {"mr": m} for k, (m, _) in values.items()},
                         "mean_per_target": {k: m for k, (m, _) in values.items()},
                         "windows": {"0-2": 0.3, "1-3": 0.5}, "summary": summary},
            "retrieval": {}}


@pytest.mark.parametrize("on, c_avg, cis, want", [
    (0.6, 0.2, True, R), (0.1, 0.6, True, NR), (0.5, 0.4, True, INC), (0.9, 0.1, False, INC)])
def test_indicator_verdict(on, c_avg, cis, want):
    # ON_product is not an embedding similarity: far above ON, it must not be the bar
    ind = crafted_indicators({"E_concat": (0.0, 0.1), "C_average": (c_avg, 0.1),
                              "ON": (on, 0.1), "ON_product": (0.99, 0.01)}, cis=cis)
    v = verdicts.indicator_verdict(ind)
    assert v.verdict == want, v.sentence
    assert v.numbers["best_embedding"] == "C_average" and v.numbers["headline"] == "mean_per_target"
    assert "product rule" in v.sentence


def test_indicator_verdict_without_correlations_is_inconclusive():
    ind = crafted_indicators({"C_average": (float("nan"), 0.1), "ON": (float("nan"), 0.1)})
    for s in ind["spearman"]["summary"].values():
        s.update(mean_per_target=None, pooled=None)
    assert verdicts.indicator_verdict(ind).verdict == INC


# ---- the two-model report ----------------------------------------------------------

def test_two_model_report_has_every_section_and_picture(tmp_path):
    models = ("smollm2-135m", "gemma3-270m")
    for m in models:
        d = tmp_path / "models" / m
        d.mkdir(parents=True)
        tasks = ("mr", "tweets", "sms_spam")
        (d / "cross_task.json").write_text(json.dumps(crafted_cross(0.85, 0.5, tasks=tasks,
                                                                    backbone=m)))
        (d / "tpt.json").write_text(json.dumps({"backbone": m, "pairs": [
            crafted_pair("mr", "tweets", [10, 10, 20]), crafted_pair("sms_spam", "mr", [40, 40])]}))
        ind = crafted_indicators({"C_average": (0.2, 0.1), "ON": (0.6, 0.1)}, backbone=m)
        ind["prompt_kind"] = "final"
        ind["init_control"] = {"available": True, "pairs": {"same_init": 18, "independent_init": 36},
                               "summary": {v: {"ON": {"mean_per_target": rho,
                                                      "mean_per_target_ci": [rho - 0.1, rho + 0.1]}}
                                           for v, rho in (("same_init", 0.6),
                                                          ("independent_init", -0.25))}}
        (d / "indicators.json").write_text(json.dumps(ind))
    (tmp_path / "cross_model").mkdir()
    cm = crafted_cross_model(crafted_direction(f"{models[0]}->{models[1]}", 85, 50, 55, 400),
                             crafted_direction(f"{models[1]}->{models[0]}", 40, 60, 70, 400))
    cm["directions"][0].update({"tpt_mapper": "v2v-lin",
                                "tpt": {"mr": crafted_pair("v2v-lin.mr", "mr", [10, 10])}})
    (tmp_path / "cross_model" / "cross_model.json").write_text(json.dumps(cm))
    info = {"models": {m: {"backbone_spec": f"gguf:{m}.gguf", "learning_rate": 0.03}
                       for m in models},
            "seeds": [0, 1], "train_steps": 40,
            "stage times (s)": {f"{models[0]}/bank_s": 300.0, "cross_model_s": 120.0}}
    (tmp_path / "run_info.json").write_text(json.dumps(info))

    path = write_report(str(tmp_path))
    report = open(path).read()
    for heading in ("## Setup", "## Verdicts at a glance", "## (a) Zero-shot cross-task transfer",
                    "## (b) Transfer as initialization (TPT_TASK)", "## (c) Cross-model transfer",
                    "## (d) Transferability indicators"):
        assert heading in report, heading
    for m in models:
        assert f"### {m}" in report and f"gguf:{m}.gguf" in report
    assert f"### {models[0]}->{models[1]}" in report and "TPT_MODEL" in report
    assert "cross_model_s" in report and "In all: 420 s." in report
    # the paper column, and the verdicts as computed
    assert "49.7 / 36.9" in report and "44.7 / 33.5" in report
    # the init control: same-init and independent-init Spearman side by side
    assert "Prompts compared: each run's final prompt (all taken at the same step)." in report
    assert "| ON | 0.60 [0.50, 0.70] | -0.25 [-0.35, -0.15] |" in report
    assert "(18 pairs of runs)" in report and "(36; different seeds)" in report
    glance = report.split("## Verdicts at a glance")[1].split("## (a)")[0]
    # (a), (d) per model and (c) a->b with its TPT_MODEL; (b)'s 4x, 4x, 2x holds 1 in its interval
    assert glance.count("| reproduced |") == 2 * 2 + 2 and glance.count("| inconclusive |") == 2
    assert "| not reproduced |" in glance
    pngs = re.findall(r"\]\(([^)]+\.png)\)", report)
    assert {f"{models[0]}_transfer_heatmap.png", f"{models[1]}_indicator_scatter.png",
            f"{models[0]}_curves_mr_to_tweets.png", f"{models[1]}_on_by_window.png",
            "cross_model_relative.png", "cross_model_accuracy.png"} <= set(pngs)
    for png in pngs:
        assert os.path.getsize(tmp_path / png) > 0, png
