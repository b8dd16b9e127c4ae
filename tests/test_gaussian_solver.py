"""The cross term of eq. (6) without factorisations (``solver="newton-schulz"``), and the
KL's Cholesky without host synchronisation (``torch.linalg.cholesky_ex``).

References: the SVD route (``solver="svd"``, itself checked against scipy and POT in
test_metrics_values.py), ``scipy.linalg.sqrtm`` closed forms, and matrices with a
prescribed spectrum. The tolerance tested is the one documented in
``gaussian_wasserstein``: in float64 the Newton-Schulz cross term N satisfies
``0 <= ||M||_* - N <= eps ||M||_* + sum_{s_i < 1e-6 c} s_i`` (plus rounding, SLACK).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_metrics_values import data, ref_bures
from torch.autograd import gradcheck
from torch.utils._python_dispatch import TorchDispatchMode

import kd2m.metrics as M
from kd2m.metrics import gaussian as G

torch.set_num_threads(1)
NS = "newton-schulz"
EPS64 = torch.finfo(torch.float64).eps
SLACK = 1e-12  # rounding allowance, relative to ||M||_* (measured errors: <= 5e-12 of W2)


def factors(zs, zt):
    """Scaled centred factors A = (Z - m) / sqrt(n), as EQUATIONS.md (6) uses them."""
    return [(z - z.mean(0)) / math.sqrt(z.shape[0]) for z in (zs, zt)]


def bound(zs, zt):
    """(||M||_*, allowed underestimate of ||M||_*) for M = A_S A_T^T, from its singular values."""
    As, At = factors(torch.as_tensor(zs), torch.as_tensor(zt))
    s = torch.linalg.svdvals((As @ At.T).double())
    c = float((s**4).sum() ** 0.25)
    nuc = float(s.sum())
    return nuc, EPS64 * nuc + float(s[s < G.NS_RESOLVED * c].sum()) + SLACK * nuc


def assert_within(zs, zt, got, ref):
    """W2^2 by Newton-Schulz exceeds the exact one by at most twice the cross term's bound."""
    nuc, tol = bound(zs, zt)
    diff = float(got) - float(ref)
    assert -SLACK * nuc <= diff <= 2 * tol, (diff, tol, nuc)


def cases(seed=0):
    """Feature pairs (float64): n < d, n = d, n > d, unequal n, low rank, dead, duplicates."""
    rng = np.random.default_rng(seed)
    out = {f"random_{n}x{d}": data(n, d, seed=n + d) for n, d in [(5, 12), (12, 12), (30, 4)]}
    out["single_sample"] = data(1, 3)
    out["unequal_n"] = (rng.normal(size=(7, 10)), rng.normal(size=(4, 10)))
    out["unequal_n_gt_d"] = (rng.normal(size=(40, 3)), rng.normal(size=(9, 3)))
    W = rng.normal(size=(3, 24))
    out["low_rank"] = (rng.normal(size=(16, 3)) @ W, rng.normal(size=(16, 3)) @ W + 0.5)
    zs, zt = data(16, 24, seed=3)
    zs[:, :8] = 1.0  # dead (constant) student features
    zt[:, 4:12] = 0.0  # and teacher features, overlapping
    out["dead_features"] = (zs, zt)
    zs, zt = data(8, 24, seed=4)
    out["duplicates"] = (np.concatenate([zs, zs]), np.concatenate([zt, zt + 0.1]))
    return out


CASES = cases()


# --------------------------------------------------------------------------- the polynomial steps


