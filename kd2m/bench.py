"""Benchmarks: ``python -m kd2m.bench <benchmark> [options]``.

One subcommand per benchmark; each has a ``bench_<name>(...) -> list[dict]``
function returning rows, a printer, and an ``_add_<name>_parser`` hook
registered in :func:`main`.

``metrics``: forward + backward time of every registered distillation metric
(``kd2m.metrics.METRICS``) on a batch of pooled features, compared with ONE
training step of torchvision's resnet18 (ImageNet stem, 10 classes, batch of
n 3x32x32 images, SGD with momentum) measured in the same process with the
same threads. Target (issue): each metric <= ~10% of that step.

``data``: images/s of kd2m's batch pipeline (uint8 tensor on the device, batched crop and
flip) against a torchvision ``DataLoader`` applying the same augmentation to PIL images.
``steps``: each metric's KD2M training step against the distance-free step (student step +
teacher forward), through ``kd2m.train.train_step``; ``--variant NAME:KEY=VALUE,...`` adds a
metric with options. ``epoch``: images/s of a KD2M epoch at a profile against a baseline
epoch. ``precision``: images/s of a profile's student step and teacher forward in bf16
autocast and fp32, each in channels_last and contiguous memory format. ``all``: the four in
one run (``--json`` keeps them). Every ratio is measured within one run, on whatever device
is named.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from kd2m.train import resolve_device

__all__ = [
    "bench_metrics",
    "print_metrics_table",
    "resnet18_step_seconds",
    "bench_data",
    "bench_steps",
    "bench_epoch",
    "bench_precision",
    "parse_variant",
    "print_rows",
    "frame",
    "hardware",
    "load_benchmarks",
    "main",
]


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

    device = resolve_device(device)
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
    variants: list[tuple[str, dict]] | None = None,
) -> list[dict]:
    """Time forward + backward of each registered metric; one row per metric.

    Features are post-ReLU Gaussians (like pooled ResNet features), labels
    uniform over ``num_classes``; ``hinton`` gets (n, num_classes) logits.
    Each row: metric, table1 (row of Table 1 or ""), inputs, n, d, device,
    threads, median_ms / min_ms over ``repeats`` (after ``warmup``),
    step_ms (median resnet18 step) and ratio = median_ms / step_ms.
    ``step_repeats=0`` skips the resnet18 step (step_ms and ratio are None).
    ``variants``: ``(name, options)`` pairs (:func:`parse_variant`), each an extra row
    ``name (key=value, ...)`` timing ``get_metric(name, **options)``.
    """
    from kd2m.metrics import METRICS, TABLE1_METRICS, get_metric

    device = resolve_device(device)
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
    for name, options in [(name, {}) for name in names] + list(variants or []):
        label = _variant_label(name, options)
        metric = get_metric(name, **options)
        a, b = (ls, lt) if metric.inputs == "logits" else (zs, zt)

        def run(metric=metric, a=a, b=b):
            a.grad = ls.grad = None
            probs = {}  # E3's predictions: softmax of the logits above, timed with it
            if metric.needs_student_probs:
                probs["ps"] = ls.softmax(1)
            if metric.needs_teacher_probs:
                probs["pt"] = lt.softmax(1)
            metric(a, b, y, **probs).backward()

        times = _time(run, repeats, warmup, device)
        median_ms = 1e3 * statistics.median(times)
        rows.append(
            {
                "metric": label,
                "table1": rows_of.get(name, "") if not options else "",
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
    w = max(22, *(len(r["metric"]) for r in rows))
    head = f"{'metric':{w}s} {'row':>4s} {'median ms':>10s} {'min ms':>8s} {'% step':>7s}"
    print(head, file=file)
    for r in rows:
        pct = "" if r["ratio"] is None else f"{100 * r['ratio']:.1f}"
        print(
            f"{r['metric']:{w}s} {r['table1']:>4s} {r['median_ms']:10.2f} {r['min_ms']:8.2f} "
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
        variants=args.variant,
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
    _add_variant_argument(p)
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.set_defaults(func=_run_metrics)


# ---------------------------------------------------------------------------------------------
# Training-pipeline benchmarks (data, steps, epoch): ratios measured in one run.
# ---------------------------------------------------------------------------------------------


def _bench_images(n: int, seed: int = 0):
    """Real CIFAR-10 from the uint8 cache if one exists under the data root, else random
    uint8 images of the same shape (the pipelines' speed does not depend on the pixels)."""
    from kd2m.runs import data_root

    caches = sorted((data_root() / "cache").glob("cifar10-*.pt"))
    if caches:
        blob = torch.load(caches[0], map_location="cpu", weights_only=True)
        x, y = blob["x_train"][:n], blob["y_train"][:n]
        return x, y, f"CIFAR-10 ({caches[0].name})"
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y, "random uint8 images"


class _PILDataset(torch.utils.data.Dataset):
    """The standard pipeline: one PIL image at a time through torchvision transforms."""

    def __init__(self, x, y, transform):
        self.x = x.permute(0, 2, 3, 1).contiguous().numpy()
        self.y = y.numpy()
        self.transform = transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def bench_data(
    n: int = 10000, batch_size: int = 128, workers: int = 2, device: str = "cpu"
) -> list[dict]:
    """Images per second of kd2m's batch pipeline against a torchvision DataLoader with
    the same augmentation (random crop with padding 4, horizontal flip, normalisation) on
    PIL images, ``workers`` worker processes. Each pipeline delivers ``n`` images to
    ``device``."""
    import torchvision.transforms as T

    from kd2m.data import DATASETS, Loader

    dev = resolve_device(device)
    x, y, what = _bench_images(n)
    info = DATASETS["cifar10"]
    tf = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(info.mean, info.std),
        ]
    )
    dl = torch.utils.data.DataLoader(
        _PILDataset(x, y, tf),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=False,
        pin_memory=dev.type == "cuda",
    )
    t0 = time.perf_counter()
    count = 0
    for xb, _yb in dl:
        xb = xb.to(dev, non_blocking=True)
        count += xb.shape[0]
    _sync(dev)
    tv = count / (time.perf_counter() - t0)
    loader = Loader(
        x,
        y,
        mean=info.mean,
        std=info.std,
        batch_size=batch_size,
        train=True,
        device=dev,
        hflip=True,
        seed=0,
        channels_last=dev.type == "cuda",
    )
    for _ in loader.epoch(0):  # warm-up (first CUDA kernels)
        break
    t0 = time.perf_counter()
    count = 0
    for xb, _yb in loader.epoch(1):
        count += xb.shape[0]
    _sync(dev)
    ours = count / (time.perf_counter() - t0)
    return [
        {
            "pipeline": f"torchvision DataLoader, PIL, {workers} workers",
            "images/s": tv,
            "ratio": 1.0,
            "data": what,
        },
        {
            "pipeline": "kd2m Loader (batched tensor ops)",
            "images/s": ours,
            "ratio": ours / tv,
            "data": what,
        },
    ]


