"""Profiles: the two scales at which the book runs, as plain values a caller overrides.

* ``paper``: the author's settings (EQUATIONS.md, "The experiments"): torchvision ResNet34
  teacher -> ResNet18 student with the ImageNet stem on 32x32 images, batch 128, SGD lr 1e-2,
  momentum 0.9, no weight decay, 15 epochs, cosine annealing to 1e-4, lambda 1e-4, seed 42,
  full datasets. (The author also started from ImageNet weights; they cannot be fetched
  offline, so ``pretrained`` is off by default: set it where the weights are available.)
* ``cpu``: sized by measurement so that the whole book (teacher, baseline, the six metrics
  and a lambda sweep) executes in about ten minutes on a 2-core CPU, on real CIFAR-10:
  small CIFAR ResNets on a class-balanced subset.
"""

from __future__ import annotations

from kd2m.runs import RunConfig

__all__ = ["PROFILES", "teacher_config", "student_config", "teacher_overrides"]

PROFILES: dict[str, dict] = {
    "paper": {
        "teacher": {"arch": "resnet34", "stem": "imagenet", "width": None},
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
        "seed": 42,
        "pretrained": False,
    },
    "cpu": {
        "teacher": {"arch": "resnet20", "stem": "cifar", "width": 16, "epochs": 10},
        "student": {"arch": "resnet8", "stem": "cifar", "width": 16},
        "n_train": 5000,
        "n_test": 2000,
        "epochs": 5,
        "batch_size": 128,
        "lr": 5e-2,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lr_min": 1e-4,
        "lam": 1e-2,
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
# optimisation, e.g. {"epochs": 1} for a dry run): the shared values and the flip; the
# architecture, metric, lambda and seed stay the student's own.
TEACHER_FOLLOWS = (*_SHARED, "hflip")


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


def teacher_config(
    profile: str, dataset: str, *, source: str = "torchvision", **overrides
) -> RunConfig:
    """The teacher of ``profile`` on ``dataset`` (``overrides`` replace RunConfig fields)."""
    p = _profile(profile)
    _check_overrides(overrides)
    kw = {k: p[k] for k in _SHARED} | p["teacher"] | {"seed": p["seed"]}
    kw |= {"role": "teacher", "dataset": dataset, "source": source} | overrides
    return RunConfig(**kw)


def student_config(
    profile: str,
    dataset: str,
    metric: str | None = None,
    *,
    lam: float | None = None,
    seed: int | None = None,
    source: str = "torchvision",
    teacher: RunConfig | None = None,
    teacher_changes: dict | None = None,
    **overrides,
) -> RunConfig:
    """A student of ``profile``: the baseline when ``metric`` is None, KD2M otherwise.

    ``lam`` defaults to the profile's lambda when a metric is given and to 0 without one.
    The teacher defaults to :func:`teacher_config` of the same profile and data, with the
    overrides it follows (:data:`TEACHER_FOLLOWS`) and then ``teacher_changes``.
    """
    p = _profile(profile)
    _check_overrides(overrides)
    if lam is None:
        lam = p["lam"] if metric is not None else 0.0
    if teacher is None:
        teacher = teacher_config(
            profile,
            dataset,
            source=source,
            **(teacher_overrides(overrides) | (teacher_changes or {})),
        )
    kw = {k: p[k] for k in _SHARED} | p["student"]
    kw |= {
        "role": "student",
        "dataset": dataset,
        "source": source,
        "metric": metric,
        "lam": float(lam),
        "seed": p["seed"] if seed is None else seed,
        "teacher": teacher,
    }
    kw |= overrides
    return RunConfig(**kw)
