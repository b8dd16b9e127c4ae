"""Tables and figures from records: Table 1 beside the paper's numbers, Fig. 2, results folders."""

import json

import matplotlib
import numpy as np
import pytest

from kd2m.book import experiments, plots

matplotlib.use("Agg")


def fake(role="student", metric=None, acc=0.5, seed=42, dataset="cifar10", epochs=2):
    hist = [
        {
            "epoch": e + 1,
            "lr": 0.1,
            "train_ce": 1.0 / (e + 1),
            "train_distill": None if metric is None else 2.0 / (e + 1),
            "train_acc": acc,
            "test_ce": 1.0,
            "test_acc": acc,
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
        "teacher": {"cifar10": [fake("teacher", acc=0.8)]},
        "baseline": {"cifar10": [fake(acc=0.5, seed=s) for s in (1, 2, 3)]},
        "E1": {"cifar10": [fake(metric="wasserstein", acc=a) for a in (0.6, 0.62)]},
    }
    df = plots.table1(recs)
    assert df.loc["baseline", "CIFAR-10 (ours)"] == "50.00 ± 0.00"
    assert df.loc["baseline", "CIFAR-10 (paper)"] == "85.11"  # the paper's student alone
    assert df.loc["E1", "CIFAR-10 (ours)"] == f"61.00 ± {np.std([60, 62], ddof=1):.2f}"
    assert df.loc["teacher", "CIFAR-10 (ours)"] == "80.00"  # one seed: no spread
    assert df.loc["E1", "CIFAR-10 (paper)"] == "86.45" and df.loc["E1", "metric"] == "wasserstein"
    assert df.loc["E1", "CIFAR-10 seeds"] == 2


def test_results_folder_grouping(tmp_path):
    for rec in (fake("teacher", acc=0.7), fake(acc=0.6), fake(metric="gaussian_kl", acc=0.65)):
        (tmp_path / f"{rec['name']}.json").write_text(json.dumps(rec))
    grouped = experiments.results_records(tmp_path)
    assert list(grouped) == ["baseline", "teacher", "G2"]
    df = experiments.results_table(tmp_path)
    assert df.loc["G2", "CIFAR-10 (ours)"] == "65.00" and df.loc["G2", "device"] == "cpu"
    assert "no records" in experiments.results_table(tmp_path / "missing").iloc[0, 0]


def test_lambda_sweep_figure_draws_each_lambda():
    recs = {0.0: fake(metric="wasserstein"), 0.1: fake(metric="wasserstein", acc=0.6)}
    fig = plots.lambda_sweep_figure(recs, metric="wasserstein", dataset="cifar10")
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 2]


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
