"""Runs: a config names everything that changes a result; a run is stored by its hash.

``run(config)`` returns the JSON record of a finished run, training it first if needed:

* ``data/runs/<name>-<hash>/record.json``: config, per-epoch history, final metrics, data
  provenance (with the data's content sha256), hardware, library versions, git commit and
  whether the tree was dirty, wall time, and the sha256 of the files below (``"files"``);
  written atomically (temp file + ``os.replace``) after every epoch with ``"status":
  "running"`` and at the end with ``"status": "finished"``;
* ``checkpoint.pt``: the resumable state after the last finished epoch (a killed run resumes
  from it and replays exactly the batches it would have seen);
* ``model.pt``: the final weights (and projector); ``monitor.pt``: the monitored test
  features and the head of every epoch (the theory chapter and Fig. 3 read them).

Every file is checked against its sha256 in the record before it is loaded. A finished run
whose files are missing or differ is trained again (with a warning); a checkpoint that
differs is discarded (the run starts again); a record made from other data than the data
given now raises :class:`DataMismatchError`. ``run.lock`` in the run directory makes
concurrent processes asking for the same run train it once; the others wait and load it.

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
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kd2m._io import (
    FileError,
    atomic_json,
    atomic_torch_save,
    file_sha256,
    path_lock,
    probe_writable,
    read_json,
    torch_load,
)
from kd2m.data import DATASETS, DEFAULT_IMAGE_SIZE, ImageData, Loader, load_data
from kd2m.metrics import METRICS, get_metric, wasserstein
from kd2m.models import KD2MNet, build_model, make_projector
from kd2m.stats import encode_correct
from kd2m.train import PRECISIONS, Distiller, evaluate, fit, resolve_device, resolve_precision

__all__ = [
    "RunConfig",
    "run",
    "load_record",
    "load_records",
    "list_runs",
    "run_dir",
    "data_root",
    "load_model",
    "load_monitor",
    "git_state",
    "DataMismatchError",
    "RECORD_FORMAT",
]

# 2: sha256 of the weights ("files"), per-epoch monitor heads, git state.
# 3: the test set is evaluated once, after the last epoch, with per-image correctness
#    (``final.test_correct``); every epoch is evaluated on the monitored images
#    (``monitor_acc``, ``monitor_ce``); ``n_val`` runs are evaluated on validation images.
RECORD_FORMAT = 3
READABLE_FORMATS = (1, 2, 3)  # older records are listed and plotted, never reused by run()
ROLES = ("teacher", "student")
SOURCES = ("torchvision", "folder")
MONITOR_SIZE = 1000  # class-balanced test images whose features are kept each epoch
# Fields added after records were first stored: left out of the hash at their default,
# so that the runs made before them keep their names.
_HASH_OMITS_DEFAULT = {
    "image_size": DEFAULT_IMAGE_SIZE,
    "data_sha256": None,
    "n_val": None,
    "precision": "auto",
}


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

    ``n_val``: evaluate on ``n_val`` training images left out of the ``n_train`` subset
    (:meth:`kd2m.data.ImageData.validation`) instead of the test set, for choosing a
    hyperparameter (lambda) without looking at the test images.

    A student's teacher sees the same dataset (and image size), but may have been trained
    on more of its training images (``n_train``) than the student: a strong teacher.

    ``precision``: what the networks' forward passes compute in
    (:data:`kd2m.train.PRECISIONS`, :func:`kd2m.train.resolve_precision`): ``"auto"`` (bf16
    autocast on CUDA, float32 elsewhere: what every run did before the field existed, so it
    is left out of the hash), ``"bf16"`` (bf16 autocast on any device, the CPU included) or
    ``"fp32"`` (no autocast). The record stores what it resolved to (``"precision"``; the
    records made before it: bf16 on CUDA, fp32 elsewhere). A student's teacher keeps its
    own precision (a student with ``precision="fp32"`` distils the default teacher); the
    teacher's forward passes inside the student's run follow the student's precision.
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
    n_val: int | None = None
    precision: str = "auto"

    def __post_init__(self):
        def bad(name, expected):
            raise ValueError(f"RunConfig.{name}={getattr(self, name)!r}: expected {expected}")

        _check_types(self)
        if not isinstance(self.image_size, int) or self.image_size < 1:
            bad("image_size", "a positive integer")
        if self.dataset in DATASETS:
            if self.image_size != DEFAULT_IMAGE_SIZE:
                bad(
                    "image_size",
                    f"{DEFAULT_IMAGE_SIZE} for {self.dataset} (image_size "
                    "resizes the images of a folder of one's own)",
                )
        else:
            if self.source != "folder":
                bad(
                    "dataset",
                    f"one of {sorted(DATASETS)}, or the name of an image folder "
                    "with source='folder'",
                )
            if not isinstance(self.data_sha256, str) or not self.data_sha256:
                bad(
                    "data_sha256",
                    f"the content hash of the folder's images for dataset "
                    f"{self.dataset!r} (kd2m.profiles.teacher_config(profile, folder=PATH) "
                    "sets it)",
                )
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "a positive integer")
        for name in ("n_train", "n_test", "n_val"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                bad(name, "None (all images) or a positive integer")
        for name in ("lam", "lr", "momentum", "weight_decay", "lr_min"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not v >= 0 or v != v or v == float("inf"):
                bad(name, "a finite number >= 0")
        if self.lr <= 0:
            bad("lr", "a number > 0")
        if not isinstance(self.metric_options, dict):
            bad("metric_options", "a dict of metric options")
        if self.metric is None and self.metric_options:
            bad("metric_options", "{} when metric is None")
        if self.role == "teacher":
            if self.teacher is not None or self.metric is not None or self.lam != 0:
                raise ValueError(
                    "a teacher run takes no teacher, metric or lam "
                    f"(got teacher={self.teacher is not None}, "
                    f"metric={self.metric!r}, lam={self.lam!r})"
                )
        else:
            if self.metric is not None:
                if self.metric not in METRICS:
                    bad("metric", f"None or one of {sorted(METRICS)}")
                try:  # the registry validates the options now, before anything trains
                    get_metric(self.metric, **self.metric_options)
                except ValueError as exc:
                    bad("metric_options", f"options of metric {self.metric!r} ({exc})")
            if self.lam > 0 and self.metric is None:
                bad("lam", "0 when metric is None (set a metric to distil)")
            if self.metric is not None and self.teacher is None:
                bad("teacher", "a teacher RunConfig when a metric is set")
            if self.teacher is not None:
                if not isinstance(self.teacher, RunConfig) or self.teacher.role != "teacher":
                    bad("teacher", "a RunConfig with role='teacher'")
                for name in ("dataset", "source", "image_size", "data_sha256"):
                    if getattr(self.teacher, name) != getattr(self, name):
                        raise ValueError(
                            f"teacher.{name}={getattr(self.teacher, name)!r} differs from the "
                            f"student's {name}={getattr(self, name)!r}: both must see the same "
                            "dataset"
                        )
        if self.n_val is not None and self.role == "teacher":
            bad("n_val", "None for a teacher (validation runs are students')")

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
    out = {
        k: v for k, v in d.items() if not (k in _HASH_OMITS_DEFAULT and v == _HASH_OMITS_DEFAULT[k])
    }
    if isinstance(out.get("teacher"), dict):
        out["teacher"] = _identity(out["teacher"])
    return out


# field -> (accepted types, None allowed, description); bool is not an int here
_TYPES: dict[str, tuple[type | tuple[type, ...], bool, str]] = {
    "role": (str, False, "a string"),
    "dataset": (str, False, "a string"),
    "source": (str, False, "a string"),
    "arch": (str, False, "a string"),
    "stem": (str, False, "a string"),
    "metric": (str, True, "None or a metric name"),
    "n_train": (int, True, "None (all images) or a positive integer"),
    "n_test": (int, True, "None (all images) or a positive integer"),
    "n_val": (int, True, "None (the test set) or a positive number of validation images"),
    "width": (int, True, "None (the architecture's default) or a positive integer"),
    "epochs": (int, False, "a positive integer"),
    "batch_size": (int, False, "a positive integer"),
    "seed": (int, False, "an integer >= 0"),
    "pretrained": (bool, False, "true or false"),
    "hflip": (bool, True, "None (the dataset's default), true or false"),
    "metric_options": (dict, False, "a dict of metric options"),
    "image_size": (int, False, "a positive integer"),
    "data_sha256": (str, True, "None or the content sha256 of an image folder"),
    "precision": (str, False, f"one of {PRECISIONS}"),
    **{
        k: ((int, float), False, "a finite number >= 0")
        for k in ("lam", "lr", "momentum", "weight_decay", "lr_min")
    },
}


# field -> (its values, a note for the error)
_CHOICES: dict[str, tuple[tuple[str, ...], str]] = {
    "role": (ROLES, ""),
    "source": (SOURCES, ""),
    "precision": (PRECISIONS, " ('auto': bf16 autocast on CUDA, fp32 elsewhere)"),
}


def _check_types(cfg: RunConfig) -> None:
    """Every field of ``cfg`` has its type (``epochs=True``, ``seed=1.5`` or
    ``hflip="no"`` raise ValueError naming the field and the value), and ``role``,
    ``source`` and ``precision`` one of their values."""
    for name, (types, nullable, expected) in _TYPES.items():
        v = getattr(cfg, name)
        if v is None and nullable:
            continue
        wrong = not isinstance(v, types) or (isinstance(v, bool) and types is not bool)
        if not wrong and name in ("width", "seed"):
            wrong = v < (1 if name == "width" else 0)
        if wrong:
            raise ValueError(f"RunConfig.{name}={v!r}: expected {expected}")
    if cfg.teacher is not None and not isinstance(cfg.teacher, RunConfig):
        raise ValueError(f"RunConfig.teacher={cfg.teacher!r}: expected None or a RunConfig")
    for name, (choices, note) in _CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise ValueError(
                f"RunConfig.{name}={getattr(cfg, name)!r}: expected one of {choices}{note}"
            )


def run_dir(cfg: RunConfig, root: Path | str | None = None) -> Path:
    root = Path(root) if root is not None else data_root()
    return root / "runs" / f"{cfg.name}-{cfg.hash}"


def results_dirs(root: Path | str | None = None) -> list[Path]:
    """The folders of committed results that :func:`run` reads before training: the
    folders named in ``$KD2M_RESULTS`` (separated by ``os.pathsep``; set but empty: none),
    else every folder under ``<root>/results``. Each holds records ``<name>-<hash>.json``
    (as the run store writes them) and, beside some, their files ``<name>-<hash>.<file>``
    (e.g. a teacher's ``model.pt``, a student's ``monitor.pt``)."""
    env = os.environ.get("KD2M_RESULTS")
    if env is not None:
        return [Path(p) for p in env.split(os.pathsep) if p]
    base = (Path(root) if root is not None else data_root()) / "results"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def _committed(cfg: RunConfig, root) -> Path | None:
    """The committed record of ``cfg`` (:func:`results_dirs`), or None."""
    for folder in results_dirs(root):
        path = folder / f"{cfg.name}-{cfg.hash}.json"
        if path.is_file():
            return path
    return None


def _committed_file(cfg: RunConfig, root, name: str) -> bool:
    """Whether ``name`` (e.g. ``model.pt``) of ``cfg`` is there to load: in the run store
    when the run is there, else committed beside its record."""
    if (run_dir(cfg, root) / "record.json").exists():
        return (run_dir(cfg, root) / name).exists()
    path = _committed(cfg, root)
    return path is not None and path.with_name(f"{path.stem}.{name}").exists()


def _committed_record(cfg: RunConfig, root, data, teacher_rec: dict | None) -> dict | None:
    """The committed record of ``cfg`` when it can stand for a run of it: the current
    format, finished, made from ``cfg`` itself (its config hashes to ``cfg.hash``), from the
    data given now (else :class:`DataMismatchError`), distilled from the teacher's weights
    of ``teacher_rec``, and with every file committed beside it matching its sha256 (a
    record may come without its files: the tables need only the record)."""
    path = _committed(cfg, root)
    if path is None:
        return None
    rec = load_record(path)
    if rec.get("format") != RECORD_FORMAT or rec.get("status") != "finished":
        return None
    _check_same_data(rec, data, path)
    if RunConfig.from_dict(rec["config"]).hash != cfg.hash:
        raise ValueError(f"{path}: its config hashes to another run than {cfg.hash}")
    stem = path.with_suffix("")
    for name, sha in (rec.get("files") or {}).items():
        f = stem.with_name(f"{stem.name}.{name}")
        if f.exists() and file_sha256(f) != sha:
            raise FileError(f, f"{f} differs from the sha256 in {path}: restore it from git")
    if teacher_rec is not None and (rec.get("teacher") or {}).get("model_sha256") != teacher_rec[
        "files"
    ].get("model.pt"):
        return None
    return rec


def load_record(path: Path | str) -> dict:
    """Read a record (a ``record.json`` or a run directory); checks its format version.
    An unreadable or truncated file raises :class:`kd2m._io.FileError` naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / "record.json"
    way_out = (
        f"delete {path.parent} and rerun to train the run again"
        if path.name == "record.json"
        else f"restore or delete {path}"
    )
    rec = read_json(path, way_out)
    if not isinstance(rec, dict) or rec.get("format") not in READABLE_FORMATS:
        fmt = rec.get("format") if isinstance(rec, dict) else None
        raise ValueError(
            f"{path}: record format {fmt!r}, expected one of {READABLE_FORMATS}: {way_out}"
        )
    return rec


