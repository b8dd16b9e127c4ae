"""Sweeps: Table 1 of a profile as runs, trained through submitit (one engine).

:func:`plan` expands a profile's Table 1 (and optionally the lambda grid of Fig. 2) into
:class:`SweepRun` s, per dataset: the teacher, then for each seed the baseline student and
one student per Table 1 row (the rows of :data:`kd2m.metrics.TABLE1_METRICS`), built with
:func:`kd2m.profiles.teacher_config` / :func:`kd2m.profiles.student_config` exactly as the
book builds them: the same configs, hence the same hashes and run directories.
:func:`store_status` and :func:`describe` say what the run store holds of each (a dry run).

The runs are trained through a submitit executor (:func:`make_executor`):

* ``debug``: submitit's DebugExecutor, in this process, one run after the other;
* ``local``: submitit's LocalExecutor, ``parallel`` processes on this machine, the
  teachers first, then the baselines, then the students that distil (:func:`run_here`);
* ``slurm``: one job per teacher, then per teacher one job array of its baselines with the
  Slurm dependency ``afterok:<teacher job id>`` and one job array of its distilling
  students with ``afterok:<baselines array job id>`` (:func:`submit_slurm`); returns once
  everything is submitted.

Each job is :class:`TrainRun`: :func:`kd2m.runs.run` of one config, returning the record's
name and test accuracy. A student that distils (a metric with lambda > 0) first checks,
as the book and ``train student`` do, that its teacher beats the baseline of its seed by
the profile's margin (:class:`TeacherCheck`, :func:`kd2m.profiles.check_teacher`): a weak
teacher fails its job. Jobs on several nodes share one run store safely: ``run()`` holds
a lock file per run directory while it trains (so the store must sit on a file system
shared by the nodes that supports file locks), and a run asked for twice is trained once.
A run whose record is already finished is not submitted again.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import submitit
import torch
from submitit.helpers import Checkpointable

from kd2m._io import FileError
from kd2m.data import DATASETS, DEFAULT_IMAGE_SIZE
from kd2m.metrics import TABLE1_METRICS
from kd2m.profiles import (
    PROFILES,
    check_parameters,
    check_teacher,
    folder_fields,
    student_config,
    teacher_config,
    teacher_overrides,
)
from kd2m.runs import RunConfig, data_root, load_record, run, run_dir

__all__ = [
    "DEFAULT_DATASETS",
    "EXECUTORS",
    "FIG2_METRIC",
    "SweepRun",
    "TeacherCheck",
    "RunOptions",
    "TrainRun",
    "default_datasets",
    "plan",
    "store_status",
    "describe",
    "make_executor",
    "slurm_parameters",
    "run_here",
    "submit_slurm",
    "default_log_dir",
]

#: The datasets of each profile's Table 1 (the book's ``table1`` parameters).
DEFAULT_DATASETS: dict[str, tuple[str, ...]] = {
    "cpu": ("cifar10",),
    "paper": ("svhn", "cifar10", "cifar100"),
}
EXECUTORS = ("local", "slurm", "debug")
FIG2_METRIC = "wasserstein"  # the book's Fig. 2 metric
STATUSES = ("finished", "running", "absent", "unreadable")
LOCAL_TIMEOUT_MIN = 30 * 24 * 60  # submitit's local default (2 min) would kill every run
POLL_S = 0.2
# sbatch options that have their own argument here (or that submitit sets itself)
_OWN_SLURM_OPTIONS = {
    "partition": "partition",
    "time": "time (minutes)",
    "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem": "mem_gb",
    "dependency": "nothing: the students depend on their teacher's and baselines' jobs",
    "array": "nothing: the baselines, and the students, of a teacher are job arrays",
    "job_name": "nothing: jobs are named kd2m-<dataset>-teacher / -baselines / -students",
    "output": "nothing: logs go to the log folder",
    "error": "nothing: logs go to the log folder",
}


@dataclass(frozen=True)
class TeacherCheck:
    """What a distilling student checks before it trains: that its teacher beats the
    student ``baseline`` of its seed by ``profile``'s margin
    (:func:`kd2m.profiles.check_teacher`; ``strict``: a weak teacher raises, else a line
    says so: for overrides that change the teacher, a dry run)."""

    profile: str
    baseline: RunConfig
    strict: bool = True

    @property
    def baseline_key(self) -> str:
        return f"{self.baseline.name}-{self.baseline.hash}"


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its row in the table (``label``: teacher, baseline, E1, ...,
    ``fig2 lam=0.1``), its config, the image folder it reads (None: torchvision) and, for
    a student that distils (a metric with lambda > 0), the teacher check it makes first."""

    label: str
    cfg: RunConfig
    folder: str | None = None
    check: TeacherCheck | None = None

    @property
    def key(self) -> str:
        """The name of its run directory (:func:`kd2m.runs.run_dir`)."""
        return f"{self.cfg.name}-{self.cfg.hash}"

    @property
    def teacher_key(self) -> str | None:
        t = self.cfg.teacher
        return None if t is None else f"{t.name}-{t.hash}"


