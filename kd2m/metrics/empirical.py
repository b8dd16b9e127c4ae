r"""Optimal transport between empirical feature distributions: eq. (3), (4), (5) of EQUATIONS.md.

All three are exact OT problems. The plan is solved on a detached float64
copy of the cost matrix on the CPU (``scipy.optimize.linear_sum_assignment``
for uniform weights and equal sizes, where the optimum is a permutation;
``ot.emd`` otherwise); the loss is then recomputed differentiably in torch,
on the inputs' device, as ``sum_ij gamma_ij cost_ij`` over the plan's support
with the plan held fixed. By the envelope theorem this is the gradient of the
OT value wherever the optimal plan is unique (and a valid subgradient
otherwise): ``dW/dz^S_i = 2 (a_i z^S_i - sum_j gamma_ij z^T_j)``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ._checks import (
    check_choice,
    check_features,
    check_labels,
    check_nonnegative,
    check_probabilities,
    public_metric,
)

__all__ = ["wasserstein", "class_wasserstein", "joint_wasserstein"]

_LOG_FLOOR = 1e-12  # probabilities are clamped to this before the log of the "ce" label cost


def _cost_matrix(zs: torch.Tensor, zt: torch.Tensor) -> np.ndarray:
    """Detached float64 squared Euclidean cost ``||zs_i - zt_j||^2`` as a numpy array (CPU)."""
    x, y = zs.detach().double(), zt.detach().double()
    C = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return C.clamp_min_(0).cpu().numpy()


def _plan_cost(zs, zt, rows, cols, weights) -> torch.Tensor:
    """Differentiable ``sum_k w_k ||zs[rows_k] - zt[cols_k]||^2`` with the plan fixed."""
    device = zs.device
    rows = torch.as_tensor(np.asarray(rows), device=device)
    cols = torch.as_tensor(np.asarray(cols), device=device)
    w = torch.as_tensor(np.asarray(weights), device=device, dtype=zs.dtype)
    return (w * ((zs[rows] - zt[cols]) ** 2).sum(dim=1)).sum()


def _weights(w, n: int, name: str) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    if isinstance(w, torch.Tensor):
        w = w.detach().cpu().double().numpy()
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one weight per row); got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"{name} must hold finite nonnegative weights; got min {w.min():.3g}")
    if abs(w.sum() - 1) > 1e-5:
        raise ValueError(f"{name} must sum to 1; got sum {w.sum():.6g}")
    return w / w.sum()


@public_metric
def wasserstein(zs, zt, *, a=None, b=None, validate: bool = True) -> torch.Tensor:
    r"""Exact squared 2-Wasserstein distance between empirical measures, eq. (3).

    .. math::
        W_2^2(P_S, P_T) = \min_{\gamma \in \Gamma(a, b)} \sum_{ij} \gamma_{ij}
                          \|z^S_i - z^T_j\|^2

    ``P_S = sum_i a_i delta(zs_i)``, ``P_T = sum_j b_j delta(zt_j)``, uniform
    weights by default. Returns the **squared** distance. Symmetric.

    Uniform weights and equal sizes: the optimum is a permutation sigma
    (assignment problem, solved exactly by ``linear_sum_assignment``) and the
    value is ``(1/n) sum_i ||zs_i - zt_sigma(i)||^2``. Otherwise (weights given,
    or sizes differ) the plan comes from ``ot.emd`` (exact network simplex).
    Gradients: envelope theorem, plan held fixed (see module docstring); the
    weights ``a``, ``b`` (arrays or tensors, each summing to 1) are constants.
    No covariance is involved: duplicated or all-zero features need no care.
    """
    zs, zt = check_features(zs, zt, same_n=False, validate=validate)
    n, m = zs.shape[0], zt.shape[0]
    C = _cost_matrix(zs, zt)
    if a is None and b is None and n == m:
        rows, cols = linear_sum_assignment(C)
        return _plan_cost(zs, zt, rows, cols, np.full(n, 1.0 / n))
    import ot  # here, not at the top: POT imports scikit-learn, which imports pandas

    gamma = ot.emd(_weights(a, n, "a"), _weights(b, m, "b"), C)
    rows, cols = np.nonzero(gamma)
    return _plan_cost(zs, zt, rows, cols, gamma[rows, cols])


@public_metric
def class_wasserstein(zs, zt, y, *, validate: bool = True) -> torch.Tensor:
    r"""Class-conditional squared Wasserstein distance, eq. (4).

    .. math::
        W_C = \frac{1}{|C|} \sum_{c \in C} W_2^2\big(P_S(\cdot | y=c), P_T(\cdot | y=c)\big)

    ``C`` = the classes **present** in the batch; each term is eq. (3) between
    the rows of ``zs`` and of ``zt`` with label ``c`` (the same images on both
    sides, hence the same count n_c: an exact assignment problem per class).
    The classes are **averaged** (the author's code summed them). A class
    with one sample contributes the squared distance between its two points.
    Returns a squared distance; differentiable by the envelope theorem.
    """
    zs, zt = check_features(zs, zt, validate=validate)
    y = check_labels(y, zs.shape[0])
    C = _cost_matrix(zs, zt)
    yn = y.detach().cpu().numpy()
    classes = np.unique(yn)
    rows, cols, weights = [], [], []
    for c in classes:
        idx = np.flatnonzero(yn == c)
        r, k = linear_sum_assignment(C[np.ix_(idx, idx)])
        rows.append(idx[r])
        cols.append(idx[k])
        weights.append(np.full(len(idx), 1.0 / (len(classes) * len(idx))))
    return _plan_cost(zs, zt, np.concatenate(rows), np.concatenate(cols), np.concatenate(weights))


@public_metric
def joint_wasserstein(
    zs,
    zt,
    y,
    *,
    beta=None,
    label_cost: str = "onehot",
    ps=None,
    pt=None,
    validate: bool = True,
) -> torch.Tensor:
    r"""Joint (feature, label) Wasserstein distance, eq. (5).

    .. math::
        W_J = \min_{\gamma \in \Gamma(1/n, 1/n)} \sum_{ij} \gamma_{ij}
              \big(\|z^S_i - z^T_j\|^2 + \beta\, \ell_Y(i, j)\big)

    Rows ``i`` are the **student's** samples, columns ``j`` the **teacher's**
    (the author's code compared the student with itself). Uniform weights and
    equal sizes: an exact assignment problem. The value is the squared
    feature distance plus beta times the label cost of the optimal plan.

    Labels (open question in EQUATIONS.md), ``label_cost``:

    * ``"onehot"`` (default): ground truth on both sides,
      ``l_Y = ||e_{y_i} - e_{y_j}||^2`` (2 if the labels differ, 0 otherwise).
      Student and teacher see the same images, so the ground truth is the
      only label that is not itself a model output; the label term is a
      constant of the plan (no gradient), and it only steers the matching.
    * ``"ce"`` (JDOT, Courty et al. 2017): ``l_Y = -sum_k q_jk log ps_ik``,
      cross-entropy between the teacher side's label distribution ``q_j``
      (one-hot ``y_j``, or the teacher's probabilities ``pt`` when given) and
      the student's predicted probabilities ``ps`` (n x K, required; rows of
      softmax outputs, clamped at 1e-12 before the log). The label term then
      also carries gradient to ``ps`` (and to ``pt`` if it requires grad).

    ``beta >= 0`` (ValueError otherwise). Default ``None``: ``beta`` = the
    mean of the feature cost matrix ``||zs_i - zt_j||^2`` over the batch,
    computed without gradient. A fixed number has no natural scale (squared
    feature distances of d = 512 features range over orders of magnitude
    during training, and beta = 1 is negligible against them); tying beta to
    the typical student-teacher distance makes a label mismatch cost about two
    typical feature distances, so the plan prefers same-class matches without
    forbidding a very close cross-class pair, and keeps W_J homogeneous of
    degree 2 in the features, like eq. (3). (``beta = 0`` gives eq. (3);
    ``beta >= max cost / 2`` gives the class-size-weighted eq. (4).) Pass a
    float for a fixed weight.
    """
    zs, zt = check_features(zs, zt, validate=validate)
    n = zs.shape[0]
    y = check_labels(y, n)
    beta = check_nonnegative(beta, "beta", allow_none=True)
    check_choice(label_cost, "label_cost", ("onehot", "ce"))
    C = _cost_matrix(zs, zt)
    if beta is None:
        beta = float(C.mean())
    if label_cost == "onehot":
        if ps is not None or pt is not None:
            raise ValueError(
                "ps and pt are only used with label_cost='ce'; got label_cost='onehot'"
            )
        yn = y.detach().cpu().numpy()
        L = 2.0 * (yn[:, None] != yn[None, :])
        rows, cols = linear_sum_assignment(C + beta * L)
        label_term = torch.as_tensor(beta * L[rows, cols].mean(), dtype=zs.dtype, device=zs.device)
    else:
        logp, q = _ce_inputs(zs, y, ps, pt, validate)
        L = -(logp @ q.T)  # L[i, j] = -sum_k q_jk log ps_ik
        rows, cols = linear_sum_assignment(C + beta * L.detach().double().cpu().numpy())
        idx_r = torch.as_tensor(rows, device=zs.device)
        idx_c = torch.as_tensor(cols, device=zs.device)
        label_term = beta * L[idx_r, idx_c].mean()
    return _plan_cost(zs, zt, rows, cols, np.full(n, 1.0 / n)) + label_term


def _ce_inputs(zs, y, ps, pt, validate):
    """log ps (n x K) and the teacher-side label distribution q (n x K) in the working dtype."""
    n = zs.shape[0]
    if ps is None:
        raise ValueError("label_cost='ce' needs ps, the student's predicted probabilities (n, K)")
    check_probabilities(ps, n, "ps", validate=validate)
    K = ps.shape[1]
    dtype = torch.promote_types(zs.dtype, ps.dtype)
    if pt is not None:
        check_probabilities(pt, n, "pt", validate=validate)
        if pt.shape[1] != K:
            raise ValueError(f"pt must have K={K} columns like ps; got shape {tuple(pt.shape)}")
        q = pt.to(device=zs.device, dtype=dtype)
    else:
        if int(y.min()) < 0 or int(y.max()) >= K:
            raise ValueError(
                f"y must hold class indices in [0, {K}) (K = ps.shape[1]); got values in "
                f"[{int(y.min())}, {int(y.max())}]"
            )
        q = torch.nn.functional.one_hot(y.to(zs.device), K).to(dtype)
    logp = torch.log(ps.to(device=zs.device, dtype=dtype).clamp_min(_LOG_FLOOR))
    return logp, q