def load_records(folder: Path | str) -> list[dict]:
    """Every JSON record in ``folder`` (e.g. ``data/results/<column>/``), sorted by name."""
    return sorted((load_record(p) for p in Path(folder).glob("*.json")), key=lambda r: r["name"])


def list_runs(root: Path | str | None = None) -> list[dict]:
    """All records under ``<root>/runs`` (and ``<root>/results``), newest first. A record that
    cannot be read is listed too, as ``{"status": "unreadable", "error": ..., "path": ...}``
    (name from its directory, no history), last."""
    root = Path(root) if root is not None else data_root()
    recs, bad = [], []
    for pattern in ("runs/*/record.json", "results/**/*.json"):
        for p in root.glob(pattern):
            try:
                recs.append(load_record(p) | {"path": str(p)})
            except (ValueError, FileError) as exc:
                name = p.parent.name if p.name == "record.json" else p.stem
                bad.append(
                    {
                        "name": name,
                        "hash": "",
                        "status": "unreadable",
                        "history": [],
                        "final": {},
                        "wall_seconds": 0.0,
                        "error": str(exc),
                        "path": str(p),
                    }
                )
    return sorted(recs, key=lambda r: r.get("started", ""), reverse=True) + bad


def git_state(src: Path | str | None = None, timeout: float = 10.0) -> dict:
    """The git commit of the kd2m source tree and whether it had uncommitted changes:
    ``{"commit": sha or None, "dirty": bool or None, "error": why it could not tell}``.

    ``src`` defaults to the package's directory; a package that git does not track there
    (an installed copy, no git, not a checkout) gives ``commit=None`` and the reason."""
    src = Path(src) if src is not None else Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(src), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout

    try:
        # the package itself must be tracked (not an installed copy inside some other repo)
        git("ls-files", "--error-unmatch", "__init__.py" if (src / "__init__.py").exists() else ".")
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError) as exc:
        why = getattr(exc, "stderr", None) or str(exc)
        return {
            "commit": None,
            "dirty": None,
            "error": f"not a git checkout of kd2m ({str(why).strip()[:200]})",
        }
    return {"commit": commit, "dirty": bool(status.strip()), "error": None}


