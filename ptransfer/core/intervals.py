"""95% intervals for evaluation scores (pure numpy / scipy).

Scores are on the 0-100 scale of `tasks.metrics`; every interval is returned
as (low, high) on the same scale.

  wilson_interval        accuracy as a binomial proportion: the Wilson score
                         interval of `correct` successes in `n` trials.
  binomial_se            the standard error sqrt(p (1 - p) / n) of a score p
                         measured on n examples.
  bootstrap_interval     percentile bootstrap of any statistic of resampled
                         example indices: B resamples of n indices drawn with
                         replacement (seeded), statistic(idx [B, n]) -> [B];
                         the (1-c)/2 and (1+c)/2 quantiles of the finite values.
  bias_corrected_interval  Efron's bias-corrected (BC) percentile interval
                         of bootstrap values around a point estimate: used
                         where the statistic is bounded (a rank correlation
                         near +-1 can only move inward under resampling, so
                         the plain percentile interval may exclude the
                         estimate it is meant to bracket).
  metric_interval        accuracy or balanced accuracy from labels and
                         predictions (per prompt, or several seeds averaged).
  ratio_interval         relative performance metric(num) / metric(den) where
                         both prompts were scored on the SAME examples: each
                         resample draws one index set for both (a paired
                         bootstrap), so their shared example noise cancels.
  classification_intervals  {accuracy_ci, balanced_accuracy_ci} of one
                         evaluation (Wilson; seeded bootstrap), as every
                         evaluation of the trainer and `ptransfer eval` reports.

`batched_metric(name)` gives vectorized metrics over the last axis:
labels [..., n], predictions [..., n] -> [...]. Balanced accuracy is the mean
per-class recall over the classes present in that resample's labels, as
`tasks.metrics.balanced_accuracy` is over the classes of its references.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import stats

from ptransfer.core.errors import ConfigError

CONFIDENCE = 0.95
RESAMPLES = 1000


def wilson_interval(correct: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion correct / n, on the 0-100 scale."""
    if n <= 0:
        raise ConfigError(f"an interval needs at least one example, got n={n}.")
    if not 0 <= correct <= n:
        raise ConfigError(f"{correct} correct out of {n} examples is not a proportion.")
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = correct / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def binomial_se(score: float, n: int) -> float:
    """Standard error of a 0-100 score measured on n examples: 100 sqrt(p (1 - p) / n)."""
    if n <= 0:
        raise ConfigError(f"a standard error needs at least one example, got n={n}.")
    p = min(max(score / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1.0 - p) / n)


# ---- vectorized metrics: [..., n] -> [...] ---------------------------------------

def batched_accuracy(labels, predictions) -> np.ndarray:
    return 100.0 * np.mean(np.asarray(labels) == np.asarray(predictions), axis=-1)


def batched_balanced_accuracy(labels, predictions) -> np.ndarray:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    recalls = []
    for c in np.unique(labels):
        is_c = labels == c
        count = is_c.sum(-1)
        hit = (is_c & (predictions == c)).sum(-1)
        recalls.append(np.where(count > 0, hit / np.maximum(count, 1), np.nan))
    return 100.0 * np.nanmean(np.stack(recalls), axis=0)


BATCHED_METRICS: dict[str, Callable] = {"accuracy": batched_accuracy,
                                        "balanced_accuracy": batched_balanced_accuracy}


def batched_metric(name: str) -> Callable:
    """The vectorized form of metric `name` (accuracy or balanced_accuracy)."""
    if name not in BATCHED_METRICS:
        raise ConfigError(f"no per-example interval for metric {name!r}; intervals from "
                          f"predictions exist for {', '.join(BATCHED_METRICS)}.")
    return BATCHED_METRICS[name]


# ---- bootstrap -----------------------------------------------------------------

