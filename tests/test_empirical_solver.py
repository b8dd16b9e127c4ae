"""The ``solver`` option of eq. (3), (4), (5): the device-side auction gives scipy's numbers.

``solver="auction"`` (kd2m.metrics.assignment) replaces scipy's ``linear_sum_assignment``
inside ``wasserstein``, ``class_wasserstein`` and ``joint_wasserstein``. On costs without
ties both solvers return the same plan, so values and gradients agree to float64 round-off
(the plan's value alone is certified to a relative 2e-12); where optimal plans tie (dead
features, duplicated rows) the value agrees and the plan may differ. Tolerances:
``RTOL = 1e-12`` for float64 values and gradients of generic inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kd2m.metrics as M
from kd2m.metrics import assignment

RTOL = 1e-12


def features(n, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(n, d, generator=g, dtype=dtype)
    zt = 1.5 * torch.randn(n, d, generator=g, dtype=dtype) + 0.5
    return zs, zt


def probabilities(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(n, k, generator=g, dtype=torch.float64), dim=1)


def both(fn, zs, zt, *args, **kwargs):
    """Value and gradients (to every tensor input that requires one) under each solver."""
    out = {}
    for solver in ("scipy", "auction"):
        leaves = [t.detach().clone().requires_grad_(True) for t in (zs, zt)]
        extra = {
            k: v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v
            for k, v in kwargs.items()
        }
        value = fn(*leaves, *args, solver=solver, **extra)
        grads = torch.autograd.grad(
            value, leaves + [v for v in extra.values() if isinstance(v, torch.Tensor)]
        )
        out[solver] = (value.detach(), grads)
    return out


def assert_same(out, rtol=RTOL, atol=0.0):
    (v1, g1), (v2, g2) = out["scipy"], out["auction"]
    torch.testing.assert_close(v2, v1, rtol=rtol, atol=atol)
    for a, b in zip(g2, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


Y = torch.arange(40) % 7  # 7 classes of 5 or 6 rows


@pytest.mark.parametrize("n,d", [(40, 8), (40, 64), (128, 512)])
def test_wasserstein_auction_equals_scipy(n, d):
    zs, zt = features(n, d, seed=n + d)
    assert_same(both(M.wasserstein, zs, zt))


def test_class_wasserstein_auction_equals_scipy_with_a_one_sample_class():
    zs, zt = features(40, 16, seed=3)
    y = Y.clone()
    y[0] = 9  # a class with a single sample: its term is the distance of its two points
    assert_same(both(M.class_wasserstein, zs, zt, y))
    assert_same(both(M.class_wasserstein, zs, zt, Y))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # ground truth on both sides, default beta
        {"beta": 0.3},
        {"label_cost": "onehot", "beta": 2.0},
        {"ps": probabilities(40, 7, 1), "pt": probabilities(40, 7, 2)},
        {"ps": probabilities(40, 7, 3), "pt": probabilities(40, 7, 4), "label_cost": "ce"},
    ],
    ids=["onehot-default", "beta", "onehot", "sqeuclidean", "ce"],
)
def test_joint_wasserstein_auction_equals_scipy(kwargs):
    zs, zt = features(40, 16, seed=5)
    assert_same(both(M.joint_wasserstein, zs, zt, Y, **kwargs))


def test_the_auction_is_really_used(monkeypatch):
    """A test of the solver option that cannot pass by calling scipy twice."""
    calls = []
    real = assignment.assign

    def spy(cost, **kw):
        calls.append(tuple(cost.shape))
        return real(cost, **kw)

    import kd2m.metrics.empirical as E

    monkeypatch.setattr(E, "assign", spy)
    zs, zt = features(12, 4)
    y = torch.arange(12) % 3
    M.wasserstein(zs, zt, solver="auction")
    M.class_wasserstein(zs, zt, y, solver="auction")
    M.joint_wasserstein(zs, zt, y, solver="auction")
    M.wasserstein(zs, zt)  # the default is scipy
    assert calls == [(12, 12)] * 3


@pytest.mark.parametrize("n", [1, 2])
def test_tiny_batches(n):
    zs, zt = features(n, 3, seed=n)
    assert_same(both(M.wasserstein, zs, zt))
    assert_same(both(M.class_wasserstein, zs, zt, torch.zeros(n, dtype=torch.long)))
    assert_same(both(M.joint_wasserstein, zs, zt, torch.arange(n)))


def test_ties_dead_features_and_duplicates_give_the_same_value():
    """All-zero (dead) student features tie every plan; duplicated teacher rows tie pairs.
    The value is the same (plans may differ); gradients stay finite."""
    zs, zt = features(32, 8, seed=11)
    dead = torch.zeros_like(zs)
    dup = zt.clone()
    dup[1::2] = dup[::2]
    for a, b in ((dead, zt), (zs, dup), (dead, dup)):
        out = both(M.wasserstein, a, b)
        torch.testing.assert_close(out["auction"][0], out["scipy"][0], rtol=RTOL, atol=0.0)
        assert all(torch.isfinite(g).all() for g in out["auction"][1])
        y = torch.arange(32) % 4
        for fn in (M.class_wasserstein, M.joint_wasserstein):
            out = both(fn, a, b, y)
            torch.testing.assert_close(out["auction"][0], out["scipy"][0], rtol=RTOL, atol=0.0)


def test_integer_valued_costs_are_solved_exactly():
    """Features on a coarse integer grid: many equal costs (price wars in the auction); the
    optimum is an integer and both solvers reach it exactly."""
    g = torch.Generator().manual_seed(4)
    zs = torch.randint(0, 2, (64, 3), generator=g).double()
    zt = torch.randint(0, 2, (64, 3), generator=g).double()
    out = both(M.wasserstein, zs, zt)
    assert float(out["auction"][0]) * 64 == float(out["scipy"][0]) * 64


def test_gradcheck_float64_with_the_auction():
    zs, zt = features(10, 4, seed=2)
    y = torch.arange(10) % 3
    zs.requires_grad_(True)
    zt.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: M.wasserstein(a, b, solver="auction"), (zs, zt))
    assert torch.autograd.gradcheck(
        lambda a, b: M.class_wasserstein(a, b, y, solver="auction"), (zs, zt)
    )
    assert torch.autograd.gradcheck(
        lambda a, b: M.joint_wasserstein(a, b, y, solver="auction"), (zs, zt)
    )


def test_float32_and_autocast_inputs():
    zs, zt = features(64, 32, seed=8, dtype=torch.float32)
    for fn, args in ((M.wasserstein, ()), (M.class_wasserstein, (torch.arange(64) % 5,))):
        v1 = fn(zs, zt, *args, solver="scipy")
        v2 = fn(zs, zt, *args, solver="auction")
        assert v2.dtype == torch.float32
        torch.testing.assert_close(v2, v1, rtol=1e-6, atol=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = zs @ torch.eye(32), zt @ torch.eye(32)  # bf16 under autocast
        assert a.dtype == torch.bfloat16
        v1 = M.wasserstein(a, b)
        v2 = M.wasserstein(a, b, solver="auction")
    torch.testing.assert_close(v2, v1, rtol=1e-6, atol=0.0)


def test_bad_solver_and_unsupported_problems_are_refused():
    zs, zt = features(6, 2)
    with pytest.raises(ValueError, match="solver must be one of 'scipy', 'auction'; got 'lp'"):
        M.wasserstein(zs, zt, solver="lp")
    with pytest.raises(ValueError, match="solver='auction' solves assignment problems"):
        M.wasserstein(zs, zt[:4], solver="auction")
    with pytest.raises(ValueError, match="use solver='scipy'"):
        M.wasserstein(zs, zt, a=np.full(6, 1 / 6), solver="auction")
    with pytest.raises(ValueError, match="got 'svd'"):
        M.class_wasserstein(zs, zt, torch.zeros(6, dtype=torch.long), solver="svd")


def test_registry_validates_the_solver_per_metric():
    metric = M.get_metric("wasserstein", solver="auction")
    zs, zt = features(8, 3)
    torch.testing.assert_close(metric(zs, zt), M.wasserstein(zs, zt), rtol=RTOL, atol=0.0)
    for name in ("class_wasserstein", "joint_wasserstein"):
        assert M.get_metric(name, solver="auction").options == {"solver": "auction"}
    with pytest.raises(ValueError, match="got 'svd'"):
        M.get_metric("joint_wasserstein", solver="svd")
    with pytest.raises(ValueError, match="unknown option"):
        M.get_metric("hinton", solver="auction")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_auction_equals_cpu_scipy():
    zs, zt = features(128, 512, seed=1)
    y = torch.arange(128) % 10
    for fn, args in (
        (M.wasserstein, ()),
        (M.class_wasserstein, (y,)),
        (M.joint_wasserstein, (y,)),
    ):
        ref = fn(zs, zt, *args)
        got = fn(zs.cuda(), zt.cuda(), *(a.cuda() for a in args), solver="auction")
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), ref, rtol=RTOL, atol=0.0)
