"""Profiles: the two scales at which the book runs, as plain values a caller overrides.

* ``paper``: the author's student protocol (EQUATIONS.md, "The experiments"): torchvision
  ResNet34 teacher -> ResNet18 student with the ImageNet stem on 32x32 images, batch 128,
  SGD lr 1e-2, momentum 0.9, no weight decay, 15 epochs, cosine annealing to 1e-4, lambda
  1e-4, seed 42, full datasets. (The author also started from ImageNet weights; they cannot
  be fetched offline, so ``pretrained`` is off by default.) Trained from scratch, the
  teacher gets a schedule fit for that: 30 epochs at lr 0.1 with weight decay 5e-4.
* ``cpu``: sized by measurement for a 2-core CPU, on real CIFAR-10: a ResNet-20 teacher
  trained once on the 50,000 training images, ResNet-8 students on a class-balanced subset
  of 5,000, evaluated on the 10,000 test images.

Each profile also names the lambda of the Hinton control (``lams``) and the margin by
which its teacher must beat the student baseline (``teacher_margin``, in points of test
accuracy; :func:`check_teacher`).
"""

from __future__ import annotations

from pathlib import Path

from kd2m.data import DATASETS, DEFAULT_IMAGE_SIZE, folder_name, load_data
from kd2m.runs import RunConfig, data_root

__all__ = [
    "PROFILES",
    "WeakTeacherError",
    "check_teacher",
    "teacher_config",
    "student_config",
    "teacher_overrides",
    "check_parameters",
    "check_folders",
]

PROFILES: dict[str, dict] = {
    "paper": {
        # The teacher is trained from scratch: 15 epochs at lr 1e-2 without weight decay (the
        # author's schedule, meant for fine-tuning ImageNet weights) left it below the
        # student baseline (74.16 % vs 76.38 %, data/results/paper-cifar10-h200).
        "teacher": {
            "arch": "resnet34",
            "stem": "imagenet",
            "width": None,
            "epochs": 30,
            "lr": 0.1,
            "weight_decay": 5e-4,
        },
        "student": {"arch": "resnet18", "stem": "imagenet", "width": None},
        "n_train": None,
        "n_test": None,
        "epochs": 15,
        "batch_size": 128,
        "lr": 1e-2,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "lr_min": 1e-4,
        "lam": 1e-4,
        "lams": {"hinton": 1.0},
        "teacher_margin": 5.0,
        "seed": 42,
        "pretrained": False,
    },
    "cpu": {
        # A teacher trained once on all 50,000 training images (committed with its record,
        # data/results/cpu-teacher); the students see 5,000 of them.
        "teacher": {
            "arch": "resnet20",
            "stem": "cifar",
            "width": 16,
            "n_train": None,
            "epochs": 30,
            "lr": 0.1,
        },
        "student": {"arch": "resnet8", "stem": "cifar", "width": 16},
        "n_train": 5000,
        "n_test": None,
        "epochs": 5,
        "batch_size": 128,
        "lr": 5e-2,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lr_min": 1e-4,
        "lam": 1e-2,
        "lams": {"hinton": 1.0},
        "teacher_margin": 10.0,
        "seed": 42,
        "pretrained": False,
    },
}

# The profile's values shared by its teacher and its students.
_SHARED = (
    "n_train",
    "n_test",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "lr_min",
    "pretrained",
)
# Overrides of a student that its default teacher follows too (the data it sees and the
# optimisation, e.g. {"epochs": 1} for a dry run): the shared values, the flip, and the
# input size and images of a folder of one's own; the architecture, metric, lambda and seed
# stay the student's own.
TEACHER_FOLLOWS = (*_SHARED, "hflip", "image_size", "data_sha256")


def teacher_overrides(overrides: dict | None) -> dict:
    """The part of a student's ``overrides`` that its default teacher follows."""
    return {k: v for k, v in (overrides or {}).items() if k in TEACHER_FOLLOWS}


def _profile(name: str) -> dict:
    if name not in PROFILES:
        raise ValueError(f"profile={name!r}: expected one of {sorted(PROFILES)}")
    return PROFILES[name]


