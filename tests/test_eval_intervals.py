"""95% intervals on every evaluation (trainer curve, `ptransfer eval`) and the
per-example predictions file, checked against plain numpy on tiny real models."""

import json
import math

import numpy as np
import pytest
from _trainer_common import backbone, register_tiny_yesno, write_justice

from ptransfer.training.evaluation import EvalConfig, run_eval
from ptransfer.training.optimizer import OptimizerConfig
from ptransfer.training.trainer import TrainConfig, Trainer

# 40 rows, 3:1 skewed; letters a/b for class 1, y/z for class 0
ROWS = [(1, w) for w in ("aaaa", "abab", "bbaa", "baab", "abba", "aabb", "bab", "aba", "bbb",
                         "aab", "abb", "baa", "ab", "ba", "aaa", "bbab", "abaa", "baba", "bbba",
                         "aaab", "abbb", "babb", "aaba", "bbaa", "abab", "aabb", "baab", "abba",
                         "bbbb", "aaaa")] + \
       [(0, w) for w in ("zzzz", "zyzy", "yyzz", "yzzy", "zzy", "yzy", "zyy", "yyy", "zz", "yz")]
N_EVAL = 20


def wilson(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [100 * (centre - half), 100 * (centre + half)]


def bootstrap_balanced(labels, preds, seed=0, resamples=1000):
    idx = np.random.default_rng(seed).integers(0, len(labels), size=(resamples, len(labels)))
    values = []
    for row in idx:
        y, p = labels[row], preds[row]
        values.append(100 * np.mean([np.mean(p[y == c] == c) for c in np.unique(y)]))
    return list(np.quantile(values, [0.025, 0.975]))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_justice(str(tmp_path_factory.mktemp("data")), rows=ROWS)


def test_intervals_and_predictions_file_agree_with_numpy(data_dir, tmp_path, monkeypatch):
    register_tiny_yesno(monkeypatch)
    bb = backbone("llama_tiny")
    cfg = TrainConfig(backbone="preset:llama_tiny", task="tiny_yesno", model_dir=str(tmp_path / "run"),
                      prompt_length=4, init_from="vocab", batch_size=8, train_steps=9,
                      optimizer=OptimizerConfig(name="adamw", learning_rate=0.1, weight_decay=0.0),
                      input_length=8, target_length=4, eval_split="train", eval_every=3, eval_schedule="log",
                      eval_examples=N_EVAL, checkpoint_every=0, data_dir=data_dir, progress=False)
    result = Trainer(cfg, backbone=bb).run()
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 2, 4, 9]  # log-spaced: 9 ** (k / 3) = 2.08, 4.33, 9
    assert all(len(r["accuracy_ci"]) == 2 and len(r["balanced_accuracy_ci"]) == 2 for r in lines)

    # The final prompt evaluated again by `ptransfer eval`, with its predictions file.
    preds_path = tmp_path / "out" / "preds.jsonl"
    out = run_eval(EvalConfig(backbone=cfg.backbone, task="tiny_yesno",
                              prompt=str(tmp_path / "run" / "prompt.npy"), split="train",
                              eval_examples=N_EVAL, batch_size=8, input_length=8, target_length=4,
                              data_dir=data_dir, predictions=str(preds_path)), backbone=bb)
    rows = [json.loads(s) for s in preds_path.read_text().splitlines()]
    assert len(rows) == N_EVAL == out["examples"]
    assert not list(preds_path.parent.glob("*.tmp*"))  # atomic: nothing left beside it
    labels = np.array([r["label"] for r in rows])
    preds = np.array([r["prediction"] for r in rows])
    scores = np.array([r["scores"] for r in rows])
    np.testing.assert_array_equal(preds, np.argmax(scores, axis=1))
    assert scores.shape == (N_EVAL, 2)

    # index: the seeded stratified sample of the split (30:10 -> 15:5), labels as in the split
    split_labels = np.array([y for y, _ in ROWS])
    index = np.array([r["index"] for r in rows])
    assert len(set(index)) == N_EVAL and list(index) == sorted(index)
    np.testing.assert_array_equal(labels, split_labels[index])
    assert (labels == 1).sum() == 15 and (labels == 0).sum() == 5

    # predictions reproduce the reported scores; intervals are plain Wilson / bootstrap
    acc = 100 * np.mean(preds == labels)
    bal = 100 * np.mean([np.mean(preds[labels == c] == c) for c in (0, 1)])
    assert out["metrics"]["accuracy"] == pytest.approx(acc)
    assert out["metrics"]["balanced_accuracy"] == pytest.approx(bal)
    want = {"accuracy_ci": wilson(int((preds == labels).sum()), N_EVAL),
            "balanced_accuracy_ci": bootstrap_balanced(labels, preds)}
    for key, ci in want.items():
        np.testing.assert_allclose(out["intervals"][key], ci, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(lines[-1][key], ci, rtol=1e-9, atol=1e-9)
    assert lines[-1]["accuracy"] == pytest.approx(acc)
    assert result.curve == lines  # the bank's curve is the file's


def test_generation_predictions_file(tmp_path):
    from ptransfer import scoring

    # a generative EvalSet row layout without a model: index, reference, prediction
    spec = type("S", (), {"name": "g", "is_classification": False})()
    es = scoring.EvalSet(spec=spec, split="validation", inputs=np.ones((2, 3), np.int32),
                         inputs_mask=np.ones((2, 3), np.int32), references=["a b", "c"])
    ev = scoring.Evaluation({"rouge_l": 50.0}, ["a", "d"])
    path = tmp_path / "g.jsonl"
    scoring.write_predictions(str(path), ev, es)
    assert [json.loads(s) for s in path.read_text().splitlines()] == [
        {"index": 0, "prediction": "a", "reference": "a b"},
        {"index": 1, "prediction": "d", "reference": "c"}]
    assert scoring.evaluation_intervals(ev, es) == {}


def test_classification_intervals_match_numpy_on_mixed_predictions():
    from ptransfer.core import intervals

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 60)
    preds = np.where(rng.random(60) < 0.6, labels, rng.integers(0, 3, 60))
    got = intervals.classification_intervals(labels, preds, seed=5)
    np.testing.assert_allclose(got["accuracy_ci"], wilson(int((preds == labels).sum()), 60),
                               rtol=1e-9)
    np.testing.assert_allclose(got["balanced_accuracy_ci"],
                               bootstrap_balanced(labels, preds, seed=5), rtol=1e-9)
    assert got["balanced_accuracy_ci"][1] - got["balanced_accuracy_ci"][0] > 10


def test_evaluation_schedules_hand_computed():
    from ptransfer.core.errors import ConfigError
    from ptransfer.training.trainer import evaluation_steps

    assert evaluation_steps(100, 25) == {25, 50, 75, 100}
    # 100 ** (k / 4): 3.16, 10, 31.6, 100
    assert evaluation_steps(100, 25, "log") == {3, 10, 32, 100}
    assert evaluation_steps(10, 4) == {4, 8, 10}            # the final step always
    assert evaluation_steps(10, 4, "log") == {3, 10}        # 10 ** (1 / 2) = 3.16
    assert evaluation_steps(10, 20, "log") == {10}
    assert evaluation_steps(10, 0, "log") == set()
    with pytest.raises(ConfigError, match="eval_schedule"):
        TrainConfig(backbone="preset:t5_tiny", task="justice", model_dir="/tmp/x", prompt_length=1,
                    init_from="vocab", batch_size=1, train_steps=1, eval_schedule="cosine").validate()
