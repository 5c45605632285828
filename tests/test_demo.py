"""The demo pipeline end to end on a tiny backbone and two real offline tasks.

Same code path as `make demo` (gin profile experiments/demo_tiny.gin); checks
every report artifact exists and that the report is drawn from the JSON.
"""

import json
import os
import re

import pytest

MODELS = ("llama_tiny", "gemma3_tiny")
LEARNING_RATES = {"llama_tiny": 0.005, "gemma3_tiny": 0.01}  # demo_tiny.gin's learning_rates
PER_MODEL = ("cross_task.json", "tpt.json", "indicators.json")
# the report's pictures are named by model (see report/markdown.py); checked through
# the links in REPORT.md, each of which must exist
TOP = ("run_info.json", "REPORT.md", "cross_model/cross_model.json")


@pytest.fixture(scope="module")
def demo_out(assets_dir, tmp_path_factory):
    from ptransfer.cli import gin_setup
    from ptransfer.experiments.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    gin_setup.parse_gin(["experiments/demo_tiny.gin"], [f"OUT_DIR='{out}'"],
                        required=("BACKBONE",))
    report = run_demo()
    assert report == os.path.join(str(out), "REPORT.md")
    return str(out)


def _json(*parts):
    with open(os.path.join(*parts)) as f:
        return json.load(f)


def test_every_artifact_is_produced(demo_out):
    for name in TOP + tuple(os.path.join("models", m, f) for m in MODELS for f in PER_MODEL):
        path = os.path.join(demo_out, name)
        assert os.path.isfile(path) and os.path.getsize(path) > 0, name
    report = open(os.path.join(demo_out, "REPORT.md")).read()
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    for model in MODELS:
        assert any(model in p for p in pictures), f"REPORT.md shows no picture of {model}"
    assert any("cross_model" in p for p in pictures), "REPORT.md shows no cross-model picture"
    assert any(p.startswith("cross_model_tpt_") for p in pictures), "no TPT_MODEL curves"
    assert "Prompts compared: each run's final prompt" in report
    assert "Init control (prompt pairs with independent inits): not available" in report
    for png in pictures:
        path = os.path.join(demo_out, png)
        assert os.path.isfile(path) and os.path.getsize(path) > 0, png

    for model in MODELS:
        cross = _json(demo_out, "models", model, "cross_task.json")
        assert cross["backbone"] == model and cross["sources"] == ["mr", "sms_spam"]
        pair = _json(demo_out, "models", model, "tpt.json")["pairs"][0]
        assert (pair["source"], pair["target"]) == ("mr", "sms_spam")
        assert [p[0] for p in pair["pt"]["curves"]["0"]] == [0, 2, 4]
        # vanilla PT is the bank run itself, not trained again
        assert pair["pt"]["model_dirs"]["0"] == os.path.join(demo_out, "models", model, "runs",
                                                             "sms_spam", "seed0")
        # speedups: reached within one binomial SE of the 8-example eval, exact match beside it
        assert pair["reach_tolerance"]["0"]["source"] == "binomial"
        assert "mean_comparable_speedup_exact" in pair
        # every matrix cell has its intervals; relative performance too
        cell = cross["intervals"]["scores"]["mr"]["sms_spam"]
        assert cell["accuracy_ci"][0] <= cell["accuracy"] <= cell["accuracy_ci"][1]
        assert cross["intervals"]["relative"]["mr"]["mr"] == [1.0, 1.0]
        ind = _json(demo_out, "models", model, "indicators.json")
        # prompts compared at the same (final) step; one seed gives no independent-init pairs
        assert ind["prompt_kind"] == "final"
        assert not ind["init_control"]["available"] and "seeds" in ind["init_control"]["reason"]
        # ON on a gated FFN: the gate rule, the product rule reported beside it
        assert ind["on_rule"] == "gate" and "ON_product" in ind["pairwise"]
        # two tasks leave each target one source: no per-target rho, and the JSON says why
        summary = ind["spearman"]["summary"]["ON"]
        assert summary["resampled"] == "examples"
        assert set(summary["dropped_targets"]) == {"mr", "sms_spam"}
        assert "only 1 source(s)" in summary["dropped_targets"]["mr"]

    cm = _json(demo_out, "cross_model", "cross_model.json")
    assert cm["complete"] and [d["name"] for d in cm["directions"]] == [
        "llama_tiny->gemma3_tiny", "gemma3_tiny->llama_tiny"]
    for direction in cm["directions"]:
        assert set(direction["cells"]) == {"v2v-lin", "lin-comb", "lin-comb-nn", "relative",
                                           "projector"}
        tpt = direction["tpt"]["sms_spam"]
        target = direction["target"]
        # TPT_MODEL: vanilla PT is the target's bank run; TPT starts from the mapped prompt
        assert tpt["pt"]["model_dirs"]["0"] == os.path.join(demo_out, "models", target, "runs",
                                                            "sms_spam", "seed0")
        assert tpt["init_optimizer"] == "fresh"
        # it copies the target's own base run: the target's learning rate
        assert tpt["settings"]["base"]["optimizer"]["learning_rate"] == LEARNING_RATES[target]
    info = _json(demo_out, "run_info.json")
    assert set(info["models"]) == set(MODELS)
    assert {m: info["models"][m]["learning_rate"] for m in MODELS} == LEARNING_RATES
    assert info["optimizer"] == "adamw lr=0.005 (llama_tiny), 0.01 (gemma3_tiny)"
    times = info["stage times (s)"]
    assert {f"{m}/{s}_s" for m in MODELS for s in ("bank", "matrix", "tpt", "indicators")} \
        <= set(times) and "cross_model_s" in times