@dataclass(frozen=True)
class RunOptions:
    """How each job runs: the run store (``root``), torchvision's download, the device,
    progress bars (None: ``$KD2M_PROGRESS``), torch's threads (None: its default) and
    environment variables set in the job before it trains (value None: unset)."""

    root: str
    download: bool = False
    device: str = "auto"
    progress: bool | None = False
    threads: int | None = None
    env: dict[str, str | None] = field(default_factory=dict)


class TrainRun(Checkpointable):
    """A job: :func:`kd2m.runs.run` of one config -> ``(record name, test accuracy,
    teacher check line or None)``.

    With a :class:`TeacherCheck`, the records of the teacher and of the seed's baseline
    come first (``run()`` returns a finished record at once, or trains it under the run
    store's lock, so the check never depends on the order of the jobs), then
    :func:`kd2m.profiles.check_teacher`: a weak teacher fails the job
    (:class:`kd2m.profiles.WeakTeacherError`) before the student trains.

    Checkpointable (submitit): on Slurm, a job killed at its time limit is requeued with
    the same arguments (up to the executor's ``max_num_timeout`` times), and ``run()``
    resumes from the run's last finished epoch."""

    def __call__(
        self,
        cfg: RunConfig,
        folder: str | None,
        options: RunOptions,
        check: TeacherCheck | None = None,
    ) -> tuple[str, float, str | None]:
        for key, value in options.env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if options.threads is not None:
            torch.set_num_threads(options.threads)

        def record(c: RunConfig) -> dict:
            return run(
                c,
                root=options.root,
                folder=folder,
                download=options.download,
                device=options.device,
                progress=options.progress,
            )

        line = None
        if check is not None:
            if cfg.teacher is None:
                raise ValueError(f"{cfg.name}: a teacher check for a run without a teacher")
            teacher, base = record(cfg.teacher), record(check.baseline)
            line = check_teacher(check.profile, teacher, base, strict=check.strict)
        rec = record(cfg)
        return rec["name"], float(rec["final"]["test_acc"]), line


def default_datasets(profile: str) -> list[str]:
    """The datasets of ``profile``'s Table 1 (:data:`DEFAULT_DATASETS`)."""
    if profile not in DEFAULT_DATASETS:
        raise ValueError(f"profile={profile!r}: expected one of {sorted(DEFAULT_DATASETS)}")
    return list(DEFAULT_DATASETS[profile])


def _students(
    rows: list[str],
    metrics: list[str],
    lam: float | None,
    fig2_lambdas: list[float],
    fig2_metric: str,
) -> list[tuple[str, str | None, float | None]]:
    """``(label, metric, lambda)`` of each student of one seed, in the table's order."""
    out: list[tuple[str, str | None, float | None]] = [("baseline", None, None)]
    out += [(row, TABLE1_METRICS[row], lam) for row in rows]
    out += [(m, m, lam) for m in metrics]
    out += [(f"fig2 lam={x:g}", fig2_metric, float(x)) for x in fig2_lambdas]
    return out


