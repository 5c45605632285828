"""Top-1 source retrieval by an indicator, on matrices whose answer is known by hand."""

import numpy as np

from ptransfer.experiments.indicators import top_source_retrieval

TASKS = ["a", "b", "c"]
# relative[s, t]: best actual source of a is b, of b is c, of c is a.
RELATIVE = np.array([[1.0, 0.5, 0.7],
                     [0.9, 1.0, 0.6],
                     [0.2, 0.95, 1.0]])


def test_every_target_found():
    indicator = np.array([[9.0, 0.2, 0.9],   # the diagonal is never a candidate
                          [0.5, 9.0, 0.1],
                          [0.3, 0.8, 9.0]])
    r = top_source_retrieval(indicator, RELATIVE, TASKS)
    assert (r["hits"], r["targets"], r["rate"]) == (3, 3, 1.0)
    assert r["picks"]["a"] == {"ranked_first": "b", "best_actual": "b"}


def test_misses_are_counted():
    indicator = np.array([[0.0, 0.9, 0.1],   # ranks a first for b (best is c): a miss
                          [0.5, 0.0, 0.0],
                          [0.6, 0.8, 0.0]])  # ranks c first for a (best is b): a miss
    r = top_source_retrieval(indicator, RELATIVE, TASKS)
    assert r["picks"]["b"]["ranked_first"] == "a" and r["picks"]["a"]["ranked_first"] == "c"
    assert r["picks"]["c"] == {"ranked_first": "a", "best_actual": "a"}
    assert (r["hits"], r["targets"], r["rate"]) == (1, 3, 1 / 3)


def test_targets_without_measured_transfer_are_skipped():
    relative = RELATIVE.copy()
    relative[:, 2] = np.nan
    r = top_source_retrieval(np.ones((3, 3)), relative, TASKS)
    assert r["targets"] == 2 and "c" not in r["picks"]
