r"""Optimal transport between empirical feature distributions: eq. (3), (4), (5) of EQUATIONS.md.

All three are exact OT problems. The plan is solved on a detached float64
copy of the cost matrix: by default on the CPU (``solver="scipy"``:
``scipy.optimize.linear_sum_assignment`` for uniform weights and equal sizes,
where the optimum is a permutation; ``ot.emd`` otherwise), or, with
``solver="auction"``, on the cost's own device by the exact auction solver of
:mod:`kd2m.metrics.assignment` (equal sizes, uniform weights; its certificate
bounds the plan's value to a relative 2e-12 of the optimum, and it returns
scipy's plan on costs without ties). The auction keeps a CUDA step free of the
device-to-host copy of the cost and of the plan's copy back; on the CPU it is
50-100 times slower than scipy at n = 128 (``python -m kd2m.metrics.assignment``),
so ``"scipy"`` stays the default. The loss is then recomputed differentiably in torch,
on the inputs' device, as ``sum_ij gamma_ij cost_ij`` over the plan's support
with the plan held fixed. By the envelope theorem this is the gradient of the
OT value wherever the optimal plan is unique (and a valid subgradient
otherwise): ``dW/dz^S_i = 2 (a_i z^S_i - sum_j gamma_ij z^T_j)``.

Eq. (5), E3: which labels, which beta (open questions in EQUATIONS.md).

* Labels. Each side carries a label distribution: the student's ``ps`` and
  the teacher's ``pt``, their predicted probabilities, as the author's code
  does (it compares the two networks' logits); the trainer passes
  ``softmax`` of each network's logits. With the ground truth on both sides
  a label mismatch costs 2 beta, and with beta of the order of the feature
  costs no cross-class pair is matched at d = 512 (none of 128 on a
  synthetic batch for beta from 0.1 to 3 times the default; issue 13 found
  the same on training features): W_J is then exactly the class-size-
  weighted eq. (4), not a metric of its own. Each network's predictions
  differ from the ground truth and from each other, so their plan crosses
  classes (96 of 128 samples on that batch, where E1, E2, E3 = 311, 326,
  354; tests/test_metrics_values.py checks both facts at n = 128, d = 512).
  The label cost then also carries gradient to
  ``ps``: E3 distils the teacher's predictions as well as its features.
  The squared Euclidean cost between label distributions is the paper's
  Euclidean cost (Montesuma et al. 2023): on one-hot vectors it is 2 if the
  labels differ, 0 otherwise. Probabilities rather than the author's raw
  logits: logits are unbounded and defined up to a shift per sample.
* Beta. A fixed number has no natural scale (squared distances of d = 512
  features range over orders of magnitude during training). The default is
  the teacher's mean squared pairwise distance ``2 tr(Sigma_T)``: a full
  label disagreement (cost 2) costs about two typical feature distances, so
  the plan follows the labels unless the features say otherwise, and W_J
  stays homogeneous of degree 2 in the features like eq. (3). It depends on
  the teacher only, so it is differentiated without giving the student an
  incentive to shrink its features, and the gradient is that of the value
  (the former default, the mean student-teacher cost, was held constant in
  the backward pass).
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
from .assignment import assign, class_mask_cost

__all__ = ["wasserstein", "class_wasserstein", "joint_wasserstein", "joint_default_beta"]

_LOG_FLOOR = 1e-12  # probabilities are clamped to this before the log of the "ce" label cost


SOLVERS = ("scipy", "auction")
"""Values of the ``solver`` option of the three metrics (module docstring)."""


def _check_solver(solver) -> str:
    return check_choice(solver, "solver", SOLVERS)


def _cost(zs: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
    """Detached float64 squared Euclidean cost ``||zs_i - zt_j||^2``, on the inputs' device."""
    x, y = zs.detach().double(), zt.detach().double()
    C = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return C.clamp_min_(0)


