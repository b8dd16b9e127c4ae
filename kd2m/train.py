"""Algorithm 1 of the paper: ONE training loop for the teacher, the student baseline and KD2M.

Each step draws a minibatch ``(x, y)``, computes the student's logits and features
``z_S = g_S(x)``, the frozen teacher's features ``z_T = g_T(x)`` (eval mode, no gradient),
and minimises (EQUATIONS.md, eq. 1)::

    CE(h_S(z_S), y) + lambda * D(P(z_S), z_T, y)

where ``P`` is the student-side projector (identity when the feature sizes agree).
``lambda = 0`` without a metric is the student baseline; no teacher is the teacher's own
training. SGD with momentum, cosine annealing stepped once per epoch down to ``lr_min``
(the baseline is annealed too: the author's code forgot it).

The networks run under the precision of :data:`PRECISIONS` (``RunConfig.precision``):
``"auto"`` is bf16 autocast on CUDA and float32 elsewhere, ``"bf16"`` bf16 autocast on any
device, ``"fp32"`` no autocast. On CUDA the trainer also runs them in channels_last memory
format. The distances always compute in float32 or wider (the metrics upcast their inputs).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

__all__ = [
    "PRECISIONS",
    "resolve_precision",
    "precision_context",
    "resolve_device",
    "DistillationMetric",
    "Distiller",
    "evaluate",
    "make_optimizer",
    "train_step",
    "train_epoch",
    "fit",
]


def resolve_device(device: str | torch.device = "auto", *, allow_mps: bool = True) -> torch.device:
    """``"auto"`` picks CUDA, then MPS (unless ``allow_mps=False``, e.g. for float64 work:
    MPS has none), then CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if allow_mps and mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a torch device (expected 'auto', 'cpu', "
            "'cuda', 'cuda:N' or 'mps')"
        ) from exc
    _check_available(dev, device)
    return dev


def _check_available(dev: torch.device, asked) -> None:
    """Raise ValueError, before any work, when ``dev`` cannot train here."""
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(
            f"device={asked!r} cannot train (its tensors hold no data or it is "
            "not supported): use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={asked!r} but no CUDA GPU is available here (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda}): use "
                "device 'cpu' or 'auto'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={asked!r} but only {torch.cuda.device_count()} CUDA device(s) exist here"
            )
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and (mps is None or not mps.is_available()):
        raise ValueError(f"device={asked!r} but MPS is not available here: use 'cpu' or 'auto'")


