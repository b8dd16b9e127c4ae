"""Benchmarks: ``python -m kd2m.bench <benchmark> [options]``.

One subcommand per benchmark; each has a ``bench_<name>(...) -> list[dict]``
function returning rows, a printer, and an ``_add_<name>_parser`` hook
registered in :func:`main`.

``metrics``: forward + backward time of every registered distillation metric
(``kd2m.metrics.METRICS``) on a batch of pooled features, compared with ONE
training step of torchvision's resnet18 (ImageNet stem, 10 classes, batch of
n 3x32x32 images, SGD with momentum) measured in the same process with the
same threads. Target (issue): each metric <= ~10% of that step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch

__all__ = ["bench_metrics", "print_metrics_table", "resnet18_step_seconds", "main"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Wall-clock seconds of ``fn()`` for each of ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def resnet18_step_seconds(
    n: int = 128, device="cpu", repeats: int = 3, warmup: int = 1, num_classes: int = 10
) -> list[float]:
    """Seconds per SGD step of torchvision resnet18 (ImageNet stem) on n 3x32x32 images."""
    from torchvision.models import resnet18

    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    model = resnet18(weights=None, num_classes=num_classes).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    x = torch.randn(n, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, num_classes, (n,), generator=g).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return _time(step, repeats, warmup, device)


def bench_metrics(
    n: int = 128,
    d: int = 512,
    repeats: int = 10,
    device="cpu",
    *,
    warmup: int = 2,
    num_classes: int = 10,
    metrics: list[str] | None = None,
    step_repeats: int = 3,
    seed: int = 0,
) -> list[dict]:
    """Time forward + backward of each registered metric; one row per metric.

    Features are post-ReLU Gaussians (like pooled ResNet features), labels
    uniform over ``num_classes``; ``hinton`` gets (n, num_classes) logits.
    Each row: metric, table1 (row of Table 1 or ""), inputs, n, d, device,
    threads, median_ms / min_ms over ``repeats`` (after ``warmup``),
    step_ms (median resnet18 step) and ratio = median_ms / step_ms.
    ``step_repeats=0`` skips the resnet18 step (step_ms and ratio are None).
    """
    from kd2m.metrics import METRICS, TABLE1_METRICS, get_metric

    device = torch.device(device)
    names = list(METRICS) if metrics is None else list(metrics)
    rows_of = {v: k for k, v in TABLE1_METRICS.items()}
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(n, d, generator=g).relu().to(device).requires_grad_()
    zt = (1.3 * torch.randn(n, d, generator=g)).relu().to(device)
    ls = torch.randn(n, num_classes, generator=g).to(device).requires_grad_()
    lt = torch.randn(n, num_classes, generator=g).to(device)
    y = torch.randint(0, num_classes, (n,), generator=g).to(device)

    step_ms = None
    if step_repeats > 0:
        step_ms = 1e3 * statistics.median(resnet18_step_seconds(n, device, step_repeats))
    rows = []
    for name in names:
        metric = get_metric(name)
        a, b = (ls, lt) if metric.inputs == "logits" else (zs, zt)

        def run(metric=metric, a=a, b=b):
            a.grad = None
            metric(a, b, y).backward()

        times = _time(run, repeats, warmup, device)
        median_ms = 1e3 * statistics.median(times)
        rows.append(
            {
                "metric": name,
                "table1": rows_of.get(name, ""),
                "inputs": metric.inputs,
                "n": n,
                "d": d,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "median_ms": median_ms,
                "min_ms": 1e3 * min(times),
                "step_ms": step_ms,
                "ratio": None if step_ms is None else median_ms / step_ms,
            }
        )
    return rows


def print_metrics_table(rows: list[dict], file=None) -> None:
    """Print the rows of :func:`bench_metrics` as an aligned table."""
    file = file or sys.stdout
    if not rows:
        return
    r0 = rows[0]
    step = "n/a" if r0["step_ms"] is None else f"{r0['step_ms']:.1f} ms"
    print(
        f"metrics forward+backward, n={r0['n']} d={r0['d']} device={r0['device']} "
        f"threads={r0['threads']}; resnet18 training step: {step}",
        file=file,
    )
    print(f"{'metric':22s} {'row':>4s} {'median ms':>10s} {'min ms':>8s} {'% step':>7s}", file=file)
    for r in rows:
        pct = "" if r["ratio"] is None else f"{100 * r['ratio']:.1f}"
        print(
            f"{r['metric']:22s} {r['table1']:>4s} {r['median_ms']:10.2f} {r['min_ms']:8.2f} "
            f"{pct:>7s}",
            file=file,
        )


def _run_metrics(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = bench_metrics(
        n=args.n,
        d=args.d,
        repeats=args.repeats,
        device=args.device,
        warmup=args.warmup,
        num_classes=args.classes,
        metrics=args.metric,
        step_repeats=args.step_repeats,
    )
    print_metrics_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def _add_metrics_parser(sub) -> None:
    p = sub.add_parser("metrics", help="forward+backward time of each metric vs a resnet18 step")
    p.add_argument("--n", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--d", type=int, default=512, help="feature dimension (default 512)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per metric")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per metric")
    p.add_argument("--step-repeats", type=int, default=3, help="timed resnet18 steps (0: skip)")
    p.add_argument("--classes", type=int, default=10, help="number of classes")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--metric", action="append", help="only this metric (repeatable)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.set_defaults(func=_run_metrics)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kd2m.bench", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="BENCHMARK")
    _add_metrics_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