@dataclass(frozen=True)
class _DistanceFree:
    """The distance-free step's metric (:class:`kd2m.train.DistillationMetric`): the teacher
    forward runs, the distance is a constant 0."""

    inputs: str = "features"
    needs_student_probs: bool = False
    needs_teacher_probs: bool = False

    def __call__(self, zs, zt, y=None, *, ps=None, pt=None, validate: bool = True) -> torch.Tensor:
        return zs.new_zeros(())


def _student_teacher(dev: torch.device, student: dict, teacher: dict):
    """A fresh student (train mode) and a frozen teacher (eval mode) on ``dev``, in
    channels_last with cuDNN autotuning on CUDA, as the trainer runs them. ``student`` and
    ``teacher`` hold ``arch`` and optionally ``stem`` and ``width``."""
    from kd2m.models import build_model

    torch.manual_seed(0)
    nets = []
    for spec in (student, teacher):
        net = build_model(spec["arch"], 10, stem=spec.get("stem"), width=spec.get("width"))
        net = net.to(dev)
        if dev.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        nets.append(net)
    nets[1].eval()
    for q in nets[1].parameters():
        q.requires_grad_(False)
    return nets


def bench_steps(
    n: int = 128,
    repeats: int = 10,
    warmup: int = 3,
    device: str = "cpu",
    student: str = "resnet18",
    teacher: str = "resnet34",
    metrics: list[str] | None = None,
    lam: float = 1e-4,
    variants: list[tuple[str, dict]] | None = None,
) -> list[dict]:
    """Seconds per KD2M training step for each metric against the distance-free step (the
    same student step and teacher forward, no distance), at batch ``n`` with the paper's
    networks (512-d features), through :func:`kd2m.train.train_step` itself.

    ``variants``: ``(name, options)`` pairs (:func:`parse_variant`), each an extra row
    ``KD2M name (key=value, ...)`` with the metric ``get_metric(name, **options)``, after
    the rows of ``metrics`` (every registered metric when None)."""
    from kd2m.metrics import METRICS, get_metric
    from kd2m.train import Distiller, make_optimizer, train_step

    dev = resolve_device(device)
    s, t = _student_teacher(dev, {"arch": student}, {"arch": teacher})
    opt, _ = make_optimizer(
        s.parameters(), lr=1e-3, momentum=0.9, weight_decay=0.0, epochs=1, lr_min=0.0
    )
    x = torch.randn(n, 3, 32, 32, device=dev)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.arange(n, device=dev) % 10

    def step_fn(metric):
        d = Distiller(teacher=t, metric=metric, lam=lam)
        return lambda: train_step(s, x, y, opt, device=dev, distiller=d)

    steps = {f"KD2M {name}": step_fn(get_metric(name)) for name in metrics or list(METRICS)}
    for name, options in variants or []:
        label = f"KD2M {_variant_label(name, options)}"
        if label in steps:
            raise ValueError(f"the step {label!r} is asked for twice (--metric or --variant)")
        steps[label] = step_fn(get_metric(name, **options))
    null = step_fn(_DistanceFree())
    for fn in [null, *steps.values()]:  # warm every path first (kernels, cudnn autotuning)
        _time(fn, 1, warmup, dev)
    # the distance-free step is timed before and after the metrics, so a drift of clocks
    # or load during the run shows, and its median over both is the reference
    before = _time(null, repeats, 0, dev)
    timed = {label: statistics.median(_time(fn, repeats, 0, dev)) for label, fn in steps.items()}
    after = _time(null, repeats, 0, dev)
    base = statistics.median(before + after)
    rows = [
        {
            "step": "distance-free (student step + teacher forward)",
            "seconds": base,
            "ratio": 1.0,
            "before/after": statistics.median(before) / statistics.median(after),
        }
    ]
    for label, sec in timed.items():
        rows.append({"step": label, "seconds": sec, "ratio": sec / base, "before/after": None})
    return rows


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME[:KEY=VALUE,...]`` -> ``(name, options)``, e.g. ``"mmd:kernel=polynomial"`` ->
    ``("mmd", {"kernel": "polynomial"})``. The pairs are split at the commas that start a
    ``KEY=``; each value is read as the CLI's ``--option`` reads it (JSON, else a string:
    ``diagonal=true`` is True). The metric and its options are checked by
    :func:`kd2m.metrics.get_metric` now: a ValueError names the variant and what is wrong."""
    from kd2m.__main__ import _overrides
    from kd2m.metrics import get_metric

    name, colon, rest = text.partition(":")
    name = name.strip()
    pairs = re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", rest) if rest.strip() else []
    try:
        if colon and not pairs:
            raise ValueError("expected KEY=VALUE pairs after ':'")
        options = _overrides(pairs, "--option")
        get_metric(name, **options)
    except ValueError as exc:
        raise ValueError(
            f"--variant {text!r}: {exc} (expected NAME[:KEY=VALUE,...], e.g. "
            "gaussian_kl:diagonal=true)"
        ) from None
    return name, options


def _variant_label(name: str, options: dict) -> str:
    """``name (key=value, ...)``: strings as they are, other values as JSON."""
    if not options:
        return name
    text = ", ".join(
        f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in options.items()
    )
    return f"{name} ({text})"


def _add_variant_argument(p) -> None:
    p.add_argument(
        "--variant",
        action="append",
        type=_variant_arg,
        metavar="NAME[:KEY=VALUE,...]",
        help="also a metric with options, e.g. gaussian_kl:diagonal=true (repeatable; "
        "values as in 'python -m kd2m train --option')",
    )


def _variant_arg(text: str) -> tuple[str, dict]:
    try:
        return parse_variant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def bench_epoch(
    images: int = 50000, device: str = "cpu", metric: str = "wasserstein", profile: str = "paper"
) -> list[dict]:
    """Images per second of one KD2M training epoch of ``profile`` (its networks, batch and
    lambda) on ``images`` training images, against the baseline epoch (no teacher, no
    distance), through :func:`kd2m.train.train_epoch`."""
    from kd2m.data import DATASETS, Loader
    from kd2m.metrics import get_metric
    from kd2m.profiles import PROFILES
    from kd2m.train import Distiller, make_optimizer, train_epoch

    p = PROFILES[profile]
    dev = resolve_device(device)
    x, y, what = _bench_images(images)
    info = DATASETS["cifar10"]
    loader = Loader(
        x,
        y,
        mean=info.mean,
        std=info.std,
        batch_size=p["batch_size"],
        train=True,
        device=dev,
        hflip=True,
        seed=0,
        channels_last=dev.type == "cuda",
    )
    s, t = _student_teacher(dev, p["student"], p["teacher"])
    rows = []
    for label, distiller in (
        ("baseline epoch (student alone)", None),
        (
            f"KD2M epoch ({metric}, lambda {p['lam']:g})",
            Distiller(teacher=t, metric=get_metric(metric), lam=p["lam"]),
        ),
    ):
        opt, _ = make_optimizer(
            s.parameters(),
            lr=p["lr"],
            momentum=p["momentum"],
            weight_decay=p["weight_decay"],
            epochs=1,
            lr_min=p["lr_min"],
        )
        train_epoch(
            s, _Take(loader, 3), 0, opt, device=dev, distiller=distiller, progress=False
        )  # warm-up
        _sync(dev)
        t0 = time.perf_counter()
        train_epoch(s, loader, 1, opt, device=dev, distiller=distiller, progress=False)
        _sync(dev)
        sec = time.perf_counter() - t0
        rows.append(
            {
                "epoch": label,
                "images": loader.num_samples,
                "seconds": sec,
                "images/s": loader.num_samples / sec,
                "data": what,
            }
        )
    for r in rows:
        r["ratio"] = rows[0]["seconds"] / r["seconds"]
    return rows


class _Take:
    """The first ``k`` batches of a loader (for warm-ups)."""

    def __init__(self, loader, k):
        self.loader, self.k = loader, k

    def __len__(self):
        return min(self.k, len(self.loader))

    def epoch(self, epoch):
        for i, batch in enumerate(self.loader.epoch(epoch)):
            if i >= self.k:
                return
            yield batch


# (precision, channels_last) of bench_precision's rows
_PRECISION_SETTINGS = (("bf16", True), ("bf16", False), ("fp32", True), ("fp32", False))


def _precision_nets(dev: torch.device, student: dict, teacher: dict) -> dict:
    """One student per setting of :data:`_PRECISION_SETTINGS` (the same initial weights, in
    its memory format, train mode) and one frozen teacher per memory format (eval mode)."""
    from kd2m.models import build_model

    torch.manual_seed(0)
    base_s = build_model(student["arch"], 10, stem=student.get("stem"), width=student.get("width"))
    base_t = build_model(teacher["arch"], 10, stem=teacher.get("stem"), width=teacher.get("width"))
    base_t.eval().requires_grad_(False)
    fmt = {True: torch.channels_last, False: torch.contiguous_format}
    teachers = {cl: copy.deepcopy(base_t).to(dev, memory_format=fmt[cl]) for cl in fmt}
    students = {
        key: copy.deepcopy(base_s).to(dev, memory_format=fmt[key[1]]).train()
        for key in _PRECISION_SETTINGS
    }
    return {"students": students, "teachers": teachers}


def bench_precision(
    n: int | None = None,
    repeats: int = 10,
    warmup: int = 3,
    device: str = "cpu",
    profile: str = "paper",
    student: dict | None = None,
    teacher: dict | None = None,
) -> list[dict]:
    """Images/s of the student's training step (forward, backward and SGD step, through
    :func:`kd2m.train.train_step`) and of the frozen teacher's forward pass, in bf16 autocast
    and in fp32 (:func:`kd2m.train.precision_context`), each in channels_last and in
    contiguous memory format: four rows. The networks and batch size (``n``) are those of
    ``profile`` unless given (``student``/``teacher``: ``arch`` and optionally ``stem``
    and ``width``), on CIFAR-sized random images.

    The ratios are images/s over those of the row the trainer runs on ``device``
    (``precision="auto"``: bf16 and channels_last on CUDA, fp32 and contiguous elsewhere;
    ``"trainer"`` marks it), measured in the same run; the eight timings are interleaved
    (one step of each per round, ``repeats`` rounds, medians) so that a drift of clocks
    or load falls on all of them alike."""
    from kd2m.data import DEFAULT_IMAGE_SIZE
    from kd2m.profiles import PROFILES
    from kd2m.train import make_optimizer, precision_context, resolve_precision, train_step

    p = PROFILES[profile]
    dev = resolve_device(device)
    n = n or p["batch_size"]
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer: fixed shapes, autotuned kernels
    nets = _precision_nets(dev, student or p["student"], teacher or p["teacher"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE, generator=g).to(dev)
    xs = {True: x.contiguous(memory_format=torch.channels_last), False: x.contiguous()}
    y = (torch.arange(n) % 10).to(dev)
    fns: dict[tuple, Callable[[], object]] = {}
    for prec, cl in _PRECISION_SETTINGS:
        s, t, xb = nets["students"][prec, cl], nets["teachers"][cl], xs[cl]
        opt, _ = make_optimizer(
            s.parameters(), lr=p["lr"], momentum=p["momentum"], weight_decay=0.0, epochs=1, lr_min=0
        )

        def forward(t=t, xb=xb, prec=prec):
            with torch.no_grad(), precision_context(dev, prec):
                t(xb)

        fns[prec, cl, "student"] = partial(train_step, s, xb, y, opt, device=dev, precision=prec)
        fns[prec, cl, "teacher"] = forward
    for fn in fns.values():  # every path warm first (kernels, cuDNN autotuning)
        _time(fn, 1, warmup, dev)
    times: dict[tuple, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            times[key] += _time(fn, 1, 0, dev)
    speed = {key: n / statistics.median(ts) for key, ts in times.items()}
    ref = (resolve_precision("auto", dev), dev.type == "cuda")
    return [
        {
            "precision": "bf16 autocast" if prec == "bf16" else "fp32",
            "memory format": "channels_last" if cl else "contiguous",
            "student step images/s": speed[prec, cl, "student"],
            "student ratio": speed[prec, cl, "student"] / speed[(*ref, "student")],
            "teacher forward images/s": speed[prec, cl, "teacher"],
            "teacher ratio": speed[prec, cl, "teacher"] / speed[(*ref, "teacher")],
            "trainer": "yes" if (prec, cl) == ref else "",
        }
        for prec, cl in _PRECISION_SETTINGS
    ]


def print_rows(rows: list[dict], title: str, file=None) -> None:
    """A plain text table of benchmark rows (floats rounded), with a title line."""
    print(f"\n{title}", file=file)
    keys = list(rows[0])
    cells = [[_cell(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)), file=file)
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)), file=file)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def hardware(device: str) -> str:
    import platform

    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}"
    return (
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}"
    )


_FORMATS = {"images/s": "{:,.0f}", "images": "{:,.0f}", "ratio": "{:.2f}", "seconds": "{:.3f}"}
# columns named by their last word: "student step images/s", "teacher ratio", "median_ms"
_SUFFIX_FORMATS = {" images/s": "{:,.0f}", " ratio": "{:.2f}", "_ms": "{:.2f}"}


def _format_of(column: str, default: str | None = None) -> str | None:
    if column in _FORMATS:
        return _FORMATS[column]
    ends = [f for suffix, f in _SUFFIX_FORMATS.items() if column.endswith(suffix)]
    return ends[0] if ends else default


def _clean(text):
    """A data description without the run store's cache file name."""
    return re.sub(r"\s*\([^()]*\.pt\)", "", text) if isinstance(text, str) else text