@pytest.mark.parametrize("dtype,steps", [(torch.float64, 20), (torch.float32, 19)])
def test_schedule_maps_singular_values_as_documented(dtype, steps):
    """Scalar model of the iteration: [0, margin] stays in [0, 1]; x >= NS_RESOLVED reaches
    1 to eps; 0 stays 0; the bound would not hold with 3 steps fewer (either end)."""
    eps = torch.finfo(dtype).eps
    sched = G._ns_schedule(eps)
    assert len(sched) == steps and all(1 <= a <= math.sqrt(3) for a in sched)

    def run(x, scales):
        for a in scales:
            x = a * x * (3 - a * a * x * x) / 2
            assert ((x >= 0) & (x <= 1 + 1e-15)).all()
        return x

    x = np.concatenate([np.geomspace(G.NS_RESOLVED, 1, 2000), np.linspace(1, G.NS_MARGIN, 50)])
    assert (1 - run(x, sched) <= 2 * eps).all()
    assert run(np.zeros(1), sched)[0] == 0
    assert (run(np.geomspace(1e-12, G.NS_RESOLVED, 50), sched) >= 0).all()
    for fewer in (sched[3:], sched[:-3]):  # start from a 17x higher floor, or stop early
        assert (1 - run(x, fewer)).max() > 1e-6


