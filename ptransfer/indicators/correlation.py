"""Spearman rank correlation between an indicator and measured transfer.

`spearman` is `scipy.stats.spearmanr`: Spearman's rho with average ranks for
ties (the Pearson correlation of the ranks) and its two-sided p-value from
Student's t with n - 2 degrees of freedom.

`correlate` takes an indicator matrix [S, T] (similarity between source
prompt s and the prompt of target task t) and the relative-transfer matrix
[S, T] (score(s -> t) / score(t -> t)), and reports rho per target task (over
the sources) and overall (over all pooled (source, target) pairs), as in Su et
al. (2022), Table 6. Pairs where the source task IS the target task are
excluded: their relative transfer is 1 by definition and every similarity
of a prompt with itself is maximal, so they would inflate rho without saying
anything about transfer. Non-finite entries (a pair not measured) are
dropped pairwise. Fewer than 3 remaining pairs, or a constant vector, give
rho = nan.

`spearman_summary` is the headline form (Su et al. read the correlation per
target task): rho per target over its sources, their mean over targets (the
headline), and the pooled rho beside it, each with a seeded bias-corrected
percentile bootstrap 95% interval (`intervals.bias_corrected_interval`: rho is
bounded by 1, and a rho at or near the bound can only fall under resampling, so
the plain percentile interval could exclude the estimate). A target where every source ties (on the indicator or
on transfer), or that has fewer than 3 sources, has no rho: it is dropped from
the mean and listed in `dropped` with the reason. The bootstrap resamples the
evaluation examples when the caller passes transfer replicates computed from
resampled examples (`transfer_replicates` [B, S, T]); otherwise it resamples
the (source, target) pairs: within each target for the per-target rhos and
the mean, over all pooled pairs for the pooled rho.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from ptransfer.core.errors import ConfigError
from ptransfer.core.intervals import CONFIDENCE, RESAMPLES, bias_corrected_interval


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n of x [n] (float64); tied values share the mean of their ranks."""
    return stats.rankdata(np.asarray(x, np.float64).reshape(-1), method="average")


@dataclasses.dataclass(frozen=True)
class Spearman:
    rho: float
    pvalue: float
    n: int

    def to_json(self) -> dict:
        return {"rho": _num(self.rho), "pvalue": _num(self.pvalue), "n": self.n}


def _num(v: float):
    return None if v is None or not math.isfinite(v) else float(v)


def spearman(x, y) -> Spearman:
    """Spearman's rho of x [n] and y [n], non-finite pairs dropped."""
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ConfigError(f"spearman needs vectors of equal length, got {x.size} and {y.size}.")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n < 3:
        return Spearman(math.nan, math.nan, n)
    if np.all(x == x[0]) or np.all(y == y[0]):  # a constant vector: rank correlation undefined
        return Spearman(math.nan, math.nan, n)
    result = stats.spearmanr(x, y)  # average ranks for ties; two-sided t-test p-value
    return Spearman(float(result.statistic), float(result.pvalue), n)


@dataclasses.dataclass(frozen=True)
class CorrelationTable:
    """Spearman rho of one indicator against relative transfer.

    per_target: target task -> rho over the sources (self pair excluded).
    overall: rho over every off-diagonal (source, target) pair pooled.
    mean_per_target: mean of the finite per-target rhos (nan if none).
    """

    indicator: str
    per_target: dict[str, Spearman]
    overall: Spearman
    mean_per_target: float

    def to_json(self) -> dict:
        return {"indicator": self.indicator,
                "per_target": {t: s.to_json() for t, s in self.per_target.items()},
                "overall": self.overall.to_json(),
                "mean_per_target": _num(self.mean_per_target)}


def off_diagonal_mask(sources: Sequence[str], targets: Sequence[str]) -> np.ndarray:
    """bool [S, T]: True where source task != target task."""
    return np.array([[s != t for t in targets] for s in sources], bool).reshape(
        len(sources), len(targets))


