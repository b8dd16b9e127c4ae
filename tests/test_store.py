"""The run store trusts nothing it has not verified (issue 10): locks, checksums, per-epoch
monitors, errors that name the file, CLI validation, notebook parameters, git provenance.

Every case runs on tiny generated data (a 10-class image folder of 12 + 4 images per class).
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from cli_helpers import forbid_training as _no_training
from cli_helpers import run_cli as _cli
from PIL import Image
from tiny_data import tiny_cifar_folder

import kd2m
from kd2m.data import load_data
from kd2m.profiles import student_config, teacher_config
from kd2m.runs import load_model, load_monitor, load_record, run, run_dir

REPO = Path(kd2m.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_cifar_folder(tmp_path_factory.mktemp("tinycifar"))


@pytest.fixture()
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("KD2M_PROGRESS", "0")
    return tmp_path / "store"


SMALL = {"epochs": 2, "batch_size": 32, "width": 4, "n_train": None, "n_test": None}


def tiny(metric=None, lam=0.0, **kw):
    teacher = teacher_config("cpu", "cifar10", source="folder", **(SMALL | {"width": 8}))
    return student_config(
        "cpu", "cifar10", metric, lam=lam, source="folder", teacher=teacher, **(SMALL | kw)
    )


# ------------------------------------------------------------------ case 1: locks


def test_two_identical_processes_train_once(root, folder):
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store import tiny
        from kd2m.runs import run
        rec = run(tiny("wasserstein", lam=0.05), root={str(root)!r}, folder={str(folder)!r},
                  device="cpu")
        print(json.dumps(rec))
    """)
    env = os.environ | {"PYTHONPATH": str(REPO), "KD2M_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    got = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    # both returned the record of ONE training (two trainings differ at least in their
    # timings), done by one of the two processes
    assert got[0] == got[1]
    pids = {p.pid for p in procs}
    assert got[0]["hardware"]["pid"] in pids
    cfg = tiny("wasserstein", lam=0.05)
    assert load_record(run_dir(cfg.teacher, root))["hardware"]["pid"] in pids
    assert len(list((root / "runs").iterdir())) == 2  # one teacher, one student


def test_column_trains_the_teacher_its_students_use(root, folder, capsys, monkeypatch):
    monkeypatch.setenv("KD2M_DATA", str(root))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    args = [
        "column",
        "--folder",
        str(folder),
        "--metrics",
        "wasserstein",
        "--device",
        "cpu",
        "--no-progress",
        "--parallel",
        "2",
    ]
    for k, v in (SMALL | {"epochs": 1, "seed": 1}).items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    rc, out, err = _cli(args, capsys)
    assert rc == 0, err
    teachers = sorted(p.name for p in (root / "runs").iterdir() if "-teacher-" in p.name)
    assert len(teachers) == 1, teachers  # the parent's teacher is the students' teacher
    students = [p for p in (root / "runs").iterdir() if "-teacher-" not in p.name]
    assert len(students) == 2
    for d in students:
        rec = load_record(d)
        assert rec["status"] == "finished" and rec["config"]["seed"] == 1
        assert rec["teacher"]["name"] + "-" + rec["teacher"]["hash"] == teachers[0]


# ------------------------------------------------------------------ case 2: corrupt inputs


def test_corrupt_checkpoint_is_not_resumed(root, folder, tmp_path):
    cfg = tiny("wasserstein", lam=0.05, epochs=2)
    full = run(cfg, root=tmp_path / "full", folder=folder, device="cpu")
    run(cfg, root=root, folder=folder, device="cpu", stop_after=1)
    ckpt = run_dir(cfg, root) / "checkpoint.pt"
    raw = bytearray(ckpt.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 4000] = bytes(4000)
    ckpt.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="checkpoint.pt does not match the sha256"):
        rec = run(cfg, root=root, folder=folder, device="cpu")
    assert rec["status"] == "finished"
    # started again from epoch 1: the same numbers as an uninterrupted run
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in full["history"]]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rec["history"]] == strip


def _cache_file(root: Path) -> Path:
    (cache,) = (root / "cache").glob("*.pt")
    return cache