def test_report_is_drawn_from_the_json(demo_out):
    path = os.path.join(demo_out, "models", "llama_tiny", "cross_task.json")
    cross = json.load(open(path))
    cross["scores"]["mr"]["sms_spam"] = 12.345
    cross["eval_sizes"]["sms_spam"] = 4242
    with open(path, "w") as f:
        json.dump(cross, f)
    pictures = [f for f in os.listdir(demo_out) if f.endswith(".png")]
    assert pictures
    for png in pictures:
        os.remove(os.path.join(demo_out, png))
    from ptransfer.cli.main import main

    assert main(["report", demo_out]) == 0  # the command reads the two-model layout too
    report = open(os.path.join(demo_out, "REPORT.md")).read()
    assert "12.345" in report and "sms_spam: 4242" in report
    for png in pictures:
        assert os.path.isfile(os.path.join(demo_out, png)), png


def test_rerun_reuses_finished_stages(demo_out, caplog):
    from ptransfer.cli import gin_setup
    from ptransfer.experiments.demo import run_demo

    gin_setup.parse_gin(["experiments/demo_tiny.gin"], [f"OUT_DIR='{demo_out}'"],
                        required=("BACKBONE",))
    before = {m: os.path.getmtime(os.path.join(demo_out, "models", m, "tpt.json")) for m in MODELS}
    with caplog.at_level("INFO"):
        run_demo()
    assert "bank entry exists, reused" in caplog.text
    assert "tpt.json is up to date, reused" in caplog.text
    for m in MODELS:
        assert os.path.getmtime(os.path.join(demo_out, "models", m, "tpt.json")) == before[m]
    cm = _json(demo_out, "cross_model", "cross_model.json")
    assert cm["run"]["fitted_mappers"] == [] and cm["run"]["scored_cells"] == 0
    assert cm["run"]["tpt_pairs_run"] == 0


def test_cross_model_stage_is_checked_before_any_model_loads():
    from ptransfer.core.errors import ConfigError
    from ptransfer.experiments.demo import DemoConfig, run_demo
    from ptransfer.training.trainer import TrainConfig

    base = TrainConfig(backbone="preset:llama_tiny", task="mr", model_dir="unused", train_steps=1,
                       prompt_length=2, init_from="random", batch_size=2)
    with pytest.raises(ConfigError, match="two backbones"):
        run_demo(DemoConfig(backbones=["preset:llama_tiny"], train_tasks=["mr"], tpt_pairs=[],
                            cross_model_tasks=["mr"]), base)
    with pytest.raises(ConfigError, match="not among train_tasks"):
        run_demo(DemoConfig(backbones=["preset:llama_tiny", "preset:gemma3_tiny"],
                            train_tasks=["mr"], tpt_pairs=[], cross_model_tasks=["trec"]), base)
    with pytest.raises(ConfigError, match="one positive learning rate per backbone"):
        run_demo(DemoConfig(backbones=["preset:llama_tiny", "preset:gemma3_tiny"],
                            train_tasks=["mr"], tpt_pairs=[], learning_rates=[0.01]), base)
    with pytest.raises(ConfigError, match="unknown field"):
        run_demo(DemoConfig(backbones=["preset:llama_tiny", "preset:gemma3_tiny"],
                            train_tasks=["mr"], tpt_pairs=[], cross_model_tasks=["mr"],
                            cross_model_settings={"relativ_steps": 3}), base)


def test_family_means_skip_targets_without_their_own_prompt():
    from ptransfer.report.markdown import family_means

    cross = {"sources": ["mr", "sms_spam"], "targets": ["mr", "rt", "sms_spam"],
             "task_types": {"mr": "sentiment", "rt": "sentiment", "sms_spam": "spam"},
             "relative": {"mr": {"mr": 1.0, "rt": None, "sms_spam": 0.5},
                          "sms_spam": {"mr": 0.9, "rt": None, "sms_spam": 1.0}},
             "baselines_relative": {"random_prompt": {"mr": 0.6, "rt": None, "sms_spam": 0.8}}}
    fm = family_means(cross)
    assert fm == {"sentiment_to_sentiment": None, "sentiment_to_other": 0.5,
                  "random_prompt": pytest.approx(0.7)}


