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
