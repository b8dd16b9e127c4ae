"""Sweeps (python -m kd2m sweep, kd2m.sweep): the runs of Table 1, a dry run, and the three
submitit executors: debug (in this process), local (processes) and slurm (against a fake
``sbatch``). Training is tiny: the 10-class image folder of tests/tiny_data.py, one epoch."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from cli_helpers import forbid_training as _no_training
from cli_helpers import run_cli as _cli
from tiny_data import tiny_cifar_folder

import kd2m
from kd2m import sweep as sw
from kd2m.metrics import TABLE1_METRICS
from kd2m.runs import load_record, run_dir

REPO = Path(kd2m.__file__).resolve().parent.parent
TINY = {"epochs": 1, "width": 4, "n_train": None, "n_test": None, "batch_size": 32}
TINY_SETS = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_cifar_folder(tmp_path_factory.mktemp("tinycifar"))


@pytest.fixture()
def store(tmp_path, monkeypatch):
    root = tmp_path / "store"
    monkeypatch.setenv("KD2M_DATA", str(root))
    monkeypatch.setenv("KD2M_PROGRESS", "0")
    return root


# ------------------------------------------------------------------ which runs


def test_dry_run_lists_every_run_of_the_papers_table1(store, capsys, monkeypatch):
    from kd2m.book.experiments import table1_configs

    _no_training(monkeypatch)
    rc, out, err = _cli(["sweep", "--dry-run", "--profile", "paper"], capsys)
    assert rc == 0, err
    lines = out.strip().splitlines()
    per_dataset = 1 + 1 + len(TABLE1_METRICS)  # teacher, baseline, one student per row
    assert len(lines) == 3 * per_dataset + 1
    n = 3 * per_dataset
    assert lines[-1] == f"total: {n} runs on 3 dataset(s): 0 finished, 0 running, {n} absent"
    # the book's own builder (kd2m.book.experiments) gives the same names and hashes
    expected = []
    for ds in ("svhn", "cifar10", "cifar100"):
        cfgs = table1_configs("paper", ds, list(TABLE1_METRICS), [42], source="torchvision")
        expected += [(row, c.name, c.hash) for row, cs in cfgs.items() for c in cs]
    got = [tuple(line.split()[:3]) for line in lines[:-1]]
    assert got == expected
    assert all(line.split()[-1] == "absent" for line in lines[:-1])
    assert not store.exists()  # nothing written, nothing submitted


def test_plan_has_the_hashes_of_the_committed_h200_column(tmp_path):
    # independent reference: the records trained on an H200 with `train --profile paper`
    # from the offline CIFAR-10 copy, seeds 42-44 (the rows that finished in the session)
    folder = REPO / "data/results/paper-cifar10-h200-30ep-teacher"
    committed = {p.stem for p in folder.glob("*.json")}
    assert len(committed) == 9
    runs = sw.plan("paper", ["cifar10"], seeds=[42, 43, 44], folders={"cifar10": str(tmp_path)})
    assert committed <= {r.key for r in runs}
    assert [r.label for r in runs[:9]] == ["teacher", "baseline", *TABLE1_METRICS]
    assert all(r.folder == str(tmp_path.resolve()) for r in runs)


def test_plan_fig2_grid_is_the_books_and_each_run_once():
    from kd2m.book.experiments import sweep_configs

    lambdas = [0.0, 1e-4, 1e-3, 1e-2]  # the paper profile's Fig. 2 grid; 1e-4 is row E1
    runs = sw.plan("paper", ["svhn"], rows=["E1", "G2"], fig2_lambdas=lambdas)
    book = sweep_configs("paper", "svhn", "wasserstein", lambdas, 42, source="torchvision")
    keys = [r.key for r in runs]
    assert len(keys) == len(set(keys)) == 1 + 1 + 2 + 3
    assert {f"{c.name}-{c.hash}" for c in book.values()} <= set(keys)
    assert [r.label for r in runs][-3:] == ["fig2 lam=0", "fig2 lam=0.001", "fig2 lam=0.01"]


def test_plan_reads_the_rows_seeds_lambda_and_overrides(monkeypatch):
    monkeypatch.setitem(TABLE1_METRICS, "M1", "mmd")  # a row the lead adds later
    runs = sw.plan("cpu", seeds=[1, 2], lam=0.5, overrides={"epochs": 2})
    labels = [r.label for r in runs]
    assert labels == ["teacher"] + 2 * ["baseline", *TABLE1_METRICS]
    assert labels[-1] == "M1" and runs[-1].cfg.metric == "mmd"
    students = runs[1:]
    assert [r.cfg.seed for r in students] == [1] * (len(students) // 2) + [2] * (len(students) // 2)
    assert {r.cfg.lam for r in students if r.cfg.metric} == {0.5}
    assert {r.cfg.epochs for r in runs} == {2} and runs[0].cfg.seed == 42
    assert all(r.cfg.teacher == runs[0].cfg for r in students)


# ------------------------------------------------------------------ executors


def test_debug_executor_trains_teacher_baseline_and_a_student(store, folder, capsys, monkeypatch):
    args = ["sweep", "--executor", "debug", "--rows", "E1", "--folder", str(folder)]
    args += ["--device", "cpu", "--no-progress", "--log-dir", str(store / "logs"), *TINY_SETS]
    rc, out, err = _cli(args, capsys)
    assert rc == 0, err
    runs = sw.plan("cpu", rows=["E1"], overrides=TINY, folders={"cifar10": str(folder)})
    assert [r.label for r in runs] == ["teacher", "baseline", "E1"]
    recs = [load_record(run_dir(r.cfg, store)) for r in runs]
    assert all(
        rec["status"] == "finished" and rec["hash"] == r.cfg.hash
        for rec, r in zip(recs, runs, strict=True)
    )
    assert (
        recs[2]["teacher"]["hash"] == runs[0].cfg.hash
        and recs[2]["config"]["metric"] == "wasserstein"
    )
    assert {rec["hardware"]["pid"] for rec in recs} == {os.getpid()}  # in this process
    for rec in recs:
        assert (
            f"{rec['name']} [{rec['hash']}]: test accuracy {100 * rec['final']['test_acc']:.2f}%"
            in out
        )
    assert out.index("-teacher-") < out.index("-baseline-")
    # now the store holds them: the dry run says so, a second sweep submits nothing
    _no_training(monkeypatch)
    rc, out, _ = _cli(args + ["--dry-run"], capsys)
    assert rc == 0 and out.strip().splitlines()[-1].endswith("3 finished, 0 running, 0 absent")
    rc, out, _ = _cli(args, capsys)
    assert rc == 0 and out.count("already finished (test accuracy") == 3


def test_local_executor_two_processes(store, folder, capsys, monkeypatch):
    from submitit.core.utils import DelayedSubmission

    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the jobs import this checkout's kd2m
    logs = store / "logs"
    args = ["sweep", "--executor", "local", "--parallel", "2", "--rows", "E1", "--seeds", "7"]
    args += ["--folder", f"cifar10={folder}", "--device", "cpu", "--log-dir", str(logs)]
    rc, out, err = _cli(args + TINY_SETS, capsys)
    assert rc == 0, err + out
    runs = sw.plan("cpu", rows=["E1"], seeds=[7], overrides=TINY, folders={"cifar10": str(folder)})
    recs = [load_record(run_dir(r.cfg, store)) for r in runs]
    assert [rec["status"] for rec in recs] == ["finished"] * 3
    pids = [rec["hardware"]["pid"] for rec in recs]
    assert os.getpid() not in pids and len(set(pids)) == 3  # one process per job
    assert [rec["config"]["seed"] for rec in recs] == [42, 7, 7]
    assert out.index("-teacher-") < out.index("-baseline-") and "FAILED" not in out
    assert len(list(logs.glob("*_result.pkl"))) == 3  # submitit's LocalExecutor wrote them
    # LocalExecutor hides the GPUs (CUDA_VISIBLE_DEVICES=""); each job gets this process's
    pickles = sorted(logs.glob("*_submitted.pkl"))
    env = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    assert [DelayedSubmission.load(p).args[2].env for p in pickles] == [env] * 3


# ------------------------------------------------------------------ slurm

FAKE_SBATCH = """#!/bin/sh
# a fake sbatch: records its arguments and the script, answers with increasing job ids
n=$(cat "{log}.count" 2>/dev/null || echo 4242)
echo $((n + 1)) > "{log}.count"
{{ echo "=== job $n args: $*"; cat "$1"; }} >> "{log}"
echo "Submitted batch job $n"
"""


def _fake_slurm(tmp_path, monkeypatch) -> Path:
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch.log"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH.format(log=log)), ("srun", "#!/bin/sh\nexit 1\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def _submissions(log: Path) -> list[tuple[str, str]]:
    parts = re.split(r"^=== job (\d+) args: .*$", log.read_text(), flags=re.M)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def test_slurm_teachers_first_students_after_their_teacher(store, tmp_path, capsys, monkeypatch):
    from submitit.core.utils import DelayedSubmission

    log = _fake_slurm(tmp_path, monkeypatch)
    _no_training(monkeypatch)
    args = ["sweep", "--executor", "slurm", "--profile", "paper", "--datasets", "cifar10,svhn"]
    args += ["--partition", "gpu", "--time", "30", "--gpus-per-node", "1", "--cpus-per-task"]
    args += [
        "4",
        "--mem-gb",
        "16",
        "--slurm-option",
        "account=abc",
        "--log-dir",
        str(tmp_path / "l"),
    ]
    rc, out, err = _cli(args, capsys)
    assert rc == 0, err
    subs = _submissions(log)
    assert [job for job, _ in subs] == ["4242", "4243", "4244", "4245"]
    n = 1 + len(TABLE1_METRICS)
    for i, (_, script) in enumerate(subs):
        for opt in ("partition=gpu", "time=30", "gpus-per-node=1", "cpus-per-task=4", "mem=16GB"):
            assert f"#SBATCH --{opt}\n" in script
        assert "#SBATCH --account=abc\n" in script
        if i < 2:  # the two teachers, first, one job each, depending on nothing
            assert "--array" not in script and "--dependency" not in script
            assert f"--job-name=kd2m-{['cifar10', 'svhn'][i]}-teacher" in script
        else:  # then each dataset's students: one array after its own teacher's job
            assert f"#SBATCH --array=0-{n - 1}%{n}\n" in script
            assert f"#SBATCH --dependency=afterok:{4240 + i}\n" in script
    # each array task's pickle is TrainRun of the planned student
    runs = sw.plan("paper", ["cifar10", "svhn"])
    students = [r for r in runs if r.cfg.role == "student"]
    for k, r in enumerate(students):
        job = f"{4244 + k // n}_{k % n}"
        ds = DelayedSubmission.load(tmp_path / "l" / f"{job}_submitted.pkl")
        assert isinstance(ds.function, sw.TrainRun) and ds.args[0] == r.cfg
        assert f"{r.cfg.name} [{r.cfg.hash}]: Slurm job {job} (after teacher job" in out
    assert not (store / "runs").exists()


def test_slurm_skips_a_finished_teacher(store, tmp_path, capsys, monkeypatch):
    log = _fake_slurm(tmp_path, monkeypatch)
    teacher = sw.plan("paper", ["cifar10"])[0].cfg
    d = run_dir(teacher, store)
    d.mkdir(parents=True)
    (d / "record.json").write_text(
        json.dumps({"format": 2, "status": "finished", "final": {"test_acc": 0.5}})
    )
    args = ["sweep", "--executor", "slurm", "--profile", "paper", "--datasets", "cifar10"]
    rc, out, err = _cli(args + ["--time", "5", "--log-dir", str(tmp_path / "l")], capsys)
    assert rc == 0, err
    subs = _submissions(log)
    assert len(subs) == 1 and "--array=" in subs[0][1] and "--dependency" not in subs[0][1]
    assert "already finished (test accuracy 50.00%)" in out


def test_train_run_sets_its_environment_then_runs(monkeypatch):
    seen = {}

    def fake_run(cfg, **kw):
        seen.update(kw, cuda=os.environ.get("CUDA_VISIBLE_DEVICES"), other="KD2M_X" in os.environ)
        return {"name": cfg.name, "final": {"test_acc": 0.25}}

    monkeypatch.setattr(sw, "run", fake_run)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # as submitit's LocalExecutor leaves it
    monkeypatch.setenv("KD2M_X", "1")
    cfg = sw.plan("cpu")[0].cfg
    env = {"CUDA_VISIBLE_DEVICES": "2,3", "KD2M_X": None}
    options = sw.RunOptions("/r", download=True, device="cuda", threads=None, env=env)
    assert sw.TrainRun()(cfg, "/f", options) == (cfg.name, 0.25)
    assert seen["cuda"] == "2,3" and seen["other"] is False
    assert (seen["root"], seen["folder"], seen["download"], seen["device"]) == (
        "/r",
        "/f",
        True,
        "cuda",
    )


def test_train_run_requeues_itself_with_the_same_arguments():
    cfg = sw.plan("cpu")[0].cfg
    options = sw.RunOptions(root="/tmp/x")
    job = sw.TrainRun()
    again = job.checkpoint(cfg, None, options)
    assert again.function is job and again.args == (cfg, None, options)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--executor", "pbs"], ["--executor 'pbs'", "local, slurm, debug"]),
        (["--rows", "E1,E9"], ["E9", "Table 1 rows"]),
        (["--set", "epochs"], ["--set 'epochs'", "KEY=VALUE"]),
        (["--set", "nosuch=1"], ["nosuch"]),
        (["--seeds", "1,x"], ["--seeds 'x'"]),
        (["--fig2-lambdas", "0.1,-1"], ["lambdas", "-1"]),
        (["--profile", "paper", "--folder", "/tmp"], ["names no dataset", "DATASET=PATH"]),
        (["--folder", "svhn=/tmp"], ["svhn", "not among the datasets"]),
        (["--folder", "cifar10=/no/such/dir"], ["/no/such/dir"]),
        (["--executor", "slurm"], ["--time"]),
        (["--partition", "gpu"], ["--partition", "slurm"]),
        (["--executor", "debug", "--parallel", "2"], ["--parallel"]),
        (["--fig2-metric", "mmd"], ["--fig2-lambdas"]),
    ],
)
def test_errors_print_one_line(extra, words, store, capsys, monkeypatch):
    _no_training(monkeypatch)
    monkeypatch.setenv("PATH", "/nonexistent")  # no sbatch either
    rc, out, err = _cli(["sweep", "--device", "cpu", *extra], capsys)
    assert rc == (1 if "/no/such/dir" in words else 2) and out == ""  # 1: missing data
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    for w in words:
        assert w in err
    assert not (store / "runs").exists()


def test_slurm_without_sbatch_and_own_options_refused(store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    rc, _, err = _cli(["sweep", "--executor", "slurm", "--time", "5"], capsys)
    assert rc == 2 and "sbatch and srun not found on PATH" in err
    _fake_slurm(tmp_path, monkeypatch)
    rc, _, err = _cli(
        ["sweep", "--executor", "slurm", "--time", "5", "--slurm-option", "time=9"], capsys
    )
    assert rc == 2 and "'time'" in err and "minutes" in err
