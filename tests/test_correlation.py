"""Spearman with ties against scipy, and the per-target / overall indicator tables."""

import math

import numpy as np
import pytest
from scipy import stats

from ptransfer.core.errors import ConfigError
from ptransfer.indicators import correlation as corr


def test_average_ranks_match_scipy_rankdata():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=40).astype(float)  # many ties
    np.testing.assert_array_equal(corr.average_ranks(x), stats.rankdata(x, method="average"))


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 12 + seed
    x = rng.integers(0, 4, size=n).astype(float)
    y = x * (seed - 2) + rng.integers(0, 3, size=n)
    ref = stats.spearmanr(x, y)
    got = corr.spearman(x, y)
    assert got.n == n
    np.testing.assert_allclose(got.rho, ref.statistic, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.pvalue, ref.pvalue, rtol=1e-9, atol=1e-15)


def test_spearman_drops_non_finite_pairs_like_scipy_omit():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=15), rng.normal(size=15)
    x[3], y[8] = np.nan, np.inf
    keep = np.isfinite(x) & np.isfinite(y)
    ref = stats.spearmanr(x[keep], y[keep])
    got = corr.spearman(x, y)
    assert got.n == 13
    np.testing.assert_allclose([got.rho, got.pvalue], [ref.statistic, ref.pvalue], rtol=1e-10)


def test_spearman_degenerate_cases():
    assert math.isnan(corr.spearman([1, 1, 1, 1], [1, 2, 3, 4]).rho)
    assert math.isnan(corr.spearman([1, 2], [2, 1]).rho)
    perfect = corr.spearman([1, 2, 3, 4], [10, 20, 30, 40])
    assert perfect.rho == 1.0 and perfect.pvalue == 0.0
    with pytest.raises(ConfigError, match="equal length"):
        corr.spearman([1, 2, 3], [1, 2])


def test_correlate_per_target_and_overall_exclude_self_pairs():
    rng = np.random.default_rng(3)
    tasks = ["sst2", "imdb", "mr", "rte"]
    s = len(tasks)
    indicator = rng.integers(0, 6, size=(s, s)).astype(float)
    transfer = indicator + rng.normal(scale=2.0, size=(s, s))
    np.fill_diagonal(transfer, 1.0)
    table = corr.correlate(indicator, transfer, tasks, tasks, name="ON")
    pooled_x, pooled_y = [], []
    for j, target in enumerate(tasks):
        xs = [indicator[i, j] for i in range(s) if tasks[i] != target]
        ys = [transfer[i, j] for i in range(s) if tasks[i] != target]
        pooled_x += xs
        pooled_y += ys
        ref = stats.spearmanr(xs, ys).statistic
        got = table.per_target[target]
        assert got.n == s - 1
        if math.isnan(ref):
            assert math.isnan(got.rho)
        else:
            np.testing.assert_allclose(got.rho, ref, rtol=1e-12)
    np.testing.assert_allclose(table.overall.rho, stats.spearmanr(pooled_x, pooled_y).statistic,
                               rtol=1e-12)
    assert table.overall.n == s * (s - 1)
    finite = [v.rho for v in table.per_target.values() if not math.isnan(v.rho)]
    np.testing.assert_allclose(table.mean_per_target, np.mean(finite))
    js = table.to_json()
    assert js["indicator"] == "ON" and set(js["per_target"]) == set(tasks)


def test_correlate_with_sources_not_matching_targets_keeps_all_pairs():
    rng = np.random.default_rng(4)
    ind, tr = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    table = corr.correlate(ind, tr, [f"s{i}" for i in range(5)], ["t0", "t1"])
    assert table.overall.n == 10
    np.testing.assert_allclose(table.overall.rho,
                               stats.spearmanr(ind.ravel(), tr.ravel()).statistic, rtol=1e-12)
    with pytest.raises(ConfigError, match="does not match the transfer matrix"):
        corr.correlate(ind, tr[:3])
    many = corr.correlate_all({"E_concat": ind, "ON": -ind}, tr)
    np.testing.assert_allclose(many["ON"].overall.rho, -many["E_concat"].overall.rho)