def _dataset_runs(
    profile: str,
    dataset: str,
    students: list[tuple[str, str | None, float | None]],
    seeds: list[int],
    overrides: dict,
    folder: str | None,
) -> list[SweepRun]:
    """The teacher of ``dataset``, then every student of every seed (as
    ``kd2m.book.experiments.table1_configs`` and ``sweep_configs`` build them); each
    student that distils checks its teacher against the seed's baseline, strictly unless
    ``overrides`` change the teacher (as in ``table1_runs``)."""
    source = "torchvision" if folder is None else "folder"
    ov = dict(overrides)
    if folder is not None and dataset not in DATASETS and "data_sha256" not in ov:
        image_size = ov.get("image_size", DEFAULT_IMAGE_SIZE)
        ov["data_sha256"] = folder_fields(dataset, folder, image_size)["data_sha256"]
    teacher = teacher_config(profile, dataset, source=source, **teacher_overrides(ov))
    strict = not teacher_overrides(overrides)
    out = [SweepRun("teacher", teacher, folder)]
    for seed in seeds:
        baseline = None
        for label, metric, lam in students:
            cfg = student_config(
                profile, dataset, metric, lam=lam, seed=seed, source=source, teacher=teacher, **ov
            )
            if metric is None:
                baseline = cfg
            check = None
            if metric is not None and cfg.lam > 0:
                assert baseline is not None  # _students lists the baseline first
                check = TeacherCheck(profile, baseline, strict)
            out.append(SweepRun(label, cfg, folder, check))
    return out


def plan(
    profile: str,
    datasets: list[str] | None = None,
    *,
    rows: list[str] | None = None,
    metrics: list[str] | None = None,
    seeds: list[int] | None = None,
    lam: float | None = None,
    fig2_lambdas: list[float] | None = None,
    fig2_metric: str | None = None,
    overrides: dict | None = None,
    folders: dict[str, str] | None = None,
) -> list[SweepRun]:
    """The runs of ``profile``'s Table 1, dataset by dataset: the teacher, then per seed the
    baseline, one student per row of ``rows`` (default: every Table 1 row), per metric of
    ``metrics`` (students by metric name) and per lambda of ``fig2_lambdas`` (with
    ``fig2_metric``, default :data:`FIG2_METRIC`). ``lam`` replaces the profile's lambda of
    the rows and metrics; ``overrides`` replace RunConfig fields (``seed`` there is a
    one-seed ``seeds``); ``folders`` maps a dataset to its image folder (read through
    ``source="folder"``; the others through torchvision). Every value is checked before
    anything is built; a run listed twice (e.g. a Fig. 2 lambda equal to the rows') once."""
    overrides = dict(overrides or {})
    if "seed" in overrides:
        if seeds is not None:
            raise ValueError("seed given both as seeds and as an override: give seeds only")
        seeds = [overrides.pop("seed")]
    datasets = default_datasets(profile) if datasets is None else list(datasets)
    rows = list(TABLE1_METRICS) if rows is None else list(rows)
    fig2 = list(fig2_lambdas or [])
    fig2_metric = fig2_metric or FIG2_METRIC
    folders = {k: str(Path(v).expanduser().resolve()) for k, v in (folders or {}).items()}
    check_parameters(
        profile,
        folders=folders,
        download=False,  # a folder given must exist: nothing stands in for it silently
        datasets=datasets,
        rows=rows,
        metrics=list(metrics or []) + ([fig2_metric] if fig2 else []),
        lambdas=fig2 + ([] if lam is None else [lam]),
        seeds=seeds,
        overrides=overrides,
    )
    seeds = [PROFILES[profile]["seed"]] if seeds is None else list(seeds)
    students = _students(rows, list(metrics or []), lam, fig2, fig2_metric)
    out: dict[str, SweepRun] = {}
    for ds in datasets:
        for r in _dataset_runs(profile, ds, students, seeds, overrides, folders.get(ds)):
            out.setdefault(r.key, r)
    return list(out.values())