def _environment(device: torch.device) -> dict:
    import numpy
    import scipy
    import torchvision

    try:
        import ot

        pot = ot.__version__
    except ImportError:  # pragma: no cover
        pot = None
    hw = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "pid": os.getpid(),
    }
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "pot": pot,
    }
    from kd2m import __version__

    versions["kd2m"] = __version__
    return {"hardware": hw, "versions": versions, "git": git_state()}


_DATA_MEMO: dict = {}  # the last dataset read, so that a run and its teacher read it once


def _load_data(cfg: RunConfig, root: Path, folder, download: bool):
    """The data of ``cfg`` (subset included), through kd2m.data's verified cache. The last
    full dataset read from torchvision's files or an archive is kept in memory, keyed by
    where it came from (and the archive's size and modification time); an image folder is
    listed again on every call (kd2m.data keys its cache on the listing). An image folder
    of one's own must hold the images the config was made from (``data_sha256``)."""
    where = None if folder is None else Path(folder)
    stamp = None
    if where is not None and where.is_file():
        st = where.stat()
        stamp = (str(where.resolve()), st.st_size, st.st_mtime_ns)
    key = (str(Path(root).resolve()), cfg.dataset, cfg.source, str(where), stamp, cfg.image_size)
    data = _DATA_MEMO.get(key) if where is None or stamp is not None else None
    if data is None:
        data = load_data(
            cfg.dataset,
            source=cfg.source,
            root=root,
            folder=folder,
            download=download,
            image_size=cfg.image_size,
        )
        _DATA_MEMO.clear()
        _DATA_MEMO[key] = data
    found = data.provenance.get("content_sha256")
    if cfg.data_sha256 is not None and found != cfg.data_sha256:
        raise ValueError(
            f"folder={str(folder)!r} holds other images than run {cfg.name} was configured "
            f"for (content sha256 {found} instead of data_sha256={cfg.data_sha256}); build the "
            "config again from this folder (teacher_config / student_config with folder=)"
        )
    if cfg.n_val is not None:
        return data.validation(cfg.n_train, cfg.n_val, seed=0)
    if cfg.n_train is not None or cfg.n_test is not None:
        data = data.subset(cfg.n_train, cfg.n_test, seed=0)
    return data


