"""`ptransfer transfer cross-model` end to end on two tiny backbones with two
vocabularies (mlm_tiny: width 32, byte-level BPE; llama_tiny: width 64, bytes;
128 shared token texts): every artifact, a rerun that reuses everything, a
changed input that refits and rescores only what depends on it, bad input."""

import json
import os

import numpy as np
import pytest

import tasks
from ptransfer import load_backbone, scoring
from ptransfer.bank import store as bank
from ptransfer.cli.main import main
from ptransfer.core import intervals
from ptransfer.data import default_truncation, load_task
from ptransfer.experiments.cross_model import task_groups
from ptransfer.projector import mappers

TASKS = ["mr", "tweets", "sms_spam"]  # trained on / unseen, same type / other type
NAMES = ["v2v-lin", "lin-comb", "lin-comb-nn", "relative", "projector"]
BACKBONES = {"mlm_tiny": 32, "llama_tiny": 64}
SMALL = ["--eval-examples", "8", "--input-length", "32", "--target-length", "14",
         "--batch-size", "8", "--relative-steps", "20", "--relative-anchors", "64",
         "--projector-hidden", "16", "--projector-steps", "10", "--metric", "accuracy"]


def _fill(bank_dir, backbones=BACKBONES, tasks_=TASKS, seeds=(0, 1)):
    rng = np.random.default_rng(0)
    for name, width in backbones.items():
        for task in tasks_:
            for seed in seeds:
                prompt = rng.normal(0, 0.5, (3, width)).astype(np.float32)
                bank.write_entry(str(bank_dir), name, task, f"seed{seed}", prompt,
                                 {"init": "random", "steps": 0, "best_score": None,
                                  "metric": "accuracy", "seed": seed})


def _command(bank_dir, out, *extra, source="mlm_tiny", target="llama_tiny", tasks_=TASKS):
    return main(["transfer", "cross-model", "--bank", str(bank_dir),
                 "--source-backbone", f"preset:{source}", "--target-backbone",
                 f"preset:{target}", "--tasks", ",".join(tasks_), "--train-tasks", "mr",
                 "--out", str(out), *SMALL, *extra])


def _mapper_files(out):
    found = {}
    for root, _, files in os.walk(os.path.join(out, "mappers")):
        for f in files:
            path = os.path.join(root, f)
            found[os.path.relpath(path, out)] = os.stat(path).st_mtime_ns
    return found


def _read(out):
    with open(os.path.join(out, "cross_model.json")) as f:
        return json.load(f)


