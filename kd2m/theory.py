"""Numerical companion to Section 4 of the KD2M paper (Lemma 4.1, Theorem 4.1).

Everything here is computed **exactly** (up to float64 rounding) on finite
samples: given the student features ``zs`` and the teacher features ``zt`` of
the *same* ``n`` images (row ``i`` of each is image ``i``), their labels ``y``
and a fixed linear head ``h(z) = W z + b`` scored by the cross-entropy, we
compute every quantity of the chain of Theorem 4.1 and check each inequality.

What the paper claims
---------------------
Lemma 4.1 (Redko et al. 2017, Lemma 1): for a loss ``l_h`` in the unit ball of
an RKHS (plus boundedness/integrability conditions), for every hypothesis
``h``, ``R_Q(h) <= R_P(h) + W_1(P, Q)``.  Theorem 4.1 applies it to the
push-forwards ``P_S = g_S # mu`` and ``P_T = g_T # mu`` (paper eq. 10)::

    R_{P_S}(h) <= R_{P_T}(h) + W_1(P_S, P_T)
               <= R_{P_T}(h) + E_{x~mu} ||g_S(x) - g_T(x)||
               <= R_{P_T}(h) + sup_x ||g_S(x) - g_T(x)||

the middle step because ``(g_S, g_T) # mu`` is one admissible coupling.

What we check, and why it differs
---------------------------------
1. *The Lipschitz constant.*  The lemma's "unit ball" assumption amounts to a
   loss that is 1-Lipschitz in the feature.  A real head is not: the map
   ``z -> CE(W z + b, y)`` (label fixed) is ``Lip``-Lipschitz with
   ``Lip = sqrt(2) * ||W||_2`` (:func:`lipschitz_ce_linear`), so every
   right-hand side is scaled by ``Lip`` (Kantorovich-Rubinstein:
   ``|E_P f - E_Q f| <= Lip(f) W_1(P, Q)``).
2. *The labels.*  The cross-entropy depends on the label, and the label is
   **not** a function of the feature shared by both measures: the student and
   the teacher may send the images of one class to different places.  The
   plain feature ``W_1(P_S, P_T)`` only sees the two clouds of points, so it
   can be 0 while the risks differ (two images of different classes whose
   features are swapped between student and teacher: see
   ``tests/test_theory.py::test_plain_w1_does_not_bound_risk_gap``).  The
   quantity that does control the gap is the W_1 between the *joint*
   (feature, label) empirical measures with cost ``||z - z'||`` when the
   labels agree and ``+inf`` otherwise (:func:`labelled_wasserstein1`): every
   finite-cost coupling pairs samples with equal labels, on which the loss is
   ``Lip``-Lipschitz, so ``|R_S - R_T| <= Lip * W1_labelled``.  The identity
   coupling ``i <-> i`` preserves labels, so the last two steps of Theorem 4.1
   hold with ``W1_labelled`` in place of ``W_1``; the chain we check is::

       R_S <= R_T + Lip * W1_labelled
           <= R_T + Lip * (1/n) sum_i ||zs_i - zt_i||
           <= R_T + Lip * max_i ||zs_i - zt_i||

   together with ``W_1 <= W1_labelled`` (dropping the label constraint can only
   lower the optimum) and ``W_1 <= W_2`` (Jensen).  The paper's literal first
   step with the plain ``W_1`` is available as
   :meth:`BoundReport.plain_w1_bound` for display, but it is **not** enforced
   (it is false in general).

Tolerance
---------
Each :class:`Inequality` holds iff ``lhs <= rhs + tol`` with
``tol = rtol * scale`` (``rtol = 1e-9`` by default), where ``scale`` is the
magnitude of the numbers the two sides were computed from: the largest
student-teacher distance ``max_ij ||zs_i - zt_j||`` for the transport
inequalities, and ``max_i |CE_i| + Lip * max_ij ||zs_i - zt_j||`` for the risk
inequalities.  The tolerance therefore scales with the data (features of size
1e-8 are checked as strictly as features of size 1); a NaN side never holds.

All functions accept numpy arrays or torch tensors (any device/dtype) and work
in float64 numpy.  Distances are never squared unless the name says so:
``empirical_wasserstein(..., p=2)`` and :func:`gaussian_w2_closed_form`
return ``W_2``, not ``W_2^2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

__all__ = [
    "DEFAULT_RTOL",
    "BoundReport",
    "BoundViolation",
    "Inequality",
    "W2Convergence",
    "bound_report",
    "check_bounds",
    "coupling_gap",
    "empirical_wasserstein",
    "estimates_over_sizes",
    "fit_rate",
    "gaussian_w2_closed_form",
    "gaussian_w2_squared",
    "labelled_wasserstein1",
    "lipschitz_ce_linear",
    "max_gap",
    "per_sample_ce",
    "risk",
    "sample_w2_convergence",
    "to_float64",
]

DEFAULT_RTOL = 1e-9
"""Relative tolerance of the inequality checks (see the module docstring)."""

_EMD_MAX_ITER = 10_000_000


# --------------------------------------------------------------------------- #
# Input handling
# --------------------------------------------------------------------------- #
def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Convert a numpy array / torch tensor / sequence to a numpy array (no copy of meaning)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        t = x.detach().cpu()
        if t.is_floating_point() or t.is_complex():
            t = t.double()
        return t.numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} could not be converted to an array: {exc}") from exc


def to_float64(x: Any, name: str = "x") -> np.ndarray:
    """``x`` (numpy array, torch tensor on any device and dtype, or sequence) as a float64
    numpy array: the one conversion the numpy code of kd2m (and of the book) uses."""
    return _to_numpy(x, name).astype(np.float64, copy=False)


def _features(x: Any, name: str) -> np.ndarray:
    """A finite float64 feature matrix of shape (n, d), n >= 1, d >= 1."""
    a = _to_numpy(x, name)
    if a.dtype == bool or not (
        np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
    ):
        raise ValueError(f"{name} must hold real numbers; got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if a.ndim != 2:
        hint = " (for 1-D points use x.reshape(-1, 1))" if a.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D of shape (n, d); got shape {a.shape}{hint}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column; got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")
    return a


def _pair(zs: Any, zt: Any, *, same_n: bool = True) -> tuple[np.ndarray, np.ndarray]:
    zs = _features(zs, "zs")
    zt = _features(zt, "zt")
    if same_n and zs.shape != zt.shape:
        raise ValueError(
            "zs and zt must have the same shape (row i of each = image i); "
            f"got zs {zs.shape} and zt {zt.shape}"
        )
    if zs.shape[1] != zt.shape[1]:
        raise ValueError(
            f"zs and zt must have the same feature dimension; got zs {zs.shape} and zt {zt.shape}"
        )
    return zs, zt


def _labels(y: Any, n: int) -> np.ndarray:
    a = _to_numpy(y, "y")
    if a.ndim != 1:
        raise ValueError(f"y must be 1-D of length n={n}; got shape {a.shape}")
    if a.shape[0] != n:
        raise ValueError(f"y must have length n={n} (one label per row); got length {a.shape[0]}")
    if a.dtype == bool:
        raise ValueError("y must hold integer class labels; got dtype bool")
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int64, copy=False)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise ValueError(f"y must hold integer class labels; got non-integral values {a[:5]}")
        return a.astype(np.int64)
    raise ValueError(f"y must hold integer class labels; got dtype {a.dtype}")


def _head(weight: Any, bias: Any, d: int) -> tuple[np.ndarray, np.ndarray]:
    w = _to_numpy(weight, "weight")
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D of shape (K, d); got shape {w.shape}")
    w = w.astype(np.float64, copy=False)
    if w.shape[1] != d:
        raise ValueError(f"weight must have shape (K, d={d}); got shape {w.shape}")
    if w.shape[0] < 1:
        raise ValueError(f"weight must have at least one row (class); got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weight contains non-finite value(s) (NaN or inf)")
    if bias is None:
        b = np.zeros(w.shape[0])
    else:
        b = _to_numpy(bias, "bias").astype(np.float64, copy=False)
        if b.shape != (w.shape[0],):
            raise ValueError(f"bias must have shape (K={w.shape[0]},); got shape {b.shape}")
        if not np.all(np.isfinite(b)):
            raise ValueError("bias contains non-finite value(s) (NaN or inf)")
    return w, b


# --------------------------------------------------------------------------- #
# Distances
# --------------------------------------------------------------------------- #
def _scale(*arrays: np.ndarray) -> float:
    return float(max(np.max(np.abs(a)) for a in arrays))


def _pairwise_distances(zs: np.ndarray, zt: np.ndarray) -> np.ndarray:
    """Euclidean distance matrix ``C_ij = ||zs_i - zt_j||``, computed on rescaled
    inputs so that neither tiny nor huge features under/overflow when squared."""
    s = _scale(zs, zt)
    if s == 0.0:
        return np.zeros((zs.shape[0], zt.shape[0]))
    return cdist(zs / s, zt / s, metric="euclidean") * s


def _row_distances(zs: np.ndarray, zt: np.ndarray) -> np.ndarray:
    """``||zs_i - zt_i||`` for each i (same rescaling as :func:`_pairwise_distances`)."""
    s = _scale(zs, zt)
    if s == 0.0:
        return np.zeros(zs.shape[0])
    return np.sqrt(np.sum((zs / s - zt / s) ** 2, axis=1)) * s


def _emd_wasserstein(dist: np.ndarray, p: int) -> float:
    """W_p (not raised to the p) between uniform measures from a Euclidean distance matrix.

    Solves ``min_gamma sum_ij gamma_ij C_ij^p`` exactly with POT's network
    simplex (``ot.emd2``) on the float64 cost, then takes the p-th root.  The
    cost is divided by its maximum first (and the result multiplied back) so
    that squaring cannot under/overflow.
    """
    n, m = dist.shape
    dmax = float(dist.max())
    if dmax == 0.0:
        return 0.0
    cost = np.ascontiguousarray((dist / dmax) ** p, dtype=np.float64)
    if n == 1 or m == 1:  # a single atom on one side: the only coupling is the product
        return dmax * float(np.mean(cost)) ** (1.0 / p)
    import ot  # here, not at the top: POT imports scikit-learn, which imports pandas

    a = np.full(n, 1.0 / n)
    b = np.full(m, 1.0 / m)
    value, log = ot.emd2(a, b, cost, numItermax=_EMD_MAX_ITER, log=True)
    if log.get("result_code", 1) != 1:
        raise RuntimeError(
            f"ot.emd2 did not reach the optimum (result_code={log.get('result_code')}, "
            f"warning={log.get('warning')!r}); the Wasserstein value would be wrong"
        )
    value = max(float(value), 0.0)
    return dmax * value ** (1.0 / p)


def empirical_wasserstein(zs: Any, zt: Any, p: int = 1) -> float:
    """Exact ``W_p`` between the uniform empirical measures of ``zs`` and ``zt`` (paper eq. 3).

    ``W_p(P_S, P_T) = ( min_{gamma in Gamma(a, b)} sum_ij gamma_ij ||zs_i - zt_j||^p )^(1/p)``
    with ``a = 1/n_s``, ``b = 1/n_t``; Euclidean ground distance.  Solved with
    ``ot.emd2`` (exact linear programme) on the float64 cost.

    Returns the distance ``W_p`` itself, **not** ``W_p^p``: for ``p=2`` the
    squared cost is transported and the square root is returned (the paper's
    eq. 3 writes ``W_2^2``; square this value to get it).  ``zs`` (n_s, d) and
    ``zt`` (n_t, d) may have different numbers of rows.  This is independent
    of :mod:`kd2m.metrics` (it is the reference the theory checks use).
    """
    if p not in (1, 2) or isinstance(p, bool):
        raise ValueError(f"p must be 1 or 2; got p={p!r}")
    zs, zt = _pair(zs, zt, same_n=False)
    return _emd_wasserstein(_pairwise_distances(zs, zt), p)


def labelled_wasserstein1(zs: Any, zt: Any, y: Any) -> float:
    """``W_1`` between the joint (feature, label) empirical measures, labels must match.

    ``P_S = (1/n) sum_i delta(zs_i, y_i)``, ``P_T = (1/n) sum_i delta(zt_i, y_i)``,
    ground cost ``c((z, y), (z', y')) = ||z - z'||`` if ``y == y'`` and ``+inf``
    otherwise.  Because both sides hold the same images, class ``c`` carries the
    same mass ``n_c / n`` on both sides, so an optimal finite-cost plan splits into
    independent per-class plans and, exactly::

        W1_labelled = sum_c (n_c / n) * W_1(P_S(.|y=c), P_T(.|y=c))

    (no large constant stands in for ``+inf``, so nothing can leak into the
    value).  This is the transport distance that bounds the risk gap of a
    label-dependent loss (Kantorovich-Rubinstein per class; see the module
    docstring): it is the ``beta -> inf`` limit of the joint Wasserstein of
    paper eq. 5 with the unsquared Euclidean feature cost.  Not squared.
    """
    zs, zt = _pair(zs, zt)
    labels = _labels(y, zs.shape[0])
    n = zs.shape[0]
    total = 0.0
    for c in np.unique(labels):
        mask = labels == c
        n_c = int(np.count_nonzero(mask))
        total += (n_c / n) * _emd_wasserstein(_pairwise_distances(zs[mask], zt[mask]), 1)
    return float(total)


def coupling_gap(zs: Any, zt: Any) -> float:
    """``(1/n) sum_i ||zs_i - zt_i||``: the transport cost of the identity coupling.

    The empirical version of ``E_{x~mu} ||g_S(x) - g_T(x)||`` in Theorem 4.1
    (eq. 10, middle term).  The identity coupling ``i <-> i`` is feasible for
    ``W_1`` and, as it pairs each image with itself, for ``W1_labelled``; hence
    ``W_1 <= W1_labelled <= coupling_gap``.  Not squared.
    """
    zs, zt = _pair(zs, zt)
    return float(np.mean(_row_distances(zs, zt)))


def max_gap(zs: Any, zt: Any) -> float:
    """``max_i ||zs_i - zt_i||``: the empirical ``sup_x ||g_S(x) - g_T(x)||`` of Theorem 4.1."""
    zs, zt = _pair(zs, zt)
    return float(np.max(_row_distances(zs, zt)))


# --------------------------------------------------------------------------- #
# Risk and Lipschitz constant
# --------------------------------------------------------------------------- #
def _ce_terms(z: np.ndarray, labels: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    K = w.shape[0]
    if labels.size and (labels.min() < 0 or labels.max() >= K):
        raise ValueError(
            f"labels must lie in [0, K={K}) for a head with K={K} outputs; "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    logits = z @ w.T + b
    return logsumexp(logits, axis=1) - logits[np.arange(z.shape[0]), labels]


def per_sample_ce(z: Any, y: Any, weight: Any, bias: Any = None) -> np.ndarray:
    """``CE(W z_i + b, y_i) = logsumexp(W z_i + b) - (W z_i + b)_{y_i}`` for each row
    (float64, natural log, stable log-sum-exp); its mean is :func:`risk`. Shapes as in
    :func:`risk`."""
    z = _features(z, "z")
    labels = _labels(y, z.shape[0])
    w, b = _head(weight, bias, z.shape[1])
    return _ce_terms(z, labels, w, b)


def risk(z: Any, y: Any, weight: Any, bias: Any = None) -> float:
    """Empirical risk ``R(h) = (1/n) sum_i CE(W z_i + b, y_i)`` of a fixed linear head.

    Definition 4.1 of the paper over the feature space (``h(z) = W z + b``,
    ``l`` = cross-entropy ``CE(u, y) = logsumexp(u) - u_y``, natural log),
    computed in float64 with a stable log-sum-exp.  ``weight`` is (K, d),
    ``bias`` (K,) or ``None`` (zero), labels in ``[0, K)``.
    """
    return float(np.mean(per_sample_ce(z, y, weight, bias)))


def lipschitz_ce_linear(weight: Any) -> float:
    """Lipschitz constant ``sqrt(2) * ||W||_2`` of ``z -> CE(W z + b, y)`` for a fixed ``y``.

    Why: the gradient of ``u -> CE(u, y) = logsumexp(u) - u_y`` is
    ``softmax(u) - e_y =: p - e_y``, and
    ``||p - e_y||^2 = (1 - p_y)^2 + sum_{k != y} p_k^2
    <= (1 - p_y)^2 + (sum_{k != y} p_k)^2 = 2 (1 - p_y)^2 <= 2``,
    so the cross-entropy is ``sqrt(2)``-Lipschitz in the logits for the
    Euclidean norm (mean value theorem on the convex set R^K; the constant is
    the supremum, approached when all mass sits on one wrong class).  The
    affine map ``z -> W z + b`` is ``||W||_2``-Lipschitz (spectral norm, the
    largest singular value), and Lipschitz constants multiply under
    composition.  The bias plays no role.  (A tighter constant would use ``W``
    with its column means removed, since ``p - e_y`` is orthogonal to the
    all-ones vector; we keep the simple, documented one.)
    """
    w = _to_numpy(weight, "weight")
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D of shape (K, d); got shape {w.shape}")
    w = w.astype(np.float64, copy=False)
    if w.size == 0:
        raise ValueError(f"weight must be non-empty; got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weight contains non-finite value(s) (NaN or inf)")
    return float(math.sqrt(2.0) * np.linalg.norm(w, ord=2))


# --------------------------------------------------------------------------- #
# Inequalities and the report
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Inequality:
    """One checked inequality ``lhs <= rhs``.

    ``holds`` is *computed* (never stored): ``lhs <= rhs + tol`` with both
    sides not NaN; ``tol`` is the absolute float-rounding allowance
    (``rtol * scale``, see the module docstring).  ``slack = rhs - lhs``;
    ``ratio = lhs / rhs`` when ``rhs > 0`` (else ``None``).
    """

    name: str
    lhs: float
    rhs: float
    tol: float = 0.0
    statement: str = ""

    @property
    def slack(self) -> float:
        return float(self.rhs - self.lhs)

    @property
    def ratio(self) -> float | None:
        return float(self.lhs / self.rhs) if self.rhs > 0 else None

    @property
    def holds(self) -> bool:
        lhs, rhs, tol = float(self.lhs), float(self.rhs), float(self.tol)
        if math.isnan(lhs) or math.isnan(rhs) or math.isnan(tol) or tol < 0:
            return False
        return bool(lhs <= rhs + tol)

    def row(self) -> dict[str, Any]:
        """``{name, lhs, rhs, slack, ratio, holds}`` for a table (plain Python types)."""
        return {
            "name": self.name,
            "lhs": float(self.lhs),
            "rhs": float(self.rhs),
            "slack": self.slack,
            "ratio": self.ratio,
            "holds": self.holds,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.row(), "tol": float(self.tol), "statement": self.statement}

    def describe(self) -> str:
        return (
            f"{self.name}: lhs={self.lhs!r} > rhs={self.rhs!r} (+tol {self.tol:.3g}), "
            f"slack={self.slack:.6g}" + (f" [{self.statement}]" if self.statement else "")
        )


class BoundViolation(AssertionError):
    """Raised by :func:`check_bounds` when at least one inequality fails.

    ``violations`` holds the failed :class:`Inequality` objects; the message
    names each one with its numbers.
    """

    def __init__(self, violations: Sequence[Inequality]):
        self.violations = list(violations)
        lines = [f"{len(self.violations)} inequality(ies) violated:"]
        lines += [f"  - {v.describe()}" for v in self.violations]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class BoundReport:
    """All quantities of the Theorem 4.1 chain on one batch, and the inequalities.

    Fields (floats unless said): ``n`` images, ``d`` feature dimension, ``K``
    head outputs, ``n_classes`` distinct labels present; ``W1``, ``W2``
    (plain feature Wasserstein, **not squared**); ``W1_labelled``;
    ``coupling_gap`` (mean ``||zs_i - zt_i||``), ``coupling_gap_rms``
    (``sqrt(mean ||zs_i - zt_i||^2)``, the identity-coupling cost for ``W_2``),
    ``max_gap``; ``risk_student``, ``risk_teacher`` (mean cross-entropy of the
    fixed head); ``lipschitz`` (``sqrt(2) ||W||_2``); ``feature_scale``
    (``max_ij ||zs_i - zt_j||``) and ``loss_scale`` (``max_i |CE_i|`` over both
    sides ``+ lipschitz * feature_scale``), which set the tolerances;
    ``rtol``.  ``risk_gap = risk_student - risk_teacher`` (signed) and
    ``inequalities`` are derived on access from the fields, so a modified
    report (``dataclasses.replace``) is always re-checked from its numbers.
    """

    n: int
    d: int
    K: int
    n_classes: int
    W1: float
    W2: float
    W1_labelled: float
    coupling_gap: float
    coupling_gap_rms: float
    max_gap: float
    risk_student: float
    risk_teacher: float
    lipschitz: float
    feature_scale: float
    loss_scale: float
    rtol: float = field(default=DEFAULT_RTOL)

    @property
    def risk_gap(self) -> float:
        """``risk_student - risk_teacher`` (signed)."""
        return float(self.risk_student - self.risk_teacher)

    def _tol(self, *values: float, scale: float) -> float:
        mags = [abs(float(v)) for v in values if not math.isnan(float(v))]
        return float(self.rtol) * max([abs(float(scale)), *mags])

    @property
    def inequalities(self) -> list[Inequality]:
        """The checked inequalities (recomputed from the fields on every access).

        1. ``W1 <= W1_labelled``
        2. ``W1_labelled <= coupling_gap``
        3. ``coupling_gap <= max_gap``
        4. ``W1 <= W2``
        5. ``|risk_S - risk_T| <= Lip * W1_labelled``
        6. Theorem 4.1 chain (steps 1-3)
        plus ``W2 <= coupling_gap_rms``, ``coupling_gap <= coupling_gap_rms``,
        ``coupling_gap_rms <= max_gap`` and the per-sample bound
        ``|risk_S - risk_T| <= Lip * coupling_gap`` of EQUATIONS.md.
        """
        return self._transport_chain() + self._risk_chain() + self._rms_chain()

    def _feat(self, name: str, lhs: float, rhs: float, why: str) -> Inequality:
        """An inequality between transport quantities (tolerance on the feature scale)."""
        return Inequality(
            name, float(lhs), float(rhs), self._tol(lhs, rhs, scale=self.feature_scale), why
        )

    def _loss(self, name: str, lhs: float, rhs: float, why: str) -> Inequality:
        """An inequality between risks (tolerance on the loss scale)."""
        return Inequality(
            name, float(lhs), float(rhs), self._tol(lhs, rhs, scale=self.loss_scale), why
        )

    def _transport_chain(self) -> list[Inequality]:
        """``W1 <= W1_labelled <= coupling_gap <= max_gap`` and ``W1 <= W2``."""
        feat = self._feat
        return [
            feat(
                "W1 <= W1_labelled",
                self.W1,
                self.W1_labelled,
                "dropping the label constraint of the joint (feature, label) transport "
                "can only lower the optimum",
            ),
            feat(
                "W1_labelled <= coupling_gap",
                self.W1_labelled,
                self.coupling_gap,
                "the identity coupling i <-> i preserves labels, so it is feasible",
            ),
            feat(
                "coupling_gap <= max_gap",
                self.coupling_gap,
                self.max_gap,
                "a mean is at most the maximum",
            ),
            feat("W1 <= W2", self.W1, self.W2, "Jensen: the W2-optimal plan costs >= W1 in L1"),
        ]

    def _risk_chain(self) -> list[Inequality]:
        """The risk gap against ``Lip`` times the transport terms (Theorem 4.1, eq. 10)."""
        loss, L = self._loss, self.lipschitz
        rs, rt = self.risk_student, self.risk_teacher
        return [
            loss(
                "|risk_S - risk_T| <= Lip * W1_labelled",
                abs(rs - rt),
                L * self.W1_labelled,
                "Kantorovich-Rubinstein per class: with the label fixed, the loss is "
                "Lip-Lipschitz in z",
            ),
            loss(
                "Thm4.1 step 1: risk_S <= risk_T + Lip * W1_labelled",
                rs,
                rt + L * self.W1_labelled,
                "Lemma 4.1 / first line of eq. 10, with the label-aware W1 and Lip scaling",
            ),
            loss(
                "Thm4.1 step 2: risk_T + Lip * W1_labelled <= risk_T + Lip * coupling_gap",
                rt + L * self.W1_labelled,
                rt + L * self.coupling_gap,
                "second line of eq. 10: (g_S, g_T) # mu is an admissible coupling",
            ),
            loss(
                "Thm4.1 step 3: risk_T + Lip * coupling_gap <= risk_T + Lip * max_gap",
                rt + L * self.coupling_gap,
                rt + L * self.max_gap,
                "third line of eq. 10: expectation <= supremum",
            ),
            loss(
                "|risk_S - risk_T| <= Lip * coupling_gap",
                abs(rs - rt),
                L * self.coupling_gap,
                "per-sample Lipschitz bound (EQUATIONS.md, Section 4)",
            ),
        ]

    def _rms_chain(self) -> list[Inequality]:
        """``W2 <= coupling_gap_rms``, ``coupling_gap <= coupling_gap_rms <= max_gap``."""
        feat = self._feat
        return [
            feat(
                "W2 <= coupling_gap_rms",
                self.W2,
                self.coupling_gap_rms,
                "the identity coupling is feasible for W2",
            ),
            feat(
                "coupling_gap <= coupling_gap_rms",
                self.coupling_gap,
                self.coupling_gap_rms,
                "Jensen (mean <= root mean square)",
            ),
            feat(
                "coupling_gap_rms <= max_gap",
                self.coupling_gap_rms,
                self.max_gap,
                "a root mean square is at most the maximum",
            ),
        ]

    def plain_w1_bound(self) -> Inequality:
        """The paper's literal first step with the plain feature ``W1`` (scaled by ``Lip``).

        ``|risk_S - risk_T| <= Lip * W1``.  **Informational only**: it is not part
        of :attr:`inequalities` and :func:`check_bounds` does not enforce it,
        because the plain ``W1`` ignores which label sits on which point and
        the inequality is false in general for a label-dependent loss.
        """
        rs, rt = self.risk_student, self.risk_teacher
        return Inequality(
            "paper literal (NOT guaranteed): |risk_S - risk_T| <= Lip * W1",
            abs(rs - rt),
            self.lipschitz * self.W1,
            self._tol(abs(rs - rt), self.lipschitz * self.W1, scale=self.loss_scale),
            "Lemma 4.1 with the label-blind W1; holds when the loss is a function of z alone",
        )

    def table(self) -> list[dict[str, Any]]:
        """One row per inequality: ``{name, lhs, rhs, slack, ratio, holds}``."""
        return [ineq.row() for ineq in self.inequalities]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict: every field, ``risk_gap``, and the inequalities."""
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            out[k] = int(v) if k in ("n", "d", "K", "n_classes") else float(v)
        out["risk_gap"] = self.risk_gap
        out["inequalities"] = [ineq.to_dict() for ineq in self.inequalities]
        out["plain_w1_bound"] = self.plain_w1_bound().to_dict()
        return out


