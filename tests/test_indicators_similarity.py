"""E/C prompt similarities against plain-numpy loops written here from the formulas
of DESIGN.md ("Transferability indicators"), and against hand-computed tiny cases."""

import jax
import numpy as np
import pytest

from ptransfer.core.errors import ConfigError
from ptransfer.indicators import similarity as sim

K, L, D = 4, 5, 8


def np_e_concat(p1, p2):
    diff = 0.0
    for i in range(p1.shape[0]):
        for d in range(p1.shape[1]):
            diff += (float(p1[i, d]) - float(p2[i, d])) ** 2
    return 1.0 / (1.0 + np.sqrt(diff))


def np_e_average(p1, p2):
    """1 / (1 + mean over token pairs (i, j) of ||p1_i - p2_j||)."""
    total = 0.0
    for i in range(p1.shape[0]):
        for j in range(p2.shape[0]):
            total += np.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(p1[i], p2[j])))
    return 1.0 / (1.0 + total / (p1.shape[0] * p2.shape[0]))


def np_cos(u, v):
    nu = np.sqrt(sum(float(a) ** 2 for a in u))
    nv = np.sqrt(sum(float(b) ** 2 for b in v))
    if nu == 0 or nv == 0:
        return 0.0
    return sum(float(a) * float(b) for a, b in zip(u, v)) / (nu * nv)


def np_c_concat(p1, p2):
    return np_cos(p1.reshape(-1), p2.reshape(-1))


def np_c_average(p1, p2):
    total = 0.0
    for i in range(p1.shape[0]):
        for j in range(p2.shape[0]):
            total += np_cos(p1[i], p2[j])
    return total / (p1.shape[0] * p2.shape[0])


REFERENCE = {"E_concat": np_e_concat, "E_average": np_e_average,
             "C_concat": np_c_concat, "C_average": np_c_average}
PAIR_FNS = {"E_concat": sim.e_concat, "E_average": sim.e_average,
            "C_concat": sim.c_concat, "C_average": sim.c_average}


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(K, L, D)).astype(np.float32)
    a[1] = a[0] + 0.05 * rng.normal(size=(L, D))  # one near-duplicate pair
    a[2, 3] = 0.0  # a zero token: its cosine is defined as 0
    b = rng.normal(size=(K - 1, L, D)).astype(np.float32) * 2.0
    return a, b


@pytest.mark.parametrize("name", sim.SIMILARITIES)
def test_matrix_equals_numpy_loops(name, prompts):
    a, b = prompts
    got = np.asarray(sim.similarity_matrix(name, a, b))
    want = np.array([[REFERENCE[name](a[i], b[j]) for j in range(len(b))] for i in range(len(a))])
    assert got.shape == (K, K - 1)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    # b defaults to a; a prompt is maximally similar to itself
    self_m = np.asarray(sim.similarity_matrix(name, a))
    want_self = np.array([[REFERENCE[name](a[i], a[j]) for j in range(K)] for i in range(K)])
    np.testing.assert_allclose(self_m, want_self, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", sim.SIMILARITIES)
def test_single_pair_jitted(name, prompts):
    a, b = prompts
    got = float(jax.jit(PAIR_FNS[name])(a[0], b[1]))
    np.testing.assert_allclose(got, REFERENCE[name](a[0], b[1]), rtol=2e-5)


def test_identical_prompts_are_exactly_zero_apart(prompts):
    a, _ = prompts
    assert float(sim.e_concat(a[0], a[0])) == 1.0
    diag = np.diag(np.asarray(sim.e_concat_matrix(a)))
    np.testing.assert_array_equal(diag, np.ones(K, np.float32))
    # identical tokens contribute exactly 1 to E_average: check against loops
    np.testing.assert_allclose(float(sim.e_average(a[3], a[3])), np_e_average(a[3], a[3]), rtol=1e-6)


def test_average_indicators_accept_unequal_lengths(prompts):
    a, b = prompts
    short = b[:, :3]
    for name in ("E_average", "C_average"):
        got = np.asarray(sim.similarity_matrix(name, a, short))
        want = np.array([[REFERENCE[name](a[i], short[j]) for j in range(len(short))]
                         for i in range(K)])
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    with pytest.raises(ConfigError, match="equal length"):
        sim.similarity_matrix("E_concat", a, short)


def test_bad_input(prompts):
    a, _ = prompts
    with pytest.raises(ConfigError, match="widths differ"):
        sim.similarity_matrix("C_concat", a, np.zeros((2, L, D + 1)))
    with pytest.raises(ConfigError, match="unknown similarity"):
        sim.similarity_matrix("E_cat", a)
    with pytest.raises(ConfigError, match=r"\[K, L, D\]"):
        sim.similarity_matrix("E_concat", a[0])


def test_hand_computed_tiny_cases():
    """Values worked out by hand; E_average averages the distances before 1/(1+.)."""
    origin = np.zeros((1, 2), np.float32)
    far_and_near = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)  # distances 5 and 0
    # E_average = 1 / (1 + (5 + 0) / 2) = 1 / 3.5; the mean of 1/(1+d) would be 7/12
    np.testing.assert_allclose(float(sim.e_average(origin, far_and_near)), 1 / 3.5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(sim.e_average_matrix(origin[None], far_and_near[None])),
                               [[1 / 3.5]], rtol=1e-6)
    # E_concat = 1 / (1 + ||(0,0) - (3,4)||) = 1 / 6
    np.testing.assert_allclose(float(sim.e_concat(origin, far_and_near[:1])), 1 / 6, rtol=1e-6)
    eye = np.eye(2, dtype=np.float32)
    twice_x = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    # C_concat: (1,0,0,1).(1,0,1,0) / (sqrt2 sqrt2) = 1/2
    np.testing.assert_allclose(float(sim.c_concat(eye, twice_x)), 0.5, rtol=1e-6)
    # C_average: token cosines (1, 1, 0, 0) -> 1/2
    np.testing.assert_allclose(float(sim.c_average(eye, twice_x)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(sim.c_average(eye[:1], eye)), 0.5, rtol=1e-6)
