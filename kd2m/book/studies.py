"""Numerical studies of the distribution metrics: everything the book's Metrics chapter computes.

The Metrics chapter (``book/metrics.ipynb``) holds parameters, narrative and calls into this
module; every number and figure it shows is computed here, on synthetic features whose true
distributions are known, so that each metric of :mod:`kd2m.metrics` can be checked against

* an independent reference implementation (POT's :mod:`ot.gaussian` and :func:`ot.emd2`,
  SciPy's :func:`scipy.linalg.sqrtm`, NumPy closed forms, from the formulas of the
  repository's notes on the mathematics, ``EQUATIONS.md``): the exact W_2^2 and the
  Bures-Wasserstein closed form of :mod:`kd2m.theory` (float64 NumPy, no code shared with
  :mod:`kd2m.metrics`), the Gaussian KL written here;
* the population value, when the metric is computed on samples of two known Gaussians.

Equation numbers (3)-(7) are those of the paper, restored in ``EQUATIONS.md``. All studies
compute in float64 and are seeded: the same arguments give the same numbers.

Studies:

* :func:`closed_form_claims`: each metric against its reference (exact, to round-off).
* :func:`convergence_study`: how the exact empirical :math:`W_2^2` of eq. (3) on ``n``
  samples of two Gaussians approaches the Bures-Wasserstein closed form of eq. (6) of the
  two true Gaussians, against the Gaussian plug-in estimate (eq. (6) on ML fits).
* :func:`kl_regularisation_study`: the value of the Gaussian KL, eq. (7), as the batch size
  ``n`` falls below the dimension ``d``: Ledoit-Wolf shrinkage against a ridge ``eps * I``.
* :func:`joint_beta_study`: the joint Wasserstein of eq. (5) as its label weight ``beta``
  goes from 0 (plain :math:`W_2^2`, eq. (3)) to large values (the class-conditional
  Wasserstein, eq. (4)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from kd2m import metrics as M
from kd2m import theory
from kd2m.book import style
from kd2m.metrics.empirical import joint_default_beta
from kd2m.train import resolve_device

__all__ = [
    "Claim",
    "GaussianPair",
    "class_conditional_claims",
    "baseline_claims",
    "claims_table",
    "closed_form_claims",
    "convergence_claims",
    "convergence_table",
    "convergence_study",
    "gaussian_kl_reference",
    "gaussian_pair",
    "joint_beta_claims",
    "joint_beta_study",
    "kl_regularisation_claims",
    "kl_table",
    "kl_regularisation_study",
    "labelled_batch",
    "metric_table",
    "ml_gaussian",
    "plot_convergence",
    "plot_joint_beta",
    "plot_kl_regularisation",
    "random_head",
    "table",
]

DTYPE = torch.float64


# ----------------------------------------------------------------------------------------------
# Claims: a statement, whether it holds, and the numbers behind it
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A checkable statement of the book.

    ``str(claim)`` is ``"<statement>: True"`` (or ``False``): a robust line for the cells
    that nbval compares. ``details`` holds the numbers behind it, shown elsewhere.
    """

    statement: str
    holds: bool
    details: dict = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        return f"{self.statement}: {bool(self.holds)}"


def _close(value: float, reference: float, rtol: float, atol: float = 0.0) -> bool:
    return bool(abs(value - reference) <= atol + rtol * abs(reference))


def _claim_close(
    statement: str, value: float, reference: float, rtol: float, atol: float = 0.0
) -> Claim:
    rel = abs(value - reference) / max(abs(reference), 1e-300)
    return Claim(
        statement,
        _close(value, reference, rtol, atol),
        {"kd2m": value, "reference": reference, "relative error": rel, "rtol": rtol},
    )


def table(rows: list[dict], *, caption: str | None = None):
    """``rows`` (a list of dicts) as a styled pandas table for the book
    (:func:`kd2m.book.style.styled`).

    No index column, one number format per column (fixed point, or scientific when a
    column spans many decades), missing values blank, a column with the same value on
    every row said once in the caption (after ``caption``). pandas is imported lazily: it
    belongs to the ``book`` extra, not to the core package.
    """
    import pandas as pd

    return style.styled(pd.DataFrame(rows), caption=caption)


# ----------------------------------------------------------------------------------------------
# Synthetic features
# ----------------------------------------------------------------------------------------------


