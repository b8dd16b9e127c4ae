r"""Gaussian models of the feature distributions: eq. (6) and (7) of EQUATIONS.md.

Each side is fitted by maximum likelihood, ``m = mean(Z)`` and the biased
(1/n) covariance ``Sigma = A^T A`` with ``A = (Z - m) / sqrt(n)`` (n x d).
Every formula below is written in terms of the small factor ``A``, never of
a d x d matrix, when ``n < d`` (the training regime: n = 128, d = 512):

* Bures-Wasserstein (6): ``tr (Sigma_T^1/2 Sigma_S Sigma_T^1/2)^1/2`` is the
  nuclear norm of ``A_S A_T^T`` (n x n), as EQUATIONS.md states. When n > d
  the factors are first compressed to d x d by a thin QR
  (``||A B^T||_* = ||R_A R_B^T||_*``; ``A_S^T A_T`` would not do: its
  singular values differ in general). The
  nuclear norm has its own backward (``U V^T``), free of the
  ``1 / (s_i^2 - s_j^2)`` terms of the SVD's backward. ``solver="newton-schulz"``
  computes it with matrix products only (a scaled Newton-Schulz polar
  iteration, no factorisation and no host synchronisation on CUDA); see
  :func:`_polar_newton_schulz` for its tolerance.
* Kullback-Leibler (7) on shrunk covariances ``c A^T A + s I``: Woodbury's
  identity and the matrix determinant lemma reduce inverse and
  log-determinant to an n x n Cholesky factorisation. The Ledoit-Wolf
  shrinkage intensity is a differentiable function of the batch, so the
  gradient is the gradient of the value returned (and logged).

The class-conditional variants fit one Gaussian per class present in the
batch, all at once: the per-class factors are stacked into a zero-padded
``(C, r, d)`` tensor (zero rows change none of the formulas above).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ._checks import (
    check_choice,
    check_features,
    check_labels,
    check_nonnegative,
    check_options,
    public_metric,
)

__all__ = ["gaussian_wasserstein", "gaussian_kl", "class_gaussian"]

KL_OPTIONS = ("shrinkage", "eps")
SOLVERS = ("svd", "newton-schulz")


# --------------------------------------------------------------------------- building blocks


class _NuclearNormOfProduct(torch.autograd.Function):
    """``||A B^T||_*`` (sum of singular values) for stacks A (C, r_s, d), B (C, r_t, d).

    Forward: factors with more rows than d are first compressed by a thin QR,
    ``A = Q_A R_A`` (forward only), so the SVD is of ``R_A R_B^T``, at most
    ``min(r_s, d) x min(r_t, d)``; when r <= d, ``R = A`` and this is the n x n
    matrix ``A B^T``. (Orthonormal ``Q``'s leave singular values unchanged.
    ``A^T B`` would NOT do: its singular values differ in general.)

    Backward: with ``A B^T = U S V^T``, ``d||.||_*/dA = U V^T B`` and
    ``d/dB = V U^T A``, i.e. ``Q_A U' V'^T R_B`` and ``Q_B V' U'^T R_A``. At
    vanishing singular values (centring always makes one vanish) the norm is
    not differentiable; ``U_+ V_+^T`` restricted to singular values above
    ``max(s) * max(shape) * eps(dtype)`` is a valid subgradient. No
    ``1 / (s_i^2 - s_j^2)`` terms (as in the SVD's own backward): repeated or
    zero singular values give finite gradients.
    """

    @staticmethod
    def forward(ctx, A, B):
        d = A.shape[-1]
        Qa, Ra = torch.linalg.qr(A) if A.shape[-2] > d else (None, A)
        Qb, Rb = torch.linalg.qr(B) if B.shape[-2] > d else (None, B)
        M = Ra @ Rb.mT
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        tol = S.amax(dim=-1, keepdim=True) * max(M.shape[-2:]) * torch.finfo(M.dtype).eps
        G = (U * (S > tol).to(M.dtype).unsqueeze(-2)) @ Vh  # U_+ V_+^T
        ctx.save_for_backward(G, Qa, Ra, Qb, Rb)
        return S.sum(dim=-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        G, Qa, Ra, Qb, Rb = ctx.saved_tensors
        G = grad[..., None, None] * G
        gA, gB = G @ Rb, G.mT @ Ra
        if Qa is not None:
            gA = Qa @ gA
        if Qb is not None:
            gB = Qb @ gB
        return gA, gB


#: ``solver="newton-schulz"``: singular values of ``M`` down to this fraction of ``c`` (see
#: :func:`_polar_newton_schulz`) are resolved to the working precision.
NS_RESOLVED = 1e-6
#: The accelerated steps are designed for singular values up to this bound (> 1), a margin
#: for rounding: a value slightly above 1 must not be mapped below 0 (which flips its sign).
NS_MARGIN = 1.01


@functools.cache
def _ns_schedule(
    delta: float, low: float = NS_RESOLVED, margin: float = NS_MARGIN
) -> tuple[float, ...]:
    """Scalings ``a_k`` of the polar steps ``x <- a x (3 - a^2 x^2) / 2``; data-independent.

    Each step is the Newton-Schulz map ``p(x) = (3 x - x^3) / 2`` applied to
    ``a x``, with ``a^2 = 3 / (l^2 + l u + u^2)`` for the interval ``[l, u]``
    (``u = margin``) where the singular values are known to lie: then
    ``p(a l) = p(a u)``, so ``[l, u]`` is mapped into ``[p(a l), 1]`` (times
    ``2 / (1 + p(a l))`` it would be the minimax odd cubic approximation of 1 on
    ``[l, u]``: its error equioscillates at ``l``, ``1 / a``, ``u``; cf. the scaled
    Newton-Schulz of Chen & Chow 2014 and "Polar Express", Amsel et al. 2025).
    Small values grow by ``1.5 a`` per step
    (up to ``1.5 sqrt(3) / margin = 2.57``, against 1.5 for the plain
    iteration); once ``a`` would drop below 1 the plain step (``a = 1``,
    quadratically convergent, safe up to ``sqrt(3)``) is used. Starts from
    ``l = low`` and stops when ``1 - l <= delta``: 20 steps for float64, 19 for float32.
    Every map sends ``[0, margin]`` into ``[0, 1]``, so the iterates' singular
    values stay in ``[0, 1]``.
    """
    scales: list[float] = []
    lo = low
    while 1 - lo > delta and len(scales) < 100:
        a = max(1.0, math.sqrt(3 / (lo * lo + lo * margin + margin * margin)))
        scales.append(a)
        lo = min(a * lo * (3 - a * a * lo * lo), a * (3 - a * a)) / 2  # min over [lo, 1]
    return tuple(scales)


def _polar_newton_schulz(M: torch.Tensor, schedule: tuple[float, ...] | None = None):
    r"""Approximate polar factor ``X ~ U V^T`` of a stack ``M = U S V^T`` (C, p, q); matmuls only.

    ``M`` is scaled by ``c = (sum_i s_i^4)^(1/4) = ||M^T M||_F^(1/2)``, which
    bounds ``max_i s_i`` (and is at most ``||M||_F``), after a division by its
    largest entry against overflow; then the odd-polynomial steps of
    :func:`_ns_schedule`, ``X <- a X (3 I - a^2 X^T X) / 2``, run on the
    smaller Gram side. Every step keeps ``U`` and ``V`` and maps each
    ``x_i = s_i / c`` by the same polynomial, so ``X = U diag(p(x_i)) V^T`` with
    ``0 <= p(x) <= 1``, ``p(0) = 0``, and ``1 - p(x) <= eps(dtype)`` for
    ``x >= NS_RESOLVED`` (in exact arithmetic). Hence for ``N = <X, M>``:

        0 <= ||M||_* - N <= eps * ||M||_* + sum of the s_i below NS_RESOLVED * c.

    No linear-algebra routine, no branch on values, no host synchronisation: a
    fixed number of ``bmm``/``baddbmm`` per call (2 per step). An all-zero
    ``M`` (zero-padded classes, one-sample classes) gives ``X = 0`` exactly.
    With TF32 matmuls enabled on CUDA (``torch.backends.cuda.matmul.allow_tf32``)
    the products round to a 10-bit mantissa and the bound no longer holds.
    """
    if schedule is None:
        schedule = _ns_schedule(torch.finfo(M.dtype).eps)
    tall = M.shape[-2] >= M.shape[-1]
    X = M if tall else M.mT
    tiny = torch.finfo(M.dtype).tiny
    X = X / X.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(tiny)
    Y = X.mT @ X
    c2 = Y.square().sum(dim=(-2, -1), keepdim=True).sqrt().clamp_min(tiny)  # c^2 = ||Y||_F
    X, Y = X / c2.sqrt(), Y / c2
    for k, a in enumerate(schedule):
        if k:
            Y = X.mT @ X
        X = torch.baddbmm(X, X, Y, beta=1.5 * a, alpha=-0.5 * a**3)
    return X if tall else X.mT


class _NuclearNormNewtonSchulz(torch.autograd.Function):
    """``||A B^T||_*`` for stacks A (C, r_s, d), B (C, r_t, d) by :func:`_polar_newton_schulz`.

    Forward: ``N = <X, M>`` with ``M = A B^T`` and ``X`` its approximate polar
    factor: a lower bound of the nuclear norm, within the tolerance stated
    there. (When r > d, M is r_s x r_t of rank <= d; no compression: the
    QR of the SVD route is a factorisation.)

    Backward: ``X B`` and ``X^T A``, the SVD route's ``U_+ V_+^T B`` with the
    polar factor replaced by its approximation: singular directions above
    ``NS_RESOLVED * c`` get weight 1 (to ``eps``), exact zeros weight 0, and the
    rest a weight in ``[0, 1]`` (a subgradient at vanishing singular values).
    Finite whatever the spectrum (repeated or zero singular values, all-zero M).
    """

    @staticmethod
    def forward(ctx, A, B):
        M = A @ B.mT
        X = _polar_newton_schulz(M)
        ctx.save_for_backward(X, A, B)
        return (X * M).sum(dim=(-2, -1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        X, A, B = ctx.saved_tensors
        G = grad[..., None, None] * X
        return G @ B, G.mT @ A


class _Groups:
    """Class layout of a batch: classes present, per-sample class index and slot."""

    def __init__(self, y: torch.Tensor, device):
        yn = y.detach().cpu().numpy()
        classes, inv, counts = np.unique(yn, return_inverse=True, return_counts=True)
        starts = np.cumsum(counts) - counts
        order = np.argsort(inv, kind="stable")
        pos = np.empty_like(inv)
        pos[order] = np.arange(len(yn)) - np.repeat(starts, counts)
        self.n_classes = len(classes)
        self.rows = int(counts.max())
        self.cls = torch.as_tensor(inv, device=device)
        self.pos = torch.as_tensor(pos, device=device)
        self.counts = torch.as_tensor(counts, device=device)


def _fit(z: torch.Tensor, groups: _Groups | None = None):
    """ML Gaussian fit(s): means (C, d), factors A (C, r, d) with Sigma_c = A_c^T A_c, counts (C,).

    Without groups, C = 1 and r = n. With groups, rows of A beyond a class's
    count are zero (they add nothing to A^T A).
    """
    n, d = z.shape
    if groups is None:
        m = z.mean(dim=0, keepdim=True)
        A = ((z - m) / math.sqrt(n)).unsqueeze(0)
        return m, A, torch.full((1,), n, device=z.device, dtype=z.dtype)
    counts = groups.counts.to(z.dtype)
    m = z.new_zeros(groups.n_classes, d).index_add(0, groups.cls, z) / counts[:, None]
    a = (z - m[groups.cls]) / counts[groups.cls].sqrt()[:, None]
    A = z.new_zeros(groups.n_classes, groups.rows, d).index_put((groups.cls, groups.pos), a)
    return m, A, counts


def _bures(ms, As, mt, At, solver: str = "svd") -> torch.Tensor:
    """Squared Bures-Wasserstein distance, eq. (6), from means and factors; shape (C,).

    ``solver`` picks the cross term's route: ``"svd"`` (:class:`_NuclearNormOfProduct`)
    or ``"newton-schulz"`` (:class:`_NuclearNormNewtonSchulz`).
    """
    mean_term = ((ms - mt) ** 2).sum(dim=-1)
    trace_term = (As**2).sum(dim=(-2, -1)) + (At**2).sum(dim=(-2, -1))
    nuclear = _NuclearNormOfProduct if solver == "svd" else _NuclearNormNewtonSchulz
    return mean_term + trace_term - 2 * nuclear.apply(As, At)


def _check_solver(solver, diagonal: bool, divergence: str = "wasserstein") -> str:
    """Validate ``solver`` (see :data:`SOLVERS`); a non-default one needs full-covariance W."""
    check_choice(solver, "solver", SOLVERS)
    if solver != "svd" and (diagonal or divergence != "wasserstein"):
        if diagonal:
            where, why, fix = "diagonal=True", "the diagonal formulas are elementwise", "diagonal"
        else:
            where, why = f"divergence={divergence!r}", "the KL uses a Cholesky factorisation"
            fix = "divergence='wasserstein'"
        raise ValueError(
            f"solver={solver!r} only applies to the matrix square root term of eq. (6) with "
            f"full covariances; {where} has none ({why}): drop solver, or use "
            + ("diagonal=False" if diagonal else fix)
        )
    return solver


def _bures_diagonal(ms, As, mt, At) -> torch.Tensor:
    """Diagonal eq. (6): ||m_S - m_T||^2 + ||sigma_S - sigma_T||^2; shape (C,).

    ``sigma_k`` is the Euclidean norm of the scaled, centred column k, i.e.
    ``sqrt(Sigma_kk)`` exactly; PyTorch's norm backward takes the subgradient 0
    at an all-zero (dead) column, so no epsilon is added and the value is exact.
    """
    sigma_s = torch.linalg.vector_norm(As, dim=-2)
    sigma_t = torch.linalg.vector_norm(At, dim=-2)
    return ((ms - mt) ** 2).sum(dim=-1) + ((sigma_s - sigma_t) ** 2).sum(dim=-1)


# --------------------------------------------------------------------------- shrinkage


def _ledoit_wolf(A: torch.Tensor, counts: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Ledoit-Wolf (2004) shrinkage intensity toward ``(tr Sigma / d) I``, per class; (C,).

    Same estimator as ``sklearn.covariance.ledoit_wolf_shrinkage``, written with
    the scaled factor A (rows a_i = x_i / sqrt(n)) so that nothing is d x d:
    ``b2 = sum_i ||a_i||^4 - ||Sigma||_F^2 / n``, ``d2 = ||Sigma||_F^2 - tr(Sigma)^2 / d``,
    ``alpha = min(b2, d2) / d2`` (0 when d2 = 0). ``gram`` is A A^T or A^T A
    (same Frobenius norm as Sigma).

    Differentiable (autograd through b2 and d2; at the kinks ``b2 = d2`` and
    ``d2 = 0`` autograd takes one side's derivative, a valid one-sided one).
    Degenerate for n = 2: the centred samples are +-u, every ``x_i x_i^T``
    equals Sigma and ``b2`` is exactly 0 (see :func:`_alpha`).
    """
    d = A.shape[-1]
    fro2 = (gram**2).sum(dim=(-2, -1))
    row_sq = (A * A).sum(dim=-1)  # ||a_i||^2
    tr = row_sq.sum(dim=-1)
    b2 = (row_sq**2).sum(dim=-1) - fro2 / counts
    d2 = fro2 - tr**2 / d
    alpha = torch.where(d2 > 0, torch.minimum(b2, d2) / d2.clamp_min(torch.finfo(d2.dtype).tiny), 0)
    return alpha.clamp(0, 1)


def _ledoit_wolf_diagonal(A2: torch.Tensor, v: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Ledoit-Wolf intensity restricted to the diagonal: variances shrunk toward their mean; (C,).

    ``b2 = sum_ik a_ik^4 - sum_k v_k^2 / n`` (the estimated variance of the
    sample variances), ``d2 = sum_k (v_k - mean(v))^2``, ``alpha = min(b2, d2) / d2``.
    Takes ``A2 = A * A`` and ``v = A2.sum(-2)`` (the variances), already computed by the
    caller. Differentiable like :func:`_ledoit_wolf`; also exactly 0 for n = 2.
    """
    b2 = (A2 * A2).sum(dim=(-2, -1)) - (v**2).sum(dim=-1) / counts
    d2 = ((v - v.mean(dim=-1, keepdim=True)) ** 2).sum(dim=-1)
    alpha = torch.where(d2 > 0, torch.minimum(b2, d2) / d2.clamp_min(torch.finfo(d2.dtype).tiny), 0)
    return alpha.clamp(0, 1)


def _check_shrinkage(shrinkage):
    if shrinkage is None or shrinkage == "ledoit-wolf":
        return shrinkage
    if isinstance(shrinkage, str) or isinstance(shrinkage, bool):
        raise ValueError(
            f"shrinkage must be 'ledoit-wolf', a float in [0, 1] or None; got {shrinkage!r}"
        )
    value = check_nonnegative(shrinkage, "shrinkage")
    if value > 1:
        raise ValueError(f"shrinkage must be a float in [0, 1]; got {shrinkage!r}")
    return value


#: Classes with fewer samples than this take alpha = 1 under Ledoit-Wolf shrinkage.
MIN_LEDOIT_WOLF_SAMPLES = 3


def _alpha(shrinkage, lw, counts, fallback_scale):
    """Shrinkage intensity per class; (C,).

    * ``"ledoit-wolf"``: the (differentiable) Ledoit-Wolf intensity where a
      class has n >= 3 samples, and alpha = 1 where n < 3. With n = 2 the
      centred samples are +-u, every ``x_i x_i^T`` equals the sample covariance,
      and Ledoit-Wolf's estimate of the covariance estimator's variance is
      exactly 0 whatever the data: alpha = 0 would keep a rank-1 covariance
      (KL ~ 1e6-1e8 with ``eps = 1e-6``). Two samples estimate one covariance
      parameter reliably, the average variance ``tr(Sigma) / d`` (from the d
      coordinates of their difference), so such a class is modelled by the
      isotropic Gaussian of its own average variance: the shrinkage target.
    * a float or None (0): that intensity for every class (what was asked for).
    * Whatever the mode, a one-sample class (zero covariance) takes alpha = 1
      when a ``fallback_scale`` is given (class-conditional KL; see :func:`_scale`).
    """
    if shrinkage == "ledoit-wolf":
        small = counts < MIN_LEDOIT_WOLF_SAMPLES
        alpha = lw()
        alpha = torch.where(small, torch.ones_like(alpha), alpha)
    else:
        alpha = torch.full_like(counts, 0.0 if shrinkage is None else shrinkage)
    if fallback_scale is not None:
        alpha = torch.where(counts < 2, torch.ones_like(alpha), alpha)
    return alpha


def _scale(trace_per_dim, counts, fallback_scale):
    if fallback_scale is None:
        return trace_per_dim
    return torch.where(counts < 2, fallback_scale, trace_per_dim)


# --------------------------------------------------------------------------- KL


def _kl_diagonal(ms, As, cs, mt, At, ct, shrinkage, eps, fallback):
    """Diagonal eq. (7) on shrunk variances ``(1-alpha) v + alpha mean(v) + eps``; (C,)."""

    def shrunk(A, counts, fb):
        A2 = A * A
        v = A2.sum(dim=-2)
        alpha = _alpha(shrinkage, lambda: _ledoit_wolf_diagonal(A2, v, counts), counts, fb)
        mu = _scale(v.mean(dim=-1), counts, fb)
        return (1 - alpha)[:, None] * v + (alpha * mu)[:, None] + eps

    fs, ft = fallback if fallback is not None else (None, None)
    vs, vt = shrunk(As, cs, fs), shrunk(At, ct, ft)
    ratio = vs / vt
    return 0.5 * (ratio + (mt - ms) ** 2 / vt - 1 - torch.log(ratio)).sum(dim=-1)


def _shrunk_factor(A, counts, shrinkage, eps, fb, small):
    """Shrunk covariance as ``c A^T A + s I``: (c, s, gram) with c, s of shape (C,).

    ``gram`` is ``A A^T`` (r x r) when ``small`` else ``A^T A`` (d x d).
    """
    d = A.shape[-1]
    gram = A @ A.mT if small else A.mT @ A
    alpha = _alpha(shrinkage, lambda: _ledoit_wolf(A, counts, gram), counts, fb)
    mu = _scale((A**2).sum(dim=(-2, -1)) / d, counts, fb)
    return 1 - alpha, alpha * mu + eps, gram


def _kl_full(ms, As, cs, mt, At, ct, shrinkage, eps, fallback, check: bool = True):
    """Full eq. (7), KL(N_S || N_T), on shrunk covariances; float64 inside; (C,).

    ``check``: raise on a failed Cholesky factorisation also on CUDA (see :func:`_cholesky`).
    """
    check = check or As.device.type == "cpu"
    ms, As, mt, At = (t.double() for t in (ms, As, mt, At))
    fs, ft = (f.double() for f in fallback) if fallback is not None else (None, None)
    d = As.shape[-1]
    small = max(As.shape[-2], At.shape[-2]) < d
    c_s, s_s, G_s = _shrunk_factor(As, cs.double(), shrinkage, eps, fs, small)
    c_t, s_t, G_t = _shrunk_factor(At, ct.double(), shrinkage, eps, ft, small)
    delta = mt - ms
    if small:  # n x n form (Woodbury identity, matrix determinant lemma)
        eye_s = torch.eye(As.shape[-2], dtype=As.dtype, device=As.device)
        eye_t = torch.eye(At.shape[-2], dtype=At.dtype, device=At.device)
        L_s = _cholesky(s_s[:, None, None] * eye_s + c_s[:, None, None] * G_s, check)
        L_t = _cholesky(s_t[:, None, None] * eye_t + c_t[:, None, None] * G_t, check)
        # Sigma_T^-1 = (I - c_t B^T K_t^-1 B) / s_t with K_t = s_t I + c_t B B^T
        P = At @ As.mT  # B A^T
        KiP = torch.cholesky_solve(P, L_t)
        KiG = torch.cholesky_solve(G_t, L_t)
        tr_K_PPt = (KiP * P).sum(dim=(-2, -1))
        tr_K_G = KiG.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
        tr_sigma_s = c_s * (As**2).sum(dim=(-2, -1)) + s_s * d
        trace = (tr_sigma_s - c_t * (c_s * tr_K_PPt + s_s * tr_K_G)) / s_t
        u = At @ delta.unsqueeze(-1)  # B delta, (C, r, 1)
        maha = (delta**2).sum(dim=-1) - c_t * (u * torch.cholesky_solve(u, L_t)).sum(dim=(-2, -1))
        maha = maha / s_t
        logdet_s = (d - As.shape[-2]) * torch.log(s_s) + _logdet_chol(L_s)
        logdet_t = (d - At.shape[-2]) * torch.log(s_t) + _logdet_chol(L_t)
    else:  # d x d form
        eye = torch.eye(d, dtype=As.dtype, device=As.device)
        sig_s = c_s[:, None, None] * G_s + s_s[:, None, None] * eye
        sig_t = c_t[:, None, None] * G_t + s_t[:, None, None] * eye
        L_s, L_t = _cholesky(sig_s, check), _cholesky(sig_t, check)
        trace = torch.cholesky_solve(sig_s, L_t).diagonal(dim1=-2, dim2=-1).sum(dim=-1)
        w = torch.linalg.solve_triangular(L_t, delta.unsqueeze(-1), upper=False)
        maha = (w**2).sum(dim=(-2, -1))
        logdet_s, logdet_t = _logdet_chol(L_s), _logdet_chol(L_t)
    return 0.5 * (trace + maha - d + logdet_t - logdet_s)


def _cholesky(K: torch.Tensor, check: bool) -> torch.Tensor:
    """Cholesky factors of a stack of shrunk covariances (or their n x n Woodbury forms).

    They are positive definite by construction when the ridge ``s = alpha tr(Sigma)/d + eps``
    is positive; ``torch.linalg.cholesky`` would still check ``info`` on the host (a
    synchronisation on CUDA), ``cholesky_ex`` does not. With ``check`` a failure (``s = 0``
    with a singular covariance, or overflowed inputs) raises ``torch.linalg.LinAlgError`` as
    before; :func:`_kl_full` checks on the CPU, where it is free, and on CUDA with the
    metric's ``validate`` (which synchronises anyway). Without ``check`` the failed factors
    are NaN, so the value is NaN (the trainer raises on a non-finite loss).
    """
    L, info = torch.linalg.cholesky_ex(K)
    if check:
        bad = int(info.max()) if info.numel() else 0
        if bad > 0:
            raise torch.linalg.LinAlgError(
                "linalg.cholesky: The factorization could not be completed because the input "
                f"is not positive-definite (the leading minor of order {bad} is not "
                "positive-definite)."
            )
        return L
    return torch.where((info == 0)[..., None, None], L, torch.nan)


def _logdet_chol(L):
    return 2 * torch.log(L.diagonal(dim1=-2, dim2=-1)).sum(dim=-1)


# --------------------------------------------------------------------------- public API


@public_metric
def gaussian_wasserstein(
    zs, zt, *, diagonal: bool = False, solver: str = "svd", validate: bool = True
) -> torch.Tensor:
    r"""Squared 2-Wasserstein (Bures-Wasserstein) distance between Gaussian fits, eq. (6).

    .. math::
        W_2^2 = \|m_S - m_T\|^2 + \operatorname{tr}\big(\Sigma_S + \Sigma_T
                - 2 (\Sigma_T^{1/2} \Sigma_S \Sigma_T^{1/2})^{1/2}\big)

    with ML estimates (mean, biased 1/n covariance) of ``zs`` (student) and
    ``zt`` (teacher). The value is the **squared** distance (POT's
    ``bures_wasserstein_distance`` returns its square root). Symmetric.

    Full covariance: the cross term is the nuclear norm of ``A_S A_T^T``
    (n_S x n_T, with ``A = (Z - m) / sqrt(n)``); when n > d, of ``R_S R_T^T``
    (d x d) with ``A = Q R`` a thin QR. No d x d matrix at all when n < d.
    Singular covariances (n <= d, dead features, duplicated samples, a single
    sample) need no regularisation: W_2 is defined for any PSD covariance, and
    the nuclear norm's backward is the subgradient ``U V^T`` restricted to the
    nonzero singular values (no SVD backward, no QR backward), so gradients
    stay finite.

    ``diagonal=True``: ``||m_S - m_T||^2 + ||sigma_S - sigma_T||^2`` with
    ``sigma = sqrt(diag Sigma)``. At a zero variance (dead feature) the square
    root's gradient is replaced by the subgradient 0 (see ``_bures_diagonal``);
    the value is exact.

    ``solver`` (full covariance only; ``diagonal=True`` with a non-default
    solver raises ValueError): ``"svd"`` (default) takes the nuclear norm from
    an SVD (and a thin QR when n > d). ``"newton-schulz"`` uses matrix
    products only (no factorisation, no host synchronisation on CUDA: meant for
    GPUs, where the small SVDs are latency-bound; on the CPU it is no faster): the
    cross term ``N`` is a lower bound of ``||A_S A_T^T||_*`` with

        0 <= ||A_S A_T^T||_* - N <= eps * ||A_S A_T^T||_* + sum_{s_i < 1e-6 c} s_i

    (in exact arithmetic; ``eps`` of the working dtype, ``s_i`` the singular
    values of ``A_S A_T^T``, ``c = (sum_i s_i^4)^(1/4)``, between ``max s_i`` and
    ``||A_S A_T^T||_F``), so the value exceeds the SVD's by at most twice that
    bound. Its gradient is the SVD route's with ``U_+ V_+^T`` replaced by the
    same approximation of the polar factor (exact to ``eps`` on the directions
    of singular values above ``1e-6 c``). See ``_polar_newton_schulz``. Measured
    on random, ReLU, low-rank, power-law, dead-feature and duplicated batches
    (n = 128, d = 512; n = 512 > d = 128) and CIFAR-10 ResNet-8/20 features
    (d = 64): in float64 the value is the SVD route's to 5e-12 relative and the
    gradient to 1e-12; in float32 the value is within 4e-4 relative of the
    float64 one where the SVD route's float32 value is within 1.3e-3 (both worst
    on nearly equal fits, where W2 is 2e-4 of the cross term).

    Rounding can make the value slightly negative (~1e-7 relative in float32)
    when both fits coincide. Computed in float32 at least (float64 stays
    float64); differentiable w.r.t. both inputs. ``zs`` and ``zt`` may have
    different numbers of rows.
    """
    solver = _check_solver(solver, diagonal)
    zs, zt = check_features(zs, zt, same_n=False, validate=validate)
    (ms, As, _), (mt, At, _) = _fit(zs), _fit(zt)
    if diagonal:
        return _bures_diagonal(ms, As, mt, At)[0]
    return _bures(ms, As, mt, At, solver)[0]


@public_metric
def gaussian_kl(
    zs,
    zt,
    *,
    diagonal: bool = False,
    shrinkage="ledoit-wolf",
    eps: float = 1e-6,
    validate: bool = True,
) -> torch.Tensor:
    r"""Kullback-Leibler divergence KL(N_S || N_T) between Gaussian fits, eq. (7).

    .. math::
        KL = \tfrac12 \big[\operatorname{tr}(\tilde\Sigma_T^{-1}\tilde\Sigma_S)
             + (m_T - m_S)^\top \tilde\Sigma_T^{-1} (m_T - m_S) - d
             + \ln\det\tilde\Sigma_T - \ln\det\tilde\Sigma_S\big]

    Direction: **student to teacher**, ``KL(N(zs) || N(zt))``, as written in
    EQUATIONS.md (7); the teacher's covariance is the one inverted. Not
    symmetric, not squared; in nats.

    Singular covariances (open question in EQUATIONS.md). The ML covariance
    is rank-deficient when n <= d (and with dead features), which makes the
    KL infinite. Each side's covariance is therefore replaced by a
    shrinkage estimate toward a scaled identity,

        Sigma~ = (1 - alpha) Sigma + (alpha * tr(Sigma) / d + eps) I,

    ``shrinkage="ledoit-wolf"`` (default): ``alpha`` is the Ledoit-Wolf (2004)
    intensity of each side's batch (the estimate of
    ``sklearn.covariance.ledoit_wolf_shrinkage``), a well-conditioned,
    consistent estimator of the covariance whatever n/d, so the value tracks
    the distributions rather than a ridge. With fewer than 3 rows Ledoit-Wolf
    is degenerate (its intensity is exactly 0 at n = 2, which left a rank-1
    covariance and values of 1e6-1e8) and ``alpha = 1`` is used: the
    isotropic Gaussian ``N(m, tr(Sigma)/d I)`` (see ``_alpha``).
    ``shrinkage=<float in [0, 1]>`` fixes alpha; ``None`` means alpha = 0 (ML
    covariance plus the ridge ``eps I`` only, dominated by ``eps`` when
    n <= d). ``eps >= 0`` is an absolute floor that only matters for
    all-constant batches (tr Sigma = 0). Each side needs at least 2 rows
    (one sample has no covariance; ValueError otherwise).

    Objective and gradient: the value is the KL between the two Ledoit-Wolf
    estimates, and alpha is differentiated as the function of the batch that
    it is, so the gradient is the gradient of the value returned (and logged
    by the trainer); holding alpha constant, as before, gave a training
    gradient whose cosine with it was 0.87 to 0.9996 on synthetic batches of
    n = 128, d = 512 (about 0.6 on training features, issue 13). The
    alternative, a fixed alpha, would make the objective depend on a number
    with no natural value across n/d and training; pass
    ``shrinkage=<float>`` for it.

    ``diagonal=True``: the diagonal formula of (7) on variances shrunk the same
    way, ``(1 - alpha) v + alpha mean(v) + eps``, with the Ledoit-Wolf
    intensity restricted to the diagonal (so dead features give finite values).

    With n < d everything is computed on n x n matrices (Woodbury identity,
    matrix determinant lemma, Cholesky); in float64 internally (the closed
    form subtracts nearly equal terms when the shrinkage is small), returned
    in the inputs' working dtype (float32 at least). Differentiable w.r.t.
    both inputs, through alpha as well.
    """
    zs, zt = check_features(zs, zt, same_n=False, validate=validate)
    for name, z in (("zs", zs), ("zt", zt)):
        if z.shape[0] < 2:
            raise ValueError(
                f"gaussian_kl needs at least 2 rows on each side to fit a Gaussian; {name} has "
                f"{z.shape[0]} (a single sample has no covariance): use a larger batch, or "
                "gaussian_wasserstein, which is defined for a single sample"
            )
    shrinkage = _check_shrinkage(shrinkage)
    eps = check_nonnegative(eps, "eps")
    (ms, As, cs), (mt, At, ct) = _fit(zs), _fit(zt)
    if diagonal:
        return _kl_diagonal(ms, As, cs, mt, At, ct, shrinkage, eps, None)[0].to(zs.dtype)
    return _kl_full(ms, As, cs, mt, At, ct, shrinkage, eps, None, validate)[0].to(zs.dtype)


@public_metric
def class_gaussian(
    zs,
    zt,
    y,
    *,
    divergence: str = "wasserstein",
    diagonal: bool = False,
    solver: str = "svd",
    validate: bool = True,
    **options,
) -> torch.Tensor:
    r"""Class-conditional Gaussian discrepancy: (1/|C|) sum_{c in C} D(N_S^c, N_T^c).

    ``C`` is the set of classes present in the batch; ``N^c`` is the ML
    Gaussian fit to the rows with ``y == c`` (same rows on both sides, since
    row i is image i through each network). ``D`` is eq. (6) (squared
    Bures-Wasserstein, ``divergence="wasserstein"``, the default) or eq. (7)
    (``divergence="kl"``, KL(student || teacher), options ``shrinkage`` and
    ``eps`` as in :func:`gaussian_kl`). ``diagonal`` selects the diagonal
    formulas. This is our reading of the third Gaussian row (G3) of Table 1
    ("Class-conditional Gaussian" in EQUATIONS.md: eq. (6) or (7) per class).
    ``solver`` (``"svd"`` or ``"newton-schulz"``, eq. (6) with full covariances
    only) is as in :func:`gaussian_wasserstein`; its bound holds per class.

    **Mean, not sum, over classes.** The classes present are averaged, as
    eq. (4) averages the class-conditional Wasserstein; the author's code
    summed them. The value and its gradient are therefore 1/|C| times the
    author's: a lambda here acts like ``lambda / |C|`` in the author's code,
    and the author's lambda is reproduced by ``|C| * lambda`` (|C| = 10 on
    nearly every batch of 128 for CIFAR-10 and SVHN, about 72 on average for
    CIFAR-100). We average so that the value is the typical
    per-class divergence, on the scale of the unconditional row (G1/G2), and
    a lambda means the same whatever the number of classes in a batch.

    Classes too small to estimate a covariance. A class with a single sample
    has a zero covariance. With W that is exact (the term is the squared
    distance of the two points). With KL, where a zero covariance gives an
    infinite divergence and no shrinkage intensity can be estimated, such a
    class takes alpha = 1 with the whole batch's ``tr(Sigma) / d`` (of that
    side) as the identity's scale: the only covariance information
    available. Under Ledoit-Wolf shrinkage (the default), a class of two
    samples takes alpha = 1 with its own ``tr(Sigma) / d``: Ledoit-Wolf is
    degenerate at n = 2 (intensity exactly 0, so a rank-1 covariance and
    values of 1e6-1e8; see ``_alpha``). Classes of 3 or more samples use the
    Ledoit-Wolf intensity, differentiated like in :func:`gaussian_kl`. All
    classes are computed at once (zero-padded per-class factors); values and
    gradients stay finite.
    """
    zs, zt = check_features(zs, zt, validate=validate)
    y = check_labels(y, zs.shape[0], device=zs.device)
    check_choice(divergence, "divergence", ("wasserstein", "kl"))
    solver = _check_solver(solver, diagonal, divergence)
    groups = _Groups(y, zs.device)
    (ms, As, cs), (mt, At, ct) = _fit(zs, groups), _fit(zt, groups)
    if divergence == "wasserstein":
        check_options(options, (), "class_gaussian(divergence='wasserstein')")
        if diagonal:
            return _bures_diagonal(ms, As, mt, At).mean()
        return _bures(ms, As, mt, At, solver).mean()
    check_options(options, KL_OPTIONS, "class_gaussian(divergence='kl')")
    shrinkage = _check_shrinkage(options.get("shrinkage", "ledoit-wolf"))
    eps = check_nonnegative(options.get("eps", 1e-6), "eps")
    d = zs.shape[1]
    fallback = tuple(z.var(dim=0, unbiased=False).sum() / d for z in (zs, zt))
    if diagonal:
        kl = _kl_diagonal(ms, As, cs, mt, At, ct, shrinkage, eps, fallback)
    else:
        kl = _kl_full(ms, As, cs, mt, At, ct, shrinkage, eps, fallback, validate)
    return kl.mean().to(zs.dtype)
