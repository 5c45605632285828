"""The indicators' init control: same-init vs independent-init entry pairs.

Each variant's task-level matrix is checked against a plain loop over entry
pairs, and its per-target Spearman against scipy's on that matrix.
"""

import numpy as np
import pytest
from scipy import stats

from ptransfer.bank.store import BankEntry
from ptransfer.experiments.indicators import init_control

TASKS = ["a", "b", "c", "d"]
SEEDS = [0, 1, 2]


def _entries(init="random", seeds=SEEDS):
    return [BankEntry(path=f"/bank/m/{t}/seed{s}", backbone="m", task=t, run=f"seed{s}",
                      meta={"init": init, "seed": s}) for t in TASKS for s in seeds]


def _plain_task_matrix(per_entry, entries, want_same: bool):
    """mean over entry pairs (i of S, j of T) whose seeds agree (want_same) or differ."""
    out = np.full((len(TASKS), len(TASKS)), np.nan)
    for a, s in enumerate(TASKS):
        for b, t in enumerate(TASKS):
            vals = [per_entry[i, j] for i, ei in enumerate(entries) for j, ej in enumerate(entries)
                    if ei.task == s and ej.task == t
                    and (ei.meta["seed"] == ej.meta["seed"]) == want_same]
            if vals:
                out[a, b] = np.mean(vals)
    return out


def test_variants_match_a_plain_computation():
    rng = np.random.default_rng(3)
    entries = _entries()
    k = len(entries)
    per_entry = {"E_average": rng.random((k, k)), "ON": rng.random((k, k))}
    rel = rng.random((len(TASKS), len(TASKS)))
    out = init_control(per_entry, entries, TASKS, rel, resamples=50, seed=0)
    assert out["available"]
    # 4 tasks x 3 seeds: ordered cross-task pairs 12 * 9 = 108, of which 12 * 3 share a seed
    assert out["pairs"] == {"same_init": 36, "independent_init": 72}
    for variant, want_same in (("same_init", True), ("independent_init", False)):
        for name, m in per_entry.items():
            task_m = _plain_task_matrix(m, entries, want_same)
            summary = out["summary"][variant][name]
            for j, t in enumerate(TASKS):
                rows = [i for i in range(len(TASKS)) if i != j]
                expected = stats.spearmanr(task_m[rows, j], rel[rows, j]).statistic
                assert summary["per_target"][t] == pytest.approx(expected, abs=1e-12)
            assert summary["mean_per_target"] == pytest.approx(
                np.mean(list(summary["per_target"].values())), abs=1e-12)


def test_same_and_independent_pairs_give_different_indicators():
    # an indicator that is high exactly when two prompts share their init
    entries = _entries()
    seed = np.array([e.meta["seed"] for e in entries])
    per_entry = {"C_average": (seed[:, None] == seed[None, :]).astype(float)}
    rel = np.random.default_rng(0).random((len(TASKS), len(TASKS)))
    out = init_control(per_entry, entries, TASKS, rel, resamples=20)
    # constant within each variant: every target ties, so no rho, and the summary says so
    for variant in ("same_init", "independent_init"):
        assert out["summary"][variant]["C_average"]["mean_per_target"] is None
        assert set(out["summary"][variant]["C_average"]["dropped_targets"]) == set(TASKS)


def test_one_seed_has_no_independent_pairs():
    out = init_control({"ON": np.ones((4, 4))}, _entries(seeds=[0]), TASKS, np.ones((4, 4)))
    assert not out["available"]
    assert "two or more seeds" in out["reason"]
    assert out["pairs"] == {"same_init": 12, "independent_init": 0}


def test_task_dependent_inits_share_nothing():
    out = init_control({"ON": np.ones((12, 12))}, _entries(init="labels"), TASKS,
                       np.ones((4, 4)))
    assert not out["available"]
    assert "labels" in out["reason"]