def test_command_writes_every_artifact_reruns_as_a_noop_and_refits_what_changed(tmp_path):
    bank_dir, out = tmp_path / "bank", tmp_path / "out"
    _fill(bank_dir)
    assert _command(bank_dir, out) == 0
    result = _read(out)
    assert result["complete"] and result["tasks"] == TASKS and result["mappers"] == NAMES
    assert result["groups"] == {"mr": "trained_on", "tweets": "unseen_same_type",
                                "sms_spam": "other_types"}
    assert os.path.getsize(out / "cross_model_relative.png") > 0
    files = _mapper_files(out)
    (d,) = result["directions"]
    assert d["name"] == "mlm_tiny->llama_tiny" and d["shared_tokens"] == 128
    for name in NAMES:
        info = d["mappers"][name]
        assert info["dir"] == str(out / "mappers" / name / "mlm_tiny_to_llama_tiny")
        assert f"mappers/{name}/mlm_tiny_to_llama_tiny/mapper.json" in files
        loaded = mappers.load(info["dir"])
        assert (loaded.pair.source_backbone, loaded.pair.d_tgt) == ("mlm_tiny", 64)
        assert info["fit_s"] is not None and info["apply_s"] is not None
        for t in TASKS:
            cell = d["cells"][name][t]
            assert cell["prompts"] == [f"mlm_tiny/{t}/seed0", f"mlm_tiny/{t}/seed1"]
            assert cell["examples"] == 8 and cell["metric"] == "accuracy"
            low, high = cell["accuracy_interval"]
            assert low <= cell["accuracy"] <= high
            assert (low, high) == pytest.approx(intervals.wilson_interval(
                cell["accuracy"] * 8 / 100, 8))
            own = d["baselines"]["own_prompt"][t]["score"]
            assert cell["relative"] == (pytest.approx(cell["score"] / own) if own else None)
    assert d["mappers"]["projector"]["fit_on"]["tasks"] == ["mr"]
    assert d["mappers"]["projector"]["fit_on"]["pairs"] == 2  # seeds 0 and 1 of mr
    assert d["mappers"]["relative"]["fit_on"]["tokens"] == 64
    for base in ("no_prompt", "random_prompt", "own_prompt"):
        assert set(d["baselines"][base]) == set(TASKS)
    for t in TASKS:
        own = d["baselines"]["own_prompt"][t]
        assert own["relative"] == (pytest.approx(1.0) if own["score"] else None)
    assert set(d["table"]) == set(NAMES) | {"no_prompt", "random_prompt", "own_prompt"}
    # Relative performance with a paired bootstrap interval, from the stored per-example
    # predictions: the same as a plain numpy bootstrap over the examples.
    for k, t in enumerate(result["tasks"]):
        own = d["baselines"]["own_prompt"][t]
        cell = d["cells"]["v2v-lin"][t]
        assert np.asarray(cell["predictions"]).shape == (2, 8) and cell["labels"] == own["labels"]
        if not own["score"]:
            continue
        labels, num, den = (np.asarray(x) for x in (cell["labels"], cell["predictions"],
                                                     own["predictions"]))
        idx = np.random.default_rng(k).integers(0, 8, size=(intervals.RESAMPLES, 8))
        ratio = (labels[idx][None] == num[:, idx]).mean(-1).mean(0) / \
            (labels[idx][None] == den[:, idx]).mean(-1).mean(0)
        ratio = ratio[np.isfinite(ratio)]
        assert cell["relative_interval"] == pytest.approx(
            list(np.quantile(ratio, [0.025, 0.975])))
        assert own["relative_interval"] == pytest.approx([1.0, 1.0])
    all_ci = d["table_intervals"]["v2v-lin"]["all"]
    assert all_ci is None or all_ci[0] <= all_ci[1]
    assert set(d["table"]["v2v-lin"]) == {"trained_on", "unseen_same_type", "other_types", "all"}
    assert result["run"]["scored_cells"] == 3 * (5 + 3)
    assert len(result["run"]["fitted_mappers"]) == 5

    # A cell is the mapped bank prompts scored on the target: recompute one.
    src, tgt = load_backbone("preset:mlm_tiny"), load_backbone("preset:llama_tiny")
    prompt = bank.find_entry(str(bank_dir), "mlm_tiny", "tweets", "seed1").read()[0]
    mapped = mappers.load(d["mappers"]["lin-comb"]["dir"]).apply(prompt, source=src, target=tgt)
    task, mlm = load_task("tweets", tgt)
    eval_set = scoring.build_eval_set(task, tasks.get_spec("tweets"), tgt, "validation", 8,
                                      {"inputs": 32, "targets": 14},
                                      truncate_inputs=default_truncation(tgt), mlm=mlm)
    assert scoring.Scorer(tgt, batch_size=8).evaluate(mapped, eval_set)["accuracy"] == \
        pytest.approx(d["cells"]["lin-comb"]["tweets"]["scores"][1])

    # The same command again: nothing fit, nothing scored, mapper files untouched.
    assert _command(bank_dir, out) == 0
    again = _read(out)
    assert again["run"] == {"fitted_mappers": [], "reused_mappers": result["run"]["fitted_mappers"],
                            "scored_cells": 0, "reused_cells": 24, "tpt_pairs_run": 0,
                            "tpt_pairs_reused": 0}
    assert _mapper_files(out) == files
    assert all(again["directions"][0]["mappers"][n]["reused"] for n in NAMES)
    assert not any(d["mappers"][n]["reused"] for n in NAMES)
    assert again["directions"][0]["cells"] == d["cells"]

    # Another relative setting and the reverse direction: the forward v2v-lin and its
    # cells are reused, the forward relative refit and rescored, the reverse all new.
    assert _command(bank_dir, out, "--mappers", "v2v-lin,relative", "--relative-steps", "21",
                    "--both-directions") == 0
    changed = _read(out)
    assert changed["run"]["fitted_mappers"] == ["mlm_tiny->llama_tiny:relative",
                                                "llama_tiny->mlm_tiny:v2v-lin",
                                                "llama_tiny->mlm_tiny:relative"]
    assert changed["run"]["scored_cells"] == 3 + 3 * (2 + 3)
    assert changed["run"]["reused_cells"] == 3 * (1 + 3)
    forward, reverse = changed["directions"]
    assert forward["cells"]["v2v-lin"] == d["cells"]["v2v-lin"]
    assert reverse["name"] == "llama_tiny->mlm_tiny" and reverse["shared_tokens"] == 128
    assert mappers.load(reverse["mappers"]["relative"]["dir"]).pair.d_tgt == 32
    assert set(reverse["cells"]["relative"]) == set(TASKS)


