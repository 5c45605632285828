"""Convergence and comparable-result speedups on synthetic eval curves."""

import pytest

from ptransfer.core.errors import ConfigError, DataError
from ptransfer.experiments.speedups import reach_tolerance, speedups


def test_plain_curves():
    pt = [(100, 0.50), (200, 0.60), (300, 0.70), (400, 0.80), (500, 0.79)]
    tpt = [(100, 0.75), (200, 0.82), (300, 0.85), (400, 0.84), (500, 0.83)]
    s = speedups(pt, tpt)
    assert (s.pt_best, s.pt_best_step) == (0.80, 400)
    assert (s.tpt_best, s.tpt_best_step) == (0.85, 300)
    assert s.tpt_comparable_step == 200  # first TPT eval >= 0.80
    assert s.convergence == pytest.approx(400 / 300)
    assert s.comparable == pytest.approx(400 / 200)
    assert not (s.pt_immediate or s.tpt_immediate or s.comparable_immediate)
    assert s.comparable_text() == "2.00x"


def test_ties_use_the_first_step_reaching_the_best():
    pt = [(10, 0.7), (20, 0.9), (30, 0.9), (40, 0.9)]
    tpt = [(10, 0.9), (20, 0.9), (30, 0.8)]
    s = speedups(pt, tpt)
    assert s.pt_best_step == 20 and s.tpt_best_step == 10
    assert s.convergence == 2.0
    assert s.tpt_comparable_step == 10 and s.comparable == 2.0  # exactly equal counts as reached


def test_noisy_curves_first_peak_not_a_later_dip():
    pt = [(1, 0.2), (2, 0.6), (3, 0.4), (4, 0.65), (5, 0.3), (6, 0.64)]
    tpt = [(1, 0.5), (2, 0.66), (3, 0.1), (4, 0.7), (5, 0.69)]
    s = speedups(pt, tpt)
    assert s.pt_best_step == 4 and s.tpt_best_step == 4
    assert s.convergence == 1.0
    assert s.tpt_comparable_step == 2 and s.comparable == 2.0
    # a tolerance lets an almost-equal score count
    assert speedups(pt, tpt, tolerance=0.16).tpt_comparable_step == 1


def test_reaching_within_one_standard_error_hand_computed():
    # scores on the 0-100 scale, eval set of 100 examples
    pt = [(10, 60.0), (20, 70.0), (30, 80.0), (40, 78.0)]
    tpt = [(10, 72.0), (20, 77.0), (30, 79.0), (40, 81.0)]
    # one binomial SE of PT's best: 100 * sqrt(0.8 * 0.2 / 100) = 4 points
    tol, source = reach_tolerance(80.0, eval_size=100)
    assert source == "binomial" and tol == pytest.approx(4.0)
    s = speedups(pt, tpt, tolerance=tol)
    # reached: first TPT eval >= 80 - 4 = 76 is step 20 -> 30 / 20
    assert s.tpt_comparable_step == 20 and s.comparable == pytest.approx(1.5)
    # exact match kept beside it: first TPT eval >= 80 is step 40 -> 30 / 40
    assert s.tpt_comparable_exact_step == 40 and s.comparable_exact == pytest.approx(0.75)
    assert s.convergence == pytest.approx(30 / 40)
    assert s.to_json()["tolerance"] == pytest.approx(4.0)
    # a TPT curve that stays more than one SE below never reaches it
    low = speedups(pt, [(10, 70.0), (20, 75.9)], tolerance=tol)
    assert low.comparable is None and low.comparable_exact is None


def test_reach_tolerance_from_seeds_and_without_either():
    # no eval size, two seeds: the sample std of PT's best, sqrt(((70-72)^2 + (74-72)^2) / 1)
    tol, source = reach_tolerance(70.0, seed_bests=[70.0, 74.0])
    assert source == "seeds" and tol == pytest.approx(8 ** 0.5)
    assert reach_tolerance(70.0, seed_bests=[70.0]) == (0.0, "none")
    with pytest.raises(ConfigError, match="tolerance"):
        speedups([(1, 1.0)], [(1, 1.0)], tolerance=-1.0)


def test_never_reaching_is_none_and_na():
    pt = [(100, 0.5), (200, 0.9)]
    tpt = [(100, 0.8), (200, 0.85)]
    s = speedups(pt, tpt)
    assert s.comparable is None and s.tpt_comparable_step is None
    assert s.comparable_text() == "N/A"
    assert s.convergence == 1.0
    assert s.to_json()["comparable"] is None


def test_reaching_at_step_zero_counts_one_eval_interval():
    pt = [(0, 0.3), (50, 0.5), (100, 0.8), (150, 0.7)]
    tpt = [(0, 0.85), (50, 0.8), (100, 0.84)]  # already best before training
    s = speedups(pt, tpt)
    assert s.resolution == 50
    assert s.tpt_best_step == 0 and s.tpt_immediate
    assert s.convergence == 100 / 50
    assert s.tpt_comparable_step == 0 and s.comparable_immediate
    assert s.comparable == 100 / 50 and s.comparable_text() == ">=2.00x"
    # PT that never improves on its step-0 score: numerator clamped too
    flat = speedups([(0, 0.9), (50, 0.8)], [(0, 0.5), (50, 0.95)])
    assert flat.pt_immediate and flat.convergence == 1.0 and flat.comparable == 1.0
    # only step-0 evals: resolution falls back to one step
    assert speedups([(0, 0.5)], [(0, 0.6)]).resolution == 1


def test_unequal_eval_intervals_use_actual_steps_and_unsorted_input():
    pt = [(1000, 0.9), (10, 0.1), (30, 0.5), (300, 0.85)]  # unsorted, irregular
    tpt = [(5, 0.2), (25, 0.9), (500, 0.95)]
    s = speedups(pt, tpt)
    assert s.pt_best_step == 1000 and s.tpt_best_step == 500
    assert s.convergence == 2.0
    assert s.tpt_comparable_step == 25 and s.comparable == 40.0
    assert s.resolution == 5


def test_bad_curves():
    with pytest.raises(DataError, match="PT eval curve is empty"):
        speedups([], [(1, 0.5)])
    with pytest.raises(DataError, match="several evals at step"):
        speedups([(1, 0.5), (1, 0.6)], [(1, 0.5)])
    with pytest.raises(DataError, match="scores finite"):
        speedups([(1, 0.5)], [(1, float("nan"))])
    with pytest.raises(DataError, match="not a \\(step, score\\) pair"):
        speedups([(1, 0.5, 3)], [(1, 0.5)])