def frame(rows: list[dict], *, styled: bool = True):
    """Benchmark rows for the book: a pandas Styler (``styled=True``) whose first column
    names each row, one number format per column (images/s and images as integers with
    thousands separators, ratios to 2 decimals, a ``seconds`` column in milliseconds), a
    column with the same value on every row said once in the caption, and no cache file
    names; ``styled=False`` gives the raw DataFrame indexed by the first column."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if not styled:
        return df.set_index(df.columns[0])
    df = df.map(_clean)
    if "seconds" in df.columns and df["seconds"].max() < 1:
        df = df.rename(columns={"seconds": "time (ms)"})
        df["time (ms)"] = 1000 * df["time (ms)"]
    notes = []
    if len(df) >= 2:
        for c in list(df.columns[1:]):
            known = df[c].notna()
            if not known.any():  # nothing measured (e.g. no step to compare with)
                df = df.drop(columns=c)
            elif df[c].map(repr).nunique() == 1:
                v = df[c].iloc[0]
                notes.append(f"{c}: {_format_of(c, '{}').format(v)}")
                df = df.drop(columns=c)
            elif known.sum() == 1:  # a value of one row only (the reference's drift check)
                row = df[known].iloc[0]
                v = _format_of(c, "{:.3g}").format(row[c])
                notes.append(f"{c} ({row[df.columns[0]]}): {v}")
                df = df.drop(columns=c)
    formats = {c: f for c in df.columns if (f := _format_of(c)) is not None}
    if "time (ms)" in df.columns:
        formats["time (ms)"] = "{:.2f}"
    sty = df.style.hide(axis="index").format(formats)
    for c in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[c])
        sty = sty.set_properties(subset=[c], **{"text-align": "right" if numeric else "left"})
    if notes:
        sty = sty.set_caption("; ".join(notes))
    # HTML ids from the content: re-running a notebook gives the same output
    return sty.set_uuid(hashlib.sha1(df.to_json().encode()).hexdigest()[:8])


def load_benchmarks(folder) -> dict:
    """Merge the benchmark JSON files of ``folder`` (``--json`` outputs: keys ``data``,
    ``steps``, ``epoch`` and ``hardware``) into one dict."""
    from pathlib import Path

    out: dict = {}
    for path in sorted(Path(folder).glob("*.json")):
        blob = json.loads(path.read_text())
        if isinstance(blob, dict):
            out.update(blob)
    return out


def _run_precision(args, out: dict) -> None:
    """``bench precision``: the rows in ``out["precision"]`` and, on CUDA, the TF32 flags
    under which fp32 ran in ``out["tf32"]`` (cuDNN's convolutions may use TF32)."""
    from kd2m.profiles import PROFILES

    out["precision"] = bench_precision(
        n=args.n, repeats=args.repeats, device=args.device, profile=args.profile
    )
    p = PROFILES[args.profile]
    title = (
        f"precision at the {args.profile} profile, batch {args.n}: {p['student']['arch']} "
        f"student step, {p['teacher']['arch']} teacher forward (images/s; ratio to the "
        "trainer's setting on this device)"
    )
    if resolve_device(args.device).type == "cuda":
        out["tf32"] = {
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
        title += "; fp32 under " + ", ".join(f"{k}={v}" for k, v in out["tf32"].items())
    print_rows(out["precision"], title)


def _run_training(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"hardware": hardware(args.device)}
    print(f"hardware: {out['hardware']}")
    if args.command in ("data", "all"):
        out["data"] = bench_data(n=args.images, device=args.device, workers=args.workers)
        print_rows(out["data"], "data pipeline (images/s; ratio to the torchvision DataLoader)")
    if args.command in ("steps", "all"):
        out["steps"] = bench_steps(
            n=args.n,
            repeats=args.repeats,
            device=args.device,
            student=args.student,
            teacher=args.teacher,
            metrics=args.metric,
            variants=args.variant,
        )
        print_rows(
            out["steps"],
            f"training steps, batch {args.n}, {args.student} student, "
            f"{args.teacher} teacher (ratio to the distance-free step)",
        )
    if args.command in ("epoch", "all"):
        out["epoch"] = bench_epoch(images=args.images, device=args.device, profile=args.profile)
        print_rows(
            out["epoch"],
            f"one training epoch at the {args.profile} profile "
            "(ratio: baseline seconds / these seconds)",
        )
    if args.command in ("precision", "all"):
        _run_precision(args, out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def _add_training_parsers(sub) -> None:
    helps = {
        "data": "kd2m's batch pipeline vs a torchvision DataLoader on PIL images",
        "steps": "each metric's KD2M step vs the distance-free step",
        "epoch": "images/s of a KD2M epoch at a profile vs a baseline epoch",
        "precision": "bf16 autocast vs fp32, channels_last vs contiguous, at a profile",
        "all": "data, steps, epoch and precision in one run",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
        p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
        p.add_argument("--images", type=int, default=10000, help="images for data/epoch")
        p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
        p.add_argument("--n", type=int, default=128, help="batch size for steps and precision")
        p.add_argument("--repeats", type=int, default=10, help="timed steps per row")
        p.add_argument("--student", default="resnet18")
        p.add_argument("--teacher", default="resnet34")
        p.add_argument("--metric", action="append", help="only this metric (repeatable)")
        p.add_argument(
            "--profile", default="paper", help="profile of the epoch and precision benchmarks"
        )
        if name in ("steps", "all"):
            _add_variant_argument(p)
        p.add_argument("--json", help="also write the results to this JSON file")
        p.set_defaults(func=_run_training)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kd2m.bench", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="BENCHMARK")
    _add_metrics_parser(sub)
    _add_training_parsers(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
