"""Tables and figures from records: Table 1 beside the paper's numbers, Fig. 2, results folders."""

import json
import sys
import types

import matplotlib
import numpy as np
import pandas as pd
import pytest
from figure_checks import check_column_figure

from kd2m.book import experiments, plots, style

matplotlib.use("Agg")


def fake(role="student", metric=None, acc=0.5, seed=42, dataset="cifar10", epochs=2):
    hist = [
        {
            "epoch": e + 1,
            "lr": 0.1,
            "train_ce": 1.0 / (e + 1),
            "train_distill": None if metric is None else 2.0 / (e + 1),
            "train_acc": acc,
            "monitor_ce": 1.0,
            "monitor_acc": acc,
            "seconds": 1.0,
        }
        for e in range(epochs)
    ]
    return {
        "format": 1,
        "name": f"{dataset}-{role}-{metric}-s{seed}",
        "hash": "0" * 12,
        "status": "finished",
        "history": hist,
        "config": {
            "role": role,
            "metric": metric,
            "dataset": dataset,
            "epochs": epochs,
            "seed": seed,
            "pretrained": False,
        },
        "final": {"test_acc": acc},
        "hardware": {"device": "cpu"},
        "data": {"source": "folder"},
        "wall_seconds": 3.0,
        "started": "x",
    }


def test_table1_mean_std_over_seeds_and_paper_column():
    recs = {
        "E1": {"cifar10": [fake(metric="wasserstein", acc=a) for a in (0.6, 0.62)]},
        "baseline": {"cifar10": [fake(acc=0.5, seed=s) for s in (1, 2, 3)]},
        "teacher": {"cifar10": [fake("teacher", acc=0.8)]},
    }
    df = plots.table1_frame(recs)
    assert df.loc["baseline", "CIFAR-10 (ours)"] == "50.00 ± 0.00"
    assert df.loc["baseline", "CIFAR-10 (paper)"] == "85.11"  # the paper's student alone
    assert df.loc["E1", "CIFAR-10 (ours)"] == f"61.00 ± {np.std([60, 62], ddof=1):.2f}"
    assert df.loc["teacher", "CIFAR-10 (ours)"] == "80.00"  # one seed: no spread
    assert df.loc["E1", "CIFAR-10 (paper)"] == "86.45" and df.loc["E1", "metric"] == "wasserstein"
    assert df.loc["E1", "CIFAR-10 seeds"] == 2
    # the paper's full table: every row and every dataset, ours marked where not run
    assert list(df.index) == ["teacher", "baseline", "E1", "E2", "E3", "G1", "G2", "G3"]
    assert (
        df.loc["G3", "CIFAR-100 (paper)"] == "60.66" and df.loc["teacher", "Avg (paper)"] == "81.20"
    )
    assert df.loc["E1", "SVHN (ours)"] == "not run" and df.loc["G2", "CIFAR-10 (ours)"] == "not run"
    assert df.loc["E1", "Avg (ours)"] == "—"  # one dataset of three: no average


def test_table1_average_of_three_datasets():
    recs = {
        "baseline": {
            ds: [fake(acc=a, dataset=ds)]
            for ds, a in (("svhn", 0.9), ("cifar10", 0.8), ("cifar100", 0.5))
        }
    }
    assert plots.table1_frame(recs).loc["baseline", "Avg (ours)"] == "73.33"


def test_table1_styler_for_the_column():
    recs = {
        "baseline": {"cifar10": [fake(acc=0.5, seed=s) for s in (1, 2, 3)]},
        "teacher": {"cifar10": [fake("teacher", acc=0.8, seed=s) for s in (1, 2, 3)]},
    }
    sty = plots.table1(recs)
    data = sty.data
    assert list(data.columns) == [
        "row",
        "metric",
        "source",
        "SVHN (%)",
        "CIFAR-10 (%)",
        "CIFAR-100 (%)",
        "Avg (%)",
    ]
    assert len(data.columns) <= 7 and isinstance(data.columns, pd.Index)
    assert not isinstance(data.columns, pd.MultiIndex)
    # teacher first, the paper's line then ours, the baseline next
    assert list(data["row"][:4]) == ["teacher", "", "baseline", ""]
    assert list(data["source"][:2]) == ["paper", "ours"]
    assert data["CIFAR-10 (%)"].iloc[1] == "80.00 ± 0.00"
    assert data["SVHN (%)"].iloc[0] == "94.41" and data["SVHN (%)"].iloc[1] == "not run"
    html = sty.to_html()
    assert "3 seeds" in sty.caption and "not run" in sty.caption and "<caption" in html
    assert "s42" not in html and "0" * 12 not in html  # no record names, no hashes


def test_results_folder_grouping(tmp_path):
    for rec in (fake("teacher", acc=0.7), fake(acc=0.6), fake(metric="gaussian_kl", acc=0.65)):
        (tmp_path / f"{rec['name']}.json").write_text(json.dumps(rec))
    grouped = experiments.results_records(tmp_path)
    assert list(grouped) == ["teacher", "baseline", "G2"]
    sty = experiments.results_table(tmp_path)
    data = sty.data
    g2 = data.index[data["row"] == "G2"][0]
    assert data.loc[g2 + 1, "CIFAR-10 (%)"] == "65.00" and data.loc[g2, "CIFAR-10 (%)"] == "86.25"
    assert "cpu" in sty.caption and "ImageNet weights: no" in sty.caption
    assert "device" not in data.columns and "pretrained" not in data.columns
    missing = experiments.results_table(tmp_path / "missing")
    assert "no records" in missing.data.iloc[0, 0]


