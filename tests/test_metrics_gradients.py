"""Gradients of kd2m.metrics: gradcheck in float64, and finite gradients in training conditions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

import kd2m.metrics as M

torch.set_num_threads(1)


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# Every metric (and its variants) as f(zs, zt, y). The defaults that depend on the data are
# differentiated too (Ledoit-Wolf intensity, joint beta), so they are gradchecked as defaults;
# the median bandwidth of mmd is held constant (a kernel scale), so mmd gets a fixed one.
GRADCHECKED = {
    "wasserstein": lambda s, t, y: M.wasserstein(s, t),
    "wasserstein_emd": lambda s, t, y: M.wasserstein(
        s, t[:-1], a=torch.full((len(s),), 1 / len(s))
    ),
    "class_wasserstein": lambda s, t, y: M.class_wasserstein(s, t, y),
    "joint_wasserstein": lambda s, t, y: M.joint_wasserstein(s, t, y, beta=0.7),
    "joint_wasserstein_default_beta": lambda s, t, y: M.joint_wasserstein(s, t, y),
    "joint_wasserstein_predictions": lambda s, t, y: M.joint_wasserstein(
        s, t, y, ps=torch.softmax(s[:, :3], 1), pt=torch.softmax(t[:, :3], 1)
    ),
    "gaussian_wasserstein": lambda s, t, y: M.gaussian_wasserstein(s, t),
    "gaussian_wasserstein_diag": lambda s, t, y: M.gaussian_wasserstein(s, t, diagonal=True),
    "gaussian_kl": lambda s, t, y: M.gaussian_kl(s, t, shrinkage=0.3),
    "gaussian_kl_ridge": lambda s, t, y: M.gaussian_kl(s, t, shrinkage=None, eps=0.1),
    "gaussian_kl_diag": lambda s, t, y: M.gaussian_kl(s, t, diagonal=True, shrinkage=0.2),
    "gaussian_kl_ledoit_wolf": lambda s, t, y: M.gaussian_kl(s, t),
    "gaussian_kl_ledoit_wolf_diag": lambda s, t, y: M.gaussian_kl(s, t, diagonal=True),
    "gaussian_wasserstein_ns": lambda s, t, y: M.gaussian_wasserstein(s, t, solver="newton-schulz"),
    "class_gaussian": lambda s, t, y: M.class_gaussian(s, t, y),
    "class_gaussian_ns": lambda s, t, y: M.class_gaussian(s, t, y, solver="newton-schulz"),
    "class_gaussian_diag": lambda s, t, y: M.class_gaussian(s, t, y, diagonal=True),
    "class_gaussian_kl": lambda s, t, y: M.class_gaussian(s, t, y, divergence="kl", shrinkage=0.3),
    "class_gaussian_kl_diag": lambda s, t, y: M.class_gaussian(
        s, t, y, divergence="kl", diagonal=True, shrinkage=0.3
    ),
    "class_gaussian_kl_ledoit_wolf": lambda s, t, y: M.class_gaussian(s, t, y, divergence="kl"),
    "class_gaussian_kl_ledoit_wolf_diag": lambda s, t, y: M.class_gaussian(
        s, t, y, divergence="kl", diagonal=True
    ),
    "mmd": lambda s, t, y: M.mmd(s, t, bandwidth=1.3),
    "mmd_poly": lambda s, t, y: M.mmd(s, t, kernel="polynomial"),
    "hinton": lambda s, t, y: M.hinton(s, t, temperature=2.0),
}

# (n, d, labels): n < d, n > d (with classes larger than d: the QR path), classes of 1, 2, 3
# samples (the small-class fallbacks of the KL)
SHAPES = [
    (5, 8, [0, 1, 0, 1, 2]),
    (11, 3, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2]),
    (6, 7, [0, 1, 1, 2, 2, 2]),
]


@pytest.mark.parametrize("name", sorted(GRADCHECKED))
@pytest.mark.parametrize("n,d,labels", SHAPES)
def test_gradcheck(name, n, d, labels):
    zs = rand(n, d, seed=1).requires_grad_()
    zt = (1.5 * rand(n, d, seed=2) + 0.3).requires_grad_()
    y = torch.tensor(labels)
    fn = GRADCHECKED[name]
    assert gradcheck(lambda s, t: fn(s, t, y), (zs, zt), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradcheck_joint_ce_reaches_probabilities():
    n, k = 6, 3
    zs, zt = rand(n, 4, seed=3).requires_grad_(), rand(n, 4, seed=4).requires_grad_()
    ps = torch.softmax(rand(n, k, seed=5), 1).requires_grad_()
    pt = torch.softmax(rand(n, k, seed=6), 1)
    y = torch.tensor([0, 1, 2, 0, 1, 2])

    def f(s, t, p):
        return M.joint_wasserstein(s, t, y, beta=0.5, label_cost="ce", ps=p, pt=pt)

    assert gradcheck(f, (zs, zt, ps), eps=1e-6, atol=1e-5, rtol=1e-4)
    f(zs, zt, ps).backward()
    assert ps.grad.abs().sum() > 0


def test_wasserstein_gradient_is_the_envelope_formula():
    zs, zt = rand(7, 3, seed=7).requires_grad_(), rand(7, 3, seed=8)
    M.wasserstein(zs, zt).backward()
    C = torch.cdist(zs.detach(), zt) ** 2
    from scipy.optimize import linear_sum_assignment

    _, cols = linear_sum_assignment(C.numpy())
    expected = 2 * (zs.detach() - zt[cols]) / 7  # 2 (a_i z_i - sum_j gamma_ij zt_j)
    torch.testing.assert_close(zs.grad, expected)


def ref_kl_ledoit_wolf(zs, zt, eps=1e-6):
    """KL(N_S || N_T) between Ledoit-Wolf estimates, d x d, written from sklearn's formula with
    torch ops so that autograd differentiates the intensity too (independent of kd2m)."""
    fits = []
    for Z in (zs, zt):
        n, d = Z.shape
        X = Z - Z.mean(0)
        S = X.T @ X / n
        mu = torch.trace(S) / d
        d2 = ((S - mu * torch.eye(d, dtype=Z.dtype)) ** 2).sum()
        # b2 = (1/n^2) sum_i ||x_i x_i^T - S||_F^2
        sq = (X**2).sum(1)
        b2 = (sq**2 - 2 * ((X @ S) * X).sum(1) + (S**2).sum()).sum() / n**2
        alpha = torch.minimum(b2, d2) / d2
        fits.append((Z.mean(0), (1 - alpha) * S + (alpha * mu + eps) * torch.eye(d, dtype=Z.dtype)))
    (ms, Ss), (mt, St) = fits
    Ti = torch.linalg.inv(St)
    dm = mt - ms
    logdet = torch.linalg.slogdet(St)[1] - torch.linalg.slogdet(Ss)[1]
    return 0.5 * (torch.trace(Ti @ Ss) + dm @ Ti @ dm - len(ms) + logdet)


def _grads(fn, zs, zt):
    s, t = zs.clone().requires_grad_(), zt.clone().requires_grad_()
    value = fn(s, t)
    value.backward()
    return value.detach(), s.grad, t.grad


@pytest.mark.parametrize("n,d", [(10, 20), (30, 6)])
def test_gaussian_kl_gradient_is_the_gradient_of_the_value(n, d):
    """G2 trains on what it logs (issue 13 item 6): value and gradient equal those of the d x d
    reference whose Ledoit-Wolf intensity is differentiated (float64, rtol 1e-7)."""
    zs, zt = rand(n, d, seed=9).relu(), 1.3 * rand(n, d, seed=10).relu() + 0.1
    got = _grads(M.gaussian_kl, zs, zt)
    ref = _grads(ref_kl_ledoit_wolf, zs, zt)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_gaussian_kl_training_gradient_cosine_at_training_size():
    """n = 128, d = 512, float32 inputs as in training: the training gradient's cosine with the
    gradient of the logged value is 1 (to 1e-6); it was 0.87-0.99 with alpha held constant."""
    zs = rand(128, 512, seed=11).relu()
    zt = zs + 0.05 * rand(128, 512, seed=12)  # a student close to its teacher: the worst case
    s = zs.float().requires_grad_()
    M.gaussian_kl(s, zt.float()).backward()
    _, g_ref, _ = _grads(ref_kl_ledoit_wolf, zs, zt)
    cos = torch.nn.functional.cosine_similarity(s.grad.double().flatten(), g_ref.flatten(), dim=0)
    assert float(cos) > 1 - 1e-6


def test_mmd_median_bandwidth_is_held_constant():
    """The one data-dependent hyper-parameter still held constant: a kernel scale."""
    zs, zt = rand(10, 4, seed=13), rand(10, 4, seed=14)
    from kd2m.metrics.baselines import _median_bandwidth, _sq_dists

    sigma = float(_median_bandwidth(_sq_dists(zs, zs), _sq_dists(zt, zt), _sq_dists(zs, zt)))
    g_auto = _grads(lambda s, t: M.mmd(s, t), zs, zt)[1]
    g_fix = _grads(lambda s, t: M.mmd(s, t, bandwidth=sigma), zs, zt)[1]
    torch.testing.assert_close(g_auto, g_fix)


# --------------------------------------------------------------------------- training conditions


def _registered(name):
    metric = M.get_metric(name)
    if metric.needs_student_probs:  # E3: predictions from the first 10 features as logits
        return lambda s, t, y: metric(
            s, t, y, ps=torch.softmax(s[:, :10], 1), pt=torch.softmax(t[:, :10], 1)
        )
    return lambda s, t, y: metric(s, t, y)


TRAINING = {name: _registered(name) for name in M.METRICS}
TRAINING.update(
    {
        "gaussian_wasserstein_diag": lambda s, t, y: M.gaussian_wasserstein(s, t, diagonal=True),
        "gaussian_kl_diag": lambda s, t, y: M.gaussian_kl(s, t, diagonal=True),
        "class_gaussian_kl": lambda s, t, y: M.class_gaussian(s, t, y, divergence="kl"),
        "class_gaussian_kl_diag": lambda s, t, y: M.class_gaussian(
            s, t, y, divergence="kl", diagonal=True
        ),
        "class_gaussian_diag": lambda s, t, y: M.class_gaussian(s, t, y, diagonal=True),
        "gaussian_wasserstein_ns": lambda s, t, y: M.gaussian_wasserstein(
            s, t, solver="newton-schulz"
        ),
        "class_gaussian_ns": lambda s, t, y: M.class_gaussian(s, t, y, solver="newton-schulz"),
        "mmd_poly": lambda s, t, y: M.mmd(s, t, kernel="polynomial"),
        "joint_wasserstein_ce": lambda s, t, y: M.joint_wasserstein(
            s, t, y, label_cost="ce", ps=torch.softmax(s[:, :10], 1)
        ),
        "joint_wasserstein_onehot": lambda s, t, y: M.joint_wasserstein(
            s, t, y, label_cost="onehot"
        ),
    }
)


def training_batch(case, n=128, d=192, seed=0):
    """A batch like the trainer's (n < d, the regime of the paper's n = 128, d = 512)."""
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(n, d, generator=g).relu()  # pooled post-ReLU features
    zt = 1.3 * torch.randn(n, d, generator=g).relu()
    y = torch.randint(0, 10, (n,), generator=g)
    if case == "dead_student":
        zs[:, : d // 4] = 0
    elif case == "dead_both":
        zs[:, : d // 4] = 0
        zt[:, d // 8 : d // 2] = 0
    elif case == "duplicates":
        zs[n // 2 :], zt[n // 2 :] = zs[: n // 2], zt[: n // 2]
    elif case == "single_sample_class":
        y[y == 3] = 4
        y[0] = 3
    elif case == "all_zero_student":
        zs.zero_()
    return zs, zt, y


# "dead_both" zeroes the student's dead columns of "dead_student" and teacher columns too
CASES = ["generic", "dead_both", "duplicates", "single_sample_class"]


@pytest.mark.parametrize("case", CASES + ["all_zero_student"])
@pytest.mark.parametrize("name", sorted(TRAINING))
def test_finite_gradients_in_training_conditions(name, case):
    zs, zt, y = training_batch(case)
    fn = TRAINING[name]
    if name == "hinton":
        zs, zt = zs[:, :10] - 0.5, zt[:, :10]
    zs.requires_grad_()
    zt.requires_grad_()
    value = fn(zs, zt, y)
    value.backward()
    assert value.dtype == torch.float32 and value.ndim == 0
    assert torch.isfinite(value)
    assert torch.isfinite(zs.grad).all() and torch.isfinite(zt.grad).all()


@pytest.mark.parametrize("name", sorted(TRAINING))
def test_autocast_bfloat16_features(name):
    """Features made (and the metric called) under CPU autocast: float32 result, finite grads."""
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(32, 64)
    x, y = torch.randn(48, 32, generator=g), torch.randint(0, 5, (48,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zs = lin(x).relu()
        zt = (lin(x + 0.3) * 1.2).relu().detach()
        assert zs.dtype == torch.bfloat16
        value = TRAINING[name](zs, zt, y)
    assert value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(lin.weight.grad).all()
    # the metric ran in float32 on the upcast features, not in bfloat16
    expected = TRAINING[name](zs.detach().float(), zt.float(), y)
    # their ps / pt = softmax ran in bfloat16
    rtol = 1e-3 if name in ("joint_wasserstein_ce", "joint_wasserstein") else 1e-5
    torch.testing.assert_close(value.detach(), expected, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize(
    "dtype,expected", [(torch.float16, torch.float32), (torch.float64, torch.float64)]
)
def test_working_dtype(dtype, expected):
    zs, zt, y = training_batch("generic", n=16, d=12)
    for fn in TRAINING.values():
        assert fn(zs.to(dtype), zt.to(dtype), y).dtype == expected


def test_nuclear_norm_gradient_is_finite_with_repeated_singular_values():
    z = torch.eye(6, 10, dtype=torch.float64)
    z = torch.cat([z, -z]).requires_grad_()  # highly degenerate spectrum
    M.gaussian_wasserstein(z, z.detach() * 2).backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(TRAINING))
def test_cuda_matches_cpu(name):
    zs, zt, y = training_batch("dead_student", n=64, d=96)
    if name == "hinton":
        zs, zt = zs[:, :10], zt[:, :10]
    cpu = TRAINING[name](zs, zt, y)
    s = zs.cuda().requires_grad_()
    gpu = TRAINING[name](s, zt.cuda(), y.cuda())
    gpu.backward()
    assert gpu.device.type == "cuda" and torch.isfinite(s.grad).all()
    np.testing.assert_allclose(float(gpu), float(cpu), rtol=2e-4, atol=1e-5)
