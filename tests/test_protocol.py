"""The Table 1 protocol on tiny generated data: the validation split (``n_val``), strong
teachers, the teacher-output cache, the committed results store, the teacher-margin check,
Table 1 seed by seed and the calibration of lambda on the validation split."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_data import tiny_cifar_folder

import kd2m.runs as runs
import kd2m.train
from kd2m._io import FileError
from kd2m.book import experiments
from kd2m.data import DATASETS, ImageData, Loader, load_data, tensor_sha256
from kd2m.profiles import PROFILES, WeakTeacherError, check_teacher, student_config, teacher_config
from kd2m.runs import RunConfig, load_model, load_record, run, run_dir
from kd2m.stats import decode_correct
from kd2m.train import evaluate

# the students of the Table 1 tests (the teacher follows n_train, epochs and batch size)
TINY = {"epochs": 1, "batch_size": 32, "width": 4, "n_train": 60, "n_test": None}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 training and 4 test images per class, each class its own mean colour."""
    return tiny_cifar_folder(tmp_path_factory.mktemp("tinycifar"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One run store for the module (the teacher trained by one test is loaded by the next);
    no committed results but those a test puts there."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD2M_PROGRESS", "0")
        mp.delenv("KD2M_RESULTS", raising=False)
        yield tmp_path_factory.mktemp("store")


def tiny_teacher(**kw) -> RunConfig:
    small = {"epochs": 2, "batch_size": 32, "width": 8, "n_train": None, "n_test": None}
    return teacher_config("cpu", "cifar10", source="folder", **(small | kw))


def tiny(metric=None, lam=0.0, teacher=None, **kw) -> RunConfig:
    """A width-4 ResNet-8 student of the width-8 ResNet-20 teacher trained on all 120
    training images; the student sees ``n_train`` (default 60) of them."""
    small = {"epochs": 1, "batch_size": 32, "width": 4, "n_train": 60, "n_test": None}
    return student_config(
        "cpu",
        "cifar10",
        metric,
        lam=lam,
        source="folder",
        teacher=teacher or tiny_teacher(),
        **(small | kw),
    )


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# ------------------------------------------------------------------ 1: ImageData.validation


def _indexed_data(n_train=100, n_test=30, k=10) -> ImageData:
    """Training image i carries its index in its first two pixels (so a subset's images
    name the parent's indices); labels i % k."""
    x_train = torch.randint(0, 256, (n_train, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    x_train = x_train.to(torch.uint8)
    x_train[:, 0, 0, 0] = (torch.arange(n_train) % 256).to(torch.uint8)
    x_train[:, 0, 0, 1] = (torch.arange(n_train) // 256).to(torch.uint8)
    y_train = torch.arange(n_train) % k
    x_test = torch.zeros((n_test, 3, 4, 4), dtype=torch.uint8)
    y_test = torch.arange(n_test) % k
    prov = {"dataset": "cifar10", "content_sha256": tensor_sha256(x_train, y_train, x_test, y_test)}
    info = DATASETS["cifar10"]
    return ImageData("cifar10", x_train, y_train, x_test, y_test, list(info.classes), info, prov)


def _parent_index(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist()


def test_validation_split_is_the_training_subset_plus_left_out_images():
    data = _indexed_data()
    for seed in (0, 3):
        val = data.validation(50, 20, seed=seed)
        sub = data.subset(50, None, seed=seed)
        # the training images are exactly those of subset(n_train): same tensors, same order
        assert torch.equal(val.x_train, sub.x_train) and torch.equal(val.y_train, sub.y_train)
        itr, iva = _parent_index(val.x_train), _parent_index(val.x_test)
        assert len(set(iva)) == 20 and not set(itr) & set(iva)
        assert iva == sorted(iva)  # in the order of the training split
        assert torch.equal(val.y_test, data.y_train[iva])  # each image keeps its label
        assert torch.equal(val.x_test, data.x_train[iva])
        # stratified: 5 of each class left out, 2 of each drawn
        assert torch.equal(torch.bincount(val.y_test, minlength=10), torch.full((10,), 2))
        assert val.provenance["n_train"] == 50 and val.provenance["n_test"] == 20
        assert val.provenance["subset"]["n_val"] == 20
        assert val.provenance["content_sha256"] == tensor_sha256(
            val.x_train, val.y_train, val.x_test, val.y_test
        )
    # seeded: the same call gives the same images, another seed others
    assert torch.equal(data.validation(50, 20, seed=3).x_test, val.x_test)
    assert not torch.equal(data.validation(50, 20, seed=4).x_test, val.x_test)
    # every left-out image when n_val asks for all of them
    assert sorted(_parent_index(data.validation(50, 50).x_test)) == sorted(
        set(range(100)) - set(_parent_index(data.validation(50, 50).x_train))
    )
    with pytest.raises(ValueError, match=r"n_val=51.*50 training images are left out"):
        data.validation(50, 51)
    with pytest.raises(ValueError, match=r"n_val=1.*0 training images are left out"):
        data.validation(None, 1)


# ------------------------------------------------------------ 2, 3: n_val runs, strong teachers


def test_validation_run_is_evaluated_on_the_validation_images(root, folder):
    cfg = tiny(n_val=20)
    rec = run(cfg, root=root, folder=folder, device="cpu")
    f = rec["final"]
    assert f["evaluated_on"] == "validation" and f["test_n"] == 20
    assert rec["data"]["n_test"] == 20 and rec["data"]["n_train"] == 60
    assert rec["config"]["n_val"] == 20
    # the images evaluated are those of ImageData.validation(n_train, n_val, seed=0)
    data = load_data("cifar10", source="folder", folder=folder, root=root).validation(60, 20)
    assert rec["data"]["content_sha256"] == data.provenance["content_sha256"]
    correct = decode_correct(f["test_correct"], f["test_n"])
    assert correct.mean() == f["test_acc"]
    model, _ = load_model(cfg, root)
    loader = Loader.from_data(data, "test", batch_size=256, train=False, device="cpu")
    again = evaluate(model, loader, device=torch.device("cpu"), per_image=True)
    assert np.array_equal(again["correct"].numpy(), correct)
    # no test image is looked at: the monitor holds the same 20 validation images
    assert rec["history"][-1]["monitor_acc"] == f["test_acc"]
    assert rec["history"][-1]["monitor_ce"] == pytest.approx(f["test_ce"], rel=1e-6)
    # n_val changes the student, not its teacher (its default teacher does not follow it)
    plain = student_config("cpu", "cifar10", "wasserstein", **TINY)
    with_val = student_config("cpu", "cifar10", "wasserstein", n_val=20, **TINY)
    assert with_val.teacher == plain.teacher and with_val.teacher.hash == plain.teacher.hash
    assert with_val.hash != plain.hash and with_val.replace(n_val=None).hash == plain.hash
    assert rec["teacher"]["hash"] == cfg.teacher.hash
    trec = load_record(run_dir(cfg.teacher, root))
    assert trec["final"]["evaluated_on"] == "test" and trec["final"]["test_n"] == 40
    with pytest.raises(ValueError, match=r"n_val=5.*teacher"):
        RunConfig(role="teacher", n_val=5)
    # more validation images than the student left out: the error names n_val
    with pytest.raises(ValueError, match=r"n_val=61"):
        run(tiny(n_val=61), root=root, folder=folder, device="cpu")


@pytest.mark.parametrize("teacher_n", [None, 100])
def test_strong_teacher_sees_more_images_than_its_student(root, folder, teacher_n):
    cfg = tiny("hinton", lam=1.0, teacher=tiny_teacher(n_train=teacher_n, epochs=1))
    rec = run(cfg, root=root, folder=folder, device="cpu")
    trec = load_record(run_dir(cfg.teacher, root))
    assert rec["status"] == trec["status"] == "finished"
    assert rec["data"]["n_train"] == 60
    assert trec["data"]["n_train"] == (120 if teacher_n is None else teacher_n)
    assert rec["teacher"]["hash"] == cfg.teacher.hash
    assert rec["teacher"]["model_sha256"] == trec["files"]["model.pt"]
    assert np.isfinite(rec["history"][0]["train_distill"])


# ------------------------------------------------------------------ 4: teacher-output cache


def test_teacher_output_cache_is_exact(root, folder, monkeypatch, tmp_path):
    calls: list[bool] = []  # for each teacher output asked for: whether the cache had it
    original = kd2m.train.Distiller.teacher_outputs

    def spy(self, x, key=None):
        calls.append(self.teacher_cache is not None and key in self.teacher_cache)
        return original(self, x, key)

    monkeypatch.setattr(kd2m.train.Distiller, "teacher_outputs", spy)
    # 60 images in batches of 16: 3 steps per epoch, 2 epochs
    first = tiny("hinton", lam=1.0, seed=7, epochs=2, batch_size=16)
    second = tiny("wasserstein", lam=0.1, seed=7, epochs=2, batch_size=16)
    runs._TEACHER_MEMO.clear()
    run(first, root=root, folder=folder, device="cpu")
    assert calls == [False] * 6  # every batch computed by the teacher once
    assert len(runs._TEACHER_MEMO) == 1
    (cache,) = runs._TEACHER_MEMO.values()
    assert set(cache) == {(e, s) for e in range(2) for s in range(3)}
    calls.clear()
    rec = run(second, root=root, folder=folder, device="cpu")
    assert calls == [True] * 6  # the same seed's batches: every one from the cache
    # without the cache (a fresh process), the second student trains to the same numbers
    runs._TEACHER_MEMO.clear()
    shutil.move(run_dir(second, root), tmp_path / "moved")
    calls.clear()
    again = run(second, root=root, folder=folder, device="cpu")
    assert calls == [False] * 6
    assert _without_seconds(again["history"]) == _without_seconds(rec["history"])
    assert again["final"] == rec["final"]
    assert again["files"]["model.pt"] == rec["files"]["model.pt"]
    # another seed's batches are other keys: the memo holds one seed at a time
    key_before = next(iter(runs._TEACHER_MEMO))
    run(
        tiny("hinton", lam=1.0, seed=8, epochs=1, batch_size=16),
        root=root,
        folder=folder,
        device="cpu",
    )
    assert list(runs._TEACHER_MEMO) != [key_before] and len(runs._TEACHER_MEMO) == 1


def test_teacher_cache_only_on_the_cpu_and_per_batching():
    """One cache per (teacher weights, data, seed, batch size, flip): a change of any of
    them is a fresh cache (and the memo holds only the last); none off the CPU."""
    runs._TEACHER_MEMO.clear()
    cfg = tiny("hinton", lam=1.0)

    def job(dev="cpu", sha="a" * 64, data="d" * 64, hflip=True, **changes):
        return SimpleNamespace(
            dev=torch.device(dev),
            cfg=cfg.replace(**changes),
            teacher_rec={"files": {"model.pt": sha}},
            data=SimpleNamespace(provenance={"content_sha256": data}),
            hflip=hflip,
        )

    assert runs._teacher_cache(job("meta")) is None
    assert runs._TEACHER_MEMO == {}
    a = runs._teacher_cache(job())
    assert a == {} and len(runs._TEACHER_MEMO) == 1
    a[(0, 0)] = "outputs"
    # the same teacher, data and batches, another metric and lambda: the same cache
    assert runs._teacher_cache(job(metric="wasserstein", lam=0.5)) is a
    for other in (
        job(sha="b" * 64),
        job(data="e" * 64),
        job(hflip=False),
        job(seed=cfg.seed + 1),
        job(batch_size=cfg.batch_size + 1),
    ):
        fresh = runs._teacher_cache(other)
        assert fresh == {} and fresh is not a and len(runs._TEACHER_MEMO) == 1
        a = runs._teacher_cache(job())  # back to the first: recomputed (the memo is one)
        assert a == {}
    runs._TEACHER_MEMO.clear()


# ------------------------------------------------------------ 5: committed results store


def _commit(cfg: RunConfig, src_root, dst, files=()) -> None:
    stem = f"{cfg.name}-{cfg.hash}"
    shutil.copy(run_dir(cfg, src_root) / "record.json", dst / f"{stem}.json")
    for name in files:
        shutil.copy(run_dir(cfg, src_root) / name, dst / f"{stem}.{name}")


def test_committed_results_stand_for_runs(root, folder, tmp_path, monkeypatch):
    teacher = tiny_teacher()
    student = tiny("hinton", lam=1.0)
    srec = run(student, root=root, folder=folder, device="cpu")
    trec = load_record(run_dir(teacher, root))
    store = tmp_path / "store"
    committed = store / "results" / "x"
    committed.mkdir(parents=True)
    _commit(teacher, root, committed, files=["model.pt"])
    _commit(student, root, committed)
    assert runs.results_dirs(store) == [committed]
    # the committed records are returned; nothing is trained or written to the run store
    assert run(student, root=store, folder=folder, device="cpu") == srec
    assert run(teacher, root=store, folder=folder, device="cpu") == trec
    assert not (store / "runs").exists()
    model, _ = load_model(teacher, store)
    ref, _ = load_model(teacher, root)
    for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # a committed file that differs from its record's sha256 is refused, naming it
    pt = committed / f"{teacher.name}-{teacher.hash}.model.pt"
    good = pt.read_bytes()
    pt.write_bytes(good + b"\0")
    with pytest.raises(FileError, match=str(pt)):
        load_model(teacher, store)
    with pytest.raises(FileError, match=str(pt)):
        run(student, root=store, folder=folder, device="cpu")
    pt.write_bytes(good)
    # a teacher committed without its weights: the committed student still stands (the
    # tables need records only), a student not yet trained trains the teacher into the
    # store first
    pt.unlink()
    assert run(student, root=store, folder=folder, device="cpu") == srec
    assert not (store / "runs").exists()
    with pytest.raises(FileNotFoundError, match="without its model.pt"):
        load_model(teacher, store)
    other = tiny("hinton", lam=1.0, seed=3)
    orec = run(other, root=store, folder=folder, device="cpu")
    stored_teacher = load_record(run_dir(teacher, store))
    assert stored_teacher["status"] == "finished" and orec["status"] == "finished"
    assert orec["teacher"]["model_sha256"] == stored_teacher["files"]["model.pt"]
    assert (run_dir(other, store) / "record.json").exists()
    # the teacher trained again to the same weights as the committed one
    assert stored_teacher["files"]["model.pt"] == trec["files"]["model.pt"]
    # KD2M_RESULTS set but empty: no committed results, the student is trained into the store
    assert not (run_dir(student, store) / "record.json").exists()
    monkeypatch.setenv("KD2M_RESULTS", "")
    assert runs.results_dirs(store) == []
    fresh = run(student, root=store, folder=folder, device="cpu")
    assert (run_dir(student, store) / "record.json").exists()
    assert fresh["final"] == srec["final"]
    assert _without_seconds(fresh["history"]) == _without_seconds(srec["history"])
    monkeypatch.setenv("KD2M_RESULTS", str(committed))
    assert runs.results_dirs(store) == [committed]


# ------------------------------------------------------------------ 6: the teacher margin


def _rec(name, acc):
    return {"name": name, "final": {"test_acc": acc}}


def test_check_teacher_margin(monkeypatch):
    assert PROFILES["cpu"]["teacher_margin"] == 10.0
    weak, base = _rec("T-name", 0.4834), _rec("B-name", 0.4)
    with pytest.raises(WeakTeacherError) as err:
        check_teacher("cpu", weak, base)
    assert isinstance(err.value, ValueError)
    msg = str(err.value)
    assert "T-name 48.34 % vs baseline B-name 40.00 %" in msg
    assert "leads by +8.34 points" in msg and ">= 10)" in msg
    line = check_teacher("cpu", weak, base, strict=False)
    assert "dry run" in line and "48.34 %" in line and "40.00 %" in line
    strong = check_teacher("cpu", _rec("T", 0.75), _rec("B", 0.5))
    assert "dry run" not in strong and "+25.00" in strong and ">= 10)" in strong
    # a lead of exactly the margin passes, a hair less does not; the margin is the profile's
    monkeypatch.setitem(PROFILES["cpu"], "teacher_margin", 12.5)
    assert "+12.50" in check_teacher("cpu", _rec("T", 0.625), _rec("B", 0.5))
    with pytest.raises(WeakTeacherError, match=r">= 12.5\)"):
        check_teacher("cpu", _rec("T", 0.625), _rec("B", 0.5 + 2**-20))
    with pytest.raises(WeakTeacherError, match=r">= 5\)"):
        check_teacher("paper", _rec("T", 0.5), _rec("B", 0.5))


# ------------------------------------------------------------------ 7: Table 1, seed by seed


@pytest.fixture
def spy_runs(monkeypatch):
    """The (role, metric, lam, seed) of every config that kd2m.book.experiments asks the
    run store for, in order."""
    asked: list[tuple] = []
    real = experiments.run

    def spy(cfg, **kw):
        asked.append((cfg.role, cfg.metric, cfg.lam, cfg.seed))
        return real(cfg, **kw)

    monkeypatch.setattr(experiments, "run", spy)
    return asked


def test_table1_runs_seed_by_seed(root, folder, monkeypatch, spy_runs):
    monkeypatch.setenv("KD2M_DATA", str(root))
    # no teacher can lead by 101 points: every check is a (non-strict) dry-run line
    monkeypatch.setitem(PROFILES["cpu"], "teacher_margin", 101.0)
    kd, lam = PROFILES["cpu"]["lams"]["hinton"], PROFILES["cpu"]["lam"]
    assert kd == 1.0 and lam == 1e-2
    recs = experiments.table1_runs(
        "cpu",
        ["cifar10"],
        ["KD", "E1"],
        [1, 2],
        folders={"cifar10": str(folder)},
        device="cpu",
        overrides=TINY,
        progress=False,
    )
    assert list(recs) == ["checks", "teacher", "baseline", "KD", "E1"]
    assert spy_runs == [
        ("teacher", None, 0.0, 42),
        *[
            row
            for s in (1, 2)
            for row in (
                ("student", None, 0.0, s),
                ("student", "hinton", kd, s),
                ("student", "wasserstein", lam, s),
            )
        ],
    ]
    (teacher,) = recs["teacher"]["cifar10"]
    for row, metric, want in (
        ("baseline", None, 0.0),
        ("KD", "hinton", kd),
        ("E1", "wasserstein", lam),
    ):
        got = recs[row]["cifar10"]
        assert [r["config"]["seed"] for r in got] == [1, 2]
        assert all(r["config"]["metric"] == metric and r["config"]["lam"] == want for r in got)
        assert all(r["teacher"]["hash"] == teacher["hash"] for r in got)
        assert all(r["final"]["evaluated_on"] == "test" for r in got)
    checks = recs["checks"]["cifar10"]
    assert len(checks) == 2 and all("dry run" in line and ">= 101" in line for line in checks)
    for line, base in zip(checks, recs["baseline"]["cifar10"], strict=True):
        assert f"{100 * base['final']['test_acc']:.2f} %" in line and base["name"] in line
    # a lambda given per row replaces the profile's in that row only
    spy_runs.clear()
    again = experiments.table1_runs(
        "cpu",
        ["cifar10"],
        ["E1"],
        [1],
        folders={"cifar10": str(folder)},
        device="cpu",
        overrides=TINY,
        progress=False,
        lams={"cifar10": {"E1": 0.5}},  # per dataset, as calibrate_all returns them
    )
    assert again["E1"]["cifar10"][0]["config"]["lam"] == 0.5
    assert again["baseline"]["cifar10"] == recs["baseline"]["cifar10"][:1]  # loaded
    cfgs = experiments.table1_configs(
        "cpu", "cifar10", ["KD", "E1"], [1], source="folder", overrides=TINY, lams={"E1": 0.5}
    )
    assert cfgs["KD"][0].lam == kd and cfgs["E1"][0].lam == 0.5


def test_table1_runs_refuses_a_weak_teacher_without_dry_run_overrides(
    root, folder, monkeypatch, spy_runs
):
    """With no override that changes the teacher the check is strict: the weak teacher
    stops the table after the first baseline, before any student distils it. (The profile
    itself is made tiny here, so that the runs are those of the test above.)"""
    monkeypatch.setenv("KD2M_DATA", str(root))
    cpu = PROFILES["cpu"]
    monkeypatch.setitem(cpu, "teacher_margin", 101.0)
    monkeypatch.setitem(cpu, "teacher", cpu["teacher"] | {"epochs": 1, "n_train": 60})
    for k in ("n_train", "n_test", "epochs", "batch_size"):
        monkeypatch.setitem(cpu, k, TINY[k])
    with pytest.raises(WeakTeacherError, match=r">= 101\)"):
        experiments.table1_runs(
            "cpu",
            ["cifar10"],
            ["KD"],
            [1],
            folders={"cifar10": str(folder)},
            device="cpu",
            overrides={"width": 4},
            progress=False,
        )
    assert spy_runs == [("teacher", None, 0.0, 42), ("student", None, 0.0, 1)]


# ------------------------------------------------------------ 8: lambda on the validation split


def test_calibrate_chooses_on_validation_images(root, folder, monkeypatch):
    monkeypatch.setenv("KD2M_DATA", str(root))
    folders = {"cifar10": str(folder)}
    chosen, recs = experiments.calibrate(
        "cpu",
        "cifar10",
        ["E1"],
        [0.1, 0.0001],
        1,
        20,
        folders=folders,
        device="cpu",
        overrides=TINY,
        progress=False,
    )
    assert list(recs) == ["baseline", "E1"] and list(recs["E1"]) == [0.1, 0.0001]
    assert list(recs["baseline"]) == [0.0]
    table_teacher = experiments.table1_configs(
        "cpu", "cifar10", [], [1], source="folder", overrides=TINY
    )["teacher"][0]
    for rec in [recs["baseline"][0.0], *recs["E1"].values()]:
        assert rec["final"]["evaluated_on"] == "validation" and rec["final"]["test_n"] == 20
        assert rec["config"]["n_val"] == 20 and rec["data"]["n_train"] == 60
        assert rec["teacher"]["hash"] == table_teacher.hash  # the teacher of Table 1
    for lam, rec in recs["E1"].items():
        assert rec["config"]["lam"] == lam and rec["config"]["metric"] == "wasserstein"
    accs = {lam: rec["final"]["test_acc"] for lam, rec in recs["E1"].items()}
    best = max(accs.values())
    assert chosen == {"E1": min(lam for lam, a in accs.items() if a == best)}


def test_calibrate_selection_rule_and_empty_grid(folder, monkeypatch):
    """The best validation accuracy wins; ties go to the smaller lambda, whatever the
    order of the grid. (The records are stand-ins: no training.)"""
    table: dict[float, float] = {}

    def fake_run_all(configs, args, device, progress):
        return [{"final": {"test_acc": table[c.lam]}} for c in configs]

    monkeypatch.setattr(experiments, "_run_all", fake_run_all)

    def choose(accs: dict) -> float:
        table.clear()
        table.update({0.0: 0.5} | accs)
        chosen, recs = experiments.calibrate(
            "cpu", "cifar10", ["E1"], list(accs), 1, 20, folders={"cifar10": str(folder)}
        )
        assert list(recs["E1"]) == list(accs)
        return chosen["E1"]

    assert choose({0.3: 0.7, 0.01: 0.6, 0.1: 0.7}) == 0.1
    assert choose({1.0: 0.7, 0.001: 0.7}) == 0.001
    assert choose({0.5: 0.6, 1.0: 0.9}) == 1.0
    assert choose({0.5: 0.9, 1.0: 0.6}) == 0.5
    assert choose({0.2: 0.4}) == 0.2  # one lambda: chosen even below the baseline
    # an empty grid chooses nothing and asks for nothing (not even the data)
    nowhere = {"cifar10": str(folder / "nowhere")}
    assert experiments.calibrate("cpu", "cifar10", ["E1"], [], 1, 20, folders=nowhere) == ({}, {})
