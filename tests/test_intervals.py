"""Score intervals against hand-computed values and plain loops over tasks.metrics."""

import math

import numpy as np
import pytest

from ptransfer.core import intervals
from ptransfer.core.errors import ConfigError
from tasks.metrics import accuracy, balanced_accuracy


def test_wilson_hand_computed():
    # 8 of 10, z = 1.959964: centre (0.8 + z^2/20) / (1 + z^2/10), half-width
    # z sqrt(0.016 + z^2/400) / (1 + z^2/10)  ->  (0.4902, 0.9433)
    lo, hi = intervals.wilson_interval(8, 10)
    assert lo == pytest.approx(49.016, abs=1e-2) and hi == pytest.approx(94.331, abs=1e-2)
    # 0 of n keeps a positive upper bound: z^2 / (n + z^2)
    lo, hi = intervals.wilson_interval(0, 20)
    z2 = 1.959964 ** 2
    assert lo == 0.0 and hi == pytest.approx(100 * z2 / (20 + z2), rel=1e-5)
    with pytest.raises(ConfigError, match="at least one example"):
        intervals.wilson_interval(0, 0)


def test_binomial_se_hand_computed():
    assert intervals.binomial_se(50.0, 100) == pytest.approx(5.0)
    assert intervals.binomial_se(80.0, 64) == pytest.approx(100 * math.sqrt(0.16 / 64))
    assert intervals.binomial_se(100.0, 10) == 0.0


def test_batched_metrics_equal_task_metrics():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=(7, 40))
    preds = rng.integers(0, 3, size=(7, 40))
    labels[2] = 1  # one row with a single class present
    for row in range(7):
        assert intervals.batched_accuracy(labels, preds)[row] == pytest.approx(
            accuracy(labels[row], preds[row]))
        assert intervals.batched_balanced_accuracy(labels, preds)[row] == pytest.approx(
            balanced_accuracy(labels[row], preds[row]))


def _loop_bootstrap(metric_fn, labels, preds, resamples, seed):
    """Percentile bootstrap written as a plain loop over the same seeded draws."""
    idx = np.random.default_rng(seed).integers(0, len(labels), size=(resamples, len(labels)))
    values = [np.mean([metric_fn(labels[i], p[i]) for p in preds]) for i in idx]
    return tuple(np.quantile(values, [0.025, 0.975]))


def test_metric_interval_equals_plain_loop():
    rng = np.random.default_rng(2)
    labels = np.r_[np.zeros(30, int), np.ones(10, int)]  # skewed, as SMS
    preds = np.where(rng.random((2, 40)) < 0.8, labels, 1 - labels)  # two seeds
    got = intervals.metric_interval("balanced_accuracy", labels, preds, resamples=300, seed=3)
    want = _loop_bootstrap(balanced_accuracy, labels, preds, 300, 3)
    np.testing.assert_allclose(got, want)
    point = np.mean([balanced_accuracy(labels, p) for p in preds])
    assert got[0] < point < got[1]
    # seeded: the same seed gives the same interval, another seed another
    assert intervals.metric_interval("balanced_accuracy", labels, preds, resamples=300,
                                     seed=3) == got
    assert intervals.metric_interval("balanced_accuracy", labels, preds, resamples=300,
                                     seed=4) != got


def test_ratio_interval_is_paired():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, size=60)
    own = np.where(rng.random(60) < 0.9, labels, 1 - labels)
    # the same predictions: every paired resample gives exactly 1
    assert intervals.ratio_interval("accuracy", labels, own, own, resamples=200) == (1.0, 1.0)
    other = np.where(rng.random(60) < 0.6, labels, 1 - labels)
    got = intervals.ratio_interval("accuracy", labels, other, own, resamples=300, seed=0)
    idx = np.random.default_rng(0).integers(0, 60, size=(300, 60))
    want = np.quantile([accuracy(labels[i], other[i]) / accuracy(labels[i], own[i]) for i in idx],
                       [0.025, 0.975])
    np.testing.assert_allclose(got, want)


def test_bias_corrected_interval_hand_computed():
    from scipy import stats

    v = (np.arange(1000) + 0.5) / 1000  # uniform quantiles: the q-quantile is ~q
    # the estimate at the bootstrap median: z0 = 0, the plain percentile interval
    assert intervals.bias_corrected_interval(v, 0.5) == pytest.approx(
        intervals.percentile_interval(v))
    # the estimate at the 84.13% point: z0 = 1, levels Phi(2 - 1.96) and Phi(2 + 1.96)
    lo, hi = intervals.bias_corrected_interval(v, stats.norm.cdf(1.0))
    assert lo == pytest.approx(stats.norm.cdf(2 - stats.norm.ppf(0.975)), abs=2e-3)
    assert hi == pytest.approx(stats.norm.cdf(2 + stats.norm.ppf(0.975)), abs=2e-3)
    # every value below the estimate: the interval is closed at it
    lo, hi = intervals.bias_corrected_interval(v, 1.5)
    assert hi == 1.5 and lo > 0.9
    assert intervals.bias_corrected_interval([np.nan], 0.5) is None
    assert intervals.bias_corrected_interval(v, float("nan")) is None


def test_bad_input():
    with pytest.raises(ConfigError, match="do not match"):
        intervals.metric_interval("accuracy", [0, 1, 1], [[0, 1]])
    with pytest.raises(ConfigError, match="no per-example interval"):
        intervals.metric_interval("squad_f1", [0, 1], [0, 1])
