"""The book's look: one figure style for the 684-px column, tables for people.

Every figure function of kd2m.book is drawn here on synthetic inputs and checked against the
rules (column width, 200 dpi, at most three panels per row, fonts >= 9 pt, integer epoch
ticks, Okabe-Ito colours); every table helper against its format (one number format per
column, constant columns in the caption, no internal names, at most seven columns), and the
printed text against the 80-character line.
"""

import re

import matplotlib
import numpy as np
import pandas as pd
import pytest
from figure_checks import check_column_figure, integer_ticks
from test_theory_book import fake_monitor, head

from kd2m import bench, theory
from kd2m.book import studies, style
from kd2m.book import theory_book as tb

matplotlib.use("Agg")


def cells(sty, column) -> list[str]:
    """The displayed text of ``column``'s cells in a Styler."""
    j = list(sty.data.columns).index(column)
    sty._compute()
    return [sty._display_funcs[(i, j)](sty.data.iloc[i, j]) for i in range(len(sty.data))]


def test_column_format_one_format_per_range():
    assert style.column_format([1, 2, 30]) == "{:.0f}"
    assert style.column_format([0.0123, 4.5]) == "{:.4f}"
    assert style.column_format([1.5, 250.0]) == "{:.2f}"
    assert style.column_format([3.9e-15, 1.0]) == "{:.2e}"  # many decades: scientific
    assert style.column_format([2.5e6, 1.5]) == "{:.2e}"
    assert style.column_format([0.0, float("nan")]) == "{:.0f}"  # zero, NaN blank
    assert style.column_format(["a", float("inf")]) == "{:.4g}"


def test_styled_drops_constant_columns_into_the_caption():
    frame = pd.DataFrame(
        {"n": [1, 2], "gpu": ["NVIDIA H200"] * 2, "flag": [False, False], "x": [3.9e-15, 1.5]}
    )
    sty = style.styled(frame, caption="What to see.")
    assert list(sty.data.columns) == ["n", "x"]
    assert sty.caption == "What to see.; gpu: NVIDIA H200; flag: no"
    assert cells(sty, "x") == ["3.90e-15", "1.50e+00"]  # one format in the column
    html = sty.to_html()
    assert "<caption" in html and "level0 row0" not in html.split("<tbody>")[1][:200]
    assert style.styled(frame.iloc[:1]).data.shape == (1, 4)  # one row: nothing is constant
    with_nan = style.styled(pd.DataFrame({"a": [1.0, float("nan")], "b": [1, 2]}))
    assert cells(with_nan, "a") == ["1", ""]


def test_new_figure_refuses_more_than_three_panels_per_row():
    with style.figure_style(), pytest.raises(ValueError, match="three panels"):
        style.new_figure(1, 4, height=3)


def test_figure_style_is_not_a_global_side_effect():
    before = dict(matplotlib.rcParams)
    with style.figure_style():
        assert matplotlib.rcParams["figure.dpi"] == style.DPI
    assert matplotlib.rcParams["figure.dpi"] == before["figure.dpi"]
    assert matplotlib.rcParams["axes.prop_cycle"] == before["axes.prop_cycle"]


# ---------------------------------------------------------------------------------------------
# Metrics chapter
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study_results():
    conv = studies.convergence_study(3, 64, 2, 0)
    kl = studies.kl_regularisation_study(8, [0.5, 1, 2, 4], 0)
    zs, zt, y = studies.labelled_batch(48, 4, 3, 0)
    return conv, kl, studies.joint_beta_study(zs, zt, y, n_betas=5), (zs, zt, y)


def test_metrics_chapter_figures_fit_the_column(study_results):
    conv, kl, joint, _ = study_results
    for fig in (
        studies.plot_convergence(conv),
        studies.plot_kl_regularisation(kl),
        studies.plot_joint_beta(joint),
    ):
        check_column_figure(fig, panels=1)
        colors = {matplotlib.colors.to_hex(line.get_color()) for line in fig.axes[0].lines}
        assert colors <= {c.lower() for c in style.OKABE_ITO} | {"#000000", "#808080"}


def test_metrics_chapter_tables(study_results):
    conv, kl, _, (zs, zt, y) = study_results
    sty = studies.table(studies.convergence_table(conv))
    assert list(sty.data.columns)[0] == "n" and len(sty.data.columns) == 3
    assert "fitted rate, empirical: n^" in sty.caption  # constant per estimator: said once
    sty = studies.table(studies.kl_table(kl))
    assert "population KL" not in sty.data.columns and "population KL: " in sty.caption
    claims = studies.closed_form_claims(4, 0) + studies.class_conditional_claims(zs, zt, y)
    rows = studies.claims_table(claims)
    assert all(set(r) == {"claim", "holds", "numbers"} for r in rows)  # no sparse columns
    html = studies.table(rows).to_html()
    assert "nan" not in html.lower() and "e-1" not in html  # minus sign, no line break
    assert all(len(str(c)) <= 80 for c in claims), [str(c) for c in claims if len(str(c)) > 80]