def correlate(indicator, transfer, sources: Sequence[str] | None = None,
              targets: Sequence[str] | None = None, name: str = "") -> CorrelationTable:
    """Spearman of indicator [S, T] vs relative transfer [S, T], per target and overall.

    Without task names, a square matrix excludes its index diagonal and a
    non-square one excludes nothing.
    """
    ind = np.asarray(indicator, np.float64)
    tr = np.asarray(transfer, np.float64)
    if ind.ndim != 2 or ind.shape != tr.shape:
        raise ConfigError(f"indicator {name or ''} of shape {ind.shape} does not match the transfer "
                          f"matrix of shape {tr.shape}; both must be [sources, targets].")
    n_src, n_tgt = ind.shape
    if sources is None and targets is None and n_src == n_tgt:
        sources = targets = [str(i) for i in range(n_src)]
    sources = list(sources) if sources is not None else [f"source {i}" for i in range(n_src)]
    targets = list(targets) if targets is not None else [f"target {j}" for j in range(n_tgt)]
    if len(sources) != n_src or len(targets) != n_tgt:
        raise ConfigError(f"{len(sources)} source and {len(targets)} target names for a matrix "
                          f"of shape {ind.shape}.")
    keep = off_diagonal_mask(sources, targets)
    per_target = {t: spearman(ind[keep[:, j], j], tr[keep[:, j], j])
                  for j, t in enumerate(targets)}
    overall = spearman(ind[keep], tr[keep])
    rhos = [s.rho for s in per_target.values() if math.isfinite(s.rho)]
    mean = float(np.mean(rhos)) if rhos else math.nan
    return CorrelationTable(name, per_target, overall, mean)


def correlate_all(indicators: Mapping[str, np.ndarray], transfer, sources=None,
                  targets=None) -> dict[str, CorrelationTable]:
    """`correlate` for every named indicator matrix (e.g. E_concat, ..., ON, ON[0:3])."""
    return {k: correlate(v, transfer, sources, targets, name=k) for k, v in indicators.items()}


# ---- per-target headline with bootstrap intervals ------------------------------------

MIN_PAIRS = 3


def spearman_rho(x, y) -> float:
    """scipy's Spearman rho of x [n], y [n], non-finite pairs dropped; nan when fewer than
    3 pairs remain or either vector is constant (every source ties)."""
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < MIN_PAIRS or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def spearman_rows(x, y) -> np.ndarray:
    """Spearman rho of each row pair: x [B, n], y [B, n] (finite) -> [B]; nan for a
    constant row. The same number as `scipy.stats.spearmanr` row by row (Pearson
    correlation of average ranks), computed for all rows at once."""
    rx = stats.rankdata(np.asarray(x, np.float64), axis=-1)
    ry = stats.rankdata(np.asarray(y, np.float64), axis=-1)
    rx -= rx.mean(-1, keepdims=True)
    ry -= ry.mean(-1, keepdims=True)
    denom = np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rx * ry).sum(-1) / denom, np.nan)


def _tie_reason(ind, tr) -> str | None:
    keep = np.isfinite(ind) & np.isfinite(tr)
    ind, tr = ind[keep], tr[keep]
    if ind.size < MIN_PAIRS:
        return f"only {ind.size} source(s) with measured transfer (needs {MIN_PAIRS})"
    if np.all(ind == ind[0]):
        return "every source ties on the indicator"
    if np.all(tr == tr[0]):
        return "every source ties on measured transfer"
    return None


@dataclasses.dataclass(frozen=True)
class SpearmanSummary:
    """Per-target, mean-over-targets (headline) and pooled Spearman with 95% intervals.

    per_target / per_target_ci: target -> rho / (low, high) (dropped targets absent).
    dropped: target -> why it has no rho. resampled: 'examples' or 'pairs'.
    """

    indicator: str
    per_target: dict[str, float]
    per_target_ci: dict[str, tuple[float, float] | None]
    mean: float
    mean_ci: tuple[float, float] | None
    pooled: float
    pooled_ci: tuple[float, float] | None
    dropped: dict[str, str]
    resampled: str
    resamples: int
    seed: int
    confidence: float = CONFIDENCE

    def to_json(self) -> dict:
        ci = lambda v: None if v is None else [float(v[0]), float(v[1])]  # noqa: E731
        return {"indicator": self.indicator,
                "per_target": {t: _num(r) for t, r in self.per_target.items()},
                "per_target_ci": {t: ci(v) for t, v in self.per_target_ci.items()},
                "mean_per_target": _num(self.mean), "mean_per_target_ci": ci(self.mean_ci),
                "pooled": _num(self.pooled), "pooled_ci": ci(self.pooled_ci),
                "dropped_targets": dict(self.dropped), "resampled": self.resampled,
                "resamples": self.resamples, "seed": self.seed, "confidence": self.confidence}