def _check_overrides(overrides: dict) -> None:
    fields = set(RunConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown override(s) {unknown}; RunConfig fields are {sorted(fields)}")


def folder_fields(
    dataset: str | None, folder, image_size: int = DEFAULT_IMAGE_SIZE, root=None
) -> dict:
    """``dataset``, ``source`` and ``data_sha256`` of an image folder of one's own (read
    once through the cache: :func:`kd2m.data.load_data`). ``dataset`` None names it after
    the folder (:func:`kd2m.data.folder_name`). ``root`` defaults to
    :func:`kd2m.runs.data_root`."""
    name = dataset or folder_name(folder)
    data = load_data(
        name,
        source="folder",
        folder=folder,
        image_size=image_size,
        root=data_root() if root is None else root,
    )
    return {"dataset": name, "source": "folder", "data_sha256": data.provenance["content_sha256"]}


def _data_fields(dataset: str | None, source: str, folder, overrides: dict) -> dict:
    if folder is not None and (dataset is None or dataset not in DATASETS):
        return folder_fields(dataset, folder, overrides.get("image_size", DEFAULT_IMAGE_SIZE))
    if dataset is None:
        raise ValueError("dataset=None needs folder=PATH (an image folder of one's own)")
    return {"dataset": dataset, "source": source}


def teacher_config(
    profile: str,
    dataset: str | None = None,
    *,
    source: str = "torchvision",
    folder=None,
    **overrides,
) -> RunConfig:
    """The teacher of ``profile`` on ``dataset`` (``overrides`` replace RunConfig fields).

    With ``folder=`` and ``dataset`` None (or not a known dataset's name): the image folder
    of one's own at ``folder`` (:func:`folder_fields`; pass the same ``folder=`` to
    :func:`kd2m.runs.run`)."""
    p = _profile(profile)
    _check_overrides(overrides)
    kw = {k: p[k] for k in _SHARED} | p["teacher"] | {"seed": p["seed"]}
    kw |= {"role": "teacher"} | _data_fields(dataset, source, folder, overrides) | overrides
    return RunConfig(**kw)


def student_config(
    profile: str,
    dataset: str | None = None,
    metric: str | None = None,
    *,
    lam: float | None = None,
    seed: int | None = None,
    source: str = "torchvision",
    teacher: RunConfig | None = None,
    teacher_changes: dict | None = None,
    folder=None,
    **overrides,
) -> RunConfig:
    """A student of ``profile``: the baseline when ``metric`` is None, KD2M otherwise.

    ``lam`` defaults to the profile's lambda when a metric is given (its ``lams`` entry for
    that metric, e.g. Hinton's 1, else ``lam``) and to 0 without one.
    The teacher defaults to :func:`teacher_config` of the same profile and data, with the
    overrides it follows (:data:`TEACHER_FOLLOWS`) and then ``teacher_changes``.
    ``folder=``: as in :func:`teacher_config`.
    """
    p = _profile(profile)
    _check_overrides(overrides)
    if lam is None:
        lam = p["lams"].get(metric, p["lam"]) if metric is not None else 0.0
    data = _data_fields(dataset, source, folder, overrides)
    if teacher is None:
        extra = {k: v for k, v in data.items() if k not in ("dataset", "source")}
        teacher = teacher_config(
            profile,
            data["dataset"],
            source=data["source"],
            **(extra | teacher_overrides(overrides) | (teacher_changes or {})),
        )
    kw = {k: p[k] for k in _SHARED} | p["student"]
    kw |= data | {
        "role": "student",
        "metric": metric,
        "lam": float(lam),
        "seed": p["seed"] if seed is None else seed,
        "teacher": teacher,
    }
    kw |= overrides
    return RunConfig(**kw)


class WeakTeacherError(ValueError):
    """A student asked to distil a teacher that does not beat the student baseline by the
    profile's margin."""


def check_teacher(profile: str, teacher: dict, baseline: dict, *, strict: bool = True) -> str:
    """Whether the teacher of record ``teacher`` beats the student baseline of record
    ``baseline`` (test accuracies) by the profile's ``teacher_margin``: distilling a teacher
    that is not clearly better than the student measures nothing. Returns one line that
    says so; when it does not and ``strict``, raises :class:`WeakTeacherError` naming both
    accuracies. ``strict=False`` is for dry runs whose overrides change the teacher (a
    tiny teacher is expected to be weak)."""
    margin = float(_profile(profile)["teacher_margin"])
    t, b = 100 * teacher["final"]["test_acc"], 100 * baseline["final"]["test_acc"]
    line = (
        f"teacher {teacher['name']} {t:.2f} % vs baseline {baseline['name']} {b:.2f} %: "
        f"leads by {t - b:+.2f} points (the {profile} profile asks for >= {margin:g})"
    )
    if t - b >= margin:
        return line
    if strict:
        raise WeakTeacherError(
            f"{line}. The students refuse to distil it: train a stronger teacher (more "
            "epochs or training images, a higher learning rate), or pass overrides that "
            "mark a dry run"
        )
    return line + "; allowed: the overrides change the teacher (a dry run)"


def check_folders(folders: dict | None, download: bool | str = "auto") -> None:
    """``folders`` maps dataset -> image folder or archive. A missing path is an error
    (:class:`kd2m.data.DataNotFoundError` naming it) where nothing else can stand in for it:
    a dataset of one's own, or a known dataset with ``download`` false. A known dataset
    whose offline copy is absent comes through torchvision instead, and the chapter says so
    (:func:`kd2m.data.resolve_source`): never a silent switch."""
    from kd2m.data import DataNotFoundError

    if folders is None:
        return
    if not isinstance(folders, dict):
        raise ValueError(f"folders={folders!r}: expected a dict dataset -> path")
    never = str(download).lower() == "false"
    for name, path in folders.items():
        if path is None or Path(path).exists() or (name in DATASETS and not never):
            continue
        way_out = (
            "fix the path"
            if name not in DATASETS
            else f"fix the path, or allow torchvision's download of {name} (download: auto)"
        )
        raise DataNotFoundError(
            f"folders[{name!r}]={str(path)!r} does not exist (resolved from "
            f"{Path.cwd()}: {Path(path).resolve()}): {way_out}"
        )


def check_parameters(
    profile: str,
    *,
    device: str | None = None,
    folders: dict | None = None,
    download: bool | str = "auto",
    datasets: list[str] | None = None,
    dataset: str | None = None,
    rows: list[str] | None = None,
    metric: str | None = None,
    metrics: list[str] | None = None,
    lambdas: list[float] | None = None,
    seeds: list[int] | None = None,
    overrides: dict | None = None,
) -> None:
    """Check a chapter's parameters before it computes anything (the notebooks call it at
    the top): a known profile, a device that exists here, folders that exist, known
    datasets, Table 1 rows and metrics, lambdas >= 0, integer seeds, overrides that are
    RunConfig fields. Raises ValueError (or DataNotFoundError) naming the bad value."""
    from kd2m.metrics import METRICS, TABLE1_METRICS
    from kd2m.train import resolve_device

    _profile(profile)
    if device is not None:
        resolve_device(device)
    check_folders(folders, download)
    for name in list(datasets or []) + ([dataset] if dataset is not None else []):
        if name not in DATASETS and name not in (folders or {}):
            raise ValueError(
                f"dataset {name!r}: expected one of {sorted(DATASETS)} (or a "
                "dataset given in folders)"
            )
    unknown = [r for r in rows or [] if r not in TABLE1_METRICS]
    if unknown:
        raise ValueError(f"rows={unknown}: expected Table 1 rows among {sorted(TABLE1_METRICS)}")
    unknown = [m for m in list(metrics or []) + [metric] if m is not None and m not in METRICS]
    if unknown:
        raise ValueError(f"metric(s) {unknown}: expected among {sorted(METRICS)}")
    bad = [
        x
        for x in lambdas or []
        if isinstance(x, bool) or not isinstance(x, int | float) or not x >= 0
    ]
    if bad:
        raise ValueError(f"lambdas {bad}: expected numbers >= 0")
    bad = [x for x in seeds or [] if isinstance(x, bool) or not isinstance(x, int)]
    if bad:
        raise ValueError(f"seeds {bad}: expected integers")
    _check_overrides(dict(overrides or {}))