def store_status(cfg: RunConfig, root: Path | str | None = None) -> str:
    """What the run store holds of ``cfg``: its record's status (``finished`` or
    ``running``, i.e. running now or interrupted), ``absent`` without a record, or
    ``unreadable``."""
    path = run_dir(cfg, root) / "record.json"
    if not path.exists():
        return "absent"
    try:
        return str(load_record(path).get("status", "unreadable"))
    except (ValueError, FileError):
        return "unreadable"


def describe(runs: list[SweepRun], root: Path | str | None = None) -> list[str]:
    """A dry run: one line per run (label, name, config hash, :func:`store_status`) and a
    total line."""
    counts: Counter[str] = Counter()
    lines = []
    for r in runs:
        status = store_status(r.cfg, root)
        counts[status] += 1
        lines.append(f"{r.label:15s} {r.cfg.name:52s} {r.cfg.hash}  {status}")
    n_data = len({r.cfg.dataset for r in runs})
    shown = [s for s in STATUSES if counts[s] or s != "unreadable"] + sorted(
        set(counts) - set(STATUSES)
    )
    lines.append(
        f"total: {len(runs)} runs on {n_data} dataset(s): "
        + ", ".join(f"{counts[s]} {s}" for s in shown)
    )
    return lines


def slurm_parameters(
    *,
    time_min: int,
    partition: str | None = None,
    gpus_per_node: int | None = None,
    cpus_per_task: int | None = None,
    mem_gb: float | None = None,
    options: dict | None = None,
) -> dict:
    """submitit AutoExecutor parameters of every Slurm job; ``options`` are further sbatch
    options (``{"account": "abc"}`` -> ``#SBATCH --account=abc``). An option that has its
    own argument here (or that the sweep sets) raises ValueError naming it."""
    extra = {}
    for key, value in (options or {}).items():
        norm = key.strip().lstrip("-").replace("-", "_")
        if norm in _OWN_SLURM_OPTIONS:
            raise ValueError(
                f"slurm option {key!r}: not given as an option; use {_OWN_SLURM_OPTIONS[norm]}"
            )
        extra[norm] = value
    if not isinstance(time_min, int) or isinstance(time_min, bool) or time_min < 1:
        raise ValueError(f"time_min={time_min!r}: expected the job time limit in minutes (>= 1)")
    return {
        "timeout_min": time_min,
        "slurm_partition": partition,
        "gpus_per_node": gpus_per_node,
        "cpus_per_task": cpus_per_task,
        "mem_gb": mem_gb,
        "slurm_additional_parameters": extra,
    }


def make_executor(kind: str, folder: Path | str, slurm: dict | None = None):
    """A submitit AutoExecutor for ``kind`` (``local``, ``slurm`` or ``debug``) writing its
    pickles and logs under ``folder``; ``slurm``: :func:`slurm_parameters` (required for
    ``slurm``, where ``sbatch`` and ``srun`` must be on PATH)."""
    if kind not in EXECUTORS:
        raise ValueError(f"executor={kind!r}: expected one of {', '.join(EXECUTORS)}")
    if kind == "slurm":
        missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
        if missing:
            raise ValueError(
                f"executor 'slurm': {' and '.join(missing)} not found on PATH: submit from a "
                "Slurm login node, or use the local executor"
            )
        if slurm is None:
            raise ValueError("executor 'slurm' needs its parameters (slurm_parameters)")
    ex = submitit.AutoExecutor(folder=str(folder), cluster=kind)
    if kind == "local":
        ex.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    elif kind == "slurm":
        ex.update_parameters(**(slurm or {}))
    return ex


def _job_error(job) -> str | None:
    """None when ``job`` succeeded; else one line: the error (for a job that ran in another
    process, the last line of its traceback) and where its logs are."""
    try:
        exc = job.exception()
    except Exception as e:  # a job that never completed
        exc = e
    if exc is None:
        return None
    if not isinstance(exc, submitit.core.utils.UncompletedJobError):
        return " ".join(str(exc).split()) or type(exc).__name__
    text = str(exc).split("\n----------------------\nYou can check", 1)[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and set(ln.strip()) != {"-"}]
    last = lines[-1] if lines else type(exc).__name__
    return f"{last} (log: {job.paths.stderr})"


