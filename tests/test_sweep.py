"""Sweeps (python -m kd2m sweep, kd2m.sweep): the runs of Table 1, a dry run, and the three
submitit executors: debug (in this process), local (processes) and slurm (against a fake
``sbatch``). Training is tiny: the 10-class image folder of tests/tiny_data.py, one epoch."""

from __future__ import annotations

import dataclasses
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


def test_plan_each_distilling_student_checks_its_seeds_baseline():
    runs = sw.plan("cpu", seeds=[1, 2], rows=["E1", "G2"], fig2_lambdas=[0.0])
    assert [r.label for r in runs] == ["teacher"] + 2 * ["baseline", "E1", "G2", "fig2 lam=0"]
    # the teacher, the baselines and lambda = 0 (no distillation) check nothing
    assert [r.check is None for r in runs] == [True] + 2 * [True, False, False, True]
    for r in runs:
        if r.check is not None:
            # as `train student` derives it, and the planned baseline of the same seed
            assert r.check.baseline == r.cfg.replace(metric=None, lam=0.0, metric_options={})
            (base,) = [b for b in runs if b.label == "baseline" and b.cfg.seed == r.cfg.seed]
            assert r.check.baseline_key == base.key
            assert r.check == sw.TeacherCheck("cpu", base.cfg, strict=True)
    # overrides the teacher follows make a dry run (as table1_runs): a line, no error
    tiny = sw.plan("cpu", rows=["E1"], overrides=TINY)
    assert tiny[2].check is not None and tiny[2].check.strict is False


def _fake_records(monkeypatch, accs: dict[str, float], calls: list | None = None):
    """``sw.run`` answers a record of the test accuracy ``accs[role or label]``; a value
    None raises (a run that fails)."""

    def fake_run(cfg, **kw):
        role = "baseline" if cfg.role == "student" and cfg.metric is None else cfg.role
        if calls is not None:
            calls.append((role, cfg.hash))
        if accs[role] is None:
            raise RuntimeError(f"{role} {cfg.name} crashed")
        return {"name": cfg.name, "final": {"test_acc": accs[role]}}

    monkeypatch.setattr(sw, "run", fake_run)


def test_train_run_checks_the_teacher_against_the_baseline_first(monkeypatch):
    from kd2m.profiles import PROFILES, WeakTeacherError

    margin = PROFILES["cpu"]["teacher_margin"]
    _, base, student = sw.plan("cpu", rows=["E1"])
    options = sw.RunOptions(root="/r")
    calls: list = []
    # 0.4 points short of the margin: strict refuses before the student trains
    _fake_records(
        monkeypatch,
        {"teacher": 0.5 + (margin - 0.4) / 100, "baseline": 0.5, "student": 0.55},
        calls,
    )
    with pytest.raises(WeakTeacherError, match=f"asks for >= {margin:g}.*refuse to distil"):
        sw.TrainRun()(student.cfg, None, options, student.check)
    assert calls == [("teacher", student.cfg.teacher.hash), ("baseline", base.cfg.hash)]
    # not strict (overrides change the teacher): the student trains, the line says so
    lax = dataclasses.replace(student.check, strict=False)
    name, acc, line = sw.TrainRun()(student.cfg, None, options, lax)
    assert (name, acc) == (student.cfg.name, 0.55) and calls[-1] == ("student", student.cfg.hash)
    assert "allowed: the overrides change the teacher" in line
    # a teacher that leads by the margin passes, strictly
    good = {"teacher": 0.5 + (margin + 0.4) / 100, "baseline": 0.5, "student": 0.6}
    _fake_records(monkeypatch, good)
    _, acc, line = sw.TrainRun()(student.cfg, None, options, student.check)
    assert acc == 0.6 and f"leads by +{margin + 0.4:.2f} points" in line


# ------------------------------------------------------------------ executors