def test_garbled_data_cache_is_rebuilt_with_a_warning(tmp_path, folder):
    clean = load_data("cifar10", root=tmp_path, folder=folder)
    cache = _cache_file(tmp_path)
    blob = torch.load(cache, weights_only=True)
    blob["x_train"][:] = 0
    blob["y_train"][:] = 77
    torch.save(blob, cache)
    with pytest.warns(UserWarning, match=f"data cache {cache}.*labels outside"):
        again = load_data("cifar10", root=tmp_path, folder=folder)
    assert torch.equal(again.x_train, clean.x_train) and torch.equal(again.y_train, clean.y_train)
    assert again.subset(50, 20).y_train.shape == (50,)
    # pixels changed but labels in range: the content hash catches it
    blob = torch.load(cache, weights_only=True)
    blob["x_test"][0] = 255 - blob["x_test"][0]
    torch.save(blob, cache)
    with pytest.warns(UserWarning, match="content sha256"):
        assert torch.equal(load_data("cifar10", root=tmp_path, folder=folder).x_test, clean.x_test)
    # a truncated cache is rebuilt too
    cache.write_bytes(cache.read_bytes()[:1000])
    with pytest.warns(UserWarning, match=f"{cache}.*unreadable"):
        assert torch.equal(load_data("cifar10", root=tmp_path, folder=folder).y_test, clean.y_test)


# ------------------------------------------------------------------ case 3: monitors


def test_monitor_keeps_each_epochs_own_head_and_resume_keeps_it(root, folder, tmp_path):
    cfg = tiny("wasserstein", lam=0.05, epochs=3)
    run(cfg, root=tmp_path / "full", folder=folder, device="cpu")
    mon = load_monitor(cfg, tmp_path / "full")
    heads = mon["head"]
    assert len(heads) == 3
    for (w0, b0), (w1, b1) in zip(heads, heads[1:], strict=False):
        assert not torch.equal(w0, w1) and not torch.equal(b0, b1)
    model, _ = load_model(cfg, tmp_path / "full")
    assert torch.equal(heads[-1][0], model.head.weight.detach())
    # a killed and resumed run stores the same monitor as an uninterrupted one
    run(cfg, root=root, folder=folder, device="cpu", stop_after=2)
    run(cfg, root=root, folder=folder, device="cpu")
    resumed = load_monitor(cfg, root)
    for (wa, ba), (wb, bb) in zip(heads, resumed["head"], strict=True):
        assert torch.equal(wa, wb) and torch.equal(ba, bb)
    for za, zb in zip(mon["epochs"], resumed["epochs"], strict=True):
        assert torch.equal(za, zb)


# ------------------------------------------------------------------ case 5: verified reuse