def _device(device) -> torch.device:
    """``"auto"`` (CUDA if available, else the CPU: never Apple's MPS, which has no float64)
    or any ``torch.device`` spelling."""
    return resolve_device(device, allow_mps=False)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _random_spd(d: int, gen: torch.Generator, low: float, high: float) -> torch.Tensor:
    """A random SPD matrix with eigenvalues uniform in [low, high] and a random eigenbasis."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=DTYPE))
    q = q * torch.sign(torch.diagonal(r))  # Haar-distributed orthogonal matrix
    eig = low + (high - low) * torch.rand(d, generator=gen, dtype=DTYPE)
    return (q * eig) @ q.T


@dataclass(frozen=True)
class GaussianPair:
    """Two known Gaussians, N(m_s, C_s) ("student") and N(m_t, C_t) ("teacher")."""

    m_s: torch.Tensor
    C_s: torch.Tensor
    m_t: torch.Tensor
    C_t: torch.Tensor

    @property
    def d(self) -> int:
        return int(self.m_s.shape[0])

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` independent samples of each Gaussian, as two (n, d) float64 tensors."""
        ls = torch.linalg.cholesky(self.C_s)
        lt = torch.linalg.cholesky(self.C_t)
        zs = self.m_s + torch.randn(n, self.d, generator=gen, dtype=DTYPE) @ ls.T
        zt = self.m_t + torch.randn(n, self.d, generator=gen, dtype=DTYPE) @ lt.T
        return zs, zt

    def wasserstein(self) -> float:
        """The population W_2^2 between the two Gaussians (eq. (6), reference implementation)."""
        return theory.gaussian_w2_squared(self.m_s, self.C_s, self.m_t, self.C_t)

    def kl(self) -> float:
        """The population KL(N_s || N_t) (eq. (7), reference implementation)."""
        return gaussian_kl_reference(self.m_s, self.C_s, self.m_t, self.C_t)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(m_s, C_s, m_t, C_t)`` as float64 numpy arrays (for :mod:`kd2m.theory`)."""
        m_s, C_s, m_t, C_t = (x.numpy() for x in (self.m_s, self.C_s, self.m_t, self.C_t))
        return m_s, C_s, m_t, C_t


def gaussian_pair(
    d: int, seed: int, *, mean_shift: float = 1.0, spectrum: tuple[float, float] = (0.5, 2.0)
) -> GaussianPair:
    """Two random Gaussians in R^d whose means are ``mean_shift`` apart.

    Covariances have eigenvalues uniform in ``spectrum`` and independent random eigenbases.
    The one generator of Gaussian pairs of the book (the Metrics and Theory chapters).
    """
    if int(d) < 1:
        raise ValueError(f"d must be >= 1; got {d}")
    gen = _generator(seed)
    direction = torch.randn(d, generator=gen, dtype=DTYPE)
    direction = direction / direction.norm()
    m_s = torch.zeros(d, dtype=DTYPE)
    m_t = mean_shift * direction
    return GaussianPair(m_s, _random_spd(d, gen, *spectrum), m_t, _random_spd(d, gen, *spectrum))


def labelled_batch(
    n: int,
    d: int,
    n_classes: int,
    seed: int,
    *,
    class_spread: float = 1.0,
    alignment: float = 0.0,
    device="cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A KD-like minibatch: the same ``n`` "images" seen by a student and a teacher.

    Labels are balanced (``n // n_classes`` per class, the remainder to the first classes).
    Features are class means plus independent standard Gaussian noise, on each side. The
    teacher's class means are ``class_spread`` times standard Gaussian vectors; the
    student's are ``alignment`` times the teacher's plus ``1 - alignment`` times its own
    random means: ``alignment = 1`` is a student whose class structure is the teacher's,
    ``alignment = 0`` one whose classes sit elsewhere (as before distillation). Returns
    ``(zs, zt, y)``, float64 features and int64 labels, on ``device`` (drawn on the CPU,
    so the numbers do not depend on the device; ``"auto"`` picks CUDA, else the CPU).
    """
    if n < n_classes:
        raise ValueError(f"n={n} must be at least n_classes={n_classes}")
    gen = _generator(seed)
    y = torch.arange(n) % n_classes
    y = y[torch.randperm(n, generator=gen)]
    means_t = class_spread * torch.randn(n_classes, d, generator=gen, dtype=DTYPE)
    own = class_spread * torch.randn(n_classes, d, generator=gen, dtype=DTYPE)
    means_s = alignment * means_t + (1 - alignment) * own
    zt = means_t[y] + torch.randn(n, d, generator=gen, dtype=DTYPE)
    zs = means_s[y] + torch.randn(n, d, generator=gen, dtype=DTYPE)
    device = _device(device)
    return zs.to(device), zt.to(device), y.to(device)


