"""Computations and figures of the book's Theory chapter (``book/theory.ipynb``).

The exact quantities of Lemma 4.1 / Theorem 4.1 live in :mod:`kd2m.theory`; this module
arranges them for the chapter:

* **synthetic part**: two Gaussians with a closed-form ``W_2`` (paper eq. 6) and a plot of
  the empirical estimator's error against ``n`` (:func:`kd2m.book.studies.gaussian_pair`,
  :func:`convergence_figure`); synthetic teacher/student features with a random linear
  head (:func:`synthetic_features`, :func:`synthetic_sweep`, :func:`sweep_figure`); the
  example on which the paper's label-blind ``W_1`` fails (:func:`swapped_labels_example`);
* **trained part**: the teacher's head ``h_T = (W, b)`` (:func:`teacher_head`), the stored
  test features of a run (:func:`monitor_arrays`), one :class:`~kd2m.theory.BoundReport` per
  epoch (:func:`reports_over_epochs`), tables (:func:`bound_table`, :func:`epoch_frame`,
  :func:`summary_frame`), the figure over epochs (:func:`plot_bounds_over_epochs`) and the
  check over everything (:func:`violations`).

Theorem 4.1 is about a **fixed** hypothesis ``h`` applied to both feature distributions.
In the trained part ``h`` is the teacher's head: ``R_{P_T}(h_T)`` is the teacher's own risk
on the test images, ``R_{P_S}(h_T)`` the risk of the student's features read by the
teacher's head (the student's own head is not ``h``). Everything is computed in float64
numpy; nothing here trains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kd2m import theory
from kd2m.book import style
from kd2m.data import stratified_counts

__all__ = [
    "EPOCH_QUANTITIES",
    "all_reports_hold",
    "bound_styled",
    "tightness_glue",
    "bound_table",
    "centred_lipschitz",
    "convergence_figure",
    "convergence_frame",
    "convergence_styled",
    "crosscheck_styled",
    "epoch_frame",
    "epoch_styled",
    "head_accuracy",
    "looseness_ladder",
    "looseness_frame",
    "looseness_styled",
    "monitor_arrays",
    "per_sample_ce",
    "plot_bounds_over_epochs",
    "realised_lipschitz",
    "report_extras",
    "setup_text",
    "reports_over_epochs",
    "summary_frame",
    "summary_styled",
    "sweep_figure",
    "sweep_styled",
    "swapped_labels_example",
    "synthetic_features",
    "synthetic_sweep",
    "teacher_head",
    "tightness_text",
    "violations",
    "w2_crosscheck",
]

EPOCH_QUANTITIES = (
    "W1",
    "W1_labelled",
    "coupling_gap",
    "max_gap",
    "abs_risk_gap",
    "lip_W1_labelled",
)
"""Columns of :func:`epoch_frame` drawn by :func:`plot_bounds_over_epochs`."""


# --------------------------------------------------------------------------- #
# Small helpers on a fixed linear head
# --------------------------------------------------------------------------- #
_f64 = theory.to_float64
per_sample_ce = theory.per_sample_ce  # re-exported: the chapter's helpers read it here


def head_accuracy(z: Any, y: Any, weight: Any, bias: Any = None) -> float:
    """Accuracy of the linear head ``argmax(W z + b)`` on the rows of ``z``."""
    z, w = _f64(z), _f64(weight)
    b = np.zeros(w.shape[0]) if bias is None else _f64(bias)
    y = np.asarray(_f64(y), dtype=np.int64)
    return float(np.mean(np.argmax(z @ w.T + b, axis=1) == y))


def centred_lipschitz(weight: Any) -> float:
    """``sqrt(2) * ||W - 1 w_bar^T||_2`` with ``w_bar`` the mean row of ``W``: a Lipschitz
    constant of ``z -> CE(W z + b, y)`` at most :func:`kd2m.theory.lipschitz_ce_linear`.

    Why it is valid: the gradient is ``W^T (p - e_y)`` and ``1^T (p - e_y) = 0``, so
    ``W^T (p - e_y) = (W - 1 w_bar^T)^T (p - e_y)`` and ``||p - e_y|| <= sqrt(2)``.
    Shown in the chapter only, to measure how much of the bound's looseness the crude
    constant explains; the checks use the constant of :mod:`kd2m.theory`.
    """
    w = _f64(weight)
    return float(math.sqrt(2.0) * np.linalg.norm(w - w.mean(axis=0, keepdims=True), ord=2))


def realised_lipschitz(zs: Any, zt: Any, y: Any, weight: Any, bias: Any = None) -> float:
    """``max_i |CE(h(zs_i), y_i) - CE(h(zt_i), y_i)| / ||zs_i - zt_i||`` over pairs with
    ``zs_i != zt_i``: the largest slope of the loss actually met on the identity coupling
    (a lower bound on the true Lipschitz constant; 0 when every pair coincides)."""
    zs, zt = _f64(zs), _f64(zt)
    d = np.linalg.norm(zs - zt, axis=1)
    diff = np.abs(per_sample_ce(zs, y, weight, bias) - per_sample_ce(zt, y, weight, bias))
    ok = d > 0
    return float(np.max(diff[ok] / d[ok])) if np.any(ok) else 0.0


def looseness_ladder(
    zs: Any, zt: Any, y: Any, weight: Any, bias: Any = None
) -> list[theory.Inequality]:
    """Where the per-sample bound ``|R_S - R_T| <= Lip * coupling_gap`` loses, rung by rung.

    With ``D_i = CE(h(zs_i), y_i) - CE(h(zt_i), y_i)``, ``Delta_i = zs_i - zt_i`` and
    ``W_c = W - 1 w_bar^T`` (:func:`centred_lipschitz`), each rung is an inequality that
    holds exactly:

    1. ``|mean_i D_i| <= mean_i |D_i|`` (cancellation: gains and losses of single images
       offset each other in the risk);
    2. ``mean_i |D_i| <= sqrt(2) mean_i ||W_c Delta_i||`` (the loss and its direction: the CE
       depends on the centred logits only, and its change is, to first order, the inner
       product of the logit displacement ``W_c Delta_i`` with the gradient ``p - e_y``, of
       norm ``< sqrt(2)``: small on confidently classified points, and rarely aligned with
       the displacement);
    3. ``sqrt(2) mean_i ||W_c Delta_i|| <= sqrt(2) ||W_c||_2 mean_i ||Delta_i||`` (the feature
       direction: a displacement is amplified by the largest singular value only when it
       points along its singular vector; ``W_c`` has rank ``< K`` in ``R^d``);
    4. ``sqrt(2) ||W_c||_2 mean ||Delta_i|| <= sqrt(2) ||W||_2 mean ||Delta_i||`` (centring).

    The last right-hand side is ``Lip * coupling_gap`` of :mod:`kd2m.theory`; the ratio
    ``lhs / rhs`` of each rung says how much that step costs. Tolerances as in
    :mod:`kd2m.theory` (relative ``DEFAULT_RTOL`` of the larger side).
    """
    zs, zt, w = _f64(zs), _f64(zt), _f64(weight)
    d_ce = per_sample_ce(zs, y, w, bias) - per_sample_ce(zt, y, w, bias)
    wc = w - w.mean(axis=0, keepdims=True)
    delta = zs - zt
    s2 = math.sqrt(2.0)
    values = [
        abs(float(np.mean(d_ce))),
        float(np.mean(np.abs(d_ce))),
        s2 * float(np.mean(np.linalg.norm(delta @ wc.T, axis=1))),
        centred_lipschitz(w) * float(np.mean(np.linalg.norm(delta, axis=1))),
        theory.lipschitz_ce_linear(w) * float(np.mean(np.linalg.norm(delta, axis=1))),
    ]
    names = [
        ("|R_S - R_T| <= mean |CE_S,i - CE_T,i|", "cancellation between images"),
        (
            "mean |dCE_i| <= sqrt2 mean ||W_c (zs_i - zt_i)||",
            "loss gradient p - e_y small or not aligned with the logit displacement",
        ),
        (
            "sqrt2 mean ||W_c d_i|| <= sqrt2 ||W_c||_2 mean ||d_i||",
            "feature displacements not along the head's top singular vector",
        ),
        ("sqrt2 ||W_c||_2 gap <= sqrt2 ||W||_2 gap (= Lip * coupling_gap)", "centring the head"),
    ]
    return [
        theory.Inequality(n, lhs, rhs, theory.DEFAULT_RTOL * max(abs(lhs), abs(rhs)), why)
        for (n, why), lhs, rhs in zip(names, values[:-1], values[1:], strict=True)
    ]


def looseness_frame(
    monitors: Mapping[str, Mapping],
    weight: Any,
    bias: Any = None,
    *,
    n_points: int | None = None,
    seed: int = 0,
    epoch: int = -1,
):
    """:func:`looseness_ladder` of each student at ``epoch`` as a DataFrame indexed by
    ``(student, rung)`` with ``lhs, rhs, ratio, holds``."""
    import pandas as pd

    rows = []
    for student, mon in monitors.items():
        epochs, zt, y = monitor_arrays(mon, n_points, seed=seed)
        for ineq in looseness_ladder(epochs[epoch], zt, y, weight, bias):
            r = ineq.row()
            rows.append(
                {
                    "student": student,
                    "rung": r["name"],
                    "lhs": r["lhs"],
                    "rhs": r["rhs"],
                    "ratio": r["ratio"],
                    "holds": r["holds"],
                    "what it costs": ineq.statement,
                }
            )
    return pd.DataFrame(rows).set_index(["student", "rung"])


# --------------------------------------------------------------------------- #
# Synthetic part
# --------------------------------------------------------------------------- #
def convergence_frame(results: Mapping[Any, theory.W2Convergence]):
    """Long DataFrame ``(label, n, mean, std, abs_error, closed_form, fitted rate)`` from
    :func:`kd2m.theory.sample_w2_convergence` results keyed by a label (e.g. ``"d = 2"``)."""
    import pandas as pd

    rows = []
    for label, c in results.items():
        for n, m, s, e in zip(c.sizes, c.mean, c.std, c.abs_error, strict=True):
            rows.append(
                {
                    "case": label,
                    "n": n,
                    "empirical W2 (mean)": m,
                    "std": s,
                    "closed form W2": c.closed_form,
                    "|error|": e,
                    "fitted rate": c.slope,
                }
            )
    return pd.DataFrame(rows).set_index(["case", "n"])


def convergence_figure(results: Mapping[Any, theory.W2Convergence]):
    """Left: empirical ``W_2`` (mean ± std over repeats) against ``n``, with the closed form
    (eq. 6) as a horizontal line. Right: ``|W_2 empirical - closed form|`` on log-log axes
    with the least-squares line ``log err = a + slope log n`` (slope in the legend). Two
    panels at the column's width, each legend under its panel."""
    from matplotlib.ticker import NullLocator

    with style.figure_style():
        fig, axes = style.new_figure(1, 2, height=3.6)
        for i, (label, c) in enumerate(results.items()):
            color = style.OKABE_ITO[i % len(style.OKABE_ITO)]
            n = np.asarray(c.sizes, float)
            m, s = np.asarray(c.mean), np.asarray(c.std)
            axes[0].errorbar(
                n, m, yerr=s, marker="o", capsize=3, color=color, label=f"{label}: empirical"
            )
            axes[0].axhline(
                c.closed_form,
                color=color,
                ls="--",
                lw=1,
                label=f"{label}: closed form {c.closed_form:.3f}",
            )
            axes[1].loglog(n, c.abs_error, "o", color=color, label=f"{label}: |error|")
            if math.isfinite(c.slope):
                grid = np.geomspace(n.min(), n.max(), 50)
                axes[1].loglog(
                    grid,
                    np.exp(c.intercept) * grid**c.slope,
                    "-",
                    color=color,
                    lw=1,
                    label=f"{label}: fit $n^{{{c.slope:.2f}}}$",
                )
        axes[0].set(
            xscale="log",
            xlabel="n (samples per Gaussian)",
            ylabel="$W_2$ (not squared)",
            title="empirical vs closed form",
        )
        axes[1].set(
            xlabel="n (samples per Gaussian)",
            ylabel=r"mean $|W_{2,n} - W_2|$",
            title="error, log-log",
        )
        sizes = sorted({int(n) for c in results.values() for n in c.sizes})
        for ax in axes:
            ax.set_xticks(sizes, [str(n) for n in sizes])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.tick_params(axis="x", labelrotation=45 if len(sizes) > 5 else 0)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32), ncols=1, frameon=False)
        return style.finish(fig, close=True)


