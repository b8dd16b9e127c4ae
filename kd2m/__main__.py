"""Command line: ``python -m kd2m {train,column,sweep,list,metrics,profiles}``.

Examples::

    python -m kd2m train teacher  --profile cpu --dataset cifar10 \
        --folder ../shared/datasets/cifar10-jpeg.tar.gz
    python -m kd2m train baseline --profile cpu --dataset cifar10 --folder ...
    python -m kd2m train teacher  --folder ~/digits --set n_train=null --set n_test=null
        # any image folder (PATH/train/<class>/*, PATH/test/<class>/*) or .tar.gz of one
    python -m kd2m train student  --profile paper --metric wasserstein --lam 1e-4 --download
    python -m kd2m column --profile paper --parallel 7 --folder ...   # a Table 1 column
    python -m kd2m sweep --profile paper --dry-run                    # every run of Table 1
    python -m kd2m sweep --profile paper --executor slurm --time 120 --gpus-per-node 1 \
        --folder cifar10=../shared/datasets/cifar10-jpeg.tar.gz --download
    python -m kd2m train student  --profile cpu --metric gaussian_kl --set epochs=2 --set seed=1
    python -m kd2m list

An error prints one line and exits non-zero; ``--debug`` shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

__all__ = ["main"]


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class UsageError(ValueError):
    """A command line that cannot be carried out (exit status 2)."""


# RunConfig fields that have their own flag (or none): `--set` refuses them
_NOT_SETTABLE = {
    "role": "the first argument of 'train' (teacher, baseline or student)",
    "dataset": "--dataset",
    "source": "--folder (an image folder) or nothing (torchvision)",
    "metric": "--metric",
    "lam": "--lam",
    "metric_options": "--option KEY=VALUE",
    "teacher": "nothing: the teacher follows the profile and the fields of --set that a "
    "teacher follows (kd2m.profiles.TEACHER_FOLLOWS)",
}


def _overrides(pairs: list[str], flag: str = "--set") -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"{flag} {pair!r}: expected KEY=VALUE (VALUE parsed as JSON)")
        key, value = pair.split("=", 1)
        key = key.strip()
        if flag == "--set" and key in _NOT_SETTABLE:
            raise UsageError(
                f"--set {key}=...: {key} is not set with --set; use {_NOT_SETTABLE[key]}"
            )
        out[key] = _parse_value(value)
    return out


def _data(args) -> dict:
    """``dataset`` / ``source`` / ``folder`` for the profile functions: ``--folder``
    without ``--dataset`` (or with a name that is not a known dataset's) is an image folder
    of one's own; neither given: cifar10 through torchvision."""
    dataset = args.dataset or (None if args.folder else "cifar10")
    return {
        "dataset": dataset,
        "source": "folder" if args.folder else "torchvision",
        "folder": args.folder,
    }


def _run(args, cfg):
    """:func:`kd2m.runs.run` with the command line's data, device and progress options."""
    from kd2m.runs import run

    return run(
        cfg,
        folder=args.folder,
        download=args.download,
        device=args.device,
        progress=not args.no_progress,
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return value


def _cmd_train(args) -> int:
    from kd2m.profiles import check_teacher, student_config, teacher_config, teacher_overrides
    from kd2m.train import resolve_device

    overrides = _overrides(args.set)
    if args.role != "student" and args.option:
        raise UsageError(f"train {args.role} takes no --option (metric options)")
    if args.role == "teacher":
        if args.metric or args.lam is not None:
            raise UsageError("train teacher takes no --metric/--lam")
        cfg = teacher_config(args.profile, **_data(args), **overrides)
    elif args.role == "baseline":
        if args.metric or args.lam:
            raise UsageError("train baseline takes no --metric/--lam (use 'train student')")
        cfg = student_config(args.profile, metric=None, **_data(args), **overrides)
    else:
        if not args.metric:
            raise UsageError("train student needs --metric (see 'python -m kd2m metrics')")
        cfg = student_config(
            args.profile,
            metric=args.metric,
            lam=args.lam,
            metric_options=_overrides(args.option, "--option"),
            **_data(args),
            **overrides,
        )
    resolve_device(args.device)  # a device that cannot train fails before anything trains
    if args.role == "student":
        # a student refuses a teacher that does not beat the baseline of its seed by the
        # profile's margin (strict unless --set changes the teacher: a dry run)
        teacher = _run(args, cfg.teacher)
        base = _run(args, cfg.replace(metric=None, lam=0.0, metric_options={}))
        strict = not teacher_overrides(overrides)
        print(check_teacher(args.profile, teacher, base, strict=strict))
    rec = _run(args, cfg)
    f = rec["final"]
    print(
        f"{rec['name']} [{rec['hash']}]: test accuracy {100 * f['test_acc']:.2f}%, "
        f"test CE {f['test_ce']:.4f}, {rec['wall_seconds']:.0f} s"
    )
    return 0


def _cmd_list(args) -> int:
    from kd2m.runs import list_runs

    rows = list_runs(args.root)
    if not rows:
        print("no runs")
        return 0
    print(f"{'name':52s} {'hash':12s} {'status':10s} {'epochs':>6s} {'test acc':>8s} {'s':>7s}")
    for r in rows:
        acc = r["final"].get("test_acc")
        acc_s = f"{100 * acc:7.2f}%" if acc is not None else "       -"
        print(
            f"{r['name']:52s} {r['hash']:12s} {r['status']:10s} {len(r['history']):6d} "
            f"{acc_s} {r['wall_seconds']:7.0f}"
        )
        if r["status"] == "unreadable":
            print(f"    {r['error']}")
    return 0


def _cmd_metrics(args) -> int:
    from kd2m.metrics import METRICS

    for name, desc in METRICS.items():
        print(f"{name:22s} {desc}")
    return 0


def _split(values: list[str] | None, flag: str, kind=str) -> list | None:
    """``--flag a,b c`` -> ``[a, b, c]`` (each converted by ``kind``); None when not given."""
    if values is None:
        return None
    out = []
    for text in (v for value in values for v in value.split(",") if v.strip()):
        try:
            out.append(kind(text.strip()))
        except ValueError:
            raise UsageError(f"{flag} {text!r}: expected {kind.__name__} values") from None
    return out


def _folder_map(specs: list[str], datasets: list[str]) -> dict[str, str]:
    """``--folder [DATASET=]PATH`` (repeatable) -> ``{dataset: path}``; a bare PATH is the
    folder of the one dataset swept."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and name and not any(c in name for c in "/\\~"):
            out[name] = path
        elif len(datasets) == 1:
            out[datasets[0]] = spec
        else:
            raise UsageError(
                f"--folder {spec!r} names no dataset and {len(datasets)} are swept "
                f"({', '.join(datasets)}): use --folder DATASET=PATH"
            )
    unknown = sorted(set(out) - set(datasets))
    if unknown:
        raise UsageError(f"--folder {unknown[0]}=...: {unknown[0]} is not among the datasets swept")
    return out


_SLURM_FLAGS = ("partition", "time", "gpus_per_node", "cpus_per_task", "mem_gb", "slurm_option")


def _check_executor_flags(args) -> None:
    """Flags that the chosen executor does not use are refused, not ignored."""
    from kd2m.sweep import EXECUTORS

    if args.executor not in EXECUTORS:
        raise UsageError(f"--executor {args.executor!r}: expected one of {', '.join(EXECUTORS)}")
    if args.executor != "slurm":
        given = [f for f in _SLURM_FLAGS if getattr(args, f) not in (None, [])]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UsageError(f"{flag} is an option of --executor slurm, not {args.executor}")
    elif args.time is None:
        raise UsageError("--executor slurm needs --time MINUTES (each job's time limit)")
    if args.executor != "local" and args.parallel != 1:
        raise UsageError(
            f"--parallel is an option of --executor local (debug runs one job at a time, "
            f"Slurm schedules the jobs), not {args.executor}"
        )


def _sweep(args, *, datasets, folders, rows, metrics) -> int:
    """Plan the runs; print them (``--dry-run``), train them here or submit them to Slurm."""
    import os

    from kd2m import sweep as sw
    from kd2m.runs import data_root
    from kd2m.train import resolve_device

    fig2 = _split(args.fig2_lambdas, "--fig2-lambdas", float)
    if args.fig2_metric and not fig2:
        raise UsageError("--fig2-metric needs --fig2-lambdas")
    runs = sw.plan(
        args.profile,
        datasets,
        rows=rows,
        metrics=metrics,
        seeds=_split(args.seeds, "--seeds", int),
        lam=args.lam,
        fig2_lambdas=fig2,
        fig2_metric=args.fig2_metric,
        overrides=_overrides(args.set),
        folders=folders,
    )
    if args.dry_run:
        print("\n".join(sw.describe(runs)))
        return 0
    _check_executor_flags(args)
    root = str(data_root().resolve())
    log_dir = args.log_dir or sw.default_log_dir(root)
    if args.executor == "slurm":
        slurm = sw.slurm_parameters(
            time_min=args.time,
            partition=args.partition,
            gpus_per_node=args.gpus_per_node,
            cpus_per_task=args.cpus_per_task,
            mem_gb=args.mem_gb,
            options=_overrides(args.slurm_option, "--slurm-option"),
        )
        options = sw.RunOptions(root, args.download, args.device, False, args.cpus_per_task)
        ex = sw.make_executor("slurm", log_dir, slurm)
        sw.submit_slurm(runs, ex, options=options, slurm=slurm)
        return 0
    resolve_device(args.device)  # a device that cannot train fails before anything trains
    if args.executor == "local":  # the jobs see the GPUs this process sees
        env = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
        threads = max(1, (os.cpu_count() or 2) // args.parallel)
        options = sw.RunOptions(root, args.download, args.device, False, threads, env)
    else:
        progress = False if args.no_progress else None  # None: $KD2M_PROGRESS, default on
        options = sw.RunOptions(root, args.download, args.device, progress)
    ex = sw.make_executor(args.executor, log_dir)
    failed = sw.run_here(runs, ex, parallel=args.parallel, options=options)
    return 1 if failed else 0


def _cmd_sweep(args) -> int:
    from kd2m.sweep import default_datasets

    datasets = _split(args.datasets, "--datasets") or default_datasets(args.profile)
    folders = _folder_map(args.folder, datasets)
    rows = _split(args.rows, "--rows")
    return _sweep(args, datasets=datasets, folders=folders, rows=rows, metrics=None)


def _cmd_column(args) -> int:
    """One Table 1 column: ``sweep`` on one dataset with the local executor (teacher
    first, then the baseline and every metric, ``--parallel`` at a time).

    Students are independent once the teacher is stored, so on a GPU several processes
    share the device (the networks at 32x32 are launch-bound, not FLOP-bound).
    """
    from kd2m.data import folder_name

    dataset = args.dataset or (folder_name(args.folder) if args.folder else "cifar10")
    folders = {dataset: args.folder} if args.folder else {}
    metrics = args.metrics or None
    rows = [] if metrics else None
    return _sweep(args, datasets=[dataset], folders=folders, rows=rows, metrics=metrics)


def _cmd_profiles(args) -> int:
    from kd2m.profiles import PROFILES

    print(json.dumps(PROFILES, indent=1))
    return 0


_SWEEP_HELP = """Table 1 of a profile as runs: per dataset the teacher, then for each seed the
baseline student and one student per Table 1 row (kd2m.metrics.TABLE1_METRICS), as the
book builds them (the same run directories); optionally the Fig. 2 lambda grid.
--dry-run lists them with what the run store holds; otherwise they are trained through
submitit: --executor local (--parallel processes here, teachers first), debug (in this
process) or slurm (one job per teacher, its students one job array after it:
afterok). Runs already finished are not submitted again. Jobs on several nodes share
the run store safely: kd2m.runs.run() holds a lock file per run directory while it
trains (the store must be on a shared file system with file locks); a run asked for
twice is trained once. Lists take commas or spaces: --seeds 1,2,3."""


def _add_column(sub):
    c = sub.add_parser(
        "column", help="one Table 1 column: teacher, baseline, six metrics (a local sweep)"
    )
    c.add_argument("--profile", default="cpu")
    c.add_argument("--dataset", default=None)
    c.add_argument("--metrics", nargs="*", help="default: the six Table 1 metrics")
    c.add_argument("--parallel", type=_positive, default=1, help="students trained at once (>= 1)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--folder")
    c.add_argument("--download", action="store_true")
    c.add_argument("--device", default="auto")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=_cmd_column, executor="local", dry_run=False, log_dir=None)
    c.set_defaults(seeds=None, lam=None, fig2_lambdas=None, fig2_metric=None)
    c.set_defaults(**{f: [] if f == "slurm_option" else None for f in _SLURM_FLAGS})
    return c


def _add_sweep(sub):
    w = sub.add_parser(
        "sweep",
        help="Table 1 as runs: dry run, local processes or Slurm jobs (submitit)",
        description=_SWEEP_HELP,
    )
    w.add_argument("--profile", default="cpu", help="cpu or paper (default cpu)")
    w.add_argument("--executor", default="local", help="local (default), slurm or debug")
    w.add_argument("--dry-run", action="store_true", help="list the runs; submit nothing")
    w.add_argument(
        "--datasets", nargs="+", help="default: cpu cifar10; paper svhn,cifar10,cifar100"
    )
    w.add_argument("--rows", nargs="+", help="Table 1 rows (default: every row)")
    w.add_argument("--seeds", nargs="+", help="student seeds (default: the profile's)")
    w.add_argument("--lam", type=float, help="lambda of the rows (default: the profile's)")
    w.add_argument("--fig2-lambdas", nargs="+", help="add one student per lambda (Fig. 2)")
    w.add_argument("--fig2-metric", help="the metric of --fig2-lambdas (default wasserstein)")
    w.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    w.add_argument(
        "--folder",
        action="append",
        default=[],
        metavar="[DATASET=]PATH",
        help="image folder or .tar.gz of a dataset (repeatable; a bare PATH: the one "
        "dataset swept); the others come through torchvision",
    )
    w.add_argument("--download", action="store_true", help="let torchvision download data")
    w.add_argument("--device", default="auto")
    w.add_argument("--no-progress", action="store_true", help="no progress bars (debug)")
    w.add_argument("--parallel", type=_positive, default=1, help="local: runs at once")
    w.add_argument("--log-dir", help="submitit's folder (default: data/sweeps/<timestamp>)")
    w.add_argument("--partition", help="slurm: partition")
    w.add_argument("--time", type=_positive, help="slurm: each job's time limit, minutes")
    w.add_argument("--gpus-per-node", type=_positive, help="slurm: GPUs per job")
    w.add_argument("--cpus-per-task", type=_positive, help="slurm: CPUs per job")
    w.add_argument("--mem-gb", type=_positive, help="slurm: memory per job (GB)")
    w.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="slurm: any other sbatch option, e.g. account=abc (repeatable)",
    )
    w.set_defaults(func=_cmd_sweep)
    return w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kd2m",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (or load) a teacher, a baseline or a KD2M student")
    t.add_argument("role", choices=["teacher", "baseline", "student"])
    t.add_argument("--profile", default="cpu", help="cpu or paper (default cpu)")
    t.add_argument(
        "--dataset",
        default=None,
        help="cifar10, cifar100 or svhn (default cifar10; with --folder and no "
        "--dataset: any image folder, named after it)",
    )
    t.add_argument("--metric", help="a registered metric (python -m kd2m metrics)")
    t.add_argument("--lam", type=float, help="distillation weight (default: the profile's)")
    t.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metric option, e.g. --option beta=2 (repeatable)",
    )
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a RunConfig field, e.g. --set epochs=2 (repeatable)",
    )
    t.add_argument(
        "--folder",
        help="image folder PATH/train/<class>/*, PATH/test/<class>/* "
        "or a .tar.gz of one (a copy of --dataset, or any images)",
    )
    t.add_argument("--download", action="store_true", help="let torchvision download data")
    t.add_argument("--device", default="auto")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_cmd_train)
    c = _add_column(sub)
    w = _add_sweep(sub)
    ls = sub.add_parser("list", help="list stored runs")
    ls.add_argument("--root", default=None, help="data root (default: $KD2M_DATA or ./data)")
    ls.set_defaults(func=_cmd_list)
    sub.add_parser("metrics", help="list registered metrics").set_defaults(func=_cmd_metrics)
    sub.add_parser("profiles", help="print the profiles").set_defaults(func=_cmd_profiles)
    for p in (parser, t, c, w, ls):
        p.add_argument(
            "--debug",
            action="store_true",
            default=False if p is parser else argparse.SUPPRESS,
            help="show the traceback of an error",
        )
    args = parser.parse_args(argv)
    return _call(args)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr if file is None else file, flush=True)


def _call(args) -> int:
    """Run the command; an error prints one line (the traceback only with --debug)."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            return args.func(args)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            if args.debug:
                raise
            text = " ".join(str(exc).split()) or type(exc).__name__
            print(f"error: {text} (rerun with --debug for the traceback)", file=sys.stderr)
            return 2 if isinstance(exc, ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
