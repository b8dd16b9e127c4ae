"""The training loop (Algorithm 1), the run store, resume and the CLI, on tiny generated data."""

import json

import numpy as np
import pytest
import torch
from tiny_data import tiny_cifar_folder

from kd2m.profiles import student_config, teacher_config
from kd2m.runs import (
    RECORD_FORMAT,
    RunConfig,
    list_runs,
    load_model,
    load_monitor,
    load_record,
    run,
    run_dir,
)
from kd2m.stats import decode_correct


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny CIFAR-10-like image folder: each class has its own mean colour (learnable)."""
    return tiny_cifar_folder(tmp_path_factory.mktemp("tinycifar"))


def tiny(metric=None, lam=0.0, epochs=2, **kw):
    small = {"epochs": epochs, "batch_size": 32, "width": 4, "n_train": None, "n_test": None}
    teacher = teacher_config("cpu", "cifar10", source="folder", **(small | {"width": 8}))
    return student_config(
        "cpu", "cifar10", metric, lam=lam, source="folder", teacher=teacher, **(small | kw)
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One run store for the module: a teacher trained by one test is loaded by the next."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD2M_PROGRESS", "0")
        yield tmp_path_factory.mktemp("store")


def test_teacher_baseline_and_kd2m_records(root, folder):
    cfg = tiny("wasserstein", lam=0.05)
    rec = run(cfg, root=root, folder=folder, device="cpu")
    assert rec["status"] == "finished" and rec["format"] == RECORD_FORMAT == 3
    assert rec["config"] == cfg.to_dict() and rec["hash"] == cfg.hash
    assert [h["epoch"] for h in rec["history"]] == [1, 2]
    keys = {
        "epoch",
        "lr",
        "train_ce",
        "train_distill",
        "train_acc",
        "monitor_ce",
        "monitor_acc",
        "seconds",
        "test_feature_w2",
        "test_feature_gap",
    }
    for row in rec["history"]:
        assert keys <= set(row)
        assert all(np.isfinite(row[k]) for k in keys)
        assert row["train_distill"] >= 0
    # the cosine schedule is stepped once per epoch
    assert rec["history"][0]["lr"] == cfg.lr and rec["history"][1]["lr"] < cfg.lr
    assert rec["teacher"]["hash"] == cfg.teacher.hash
    assert rec["data"]["n_train"] == 120 and rec["data"]["source"] == "folder"
    assert {"torch", "torchvision", "pot"} <= set(rec["versions"])
    assert rec["wall_seconds"] > 0
    # the test set is evaluated once, at the end, with each image's correctness
    f = rec["final"]
    correct = decode_correct(f["test_correct"], f["test_n"])
    assert f["test_n"] == rec["data"]["n_test"] and correct.mean() == f["test_acc"]
    assert f["evaluated_on"] == "test" and "test_acc" not in rec["history"][-1]
    # the teacher was trained on the way and has its own record and weights
    trec = load_record(run_dir(cfg.teacher, root))
    assert trec["status"] == "finished" and trec["history"][0]["train_distill"] is None
    model, projector = load_model(cfg, root)
    assert projector is not None  # width 4 -> 16-d features, teacher width 8 -> 32-d
    mon = load_monitor(cfg, root)
    assert len(mon["epochs"]) == 2 and mon["teacher"].shape == (40, 32)
    # JSON on disk is exactly what run() returned
    assert json.loads((run_dir(cfg, root) / "record.json").read_text()) == rec
    assert not (run_dir(cfg, root) / "checkpoint.pt").exists()
    # a finished config is loaded, not retrained
    again = run(cfg, root=root, folder=folder, device="cpu")
    assert again == rec
    names = {r["name"] for r in list_runs(root)}
    assert {cfg.name, cfg.teacher.name} <= names


def test_resume_gives_the_same_numbers(root, folder, tmp_path_factory):
    cfg = tiny("gaussian_wasserstein", lam=0.1, epochs=3)
    full_root = tmp_path_factory.mktemp("full")
    full = run(cfg, root=full_root, folder=folder, device="cpu")
    part = run(cfg, root=root, folder=folder, device="cpu", stop_after=1)
    assert part["status"] == "running" and len(part["history"]) == 1
    assert (run_dir(cfg, root) / "checkpoint.pt").exists()
    resumed = run(cfg, root=root, folder=folder, device="cpu")
    assert resumed["status"] == "finished"
    drop = {"seconds"}
    for a, b in zip(full["history"], resumed["history"], strict=True):
        assert {k: v for k, v in a.items() if k not in drop} == {
            k: v for k, v in b.items() if k not in drop
        }
    m1, _ = load_model(cfg, full_root)
    m2, _ = load_model(cfg, root)
    for p1, p2 in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(p1, p2)


def test_lambda_zero_with_metric_records_but_does_not_train_on_it(root, folder):
    base = run(tiny(None), root=root, folder=folder, device="cpu")
    zero = run(tiny("wasserstein", lam=0.0), root=root, folder=folder, device="cpu")
    assert base["history"][0]["train_distill"] is None
    assert zero["history"][0]["train_distill"] > 0
    for a, b in zip(base["history"], zero["history"], strict=True):
        assert a["train_ce"] == pytest.approx(b["train_ce"], rel=1e-6)
        assert a["monitor_acc"] == b["monitor_acc"]
    assert base["final"]["test_correct"] == zero["final"]["test_correct"]


@pytest.mark.parametrize(
    "metric",
    ["class_wasserstein", "joint_wasserstein", "gaussian_kl", "class_gaussian", "mmd", "hinton"],
)
def test_every_metric_trains_one_epoch(root, folder, metric):
    rec = run(tiny(metric, lam=0.05, epochs=1), root=root, folder=folder, device="cpu")
    assert np.isfinite(rec["history"][0]["train_distill"])


def test_missing_data_error_names_the_path(tmp_path):
    cfg = tiny(None)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run(cfg, root=tmp_path / "store", folder=tmp_path / "nowhere", device="cpu")


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="role='pupil'"):
        RunConfig(role="pupil")
    with pytest.raises(ValueError, match="epochs=0"):
        RunConfig(epochs=0)
    with pytest.raises(ValueError, match="lam=-1"):
        RunConfig(lam=-1)
    with pytest.raises(ValueError, match="metric='wasserstien'"):
        RunConfig(metric="wasserstien", teacher=RunConfig(role="teacher"))
    with pytest.raises(ValueError, match="teacher"):
        RunConfig(metric="wasserstein", lam=1.0)
    with pytest.raises(ValueError, match="teacher.source='folder'.*same dataset"):
        RunConfig(teacher=RunConfig(role="teacher", source="folder"))
    # a teacher may have seen more training images than its student (a strong teacher)
    assert RunConfig(n_train=10, teacher=RunConfig(role="teacher", n_train=None)).n_train == 10
    with pytest.raises(ValueError, match="n_val=0"):
        RunConfig(n_val=0)
    with pytest.raises(ValueError, match="n_val=5.*teacher"):
        RunConfig(role="teacher", n_val=5)
    with pytest.raises(ValueError, match="profile='laptop'"):
        teacher_config("laptop", "cifar10")
    with pytest.raises(ValueError, match="unknown override"):
        student_config("cpu", "cifar10", epoch=3)
    with pytest.raises(ValueError, match="unknown RunConfig field"):
        RunConfig.from_dict({"role": "teacher", "colour": "red"})


def test_config_hash_is_stable_and_sensitive():
    a = student_config("paper", "cifar10", "wasserstein")
    assert RunConfig.from_dict(json.loads(json.dumps(a.to_dict()))).hash == a.hash
    assert a.replace(lam=2e-4).hash != a.hash
    assert a.replace(teacher=a.teacher.replace(seed=1)).hash != a.hash


def test_precision_is_validated_and_hashed_only_when_not_auto():
    with pytest.raises(ValueError, match=r"precision='fp16': expected one of \('auto', 'bf16'"):
        RunConfig(precision="fp16")
    with pytest.raises(ValueError, match="precision=32"):
        RunConfig(precision=32)
    a = student_config("paper", "cifar10", "wasserstein")
    assert a.precision == "auto" and a.teacher.precision == "auto"
    assert a.replace(precision="auto").hash == a.hash
    hashes = {a.hash, a.replace(precision="bf16").hash, a.replace(precision="fp32").hash}
    assert len(hashes) == 3
    # the teacher keeps its own precision; a student's is part of its own hash only
    b = student_config("paper", "cifar10", "wasserstein", precision="fp32")
    assert b.precision == "fp32" and b.teacher == a.teacher
    assert RunConfig.from_dict(json.loads(json.dumps(b.to_dict()))).hash == b.hash


def test_committed_records_keep_their_hashes():
    """Every committed record (made before ``precision`` existed) is named by the hash its
    config gives today: a field added at its default leaves the names alone."""
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "data" / "results"
    recs = [json.loads(p.read_text()) for p in sorted(results.glob("*/*.json"))]
    recs = [r for r in recs if isinstance(r, dict) and "config" in r]
    assert len(recs) >= 40
    for rec in recs:
        assert "precision" not in rec["config"]
        assert RunConfig.from_dict(rec["config"]).hash == rec["hash"], rec["name"]


def test_precision_reaches_a_run_and_its_record(root, folder, monkeypatch):
    from kd2m.models import KD2MNet

    cfg = tiny("gaussian_wasserstein", lam=0.05, epochs=1, precision="bf16")
    run(cfg.teacher, root=root, folder=folder, device="cpu")
    seen = []
    forward = KD2MNet.forward

    def spy(self, x):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(self, x)

    monkeypatch.setattr(KD2MNet, "forward", spy)
    rec = run(cfg, root=root, folder=folder, device="cpu")
    assert rec["precision"] == "bf16" and rec["config"]["precision"] == "bf16"
    assert len(seen) > 3 and set(seen) == {torch.bfloat16}  # training, monitor, test, teacher
    assert np.isfinite(rec["final"]["test_ce"])
    assert load_record(run_dir(cfg.teacher, root))["precision"] == "fp32"  # auto on the CPU


def test_load_model_leaves_the_global_rng_alone(root, folder):
    cfg = tiny(None)
    run(cfg, root=root, folder=folder, device="cpu")
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    load_model(cfg, root)
    load_model(cfg.teacher, root)
    assert torch.equal(torch.rand(3), expected)


def test_bad_metric_options_fail_before_anything_trains(root, folder):
    with pytest.raises(ValueError, match="beta"):
        tiny("joint_wasserstein", lam=0.1, metric_options={"beta": -1.0})
    with pytest.raises(ValueError, match="unknown option"):
        tiny("wasserstein", lam=0.1, metric_options={"temperature": 2.0})
    with pytest.raises(ValueError, match="metric_options"):
        tiny(None, metric_options={"beta": 1.0})


def test_cli_train_and_list(root, folder, capsys, monkeypatch):
    from kd2m.__main__ import main

    monkeypatch.setenv("KD2M_DATA", str(root))
    args = [
        "train",
        "teacher",
        "--profile",
        "cpu",
        "--dataset",
        "cifar10",
        "--folder",
        str(folder),
        "--no-progress",
        "--device",
        "cpu",
        "--set",
        "epochs=1",
        "--set",
        "width=4",
        "--set",
        "n_train=null",
        "--set",
        "n_test=null",
        "--set",
        "batch_size=32",
    ]
    assert main(args) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["list"]) == 0
    assert "cifar10-resnet20-teacher" in capsys.readouterr().out
    assert main(["train", "student", "--metric", "nope", "--folder", str(folder)]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_option_parsing_and_early_errors(root, capsys):
    from kd2m.__main__ import _overrides, main

    assert _overrides(["beta=2", "label_cost=ce", "diagonal=true", "bandwidth=null"]) == {
        "beta": 2,
        "label_cost": "ce",
        "diagonal": True,
        "bandwidth": None,
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        _overrides(["beta"])
    # a bad option is refused by the config, before any data is read or anything trains
    args = [
        "train",
        "student",
        "--metric",
        "joint_wasserstein",
        "--option",
        "beta=-1",
        "--dataset",
        "cifar10",
        "--folder",
        str(root / "no-such-folder"),
        "--device",
        "cpu",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "metric_options" in err and "beta" in err
    assert main(args[:4] + ["--option", "temperature=2"] + args[6:]) == 2
    assert "temperature" in capsys.readouterr().err


def test_cli_column_trains_the_teacher_then_every_student(root, folder, capsys, monkeypatch):
    """`column` is a local sweep of one dataset (kd2m.sweep, submitit's LocalExecutor): the
    teacher first, then the students, --parallel at a time; a failed student fails the
    command and names its error, the others are trained."""
    from pathlib import Path

    import kd2m
    from kd2m.__main__ import main

    store = root / "column"
    monkeypatch.setenv("KD2M_DATA", str(store))
    monkeypatch.setenv("PYTHONPATH", str(Path(kd2m.__file__).resolve().parent.parent))
    small = {"epochs": 1, "width": 4, "n_train": None, "n_test": None, "batch_size": 32}
    broken = student_config("cpu", "cifar10", "gaussian_kl", source="folder", **small)
    run_dir(broken, store).mkdir(parents=True)
    (run_dir(broken, store) / "record.json").write_text("{not json")  # fails its job
    args = ["column", "--dataset", "cifar10", "--folder", str(folder), "--device", "cpu"]
    args += ["--no-progress", "--parallel", "2", "--metrics", "wasserstein", "gaussian_kl"]
    args += [a for k, v in small.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    assert main(args) == 1  # one student failed: the command says so
    out = capsys.readouterr().out
    assert out.index("cifar10-resnet20-teacher") < out.index("cifar10-resnet8-baseline")
    failed = [line for line in out.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "gaussian_kl" in failed[0] and "record.json" in failed[0]
    for metric in (None, "wasserstein"):
        cfg = student_config("cpu", "cifar10", metric, source="folder", **small)
        rec = load_record(run_dir(cfg, store))
        assert rec["status"] == "finished" and rec["data"]["folder"] == str(folder.resolve())
        assert rec["teacher"]["hash"] == broken.teacher.hash