def test_debug_executor_weak_teacher_fails_the_students_not_the_baseline(
    store, folder, tmp_path, monkeypatch
):
    from kd2m.profiles import PROFILES

    monkeypatch.setitem(PROFILES["cpu"], "teacher_margin", 1000.0)  # no teacher is that good
    runs = sw.plan("cpu", rows=["E1"], overrides=TINY, folders={"cifar10": str(folder)})
    teacher, base, student = runs
    assert student.check is not None and not student.check.strict  # TINY changes the teacher
    strict = [
        teacher,
        base,
        dataclasses.replace(student, check=dataclasses.replace(student.check, strict=True)),
    ]
    options = sw.RunOptions(root=str(store), device="cpu")
    ex = sw.make_executor("debug", tmp_path / "logs")
    lines: list[str] = []
    assert sw.run_here(strict, ex, parallel=1, options=options, report=lines.append) == 1
    assert [ln.split()[0] for ln in lines] == ["teacher", "baseline", "E1", "total:"]
    assert "test accuracy" in lines[0] and "test accuracy" in lines[1]
    assert "E1" in lines[2] and "FAILED: teacher " in lines[2]
    assert "asks for >= 1000" in lines[2] and "refuse to distil" in lines[2]
    assert lines[3].endswith("2 trained, 1 failed, 0 not trained")
    assert [sw.store_status(r.cfg, store) for r in runs] == ["finished", "finished", "absent"]
    # not strict (the plan's own check: overrides change the teacher): trained, line shown
    lines.clear()
    assert sw.run_here(runs, ex, parallel=1, options=options, report=lines.append) == 0
    assert sum("already finished (test accuracy" in ln for ln in lines) == 2
    (check,) = [ln for ln in lines if "teacher check:" in ln]
    assert check.startswith("E1") and "allowed: the overrides change the teacher" in check
    assert sw.store_status(student.cfg, store) == "finished"


def test_run_here_orders_the_waves_and_orphans_the_students_of_a_failed_baseline(
    tmp_path, monkeypatch
):
    runs = sw.plan("cpu", seeds=[1, 2], rows=["E1", "G2"])
    calls: list = []
    _fake_records(monkeypatch, {"teacher": 0.9, "baseline": 0.5, "student": 0.6}, calls)
    ex = sw.make_executor("debug", tmp_path / "logs")
    options = sw.RunOptions(root=str(tmp_path / "store"))
    lines: list[str] = []
    assert sw.run_here(runs, ex, parallel=1, options=options, report=lines.append) == 0
    # teacher, both baselines, then each student (its teacher and baseline records first)
    roles = [role for role, _ in calls]
    assert roles[:3] == ["teacher", "baseline", "baseline"]
    assert roles[3:] == 4 * ["teacher", "baseline", "student"]
    reported = [ln.split()[0] for ln in lines if "test accuracy" in ln]
    assert reported == ["teacher", "baseline", "baseline", "E1", "G2", "E1", "G2"]
    # a baseline that fails: its seed's students are not trained, nor asked to be
    calls.clear()
    lines.clear()
    _fake_records(monkeypatch, {"teacher": 0.9, "baseline": None, "student": 0.6}, calls)
    assert sw.run_here(runs, ex, parallel=1, options=options, report=lines.append) == 6
    assert [role for role, _ in calls] == ["teacher", "baseline", "baseline"]
    assert sum("FAILED: baseline " in ln and "crashed" in ln for ln in lines) == 2
    assert sum("not trained: its baseline failed" in ln for ln in lines) == 4
    assert lines[-1].endswith("1 trained, 2 failed, 4 not trained")


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