def _assignment(C: torch.Tensor, solver: str) -> torch.Tensor:
    """Columns of an optimal assignment of the square cost ``C`` (``cols[i]`` for row ``i``),
    on ``C``'s device: scipy on the CPU, or the auction on ``C``'s device."""
    if solver == "auction":
        return assign(C)
    _, cols = linear_sum_assignment(C.cpu().numpy())
    return torch.as_tensor(cols, device=C.device)


def _uniform(n: int, device) -> torch.Tensor:
    return torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)


def _plan_cost(zs, zt, cols, weights, rows=None) -> torch.Tensor:
    """Differentiable ``sum_k w_k ||zs[rows_k] - zt[cols_k]||^2`` with the plan fixed; ``rows``
    None: every row once, in order (a permutation plan). Indices and weights: tensors or
    numpy arrays."""
    device = zs.device
    cols = torch.as_tensor(cols, device=device)
    w = torch.as_tensor(weights, device=device).to(zs.dtype)
    src = zs if rows is None else zs[torch.as_tensor(rows, device=device)]
    return (w * ((src - zt[cols]) ** 2).sum(dim=1)).sum()


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
def wasserstein(
    zs, zt, *, a=None, b=None, solver: str = "scipy", validate: bool = True
) -> torch.Tensor:
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
    ``solver``: ``"scipy"`` (default) or ``"auction"`` (on the features' device; equal
    sizes and uniform weights only), see the module docstring.
    """
    zs, zt = check_features(zs, zt, same_n=False, validate=validate)
    _check_solver(solver)
    n, m = zs.shape[0], zt.shape[0]
    C = _cost(zs, zt)
    if a is None and b is None and n == m:
        cols = _assignment(C, solver)
        return _plan_cost(zs, zt, cols, _uniform(n, zs.device))
    if solver == "auction":
        raise ValueError(
            "solver='auction' solves assignment problems (equal sizes, uniform weights); got "
            f"{n} and {m} rows, weights a={'given' if a is not None else None}, "
            f"b={'given' if b is not None else None}: use solver='scipy' (ot.emd)"
        )
    import ot  # here, not at the top: POT imports scikit-learn, which imports pandas

    gamma = ot.emd(_weights(a, n, "a"), _weights(b, m, "b"), C.cpu().numpy())
    r, c = np.nonzero(gamma)
    return _plan_cost(zs, zt, c, gamma[r, c], rows=r)


@public_metric
def class_wasserstein(zs, zt, y, *, solver: str = "scipy", validate: bool = True) -> torch.Tensor:
    r"""Class-conditional squared Wasserstein distance, eq. (4).

    .. math::
        W_C = \frac{1}{|C|} \sum_{c \in C} W_2^2\big(P_S(\cdot | y=c), P_T(\cdot | y=c)\big)

    ``C`` = the classes **present** in the batch; each term is eq. (3) between
    the rows of ``zs`` and of ``zt`` with label ``c`` (the same images on both
    sides, hence the same count n_c: an exact assignment problem per class).
    A class with one sample contributes the squared distance between its two
    points. Returns a squared distance; differentiable by the envelope theorem.

    **Mean, not sum, over classes**, as eq. (4) is written (1/|C|); the
    author's code summed them. The value and its gradient are therefore 1/|C|
    times the author's: a lambda here acts like ``lambda / |C|`` in the
    author's code, and the author's lambda is reproduced by ``|C| * lambda``
    (|C| = 10 on nearly every batch of 128 for CIFAR-10 and SVHN, about 72 on
    average for CIFAR-100). We average so that the value is the typical
    per-class W_2^2, on the scale of eq. (3) (E1), and a lambda means the same
    whatever the number of classes in a batch.

    ``solver="scipy"`` (default) solves one assignment per class on the CPU;
    ``solver="auction"`` solves all classes as one problem on the features' device,
    ``cost + K [y_i != y_j]`` (:func:`kd2m.metrics.assignment.class_mask_cost`: every
    optimum of it is class-wise optimal), with the weights ``1 / (|C| n_c)`` counted on
    the device (``|C| = sum_i 1 / n_{y_i}``): no per-class indexing, no host read.
    """
    zs, zt = check_features(zs, zt, validate=validate)
    y = check_labels(y, zs.shape[0], device=zs.device)
    C = _cost(zs, zt)
    if _check_solver(solver) == "auction":
        same = y[:, None] == y[None, :]
        n_c = same.sum(dim=1).double()  # size of each row's class
        weights = 1.0 / (n_c * (1.0 / n_c).sum())
        return _plan_cost(zs, zt, assign(class_mask_cost(C, y)), weights)
    cost = C.cpu().numpy()
    yn = y.detach().cpu().numpy()
    classes = np.unique(yn)
    rows, cols, weights = [], [], []
    for c in classes:
        idx = np.flatnonzero(yn == c)
        r, k = linear_sum_assignment(cost[np.ix_(idx, idx)])
        rows.append(idx[r])
        cols.append(idx[k])
        weights.append(np.full(len(idx), 1.0 / (len(classes) * len(idx))))
    return _plan_cost(
        zs, zt, np.concatenate(cols), np.concatenate(weights), rows=np.concatenate(rows)
    )


def joint_default_beta(zt: torch.Tensor) -> torch.Tensor:
    """Default label weight of :func:`joint_wasserstein`: the teacher's mean squared pairwise
    distance ``(1/n^2) sum_jj' ||zt_j - zt_j'||^2 = 2 tr(Sigma_T)`` (0-dim, differentiable)."""
    return 2 * ((zt - zt.mean(dim=0)) ** 2).sum(dim=1).mean()


@public_metric
def joint_wasserstein(
    zs,
    zt,
    y,
    *,
    beta=None,
    label_cost: str = "sqeuclidean",
    ps=None,
    pt=None,
    solver: str = "scipy",
    validate: bool = True,
) -> torch.Tensor:
    r"""Joint (feature, label) Wasserstein distance, eq. (5).

    .. math::
        W_J = \min_{\gamma \in \Gamma(1/n, 1/n)} \sum_{ij} \gamma_{ij}
              \big(\|z^S_i - z^T_j\|^2 + \beta\, \ell_Y(p_i, q_j)\big)

    What E3 measures: how far the student's joint distribution of (feature,
    predicted label) is from the teacher's, i.e. the least cost of moving the
    student's samples onto the teacher's when a sample pays both for its
    feature distance and for predicting differently from the teacher sample
    it lands on; unlike eq. (4), which never compares two classes, a student
    sample predicted as another class is matched across ground-truth classes.

    Rows ``i`` are the **student's** samples, columns ``j`` the **teacher's**
    (the author's code compared the student with itself); an exact assignment
    problem. The value is the squared feature distance plus beta times the
    label cost of the optimal plan. Labels: the student's ``p_i = ps[i]`` and
    the teacher's ``q_j = pt[j]`` (predicted probabilities, n x K), each
    one-hot of the ground truth ``y`` when not given; the trainer passes both
    networks' softmax (why: module docstring). ``label_cost``:

    * ``"sqeuclidean"`` (default): ``||p_i - q_j||^2``, the paper's Euclidean
      label cost; 2 between different one-hot labels, 0 between equal ones.
    * ``"onehot"``: ground truth on both sides (``ps``/``pt`` refused).
    * ``"ce"`` (JDOT, Courty et al. 2017): ``-sum_k q_jk log p_ik`` (``ps``
      required, clamped at 1e-12 before the log).

    ``beta >= 0``; default :func:`joint_default_beta`, the teacher's mean
    squared pairwise distance ``2 tr(Sigma_T)`` (why: module docstring).
    ``beta = 0`` gives eq. (3); with one-hot labels on both sides,
    ``beta >= max cost / 2`` gives the class-size-weighted eq. (4).
    Gradient: envelope theorem (plan fixed), plus the label term's to
    ``ps``/``pt`` and beta's to ``zt``: the gradient of the value wherever
    the optimal plan is unique. ``solver``: ``"scipy"`` (default) or ``"auction"``
    (on the features' device), see the module docstring.
    """
    zs, zt = check_features(zs, zt, validate=validate)
    _check_solver(solver)
    n = zs.shape[0]
    y = check_labels(y, n, device=zs.device)
    beta = check_nonnegative(beta, "beta", allow_none=True)
    check_choice(label_cost, "label_cost", ("sqeuclidean", "onehot", "ce"))
    if label_cost == "onehot" and (ps is not None or pt is not None):
        raise ValueError(
            "label_cost='onehot' uses the ground truth y on both sides; got ps/pt: use "
            "label_cost='sqeuclidean' for predicted probabilities"
        )
    C = _cost(zs, zt)
    if beta is None:
        beta_t = joint_default_beta(zt)
        beta_plan = joint_default_beta(zt.detach().double())  # the plan's, in float64 like C
    else:
        beta_t = torch.as_tensor(beta, dtype=zs.dtype, device=zs.device)
        beta_plan = torch.as_tensor(beta, dtype=torch.float64, device=zs.device)
    if label_cost != "ce" and ps is None and pt is None:  # ground truth on both sides
        L = 2.0 * (y[:, None] != y[None, :]).double()
        cols = _assignment(C + beta_plan * L, solver)
        label_term = beta_t * L[torch.arange(n, device=zs.device), cols].mean().to(zs.dtype)
    else:
        cols, label_cost_of_plan = _joint_plan_with_probabilities(
            zs, y, ps, pt, C, beta_plan, label_cost, solver, validate
        )
        label_term = beta_t * label_cost_of_plan
    return _plan_cost(zs, zt, cols, _uniform(n, zs.device)) + label_term


def _joint_plan_with_probabilities(zs, y, ps, pt, C, beta, label_cost, solver, validate):
    """Optimal plan (columns) of eq. (5) with label distributions, and its mean label cost
    (with gradient to ``ps``/``pt``)."""
    P, Q = _label_distributions(zs, y, ps, pt, validate, need_ps=label_cost == "ce")
    if label_cost == "ce":
        L = -(torch.log(P.clamp_min(_LOG_FLOOR)) @ Q.T)  # L[i, j] = -sum_k q_jk log p_ik
    else:
        L = ((P * P).sum(1)[:, None] + (Q * Q).sum(1)[None, :] - 2 * P @ Q.T).clamp_min(0)
    cols = _assignment(C + beta * L.detach().double(), solver)
    rows = torch.arange(zs.shape[0], device=zs.device)
    if label_cost == "ce":
        return cols, L[rows, cols].mean()
    # recomputed on the plan's support, where the clamp is inactive
    return cols, ((P - Q[cols]) ** 2).sum(dim=1).mean()


def _label_distributions(zs, y, ps, pt, validate, *, need_ps):
    """Student-side P and teacher-side Q label distributions (n x K), working dtype, zs's device.

    Each is the given probabilities, or one-hot of ``y`` when not given.
    """
    n = zs.shape[0]
    if ps is None and need_ps:
        raise ValueError("label_cost='ce' needs ps, the student's predicted probabilities (n, K)")
    dtype = zs.dtype
    for name, p in (("ps", ps), ("pt", pt)):
        if p is not None:
            check_probabilities(p, n, name, validate=validate, device=zs.device)
            dtype = torch.promote_types(dtype, p.dtype)
    K = (ps if ps is not None else pt).shape[1]
    if ps is not None and pt is not None and pt.shape[1] != K:
        raise ValueError(f"pt must have K={K} columns like ps; got shape {tuple(pt.shape)}")
    if ps is None or pt is None:
        if int(y.min()) < 0 or int(y.max()) >= K:
            given = "ps" if ps is not None else "pt"
            raise ValueError(
                f"y must hold class indices in [0, {K}) (K = {given}.shape[1]); got values in "
                f"[{int(y.min())}, {int(y.max())}]"
            )
        onehot = torch.nn.functional.one_hot(y.long(), K).to(dtype)
    P = ps.to(dtype) if ps is not None else onehot
    Q = pt.to(dtype) if pt is not None else onehot
    return P, Q