def test_spearman_with_ties_is_pearson_of_average_ranks():
    """Ties included: rho is the Pearson correlation of the average ranks (numpy formula)."""
    x = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.5])
    y = np.array([0.3, 0.1, 0.4, 0.4, 0.9, 0.2, 0.9, 0.0])
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    want = np.corrcoef(rx, ry)[0, 1]
    got = corr.spearman(x, y)
    assert got.n == 8 and abs(got.rho - want) < 1e-12
    assert abs(got.pvalue - stats.spearmanr(x, y).pvalue) < 1e-12


# ---- per-target headline with bootstrap intervals ---------------------------------

TASKS4 = ["A", "B", "C", "D"]


def _hand_case():
    """[S, T] matrices (rows sources, columns targets); the diagonal would change every
    rho if it were not excluded."""
    ind = np.full((4, 4), 99.0)
    tr = np.full((4, 4), 0.55)
    ind[[1, 2, 3], 0], tr[[1, 2, 3], 0] = [0.1, 0.2, 0.3], [0.5, 0.7, 0.6]  # rho 0.5
    ind[[0, 2, 3], 1], tr[[0, 2, 3], 1] = [0.3, 0.2, 0.1], [0.1, 0.2, 0.3]  # rho -1
    ind[[0, 1, 3], 2], tr[[0, 1, 3], 2] = [0.4, 0.4, 0.4], [0.1, 0.3, 0.2]  # ties: dropped
    ind[[0, 1, 2], 3], tr[[0, 1, 2], 3] = [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]  # rho 1
    return ind, tr


def test_per_target_spearman_hand_computed():
    ind, tr = _hand_case()
    s = corr.spearman_summary(ind, tr, TASKS4, TASKS4, name="E", resamples=200, seed=0)
    # A: ranks (1,2,3) vs (1,3,2): 1 - 6 * (0 + 1 + 1) / (3 * (9 - 1)) = 0.5
    assert s.per_target["A"] == pytest.approx(0.5)
    assert s.per_target["B"] == pytest.approx(-1.0)
    assert s.per_target["D"] == pytest.approx(1.0)
    assert "C" not in s.per_target and s.dropped == {"C": "every source ties on the indicator"}
    assert s.mean == pytest.approx((0.5 - 1.0 + 1.0) / 3)
    off = corr.off_diagonal_mask(TASKS4, TASKS4)
    assert s.pooled == pytest.approx(stats.spearmanr(ind[off], tr[off]).statistic)
    j = s.to_json()
    assert j["dropped_targets"] == {"C": "every source ties on the indicator"}
    assert j["resampled"] == "pairs" and j["mean_per_target"] == pytest.approx(1 / 6)
    lo, hi = j["pooled_ci"]
    assert lo <= s.pooled <= hi
    # seeded
    again = corr.spearman_summary(ind, tr, TASKS4, TASKS4, name="E", resamples=200, seed=0)
    assert again.to_json() == j


def test_spearman_summary_drops_ties_on_transfer_and_too_few_sources():
    ind, tr = _hand_case()
    tr[[1, 2, 3], 0] = 0.5  # every source of A transfers equally
    tr[0, 3] = np.nan  # D keeps 2 measured sources
    s = corr.spearman_summary(ind, tr, TASKS4, TASKS4, resamples=50)
    assert s.dropped["A"] == "every source ties on measured transfer"
    assert s.dropped["D"].startswith("only 2 source(s)")
    assert s.mean == pytest.approx(-1.0)