def test_slurm_teachers_then_baselines_then_students(store, tmp_path, capsys, monkeypatch):
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
    assert [job for job, _ in subs] == [str(4242 + i) for i in range(6)]
    n = len(TABLE1_METRICS)
    for i, (_, script) in enumerate(subs):
        for opt in ("partition=gpu", "time=30", "gpus-per-node=1", "cpus-per-task=4", "mem=16GB"):
            assert f"#SBATCH --{opt}\n" in script
        assert "#SBATCH --account=abc\n" in script
        if i < 2:  # the two teachers, first, one job each, depending on nothing
            assert "--array" not in script and "--dependency" not in script
            assert f"--job-name=kd2m-{['cifar10', 'svhn'][i]}-teacher" in script
        elif i % 2 == 0:  # per dataset its baseline (one seed: one job) after its teacher
            assert "--array" not in script
            assert f"--job-name=kd2m-{['cifar10', 'svhn'][i // 2 - 1]}-baselines" in script
            assert f"#SBATCH --dependency=afterok:{4242 + i // 2 - 1}\n" in script
        else:  # then its students: one array after the baselines' job (hence the teacher's)
            assert f"#SBATCH --array=0-{n - 1}%{n}\n" in script
            assert f"#SBATCH --dependency=afterok:{4242 + i - 1}\n" in script
    # each job's pickle is TrainRun of the planned run; a student's carries its check
    runs = sw.plan("paper", ["cifar10", "svhn"])
    for d, dataset_runs in enumerate((runs[: n + 2], runs[n + 2 :])):
        teacher, base, students = dataset_runs[0], dataset_runs[1], dataset_runs[2:]
        ds = DelayedSubmission.load(tmp_path / "l" / f"{4242 + d}_submitted.pkl")
        assert ds.args[0] == teacher.cfg and ds.args[3:] == ()
        job = str(4244 + 2 * d)
        ds = DelayedSubmission.load(tmp_path / "l" / f"{job}_submitted.pkl")
        assert ds.args[0] == base.cfg and ds.args[3] is None
        assert f"{base.cfg.name} [{base.cfg.hash}]: Slurm job {job} (after teacher job" in out
        for k, r in enumerate(students):
            job = f"{4245 + 2 * d}_{k}"
            ds = DelayedSubmission.load(tmp_path / "l" / f"{job}_submitted.pkl")
            assert isinstance(ds.function, sw.TrainRun) and ds.args[0] == r.cfg
            assert ds.args[3] == sw.TeacherCheck("paper", base.cfg, strict=True)
            line = (
                f"{r.cfg.name} [{r.cfg.hash}]: Slurm job {job} (after baselines job {4244 + 2 * d})"
            )
            assert line in out
    assert not (store / "runs").exists()


def _fake_finished(cfg, store, acc: float = 0.5) -> None:
    d = run_dir(cfg, store)
    d.mkdir(parents=True)
    (d / "record.json").write_text(
        json.dumps({"format": 2, "status": "finished", "final": {"test_acc": acc}})
    )


@pytest.mark.parametrize(
    "done, deps",
    [
        ({"teacher"}, [None, "afterok:4242"]),  # the baseline, then the students after it
        ({"baseline"}, [None, "afterok:4242"]),  # the teacher, then the students after it
        ({"teacher", "baseline"}, [None]),  # the students alone, after nothing
    ],
)
def test_slurm_skips_finished_runs_and_their_dependencies(
    done, deps, store, tmp_path, capsys, monkeypatch
):
    log = _fake_slurm(tmp_path, monkeypatch)
    for r in sw.plan("paper", ["cifar10"])[:2]:
        if r.label in done:
            _fake_finished(r.cfg, store)
    args = ["sweep", "--executor", "slurm", "--profile", "paper", "--datasets", "cifar10"]
    rc, out, err = _cli(args + ["--time", "5", "--log-dir", str(tmp_path / "l")], capsys)
    assert rc == 0, err
    scripts = [script for _, script in _submissions(log)]
    got = [re.findall(r"--dependency=(\S+)", s) for s in scripts]
    assert got == [[d] if d else [] for d in deps]
    assert "--array=" in scripts[-1] and "-students" in scripts[-1]
    assert out.count("already finished (test accuracy 50.00%)") == len(done)


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
    assert sw.TrainRun()(cfg, "/f", options) == (cfg.name, 0.25, None)
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