# ---------------------------------------------------------------------------------------------
# Theory chapter
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    W, b = head()
    mons = {s: fake_monitor(seed=k) for k, s in enumerate(("baseline", "wasserstein", "gw"))}
    reps = {s: tb.reports_over_epochs(m, W, b) for s, m in mons.items()}
    records = {
        s: {
            "history": [{"monitor_acc": 0.1 * e, "monitor_ce": 2.0 - e} for e in (1, 2, 3)],
            "final": {"test_acc": 0.3},
        }
        for s in reps
    }
    return W, b, mons, reps, records


def test_theory_figures_fit_the_column(trained):
    res = {
        f"d = {d}": theory.sample_w2_convergence(
            *studies.gaussian_pair(d, seed=0).arrays(), sizes=(10, 20, 40), repeats=2
        )
        for d in (1, 2)
    }
    check_column_figure(tb.convergence_figure(res), panels=2)
    check_column_figure(tb.sweep_figure(tb.synthetic_sweep([0.0, 0.1, 1.0], n=30, d=3)), panels=1)
    fig = tb.plot_bounds_over_epochs(trained[3])
    check_column_figure(fig, panels=6)
    assert fig.axes[0].get_subplotspec().get_gridspec().ncols == 2
    assert all(integer_ticks(ax) for ax in fig.axes)
    assert len(fig.legends) == 1  # the students, once, outside the panels


def test_theory_tables_for_the_column(trained):
    W, b, mons, reps, records = trained
    summary = tb.summary_frame(reps, mons, W, b, records=records)
    epochs = tb.epoch_frame(reps, records)
    stylers = {
        "bound": tb.bound_styled(reps["baseline"][-1]),
        "convergence": tb.convergence_styled(
            {
                "d = 2": theory.sample_w2_convergence(
                    *studies.gaussian_pair(2, seed=0).arrays(), sizes=(10, 20)
                )
            }
        ),
        "sweep": tb.sweep_styled(tb.synthetic_sweep([0.0, 0.1], n=30, d=3)),
        "summary": tb.summary_styled(summary),
        "epochs": tb.epoch_styled(epochs),
        "looseness": tb.looseness_styled(tb.looseness_frame(mons, W, b)),
        "crosscheck": tb.crosscheck_styled(
            pd.DataFrame(
                {
                    "student": ["a"],
                    "epoch": [1],
                    "logged": [1.0],
                    "recomputed": [1.0],
                    "rel_diff": [3.9e-15],
                }
            ).set_index(["student", "epoch"])
        ),
    }
    for name, sty in stylers.items():
        assert len(sty.data.columns) <= 7, name
        assert not isinstance(sty.data.columns, pd.MultiIndex), name
        html = sty.to_html()
        assert "nan" not in re.sub(r"<[^>]+>", " ", html).lower().split(), name
    assert cells(stylers["crosscheck"], "rel. diff.") == ["3.9e-15"]
    assert "closed form W2 = " in stylers["convergence"].caption
    assert list(stylers["epochs"].data["student"][:2]) == ["baseline", ""]
    assert "cancellation" in stylers["looseness"].caption
    summary_cells = cells(stylers["summary"], "baseline")
    assert all(len(c) <= 8 for c in summary_cells), summary_cells


def test_theory_text_lines_fit_80_characters(trained):
    W, b, mons, reps, records = trained
    summary = tb.summary_frame(reps, mons, W, b, records=records)
    epochs = tb.epoch_frame(reps, records)
    text = tb.tightness_text(summary, epochs)
    assert "Spearman" in text and "certified 0-1 error" in text
    _, _, labels = tb.monitor_arrays(mons["baseline"])
    setup = tb.setup_text({"final": {"test_acc": 0.5595}}, W, labels)
    assert "teacher test accuracy: 55.95 %" in setup
    for line in (text + "\n" + setup).splitlines():
        assert len(line) <= 80, line


# ---------------------------------------------------------------------------------------------
# Performance chapter
# ---------------------------------------------------------------------------------------------


def test_bench_frame_for_people():
    rows = [
        {
            "epoch": "baseline",
            "images": 50000,
            "seconds": 3.6,
            "images/s": 13758.4,
            "data": "CIFAR-10 (cifar10-folder-0062692abc3a.pt)",
            "ratio": 1.0,
        },
        {
            "epoch": "KD2M",
            "images": 50000,
            "seconds": 5.5,
            "images/s": 8995.2,
            "data": "CIFAR-10 (cifar10-folder-0062692abc3a.pt)",
            "ratio": 0.65,
        },
    ]
    sty = bench.frame(rows)
    assert list(sty.data.columns) == ["epoch", "seconds", "images/s", "ratio"]
    assert sty.caption == "images: 50,000; data: CIFAR-10"  # no cache file name
    assert cells(sty, "images/s") == ["13,758", "8,995"]
    steps = bench.frame(
        [
            {"step": "a", "seconds": 0.0097, "ratio": 1.0},
            {"step": "b", "seconds": 0.0156, "ratio": 1.6},
        ]
    )
    assert cells(steps, "time (ms)") == ["9.70", "15.60"]
    assert bench.frame(rows, styled=False).index.name == "epoch"
    assert np.isclose(bench.frame(rows, styled=False).loc["KD2M", "seconds"], 5.5)
