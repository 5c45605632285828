"""The zero-shot cross-task matrix: shape, diagonal, no recompilation, bad input."""

import numpy as np
import pytest

from ptransfer import load_backbone
from ptransfer.bank import store as bank
from ptransfer.core.errors import ConfigError, DataError
from ptransfer.experiments.matrix import cross_task_matrix, relative_replicates
from ptransfer.prompts import random_prompt_like
from tasks.metrics import accuracy, balanced_accuracy

TASKS = ["mr", "sms_spam", "trec"]
SETTINGS = dict(split="validation", eval_examples=8, input_length=48, target_length=14,
                batch_size=8)


def _meta(seed):
    return {"init": "random", "steps": 0, "best_score": None, "metric": "accuracy",
            "seed": seed}


def _fill_bank(bank_dir, backbone, seed, length=3, tasks=TASKS):
    rng = np.random.default_rng(seed)
    for task in tasks:
        prompt = rng.normal(0, 0.5, (length, backbone.d_model)).astype(np.float32)
        bank.write_entry(str(bank_dir), backbone.name, task, f"seed{seed}", prompt, _meta(seed))


@pytest.fixture(scope="module")
def backbone(assets_dir):
    return load_backbone("preset:llama_tiny")


def _score_stack_compilations(backbone):
    cache = backbone.jit_cache
    return cache["score_stack"]._cache_size() if "score_stack" in cache else 0


def test_matrix_shape_diagonal_and_no_recompilation(backbone, tmp_path):
    first, second = tmp_path / "bank_a", tmp_path / "bank_b"
    _fill_bank(first, backbone, seed=0)
    _fill_bank(second, backbone, seed=1)
    result = cross_task_matrix(backbone, str(first), TASKS, **SETTINGS)
    assert set(result["sources"]) == set(TASKS) and set(result["targets"]) == set(TASKS)
    for s in TASKS:
        assert set(result["scores"][s]) == set(TASKS)
        assert result["relative"][s][s] == pytest.approx(1.0)
        for t in TASKS:
            assert 0.0 <= result["scores"][s][t] <= 100.0
            assert result["relative"][s][t] == pytest.approx(
                result["scores"][s][t] / result["scores"][t][t])
    assert set(result["baselines"]) == {"no_prompt", "random_prompt"}
    assert result["eval_sizes"] == {t: 8 for t in TASKS}
    # Types order the targets: sentiment first, then spam, then question.
    assert result["targets"] == ["mr", "sms_spam", "trec"]

    compiled = _score_stack_compilations(backbone)
    assert compiled >= 1
    swapped = cross_task_matrix(backbone, str(second), TASKS, **SETTINGS)
    assert _score_stack_compilations(backbone) == compiled, "new prompts recompiled the scorer"
    assert swapped["runs"] == {t: ["seed1"] for t in TASKS}


def test_per_example_predictions_and_intervals(backbone, tmp_path):
    _fill_bank(tmp_path, backbone, seed=0)
    _fill_bank(tmp_path, backbone, seed=1)  # two seeds per source
    result = cross_task_matrix(backbone, str(tmp_path), TASKS, **SETTINGS)
    per, ci = result["per_example"], result["intervals"]
    metric_fns = {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy}
    for t in TASKS:
        labels = np.asarray(per["labels"][t])
        assert labels.shape == (8,)
        fn = metric_fns[result["metric"][t]]
        for s in TASKS:
            preds = np.asarray(per["predictions"][s][t])
            assert preds.shape == (2, 8)
            # the stored predictions give back the matrix's score (mean over seeds)
            assert result["scores"][s][t] == pytest.approx(np.mean([fn(labels, p) for p in preds]))
            cell = ci["scores"][s][t]
            acc = np.mean(preds == labels)
            z = 1.959964
            centre = (acc + z * z / 16) / (1 + z * z / 8)
            half = z * np.sqrt(acc * (1 - acc) / 8 + z * z / 256) / (1 + z * z / 8)
            np.testing.assert_allclose(cell["accuracy_ci"],
                                       [100 * max(0, centre - half), 100 * min(1, centre + half)],
                                       rtol=1e-5, atol=1e-9)
            lo, hi = cell["balanced_accuracy_ci"]
            assert lo <= hi
        # a prompt relative to itself is 1 on every paired resample
        assert ci["relative"][t][t] == [1.0, 1.0]
        no_prompt = np.asarray(per["baselines"]["no_prompt"][t])
        assert result["baselines"]["no_prompt"][t] == pytest.approx(fn(labels, no_prompt))
    reps = relative_replicates(result, TASKS, TASKS, resamples=50, seed=0)
    assert reps.shape == (50, 3, 3)
    for j in range(3):
        np.testing.assert_array_equal(reps[:, j, j][np.isfinite(reps[:, j, j])], 1.0)
    np.testing.assert_array_equal(reps, relative_replicates(result, TASKS, TASKS, resamples=50))
    assert relative_replicates({"metric": {}}, TASKS, TASKS) is None


def test_random_baseline_has_the_mean_norm():
    prompts = np.random.default_rng(0).normal(size=(4, 3, 8)).astype(np.float32)
    rand = random_prompt_like(prompts, seed=3)
    want = np.mean([np.linalg.norm(p) for p in prompts])
    assert rand.shape == (3, 8)
    assert np.linalg.norm(rand) == pytest.approx(want, rel=1e-5)


def test_mixed_prompt_shapes_are_named(backbone, tmp_path):
    _fill_bank(tmp_path, backbone, seed=0, length=3, tasks=["mr"])
    _fill_bank(tmp_path, backbone, seed=0, length=5, tasks=["sms_spam"])
    with pytest.raises(ConfigError, match=r"mixed shapes.*mr/seed0.*sms_spam/seed0"):
        cross_task_matrix(backbone, str(tmp_path), ["mr"], **SETTINGS)


def test_empty_bank_is_a_clear_error(backbone, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="bank"):
        cross_task_matrix(backbone, str(tmp_path / "empty"), ["mr"], **SETTINGS)


def test_masked_lm_cannot_serve_a_generative_target(tmp_path):
    mlm = load_backbone("preset:mlm_tiny")
    _fill_bank(tmp_path, mlm, seed=0, tasks=["mr"])
    with pytest.raises(ConfigError, match="squad.*cannot serve"):
        cross_task_matrix(mlm, str(tmp_path), ["squad"], **SETTINGS)