def _pair(pt, tpt, comparable):
    return {"source": "mr", "target": "tweets",
            "pt": {"curves": {"0": pt}}, "tpt": {"curves": {"0": tpt}},
            "mean_convergence_speedup": 1.0, "mean_comparable_speedup": comparable,
            "pt_best": max(v for _, v in pt), "tpt_best": max(v for _, v in tpt),
            "head_start": tpt[0][1] - pt[0][1]}


def test_tpt_reading_states_head_start_and_its_loss_from_the_curves():
    from ptransfer.report.markdown import _reading_tpt

    pt = [[0, 57.5], [5, 70.0], [10, 87.25]]
    lost = _reading_tpt({"pairs": [_pair(pt, [[0, 79.5], [5, 54.25], [10, 82.5]], None)]})[0]
    assert lost.startswith("mr→tweets: TPT started 22.0 points above vanilla PT")
    assert "fell by 25.2 points over its first 5 updates" in lost
    assert "never reached PT's best (87.2; TPT's best 82.5)" in lost
    kept = _reading_tpt({"pairs": [_pair(pt, [[0, 60.0], [5, 61.0], [10, 80.0]], None)]})[0]
    assert "2.5 points above" in kept and "fell" not in kept
    reached = _reading_tpt({"pairs": [_pair(pt, [[0, 60.0], [5, 88.0]], 2.0)]})[0]
    assert "2.00× as fast (faster)" in reached


def _cross(within_rel, across_rel, own_spam=60.0):
    types = {"mr": "sentiment", "tweets": "sentiment", "sms_spam": "spam"}
    rel = {"mr": {"mr": 1.0, "tweets": within_rel, "sms_spam": across_rel},
           "tweets": {"mr": within_rel, "tweets": 1.0, "sms_spam": across_rel},
           "sms_spam": {"mr": 0.8, "tweets": 0.8, "sms_spam": 1.0}}
    scores = {"mr": {"mr": 85.0}, "tweets": {"tweets": 84.0}, "sms_spam": {"sms_spam": own_spam}}
    return {"sources": list(types), "targets": list(types), "task_types": types,
            "relative": rel, "scores": scores,
            "baselines": {"no_prompt": {"mr": 80.0, "tweets": 70.0, "sms_spam": 56.0}},
            "baselines_relative": {"random_prompt": {"mr": 0.6, "tweets": 0.6, "sms_spam": 0.6}}}


def test_transfer_reading_grades_the_gap_and_flags_weak_own_prompts():
    from ptransfer.report.markdown import _reading_transfer

    far = " ".join(_reading_transfer(_cross(0.97, 0.70)))
    assert "0.97" in far and "0.70" in far and "far better" in far
    modest = " ".join(_reading_transfer(_cross(0.99, 0.92)))
    assert "with a modest gap" in modest and "far better" not in modest
    unclear = " ".join(_reading_transfer(_cross(0.95, 0.93)))
    assert "did not reproduce clearly" in unclear
    assert "sms_spam" not in " ".join(_reading_transfer(_cross(0.97, 0.7, own_spam=60.0)))
    weak = " ".join(_reading_transfer(_cross(0.97, 0.7, own_spam=54.8)))
    assert "Relative transfer to sms_spam is measured against an own prompt" in weak


def test_on_verdict_reads_the_intervals():
    """Reproduced / not reproduced only when the 95% intervals are apart; overlapping
    intervals are inconclusive whichever value is higher."""
    from ptransfer.report.markdown import _reading_indicators

    def reading(on, on_ci, cc, cc_ci):
        ind = {"spearman": {"overall": {"ON": on, "C_concat": cc},
                            "mean_per_target": {"ON": on, "C_concat": cc},
                            "summary": {"ON": {"mean_per_target_ci": on_ci},
                                        "C_concat": {"mean_per_target_ci": cc_ci}}}}
        return " ".join(_reading_indicators(ind))

    assert "reproduced, ON is higher" in reading(0.6, [0.5, 0.7], 0.2, [0.1, 0.3])
    assert "not reproduced, ON is lower" in reading(0.1, [0.0, 0.2], 0.6, [0.5, 0.7])
    text = reading(0.42, [0.27, 0.63], 0.33, [0.20, 0.50])
    assert "inconclusive, ON is higher" in text and "reproduced," not in text
    assert "inconclusive, ON is not higher" in reading(0.3, [0.1, 0.5], 0.35, [0.2, 0.5])


def test_stage_eta_prices_a_stage_at_what_it_took_on_the_earlier_model():
    from ptransfer.experiments.demo import Stages

    stages = Stages(2, cross_model=True)
    stages.took = {(0, "bank"): 600.0, (0, "matrix"): 300.0, (0, "tpt"): 120.0,
                   (0, "indicators"): 60.0}
    stages._since = 0.0
    # now at model 2's bank, 100 s in: its bank 500 s more, then matrix 300 + tpt 120 +
    # indicators 60, cross_model and report at the mean (1080 / 4 = 270 each)
    assert stages._eta(stages.plan.index((1, "bank")), now=100.0) == \
        f", ETA {(500 + 300 + 120 + 60 + 270 + 270) / 60:.0f} min"
