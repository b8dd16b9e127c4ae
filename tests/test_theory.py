"""Tests for kd2m.theory (Section 4 of the paper: Lemma 4.1, Theorem 4.1)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kd2m.theory import (
    BoundReport,
    BoundViolation,
    Inequality,
    bound_report,
    check_bounds,
    coupling_gap,
    empirical_wasserstein,
    gaussian_w2_closed_form,
    labelled_wasserstein1,
    lipschitz_ce_linear,
    max_gap,
    risk,
    sample_w2_convergence,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CORE_NAMES = [
    "W1 <= W1_labelled",
    "W1_labelled <= coupling_gap",
    "coupling_gap <= max_gap",
    "W1 <= W2",
    "|risk_S - risk_T| <= Lip * W1_labelled",
    "Thm4.1 step 1: risk_S <= risk_T + Lip * W1_labelled",
    "Thm4.1 step 2: risk_T + Lip * W1_labelled <= risk_T + Lip * coupling_gap",
    "Thm4.1 step 3: risk_T + Lip * coupling_gap <= risk_T + Lip * max_gap",
]


def col(*xs: float) -> np.ndarray:
    """1-D points as an (n, 1) feature matrix."""
    return np.asarray(xs, dtype=float).reshape(-1, 1)


def brute_force_wp(zs: np.ndarray, zt: np.ndarray, p: int, y: np.ndarray | None = None) -> float:
    """W_p by enumerating all permutations (optionally label-preserving ones)."""
    n = zs.shape[0]
    best = math.inf
    for perm in itertools.permutations(range(n)):
        if y is not None and any(y[i] != y[j] for i, j in enumerate(perm)):
            continue
        c = np.mean(np.linalg.norm(zs - zt[list(perm)], axis=1) ** p)
        best = min(best, c)
    return best ** (1.0 / p)


# --------------------------------------------------------------------------- #
# Exact values on hand-computed cases
# --------------------------------------------------------------------------- #
def test_1d_hand_values():
    zs, zt = col(0, 1, 3), col(5, 2, 4)  # sorted: (0,1,3) vs (2,4,5)
    assert empirical_wasserstein(zs, zt, p=1) == pytest.approx(7 / 3, rel=1e-12)
    assert empirical_wasserstein(zs, zt, p=2) == pytest.approx(math.sqrt(17 / 3), rel=1e-12)
    assert coupling_gap(zs, zt) == pytest.approx((5 + 1 + 1) / 3, rel=1e-12)
    assert max_gap(zs, zt) == pytest.approx(5.0)


def test_two_points_2d_swapped_order():
    zs = np.array([[0.0, 0.0], [10.0, 0.0]])
    zt = np.array([[10.0, 1.0], [0.0, 1.0]])  # optimal plan: 0 -> 1, 1 -> 0
    assert empirical_wasserstein(zs, zt, p=1) == pytest.approx(1.0, rel=1e-12)
    assert empirical_wasserstein(zs, zt, p=2) == pytest.approx(1.0, rel=1e-12)
    assert coupling_gap(zs, zt) == pytest.approx(math.sqrt(101), rel=1e-12)
    # with labels [0, 1] the identity is the only label-preserving plan
    assert labelled_wasserstein1(zs, zt, [0, 1]) == pytest.approx(math.sqrt(101), rel=1e-12)
    # with one label the label constraint is void
    assert labelled_wasserstein1(zs, zt, [3, 3]) == pytest.approx(1.0, rel=1e-12)


def test_labelled_w1_hand_value():
    # class 0: {0, 1} vs {1.1, 0.1} -> W1 = 0.1; class 1: {5} vs {7} -> 2
    zs, zt, y = col(0, 1, 5), col(1.1, 0.1, 7), np.array([0, 0, 1])
    expected = (2 / 3) * 0.1 + (1 / 3) * 2.0
    assert labelled_wasserstein1(zs, zt, y) == pytest.approx(expected, rel=1e-12)
    assert empirical_wasserstein(zs, zt, p=1) == pytest.approx(expected, rel=1e-12)


def test_w1_1d_matches_area_between_cdfs():
    rng = np.random.default_rng(0)
    for n_s, n_t in [(7, 7), (5, 9), (40, 13)]:
        a, b = rng.normal(size=n_s), 2 * rng.normal(size=n_t) + 1
        ours = empirical_wasserstein(a[:, None], b[:, None], p=1)
        assert ours == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-10)


def test_w2_1d_matches_sorted_coupling():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=30), rng.exponential(size=30)
    expected = math.sqrt(np.mean((np.sort(a) - np.sort(b)) ** 2))
    assert empirical_wasserstein(a[:, None], b[:, None], p=2) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("p", [1, 2])
def test_wp_matches_brute_force(p):
    rng = np.random.default_rng(2)
    for _ in range(3):
        zs, zt = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
        y = rng.integers(0, 2, size=6)
        assert empirical_wasserstein(zs, zt, p=p) == pytest.approx(
            brute_force_wp(zs, zt, p), rel=1e-10
        )
        if p == 1:
            assert labelled_wasserstein1(zs, zt, y) == pytest.approx(
                brute_force_wp(zs, zt, 1, y), rel=1e-10
            )


def test_risk_hand_value_and_torch_cross_entropy():
    torch = pytest.importorskip("torch")
    W = np.array([[1.0], [-1.0]])
    assert risk(col(0.0), [0], W) == pytest.approx(math.log(2), rel=1e-14)
    assert risk(col(3.0), [0], W, [0.0, 0.0]) == pytest.approx(math.log1p(math.exp(-6)))
    rng = np.random.default_rng(3)
    z, Wr, b = rng.normal(size=(20, 4)), rng.normal(size=(3, 4)), rng.normal(size=3)
    y = rng.integers(0, 3, size=20)
    ref = torch.nn.functional.cross_entropy(
        torch.tensor(z) @ torch.tensor(Wr).T + torch.tensor(b), torch.tensor(y)
    ).item()
    assert risk(z, y, Wr, b) == pytest.approx(ref, rel=1e-12)


def test_lipschitz_value_and_tightness():
    assert lipschitz_ce_linear(np.diag([3.0, 4.0])) == pytest.approx(4 * math.sqrt(2))
    # W = [[1], [-1]], label 0: d/dz CE = -2 p_1 -> -2 as z -> -inf; Lip = sqrt2 * sqrt2 = 2
    W = np.array([[1.0], [-1.0]])
    lip = lipschitz_ce_linear(W)
    assert lip == pytest.approx(2.0)
    z0, h = -12.0, 1e-3
    slope = abs(risk(col(z0 + h), [0], W) - risk(col(z0), [0], W)) / h
    assert 0.999 * lip < slope <= lip


def test_lipschitz_bound_on_random_pairs():
    rng = np.random.default_rng(4)
    W, b = 3 * rng.normal(size=(5, 3)), rng.normal(size=5)
    lip = lipschitz_ce_linear(W)
    for _ in range(200):
        z1, z2 = rng.normal(size=(1, 3)) * 4, rng.normal(size=(1, 3)) * 4
        y = [int(rng.integers(0, 5))]
        gap = abs(risk(z1, y, W, b) - risk(z2, y, W, b))
        assert gap <= lip * np.linalg.norm(z1 - z2) * (1 + 1e-12)


def test_torch_inputs_match_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    zs, zt = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
    y, W, b = rng.integers(0, 3, 10), rng.normal(size=(3, 3)), rng.normal(size=3)
    ref = bound_report(zs, zt, y, W, b)
    got = bound_report(
        torch.tensor(zs, requires_grad=True),
        torch.tensor(zt),
        torch.tensor(y),
        torch.tensor(W),
        torch.tensor(b),
    )
    assert got == ref
    got32 = empirical_wasserstein(torch.tensor(zs, dtype=torch.float32), zt, p=2)
    assert got32 == pytest.approx(ref.W2, rel=1e-5)


# --------------------------------------------------------------------------- #
# Property-based: every inequality holds on random inputs
# --------------------------------------------------------------------------- #
@st.composite
def batches(draw):
    n = draw(st.integers(1, 10))
    d = draw(st.integers(1, 4))
    K = draw(st.integers(2, 5))
    scale = draw(st.sampled_from([1e-8, 1e-2, 1.0, 1e2, 1e4]))
    wscale = draw(st.sampled_from([1e-3, 1.0, 10.0]))
    mode = draw(st.sampled_from(["random", "noise", "identical", "duplicated", "permuted", "grid"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    zt = scale * rng.normal(size=(n, d))
    if mode == "random":
        zs = scale * rng.normal(size=(n, d)) + scale * rng.normal()
    elif mode == "noise":
        zs = zt + 1e-3 * scale * rng.normal(size=(n, d))
    elif mode == "identical":
        zs = zt.copy()
    elif mode == "duplicated":
        zt = zt[rng.integers(0, min(2, n), size=n)]
        zs = (scale * rng.normal(size=(min(2, n), d)))[rng.integers(0, min(2, n), size=n)]
    elif mode == "permuted":
        zs = zt[rng.permutation(n)]
    else:  # integer grid: many ties, degenerate transport problems
        zt = scale * rng.integers(-2, 3, size=(n, d)).astype(float)
        zs = scale * rng.integers(-2, 3, size=(n, d)).astype(float)
    y = rng.integers(0, K, size=n) if draw(st.booleans()) else np.zeros(n, dtype=int)
    W = wscale * rng.normal(size=(K, d))
    b = rng.normal(size=K)
    return mode, zs, zt, y, W, b


@FAST
@given(batches())
def test_all_inequalities_hold(batch):
    mode, zs, zt, y, W, b = batch
    report = bound_report(zs, zt, y, W, b)
    assert check_bounds(report) == []
    names = [i.name for i in report.inequalities]
    assert names[: len(CORE_NAMES)] == CORE_NAMES
    assert all(row["holds"] for row in report.table())
    if mode == "identical":
        for q in ("W1", "W2", "W1_labelled", "coupling_gap", "coupling_gap_rms", "max_gap"):
            assert getattr(report, q) == 0.0
        assert report.risk_gap == 0.0
    if mode == "permuted":
        assert report.W1 <= 1e-9 * (1 + report.feature_scale)
    if len(np.unique(y)) == 1:  # one class: the label constraint is void
        assert report.W1_labelled == pytest.approx(report.W1, rel=1e-9, abs=1e-300)


@FAST
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 6), st.integers(1, 3)).map(lambda s: (2, *s)),
        elements=st.floats(-50, 50, allow_subnormal=False),
    ),
    st.lists(st.integers(0, 2), min_size=6, max_size=6),
)
def test_all_inequalities_hold_on_adversarial_floats(pair, labels):
    zs, zt = pair[0], pair[1]
    n, d = zs.shape
    y = np.asarray(labels[:n])
    W = np.arange(3 * d, dtype=float).reshape(3, d) / 3 - 1
    report = bound_report(zs, zt, y, W, np.array([0.5, -0.5, 0.0]))
    assert check_bounds(report) == []


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.integers(1, 8))
def test_wasserstein_symmetry_and_permutation_invariance(seed, n_s, n_t):
    rng = np.random.default_rng(seed)
    zs, zt = rng.normal(size=(n_s, 2)), rng.normal(size=(n_t, 2)) + 1
    for p in (1, 2):
        w = empirical_wasserstein(zs, zt, p=p)
        assert empirical_wasserstein(zt, zs, p=p) == pytest.approx(w, rel=1e-10)
        assert empirical_wasserstein(zs[rng.permutation(n_s)], zt, p=p) == pytest.approx(
            w, rel=1e-10
        )
    assert empirical_wasserstein(zs, zt, 1) <= empirical_wasserstein(zs, zt, 2) * (1 + 1e-12)


# --------------------------------------------------------------------------- #
# The plain feature W1 does not bound the risk gap of a label-dependent loss
# --------------------------------------------------------------------------- #
def test_plain_w1_does_not_bound_risk_gap():
    """Two images, classes 0 and 1; the student swaps the teacher's features.

    The two feature clouds are identical ({a, -a}), so the plain W1 is 0, yet
    the teacher classifies both images correctly and the student both wrongly:
    risk gap = 2a > 0 = Lip * W1.  The label-aware W1 (= 2a) does bound it.
    """
    a = 1.5
    W = np.array([[1.0], [-1.0]])  # logit of class 0 = z, of class 1 = -z
    zt, zs, y = col(a, -a), col(-a, a), np.array([0, 1])
    report = bound_report(zs, zt, y, W)
    assert report.W1 == 0.0
    assert report.lipschitz == pytest.approx(2.0)
    assert report.risk_gap == pytest.approx(2 * a, rel=1e-12)  # log(1+e^{2a}) - log(1+e^{-2a})
    assert report.risk_gap > report.lipschitz * report.W1
    assert report.W1_labelled == pytest.approx(2 * a)
    literal = report.plain_w1_bound()
    assert not literal.holds
    assert check_bounds(report) == []  # every enforced (label-aware) inequality holds


# --------------------------------------------------------------------------- #
# Violations are reported, never silently passed
# --------------------------------------------------------------------------- #
@pytest.fixture
def report() -> BoundReport:
    rng = np.random.default_rng(6)
    zt = rng.normal(size=(12, 3))
    zs = zt + 0.2 * rng.normal(size=(12, 3))
    return bound_report(zs, zt, rng.integers(0, 3, 12), rng.normal(size=(3, 3)))


def test_tampered_w1_raises(report):
    bad = dataclasses.replace(report, W1=report.W1_labelled + 1.0)
    with pytest.raises(BoundViolation) as info:
        check_bounds(bad)
    assert isinstance(info.value, AssertionError)
    msg = str(info.value)
    assert "W1 <= W1_labelled" in msg and "W1 <= W2" in msg
    assert repr(bad.W1) in msg
    violated = check_bounds(bad, raise_on_violation=False)
    assert {v.name for v in violated} == {"W1 <= W1_labelled", "W1 <= W2"}
    assert {v.name for v in info.value.violations} == {v.name for v in violated}
    assert not any(row["holds"] for row in bad.table() if row["name"] == "W1 <= W1_labelled")


def test_tampered_risk_raises(report):
    bad = dataclasses.replace(
        report, risk_student=report.risk_teacher + 2 * report.lipschitz * report.max_gap
    )
    names = {v.name for v in check_bounds(bad, raise_on_violation=False)}
    assert "Thm4.1 step 1: risk_S <= risk_T + Lip * W1_labelled" in names
    assert "|risk_S - risk_T| <= Lip * W1_labelled" in names
    with pytest.raises(BoundViolation, match="Thm4.1 step 1"):
        check_bounds(bad)


def test_hand_built_report_and_inequalities():
    hand = BoundReport(
        n=2,
        d=1,
        K=2,
        n_classes=2,
        W1=1.0,
        W2=0.5,
        W1_labelled=1.0,
        coupling_gap=1.0,
        coupling_gap_rms=1.0,
        max_gap=1.0,
        risk_student=0.3,
        risk_teacher=0.2,
        lipschitz=1.0,
        feature_scale=1.0,
        loss_scale=1.0,
    )
    with pytest.raises(BoundViolation, match=r"W1 <= W2: lhs=1\.0 > rhs=0\.5"):
        check_bounds(hand)
    # a NaN never holds; holds is computed, it cannot be forced
    nan = Inequality("nan side", float("nan"), 1.0)
    assert not nan.holds
    assert check_bounds([nan, Inequality("ok", 1.0, 2.0)], raise_on_violation=False) == [nan]
    with pytest.raises(TypeError):
        Inequality("forced", 2.0, 1.0, holds=True)  # type: ignore[call-arg]
    # the tolerance absorbs rounding, not real violations
    assert Inequality("round", 1.0 + 1e-12, 1.0, tol=1e-9).holds
    assert not Inequality("real", 1.0 + 1e-6, 1.0, tol=1e-9).holds
    assert Inequality("r", 1.0, 4.0).ratio == 0.25 and Inequality("r", 0.0, 0.0).ratio is None


def test_report_serialisation(report):
    d = json.loads(json.dumps(report.to_dict()))
    assert d["n"] == 12 and d["d"] == 3 and d["K"] == 3
    assert d["risk_gap"] == pytest.approx(report.risk_student - report.risk_teacher)
    assert [i["name"] for i in d["inequalities"]][: len(CORE_NAMES)] == CORE_NAMES
    for row in report.table():
        assert set(row) == {"name", "lhs", "rhs", "slack", "ratio", "holds"}
        assert row["slack"] == pytest.approx(row["rhs"] - row["lhs"])


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
_Z = np.zeros((4, 3))
_W = np.ones((2, 3))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: coupling_gap(_Z, np.zeros((5, 3))), r"\(4, 3\).*\(5, 3\)"),
        (lambda: coupling_gap(np.zeros(4), _Z), r"2-D.*\(4,\)"),
        (lambda: empirical_wasserstein(_Z, np.zeros((4, 2))), "feature dimension"),
        (lambda: empirical_wasserstein(_Z, _Z, p=3), "p=3"),
        (lambda: max_gap(np.full((4, 3), np.nan), _Z), "non-finite"),
        (lambda: labelled_wasserstein1(_Z, _Z, [0, 1, 0]), "length n=4.*3"),
        (lambda: labelled_wasserstein1(_Z, _Z, [0.5, 1, 0, 0]), "integer"),
        (lambda: risk(_Z, [0, 1, 0, 1], np.ones((2, 5))), r"\(K, d=3\).*\(2, 5\)"),
        (lambda: risk(_Z, [0, 1, 0, 1], _W, np.zeros(3)), r"bias.*K=2.*\(3,\)"),
        (lambda: risk(_Z, [0, 1, 0, 2], _W), r"\[0, K=2\)"),
        (lambda: bound_report(_Z, _Z, [0, 1, 0, 1], np.ones(3)), "weight.*2-D"),
        (lambda: bound_report(_Z, _Z, [0, 1, 0, 1], _W * np.inf), "weight.*non-finite"),
        (lambda: bound_report(_Z, _Z, [[0, 1, 0, 1]], _W), r"1-D.*\(1, 4\)"),
        (lambda: gaussian_w2_closed_form([0, 0], np.eye(3), [0, 0], np.eye(2)), r"S1.*\(2, 2\)"),
        (lambda: gaussian_w2_closed_form([0], [[-1.0]], [0], [[1.0]]), "semi-definite"),
        (lambda: gaussian_w2_closed_form([0, 0], [[1, 2], [0, 1]], [0, 0], np.eye(2)), "symm"),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- #
# Gaussians (eq. 6) and sample convergence
# --------------------------------------------------------------------------- #
def test_gaussian_w2_closed_form_hand_values():
    # 1-D: W2^2 = (m1 - m2)^2 + (s1 - s2)^2
    assert gaussian_w2_closed_form([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(
        math.sqrt(9 + 1), rel=1e-10
    )
    # diagonal: ||m1 - m2||^2 + ||sqrt(diag1) - sqrt(diag2)||^2
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = math.sqrt(np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2))
    got = gaussian_w2_closed_form(m1, np.diag(v1), m2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-10)
    assert gaussian_w2_closed_form(m1, np.diag(v1), m1, np.diag(v1)) == pytest.approx(0, abs=1e-6)


def test_gaussian_w2_full_covariance_symmetric_and_commuting():
    rng = np.random.default_rng(7)
    A, B = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    S1, S2 = A @ A.T + 0.1 * np.eye(4), B @ B.T
    m1, m2 = rng.normal(size=4), rng.normal(size=4)
    w = gaussian_w2_closed_form(m1, S1, m2, S2)
    assert gaussian_w2_closed_form(m2, S2, m1, S1) == pytest.approx(w, rel=1e-8)
    # commuting covariances (same eigenvectors): ||sqrt(S1) - sqrt(S2)||_F
    Q, _ = np.linalg.qr(A)
    l1, l2 = np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 0.5, 3.0, 0.0])
    C1, C2 = Q @ np.diag(l1) @ Q.T, Q @ np.diag(l2) @ Q.T
    expected = math.sqrt(np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2))
    assert gaussian_w2_closed_form(np.zeros(4), C1, np.zeros(4), C2) == pytest.approx(
        expected, rel=1e-7
    )


def test_sample_w2_convergence_approaches_closed_form():
    m1, S1 = np.zeros(2), np.eye(2)
    m2, S2 = np.array([3.0, 0.0]), np.diag([4.0, 0.25])
    res = sample_w2_convergence(m1, S1, m2, S2, sizes=[25, 100, 400], repeats=4, seed=0)
    exact = gaussian_w2_closed_form(m1, S1, m2, S2)
    assert res.closed_form == pytest.approx(exact)
    assert len(res.mean) == len(res.std) == len(res.abs_error) == 3
    assert res.abs_error[-1] < res.abs_error[0]
    assert abs(res.mean[-1] - exact) < 0.05 * exact
    assert res.slope < 0
    again = sample_w2_convergence(m1, S1, m2, S2, sizes=[25, 100, 400], repeats=4, seed=0)
    assert again == res
    json.dumps(res.to_dict())