def test_runs_table_teacher_first_constant_columns_in_caption():
    recs = {
        "baseline": {"cifar10": [fake(acc=0.5)]},
        "teacher": {"cifar10": [fake("teacher", acc=0.8)]},
    }
    sty = plots.runs_table(recs)
    assert list(sty.data["row"]) == ["teacher", "baseline"]
    assert "dataset: CIFAR-10" in sty.caption and "seed: 42" in sty.caption
    assert "dataset" not in sty.data.columns
    assert "80.00" in sty.to_html()


def test_profile_table_shows_both_profiles():

    sty = plots.profile_table()
    data = sty.data
    assert list(data.columns) == ["setting", "cpu", "paper"]
    row = dict(zip(data["setting"], data["paper"], strict=True))
    assert row["λ of KD2M (of the Hinton control)"] == "0.0001 (1)"
    assert row["training images (teacher / student)"] == "all / all"
    assert "ResNet34" in row["teacher"] and row["teacher must beat the baseline by"] == "5 points"
    assert row["SGD lr (teacher / student), cosine to"] == "0.1 / 0.01, 0.0001"
    cpu = dict(zip(data["setting"], data["cpu"], strict=True))
    assert cpu["training images (teacher / student)"] == "all / 5,000"
    assert cpu["epochs (teacher / student)"] == "30 / 5"


def test_sweep_table_one_line_per_lambda():
    recs = {0.1: fake(metric="wasserstein", acc=0.6), 0.0: fake(metric="wasserstein")}
    sty = plots.sweep_table(recs, metric="wasserstein")
    assert list(sty.data["λ"]) == [0.0, 0.1]
    assert "test acc (%)" in sty.data.columns


def test_lambda_sweep_figure_draws_each_lambda():
    recs = {0.0: fake(metric="wasserstein"), 0.1: fake(metric="wasserstein", acc=0.6)}
    fig = plots.lambda_sweep_figure(recs, metric="wasserstein", dataset="cifar10")
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 2]


def test_lambda_sweep_figure_fits_the_column():
    recs = {lam: fake(metric="wasserstein", epochs=5) for lam in (0.0, 0.001, 0.01, 0.1)}
    fig = plots.lambda_sweep_figure(recs, metric="wasserstein", dataset="cifar10")
    check_column_figure(fig, panels=3)
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    colors = {matplotlib.colors.to_hex(line.get_color()) for ax in fig.axes for line in ax.lines}
    assert colors <= {c.lower() for c in style.OKABE_ITO}
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    legend_box = fig.legends[0].get_window_extent()
    assert not any(legend_box.overlaps(ax.get_window_extent()) for ax in fig.axes)


def test_embedding_figure_layout(monkeypatch):
    class FakeUMAP:  # the layout is under test, not UMAP: the first two coordinates
        def __init__(self, **kwargs):
            pass

        def fit_transform(self, z):
            return np.asarray(z)[:, :2]

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    rng = np.random.default_rng(0)
    panels = {t: (rng.normal(size=(30, 4)), rng.normal(size=(30, 4))) for t in ("a", "b")}
    fig = plots.embedding_figure(panels)
    check_column_figure(fig, panels=2)
    for ax in fig.axes:
        teacher, student = ax.collections
        assert matplotlib.colors.to_hex(teacher.get_facecolor()[0]) == style.TEACHER_RED.lower()
        assert matplotlib.colors.to_hex(student.get_facecolor()[0]) == style.STUDENT_BLUE.lower()
    four = {str(i): panels["a"] for i in range(4)}
    fig = plots.embedding_figure(four)  # more than three panels: stacked, not widened
    check_column_figure(fig, panels=4)
    assert sum(ax.get_visible() for ax in fig.axes) == 4


def test_run_finished_rejects_nan_and_partial():
    assert experiments.run_finished(fake())
    bad = fake()
    bad["history"][0]["train_ce"] = float("nan")
    assert not experiments.run_finished(bad)
    part = fake()
    part["history"] = part["history"][:1]
    assert not experiments.run_finished(part)


def test_table1_rows_are_checked():
    with pytest.raises(ValueError, match="E9"):
        experiments.table1_configs("cpu", "cifar10", ["E9"], [42], source="folder")


def test_student_configs_are_built_in_one_place():
    cfgs = experiments.student_configs(
        "cpu",
        "cifar10",
        ["wasserstein", "gaussian_wasserstein"],
        seed=42,
        source="folder",
        overrides={"epochs": 1},
    )
    assert list(cfgs) == ["baseline", "wasserstein", "gaussian_wasserstein"]
    assert cfgs["baseline"].metric is None and cfgs["baseline"].lam == 0
    assert cfgs["wasserstein"].metric == "wasserstein" and cfgs["wasserstein"].lam > 0
    assert all(c.epochs == 1 and c.source == "folder" for c in cfgs.values())
    assert len({c.teacher.hash for c in cfgs.values()}) == 1
    # Table 1, the lambda sweep and the theory chapter ask the store for the same runs
    table = experiments.table1_configs(
        "cpu", "cifar10", ["E1"], [42], source="folder", overrides={"epochs": 1}
    )
    assert table["baseline"] == [cfgs["baseline"]] and table["E1"] == [cfgs["wasserstein"]]
    assert table["teacher"] == [cfgs["baseline"].teacher]
    sweep = experiments.sweep_configs(
        "cpu",
        "cifar10",
        "wasserstein",
        [0.0, cfgs["wasserstein"].lam],
        42,
        source="folder",
        overrides={"epochs": 1},
    )
    assert sweep[cfgs["wasserstein"].lam] == cfgs["wasserstein"] and sweep[0.0].lam == 0