def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """int [resamples, n]: example indices drawn with replacement (seeded)."""
    if n <= 0:
        raise ConfigError(f"a bootstrap needs at least one example, got n={n}.")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """(low, high) quantiles of the finite values; None when there are none."""
    v = np.asarray(values, np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    lo, hi = np.quantile(v, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def bias_corrected_interval(values, estimate: float,
                            confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Efron's (1981) bias-corrected percentile interval (low, high) of bootstrap values.

    With f the fraction of finite values below `estimate` (ties counted half;
    clipped to [1/(2B), 1 - 1/(2B)]), z0 = Phi^-1(f) and z = Phi^-1((1+c)/2),
    the interval is the Phi(2 z0 - z) and Phi(2 z0 + z) quantiles of the values:
    the plain percentile interval when the estimate is the bootstrap median
    (z0 = 0). When the estimate lies beyond the values' central `confidence`
    mass (|z0| > z, e.g. a correlation at its bound for most targets), the
    interval is closed at the estimate. None when there are no finite values
    or the estimate is not finite.
    """
    v = np.asarray(values, np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0 or not math.isfinite(estimate):
        return None
    below = (np.count_nonzero(v < estimate) + 0.5 * np.count_nonzero(v == estimate)) / v.size
    below = min(max(below, 0.5 / v.size), 1.0 - 0.5 / v.size)
    z0 = stats.norm.ppf(below)
    z = stats.norm.ppf((1 + confidence) / 2)
    lo, hi = np.quantile(v, [stats.norm.cdf(2 * z0 - z), stats.norm.cdf(2 * z0 + z)])
    return float(min(lo, estimate)), float(max(hi, estimate))


def bootstrap_interval(statistic: Callable[[np.ndarray], np.ndarray], n: int, *,
                       resamples: int = RESAMPLES, seed: int = 0,
                       confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Percentile interval of statistic(idx [B, n]) -> [B] over resampled examples."""
    return percentile_interval(statistic(resample_indices(n, resamples, seed)), confidence)


def _as_runs(labels, predictions) -> tuple[np.ndarray, np.ndarray]:
    """labels [n], predictions [n] or [R, n] (R runs, e.g. seeds) -> ([n], [R, n])."""
    labels = np.asarray(labels).reshape(-1)
    preds = np.asarray(predictions)
    preds = preds[None] if preds.ndim == 1 else preds
    if preds.ndim != 2 or preds.shape[1] != labels.size or labels.size == 0:
        raise ConfigError(f"predictions of shape {preds.shape} do not match {labels.size} labels; "
                          "give [n] or [runs, n] predictions of the same examples.")
    return labels, preds


def metric_on(metric: str, labels, predictions, idx: np.ndarray) -> np.ndarray:
    """metric averaged over runs on the examples idx [B, n]: -> [B]."""
    fn = batched_metric(metric)
    labels, preds = _as_runs(labels, predictions)
    return np.mean([fn(labels[idx], p[idx]) for p in preds], axis=0)


def metric_interval(metric: str, labels, predictions, *, resamples: int = RESAMPLES,
                    seed: int = 0, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Bootstrap interval of `metric` (mean over runs when predictions are [R, n])."""
    labels, preds = _as_runs(labels, predictions)
    return bootstrap_interval(lambda idx: metric_on(metric, labels, preds, idx), labels.size,
                              resamples=resamples, seed=seed, confidence=confidence)


def ratio_replicates(metric: str, labels, numerator, denominator, *,
                     resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """float [resamples]: metric(numerator) / metric(denominator) on paired bootstrap
    resamples of the examples (NaN where the denominator is 0).

    numerator, denominator: predictions [n] or [R, n] of two prompts on the same
    n examples (labels [n]).
    """
    labels, num = _as_runs(labels, numerator)
    _, den = _as_runs(labels, denominator)
    idx = resample_indices(labels.size, resamples, seed)
    d = metric_on(metric, labels, den, idx)
    return np.where(d > 0, metric_on(metric, labels, num, idx) / np.where(d > 0, d, 1.0), np.nan)


def ratio_interval(metric: str, labels, numerator, denominator, *, resamples: int = RESAMPLES,
                   seed: int = 0, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Paired bootstrap interval of metric(numerator) / metric(denominator)
    (`ratio_replicates`; a resample whose denominator is 0 is dropped)."""
    return percentile_interval(ratio_replicates(metric, labels, numerator, denominator,
                                                resamples=resamples, seed=seed), confidence)


def classification_intervals(labels, predictions, *, resamples: int = RESAMPLES, seed: int = 0,
                             confidence: float = CONFIDENCE) -> dict[str, list[float] | None]:
    """{accuracy_ci, balanced_accuracy_ci}: [low, high] of one evaluation's scores.

    labels [n], predictions [n] (or [R, n], R runs on the same examples averaged).
    Accuracy: the Wilson interval of the (run-mean) number correct out of n;
    balanced accuracy: the seeded percentile bootstrap over the n examples
    (`metric_interval`). None where an interval has no finite replicate.
    """
    labels, preds = _as_runs(labels, predictions)
    correct = float(np.mean(preds == labels[None])) * labels.size
    bal = metric_interval("balanced_accuracy", labels, preds, resamples=resamples, seed=seed,
                          confidence=confidence)
    return {"accuracy_ci": list(wilson_interval(correct, labels.size, confidence)),
            "balanced_accuracy_ci": None if bal is None else [bal[0], bal[1]]}