def spearman_summary(indicator, transfer, sources: Sequence[str], targets: Sequence[str], *,
                     name: str = "", transfer_replicates=None, resamples: int = RESAMPLES,
                     seed: int = 0, confidence: float = CONFIDENCE) -> SpearmanSummary:
    """The module docstring's headline table for indicator [S, T] vs transfer [S, T].

    transfer_replicates: optional [B, S, T] bootstrap replicates of the transfer
    matrix from resampled evaluation examples; B then replaces `resamples`.
    """
    ind = np.asarray(indicator, np.float64)
    tr = np.asarray(transfer, np.float64)
    sources, targets = list(sources), list(targets)
    if ind.shape != tr.shape or ind.shape != (len(sources), len(targets)):
        raise ConfigError(f"indicator {name} of shape {ind.shape} and transfer of shape "
                          f"{tr.shape} must both be [{len(sources)} sources, {len(targets)} "
                          "targets].")
    reps = None if transfer_replicates is None else np.asarray(transfer_replicates, np.float64)
    if reps is not None and reps.shape[1:] != tr.shape:
        raise ConfigError(f"transfer replicates of shape {reps.shape} do not match the transfer "
                          f"matrix {tr.shape}; give [B, {len(sources)}, {len(targets)}].")
    rng = np.random.default_rng(seed)
    off = off_diagonal_mask(sources, targets)

    per, per_ci, dropped, rep_rhos = {}, {}, {}, []
    for j, t in enumerate(targets):
        rows = np.flatnonzero(off[:, j] & np.isfinite(ind[:, j]) & np.isfinite(tr[:, j]))
        reason = _tie_reason(ind[off[:, j], j], tr[off[:, j], j])
        if reason is not None:
            dropped[t] = reason
            continue
        per[t] = spearman_rho(ind[rows, j], tr[rows, j])
        if reps is not None:
            x = np.broadcast_to(ind[rows, j], (len(reps), rows.size))
            y = reps[:, rows, j]
            ok = np.isfinite(y).all(-1)
            rho = np.full(len(reps), np.nan)
            rho[ok] = spearman_rows(x[ok], y[ok])
        else:
            pick = rows[rng.integers(0, rows.size, size=(resamples, rows.size))]
            rho = spearman_rows(ind[pick, j], tr[pick, j])
        rep_rhos.append(rho)
        per_ci[t] = bias_corrected_interval(rho, per[t], confidence)
    mean = float(np.mean(list(per.values()))) if per else math.nan
    mean_ci = None
    if rep_rhos:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a replicate with every rho nan
            mean_ci = bias_corrected_interval(np.nanmean(np.stack(rep_rhos), axis=0), mean,
                                              confidence)

    pooled_mask = off & np.isfinite(ind) & np.isfinite(tr)
    pooled = spearman_rho(ind[pooled_mask], tr[pooled_mask])
    pooled_ci = None
    if math.isfinite(pooled):
        xi = ind[pooled_mask]
        if reps is not None:
            y = reps[:, pooled_mask]
            ok = np.isfinite(y).all(-1)
            rho = np.full(len(reps), np.nan)
            rho[ok] = spearman_rows(np.broadcast_to(xi, y[ok].shape), y[ok])
        else:
            pick = rng.integers(0, xi.size, size=(resamples, xi.size))
            rho = spearman_rows(xi[pick], tr[pooled_mask][pick])
        pooled_ci = bias_corrected_interval(rho, pooled, confidence)
    return SpearmanSummary(name, per, per_ci, mean, mean_ci, pooled, pooled_ci, dropped,
                           "examples" if reps is not None else "pairs",
                           len(reps) if reps is not None else int(resamples), int(seed),
                           confidence)
