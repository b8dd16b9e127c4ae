"""Runs: a config names everything that changes a result; a run is stored by its hash.

``run(config)`` returns the JSON record of a finished run, training it first if needed:

* ``data/runs/<name>-<hash>/record.json``: config, per-epoch history, final metrics, data
  provenance, hardware, library versions, wall time; written atomically (temp file +
  ``os.replace``) after every epoch with ``"status": "running"`` and at the end with
  ``"status": "finished"``;
* ``checkpoint.pt``: the resumable state after the last finished epoch (a killed run resumes
  from it and replays exactly the batches it would have seen);
* ``model.pt``: the final weights (and projector); ``monitor.pt``: the first test features
  of every epoch (the theory chapter and Fig. 3 read them).

Checkpoints are never committed; records of reference runs may be copied to
``data/results/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kd2m._io import atomic_json, atomic_torch_save
from kd2m.data import DATASETS, DEFAULT_IMAGE_SIZE, Loader, load_data
from kd2m.metrics import METRICS, get_metric, wasserstein
from kd2m.models import build_model, make_projector
from kd2m.train import Distiller, evaluate, fit, resolve_device

__all__ = ["RunConfig", "run", "load_record", "list_runs", "run_dir", "data_root",
           "load_model", "load_monitor", "RECORD_FORMAT"]

RECORD_FORMAT = 1
ROLES = ("teacher", "student")
SOURCES = ("torchvision", "folder")
MONITOR_SIZE = 1000  # class-balanced test images whose features are kept each epoch
# Fields added after records were first stored: left out of the hash at their default,
# so that the runs made before them keep their names.
_HASH_OMITS_DEFAULT = {"image_size": DEFAULT_IMAGE_SIZE, "data_sha256": None}


def data_root() -> Path:
    """``$KD2M_DATA`` if set, else the repository's ``data/`` (editable install),
    else ``./data``."""
    env = os.environ.get("KD2M_DATA")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").exists():
        return repo / "data"
    return Path.cwd() / "data"


@dataclass(frozen=True)
class RunConfig:
    """Everything that changes the numbers of a run (hashed to name it).

    Where the data files lie (``folder``), the device and progress bars are not part of
    it; they are arguments of :func:`run`, and the record stores them as provenance.

    ``dataset`` is a known dataset (cifar10, cifar100, svhn) or the name of an image
    folder of one's own (``source="folder"``); the latter's identity is ``data_sha256``,
    the content hash of its images (``ImageData.provenance["content_sha256"]``, which
    :func:`kd2m.profiles.teacher_config` with ``folder=`` fills in), checked when the run
    reads the folder. ``image_size`` is the networks' input size (a folder's images are
    resized to it; the known datasets are 32x32).
    """

    role: str = "student"
    dataset: str = "cifar10"
    source: str = "torchvision"
    n_train: int | None = None
    n_test: int | None = None
    arch: str = "resnet18"
    stem: str = "imagenet"
    width: int | None = None
    pretrained: bool = False
    hflip: bool | None = None
    metric: str | None = None
    metric_options: dict = field(default_factory=dict)
    lam: float = 0.0
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_min: float = 1e-4
    seed: int = 42
    teacher: RunConfig | None = None
    image_size: int = DEFAULT_IMAGE_SIZE
    data_sha256: str | None = None

    def __post_init__(self):
        def bad(name, expected):
            raise ValueError(f"RunConfig.{name}={getattr(self, name)!r}: expected {expected}")

        if self.role not in ROLES:
            bad("role", f"one of {ROLES}")
        if self.source not in SOURCES:
            bad("source", f"one of {SOURCES}")
        if not isinstance(self.image_size, int) or self.image_size < 1:
            bad("image_size", "a positive integer")
        if self.dataset in DATASETS:
            if self.image_size != DEFAULT_IMAGE_SIZE:
                bad("image_size", f"{DEFAULT_IMAGE_SIZE} for {self.dataset} (image_size "
                    "resizes the images of a folder of one's own)")
        else:
            if self.source != "folder":
                bad("dataset", f"one of {sorted(DATASETS)}, or the name of an image folder "
                    "with source='folder'")
            if not isinstance(self.data_sha256, str) or not self.data_sha256:
                bad("data_sha256", f"the content hash of the folder's images for dataset "
                    f"{self.dataset!r} (kd2m.profiles.teacher_config(profile, folder=PATH) "
                    "sets it)")
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "a positive integer")
        for name in ("n_train", "n_test"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                bad(name, "None (all images) or a positive integer")
        for name in ("lam", "lr", "momentum", "weight_decay", "lr_min"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not v >= 0 or v != v or v == float("inf"):
                bad(name, "a finite number >= 0")
        if self.lr <= 0:
            bad("lr", "a number > 0")
        if self.role == "teacher":
            if self.teacher is not None or self.metric is not None or self.lam != 0:
                raise ValueError("a teacher run takes no teacher, metric or lam "
                                 f"(got teacher={self.teacher is not None}, "
                                 f"metric={self.metric!r}, lam={self.lam!r})")
        else:
            if self.metric is not None:
                if self.metric not in METRICS:
                    bad("metric", f"None or one of {sorted(METRICS)}")
            if self.lam > 0 and self.metric is None:
                bad("lam", "0 when metric is None (set a metric to distil)")
            if self.metric is not None and self.teacher is None:
                bad("teacher", "a teacher RunConfig when a metric is set")
            if self.teacher is not None:
                if not isinstance(self.teacher, RunConfig) or self.teacher.role != "teacher":
                    bad("teacher", "a RunConfig with role='teacher'")
                for name in ("dataset", "source", "n_train", "n_test", "image_size",
                             "data_sha256"):
                    if getattr(self.teacher, name) != getattr(self, name):
                        raise ValueError(
                            f"teacher.{name}={getattr(self.teacher, name)!r} differs from the "
                            f"student's {name}={getattr(self, name)!r}: both must see the same "
                            "data")

    # -- identity ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown RunConfig field(s) {unknown}; known: {sorted(known)}")
        if d.get("teacher") is not None and not isinstance(d["teacher"], RunConfig):
            d["teacher"] = cls.from_dict(d["teacher"])
        return cls(**d)

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    @property
    def hash(self) -> str:
        text = json.dumps(_identity(self.to_dict()), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        if self.role == "teacher":
            kind = "teacher"
        elif self.metric is None:
            kind = "baseline"
        else:
            kind = f"{self.metric}-lam{self.lam:g}"
        return f"{self.dataset}-{self.arch}-{kind}-s{self.seed}"


def _identity(d: dict) -> dict:
    """The hashed form of a config dict: fields of :data:`_HASH_OMITS_DEFAULT` at their
    default are left out (also in the teacher)."""
    out = {k: v for k, v in d.items()
           if not (k in _HASH_OMITS_DEFAULT and v == _HASH_OMITS_DEFAULT[k])}
    if isinstance(out.get("teacher"), dict):
        out["teacher"] = _identity(out["teacher"])
    return out


def run_dir(cfg: RunConfig, root: Path | str | None = None) -> Path:
    root = Path(root) if root is not None else data_root()
    return root / "runs" / f"{cfg.name}-{cfg.hash}"


def load_record(path: Path | str) -> dict:
    """Read a record (a ``record.json`` or a run directory); checks its format version."""
    path = Path(path)
    if path.is_dir():
        path = path / "record.json"
    rec = json.loads(path.read_text())
    if rec.get("format") != RECORD_FORMAT:
        raise ValueError(f"{path}: record format {rec.get('format')!r}, expected {RECORD_FORMAT}")
    return rec


def list_runs(root: Path | str | None = None) -> list[dict]:
    """All records under ``<root>/runs`` (and ``<root>/results``), newest first."""
    root = Path(root) if root is not None else data_root()
    recs = []
    for pattern in ("runs/*/record.json", "results/**/*.json"):
        for p in root.glob(pattern):
            try:
                recs.append(load_record(p) | {"path": str(p)})
            except (ValueError, json.JSONDecodeError):
                continue
    return sorted(recs, key=lambda r: r.get("started", ""), reverse=True)


def _environment(device: torch.device) -> dict:
    import numpy
    import scipy
    import torchvision

    try:
        import ot

        pot = ot.__version__
    except ImportError:  # pragma: no cover
        pot = None
    hw = {"host": socket.gethostname(), "platform": platform.platform(),
          "processor": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
          "device": str(device)}
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "numpy": numpy.__version__,
                "scipy": scipy.__version__, "pot": pot}
    from kd2m import __version__

    versions["kd2m"] = __version__
    return {"hardware": hw, "versions": versions}


def _load_data(cfg: RunConfig, root: Path, folder, download: bool):
    data = load_data(cfg.dataset, source=cfg.source, root=root, folder=folder, download=download,
                     image_size=cfg.image_size)
    found = data.provenance.get("content_sha256")
    if cfg.data_sha256 is not None and found != cfg.data_sha256:
        raise ValueError(
            f"folder={str(folder)!r} holds other images than run {cfg.name} was configured "
            f"for (content sha256 {found} instead of data_sha256={cfg.data_sha256}); build the "
            "config again from this folder (teacher_config / student_config with folder=)")
    if cfg.n_train is not None or cfg.n_test is not None:
        data = data.subset(cfg.n_train, cfg.n_test, seed=0)
    return data


def _build(cfg: RunConfig, num_classes: int):
    torch.manual_seed(cfg.seed)  # every run of a seed starts from the same initialisation
    return build_model(cfg.arch, num_classes, stem=cfg.stem, pretrained=cfg.pretrained,
                       width=cfg.width)


def load_model(cfg: RunConfig, root: Path | str | None = None, device="cpu"):
    """The trained network of a finished run (and its projector, or None), in eval mode."""
    d = run_dir(cfg, root)
    path = d / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run(config) first (run {cfg.name})")
    blob = torch.load(path, map_location=device, weights_only=True)
    model = _build(cfg, blob["num_classes"]).to(device)
    model.load_state_dict(blob["model"])
    model.eval()
    projector = None
    if blob.get("projector") is not None:
        projector = make_projector(*blob["projector_dims"]).to(device)
        projector.load_state_dict(blob["projector"])
        projector.eval()
    return model, projector


def load_monitor(cfg: RunConfig, root: Path | str | None = None) -> dict:
    """Per-epoch features of the monitored test images (class-balanced, see
    ``_monitor_indices``): ``{"indices", "labels", "epochs": [student features per epoch
    (float16; projected into the teacher's space when sizes differ)], "teacher": teacher
    features (float32), "head": [(W, b) of the student head per epoch]}``, on the CPU."""
    path = run_dir(cfg, root) / "monitor.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run(config) first (run {cfg.name})")
    return torch.load(path, map_location="cpu", weights_only=True)


def run(cfg: RunConfig, *, root: Path | str | None = None, folder: str | Path | None = None,
        download: bool = False, device: str = "auto", progress: bool | None = None,
        stop_after: int | None = None) -> dict:
    """Return the record of ``cfg``, training it (and its teacher) first if needed.

    A finished run is loaded, not retrained. An interrupted one resumes from its checkpoint.
    ``stop_after=k`` stops after epoch ``k`` as a kill would (for tests), leaving a
    ``"running"`` record and a checkpoint. ``progress=None`` reads ``$KD2M_PROGRESS``
    (``0`` turns bars off), default on.
    """
    if not isinstance(cfg, RunConfig):
        raise ValueError(f"cfg={cfg!r}: expected a kd2m.runs.RunConfig")
    root = Path(root) if root is not None else data_root()
    if progress is None:
        progress = os.environ.get("KD2M_PROGRESS", "1") not in ("0", "false", "no")
    d = run_dir(cfg, root)
    rec_path = d / "record.json"
    if rec_path.exists():
        rec = load_record(rec_path)
        if rec["status"] == "finished":
            return rec

    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed 32x32 shapes: pick the fastest kernels
    teacher_rec = None
    distiller = None
    teacher = None
    if cfg.teacher is not None:
        teacher_rec = run(cfg.teacher, root=root, folder=folder, download=download,
                          device=device, progress=progress)
    data = _load_data(cfg, root, folder, download)
    hflip = data.info.hflip if cfg.hflip is None else cfg.hflip
    loader_kw = {"device": dev, "channels_last": dev.type == "cuda"}
    train_loader = Loader.from_data(data, "train", batch_size=cfg.batch_size, train=True,
                                    hflip=hflip, seed=cfg.seed, **loader_kw)
    test_loader = Loader.from_data(data, "test", batch_size=max(cfg.batch_size, 256),
                                   train=False, **loader_kw)
    model = _build(cfg, len(data.classes)).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    # The monitor: a fixed, class-balanced set of test images (the first of each class in
    # test order), whose features are kept every epoch for Fig. 3 and the theory chapter.
    mon_idx = _monitor_indices(data.y_test, MONITOR_SIZE)
    monitor_loader = Loader(data.x_test[mon_idx], data.y_test[mon_idx], mean=data.info.mean,
                            std=data.info.std, batch_size=500, train=False, **loader_kw)
    teacher_feats = None
    projector_dims = None
    if cfg.teacher is not None:
        teacher, _ = load_model(cfg.teacher, root, device=dev)
        if dev.type == "cuda":
            teacher = teacher.to(memory_format=torch.channels_last)
        for p in teacher.parameters():
            p.requires_grad_(False)
        projector = None
        if model.feature_dim != teacher.feature_dim:
            torch.manual_seed(cfg.seed + 1)
            projector = make_projector(model.feature_dim, teacher.feature_dim).to(dev)
            projector_dims = (model.feature_dim, teacher.feature_dim)
        metric = get_metric(cfg.metric, **cfg.metric_options) if cfg.metric else None
        distiller = Distiller(teacher=teacher, metric=metric, lam=cfg.lam, projector=projector)
        teacher_feats = evaluate(teacher, monitor_loader, device=dev,
                                 keep_features=len(mon_idx))["features"]

    ckpt_path = d / "checkpoint.pt"
    state = None
    monitor = {"epochs": [], "head": [], "teacher": teacher_feats, "indices": mon_idx,
               "labels": data.y_test[mon_idx]}
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    wall_before = 0.0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=dev, weights_only=False)
        monitor = state.pop("monitor")
        started = state.pop("started")
        wall_before = state.pop("wall_seconds")
    env = _environment(dev)
    t_start = time.perf_counter()

    def record(history, status, wall):
        final = {k: history[-1][k] for k in ("test_acc", "test_ce", "train_acc", "train_ce")} \
            if history else {}
        return {
            "format": RECORD_FORMAT, "name": cfg.name, "hash": cfg.hash, "status": status,
            "config": cfg.to_dict(), "history": history, "final": final,
            "teacher": None if teacher_rec is None else {
                "name": teacher_rec["name"], "hash": teacher_rec["hash"],
                "test_acc": teacher_rec["final"]["test_acc"]},
            "data": data.provenance | {"folder": None if folder is None else str(folder),
                                       "n_train": int(data.y_train.shape[0]),
                                       "n_test": int(data.y_test.shape[0]), "hflip": hflip},
            **env, "started": started, "wall_seconds": wall,
        }

    def on_epoch_end(row, st):
        if teacher_feats is not None:
            test = evaluate(model, monitor_loader, device=dev, keep_features=len(mon_idx))
            zs = test["features"]
            if projector_dims is not None:
                with torch.no_grad():
                    zs = distiller.projector(zs.to(dev)).float().cpu()
            row["test_feature_w2"] = float(wasserstein(zs.double(), teacher_feats.double()))
            row["test_feature_gap"] = float((zs - teacher_feats).norm(dim=1).mean())
            monitor["epochs"].append(zs.half())
            head = model.head
            monitor["head"].append((head.weight.detach().float().cpu(),
                                    head.bias.detach().float().cpu()))
        wall = wall_before + time.perf_counter() - t_start
        atomic_torch_save(st | {"monitor": monitor, "started": started,
                                "wall_seconds": wall}, ckpt_path)
        atomic_json(record(st["history"], "running", wall), rec_path)
        if stop_after is not None and row["epoch"] >= stop_after and row["epoch"] < cfg.epochs:
            raise _Stopped

    try:
        history = fit(model, train_loader=train_loader, test_loader=test_loader,
                      epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum,
                      weight_decay=cfg.weight_decay, lr_min=cfg.lr_min, device=dev,
                      distiller=distiller, state=state, on_epoch_end=on_epoch_end,
                      progress=progress)
    except _Stopped:
        return load_record(rec_path)
    wall = wall_before + time.perf_counter() - t_start
    proj = distiller.projector if distiller is not None else None
    atomic_torch_save({
        "model": model.state_dict(), "num_classes": len(data.classes),
        "projector": proj.state_dict() if proj is not None else None,
        "projector_dims": projector_dims}, d / "model.pt")
    if teacher_feats is not None:
        atomic_torch_save(monitor, d / "monitor.pt")
    rec = record(history, "finished", wall)
    atomic_json(rec, rec_path)
    ckpt_path.unlink(missing_ok=True)
    return rec


def _monitor_indices(y: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` test indices, class-balanced: the first ``size // K`` of each class in test
    order (fewer where a class has fewer), sorted. Deterministic, so every run of a dataset
    monitors the same images."""
    classes = torch.unique(y)
    per = max(1, size // len(classes))
    idx = torch.cat([torch.nonzero(y == c).flatten()[:per] for c in classes])
    return idx.sort().values


class _Stopped(Exception):
    """Raised by ``stop_after`` to simulate a killed run."""