def test_finished_run_with_missing_or_changed_weights_is_trained_again(root, folder):
    from kd2m._io import FileError

    cfg = tiny("wasserstein", lam=0.05, epochs=1)
    first = run(cfg, root=root, folder=folder, device="cpu")
    model_pt = run_dir(cfg, root) / "model.pt"
    model_pt.unlink()
    with pytest.raises(FileError, match=f"{model_pt} is missing or differs"):
        load_model(cfg, root)
    with pytest.warns(UserWarning, match="model.pt is missing: training it again"):
        rec = run(cfg, root=root, folder=folder, device="cpu")
    assert rec["status"] == "finished" and rec["files"]["model.pt"] == first["files"]["model.pt"]
    load_model(cfg, root)
    # the teacher's weights deleted: run(student) trains the teacher again
    (run_dir(cfg.teacher, root) / "model.pt").unlink()
    with pytest.warns(UserWarning, match="teacher.*model.pt is missing"):
        run(cfg, root=root, folder=folder, device="cpu")
    load_model(cfg.teacher, root)
    # changed bytes are caught before torch reads them
    raw = bytearray(model_pt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model_pt.write_bytes(bytes(raw))
    with pytest.raises(FileError, match="differs from the sha256"):
        load_model(cfg, root)


def test_record_from_other_data_is_not_returned(root, folder, tmp_path):
    cfg = tiny(None, epochs=1).replace(teacher=None)
    run(cfg, root=root, folder=folder, device="cpu")
    other = tiny_cifar_folder(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match=f"other data.*{other}"):  # DataMismatchError
        run(cfg, root=root, folder=other, device="cpu")


# ------------------------------------------------------------------ case 6: errors name files


def test_truncated_record_names_the_file_in_the_api_and_the_cli(root, folder, capsys, monkeypatch):
    from kd2m._io import FileError

    cfg = tiny(None, epochs=1)
    run(cfg, root=root, folder=folder, device="cpu")
    rec_path = run_dir(cfg, root) / "record.json"
    rec_path.write_text(rec_path.read_text()[:40])
    with pytest.raises(FileError, match=f"cannot read {rec_path}.*delete"):
        run(cfg, root=root, folder=folder, device="cpu")
    rc, out, err = _cli(["list", "--root", str(root)], capsys)
    assert rc == 0 and "unreadable" in out and str(rec_path) in out
    monkeypatch.setenv("KD2M_DATA", str(root))
    args = ["train", "teacher", "--dataset", "cifar10", "--folder", str(folder)]
    args += ["--device", "cpu", "--no-progress"]
    for k, v in (SMALL | {"width": 8}).items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    teacher_rec = run_dir(cfg.teacher, root) / "record.json"
    teacher_rec.write_text("{")
    rc, out, err = _cli(args, capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(teacher_rec) in err and "delete" in err
    with pytest.raises(FileError):
        _cli(args + ["--debug"], capsys)


def test_unreadable_torch_file_names_the_path(tmp_path):
    from kd2m._io import FileError, torch_load

    path = tmp_path / "x.pt"
    torch.save({"a": torch.arange(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(FileError, match=f"cannot read {path}.*delete it"):
        torch_load(path, "delete it", weights_only=True)


def test_truncated_image_and_bad_archive_name_the_file(tmp_path, folder):
    from kd2m._io import FileError

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    jpg = broken / "train" / "cat" / "0003.jpg"
    Image.open(broken / "train" / "cat" / "0003.png").save(jpg)
    jpg.write_bytes(jpg.read_bytes()[:200])
    with pytest.raises(FileError, match=f"cannot decode image {jpg}"):
        load_data("cifar10", root=tmp_path / "r1", folder=broken)
    archive = tmp_path / "cifar.tar.gz"
    archive.write_bytes(b"not a gzip file at all" * 100)
    with pytest.raises(FileError, match=f"cannot extract {archive}"):
        load_data("cifar10", root=tmp_path / "r2", folder=archive)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_disk_full_names_the_file(tmp_path, monkeypatch):
    from kd2m import _io

    original = _io._torch_save
    monkeypatch.setattr(_io, "_torch_save", lambda obj, tmp: original(obj, "/dev/full"))
    target = tmp_path / "model.pt"
    with pytest.raises(_io.FileError, match=f"disk full while writing {target}"):
        _io.atomic_torch_save({"w": torch.zeros(100_000)}, target)
    assert not target.exists() and not list(tmp_path.iterdir())  # no temporary left

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(_io.FileError, match="disk full while writing .*record.json"):
        _io.atomic_write(tmp_path / "record.json", full)


def test_cli_missing_folder_is_one_line(root, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KD2M_DATA", str(root))
    _no_training(monkeypatch)
    rc, out, err = _cli(
        [
            "train",
            "teacher",
            "--folder",
            str(tmp_path / "nonexistent"),
            "--device",
            "cpu",
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "nonexistent" in err and "does not exist" in err


# ------------------------------------------------------------------ case 7: unwritable store


def test_unwritable_store_fails_before_training(root, folder, monkeypatch):
    cfg = tiny(None, epochs=1).replace(teacher=None)
    run_dir(cfg, root).parent.mkdir(parents=True)
    run_dir(cfg, root).write_text("a file where the run directory goes")
    _no_training(monkeypatch)
    with pytest.raises(RuntimeError, match=f"cannot write {run_dir(cfg, root)}"):  # FileError
        run(cfg, root=root, folder=folder, device="cpu")


# ------------------------------------------------------------------ case 8: CLI validation


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--set", "source=folder"], "--set source"),
        (["--set", "dataset=svhn"], "--dataset"),
        (["--set", "metric=mmd"], "--metric"),
        (["--set", "lam=1"], "--lam"),
        (["--set", "teacher=null"], "teacher"),
        (["--set", "seed=1.5"], "seed=1.5"),
        (["--set", "epochs=true"], "epochs=True"),
        (["--set", 'hflip="no"'], "hflip='no'"),
        (["--set", "nosuch=1"], "nosuch"),
        (["--option", "nosuch=1"], "nosuch"),
        (["--option", "beta=-1"], "beta"),
        (["--device", "meta"], "meta"),
    ],
)
def test_cli_rejects_bad_values_before_training(extra, needle, root, folder, capsys, monkeypatch):
    monkeypatch.setenv("KD2M_DATA", str(root))
    _no_training(monkeypatch)
    args = [
        "train",
        "student",
        "--metric",
        "joint_wasserstein",
        "--folder",
        str(folder),
        "--no-progress",
    ]
    if "--device" not in extra:
        args += ["--device", "cpu"]
    rc, out, err = _cli(args + extra, capsys)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (root / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cli_cuda_without_gpu(root, folder, capsys, monkeypatch):
    monkeypatch.setenv("KD2M_DATA", str(root))
    _no_training(monkeypatch)
    rc, out, err = _cli(["train", "teacher", "--folder", str(folder), "--device", "cuda"], capsys)
    assert rc == 2 and "no CUDA GPU is available" in err
    assert not (root / "runs").exists()


def test_cli_column_checks_everything_first(root, folder, capsys, monkeypatch):
    monkeypatch.setenv("KD2M_DATA", str(root))
    _no_training(monkeypatch)
    base = ["column", "--folder", str(folder), "--device", "cpu", "--no-progress"]
    rc, out, err = _cli(base + ["--metrics", "wasserstein", "nosuch"], capsys)
    assert rc == 2 and "nosuch" in err and not (root / "runs").exists()
    with pytest.raises(SystemExit) as exc:
        _cli(base + ["--parallel", "0"], capsys)
    assert exc.value.code == 2
    assert "--parallel" in capsys.readouterr().err


# ------------------------------------------------------------------ case 9: notebook parameters


def test_notebook_parameters_are_checked(tmp_path, monkeypatch):
    from kd2m.book.experiments import data_args
    from kd2m.data import DataNotFoundError
    from kd2m.profiles import check_parameters

    with pytest.raises(ValueError, match="profile='nosuch'"):
        check_parameters("nosuch")
    missing = tmp_path / "nowhere.tar.gz"
    # a known dataset's absent copy is an error only where torchvision may not stand in
    with pytest.raises(DataNotFoundError, match=f"folders\\['cifar10'\\]='{missing}'"):
        check_parameters("cpu", folders={"cifar10": str(missing)}, download=False)
    check_parameters("cpu", folders={"cifar10": str(missing)}, download="auto")
    # a dataset of one's own has nothing to fall back on
    with pytest.raises(DataNotFoundError, match=f"folders\\['digits'\\]='{missing}'"):
        check_parameters("cpu", folders={"digits": str(missing)})
    monkeypatch.setenv("KD2M_DATA", str(tmp_path / "store"))
    with pytest.raises(DataNotFoundError, match="nowhere"):
        data_args("cifar10", {"cifar10": str(missing)}, download=False)
    with pytest.raises(ValueError, match="E7"):
        check_parameters("cpu", rows=["E1", "E7"])
    with pytest.raises(ValueError, match="wasserstien"):
        check_parameters("cpu", metrics=["wasserstien"])
    with pytest.raises(ValueError, match="lambdas"):
        check_parameters("cpu", lambdas=[0.1, -1])
    with pytest.raises(ValueError, match="device='meta'"):
        check_parameters("cpu", device="meta")
    with pytest.raises(ValueError, match="unknown override"):
        check_parameters("cpu", overrides={"epoch": 1})
    check_parameters(
        "paper",
        device="cpu",
        folders={"cifar10": str(tmp_path)},
        datasets=["cifar10", "svhn"],
        rows=["E1", "G3"],
        metric="wasserstein",
        lambdas=[0, 1e-4],
        seeds=[42],
    )
    assert data_args("cifar10", {"cifar10": str(tmp_path)})["source"] == "folder"
    with pytest.raises(DataNotFoundError, match="Two ways out"):  # no copy, no download
        data_args("svhn", {"cifar10": str(tmp_path)}, download=False)


# ------------------------------------------------------------------ provenance (issue 14)


def _git(cwd, *args):
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_commit_dirty_and_outside_a_checkout(tmp_path, monkeypatch):
    from kd2m.runs import git_state

    repo = tmp_path / "repo"
    pkg = repo / "kd2m"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = _git(repo, "rev-parse", "HEAD")
    assert git_state(pkg) == {"commit": head, "dirty": False, "error": None}
    (pkg / "__init__.py").write_text("x = 2\n")
    assert git_state(pkg) == {"commit": head, "dirty": True, "error": None}
    # a copy of the package that git does not track (an installed copy) cannot tell
    outside = tmp_path / "site-packages" / "kd2m"
    shutil.copytree(pkg, outside)
    state = git_state(outside)
    assert state["commit"] is None and state["dirty"] is None and state["error"]
    # untracked package inside another repository: not that repository's commit
    shutil.copytree(pkg, repo / "vendored")
    assert git_state(repo / "vendored")["commit"] is None
    # no git executable at all
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    state = git_state(pkg)
    assert state["commit"] is None and "not a git checkout" in state["error"]


def test_run_record_stores_the_git_state(root, folder):
    rec = run(tiny(None, epochs=1).teacher, root=root, folder=folder, device="cpu")
    expected = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    if shutil.which("git") is None or expected.returncode != 0:
        assert rec["git"]["commit"] is None and rec["git"]["error"]
    else:
        assert rec["git"]["commit"] == expected.stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
            ).stdout.strip()
            != ""
        )
        assert rec["git"]["dirty"] is dirty