def _build(cfg: RunConfig, num_classes: int):
    torch.manual_seed(cfg.seed)  # every run of a seed starts from the same initialisation
    return build_model(
        cfg.arch, num_classes, stem=cfg.stem, pretrained=cfg.pretrained, width=cfg.width
    )


def _verified_file(cfg: RunConfig, root, name: str) -> Path:
    """``<run dir>/<name>`` of a finished run, after checking it against the sha256 that the
    run's record stores; raises naming the file and the way out otherwise."""
    d = run_dir(cfg, root)
    rec_path, path = d / "record.json", d / name
    committed = _committed(cfg, root)
    if not rec_path.exists() and committed is not None:
        rec_path, path = committed, committed.with_name(f"{committed.stem}.{name}")
        if not path.exists():
            raise FileNotFoundError(
                f"run {cfg.name} is committed in {committed.parent} without its {name}: "
                f"train it into the run store with kd2m.runs.run(config) "
                f"(KD2M_RESULTS= to ignore the committed records)"
            )
    if not rec_path.exists():
        raise FileNotFoundError(
            f"{rec_path} does not exist: train the run first with "
            f"kd2m.runs.run(config) (run {cfg.name})"
        )
    rec = load_record(rec_path)
    if rec.get("status") != "finished":
        raise FileNotFoundError(
            f"run {d} is not finished ({rec.get('status')}): kd2m.runs.run(config) resumes it"
        )
    files = rec.get("files") or {}
    if rec.get("format") == RECORD_FORMAT and name not in files:
        raise FileNotFoundError(
            f"run {cfg.name} stores no {name} (only students distilled "
            "from a teacher keep a monitor)"
        )
    if name not in files:
        raise FileError(
            path,
            f"{rec_path} has format {rec.get('format')}, which stores no "
            f"sha256 of {name}: kd2m.runs.run(config) trains the run again",
        )
    if not path.is_file() or file_sha256(path) != files[name]:
        raise FileError(
            path,
            f"{path} is missing or differs from the sha256 stored in "
            f"{rec_path}: kd2m.runs.run(config) notices it and trains the run "
            "again",
        )
    return path