def bound_report(
    zs: Any,
    zt: Any,
    y: Any,
    weight: Any,
    bias: Any = None,
    *,
    rtol: float = DEFAULT_RTOL,
) -> BoundReport:
    """Compute every quantity of the Theorem 4.1 chain for one batch.

    ``zs``, ``zt``: (n, d) student / teacher features of the same images;
    ``y``: (n,) labels in ``[0, K)``; ``weight`` (K, d), ``bias`` (K,) or
    ``None``: the fixed head ``h`` whose risks are compared (e.g. the
    teacher's classifier applied to both feature sets).  Returns a
    :class:`BoundReport`; pass it to :func:`check_bounds`.
    """
    zs, zt = _pair(zs, zt)
    n, d = zs.shape
    labels = _labels(y, n)
    w, b = _head(weight, bias, d)
    if not (isinstance(rtol, int | float) and math.isfinite(rtol) and rtol >= 0):
        raise ValueError(f"rtol must be a finite number >= 0; got {rtol!r}")

    dist = _pairwise_distances(zs, zt)
    rows = _row_distances(zs, zt)
    ce_s = _ce_terms(zs, labels, w, b)
    ce_t = _ce_terms(zt, labels, w, b)
    lip = lipschitz_ce_linear(w)
    feature_scale = float(dist.max())
    return BoundReport(
        n=int(n),
        d=int(d),
        K=int(w.shape[0]),
        n_classes=int(np.unique(labels).size),
        W1=_emd_wasserstein(dist, 1),
        W2=_emd_wasserstein(dist, 2),
        W1_labelled=labelled_wasserstein1(zs, zt, labels),
        coupling_gap=float(np.mean(rows)),
        coupling_gap_rms=float(np.sqrt(np.mean((rows / feature_scale) ** 2)) * feature_scale)
        if feature_scale > 0
        else 0.0,
        max_gap=float(np.max(rows)),
        risk_student=float(np.mean(ce_s)),
        risk_teacher=float(np.mean(ce_t)),
        lipschitz=lip,
        feature_scale=feature_scale,
        loss_scale=float(max(np.max(np.abs(ce_s)), np.max(np.abs(ce_t))) + lip * feature_scale),
        rtol=float(rtol),
    )