#: ``RunConfig.precision``'s values: what the networks' forward passes compute in.
PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(precision: str, device: torch.device) -> str:
    """What ``precision`` means on ``device``: ``"bf16"`` (bf16 autocast) or ``"fp32"``.

    ``"auto"`` is bf16 on CUDA and fp32 elsewhere: the committed CPU results were made in
    fp32 and retrain to the same bits, so ``"auto"`` keeps that meaning on the CPU even where
    bf16 is faster (``python -m kd2m.bench precision`` measures it; on a CPU with AVX512-BF16
    it can be); ``"bf16"`` asks for bf16 autocast on any device. ``"fp32"`` is no autocast,
    under torch's defaults: on CUDA cuDNN may run convolutions in TF32
    (``torch.backends.cudnn.allow_tf32``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {PRECISIONS}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def precision_context(device: torch.device, precision: str = "auto"):
    """The autocast context of ``precision`` (:func:`resolve_precision`) on ``device``: bf16
    autocast, or a no-op context for fp32."""
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class DistillationMetric(Protocol):
    """What :class:`Distiller` needs of a metric (:class:`kd2m.metrics.Metric` is one).

    ``inputs``: ``"features"`` (the student's projected features and the teacher's) or
    ``"logits"``; ``needs_student_probs`` / ``needs_teacher_probs``: whether ``ps`` / ``pt``
    (softmax of the student's / teacher's logits) must be passed. Called as
    ``metric(zs, zt, y, ps=ps, pt=pt, validate=False)`` (``ps``, ``pt`` only when needed);
    returns a 0-dim tensor.
    """

    inputs: str
    needs_student_probs: bool
    needs_teacher_probs: bool

    def __call__(
        self, zs, zt, y=None, *, ps=None, pt=None, validate: bool = True
    ) -> torch.Tensor: ...


@dataclass
class Distiller:
    """What the student is distilled with: a frozen teacher, a metric, a weight and a projector.

    ``metric`` follows :class:`DistillationMetric` (e.g. :func:`kd2m.metrics.get_metric`).
    With ``lam == 0`` and a metric the distance is still computed (without gradient) and
    recorded, which is what Fig. 2 plots for ``lambda = 0``.

    ``teacher_cache``: a dict ``step key -> (logits_t, feats_t)`` shared by the students of
    one seed (they see exactly the same batches, and the frozen teacher is deterministic),
    so that the teacher's forward pass runs once per batch and seed instead of once per
    student: the key is ``(epoch, step)`` of the loader, whose batches depend only on its
    seed and the epoch. Exact on the CPU (the same input gives the same output bits).
    """

    teacher: nn.Module
    metric: DistillationMetric | None = None
    lam: float = 0.0
    projector: nn.Module | None = None
    teacher_cache: dict | None = None

    def __post_init__(self) -> None:
        # frozen: eval mode (BatchNorm uses and keeps its running statistics), no gradient
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def teacher_outputs(self, x, key=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen teacher's ``(logits, features)`` of batch ``x`` (from
        ``teacher_cache[key]`` when the students of this seed already computed them)."""
        if self.teacher_cache is not None and key is not None and key in self.teacher_cache:
            return self.teacher_cache[key]
        with torch.no_grad():
            out = self.teacher(x)
        if self.teacher_cache is not None and key is not None:
            self.teacher_cache[key] = out
        return out

    def terms(
        self, logits_s, feats_s, x, y, key=None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(D, lambda * D)``: the distance (0-dim, float32+, recorded) and the weighted term
        added to the cross-entropy (None when ``lam == 0``); ``(None, None)`` without a
        metric. ``key``: the batch's ``(epoch, step)`` for :attr:`teacher_cache`."""
        if self.metric is None:
            return None, None
        logits_t, feats_t = self.teacher_outputs(x, key)
        if self.metric.inputs == "logits":
            zs, zt = logits_s, logits_t
        else:
            zs = self.projector(feats_s) if self.projector is not None else feats_s
            zt = feats_t
        # validate=False: no host synchronisation for the NaN check on every step; a
        # non-finite loss is caught at the end of the epoch (train_epoch).
        kwargs: dict = {"validate": False}
        if self.metric.needs_student_probs:
            kwargs["ps"] = logits_s.float().softmax(1)  # E3: the student's predictions
        if self.metric.needs_teacher_probs:
            kwargs["pt"] = logits_t.float().softmax(1)  # E3: the teacher's predictions
        if self.lam == 0:
            with torch.no_grad():
                return self.metric(zs.detach().float(), zt.float(), y, **kwargs), None
        dist = self.metric(zs.float(), zt.float(), y, **kwargs)
        return dist, self.lam * dist


def make_optimizer(
    params, *, lr: float, momentum: float, weight_decay: float, epochs: int, lr_min: float
):
    """SGD with momentum and a cosine schedule over ``epochs`` (stepped once per epoch)."""
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=lr_min)
    return opt, sched


def train_step(
    model,
    x,
    y,
    opt,
    *,
    device: torch.device,
    distiller: Distiller | None = None,
    key=None,
    precision: str = "auto",
):
    """One SGD step on ``CE + lambda * D`` (eq. 1; ``lambda = distiller.lam``). Returns
    ``(logits, ce, D)`` (``D`` is None without a metric). ``key``: the batch's
    ``(epoch, step)``, for the distiller's teacher cache. The forward passes (student and
    teacher) run under ``precision`` (:func:`precision_context`)."""
    with precision_context(device, precision):
        logits, feats = model(x)
        dist, term = (
            (None, None) if distiller is None else distiller.terms(logits, feats, x, y, key)
        )
    ce = F.cross_entropy(logits.float(), y)
    loss = ce + term if term is not None else ce
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return logits, ce, dist