def test_spearman_summary_resamples_examples_from_replicates():
    ind, tr = _hand_case()
    rng = np.random.default_rng(3)
    reps = tr[None] + 0.05 * rng.normal(size=(400, 4, 4))
    s = corr.spearman_summary(ind, tr, TASKS4, TASKS4, transfer_replicates=reps)
    assert s.resampled == "examples" and s.resamples == 400
    # replicate by replicate, the mean of per-target scipy rhos (C dropped)
    want = [np.mean([stats.spearmanr(ind[[1, 2, 3], 0], r[[1, 2, 3], 0]).statistic,
                     stats.spearmanr(ind[[0, 2, 3], 1], r[[0, 2, 3], 1]).statistic,
                     stats.spearmanr(ind[[0, 1, 2], 3], r[[0, 1, 2], 3]).statistic])
            for r in reps]
    np.testing.assert_allclose(s.mean_ci, _bc_reference(want, s.mean))
    assert s.mean_ci[0] <= s.mean <= s.mean_ci[1]
    # replicates equal to the point estimate: every interval collapses onto it
    flat = corr.spearman_summary(ind, tr, TASKS4, TASKS4,
                                 transfer_replicates=np.broadcast_to(tr, (20, 4, 4)))
    assert flat.mean_ci == pytest.approx((flat.mean, flat.mean))
    assert flat.per_target_ci["A"] == pytest.approx((0.5, 0.5))
    with pytest.raises(ConfigError, match="replicates"):
        corr.spearman_summary(ind, tr, TASKS4, TASKS4, transfer_replicates=reps[:, :3])


def _bc_reference(values, estimate):
    """Efron's bias-corrected percentile interval, written out from its definition."""
    values = sorted(values)
    f = (sum(v < estimate for v in values) + 0.5 * sum(v == estimate for v in values)) / len(values)
    f = min(max(f, 0.5 / len(values)), 1 - 0.5 / len(values))
    z0, z = stats.norm.ppf(f), stats.norm.ppf(0.975)
    lo, hi = np.quantile(values, [stats.norm.cdf(2 * z0 - z), stats.norm.cdf(2 * z0 + z)])
    return min(lo, estimate), max(hi, estimate)


def test_rho_at_its_bound_stays_inside_its_interval():
    """Every target ranks its sources exactly as the indicator: rho = 1, and resampled
    transfer can only lower it. The plain percentile interval of the replicates would
    then exclude the estimate; the bias-corrected one is closed at it."""
    ind = np.full((5, 5), 9.0)
    tr = np.full((5, 5), 1.0)
    rng = np.random.default_rng(0)
    for j in range(5):
        rows = [i for i in range(5) if i != j]
        ind[rows, j] = np.arange(4.0)
        tr[rows, j] = 0.5 + 0.01 * np.arange(4.0)
    reps = tr[None] + 0.01 * rng.normal(size=(300, 5, 5))
    tasks5 = list("ABCDE")
    s = corr.spearman_summary(ind, tr, tasks5, tasks5, transfer_replicates=reps)
    assert s.mean == pytest.approx(1.0)
    rep_means = [np.mean([stats.spearmanr(ind[[i for i in range(5) if i != j], j],
                                          r[[i for i in range(5) if i != j], j]).statistic
                          for j in range(5)]) for r in reps]
    assert np.quantile(rep_means, 0.975) < s.mean  # the plain percentile interval misses it
    np.testing.assert_allclose(s.mean_ci, _bc_reference(rep_means, s.mean))
    assert s.mean_ci[1] == pytest.approx(1.0)
    for t in tasks5:
        lo, hi = s.per_target_ci[t]
        assert lo <= s.per_target[t] <= hi
    lo, hi = s.pooled_ci
    assert lo <= s.pooled <= hi


def test_spearman_rows_match_scipy_with_ties():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, size=(30, 6)).astype(float)
    y = rng.integers(0, 4, size=(30, 6)).astype(float)
    got = corr.spearman_rows(x, y)
    for row in range(30):
        if np.ptp(x[row]) == 0 or np.ptp(y[row]) == 0:
            assert math.isnan(got[row])
        else:
            assert got[row] == pytest.approx(stats.spearmanr(x[row], y[row]).statistic)