def check_bounds(
    report: BoundReport | Iterable[Inequality], *, raise_on_violation: bool = True
) -> list[Inequality]:
    """Return the violated inequalities; raise :class:`BoundViolation` if any and asked to.

    ``report`` is a :class:`BoundReport` (its inequalities are re-derived from
    its numbers) or any iterable of :class:`Inequality`.  Each inequality's
    ``holds`` is re-evaluated here from ``lhs``, ``rhs`` and ``tol`` (NaN never
    holds), so a violated inequality is never passed silently.  The paper's
    literal plain-W1 bound (:meth:`BoundReport.plain_w1_bound`) is not checked.
    """
    if isinstance(report, BoundReport):
        ineqs = report.inequalities
    else:
        ineqs = list(report)
        for i in ineqs:
            if not isinstance(i, Inequality):
                raise TypeError(f"check_bounds expects Inequality objects; got {type(i).__name__}")
    violated = [i for i in ineqs if not i.holds]
    if violated and raise_on_violation:
        raise BoundViolation(violated)
    return violated


# --------------------------------------------------------------------------- #
# Gaussians (eq. 6) and the sample-convergence helper
# --------------------------------------------------------------------------- #
def _gaussian(m: Any, S: Any, tag: str) -> tuple[np.ndarray, np.ndarray]:
    m = _to_numpy(m, f"m{tag}").astype(np.float64)
    S = _to_numpy(S, f"S{tag}").astype(np.float64)
    if m.ndim != 1 or m.size < 1:
        raise ValueError(f"m{tag} must be a 1-D mean vector of length d >= 1; got shape {m.shape}")
    d = m.shape[0]
    if S.shape != (d, d):
        raise ValueError(f"S{tag} must have shape (d, d) = ({d}, {d}); got shape {S.shape}")
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(S))):
        raise ValueError(f"m{tag} / S{tag} contain non-finite value(s)")
    scale = max(float(np.max(np.abs(S))), 1e-300)
    if not np.allclose(S, S.T, rtol=1e-10, atol=1e-12 * scale):
        raise ValueError(f"S{tag} must be symmetric; max |S - S^T| = {np.max(np.abs(S - S.T))}")
    S = 0.5 * (S + S.T)
    lam_min = float(np.linalg.eigvalsh(S).min())
    if lam_min < -1e-10 * scale:
        raise ValueError(f"S{tag} must be positive semi-definite; smallest eigenvalue {lam_min}")
    return m, S