def prescribed(spectrum, p=40, q=30, seed=0):
    """Stacked factors A (1, p, k), B (1, q, k) with A B^T = U diag(spectrum) V^T."""
    g = torch.Generator().manual_seed(seed)
    k = len(spectrum)
    U = torch.linalg.qr(torch.randn(p, k, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(q, k, generator=g, dtype=torch.float64))[0]
    return (U * torch.as_tensor(spectrum)).unsqueeze(0), V.unsqueeze(0)


def test_nuclear_norm_tolerance_on_a_prescribed_spectrum_and_three_steps_fewer():
    """Singular values from 1 down to 1e-9 (some below NS_RESOLVED c, some just above): within
    the bound; 3 steps fewer at either end of the schedule is not."""
    spectrum = np.concatenate([np.geomspace(1, 1e-5, 12), np.geomspace(8e-6, 1e-9, 12)])
    A, B = prescribed(spectrum)
    nuc, c = spectrum.sum(), (spectrum**4).sum() ** 0.25
    tol = EPS64 * nuc + spectrum[spectrum < G.NS_RESOLVED * c].sum() + SLACK * nuc
    Mx = A @ B.mT
    sched = G._ns_schedule(EPS64)
    for scales, ok in ((sched, True), (sched[3:], False), (sched[:-3], False)):
        N = float((G._polar_newton_schulz(Mx, scales) * Mx).sum())
        assert N <= nuc * (1 + SLACK)  # a lower bound
        assert bool(nuc - N <= tol) is ok, (len(scales), nuc - N, tol)
    assert float(G._NuclearNormNewtonSchulz.apply(A, B)) == pytest.approx(nuc, abs=tol)


def test_zero_matrix_and_zero_padding_are_exact():
    """All-zero M (a one-sample class): 0 and zero gradients; zero-padded rows/columns change
    nothing (the stacked classes of class_gaussian)."""
    A = torch.zeros(2, 5, 7, dtype=torch.float64, requires_grad=True)
    B = torch.randn(2, 4, 7, dtype=torch.float64, requires_grad=True)
    value = G._NuclearNormNewtonSchulz.apply(A, B)
    value.sum().backward()
    assert torch.equal(value, torch.zeros(2, dtype=torch.float64))
    assert torch.equal(A.grad, torch.zeros_like(A)) and torch.equal(B.grad, torch.zeros_like(B))
    A1, B1 = prescribed(np.geomspace(3, 0.01, 6), p=6, q=6)
    padded = [torch.cat([X, torch.zeros(1, 3, X.shape[-1], dtype=X.dtype)], 1) for X in (A1, B1)]
    torch.testing.assert_close(
        G._NuclearNormNewtonSchulz.apply(*padded),
        G._NuclearNormNewtonSchulz.apply(A1, B1),
        rtol=1e-14,
        atol=0,
    )


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("name", sorted(CASES))
def test_gaussian_wasserstein_matches_svd_and_sqrtm(name):
    zs, zt = CASES[name]
    s, t = torch.as_tensor(zs), torch.as_tensor(zt)
    got = M.gaussian_wasserstein(s, t, solver=NS)
    assert got.dtype == torch.float64
    assert_within(zs, zt, got, M.gaussian_wasserstein(s, t))
    ref = ref_bures(zs, zt)  # scipy.linalg.sqrtm, itself less accurate than the SVD
    assert abs(float(got) - ref) <= 1e-6 * max(abs(ref), 1e-12)


def power_law(n=128, d=512, seed=8):
    """Features whose covariance eigenvalues decay like k^-2 (a wide spectrum: the smallest
    nonzero singular values of M reach ~1e-6 c, where 3 fewer steps fail the bound)."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    scale = np.arange(1, d + 1) ** -1.0
    return (rng.normal(size=(n, d)) * scale) @ Q.T, (rng.normal(size=(n, d)) * scale) @ Q.T


def test_training_size_n_below_d_and_n_above_d():
    """n = 128, d = 512 (the training regime), power-law spectra, and n = 512 > d = 64."""
    relu = [np.maximum(z, 0) for z in data(128, 512, seed=7)]  # post-ReLU features
    for zs, zt in (relu, power_law(), data(512, 64, seed=7)):
        s, t = torch.as_tensor(zs), torch.as_tensor(zt)
        assert_within(zs, zt, M.gaussian_wasserstein(s, t, solver=NS), M.gaussian_wasserstein(s, t))


def test_class_gaussian_batched_classes():
    """Classes of 10 (> d), 9, 3 and 1 samples, stacked and zero-padded: the per-class mean of
    eq. (6), each class within its bound, and equal to the SVD route."""
    zs, zt = data(23, 3, seed=12)
    y = np.array([0] * 10 + [1] * 6 + [2] * 3 + [5] * 1 + [1] * 3)
    got = M.class_gaussian(torch.as_tensor(zs), torch.as_tensor(zt), torch.as_tensor(y), solver=NS)
    refs = [ref_bures(zs[y == c], zt[y == c]) for c in np.unique(y)]
    assert abs(float(got) - np.mean(refs)) <= 1e-6 * np.mean(refs)
    tol = np.mean([2 * bound(zs[y == c], zt[y == c])[1] for c in np.unique(y)])
    svd = M.class_gaussian(torch.as_tensor(zs), torch.as_tensor(zt), torch.as_tensor(y))
    assert -1e-12 <= float(got - svd) <= tol
    one = y == 5  # one sample: W2 is exactly the squared distance of the two points
    single = M.gaussian_wasserstein(torch.as_tensor(zs[one]), torch.as_tensor(zt[one]), solver=NS)
    assert float(single) == pytest.approx(((zs[one] - zt[one]) ** 2).sum(), rel=1e-15)


def test_float32_is_as_accurate_as_the_svd_route():
    """float32 at training size: both routes within 1e-5 of the scale of the cancelling terms
    (tr Sigma_S + tr Sigma_T) of the float64 value (measured: 1e-8 to 1e-6 for both)."""
    for seed in range(3):
        zs, zt = data(128, 512, seed=seed)
        zs, zt = np.maximum(zs, 0), np.maximum(zt, 0) * 1.3
        s, t = torch.as_tensor(zs), torch.as_tensor(zt)
        exact = float(M.gaussian_wasserstein(s, t))
        scale = sum(float((A**2).sum()) for A in factors(s, t))
        for solver in ("svd", NS):
            got = M.gaussian_wasserstein(s.float(), t.float(), solver=solver)
            assert got.dtype == torch.float32
            assert abs(float(got) - exact) <= 1e-5 * scale, (solver, float(got), exact)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("n,d", [(6, 9), (12, 4), (1, 3)])
def test_gradcheck_float64(n, d):
    """The backward (approximate polar factor) is the derivative of the value returned, to
    finite-difference accuracy, on well-conditioned inputs (n < d, n > d, one sample)."""
    g = torch.Generator().manual_seed(n)
    zs = torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_()
    zt = (1.5 * torch.randn(n + 1, d, generator=g, dtype=torch.float64)).requires_grad_()
    assert gradcheck(lambda s, t: M.gaussian_wasserstein(s, t, solver=NS), (zs, zt))


def grads(fn, zs, zt, *args):
    s, t = zs.clone().requires_grad_(), zt.clone().requires_grad_()
    fn(s, t, *args).backward()
    return torch.cat([s.grad.flatten(), t.grad.flatten()])


def test_gradient_equals_the_svd_routes():
    """float64, n = 128 < d = 512, and per class: the same gradient as U_+ V_+^T to 1e-10
    (measured: 5e-15 to 1e-12 on random, low-rank, dead, duplicated and real features)."""
    zs, zt = (torch.as_tensor(z) for z in data(128, 512, seed=5))
    y = torch.arange(128) % 10
    for fn, args in ((M.gaussian_wasserstein, ()), (M.class_gaussian, (y,))):
        ref = grads(fn, zs, zt, *args)
        got = grads(lambda s, t, *a, f=fn: f(s, t, *a, solver=NS), zs, zt, *args)
        assert float((got - ref).norm() / ref.norm()) <= 1e-10


DEGENERATE = ["dead_features", "duplicates", "single_sample", "low_rank"]


@pytest.mark.parametrize("name", DEGENERATE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_is_finite_on_degenerate_inputs(name, dtype):
    zs, zt = (torch.as_tensor(z, dtype=dtype) for z in CASES[name])
    g = grads(lambda s, t: M.gaussian_wasserstein(s, t, solver=NS), zs, zt)
    assert torch.isfinite(g).all()
    y = torch.arange(len(zs)) % 3
    y[0] = 7  # a one-sample class
    g = grads(lambda s, t: M.class_gaussian(s, t, y, solver=NS), zs, zt)
    assert torch.isfinite(g).all()


# --------------------------------------------------------------------------- no linalg, no sync


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def forbidden(names):
    """Factorisations (aten ``linalg_*``, ``_linalg_*``, ...) and host reads of a scalar."""
    sync = {"_local_scalar_dense", "is_nonzero", "item"}
    old = {"svd", "qr", "geqrf", "cholesky", "symeig", "eig", "lu", "inverse"}
    return sorted(n for n in names if n.startswith(("linalg_", "_linalg_")) or n in sync | old)


def test_newton_schulz_runs_only_products_and_elementwise_ops():
    """No factorisation and no scalar read back to the host (.item() / bool() dispatch
    ``_local_scalar_dense``), forward and backward, with validate=False (the trainer's)."""
    zs, zt = (torch.as_tensor(z, dtype=torch.float32) for z in data(24, 40))
    zs.requires_grad_()
    with _Ops() as ops:
        M.gaussian_wasserstein(zs, zt, solver=NS, validate=False).backward()
    assert not forbidden(ops.names), sorted(ops.names)
    assert {"bmm", "baddbmm"} <= ops.names
    with _Ops() as ops:  # the SVD route, for contrast: the test can tell
        M.gaussian_wasserstein(zs, zt, validate=False)
    assert forbidden(ops.names)


def test_overflow_is_reported_not_hidden():
    """Features of magnitude 1e30 overflow M in float32: ValueError with validate=True (the
    public metrics' message), a non-finite value without validation."""
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(32, 16, generator=g) * 1e30, torch.randn(32, 16, generator=g) * 1e30
    with pytest.raises(ValueError, match=r"returned .* \(not finite\)"):
        M.gaussian_wasserstein(zs, zt, solver=NS)
    assert not torch.isfinite(M.gaussian_wasserstein(zs, zt, solver=NS, validate=False))
    assert torch.isfinite(M.gaussian_wasserstein(zs.double(), zt.double(), solver=NS))


# --------------------------------------------------------------------------- options


def test_bad_solver_values_raise():
    zs, zt = (torch.as_tensor(z) for z in data(6, 4))
    y = torch.arange(6) % 2
    with pytest.raises(ValueError, match=r"solver must be one of 'svd', 'newton-schulz'; got 'qr'"):
        M.gaussian_wasserstein(zs, zt, solver="qr")
    with pytest.raises(ValueError, match=r"solver must be one of .*; got 'Newton-Schulz'"):
        M.class_gaussian(zs, zt, y, solver="Newton-Schulz")
    with pytest.raises(
        ValueError,
        match=r"solver='newton-schulz' only applies .* diagonal=True has none .* "
        r"drop solver, or use diagonal=False",
    ):
        M.gaussian_wasserstein(zs, zt, diagonal=True, solver=NS)
    with pytest.raises(ValueError, match=r"diagonal=True has none"):
        M.class_gaussian(zs, zt, y, diagonal=True, solver=NS)
    with pytest.raises(
        ValueError, match=r"divergence='kl' has none \(the KL uses a Cholesky factorisation\)"
    ):
        M.class_gaussian(zs, zt, y, divergence="kl", solver=NS)
    # the default is accepted everywhere, and is exactly the former code path
    M.class_gaussian(zs, zt, y, divergence="kl", diagonal=True, solver="svd")
    assert torch.equal(M.gaussian_wasserstein(zs, zt, solver="svd"), M.gaussian_wasserstein(zs, zt))


# --------------------------------------------------------------------------- KL: cholesky_ex


def test_cholesky_without_sync_is_bit_identical_and_still_fails_clearly():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 6, 6, generator=g, dtype=torch.float64)
    K = X @ X.mT + 0.1 * torch.eye(6, dtype=torch.float64)
    assert torch.equal(G._cholesky(K, check=True), torch.linalg.cholesky(K))
    assert torch.equal(G._cholesky(K, check=False), torch.linalg.cholesky(K))
    bad = K.clone()
    bad[1] = -torch.eye(6)
    with pytest.raises(torch.linalg.LinAlgError, match="not positive-definite"):
        G._cholesky(bad, check=True)
    L = G._cholesky(bad, check=False)  # what CUDA gets with validate=False: NaN, no sync
    assert torch.isnan(L[1]).all() and torch.equal(L[0], torch.linalg.cholesky(K[0]))
    # through the metric (on the CPU the check always runs): the public ValueError
    zs = torch.as_tensor(data(4, 6)[0])
    zt = torch.ones(4, 6, dtype=torch.float64)  # zero covariance, and no ridge: K = 0
    for validate in (True, False):
        with pytest.raises(ValueError, match=r"a matrix factorisation failed .*not positive"):
            M.gaussian_kl(zs, zt, shrinkage=None, eps=0.0, validate=validate)


def test_registry_passes_and_checks_the_gaussian_solver():
    from kd2m.metrics import get_metric

    g = torch.Generator().manual_seed(3)
    zs, zt = (
        torch.randn(16, 8, generator=g, dtype=torch.float64),
        torch.randn(16, 8, generator=g, dtype=torch.float64),
    )
    y = torch.arange(16) % 3
    got = get_metric("gaussian_wasserstein", solver="newton-schulz")(zs, zt)
    ref = M.gaussian_wasserstein(zs, zt)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0.0)
    got = get_metric("class_gaussian", solver="newton-schulz")(zs, zt, y)
    torch.testing.assert_close(got, M.class_gaussian(zs, zt, y), rtol=1e-10, atol=0.0)
    with pytest.raises(ValueError, match="divergence='kl' has none"):
        get_metric("class_gaussian", divergence="kl", solver="newton-schulz")
    with pytest.raises(ValueError, match="diagonal=True has none"):
        get_metric("gaussian_wasserstein", diagonal=True, solver="newton-schulz")
    with pytest.raises(ValueError, match="solver must be one of 'svd', 'newton-schulz'"):
        get_metric("gaussian_wasserstein", solver="auction")
    with pytest.raises(ValueError, match="unknown option"):
        get_metric("gaussian_kl", solver="svd")