def synthetic_features(
    n: int = 300, d: int = 8, n_classes: int = 3, eps: float = 0.3, seed: int = 0
) -> dict[str, np.ndarray]:
    """Teacher features ``zt``: a Gaussian cluster per class (unit-norm means times 3, unit
    noise); student features ``zs = zt + eps * (A zt + xi)`` with a random matrix ``A``
    (entries ``N(0, 1/d)``) and standard noise ``xi`` (a student that is a perturbed copy of
    the teacher, ``eps = 0`` being the teacher itself); a random linear head ``W`` (entries
    ``N(0, 1/d)``), ``b = 0``. Returns ``{"zs", "zt", "y", "weight", "bias"}``.

    One seeded stream: ``zt``, ``y``, ``W``, ``A`` and ``xi`` do not depend on ``eps``, so a
    sweep over ``eps`` moves the student alone.
    """
    if n < 1 or d < 1 or n_classes < 1 or eps < 0:
        raise ValueError(
            f"need n, d, n_classes >= 1 and eps >= 0; got {n}, {d}, {n_classes}, {eps}"
        )
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_classes, d))
    means *= 3.0 / np.linalg.norm(means, axis=1, keepdims=True)
    y = rng.integers(0, n_classes, size=n)
    zt = means[y] + rng.standard_normal((n, d))
    weight = rng.standard_normal((n_classes, d)) / math.sqrt(d)
    A = rng.standard_normal((d, d)) / math.sqrt(d)
    xi = rng.standard_normal((n, d))
    zs = zt + eps * (zt @ A.T + xi)
    return {"zs": zs, "zt": zt, "y": y, "weight": weight, "bias": np.zeros(n_classes)}