def _psd_sqrtm(A: np.ndarray) -> np.ndarray:
    R = scipy.linalg.sqrtm(A)
    return np.real(np.asarray(R))


def _psd_sqrt_eigh(A: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((A + A.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_w2_squared(m1: Any, S1: Any, m2: Any, S2: Any, *, method: str = "scipy") -> float:
    """``W_2^2(N(m1, S1), N(m2, S2))`` in closed form (Bures-Wasserstein, paper eq. 6).

    ``||m1 - m2||^2 + tr(S1 + S2 - 2 (S2^{1/2} S1 S2^{1/2})^{1/2})`` (the inner matrix is
    symmetrised first), **squared**, with the matrix square roots of ``method``:
    ``"scipy"`` (:func:`scipy.linalg.sqrtm`, Schur method, real part; for full-rank
    covariances), ``"eigh"`` (symmetric eigendecomposition, eigenvalues clipped at 0; also
    for rank-deficient ones) or ``"pot"`` (:func:`ot.gaussian.bures_wasserstein_distance`,
    squared). Covariances must be symmetric positive semi-definite.
    """
    m1, S1 = _gaussian(m1, S1, "1")
    m2, S2 = _gaussian(m2, S2, "2")
    if m1.shape != m2.shape:
        raise ValueError(
            f"the two Gaussians must have the same dimension; got {m1.shape} and {m2.shape}"
        )
    if method == "pot":
        import ot

        return float(ot.gaussian.bures_wasserstein_distance(m1, m2, S1, S2)) ** 2
    roots = {"scipy": _psd_sqrtm, "eigh": _psd_sqrt_eigh}
    if method not in roots:
        raise ValueError(f"method={method!r}: expected 'scipy', 'eigh' or 'pot'")
    sqrt = roots[method]
    r2 = sqrt(S2)
    inner = r2 @ S1 @ r2
    inner = 0.5 * (inner + inner.T)
    cross = sqrt(inner)
    return float(np.sum((m1 - m2) ** 2) + np.trace(S1) + np.trace(S2) - 2.0 * np.trace(cross))


def gaussian_w2_closed_form(m1: Any, S1: Any, m2: Any, S2: Any) -> float:
    """``W_2(N(m1, S1), N(m2, S2))``: the square root of :func:`gaussian_w2_squared`
    (``method="scipy"``), **not squared** (a tiny negative ``W_2^2`` from rounding is
    clipped to 0)."""
    return math.sqrt(max(gaussian_w2_squared(m1, S1, m2, S2), 0.0))


def estimates_over_sizes(
    sizes: Sequence[int],
    repeats: int,
    sample: Callable[[int], tuple[Any, Any]],
    estimators: Mapping[str, Callable[[Any, Any], float]],
) -> dict[str, np.ndarray]:
    """The loop of a convergence study: ``values[name][r, j]`` is estimator ``name`` on the
    ``r``-th draw ``sample(sizes[j])`` (two samples of ``sizes[j]`` points), for each size in
    order and each of ``repeats`` draws; every estimator sees the same draws."""
    values = {name: np.zeros((int(repeats), len(sizes))) for name in estimators}
    for j, n in enumerate(sizes):
        for r in range(int(repeats)):
            a, b = sample(int(n))
            for name, estimate in estimators.items():
                values[name][r, j] = float(estimate(a, b))
    return values


def fit_rate(sizes: Any, errors: Any) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``log(error) = intercept + slope * log(n)``
    (the empirical convergence rate of an estimator over batch sizes ``n``)."""
    slope, intercept = np.polyfit(np.log(np.asarray(sizes, float)), np.log(errors), 1)
    return float(slope), float(intercept)


@dataclass(frozen=True)
class W2Convergence:
    """Result of :func:`sample_w2_convergence`.

    ``sizes[k]`` samples per Gaussian; ``mean[k]`` / ``std[k]``: mean and
    standard deviation over the repeats of the empirical ``W_2`` (not
    squared); ``abs_error[k]``: mean over repeats of
    ``|W_2_empirical - closed_form|``; ``closed_form``: eq. 6 value;
    ``slope`` / ``intercept``: least-squares fit of
    ``log(abs_error) = intercept + slope * log(n)`` (the empirical rate,
    ``slope ~ -1/2`` for distinct Gaussians in low dimension; the bias term
    decays like ``n^(-1/d)`` for larger ``d``).
    """

    sizes: list[int]
    mean: list[float]
    std: list[float]
    abs_error: list[float]
    closed_form: float
    slope: float
    intercept: float
    repeats: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (a NaN slope/intercept becomes ``None``)."""
        out = asdict(self)
        for k in ("slope", "intercept"):
            if math.isnan(out[k]):
                out[k] = None
        return out


def sample_w2_convergence(
    m1: Any,
    S1: Any,
    m2: Any,
    S2: Any,
    sizes: Sequence[int] = (50, 100, 200, 400, 800),
    repeats: int = 5,
    seed: int = 0,
) -> W2Convergence:
    """Empirical ``W_2`` between ``n`` samples of each Gaussian vs the closed form (eq. 6).

    For each ``n`` in ``sizes`` and each of ``repeats`` draws (one
    ``numpy.random.default_rng(seed)`` stream), sample ``n`` points from each
    Gaussian and compute :func:`empirical_wasserstein` with ``p=2`` (exact,
    ``ot.emd2``).  Sizes up to ~2000 in d = 2..10 take about a second per
    solve.  Returns a :class:`W2Convergence` (not squared distances).
    """
    m1, S1 = _gaussian(m1, S1, "1")
    m2, S2 = _gaussian(m2, S2, "2")
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be a non-empty list of positive integers; got {sizes}")
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    exact = gaussian_w2_closed_form(m1, S1, m2, S2)
    rng = np.random.default_rng(seed)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.multivariate_normal(m1, S1, size=n, method="eigh")
        return x, rng.multivariate_normal(m2, S2, size=n, method="eigh")

    def w2(x: np.ndarray, z: np.ndarray) -> float:
        return empirical_wasserstein(x, z, p=2)

    values = estimates_over_sizes(sizes, repeats, sample, {"W2": w2})["W2"]  # (repeats, sizes)
    columns = [np.ascontiguousarray(values[:, j]) for j in range(len(sizes))]
    means = [float(v.mean()) for v in columns]
    stds = [float(v.std()) for v in columns]
    errs = [float(np.mean(np.abs(v - exact))) for v in columns]
    e = np.asarray(errs)
    ok = e > 0
    if np.count_nonzero(ok) >= 2 and len(set(np.asarray(sizes)[ok].tolist())) >= 2:
        slope, intercept = fit_rate(np.asarray(sizes)[ok], e[ok])
    else:
        slope, intercept = float("nan"), float("nan")
    return W2Convergence(
        sizes=sizes,
        mean=means,
        std=stds,
        abs_error=errs,
        closed_form=float(exact),
        slope=float(slope),
        intercept=float(intercept),
        repeats=int(repeats),
        seed=int(seed),
    )
