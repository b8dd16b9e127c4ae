"""Command line: ``python -m kd2m {train,list,metrics,profiles}``.

Examples::

    python -m kd2m train teacher  --profile cpu --dataset cifar10 \
        --folder ../shared/datasets/cifar10-jpeg.tar.gz
    python -m kd2m train baseline --profile cpu --dataset cifar10 --folder ...
    python -m kd2m train teacher  --folder ~/digits --set n_train=null --set n_test=null
        # any image folder (PATH/train/<class>/*, PATH/test/<class>/*) or .tar.gz of one
    python -m kd2m train student  --profile paper --metric wasserstein --lam 1e-4 --download
    python -m kd2m column --profile paper --parallel 7 --folder ...   # a Table 1 column
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
    from kd2m.profiles import student_config, teacher_config
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


def _cmd_column(args) -> int:
    """Teacher first, then the baseline and every Table 1 metric, ``--parallel`` at a time.

    Students are independent once the teacher is stored, so on a GPU several processes
    share the device (the networks at 32x32 are launch-bound, not FLOP-bound).
    """
    import os
    import subprocess

    from kd2m.metrics import TABLE1_METRICS
    from kd2m.profiles import student_config
    from kd2m.train import resolve_device

    overrides = _overrides(args.set)
    metrics = [None] + (args.metrics or list(TABLE1_METRICS.values()))
    # every student's config first (bad metrics or values fail before anything trains); the
    # teacher trained here is exactly the one the students distil from
    students = [student_config(args.profile, metric=m, **_data(args), **overrides) for m in metrics]
    teacher = students[0].teacher
    assert all(c.teacher == teacher for c in students)
    resolve_device(args.device)
    rec = _run(args, teacher)
    print(
        f"{rec['name']}: {100 * rec['final']['test_acc']:.2f}% ({rec['wall_seconds']:.0f} s)",
        flush=True,
    )
    common = [
        sys.executable,
        "-m",
        "kd2m",
        "train",
        "--profile",
        args.profile,
        "--dataset",
        teacher.dataset,
        "--device",
        args.device,
        "--no-progress",
    ]
    common += ["--folder", args.folder] if args.folder else []
    for pair in args.set:
        common += ["--set", pair]
    jobs = [
        common[:4]
        + ["baseline" if m is None else "student"]
        + common[4:]
        + ([] if m is None else ["--metric", m])
        for m in metrics
    ]
    env = os.environ | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // args.parallel))}
    failed = 0
    running: list[subprocess.Popen] = []
    for job in jobs:
        while len(running) >= args.parallel:
            running[0].wait()
            failed += running.pop(0).returncode != 0
        running.append(subprocess.Popen(job, env=env))
    for p in running:
        failed += p.wait() != 0
    return 1 if failed else 0


def _cmd_profiles(args) -> int:
    from kd2m.profiles import PROFILES

    print(json.dumps(PROFILES, indent=1))
    return 0


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
    c = sub.add_parser("column", help="one Table 1 column: teacher, baseline, six metrics")
    c.add_argument("--profile", default="cpu")
    c.add_argument("--dataset", default=None)
    c.add_argument("--metrics", nargs="*", help="default: the six Table 1 metrics")
    c.add_argument("--parallel", type=_positive, default=1, help="students trained at once (>= 1)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--folder")
    c.add_argument("--download", action="store_true")
    c.add_argument("--device", default="auto")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=_cmd_column)
    ls = sub.add_parser("list", help="list stored runs")
    ls.add_argument("--root", default=None, help="data root (default: $KD2M_DATA or ./data)")
    ls.set_defaults(func=_cmd_list)
    sub.add_parser("metrics", help="list registered metrics").set_defaults(func=_cmd_metrics)
    sub.add_parser("profiles", help="print the profiles").set_defaults(func=_cmd_profiles)
    for p in (parser, t, c, ls):
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