def _result_line(r: SweepRun, what: str) -> str:
    return f"{r.label:15s} {r.cfg.name} [{r.cfg.hash}]: {what}"


def _run_wave(
    executor, runs: list[SweepRun], parallel: int, options: RunOptions, report: Callable
) -> set[str]:
    """Submit ``runs`` with at most ``parallel`` running at once (1: each waits for the
    previous, as the debug executor needs); report each result (and each teacher check's
    line, once); return the failed keys."""
    pending, failed, checks = list(runs), set(), set()
    running: list[tuple[SweepRun, submitit.Job]] = []
    while pending or running:
        while pending and len(running) < parallel:
            r = pending.pop(0)
            job = executor.submit(TrainRun(), r.cfg, r.folder, options, r.check)
            running.append((r, job))
        done = running[:1] if parallel == 1 else [x for x in running if x[1].done()]
        if not done:
            time.sleep(POLL_S)
            continue
        for r, job in done:
            running = [x for x in running if x[1] is not job]
            error = _job_error(job)
            if error is None:
                _, acc, check = job.result()
                if check is not None and check not in checks:
                    checks.add(check)
                    report(_result_line(r, f"teacher check: {check}"))
                report(_result_line(r, f"test accuracy {100 * acc:.2f}%"))
            else:
                failed.add(r.key)
                report(_result_line(r, f"FAILED: {error}"))
    return failed


def _finished(runs: list[SweepRun], root, report: Callable) -> set[str]:
    """The keys of the runs already finished in the store (reported, not submitted)."""
    done = set()
    for r in runs:
        if store_status(r.cfg, root) == "finished":
            acc = load_record(run_dir(r.cfg, root)).get("final", {}).get("test_acc")
            shown = "?" if acc is None else f"{100 * acc:.2f}%"
            report(_result_line(r, f"already finished (test accuracy {shown})"))
            done.add(r.key)
    return done


def _waves(runs: list[SweepRun]) -> tuple[list[SweepRun], list[SweepRun], list[SweepRun]]:
    """The teachers; the runs that need only their teacher (the baselines, and Fig. 2's
    lambda = 0, which distils nothing); the students that check their teacher against
    their seed's baseline (:class:`TeacherCheck`)."""
    teachers = [r for r in runs if r.cfg.role == "teacher"]
    plain = [r for r in runs if r.cfg.role != "teacher" and r.check is None]
    checked = [r for r in runs if r.cfg.role != "teacher" and r.check is not None]
    return teachers, plain, checked


def _orphans(runs: list[SweepRun], failed: set[str], report: Callable) -> list[SweepRun]:
    """Report the runs of ``runs`` whose teacher or baseline failed; return the others."""
    ready = []
    for r in runs:
        if r.teacher_key in failed:
            report(_result_line(r, "not trained: its teacher failed"))
        elif r.check is not None and r.check.baseline_key in failed:
            report(_result_line(r, "not trained: its baseline failed"))
        else:
            ready.append(r)
    return ready


