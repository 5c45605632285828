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
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from ptransfer.core.errors import ConfigError


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