def synthetic_sweep(eps_values: Sequence[float], **kwargs) -> dict[float, theory.BoundReport]:
    """One :func:`kd2m.theory.bound_report` per ``eps`` of :func:`synthetic_features`
    (``kwargs`` passed on): the student converging uniformly to the teacher as ``eps -> 0``."""
    out = {}
    for eps in eps_values:
        f = synthetic_features(eps=float(eps), **kwargs)
        out[float(eps)] = theory.bound_report(f["zs"], f["zt"], f["y"], f["weight"], f["bias"])
    return out


def sweep_figure(reports: Mapping[float, theory.BoundReport]):
    """``|R_S - R_T|`` and the three right-hand sides of Theorem 4.1 (times ``Lip``) against
    the student's perturbation ``eps``, log-log: all go to 0 with ``eps`` (the theorem's
    consequence: ``g_S -> g_T`` uniformly implies equal risks)."""
    eps = np.array(sorted(e for e in reports if e > 0))
    rep = [reports[e] for e in eps]
    with style.figure_style():
        fig, ax = style.new_figure(height=3.4)
        ax.loglog(eps, [abs(r.risk_gap) for r in rep], "o-", color="black", label="|R_S − R_T|")
        for (key, label), c, mk in zip(
            (
                ("W1_labelled", "Lip · W1 (label-aware)"),
                ("coupling_gap", "Lip · mean ||zS − zT||"),
                ("max_gap", "Lip · max ||zS − zT||"),
            ),
            style.OKABE_ITO,
            "s^D",
            strict=False,
        ):
            ax.loglog(
                eps,
                [r.lipschitz * getattr(r, key) for r in rep],
                ls="--",
                marker=mk,
                color=c,
                label=label,
            )
        ax.set(
            xlabel="student perturbation ε",
            ylabel="risk gap, bound",
            title="synthetic student → teacher",
        )
        ax.legend(loc="upper left")
        return style.finish(fig, close=True)