def load_model(cfg: RunConfig, root: Path | str | None = None, device="cpu"):
    """The trained network of a finished run (and its projector, or None), in eval mode.

    Leaves the global random state as it found it. ``model.pt`` is checked against the
    sha256 in the run's record first."""
    path = _verified_file(cfg, root, "model.pt")
    blob = torch_load(
        path,
        f"delete {path.parent} and rerun to train the run again",
        map_location=device,
        weights_only=True,
    )
    projector = None
    with torch.random.fork_rng(devices=[]):  # weights are loaded: the init's draws are undone
        model = _build(cfg, blob["num_classes"]).to(device)
        if blob.get("projector") is not None:
            projector = make_projector(*blob["projector_dims"]).to(device)
    model.load_state_dict(blob["model"])
    model.eval()
    if projector is not None:
        projector.load_state_dict(blob["projector"])
        projector.eval()
    return model, projector


def load_monitor(cfg: RunConfig, root: Path | str | None = None) -> dict:
    """Per-epoch features of the monitored test images (class-balanced, see
    ``_monitor_indices``): ``{"indices", "labels", "epochs": [student features per epoch
    (float16; projected into the teacher's space when sizes differ)], "teacher": teacher
    features (float32), "head": [(W, b) of the student head at the end of each epoch]}``, on
    the CPU. ``monitor.pt`` is checked against the sha256 in the run's record first."""
    path = _verified_file(cfg, root, "monitor.pt")
    return torch_load(
        path,
        f"delete {path.parent} and rerun to train the run again",
        map_location="cpu",
        weights_only=True,
    )


class DataMismatchError(ValueError):
    """A stored run was made from other data (content sha256) than the data given now."""


def _check_same_data(rec: dict, data, rec_path: Path) -> None:
    stored = (rec.get("data") or {}).get("content_sha256")
    now = data.provenance.get("content_sha256")
    if stored is not None and stored != now:
        given = data.provenance.get("archive") or data.provenance.get("path")
        raise DataMismatchError(
            f"{rec_path} was made from other data (content sha256 {stored[:12]}, read from "
            f"{rec['data'].get('archive') or rec['data'].get('path')}) than the data given now "
            f"({now[:12]}, from {given}): pass the data it was made from, or delete "
            f"{rec_path.parent} to train the run on this data"
        )


def _files_problem(rec: dict, d: Path, teacher_rec: dict | None) -> str | None:
    """None when the finished record's files are there with the sha256 it stores (and its
    teacher's weights are those it distilled); else what is wrong."""
    if rec.get("format") != RECORD_FORMAT:
        return (
            f"its record has format {rec.get('format')} (no checksums, monitors from "
            "before per-epoch heads)"
        )
    files = rec.get("files") or {}
    if "model.pt" not in files:
        return "its record stores no sha256 of model.pt"
    for name, sha in files.items():
        if not (d / name).is_file():
            return f"{d / name} is missing"
        if file_sha256(d / name) != sha:
            return f"{d / name} differs from the sha256 stored in its record"
    if (
        teacher_rec is not None
        and (rec.get("teacher") or {}).get("model_sha256") != teacher_rec["files"]["model.pt"]
    ):
        return f"its teacher {teacher_rec['name']} was trained again since"
    return None


def _reusable_record(d: Path, data, teacher_rec: dict | None, repair: bool) -> dict | None:
    """The finished, verified record in ``d``, or None. A record made from other data raises
    :class:`DataMismatchError`. With ``repair``, a finished record that fails its checks is
    removed (with its files) after a warning, so that the run is trained again."""
    rec_path = d / "record.json"
    if not rec_path.exists():
        return None
    rec = load_record(rec_path)
    _check_same_data(rec, data, rec_path)
    if rec.get("status") != "finished":
        return None
    problem = _files_problem(rec, d, teacher_rec)
    if problem is None:
        return rec
    if repair:
        warnings.warn(
            f"run {d} is recorded as finished but {problem}: training it again", stacklevel=3
        )
        for name in ("record.json", "model.pt", "monitor.pt", "checkpoint.pt"):
            (d / name).unlink(missing_ok=True)
    return None


def _resume_state(d: Path, dev: torch.device) -> dict | None:
    """The checkpoint of an interrupted run, if its sha256 is the one its record stores;
    otherwise (corrupt, or from an older kd2m) it is deleted with a warning and the run
    starts again from epoch 1."""
    ckpt, rec_path = d / "checkpoint.pt", d / "record.json"
    if not ckpt.exists():
        return None
    rec = load_record(rec_path) if rec_path.exists() else {}
    sha = (rec.get("files") or {}).get("checkpoint.pt")
    if rec.get("format") != RECORD_FORMAT or sha is None or file_sha256(ckpt) != sha:
        warnings.warn(
            f"{ckpt} does not match the sha256 stored in {rec_path} (corrupt, or "
            "written by an older kd2m): starting the run again from epoch 1",
            stacklevel=3,
        )
        ckpt.unlink()
        return None
    return torch_load(
        ckpt,
        f"delete {ckpt} and rerun (the run starts again from epoch 1)",
        map_location=dev,
        weights_only=False,
    )