# ----------------------------------------------------------------------------------------------
# Reference implementations (NumPy / SciPy / POT), independent of kd2m.metrics
# ----------------------------------------------------------------------------------------------


def _np(x) -> np.ndarray:
    return theory.to_float64(x)


def ml_gaussian(z) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood Gaussian fit: mean and biased (1/n) covariance, as float64 NumPy."""
    z = _np(z)
    m = z.mean(axis=0)
    zc = z - m
    return m, zc.T @ zc / z.shape[0]


def gaussian_kl_reference(m_s, C_s, m_t, C_t) -> float:
    """KL(N(m_s, C_s) || N(m_t, C_t)), eq. (7), in float64 NumPy (full-rank covariances).

    ``1/2 [tr(C_t^-1 C_s) + (m_t - m_s)^T C_t^-1 (m_t - m_s) - d + ln det C_t - ln det C_s]``.
    """
    m_s, C_s, m_t, C_t = (_np(x) for x in (m_s, C_s, m_t, C_t))
    d = m_s.shape[0]
    dm = m_t - m_s
    _, logdet_t = np.linalg.slogdet(C_t)
    _, logdet_s = np.linalg.slogdet(C_s)
    return float(
        0.5
        * (
            np.trace(np.linalg.solve(C_t, C_s))
            + dm @ np.linalg.solve(C_t, dm)
            - d
            + logdet_t
            - logdet_s
        )
    )


def _emd2_reference(zs, zt) -> float:
    """Exact W_2^2 between uniform empirical measures, eq. (3), by POT's ``ot.emd2``
    (:func:`kd2m.theory.empirical_wasserstein`, squared)."""
    return theory.empirical_wasserstein(zs, zt, p=2) ** 2


def _value(t) -> float:
    return float(t.detach().cpu()) if isinstance(t, torch.Tensor) else float(t)


# ----------------------------------------------------------------------------------------------
# 1. Every metric on one batch
# ----------------------------------------------------------------------------------------------


def random_head(d: int, n_classes: int, seed: int, *, device="cpu") -> torch.Tensor:
    """A fixed random linear classifier ``W`` (d x K): logits ``h(z) = z W``, on ``device``."""
    gen = _generator(seed + 3)
    return (torch.randn(d, n_classes, generator=gen, dtype=DTYPE) / d**0.5).to(_device(device))


def metric_table(
    zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, head: torch.Tensor | None = None
) -> list[dict]:
    """One row per metric of :data:`kd2m.metrics.METRICS`, default options.

    Each row: the registry name, its Table 1 row (``-`` outside Table 1), the registry's
    description and the value on the batch ``(zs, zt, y)`` through
    :func:`kd2m.metrics.get_metric`. Metrics on logits (``hinton``) get ``zs @ head`` and
    ``zt @ head`` (default: :func:`random_head`); metrics that read predicted probabilities
    (``joint_wasserstein``) get their softmax, as the trainer passes them.
    """
    rows_of = {name: row for row, name in M.TABLE1_METRICS.items()}
    if head is None:
        head = random_head(zs.shape[1], int(y.max()) + 1, 0, device=zs.device)
    rows = []
    for name, description in M.METRICS.items():
        metric = M.get_metric(name)
        probs = {}
        if metric.needs_student_probs:
            probs["ps"] = torch.softmax(zs @ head, dim=1)
        if metric.needs_teacher_probs:
            probs["pt"] = torch.softmax(zt @ head, dim=1)
        if metric.inputs == "logits":
            value = metric(zs @ head, zt @ head, y, **probs)
        else:
            value = metric(zs, zt, y, **probs)
        rows.append(
            {
                "metric": name,
                "Table 1 row": rows_of.get(name, "-"),
                "description": description,
                "value": _value(value),
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------
# 2. Closed forms against references
# ----------------------------------------------------------------------------------------------


def _numbers(details: dict) -> str:
    """The numbers behind a claim as one short text (4 significant digits)."""

    def fmt(v) -> str:
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, int | float | np.floating):
            return f"{float(v):.4g}"
        if isinstance(v, np.ndarray | list | tuple):
            return "[" + ", ".join(fmt(x) for x in np.ravel(v)) + "]"
        return str(v)

    names = {"kd2m": "kd2m", "reference": "ref.", "relative error": "rel. err."}
    text = ", ".join(f"{names.get(k, k)} {fmt(v)}" for k, v in details.items())
    return text.replace("e-", "e\u2212")  # a minus sign: no line break inside a number


def claims_table(claims: list[Claim]) -> list[dict]:
    """The numbers behind ``claims``: one row per claim (``claim``, ``holds`` and
    ``numbers``, the claim's details as one short text)."""
    return [
        {"claim": c.statement, "holds": bool(c.holds), "numbers": _numbers(dict(c.details))}
        for c in claims
    ]


def closed_form_claims(d: int, seed: int, *, rtol: float = 1e-6, device="cpu") -> list[Claim]:
    """Each closed form of :mod:`kd2m.metrics` against an independent implementation.

    Draws ``n = 4 d`` samples of each of two random Gaussians (:func:`gaussian_pair`), so
    that the ML covariances have full rank and SciPy's ``sqrtm`` and the unregularised KL
    (``shrinkage=None, eps=0``) are well defined; the first ``d // 2`` rows of each give
    a rank-deficient pair that checks the ``n < d`` route of eq. (6) (nuclear norm of an
    n x n matrix) against an eigendecomposition reference. The metrics run on ``device``;
    the references on the CPU in float64.
    """
    gen = _generator(seed + 4)
    n = 4 * d
    zs, zt = (z.to(_device(device)) for z in gaussian_pair(d, seed).sample(n, gen))
    m_s, C_s = ml_gaussian(zs)
    m_t, C_t = ml_gaussian(zt)
    g1 = _value(M.gaussian_wasserstein(zs, zt))
    g1_diag = _value(M.gaussian_wasserstein(zs, zt, diagonal=True))
    diag_ref = float(
        np.sum((m_s - m_t) ** 2) + np.sum((np.sqrt(np.diag(C_s)) - np.sqrt(np.diag(C_t))) ** 2)
    )
    k = max(2, d // 2)
    g1_low = _value(M.gaussian_wasserstein(zs[:k], zt[:k]))
    low_ref = theory.gaussian_w2_squared(*ml_gaussian(zs[:k]), *ml_gaussian(zt[:k]), method="eigh")
    kl = _value(M.gaussian_kl(zs, zt, shrinkage=None, eps=0.0))
    kl_diag = _value(M.gaussian_kl(zs, zt, diagonal=True, shrinkage=None, eps=0.0))
    kl_diag_ref = gaussian_kl_reference(m_s, np.diag(np.diag(C_s)), m_t, np.diag(np.diag(C_t)))
    w = _value(M.wasserstein(zs, zt))
    perm = torch.randperm(n, generator=_generator(seed + 5)).to(zs.device)
    return [
        _claim_close(
            "gaussian_wasserstein (eq. 6) matches POT ot.gaussian",
            g1,
            theory.gaussian_w2_squared(m_s, C_s, m_t, C_t, method="pot"),
            rtol,
        ),
        _claim_close(
            "gaussian_wasserstein (eq. 6) matches scipy sqrtm",
            g1,
            theory.gaussian_w2_squared(m_s, C_s, m_t, C_t, method="scipy"),
            rtol,
        ),
        _claim_close(
            "gaussian_wasserstein (eq. 6) with n < d matches the eigh reference",
            g1_low,
            low_ref,
            1e-5,
        ),
        _claim_close(
            "diagonal gaussian_wasserstein = ||m_S-m_T||^2 + ||sigma_S-sigma_T||^2",
            g1_diag,
            diag_ref,
            rtol,
        ),
        _claim_close(
            "gaussian_kl (eq. 7, no shrinkage) matches the NumPy closed form",
            kl,
            gaussian_kl_reference(m_s, C_s, m_t, C_t),
            rtol,
        ),
        _claim_close(
            "diagonal gaussian_kl matches the diagonal closed form", kl_diag, kl_diag_ref, rtol
        ),
        _claim_close("wasserstein (eq. 3) matches POT ot.emd2", w, _emd2_reference(zs, zt), rtol),
        Claim(
            "wasserstein of a batch against a permutation of itself is 0",
            abs(_value(M.wasserstein(zs, zs[perm]))) <= 1e-9 * max(1.0, w),
        ),
    ]


def baseline_claims(
    zs: torch.Tensor,
    zt: torch.Tensor,
    head: torch.Tensor,
    *,
    temperature: float = 4.0,
    rtol: float = 1e-6,
) -> list[Claim]:
    """MMD and Hinton's KD, the two baselines outside Table 1, against their definitions.

    ``hinton`` against ``T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T))`` in NumPy
    (teacher first); ``mmd`` is 0 on identical batches and positive on different ones.
    """
    from scipy.special import log_softmax

    ls, lt = _np(zs @ head) / temperature, _np(zt @ head) / temperature
    log_ps, log_pt = log_softmax(ls, axis=1), log_softmax(lt, axis=1)
    ref = float(temperature**2 * np.mean(np.sum(np.exp(log_pt) * (log_pt - log_ps), axis=1)))
    value = _value(M.hinton(zs @ head, zt @ head, temperature=temperature))
    return [
        _claim_close(
            "hinton_kd matches T^2 KL(teacher || student) on softened logits", value, ref, rtol
        ),
        Claim(
            "mmd of a batch with itself is 0 and mmd(zs, zt) > 0",
            abs(_value(M.mmd(zs, zs))) <= 1e-12 and _value(M.mmd(zs, zt)) > 0,
        ),
    ]


def class_conditional_claims(
    zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, *, rtol: float = 1e-6
) -> list[Claim]:
    """The class-conditional metrics are the *average* over the classes present (eq. (4)).

    Checks :func:`kd2m.metrics.class_wasserstein` against the mean of
    :func:`ot.emd2` per class, and :func:`kd2m.metrics.class_gaussian` against the
    mean of the per-class references (eq. (6) by SciPy, eq. (7) by NumPy, on ML fits).
    """
    classes = torch.unique(y).tolist()
    e2 = _value(M.class_wasserstein(zs, zt, y))
    e2_ref = float(np.mean([_emd2_reference(zs[y == c], zt[y == c]) for c in classes]))
    g3 = _value(M.class_gaussian(zs, zt, y, divergence="wasserstein"))
    g3_ref = float(
        np.mean(
            [
                theory.gaussian_w2_squared(
                    *ml_gaussian(zs[y == c]), *ml_gaussian(zt[y == c]), method="eigh"
                )
                for c in classes
            ]
        )
    )
    return [
        _claim_close(
            "class_conditional_wasserstein (eq. 4) = mean over classes of eq. 3", e2, e2_ref, rtol
        ),
        _claim_close("class_conditional_gaussian = mean over classes of eq. 6", g3, g3_ref, 1e-5),
    ]


# ----------------------------------------------------------------------------------------------
# 3. Convergence of the empirical W_2^2 with the batch size
# ----------------------------------------------------------------------------------------------


def convergence_study(d: int, n_max: int, repeats: int, seed: int, *, n_min: int = 16) -> dict:
    """Empirical and Gaussian plug-in estimates of W_2^2 between two Gaussians, against truth.

    For ``n`` = ``n_min``, ``2 n_min``, ... up to ``n_max`` and ``repeats`` independent draws
    of ``n`` samples from each of two fixed Gaussians in R^d (:func:`gaussian_pair`), computes

    * the exact empirical W_2^2 of eq. (3) (:func:`kd2m.metrics.wasserstein`), and
    * the Gaussian plug-in W_2^2, eq. (6) on the ML fits
      (:func:`kd2m.metrics.gaussian_wasserstein`),

    and their absolute error to the population value (eq. (6) on the true parameters). The
    rate is the least-squares slope of log mean |error| against log n.

    Returns a dict with ``sizes``, ``truth``, per-estimator ``values`` (repeats x sizes),
    ``mean_abs_error``, ``rate`` and ``intercept``.
    """
    if n_max < 2 * n_min:
        raise ValueError(f"n_max={n_max} must be at least 2 * n_min={2 * n_min}")
    pair = gaussian_pair(d, seed)
    truth = pair.wasserstein()
    sizes = n_min * 2 ** np.arange(int(math.log2(n_max / n_min)) + 1)
    gen = _generator(seed + 1)
    estimators = {
        "empirical W2^2 (eq. 3)": M.wasserstein,
        "Gaussian plug-in W2^2 (eq. 6)": M.gaussian_wasserstein,
    }
    values = theory.estimates_over_sizes(
        [int(n) for n in sizes],
        repeats,
        lambda n: pair.sample(n, gen),
        {name: (lambda zs, zt, fn=fn: _value(fn(zs, zt))) for name, fn in estimators.items()},
    )
    result = {
        "d": d,
        "sizes": sizes,
        "truth": truth,
        "repeats": repeats,
        "values": values,
        "mean_abs_error": {},
        "rate": {},
        "intercept": {},
    }
    for name, v in values.items():
        err = np.abs(v - truth).mean(axis=0)
        result["mean_abs_error"][name] = err
        result["rate"][name], result["intercept"][name] = theory.fit_rate(sizes, err)
    return result


def convergence_table(result: dict) -> list[dict]:
    """Mean |error| per batch size and estimator, as table rows; the fitted rate of each
    estimator is a column with one value (:func:`table` says it once, in the caption)."""
    short = {"empirical W2^2 (eq. 3)": "empirical", "Gaussian plug-in W2^2 (eq. 6)": "plug-in"}
    rates = {
        f"fitted rate, {short.get(name, name)}": f"n^{r:.2f}" for name, r in result["rate"].items()
    }
    return [
        {"n": int(n)}
        | {
            f"|error|, {name.replace('^2', '²')}": float(err[j])
            for name, err in result["mean_abs_error"].items()
        }
        | rates
        for j, n in enumerate(result["sizes"])
    ]


def convergence_claims(result: dict, *, empirical_range=(-0.8, -0.2)) -> list[Claim]:
    """The claims of the convergence study: the fitted rates and who is closer to the truth."""
    emp, gau = "empirical W2^2 (eq. 3)", "Gaussian plug-in W2^2 (eq. 6)"
    r_emp, r_gau = result["rate"][emp], result["rate"][gau]
    lo, hi = empirical_range
    e_emp, e_gau = result["mean_abs_error"][emp], result["mean_abs_error"][gau]
    return [
        Claim(f"empirical W2 rate in [{lo}, {hi}]", lo <= r_emp <= hi, {"rate": r_emp}),
        Claim("Gaussian plug-in W2 rate in [-1.2, -0.4]", -1.2 <= r_gau <= -0.4, {"rate": r_gau}),
        Claim(
            "empirical W2^2 error decreases from the smallest to the largest batch",
            bool(e_emp[-1] < e_emp[0]),
            {"first": e_emp[0], "last": e_emp[-1]},
        ),
        Claim(
            "Gaussian data: the plug-in is closer to the truth at the largest batch",
            bool(e_gau[-1] < e_emp[-1]),
            {"plug-in": e_gau[-1], "empirical": e_emp[-1]},
        ),
    ]


def plot_convergence(result: dict):
    """Log-log plot of mean |estimate - truth| against the batch size, with fitted rates."""
    with style.figure_style():
        fig, ax = style.new_figure(height=3.6)
        sizes = result["sizes"]
        for (name, err), marker, color in zip(
            result["mean_abs_error"].items(), "os", style.OKABE_ITO, strict=False
        ):
            slope, icpt = result["rate"][name], result["intercept"][name]
            ax.loglog(
                sizes,
                err,
                marker=marker,
                ls="none",
                color=color,
                label=f"{name}: fitted rate $n^{{{slope:.2f}}}$",
            )
            ax.loglog(sizes, np.exp(icpt) * sizes**slope, color=color, lw=1)
        ax.set_xlabel("batch size n (samples per distribution)")
        ax.set_ylabel(r"mean $|\widehat{W}_2^2 - W_2^2|$")
        ax.set_title(f"two Gaussians in d = {result['d']}, true $W_2^2$ = {result['truth']:.3f}")
        ax.legend(loc="lower left")
        ax.grid(True, which="major", alpha=0.3)
        return style.finish(fig, close=True)


# ----------------------------------------------------------------------------------------------
# 4. Keeping the Gaussian KL finite when n <= d
# ----------------------------------------------------------------------------------------------


def kl_regularisation_study(d: int, ratios, seed: int, *, eps=(1e-2, 1e-4)) -> dict:
    """KL(N_S || N_T), eq. (7), on ML fits of ``n = ratio * d`` samples, three ways.

    * ``shrinkage="ledoit-wolf"`` (the default of :func:`kd2m.metrics.gaussian_kl`),
    * a ridge ``eps * I`` on each covariance, no shrinkage, for each ``eps``,

    against the population KL of the two true Gaussians (:func:`gaussian_pair`). When
    ``n <= d`` the ML covariance is singular and the unregularised KL is infinite; the ridge
    makes it finite but its value then grows like ``1 / eps``.
    """
    pair = gaussian_pair(d, seed)
    gen = _generator(seed + 2)
    ratios = np.asarray(ratios, dtype=float)
    sizes = np.maximum(2, np.round(ratios * d)).astype(int)
    values = {"Ledoit-Wolf shrinkage": []}
    values |= {f"ridge eps={e:g}": [] for e in eps}
    for n in sizes:
        zs, zt = pair.sample(int(n), gen)
        values["Ledoit-Wolf shrinkage"].append(_value(M.gaussian_kl(zs, zt)))
        for e in eps:
            values[f"ridge eps={e:g}"].append(_value(M.gaussian_kl(zs, zt, shrinkage=None, eps=e)))
    return {
        "d": d,
        "ratios": ratios,
        "sizes": sizes,
        "truth": pair.kl(),
        "eps": tuple(eps),
        "values": {k: np.asarray(v) for k, v in values.items()},
    }


def kl_table(result: dict) -> list[dict]:
    """One row per batch size: n / d, n, the KL of each regularisation and the population KL."""
    return [
        {"n / d": float(r), "n": int(n)}
        | {f"KL, {name}": float(v[i]) for name, v in result["values"].items()}
        | {"population KL": result["truth"]}
        for i, (r, n) in enumerate(zip(result["ratios"], result["sizes"], strict=True))
    ]


def kl_regularisation_claims(result: dict) -> list[Claim]:
    """Claims: LW stays finite and moderate; below n = d the ridge value is set by eps."""
    lw = result["values"]["Ledoit-Wolf shrinkage"]
    e_big, e_small = max(result["eps"]), min(result["eps"])
    r_big = result["values"][f"ridge eps={e_big:g}"]
    r_small = result["values"][f"ridge eps={e_small:g}"]
    below = result["ratios"] < 1
    truth = result["truth"]
    ratio_below = r_small[below] / r_big[below]
    return [
        Claim("Ledoit-Wolf KL is finite at every n/d", bool(np.all(np.isfinite(lw)))),
        Claim(
            "Ledoit-Wolf KL stays within a factor 10 of the population KL at every n/d",
            bool(np.all((lw > truth / 10) & (lw < truth * 10))),
        ),
        Claim(
            f"for n < d, dividing the ridge eps by {e_big / e_small:g} multiplies KL by > 10",
            bool(below.any() and np.all(ratio_below > 10)),
            {"ratios": ratio_below},
        ),
        Claim(
            "for n < d, the ridge KL exceeds 10x the population KL",
            bool(below.any() and np.all(r_small[below] > 10 * truth)),
        ),
    ]


def plot_kl_regularisation(result: dict):
    """KL value against n / d (log-log), per regularisation, with the population KL."""
    with style.figure_style():
        fig, ax = style.new_figure(height=3.6)
        for (name, v), marker in zip(result["values"].items(), "o^v<>", strict=False):
            ax.loglog(result["ratios"], v, marker=marker, label=name)
        ax.axhline(result["truth"], color="k", ls="--", lw=1, label="population KL")
        ax.axvline(1.0, color="grey", ls=":", lw=1)
        ax.set_xlabel("n / d (batch size over feature dimension)")
        ax.set_ylabel(r"KL$(\mathcal{N}_S \,\|\, \mathcal{N}_T)$ on ML fits")
        ax.set_title(f"Gaussian KL (eq. 7), d = {result['d']}")
        ax.legend(loc="upper right")
        ax.grid(True, which="major", alpha=0.3)
        return style.finish(fig, close=True)


# ----------------------------------------------------------------------------------------------
# 5. The label weight beta of the joint Wasserstein
# ----------------------------------------------------------------------------------------------


def joint_beta_study(
    zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, *, n_betas: int = 14
) -> dict:
    """The joint Wasserstein of eq. (5), one-hot label cost, as a function of ``beta``.

    With the same labels on both sides and the squared one-hot distance (2 between different
    labels, 0 otherwise), ``beta = 0`` gives the plain W_2^2 of eq. (3), and any
    ``beta >= max_ij ||zs_i - zt_j||^2 / 2`` forbids moving mass between classes: the value
    is then the class-size-weighted mean of the per-class W_2^2, which equals the
    class-conditional Wasserstein of eq. (4) (an unweighted mean) when the classes are
    balanced. ``betas``: 0, then ``n_betas`` log-spaced values from 1e-3 times the mean
    feature cost to that upper bound; ``default_beta`` is the default of
    :func:`kd2m.metrics.joint_wasserstein` (the teacher's mean squared pairwise distance,
    :func:`kd2m.metrics.empirical.joint_default_beta`).
    """
    w = _value(M.wasserstein(zs, zt))
    e2 = _value(M.class_wasserstein(zs, zt, y))
    classes, counts = torch.unique(y, return_counts=True)
    per_class = np.array([_value(M.wasserstein(zs[y == c], zt[y == c])) for c in classes])
    weighted = float(np.sum(per_class * counts.cpu().numpy() / counts.sum().item()))
    cost = torch.cdist(zs, zt).pow(2)
    mean_cost, max_cost = float(cost.mean()), float(cost.max())
    betas = np.concatenate([[0.0], np.geomspace(1e-3 * mean_cost, max_cost / 2, n_betas)])
    values = np.array(
        [_value(M.joint_wasserstein(zs, zt, y, beta=float(b), label_cost="onehot")) for b in betas]
    )
    default = _value(M.joint_wasserstein(zs, zt, y, label_cost="onehot"))
    default_beta = _value(joint_default_beta(zt))
    return {
        "betas": betas,
        "values": values,
        "wasserstein": w,
        "class_conditional": e2,
        "class_weighted": weighted,
        "default_beta": default_beta,
        "default_value": default,
        "balanced": bool(counts.min() == counts.max()),
    }


def joint_beta_claims(result: dict, *, rtol: float = 1e-6) -> list[Claim]:
    """Claims: the two ends of the beta range, and monotonicity in beta."""
    v = result["values"]
    return [
        _claim_close(
            "joint_wasserstein at beta=0 equals wasserstein (eq. 3)",
            float(v[0]),
            result["wasserstein"],
            rtol,
        ),
        _claim_close(
            "joint_wasserstein at the largest beta = weighted mean of per-class W2^2",
            float(v[-1]),
            result["class_weighted"],
            rtol,
        ),
        _claim_close(
            "that limit is within 1% of class_conditional_wasserstein (eq. 4)",
            result["class_weighted"],
            result["class_conditional"],
            1e-2,
        ),
        Claim(
            "joint_wasserstein is non-decreasing in beta",
            bool(np.all(np.diff(v) >= -1e-9 * max(1.0, abs(v).max()))),
        ),
    ]


def plot_joint_beta(result: dict):
    """Joint Wasserstein against beta > 0 (log x axis), between its two limits."""
    c = style.OKABE_ITO
    with style.figure_style():
        fig, ax = style.new_figure(height=3.6)
        betas = result["betas"]
        positive = betas > 0  # beta = 0 is the horizontal line of eq. (3)
        ax.semilogx(
            betas[positive],
            result["values"][positive],
            marker="o",
            color=c[0],
            label=r"joint $W$ (eq. 5), one-hot $\ell_Y$",
        )
        ax.axhline(
            result["wasserstein"],
            color=c[1],
            ls="--",
            lw=1.5,
            label=r"$W_2^2$ (eq. 3) = joint $W$ at $\beta = 0$",
        )
        ax.axhline(
            result["class_conditional"],
            color=c[2],
            ls="-.",
            lw=1.5,
            label=r"class-conditional $W$ (eq. 4)",
        )
        ax.plot(
            [result["default_beta"]],
            [result["default_value"]],
            marker="*",
            ms=12,
            ls="none",
            color=c[3],
            label=r"default $\beta$ = teacher's mean squared pairwise distance",
        )
        ax.set_xlabel(r"label weight $\beta$")
        ax.set_ylabel("value")
        ax.set_title("joint Wasserstein between eq. 3 and eq. 4")
        ax.legend(loc="center left")
        ax.grid(True, which="major", alpha=0.3)
        return style.finish(fig, close=True)
