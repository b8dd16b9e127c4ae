"""Values of kd2m.metrics against independent float64 references (numpy/scipy/POT/sklearn).

The references below are written from EQUATIONS.md, in numpy, without any
code from kd2m.metrics: brute force over permutations, the Hungarian
algorithm on numpy cost matrices, ``ot.emd2``, ``scipy.linalg.sqrtm``,
POT's Bures-Wasserstein, sklearn's Ledoit-Wolf and the closed forms of KL.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import ot
import pytest
import scipy.linalg
import torch
from scipy.optimize import linear_sum_assignment

import kd2m.metrics as M

torch.set_num_threads(1)
RTOL = 1e-6


# --------------------------------------------------------------------------- numpy references


def sqdist(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def ref_w_bruteforce(zs, zt, label_cost=None):
    n = len(zs)
    C = sqdist(zs, zt) + (0 if label_cost is None else label_cost)
    return min(C[np.arange(n), list(p)].mean() for p in itertools.permutations(range(n)))


def ref_w(zs, zt):
    C = sqdist(zs, zt)
    r, c = linear_sum_assignment(C)
    return C[r, c].mean()


def ref_class_w(zs, zt, y):
    return np.mean([ref_w(zs[y == c], zt[y == c]) for c in np.unique(y)])


def ref_joint(zs, zt, y, beta):
    L = 2.0 * (y[:, None] != y[None, :])  # ||onehot(y_i) - onehot(y_j)||^2
    C = sqdist(zs, zt) + beta * L
    r, c = linear_sum_assignment(C)
    return C[r, c].mean()


def ref_joint_ce(zs, zt, beta, ps, q):
    L = -np.log(ps) @ q.T  # L[i, j] = -sum_k q_jk log ps_ik
    C = sqdist(zs, zt) + beta * L
    r, c = linear_sum_assignment(C)
    return C[r, c].mean()


def ml_fit(Z):
    m = Z.mean(0)
    return m, np.cov(Z, rowvar=False, bias=True).reshape(Z.shape[1], Z.shape[1])


def sqrtm(S):
    """scipy's matrix square root; for the all-zero covariance of a single sample (where some
    scipy versions return NaN) the PSD square root from an eigendecomposition."""
    with warnings.catch_warnings():  # singular covariances when n <= d: expected
        warnings.simplefilter("ignore")
        R = np.real(scipy.linalg.sqrtm(S))
    if np.all(np.isfinite(R)):
        return R
    w, V = np.linalg.eigh(S)
    return (V * np.sqrt(np.clip(w, 0, None))) @ V.T


def ref_bures(zs, zt):
    (ms, Cs), (mt, Ct) = ml_fit(zs), ml_fit(zt)
    rt = sqrtm(Ct)
    return ((ms - mt) ** 2).sum() + np.trace(Cs + Ct - 2 * sqrtm(rt @ Cs @ rt))


def ref_bures_diag(zs, zt):
    return ((zs.mean(0) - zt.mean(0)) ** 2).sum() + ((zs.std(0) - zt.std(0)) ** 2).sum()


def lw_alpha(Z):
    from sklearn.covariance import ledoit_wolf_shrinkage

    return float(ledoit_wolf_shrinkage(Z)) if len(Z) > 1 else 0.0


def lw_alpha_diag(Z):
    """Ledoit-Wolf restricted to the diagonal: shrink the variances toward their mean."""
    n = len(Z)
    X = Z - Z.mean(0)
    v = (X**2).mean(0)
    b2 = ((X**2 - v) ** 2).sum() / n**2
    d2 = ((v - v.mean()) ** 2).sum()
    return 0.0 if d2 == 0 else min(b2, d2) / d2


def shrunk(C, alpha, eps, mu=None):
    d = C.shape[0]
    mu = np.trace(C) / d if mu is None else mu
    return (1 - alpha) * C + (alpha * mu + eps) * np.eye(d)


def kl_gauss(ms, S, mt, T):
    d = len(ms)
    Ti = np.linalg.inv(T)
    dm = mt - ms
    return 0.5 * (
        np.trace(Ti @ S) + dm @ Ti @ dm - d + np.linalg.slogdet(T)[1] - np.linalg.slogdet(S)[1]
    )


def ref_kl(zs, zt, alpha_s, alpha_t, eps=1e-6, diagonal=False, mu=(None, None)):
    (ms, Cs), (mt, Ct) = ml_fit(zs), ml_fit(zt)
    if diagonal:
        Cs, Ct = np.diag(np.diag(Cs)), np.diag(np.diag(Ct))
    return kl_gauss(ms, shrunk(Cs, alpha_s, eps, mu[0]), mt, shrunk(Ct, alpha_t, eps, mu[1]))


def ref_mmd(zs, zt, k):
    return k(zs, zs).mean() + k(zt, zt).mean() - 2 * k(zs, zt).mean()


def ref_hinton(ls, lt, T):
    def logsoftmax(x):
        x = x - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    lps, lpt = logsoftmax(ls / T), logsoftmax(lt / T)
    return T**2 * (np.exp(lpt) * (lpt - lps)).sum(1).mean()


# --------------------------------------------------------------------------- fixtures / helpers


def data(n, d, seed=0, shift=0.5, scale=1.5):
    rng = np.random.default_rng(seed)
    zs = rng.normal(size=(n, d))
    zt = scale * rng.normal(size=(n, d)) + shift
    return zs, zt


def T(x):
    return torch.as_tensor(x)


def close(got, ref, rtol=RTOL):
    got = float(got)
    assert abs(got - ref) <= rtol * max(abs(ref), 1e-12), (got, ref)


# --------------------------------------------------------------------------- eq. (3)-(5)


def test_wasserstein_matches_bruteforce_and_hungarian():
    zs, zt = data(6, 3)
    close(M.wasserstein(T(zs), T(zt)), ref_w_bruteforce(zs, zt))
    zs, zt = data(40, 7, seed=1)
    close(M.wasserstein(T(zs), T(zt)), ref_w(zs, zt))


def test_wasserstein_weights_and_unequal_sizes_match_emd2():
    rng = np.random.default_rng(3)
    zs, zt = rng.normal(size=(7, 4)), rng.normal(size=(5, 4)) + 1
    a = rng.random(7)
    a /= a.sum()
    b = np.full(5, 0.2)
    close(M.wasserstein(T(zs), T(zt)), ot.emd2(np.full(7, 1 / 7), b, sqdist(zs, zt)))
    close(M.wasserstein(T(zs), T(zt), a=T(a), b=b), ot.emd2(a, b, sqdist(zs, zt)))


def test_class_wasserstein_is_the_mean_over_present_classes():
    zs, zt = data(12, 3, seed=2)
    y = np.array([3, 3, 3, 7, 7, 9, 3, 7, 7, 3, 3, 7])  # classes 3, 7, 9 (9 has one sample)
    got = M.class_wasserstein(T(zs), T(zt), T(y))
    close(got, ref_class_w(zs, zt, y))
    # mean, not sum (the author's code summed)
    total = sum(ref_w(zs[y == c], zt[y == c]) for c in (3, 7, 9))
    assert abs(float(got) - total / 3) < 1e-9 and abs(float(got) - total) > 1e-3


def test_class_wasserstein_single_sample_class_is_squared_distance():
    zs, zt = data(5, 4, seed=4)
    y = np.array([0, 0, 1, 0, 0])
    per_class = [ref_w(zs[y == 0], zt[y == 0]), ((zs[2] - zt[2]) ** 2).sum()]
    close(M.class_wasserstein(T(zs), T(zt), T(y)), np.mean(per_class))


@pytest.mark.parametrize("beta", [0.0, 0.3, 5.0, 1e3])
def test_joint_wasserstein_onehot_matches_bruteforce(beta):
    zs, zt = data(6, 2, seed=5, shift=0.2, scale=1.0)
    y = np.array([0, 1, 0, 1, 2, 2])
    L = 2.0 * (y[:, None] != y[None, :])
    got = M.joint_wasserstein(T(zs), T(zt), T(y), beta=beta)
    close(got, ref_w_bruteforce(zs, zt, beta * L))


def test_joint_wasserstein_limits_and_default_beta():
    zs, zt = data(30, 5, seed=6)
    y = np.arange(30) % 4
    close(M.joint_wasserstein(T(zs), T(zt), T(y), beta=0.0), ref_w(zs, zt))
    # beta >= max cost / 2: the plan never crosses classes -> class-size-weighted eq. (4)
    big = sqdist(zs, zt).max()
    weighted = sum((y == c).mean() * ref_w(zs[y == c], zt[y == c]) for c in range(4))
    close(M.joint_wasserstein(T(zs), T(zt), T(y), beta=big), weighted)
    # default beta = mean feature cost
    close(M.joint_wasserstein(T(zs), T(zt), T(y)), ref_joint(zs, zt, y, sqdist(zs, zt).mean()))


def test_joint_wasserstein_uses_the_teacher():
    zs, zt = data(20, 4, seed=7)
    y = np.arange(20) % 3
    got = M.joint_wasserstein(T(zs), T(zt), T(y), beta=1.0)
    close(got, ref_joint(zs, zt, y, 1.0))
    assert float(M.joint_wasserstein(T(zs), T(zs), T(y), beta=1.0)) == pytest.approx(0, abs=1e-12)
    assert float(got) > 1.0  # the student compared with itself would give 0


def test_joint_wasserstein_ce_matches_reference():
    rng = np.random.default_rng(8)
    zs, zt = data(15, 4, seed=8)
    y = rng.integers(0, 3, 15)
    logits = rng.normal(size=(15, 3))
    ps = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pt = np.exp(2 * logits) / np.exp(2 * logits).sum(1, keepdims=True)
    got = M.joint_wasserstein(T(zs), T(zt), T(y), beta=0.8, label_cost="ce", ps=T(ps))
    close(got, ref_joint_ce(zs, zt, 0.8, ps, np.eye(3)[y]))
    got = M.joint_wasserstein(T(zs), T(zt), T(y), beta=0.8, label_cost="ce", ps=T(ps), pt=T(pt))
    close(got, ref_joint_ce(zs, zt, 0.8, ps, pt))


# --------------------------------------------------------------------------- eq. (6)


@pytest.mark.parametrize("n,d", [(5, 12), (12, 12), (30, 4), (1, 3)])
def test_gaussian_wasserstein_matches_sqrtm(n, d):
    zs, zt = data(n, d, seed=n + d)
    close(M.gaussian_wasserstein(T(zs), T(zt)), ref_bures(zs, zt))


@pytest.mark.parametrize("n,d", [(30, 4), (200, 20)])
def test_gaussian_wasserstein_matches_pot(n, d):
    zs, zt = data(n, d, seed=1)
    pot = ot.gaussian.empirical_bures_wasserstein_distance(zs, zt, reg=0.0)  # not squared
    close(M.gaussian_wasserstein(T(zs), T(zt)), float(np.squeeze(pot)) ** 2)
    (ms, Cs), (mt, Ct) = ml_fit(zs), ml_fit(zt)
    close(
        M.gaussian_wasserstein(T(zs), T(zt)),
        float(ot.gaussian.bures_wasserstein_distance(ms, mt, Cs, Ct)) ** 2,
    )


def test_gaussian_wasserstein_unequal_sizes():
    rng = np.random.default_rng(2)
    zs, zt = rng.normal(size=(7, 10)), rng.normal(size=(4, 10))
    close(M.gaussian_wasserstein(T(zs), T(zt)), ref_bures(zs, zt))
    zs, zt = rng.normal(size=(40, 3)), rng.normal(size=(9, 3))
    close(M.gaussian_wasserstein(T(zs), T(zt)), ref_bures(zs, zt))


@pytest.mark.parametrize("n,d", [(5, 12), (30, 4)])
def test_gaussian_wasserstein_diagonal(n, d):
    zs, zt = data(n, d)
    zs[:, 0] = 1.0  # a dead (constant) feature
    close(M.gaussian_wasserstein(T(zs), T(zt), diagonal=True), ref_bures_diag(zs, zt))


# --------------------------------------------------------------------------- eq. (7)


@pytest.mark.parametrize("n,d", [(6, 15), (15, 15), (40, 5)])
def test_gaussian_kl_ledoit_wolf_matches_closed_form(n, d):
    zs, zt = data(n, d, seed=d)
    got = M.gaussian_kl(T(zs), T(zt))
    close(got, ref_kl(zs, zt, lw_alpha(zs), lw_alpha(zt)))


@pytest.mark.parametrize("n,d", [(6, 15), (40, 5)])
def test_gaussian_kl_fixed_and_no_shrinkage(n, d):
    zs, zt = data(n, d, seed=3)
    close(M.gaussian_kl(T(zs), T(zt), shrinkage=0.4, eps=1e-3), ref_kl(zs, zt, 0.4, 0.4, 1e-3))
    close(M.gaussian_kl(T(zs), T(zt), shrinkage=None, eps=0.1), ref_kl(zs, zt, 0.0, 0.0, 0.1))


def test_gaussian_kl_direction_is_student_to_teacher():
    zs, zt = data(50, 3, seed=9, scale=3.0)
    a_s, a_t = lw_alpha(zs), lw_alpha(zt)
    close(M.gaussian_kl(T(zs), T(zt)), ref_kl(zs, zt, a_s, a_t))
    assert abs(float(M.gaussian_kl(T(zs), T(zt))) - float(M.gaussian_kl(T(zt), T(zs)))) > 0.1


@pytest.mark.parametrize("n,d", [(6, 15), (40, 5)])
def test_gaussian_kl_diagonal(n, d):
    zs, zt = data(n, d, seed=11)
    zs[:, 1] = 0.0  # dead feature: finite thanks to the shrinkage
    got = M.gaussian_kl(T(zs), T(zt), diagonal=True)
    close(got, ref_kl(zs, zt, lw_alpha_diag(zs), lw_alpha_diag(zt), diagonal=True))
    got = M.gaussian_kl(T(zs), T(zt), diagonal=True, shrinkage=0.3, eps=1e-4)
    close(got, ref_kl(zs, zt, 0.3, 0.3, 1e-4, diagonal=True))


def test_ledoit_wolf_intensity_is_sklearns():
    from kd2m.metrics.gaussian import _fit, _ledoit_wolf

    for n, d in [(5, 20), (50, 6)]:
        zs, _ = data(n, d)
        m, A, counts = _fit(T(zs))
        gram = A @ A.mT
        assert float(_ledoit_wolf(A, counts, gram)[0]) == pytest.approx(lw_alpha(zs), rel=1e-9)


# --------------------------------------------------------------------------- class-conditional


def test_class_gaussian_wasserstein_matches_per_class_reference():
    zs, zt = data(23, 3, seed=12)
    y = np.array([0] * 10 + [1] * 6 + [2] * 3 + [5] * 1 + [1] * 3)  # n_c = 10 > d, 9, 3, 1
    got = M.class_gaussian(T(zs), T(zt), T(y))
    close(got, np.mean([ref_bures(zs[y == c], zt[y == c]) for c in np.unique(y)]))
    got = M.class_gaussian(T(zs), T(zt), T(y), diagonal=True)
    close(got, np.mean([ref_bures_diag(zs[y == c], zt[y == c]) for c in np.unique(y)]))


def test_class_gaussian_kl_matches_per_class_reference():
    zs, zt = data(14, 8, seed=13)
    y = np.array([0, 0, 0, 1, 1, 2, 0, 0, 1, 1, 0, 0, 0, 0])  # class 2 has one sample
    mu = (np.trace(ml_fit(zs)[1]) / 8, np.trace(ml_fit(zt)[1]) / 8)  # fallback scale
    refs = []
    for c in np.unique(y):
        s, t = zs[y == c], zt[y == c]
        if len(s) == 1:  # alpha = 1 toward the whole batch's scale
            refs.append(ref_kl(s, t, 1.0, 1.0, mu=mu))
        else:
            refs.append(ref_kl(s, t, lw_alpha(s), lw_alpha(t)))
    got = M.class_gaussian(T(zs), T(zt), T(y), divergence="kl")
    close(got, np.mean(refs))
    got = M.class_gaussian(T(zs), T(zt), T(y), divergence="kl", shrinkage=0.5)
    refs = [
        ref_kl(zs[y == c], zt[y == c], 1.0, 1.0, mu=mu)
        if c == 2
        else ref_kl(zs[y == c], zt[y == c], 0.5, 0.5)
        for c in np.unique(y)
    ]
    close(got, np.mean(refs))


# --------------------------------------------------------------------------- baselines


def test_mmd_matches_reference():
    zs, zt = data(9, 4, seed=14)
    sigma = 1.7

    def gauss(a, b):
        return np.exp(-sqdist(a, b) / (2 * sigma**2))

    close(M.mmd(T(zs), T(zt), bandwidth=sigma), ref_mmd(zs, zt, gauss))
    # median heuristic: (lower) median of the pooled pairwise distances
    iu = np.triu_indices(9, 1)
    pooled = np.concatenate(
        [np.sqrt(sqdist(zs, zs)[iu]), np.sqrt(sqdist(zt, zt)[iu]), np.sqrt(sqdist(zs, zt)).ravel()]
    )
    med = np.sort(pooled)[(len(pooled) - 1) // 2]
    close(M.mmd(T(zs), T(zt)), float(M.mmd(T(zs), T(zt), bandwidth=med)))

    def poly(a, b):
        an = a / np.linalg.norm(a, axis=1, keepdims=True)
        bn = b / np.linalg.norm(b, axis=1, keepdims=True)
        return (an @ bn.T) ** 2

    close(M.mmd(T(zs), T(zt), kernel="polynomial"), ref_mmd(zs, zt, poly))


def test_hinton_matches_reference():
    ls, lt = data(10, 5, seed=15)
    close(M.hinton(T(ls), T(lt), temperature=4.0), ref_hinton(ls, lt, 4.0))
    close(M.hinton(T(ls), T(lt), temperature=1.0), ref_hinton(ls, lt, 1.0))


# --------------------------------------------------------------------------- invariances

LABELLED = {
    "wasserstein": lambda s, t, y: M.wasserstein(s, t),
    "class_wasserstein": lambda s, t, y: M.class_wasserstein(s, t, y),
    "joint_wasserstein": lambda s, t, y: M.joint_wasserstein(s, t, y),
    "joint_wasserstein_beta": lambda s, t, y: M.joint_wasserstein(s, t, y, beta=2.0),
    "gaussian_wasserstein": lambda s, t, y: M.gaussian_wasserstein(s, t),
    "gaussian_wasserstein_diag": lambda s, t, y: M.gaussian_wasserstein(s, t, diagonal=True),
    "gaussian_kl": lambda s, t, y: M.gaussian_kl(s, t),
    "gaussian_kl_diag": lambda s, t, y: M.gaussian_kl(s, t, diagonal=True),
    "class_gaussian": lambda s, t, y: M.class_gaussian(s, t, y),
    "class_gaussian_diag": lambda s, t, y: M.class_gaussian(s, t, y, diagonal=True),
    "class_gaussian_kl": lambda s, t, y: M.class_gaussian(s, t, y, divergence="kl"),
    "mmd": lambda s, t, y: M.mmd(s, t),
    "mmd_poly": lambda s, t, y: M.mmd(s, t, kernel="polynomial"),
    "hinton": lambda s, t, y: M.hinton(s, t),
}
SYMMETRIC = [
    "wasserstein",
    "class_wasserstein",
    "joint_wasserstein_beta",
    "gaussian_wasserstein",
    "gaussian_wasserstein_diag",
    "class_gaussian",
    "class_gaussian_diag",
    "mmd",
    "mmd_poly",
]
TRANSLATION_INVARIANT = [
    "wasserstein",
    "class_wasserstein",
    "joint_wasserstein",
    "gaussian_wasserstein",
    "gaussian_wasserstein_diag",
    "gaussian_kl",
    "gaussian_kl_diag",
    "class_gaussian",
    "class_gaussian_kl",
    "mmd",
]


def batch(n=24, d=6, seed=21):
    zs, zt = data(n, d, seed=seed)
    y = np.random.default_rng(seed).integers(0, 4, n)
    return T(zs), T(zt), T(y)


@pytest.mark.parametrize("name", sorted(LABELLED))
@pytest.mark.parametrize("n,d", [(24, 6), (6, 24)])
def test_zero_on_identical_inputs(name, n, d):
    zs, _, y = batch(n, d)
    assert abs(float(LABELLED[name](zs, zs.clone(), y))) < 1e-9


@pytest.mark.parametrize("name", SYMMETRIC)
def test_symmetric(name):
    zs, zt, y = batch()
    close(LABELLED[name](zs, zt, y), float(LABELLED[name](zt, zs, y)), rtol=1e-9)


@pytest.mark.parametrize("name", TRANSLATION_INVARIANT)
def test_common_translation_leaves_value_unchanged(name):
    zs, zt, y = batch()
    v = torch.linspace(-3, 5, zs.shape[1], dtype=zs.dtype)
    close(LABELLED[name](zs + v, zt + v, y), float(LABELLED[name](zs, zt, y)), rtol=1e-8)


@pytest.mark.parametrize("name", sorted(LABELLED))
@pytest.mark.parametrize("n,d", [(24, 6), (6, 24)])
def test_batch_permutation_leaves_value_unchanged(name, n, d):
    zs, zt, y = batch(n, d)
    p = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    close(LABELLED[name](zs[p], zt[p], y[p]), float(LABELLED[name](zs, zt, y)), rtol=1e-8)


def test_wasserstein_bounded_by_identity_coupling():
    zs, zt, _ = batch()
    w = float(M.wasserstein(zs, zt))
    assert w <= float(((zs - zt) ** 2).sum(1).mean()) + 1e-12
    assert float(M.gaussian_wasserstein(zs, zt)) <= w + 1e-9  # Gelbrich bound