def test_bad_input_is_one_clear_error(tmp_path, capsys):
    bank_dir = tmp_path / "bank"
    _fill(bank_dir, backbones={"mlm_tiny": 32}, tasks_=["mr"], seeds=(0,))
    assert _command(bank_dir, tmp_path / "o1", tasks_=["mr", "tweetz"]) == 2
    assert "unknown task 'tweetz'. Did you mean 'tweets'" in capsys.readouterr().err
    assert _command(bank_dir, tmp_path / "o2", tasks_=["mr"]) == 2
    err = capsys.readouterr().err
    assert "holds no prompt tuned on backbone 'llama_tiny' (it holds: mlm_tiny)" in err
    _fill(bank_dir, backbones={"llama_tiny": 64}, tasks_=["mr"], seeds=(0,))
    assert _command(bank_dir, tmp_path / "o3", "--both-directions", tasks_=["mr", "tweets"]) == 2
    assert "no prompt tuned on 'mlm_tiny' for task(s) tweets" in capsys.readouterr().err
    assert _command(bank_dir, tmp_path / "o4", "--mappers", "v2v,relative") == 2
    assert "unknown mapper 'v2v'" in capsys.readouterr().err
    bank.write_entry(str(bank_dir), "mlm_tiny", "tweets", "long", np.zeros((5, 32), np.float32),
                     {"init": "random", "steps": 0, "best_score": None, "metric": None, "seed": 0})
    assert _command(bank_dir, tmp_path / "o5", tasks_=["mr", "tweets"]) == 2
    assert "different shapes (mlm_tiny/mr/seed0: [3, 32]; mlm_tiny/tweets/long: [5, 32])" in \
        capsys.readouterr().err
    assert not any(os.path.exists(tmp_path / o / "cross_model.json")
                   for o in ("o1", "o2", "o3", "o4", "o5"))


def test_task_groups():
    assert task_groups(["trec", "imdb", "mr"], ["mr"]) == {
        "trec": "other_types", "imdb": "unseen_same_type", "mr": "trained_on"}


def test_tpt_model_from_the_best_mapper_and_its_rerun(tmp_path):
    bank_dir, out = tmp_path / "bank", tmp_path / "out"
    _fill(bank_dir, tasks_=["mr", "tweets"], seeds=(0,))
    tpt = ["--mappers", "v2v-lin,lin-comb", "--tpt-steps", "2", "--tpt-eval-every", "1",
           "--tpt-tasks", "mr", "--tpt-batch-size", "4"]
    assert _command(bank_dir, out, *tpt, tasks_=["mr", "tweets"]) == 0
    (d,) = _read(out)["directions"]
    best = max(["v2v-lin", "lin-comb"], key=lambda m: d["table"][m]["all"])
    assert d["tpt_mapper"] == best and set(d["tpt"]) == {"mr"}
    pair = d["tpt"]["mr"]
    assert pair["mapper"] == best and pair["source_entry"] == "mlm_tiny/mr/seed0"
    assert [s for s, _ in pair["pt"]["curves"]["0"]] == [0, 1, 2]
    assert [s for s, _ in pair["tpt"]["curves"]["0"]] == [0, 1, 2]
    assert pair["speedups"]["0"]["convergence"] > 0
    # TPT started from the mapped prompt: the file is the mapper's map of the bank prompt.
    src, tgt = load_backbone("preset:mlm_tiny"), load_backbone("preset:llama_tiny")
    prompt = bank.find_entry(str(bank_dir), "mlm_tiny", "mr", "seed0").read()[0]
    want = mappers.load(d["mappers"][best]["dir"]).apply(prompt, source=src, target=tgt)
    np.testing.assert_array_equal(np.load(pair["mapped_prompt"]), want)
    assert os.path.getsize(out / "tpt_model_mlm_tiny_to_llama_tiny_mr.png") > 0
    assert _command(bank_dir, out, *tpt, tasks_=["mr", "tweets"]) == 0
    run = _read(out)["run"]
    assert (run["tpt_pairs_run"], run["tpt_pairs_reused"], run["scored_cells"]) == (0, 1, 0)