def run_here(
    runs: list[SweepRun],
    executor,
    *,
    parallel: int,
    options: RunOptions,
    report: Callable = print,
) -> int:
    """Train ``runs`` on this machine through ``executor`` (debug: ``parallel`` 1): the
    teachers first, then the baselines whose teacher did not fail, then the students
    whose teacher and baseline did not fail (each checks its teacher against the
    baseline: :class:`TrainRun`); runs already finished are skipped. Returns the number
    of runs that failed or were skipped for a failed teacher or baseline (0: every run
    is finished)."""
    if parallel < 1:
        raise ValueError(f"parallel={parallel!r}: expected an integer >= 1")
    finished = _finished(runs, options.root, report)
    todo = [r for r in runs if r.key not in finished]
    teachers, plain, checked = _waves(todo)
    failed = _run_wave(executor, teachers, parallel, options, report)
    n_orphans = len(plain) + len(checked)
    plain = _orphans(plain, failed, report)
    failed |= _run_wave(executor, plain, parallel, options, report)
    checked = _orphans(checked, failed, report)
    n_orphans -= len(plain) + len(checked)
    failed |= _run_wave(executor, checked, parallel, options, report)
    bad = len(failed) + n_orphans
    report(
        f"total: {len(runs)} runs: {len(runs) - len(todo)} already finished, "
        f"{len(todo) - bad} trained, {len(failed)} failed, {n_orphans} not trained"
    )
    return bad


def _submit_array(
    executor, group: list[SweepRun], name: str, params: dict, options: RunOptions
) -> list[str]:
    """Submit ``group`` as one job array (one job when alone) named ``name`` with the
    sbatch options ``params``; return the job ids."""
    executor.update_parameters(name=name, slurm_additional_parameters=params)
    with executor.batch():
        jobs = [executor.submit(TrainRun(), r.cfg, r.folder, options, r.check) for r in group]
    return [job.job_id for job in jobs]


def submit_slurm(
    runs: list[SweepRun],
    executor,
    *,
    options: RunOptions,
    slurm: dict,
    report: Callable = print,
) -> dict[str, str]:
    """Submit ``runs`` through a Slurm ``executor`` (:func:`make_executor`): one job per
    teacher, then per teacher one job array of its baselines (and Fig. 2's lambda = 0)
    with the dependency ``afterok:<teacher job id>``, and one job array of the students
    that distil with ``afterok:<baselines array job id>`` (the array succeeds when all
    its tasks do; it runs after the teacher's job, so that dependency is implied). A
    dependency on a job not submitted (its runs already finished) is left out. Runs
    already finished are not submitted. Returns ``{run key: Slurm job id}``."""
    finished = _finished(runs, options.root, report)
    todo = [r for r in runs if r.key not in finished]
    extra = dict(slurm.get("slurm_additional_parameters") or {})
    ids: dict[str, str] = {}
    teachers, plain, checked = _waves(todo)
    for t in teachers:
        executor.update_parameters(
            name=f"kd2m-{t.cfg.dataset}-teacher", slurm_additional_parameters=dict(extra)
        )
        ids[t.key] = executor.submit(TrainRun(), t.cfg, t.folder, options).job_id
        report(_result_line(t, f"Slurm job {ids[t.key]}"))
    groups: dict[str | None, tuple[list[SweepRun], list[SweepRun]]] = {}
    for r in plain + checked:
        groups.setdefault(r.teacher_key, ([], []))[r.check is not None].append(r)
    for tkey, waves in groups.items():
        dep, on = (ids.get(tkey) if tkey is not None else None), "teacher"
        for group, what in zip(waves, ("baselines", "students"), strict=True):
            if not group:
                continue
            params = extra | ({"dependency": f"afterok:{dep}"} if dep else {})
            name = f"kd2m-{group[0].cfg.dataset}-{what}"
            jobs = _submit_array(executor, group, name, params, options)
            after = f" (after {on} job {dep})" if dep else ""
            for r, job_id in zip(group, jobs, strict=True):
                ids[r.key] = job_id
                report(_result_line(r, f"Slurm job {job_id}{after}"))
            # the array's own id ("4244" of "4244_0"): afterok on it waits for every task
            dep, on = jobs[0].split("_")[0], what
    report(
        f"total: {len(runs)} runs: {len(finished)} already finished, {len(todo)} submitted; "
        f"logs in {executor.folder}; results: python -m kd2m list"
    )
    return ids


def default_log_dir(root: Path | str | None = None) -> Path:
    """``<data root>/sweeps/<timestamp>``: where a sweep's submitit pickles and logs go."""
    root = Path(root) if root is not None else data_root()
    return root / "sweeps" / time.strftime("%Y%m%d-%H%M%S")