def swapped_labels_example() -> theory.BoundReport:
    """Two images of different classes whose features are swapped between student and
    teacher: the plain ``W_1`` is 0 (same cloud of points), the risks differ, so the paper's
    label-blind first step fails while the label-aware chain holds (1-D features, a head
    that favours class 1 for large ``z``)."""
    zs = np.array([[1.0], [-1.0]])
    zt = np.array([[-1.0], [1.0]])
    y = np.array([0, 1])
    weight = np.array([[-2.0], [2.0]])
    return theory.bound_report(zs, zt, y, weight, np.zeros(2))


# --------------------------------------------------------------------------- #
# Trained part
# --------------------------------------------------------------------------- #
def teacher_head(cfg, root=None) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` of the trained teacher's linear head (float64 numpy); ``cfg`` is the
    teacher's :class:`~kd2m.runs.RunConfig` (``student_cfg.teacher``)."""
    from kd2m.runs import load_model

    model, _ = load_model(cfg, root)
    return _f64(model.head.weight), _f64(model.head.bias)


def _stratified(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices of ``y``, each class getting a share proportional to its count
    (:func:`kd2m.data.stratified_counts`), drawn with a seeded generator; returned sorted."""
    classes, counts = np.unique(y, return_counts=True)
    take = stratified_counts(counts, n).numpy()
    rng = np.random.default_rng(seed)
    idx = [
        rng.choice(np.flatnonzero(y == c), size=k, replace=False)
        for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(idx))


def monitor_arrays(
    monitor: Mapping, n_points: int | None = None, *, seed: int = 0
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """``(student features per epoch, teacher features, labels)`` of a run's monitor
    (:func:`kd2m.runs.load_monitor`), float64.

    With ``n_points`` smaller than the number of stored images, a seeded class-stratified
    subset of ``n_points`` images (the same rows for every epoch and for the teacher; the
    stored images may be sorted by class, so the first rows would not do); all images when
    ``None``. Student features are those stored (projected into the teacher's space when
    the sizes differ).
    """
    if monitor.get("teacher") is None or not monitor.get("epochs"):
        raise ValueError(
            "the monitor holds no teacher features or no epochs "
            "(is it a student run with a teacher?)"
        )
    zt = _f64(monitor["teacher"])
    y = np.asarray(_f64(monitor["labels"]), dtype=np.int64)
    epochs = [_f64(z) for z in monitor["epochs"]]
    if n_points is not None:
        if int(n_points) < 1:
            raise ValueError(f"n_points must be None or >= 1; got {n_points}")
        if int(n_points) < y.shape[0]:
            idx = _stratified(y, int(n_points), seed)
            return [z[idx] for z in epochs], zt[idx], y[idx]
    return epochs, zt, y


def reports_over_epochs(
    monitor: Mapping, weight: Any, bias: Any = None, *, n_points: int | None = None, seed: int = 0
) -> list[theory.BoundReport]:
    """One :func:`kd2m.theory.bound_report` per stored epoch: student features of that epoch
    against the teacher's features, both read by the fixed head ``(weight, bias)``
    (``n_points``, ``seed``: see :func:`monitor_arrays`)."""
    epochs, zt, y = monitor_arrays(monitor, n_points, seed=seed)
    return [theory.bound_report(zs, zt, y, weight, bias) for zs in epochs]


def bound_table(report: theory.BoundReport, *, with_plain: bool = True):
    """The report's inequalities as a DataFrame indexed by name: ``lhs, rhs, slack, ratio
    (lhs / rhs), holds`` and ``checked`` (True for the inequalities that
    :func:`kd2m.theory.check_bounds` enforces). ``with_plain`` appends the paper's literal,
    label-blind step (``checked = False``: it is not guaranteed)."""
    import pandas as pd

    rows = [r | {"checked": True} for r in report.table()]
    if with_plain:
        rows.append(report.plain_w1_bound().row() | {"checked": False})
    return pd.DataFrame(rows).set_index("name")


def report_extras(report: theory.BoundReport) -> dict[str, float]:
    """Derived numbers of one report: ``abs_risk_gap``, the bound ``lip_W1_labelled`` and
    ratio ``gap_over_bound = |R_S - R_T| / (Lip W1_labelled)`` (NaN when the bound is 0)."""
    bound = report.lipschitz * report.W1_labelled
    gap = abs(report.risk_gap)
    return {
        "abs_risk_gap": gap,
        "lip_W1_labelled": bound,
        "gap_over_bound": gap / bound if bound > 0 else float("nan"),
    }


def epoch_frame(
    reports: Mapping[str, Sequence[theory.BoundReport]], records: Mapping[str, dict] | None = None
):
    """Long DataFrame indexed by ``(student, epoch)`` (epochs from 1) with every field of
    each report and :func:`report_extras`; with ``records`` (run records of the same
    students), also the student's own accuracy and cross-entropy after that epoch
    (``own_test_acc``, ``own_test_ce``: its own head on the monitored test images, the
    images the bound is measured on)."""
    import pandas as pd

    rows = []
    for student, reps in reports.items():
        hist = records[student]["history"] if records is not None else None
        for e, r in enumerate(reps, start=1):
            d = {
                k: v for k, v in r.to_dict().items() if k not in ("inequalities", "plain_w1_bound")
            }
            row = {"student": student, "epoch": e, **d, **report_extras(r)}
            if hist is not None:
                row["own_test_acc"] = hist[e - 1]["monitor_acc"]
                row["own_test_ce"] = hist[e - 1]["monitor_ce"]
            rows.append(row)
    return pd.DataFrame(rows).set_index(["student", "epoch"])


_TITLES = {
    "W1": "W1 (features only)",
    "W1_labelled": "W1, label-aware",
    "coupling_gap": "mean ||zS − zT||",
    "max_gap": "max ||zS − zT||",
    "abs_risk_gap": "|risk gap| (—), bound (--)",
    "lip_W1_labelled": "|risk gap| / bound",
}


def plot_bounds_over_epochs(reports: Mapping[str, Sequence[theory.BoundReport]]):
    """3 x 2 panels over the training epochs, one colour per student: ``W1``,
    ``W1_labelled``, the coupling gap, the max gap (transport terms); the risk gap under the
    teacher's head (solid) with its bound ``Lip * W1_labelled`` (dashed, log scale: they
    differ by orders of magnitude); and the ratio gap / bound (how much of the bound is
    used). Integer epoch ticks, one legend (the students) above the panels."""
    df = epoch_frame(reports)
    with style.figure_style():
        fig, axes = style.new_figure(3, 2, height=7.2, sharex=True)
        axes = axes.ravel()
        for i, student in enumerate(reports):
            sub = df.loc[student]
            ep = sub.index.to_numpy()
            c = style.OKABE_ITO[i % len(style.OKABE_ITO)]
            for ax, key in zip(axes[:4], EPOCH_QUANTITIES[:4], strict=True):
                ax.plot(ep, sub[key], "o-", color=c, label=student)
            axes[4].plot(ep, sub["abs_risk_gap"], "o-", color=c, label=f"{student}: gap")
            axes[4].plot(ep, sub["lip_W1_labelled"], "s--", color=c, label=f"{student}: bound")
            axes[5].plot(ep, sub["gap_over_bound"], "o-", color=c, label=student)
        for ax, key in zip(axes, EPOCH_QUANTITIES, strict=True):
            ax.set(title=_TITLES[key])
            style.integer_epochs(ax)
        for ax in axes[4:]:
            ax.set(xlabel="epoch")
        axes[4].set_yscale("log")
        axes[5].set_ylim(bottom=0)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper center", ncols=min(3, len(labels)))
        return style.finish(fig, close=True)


def summary_frame(
    reports: Mapping[str, Sequence[theory.BoundReport]],
    monitors: Mapping[str, Mapping],
    weight: Any,
    bias: Any = None,
    *,
    records: Mapping[str, dict] | None = None,
    n_points: int | None = None,
    seed: int = 0,
    epoch: int = -1,
):
    """One row per student at ``epoch`` (default the last).

    ``reports`` as :func:`reports_over_epochs` returns them, per student, with the same
    ``n_points`` and ``seed``. Columns: accuracies of the teacher's head on both feature sets
    (and, with ``records``, the student's own final test accuracy), the risks, the
    Lipschitz constants (the checked ``sqrt(2) ||W||_2``, the centred one, the largest slope
    met on the test pairs), the bound ``Lip * W1_labelled`` with the ratio gap / bound, the
    ratios of steps 2 and 3 of the chain, and ``err bound (CE/ln2)``: the 0-1 error that the
    bound certifies for the student's features under ``h_T``,
    ``min(1, (R_T + Lip W1_labelled) / ln 2)`` (a misclassified point has ``CE >= ln 2``),
    1 meaning vacuous.
    """
    import pandas as pd

    rows = []
    for student, reps in reports.items():
        r = reps[epoch]
        epochs, zt, y = monitor_arrays(monitors[student], n_points, seed=seed)
        zs = epochs[epoch]
        ex = report_extras(r)
        row = {
            "student": student,
            "teacher acc (h_T, zT) %": 100 * head_accuracy(zt, y, weight, bias),
            "student acc (h_T, zS) %": 100 * head_accuracy(zs, y, weight, bias),
            "R_T(h_T)": r.risk_teacher,
            "R_S(h_T)": r.risk_student,
            "|gap|": ex["abs_risk_gap"],
            "W1": r.W1,
            "W1_labelled": r.W1_labelled,
            "Lip": r.lipschitz,
            "Lip centred": centred_lipschitz(weight),
            "Lip realised": realised_lipschitz(zs, zt, y, weight, bias),
            "Lip·W1_lab": ex["lip_W1_labelled"],
            "gap / bound": ex["gap_over_bound"],
            "W1_lab / coupling gap": r.W1_labelled / r.coupling_gap
            if r.coupling_gap > 0
            else float("nan"),
            "coupling gap / max gap": r.coupling_gap / r.max_gap if r.max_gap > 0 else float("nan"),
            "err bound (CE/ln2)": min(1.0, (r.risk_teacher + ex["lip_W1_labelled"]) / math.log(2)),
        }
        if records is not None and student in records:
            row["student acc (own head) %"] = 100 * records[student]["final"]["test_acc"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("student")


def violations(reports: Mapping[str, Sequence[theory.BoundReport]]) -> dict[str, list]:
    """``{student: [(epoch, Inequality), ...]}`` of the violated checked inequalities
    (:func:`kd2m.theory.check_bounds` without raising); empty lists when all hold."""
    return {
        s: [
            (e, v)
            for e, r in enumerate(reps, start=1)
            for v in theory.check_bounds(r, raise_on_violation=False)
        ]
        for s, reps in reports.items()
    }


def all_reports_hold(reports: Mapping[str, Sequence[theory.BoundReport]]) -> bool:
    """True iff every checked inequality of every report holds (and there is one report)."""
    v = violations(reports)
    n = sum(len(r) for r in reports.values())
    return n > 0 and all(not x for x in v.values())


def w2_crosscheck(records: Mapping[str, dict], monitors: Mapping[str, Mapping]):
    """The squared ``W_2`` that training logged after each epoch (``test_feature_w2`` of the
    record's history, computed by :func:`kd2m.metrics.wasserstein` on the float32 features)
    against :func:`kd2m.theory.empirical_wasserstein` squared, recomputed here on the
    monitor's stored (float16) features of all its images: two independent implementations
    of eq. (3). DataFrame indexed by ``(student, epoch)`` with ``logged``, ``recomputed`` and
    ``rel_diff``."""
    import pandas as pd

    rows = []
    for student, rec in records.items():
        epochs, zt, _ = monitor_arrays(monitors[student])
        for e, (row, zs) in enumerate(zip(rec["history"], epochs, strict=True), start=1):
            logged = row.get("test_feature_w2")
            ours = theory.empirical_wasserstein(zs, zt, p=2) ** 2
            rel = (
                abs(ours - logged) / max(abs(logged), 1e-300)
                if logged is not None
                else float("nan")
            )
            rows.append(
                {
                    "student": student,
                    "epoch": e,
                    "logged": logged,
                    "recomputed": ours,
                    "rel_diff": rel,
                }
            )
    return pd.DataFrame(rows).set_index(["student", "epoch"])


# --------------------------------------------------------------------------- #
# Tables and lines for the reader (Stylers, text of at most 80 characters)
# --------------------------------------------------------------------------- #
def _yes(v: Any) -> str:
    return "yes" if bool(v) else "no"


def bound_styled(report: theory.BoundReport, *, with_plain: bool = True, caption: str = ""):
    """:func:`bound_table` for the reader: inequality, both sides, ``lhs / rhs``, whether it
    holds and whether it is checked (the paper's literal step is shown, not checked)."""
    import pandas as pd

    df = bound_table(report, with_plain=with_plain).reset_index()
    frame = pd.DataFrame(
        {
            "inequality (lhs <= rhs)": df["name"],
            "lhs": df["lhs"],
            "rhs": df["rhs"],
            "lhs / rhs": df["ratio"],
            "holds": df["holds"].map(_yes),
            "checked": df["checked"].map(_yes),
        }
    )
    return style.styled(
        frame,
        caption=caption or None,
        formats={"lhs": "{:.4f}", "rhs": "{:.4f}", "lhs / rhs": "{:.3f}"},
        drop_constant=False,
    )


def convergence_styled(results: Mapping[Any, theory.W2Convergence]):
    """:func:`convergence_frame` for the reader: per case and ``n``, the empirical ``W_2``
    (mean and std over repeats) and its error; the closed form and the fitted rate of each
    case are said once in the caption."""
    import pandas as pd

    df = convergence_frame(results).reset_index()
    notes = [
        f"{label}: closed form W2 = {c.closed_form:.4f}, fitted rate n^{c.slope:.2f}"
        for label, c in results.items()
    ]
    frame = pd.DataFrame(
        {
            "case": df["case"],
            "n": df["n"],
            "empirical W2 (mean)": df["empirical W2 (mean)"],
            "std": df["std"],
            "|error|": df["|error|"],
        }
    )
    return style.styled(
        frame,
        caption="; ".join(notes) + ".",
        formats={"empirical W2 (mean)": "{:.4f}", "std": "{:.4f}", "|error|": "{:.4f}"},
        drop_constant=False,
    )


def sweep_styled(reports: Mapping[float, theory.BoundReport]):
    """The risk gap and the three bounds of Theorem 4.1 per ``eps`` of
    :func:`synthetic_sweep` (the numbers of :func:`sweep_figure`)."""
    import pandas as pd

    frame = pd.DataFrame(
        [
            {
                "ε": e,
                "|R_S − R_T|": abs(r.risk_gap),
                "Lip·W1 (labels)": r.lipschitz * r.W1_labelled,
                "Lip·mean gap": r.lipschitz * r.coupling_gap,
                "Lip·max gap": r.lipschitz * r.max_gap,
            }
            for e, r in reports.items()
        ]
    )
    fmt = "{:.4f}"
    return style.styled(
        frame, formats={"ε": "{:g}"} | {c: fmt for c in frame.columns[1:]}, drop_constant=False
    )


def summary_styled(summary):
    """:func:`summary_frame` for the reader: one column per student, one line per quantity
    (the frame transposed), each line with one format."""
    t = summary.T
    t.index.name = "quantity"
    frame = t.reset_index()
    sty = style.styled(frame, drop_constant=False)
    for i, q in enumerate(t.index):
        vals = t.loc[q].tolist()
        fmt = "{:.2f}" if q.endswith("%") else style.column_format(vals)
        sty = sty.format(fmt, subset=pd_index_slice(i, list(t.columns)), na_rep="")
    return sty


def pd_index_slice(row: int, cols: list):
    """A Styler ``subset`` selecting row ``row`` (positional label of a RangeIndex) and
    ``cols``."""
    import pandas as pd

    return pd.IndexSlice[[row], cols]


_EPOCH_COLUMNS = {
    "risk_teacher": ("R_T(h_T)", "{:.3f}"),
    "risk_student": ("R_S(h_T)", "{:.3f}"),
    "lip_W1_labelled": ("bound", "{:.3f}"),
    "gap_over_bound": ("gap / bound", "{:.3f}"),
    "own_test_acc": ("own acc (%)", "{:.2f}"),
}


def epoch_styled(epochs):
    """:func:`epoch_frame` for the reader: per student and epoch, the two risks under
    ``h_T``, the bound ``Lip * W1_labelled``, the fraction of it that the gap uses and (when
    the frame has it) the student's own test accuracy (%). Seven columns at most; the
    transport terms are in :func:`plot_bounds_over_epochs`."""
    import pandas as pd

    df = epochs.reset_index()
    frame = pd.DataFrame({"student": df["student"], "epoch": df["epoch"]})
    formats = {}
    for key, (name, fmt) in _EPOCH_COLUMNS.items():
        if key in df.columns:
            frame[name] = 100 * df[key] if key == "own_test_acc" else df[key]
            formats[name] = fmt
    frame["student"] = [
        s if i == 0 or s != prev else ""
        for i, (s, prev) in enumerate(
            zip(frame["student"], [None, *frame["student"][:-1]], strict=True)
        )
    ]
    return style.styled(
        frame,
        caption="R: cross-entropy risk under the teacher's head h_T; bound: Lip · W1 (labels).",
        formats=formats,
        drop_constant=False,
    )


def looseness_styled(looseness):
    """:func:`looseness_frame` for the reader: per student and step of the ladder, both sides,
    their ratio and whether it holds; what each step costs is said once in the caption."""
    import pandas as pd

    df = looseness.reset_index()
    steps = list(dict.fromkeys(df["rung"]))
    costs = dict(zip(df["rung"], df["what it costs"], strict=True))
    frame = pd.DataFrame(
        {
            "student": df["student"],
            "step": [steps.index(r) + 1 for r in df["rung"]],
            "lhs": df["lhs"],
            "rhs": df["rhs"],
            "lhs / rhs": df["ratio"],
            "holds": df["holds"].map(_yes),
        }
    )
    caption = "Steps: " + "; ".join(f"{i + 1}. {costs[r]}" for i, r in enumerate(steps)) + "."
    return style.styled(
        frame,
        caption=caption,
        formats={"lhs": "{:.4f}", "rhs": "{:.4f}", "lhs / rhs": "{:.3f}", "step": "{:d}"},
        drop_constant=False,
    )


def crosscheck_styled(cross):
    """:func:`w2_crosscheck` for the reader: logged and recomputed ``W_2^2`` per student and
    epoch, and their relative difference."""
    import pandas as pd

    df = cross.reset_index()
    frame = pd.DataFrame(
        {
            "student": df["student"],
            "epoch": df["epoch"],
            "logged W2²": df["logged"],
            "recomputed W2²": df["recomputed"],
            "rel. diff.": df["rel_diff"],
        }
    )
    return style.styled(
        frame,
        formats={"logged W2²": "{:.4f}", "recomputed W2²": "{:.4f}", "rel. diff.": "{:.1e}"},
        drop_constant=False,
    )


def _wrap(text: str, width: int = 80) -> str:
    import textwrap

    return "\n".join(
        textwrap.fill(line, width=width, subsequent_indent="  ") for line in text.splitlines()
    )


def setup_text(teacher_record: Mapping, weight: Any, labels: Any) -> str:
    """The trained part's setup in lines of at most 80 characters: the teacher's test
    accuracy, the head's shape, the number of images checked and per class."""
    y = np.asarray(_f64(labels), dtype=np.int64)
    classes, counts = np.unique(y, return_counts=True)
    per = (
        f"{counts[0]} per class ({len(classes)} classes)"
        if len(set(counts.tolist())) == 1
        else ", ".join(f"{c}: {k}" for c, k in zip(classes, counts, strict=True))
    )
    w = _f64(weight)
    return _wrap(
        f"teacher test accuracy: {100 * teacher_record['final']['test_acc']:.2f} %\n"
        f"head W: {w.shape[0]} x {w.shape[1]}\n"
        f"images checked: {len(y)}, {per}"
    )


def tightness_text(summary, epochs) -> str:
    """The numbers of "How tight is the bound?" from :func:`summary_frame` and
    :func:`epoch_frame` (with records), one per line, at most 80 characters each."""
    last = summary
    rank = epochs[["lip_W1_labelled", "risk_student", "own_test_acc"]].corr(method="spearman")

    def per(series, digits: int) -> str:
        return ", ".join(f"{s} {float(v):.{digits}f}" for s, v in series.items())

    lines = [
        "bound / |risk gap| at the last epoch: " + per(last["Lip·W1_lab"] / last["|gap|"], 1),
        "fraction of the bound used, all epochs and students: "
        f"{epochs['gap_over_bound'].min():.3f} to {epochs['gap_over_bound'].max():.3f}",
        f"Lip = {last['Lip'].iloc[0]:.3f}, centred {last['Lip centred'].iloc[0]:.3f}",
        "largest slope met: " + per(last["Lip realised"], 3),
        "step 2 ratio W1_lab / mean gap: " + per(last["W1_lab / coupling gap"], 3),
        "step 3 ratio mean gap / max gap: " + per(last["coupling gap / max gap"], 3),
        "W1 / W1_labelled: " + per(last["W1"] / last["W1_labelled"], 3),
        "certified 0-1 error under h_T: " + per(last["err bound (CE/ln2)"], 3),
        "Spearman over (student, epoch): bound vs R_S(h_T) "
        f"{rank.loc['lip_W1_labelled', 'risk_student']:.2f}, "
        f"bound vs own test accuracy {rank.loc['lip_W1_labelled', 'own_test_acc']:.2f}",
    ]
    return _wrap("\n".join(lines))


def tightness_glue(summary, epochs, prefix: str = "th") -> dict[str, str]:
    """The numbers that the theory chapter's prose quotes, by name: per student (as in
    ``summary``'s index) ``th_w1_<s>`` (label-blind W1), ``th_bound_<s>`` (Lip·W1_lab),
    ``th_risk_<s>`` (R_S(h_T)), ``th_acc_<s>`` (the student's accuracy under h_T, %) at the
    last epoch, ``th_risk_teacher`` (R_T(h_T)), and the Spearman correlations over
    (student, epoch) of the bound with R_S(h_T) (``th_rho_risk``) and with the student's
    own accuracy (``th_rho_acc``); for :func:`kd2m.book.style.glue_all`."""
    rank = epochs[["lip_W1_labelled", "risk_student", "own_test_acc"]].corr(method="spearman")
    out = {
        "rho_risk": f"{rank.loc['lip_W1_labelled', 'risk_student']:.2f}",
        "rho_acc": f"{rank.loc['lip_W1_labelled', 'own_test_acc']:.2f}",
        "risk_teacher": f"{summary['R_T(h_T)'].iloc[0]:.2f}",
    }
    for s, row in summary.iterrows():
        out[f"w1_{s}"] = f"{row['W1']:.2f}"
        out[f"bound_{s}"] = f"{row['Lip·W1_lab']:.1f}"
        out[f"risk_{s}"] = f"{row['R_S(h_T)']:.2f}"
        out[f"acc_{s}"] = f"{row['student acc (h_T, zS) %']:.1f}"
    return {f"{prefix}_{k}": v for k, v in out.items()}