def run(
    cfg: RunConfig,
    *,
    root: Path | str | None = None,
    folder: str | Path | None = None,
    download: bool = False,
    device: str | torch.device = "auto",
    progress: bool | None = None,
    stop_after: int | None = None,
    need_model: bool = False,
) -> dict:
    """Return the record of ``cfg``, training it (and its teacher) first if needed.

    A committed record (:func:`results_dirs`) of ``cfg`` is returned first, without its
    weights unless they were committed beside it. A finished run is loaded, not
    retrained, once its files match the sha256 its record stores and its data (content
    sha256) is the data given now; a finished record whose weights are missing or differ
    is trained again (with a warning), one made from other data raises
    :class:`DataMismatchError`. An interrupted run resumes from its checkpoint (when the
    checkpoint matches its record). Processes asking for the same run train it once: the
    others wait for the run directory's lock, then load the record. ``stop_after=k``
    stops after epoch ``k`` as a kill would (for tests), leaving a ``"running"`` record
    and a checkpoint. ``need_model``: a committed record without its ``model.pt`` does
    not do (the run is trained into the store). ``progress=None`` reads
    ``$KD2M_PROGRESS`` (``0`` turns bars off), default on.

    The steps: the teacher (``run`` of it), the data and the reuse check
    (:func:`_reusable_record`); then, under the run directory's lock, :func:`_prepare`
    (loaders, networks, distiller, monitor),
    :func:`_resume` (the checkpoint, if any), :func:`_train` (Algorithm 1, with
    :func:`_monitor_epoch` and :func:`_save_epoch` after every epoch) and :func:`_finish`
    (weights, monitor and the finished record).
    """
    if not isinstance(cfg, RunConfig):
        raise ValueError(f"cfg={cfg!r}: expected a kd2m.runs.RunConfig")
    root = Path(root) if root is not None else data_root()
    if progress is None:
        progress = os.environ.get("KD2M_PROGRESS", "1") not in ("0", "false", "no")
    dev = resolve_device(device)  # a device that cannot train fails before any work
    teacher_rec = None
    if cfg.teacher is not None:
        teacher_rec = run(
            cfg.teacher, root=root, folder=folder, download=download, device=dev, progress=progress
        )
    data = _load_data(cfg, root, folder, download)
    rec = _committed_record(cfg, root, data, teacher_rec)
    if rec is not None and (not need_model or _committed_file(cfg, root, "model.pt")):
        return rec
    d = run_dir(cfg, root)
    rec = _reusable_record(d, data, teacher_rec, repair=False)
    if rec is not None:
        return rec
    if cfg.teacher is not None and not _committed_file(cfg.teacher, root, "model.pt"):
        # a student to train needs its teacher's weights: a teacher committed without
        # them is trained into the store (students committed for it are then not reused)
        teacher_rec = run(
            cfg.teacher,
            root=root,
            folder=folder,
            download=download,
            device=dev,
            progress=progress,
            need_model=True,
        )
    probe_writable(d)  # a read-only or full store fails now, not after the first epoch
    with path_lock(d / "run.lock", f"run {cfg.name}"):
        rec = _reusable_record(d, data, teacher_rec, repair=True)  # finished while we waited?
        if rec is not None:
            return rec
        job = _prepare(cfg, root, data=data, teacher_rec=teacher_rec, folder=folder, dev=dev)
        state = _resume(job)
        try:
            history = _train(job, state, progress=progress, stop_after=stop_after)
        except _Stopped:
            return load_record(job.rec_path)
        return _finish(job, history)


@dataclass
class _Job:
    """Everything a run's steps share: the config, where it lives, what it trains on and
    with, the monitor, and the wall-clock bookkeeping."""

    cfg: RunConfig
    dir: Path
    folder: str | Path | None
    dev: torch.device
    data: ImageData
    hflip: bool
    train_loader: Loader
    test_loader: Loader
    monitor_loader: Loader
    model: KD2MNet
    teacher_rec: dict | None = None
    distiller: Distiller | None = None
    projector_dims: tuple[int, int] | None = None
    teacher_feats: torch.Tensor | None = None
    monitor: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    started: str = ""
    wall_before: float = 0.0
    t_start: float = 0.0

    @property
    def ckpt_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    @property
    def rec_path(self) -> Path:
        return self.dir / "record.json"

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t_start


