"""Speedups of transferable prompt tuning (TPT) over vanilla prompt tuning (PT).

From the two eval curves (lists of (step, score), higher is better):

  convergence speedup       = steps(PT reaches its best) / steps(TPT reaches its own best)
  comparable-result speedup = steps(PT reaches its best) / steps(TPT first REACHES PT's best)
                              None ("N/A" in tables) when TPT never does.

"Reaches PT's best" means: scores at least PT's best minus `tolerance`, and the
tolerance is one standard error of PT's best score (`reach_tolerance`):

  * the binomial SE of a score p (0-100) measured on n eval examples,
    100 sqrt(p (1 - p) / n), when the eval set size is known (for balanced
    accuracy or F1 it is the usual approximation of that score's noise);
  * otherwise, with several seeds, the sample standard deviation of PT's best
    score over the seeds (the spread of one run's best);
  * otherwise 0.

A single eval's noise is about one SE, so a TPT curve that comes within one SE
of PT's maximum (itself the maximum of several noisy evals, biased upward) has
reached a comparable result; demanding an exact match counts noise as failure.
The exact-match variant (tolerance 0: TPT scores >= PT's best) is kept beside
it (`comparable_exact`, `tpt_comparable_exact_step`).

Edge cases (the contract):
  * Ties / noisy curves: "reaches its best" is the FIRST eval whose score
    equals the curve's maximum; later equal or lower evals do not move it.
  * Steps are the eval's actual step numbers, so unequal or irregular eval
    intervals are handled; curves are sorted by step; duplicate steps,
    non-finite scores and empty curves are DataErrors.
  * Reaching at step 0 (an eval before any update, e.g. a TPT prompt that is
    already best zero-shot): a score seen at step 0 cannot be told apart from
    one reached within the first eval interval, so its step count is the
    curves' resolution: the smallest positive eval step of either curve (1 if
    neither has one). Both counts are clamped the same way, so division is
    always defined. A speedup whose denominator was clamped is a lower bound
    (`tpt_immediate` / `comparable_immediate`), one whose numerator was
    clamped an upper bound (`pt_immediate`: PT never improved on step 0).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Iterable, Sequence

from ptransfer.core.errors import ConfigError, DataError
from ptransfer.core.intervals import binomial_se

Curve = Sequence[tuple[int, float]]


def _clean(curve: Iterable, name: str) -> list[tuple[int, float]]:
    pts = []
    for item in curve:
        try:
            step, score = item
            step, score = int(step), float(score)
        except (TypeError, ValueError):
            raise DataError(f"{name} curve entry {item!r} is not a (step, score) pair.") from None
        if step < 0 or not math.isfinite(score):
            raise DataError(f"{name} curve has step {step} with score {score}: steps must be >= 0 "
                            "and scores finite; fix or drop that eval.")
        pts.append((step, score))
    if not pts:
        raise DataError(f"{name} eval curve is empty: the run logged no evaluation.")
    pts.sort()
    dups = sorted({a for (a, _), (b, _) in zip(pts, pts[1:]) if a == b})
    if dups:
        raise DataError(f"{name} curve has several evals at step(s) {dups}; keep one per step.")
    return pts


def first_step_reaching(curve: Curve, score: float) -> int | None:
    """Step of the first eval with score >= `score`, or None."""
    for step, s in curve:
        if s >= score:
            return step
    return None


def best(curve: Curve) -> tuple[float, int]:
    """(max score, first step reaching it)."""
    top = max(s for _, s in curve)
    return top, first_step_reaching(curve, top)


@dataclasses.dataclass(frozen=True)
class Speedups:
    """Both speedups and the steps they come from (steps before clamping)."""

    convergence: float
    comparable: float | None
    pt_best: float
    pt_best_step: int
    tpt_best: float
    tpt_best_step: int
    tpt_comparable_step: int | None
    resolution: int
    tolerance: float  # how far below PT's best still counts as reaching it (one SE)
    comparable_exact: float | None  # the same with tolerance 0 (TPT >= PT's best)
    tpt_comparable_exact_step: int | None  # step count assigned to a score reached at step 0
    pt_immediate: bool  # PT's best was at step 0 (both speedups are upper bounds)
    tpt_immediate: bool  # TPT's best was at step 0 (convergence is a lower bound)
    comparable_immediate: bool  # TPT matched PT's best at step 0 (comparable is a lower bound)
    comparable_exact_immediate: bool

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def comparable_text(self, digits: int = 2) -> str:
        """The comparable-result speedup as a table cell ("N/A" when never reached)."""
        if self.comparable is None:
            return "N/A"
        return (">=" if self.comparable_immediate else "") + f"{self.comparable:.{digits}f}x"


def reach_tolerance(pt_best: float, *, eval_size: int | None = None,
                    seed_bests: Sequence[float] = ()) -> tuple[float, str]:
    """(one standard error of PT's best score, where it came from).

    "binomial" (eval_size known), "seeds" (std of PT's best over >= 2 seeds),
    or "none" (0: exact match).
    """
    if eval_size is not None:
        return binomial_se(pt_best, int(eval_size)), "binomial"
    if len(seed_bests) >= 2:
        return float(statistics.stdev(seed_bests)), "seeds"
    return 0.0, "none"


def speedups(pt_curve: Iterable, tpt_curve: Iterable, *, tolerance: float = 0.0) -> Speedups:
    """Convergence and comparable-result speedups of TPT over PT (module docstring).

    `tolerance` >= 0: how far below PT's best a TPT eval may be and still reach
    it; pass one standard error (`reach_tolerance`). 0 is the exact match.
    """
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"the reach tolerance must be a finite number >= 0, got {tolerance}.")
    pt = _clean(pt_curve, "PT")
    tpt = _clean(tpt_curve, "TPT")
    positive = [s for s, _ in pt + tpt if s > 0]
    resolution = min(positive) if positive else 1

    def count(step: int) -> int:
        return step if step > 0 else resolution

    pt_best, pt_step = best(pt)
    tpt_best, tpt_step = best(tpt)
    comp_step = first_step_reaching(tpt, pt_best - tolerance)
    exact_step = first_step_reaching(tpt, pt_best)
    return Speedups(
        convergence=count(pt_step) / count(tpt_step),
        comparable=None if comp_step is None else count(pt_step) / count(comp_step),
        pt_best=pt_best, pt_best_step=pt_step,
        tpt_best=tpt_best, tpt_best_step=tpt_step,
        tpt_comparable_step=comp_step, resolution=resolution,
        tolerance=float(tolerance),
        comparable_exact=None if exact_step is None else count(pt_step) / count(exact_step),
        tpt_comparable_exact_step=exact_step,
        pt_immediate=pt_step == 0,
        tpt_immediate=tpt_step == 0,
        comparable_immediate=comp_step == 0,
        comparable_exact_immediate=exact_step == 0)