def train_epoch(
    model,
    loader,
    epoch: int,
    opt,
    *,
    device: torch.device,
    distiller: Distiller | None = None,
    progress: bool = True,
    precision: str = "auto",
) -> dict:
    """One pass over ``loader.epoch(epoch)`` (forward passes under ``precision``). Returns
    mean train CE, distillation loss, accuracy.

    Sums stay on the device (no host synchronisation per step, except inside an exact OT
    solver); the epoch's means are read once at the end. A non-finite loss raises
    :class:`FloatingPointError` at the end of the epoch, before anything is saved.
    """
    model.train()
    if distiller is not None and distiller.projector is not None:
        distiller.projector.train()
    sum_ce = torch.zeros((), device=device, dtype=torch.float64)
    sum_d = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    has_d = distiller is not None and distiller.metric is not None
    bar = tqdm(
        loader.epoch(epoch),
        total=len(loader),
        desc=f"epoch {epoch + 1}",
        disable=not progress,
        leave=False,
    )
    for step, (x, y) in enumerate(bar):
        logits, ce, dist = train_step(
            model,
            x,
            y,
            opt,
            device=device,
            distiller=distiller,
            key=(epoch, step),
            precision=precision,
        )
        n = y.shape[0]
        seen += n
        sum_ce += ce.detach().double() * n
        if dist is not None:
            sum_d += dist.detach().double() * n
        correct += (logits.detach().argmax(1) == y).sum()
    mean_ce = (sum_ce / seen).item()
    mean_d = (sum_d / seen).item() if has_d else None
    if not math.isfinite(mean_ce) or (mean_d is not None and not math.isfinite(mean_d)):
        raise FloatingPointError(
            f"non-finite training loss in epoch {epoch + 1}: cross-entropy={mean_ce}, "
            f"distillation={mean_d}; lower the learning rate or lambda"
        )
    return {"train_ce": mean_ce, "train_distill": mean_d, "train_acc": correct.item() / seen}


@torch.no_grad()
def evaluate(
    model,
    loader,
    *,
    device: torch.device,
    keep_features: int = 0,
    per_image: bool = False,
    precision: str = "auto",
) -> dict:
    """Test cross-entropy and accuracy (forward passes under ``precision``); with
    ``keep_features > 0`` also the first ``keep_features`` feature vectors (float32, on the
    CPU); with ``per_image`` also ``correct``, whether each image (in the loader's order)
    was classified correctly (bool, on the CPU: the per-image paired tests of Table 1 read
    it)."""
    model.eval()
    sum_ce = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    feats = []
    hits = []
    kept = 0
    for x, y in loader.epoch(0):
        with precision_context(device, precision):
            logits, z = model(x)
        sum_ce += F.cross_entropy(logits.float(), y, reduction="sum").double()
        hit = logits.argmax(1) == y
        correct += hit.sum()
        if per_image:
            hits.append(hit.cpu())
        seen += y.shape[0]
        if kept < keep_features:
            take = min(keep_features - kept, y.shape[0])
            feats.append(z[:take].float().cpu())
            kept += take
    out: dict = {"test_ce": (sum_ce / seen).item(), "test_acc": correct.item() / seen}
    if keep_features:
        out["features"] = torch.cat(feats)
    if per_image:
        out["correct"] = torch.cat(hits)
    return out


def fit(
    model,
    *,
    train_loader,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    lr_min: float,
    device: torch.device,
    distiller: Distiller | None = None,
    state: dict | None = None,
    on_epoch_end: Callable[[dict, dict], None] | None = None,
    progress: bool = True,
    precision: str = "auto",
) -> list[dict]:
    """Algorithm 1: train ``model`` for ``epochs`` epochs and return the per-epoch history
    (training loss terms and accuracy, learning rate, seconds).

    What is measured on held-out images is the caller's: ``on_epoch_end(row, state)`` is
    called after every epoch with the epoch's record row (which it may extend, e.g. with
    the accuracy on a monitored set of test images) and the full resumable state (model,
    projector, optimiser and scheduler states, history), which the caller writes to disk.
    ``state`` (such a checkpoint) resumes after its last finished epoch. The forward passes
    run under ``precision`` (:func:`precision_context`).
    The data order of epoch ``k`` depends only on the loader's seed and ``k``, so a resumed
    run replays exactly the batches of an uninterrupted one.
    """
    params = list(model.parameters())
    projector = distiller.projector if distiller is not None else None
    if projector is not None:
        params += list(projector.parameters())
    opt, sched = make_optimizer(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, epochs=epochs, lr_min=lr_min
    )
    history: list[dict] = []
    if state is not None:
        model.load_state_dict(state["model"])
        if projector is not None and state.get("projector") is not None:
            projector.load_state_dict(state["projector"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = list(state["history"])
    for epoch in range(len(history), epochs):
        t0 = time.perf_counter()
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"]}
        row.update(
            train_epoch(
                model,
                train_loader,
                epoch,
                opt,
                device=device,
                distiller=distiller,
                progress=progress,
                precision=precision,
            )
        )
        sched.step()
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if on_epoch_end is not None:
            on_epoch_end(
                row,
                {
                    "model": model.state_dict(),
                    "projector": projector.state_dict() if projector is not None else None,
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "history": history,
                },
            )
    return history