def _prepare(
    cfg: RunConfig,
    root: Path,
    *,
    data: ImageData,
    teacher_rec: dict | None,
    folder,
    dev: torch.device,
) -> _Job:
    """Step 1 (the teacher trained and the data read by :func:`run`): the loaders, the
    student, the distiller and the monitor's fixed test images."""
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed 32x32 shapes: pick the fastest kernels
    hflip = data.info.hflip if cfg.hflip is None else cfg.hflip
    loader_kw: dict = {"device": dev, "channels_last": dev.type == "cuda"}
    train_loader = Loader.from_data(
        data,
        "train",
        batch_size=cfg.batch_size,
        train=True,
        hflip=hflip,
        seed=cfg.seed,
        **loader_kw,
    )
    test_loader = Loader.from_data(
        data, "test", batch_size=max(cfg.batch_size, 256), train=False, **loader_kw
    )
    model = _build(cfg, len(data.classes)).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    # The monitor: a fixed, class-balanced set of test images (the first of each class in
    # test order; validation images for an n_val run), evaluated after every epoch (the
    # learning curves) and whose features are kept for Fig. 3 and the theory chapter.
    mon_idx = _monitor_indices(data.y_test, MONITOR_SIZE)
    monitor_loader = Loader(
        data.x_test[mon_idx],
        data.y_test[mon_idx],
        mean=data.info.mean,
        std=data.info.std,
        batch_size=500,
        train=False,
        **loader_kw,
    )
    job = _Job(
        cfg=cfg,
        dir=run_dir(cfg, root),
        folder=folder,
        dev=dev,
        data=data,
        hflip=hflip,
        train_loader=train_loader,
        test_loader=test_loader,
        monitor_loader=monitor_loader,
        model=model,
        teacher_rec=teacher_rec,
    )
    if cfg.teacher is not None:
        _attach_teacher(job, root)
    job.monitor = {
        "epochs": [],
        "head": [],
        "teacher": job.teacher_feats,
        "indices": mon_idx,
        "labels": data.y_test[mon_idx],
    }
    return job


def _attach_teacher(job: _Job, root: Path) -> None:
    """The teacher (frozen by :class:`kd2m.train.Distiller`), the projector (when the feature
    sizes differ), the metric and the teacher's features of the monitored images."""
    cfg, dev, model = job.cfg, job.dev, job.model
    assert cfg.teacher is not None
    teacher, _ = load_model(cfg.teacher, root, device=dev)
    if dev.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
    projector = None
    if model.feature_dim != teacher.feature_dim:
        torch.manual_seed(cfg.seed + 1)
        projector = make_projector(model.feature_dim, teacher.feature_dim).to(dev)
        job.projector_dims = (model.feature_dim, teacher.feature_dim)
    metric = get_metric(cfg.metric, **cfg.metric_options) if cfg.metric else None
    job.distiller = Distiller(
        teacher=teacher,
        metric=metric,
        lam=cfg.lam,
        projector=projector,
        teacher_cache=_teacher_cache(job) if metric is not None else None,
    )
    job.teacher_feats = evaluate(
        teacher,
        job.monitor_loader,
        device=dev,
        keep_features=len(job.monitor_loader.y),
        precision=cfg.precision,
    )["features"]


# The teacher's outputs on the batches of the last (teacher, data, seed, batching) a student
# trained with in this process: the students of one seed see exactly the same batches.
_TEACHER_MEMO: dict[tuple, dict] = {}


def _teacher_cache(job: _Job) -> dict | None:
    """The shared teacher-output cache of ``job``'s batches (:class:`kd2m.train.Distiller`),
    on the CPU only: there the teacher's forward pass is a third of a student's step and
    the runs of a table train one after another in one process; on a GPU it is cheap and
    the outputs of a whole run would take memory."""
    if job.dev.type != "cpu":
        return None
    cfg = job.cfg
    assert job.teacher_rec is not None
    key = (
        job.teacher_rec["files"]["model.pt"],
        job.data.provenance.get("content_sha256"),
        cfg.seed,
        cfg.batch_size,
        job.hflip,
        cfg.epochs,
    )
    if key not in _TEACHER_MEMO:
        _TEACHER_MEMO.clear()
        _TEACHER_MEMO[key] = {}
    return _TEACHER_MEMO[key]


def _resume(job: _Job) -> dict | None:
    """Step 2: the resumable state of an interrupted run (None for a fresh one, or when the
    checkpoint does not match its record); restores the monitor, the start time and the
    wall time spent before the interruption."""
    job.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    state = _resume_state(job.dir, job.dev)
    if state is not None:
        job.monitor = state.pop("monitor")
        job.started = state.pop("started")
        job.wall_before = state.pop("wall_seconds")
    job.env = _environment(job.dev) | {"precision": resolve_precision(job.cfg.precision, job.dev)}
    job.t_start = time.perf_counter()
    return state


def _train(job: _Job, state: dict | None, *, progress: bool, stop_after: int | None) -> list[dict]:
    """Step 3: Algorithm 1 (:func:`kd2m.train.fit`) from ``state``; after every epoch the
    monitor (:func:`_monitor_epoch`) and the checkpoint and running record
    (:func:`_save_epoch`). Raises :class:`_Stopped` after epoch ``stop_after``."""
    cfg = job.cfg

    def on_epoch_end(row: dict, st: dict) -> None:
        _monitor_epoch(job, row)
        _save_epoch(job, st)
        if stop_after is not None and row["epoch"] >= stop_after and row["epoch"] < cfg.epochs:
            raise _Stopped

    return fit(
        job.model,
        train_loader=job.train_loader,
        epochs=cfg.epochs,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        lr_min=cfg.lr_min,
        device=job.dev,
        distiller=job.distiller,
        state=state,
        on_epoch_end=on_epoch_end,
        progress=progress,
        precision=cfg.precision,
    )


def _monitor_epoch(job: _Job, row: dict) -> None:
    """The student's accuracy and cross-entropy on the monitored images after this epoch
    (``monitor_acc``, ``monitor_ce``: the learning curves; the test set itself is
    evaluated once, after the last epoch). With a teacher also the student's features of
    those images (projected into the teacher's space when the sizes differ), their squared
    W2 and mean gap to the teacher's (added to ``row``), and the student's head."""
    teacher_feats = job.teacher_feats
    keep = 0 if teacher_feats is None else len(teacher_feats)
    test = evaluate(
        job.model,
        job.monitor_loader,
        device=job.dev,
        keep_features=keep,
        precision=job.cfg.precision,
    )
    row["monitor_acc"], row["monitor_ce"] = test["test_acc"], test["test_ce"]
    if teacher_feats is None:
        return
    zs = test["features"]
    projector = job.distiller.projector if job.distiller is not None else None
    if projector is not None:
        with torch.no_grad():
            zs = projector(zs.to(job.dev)).float().cpu()
    row["test_feature_w2"] = float(wasserstein(zs.double(), teacher_feats.double()))
    row["test_feature_gap"] = float((zs - teacher_feats).norm(dim=1).mean())
    job.monitor["epochs"].append(zs.half())
    head = job.model.head  # copies: .float().cpu() of a CPU float32 tensor is the tensor itself
    job.monitor["head"].append(
        (
            head.weight.detach().to("cpu", torch.float32, copy=True),
            head.bias.detach().to("cpu", torch.float32, copy=True),
        )
    )


def _save_epoch(job: _Job, st: dict) -> None:
    """The checkpoint (resumable state, monitor, start and wall time) and the running record
    with the checkpoint's sha256."""
    wall = job.wall()
    atomic_torch_save(
        st | {"monitor": job.monitor, "started": job.started, "wall_seconds": wall}, job.ckpt_path
    )
    files = {"checkpoint.pt": file_sha256(job.ckpt_path)}
    atomic_json(_record(job, st["history"], "running", wall, files), job.rec_path)


def _record(job: _Job, history: list[dict], status: str, wall: float, files: dict) -> dict:
    """The JSON record of ``job`` with ``history`` so far and the sha256 of its ``files``."""
    cfg, data, teacher_rec = job.cfg, job.data, job.teacher_rec
    final = {k: history[-1][k] for k in ("train_acc", "train_ce")} if history else {}
    if job.test:
        final |= {
            "test_acc": job.test["test_acc"],
            "test_ce": job.test["test_ce"],
            "test_n": len(job.test["correct"]),
            "test_correct": encode_correct(job.test["correct"]),
            "evaluated_on": "validation" if cfg.n_val is not None else "test",
        }
    return {
        "format": RECORD_FORMAT,
        "name": cfg.name,
        "hash": cfg.hash,
        "status": status,
        "config": cfg.to_dict(),
        "history": history,
        "final": final,
        "teacher": None
        if teacher_rec is None
        else {
            "name": teacher_rec["name"],
            "hash": teacher_rec["hash"],
            "test_acc": teacher_rec["final"]["test_acc"],
            "model_sha256": teacher_rec["files"]["model.pt"],
        },
        "data": data.provenance
        | {
            "folder": None if job.folder is None else str(job.folder),
            "n_train": int(data.y_train.shape[0]),
            "n_test": int(data.y_test.shape[0]),
            "hflip": job.hflip,
        },
        **job.env,
        "started": job.started,
        "wall_seconds": wall,
        "files": files,
    }


def _finish(job: _Job, history: list[dict]) -> dict:
    """Step 4: the evaluation on the test set (or the validation images) with per-image
    correctness, the final weights (and projector), the monitor, the finished record with
    their sha256; the checkpoint is removed last."""
    # the test set (or the validation images), once, with each image's correctness
    job.test = evaluate(
        job.model, job.test_loader, device=job.dev, per_image=True, precision=job.cfg.precision
    )
    wall = job.wall()
    proj = job.distiller.projector if job.distiller is not None else None
    atomic_torch_save(
        {
            "model": job.model.state_dict(),
            "num_classes": len(job.data.classes),
            "projector": proj.state_dict() if proj is not None else None,
            "projector_dims": job.projector_dims,
        },
        job.dir / "model.pt",
    )
    files = {"model.pt": file_sha256(job.dir / "model.pt")}
    if job.teacher_feats is not None:
        atomic_torch_save(job.monitor, job.dir / "monitor.pt")
        files["monitor.pt"] = file_sha256(job.dir / "monitor.pt")
    rec = _record(job, history, "finished", wall, files)
    atomic_json(rec, job.rec_path)
    job.ckpt_path.unlink(missing_ok=True)
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
