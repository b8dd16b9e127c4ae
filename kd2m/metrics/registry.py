"""Metric registry: names -> callables ``fn(zs, zt, y)`` used by the trainer and the configs."""

from __future__ import annotations

import functools

from ._checks import check_choice, check_nonnegative, check_options
from .baselines import hinton_kd, mmd
from .empirical import class_conditional_wasserstein, joint_wasserstein, wasserstein
from .gaussian import (
    KL_OPTIONS,
    _check_shrinkage,
    class_conditional_gaussian,
    gaussian_kl,
    gaussian_wasserstein,
)

__all__ = ["METRICS", "TABLE1_METRICS", "Metric", "get_metric"]

METRICS: dict[str, str] = {
    "wasserstein": "(E) exact squared 2-Wasserstein between empirical feature measures, eq. (3)",
    "class_wasserstein": "(E) class-conditional squared 2-Wasserstein, mean over classes, eq. (4)",
    "joint_wasserstein": "(E) joint (feature, predicted label) squared 2-Wasserstein, eq. (5)",
    "gaussian_wasserstein": "(G) squared Bures-Wasserstein between Gaussian fits, eq. (6)",
    "gaussian_kl": "(G) KL(student || teacher) between shrunk Gaussian fits, eq. (7)",
    "class_gaussian": "(G) class-conditional Gaussian (eq. 6 by default, or eq. 7), class mean",
    "mmd": "baseline: squared MMD, biased V-statistic (NST, Huang & Wang 2017)",
    "hinton": "baseline: Hinton et al. (2015) T^2 KL(teacher || student) on logits",
}

#: Our reading of the rows of the paper's Table 1 (see EQUATIONS.md, "The six rows").
TABLE1_METRICS: dict[str, str] = {
    "E1": "wasserstein",
    "E2": "class_wasserstein",
    "E3": "joint_wasserstein",
    "G1": "gaussian_wasserstein",
    "G2": "gaussian_kl",
    "G3": "class_gaussian",
}


def _check_bool(value, name):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")


# name -> (function, uses labels y, allowed options)
_SPECS = {
    "wasserstein": (wasserstein, False, ()),
    "class_wasserstein": (class_conditional_wasserstein, True, ()),
    "joint_wasserstein": (joint_wasserstein, True, ("beta", "label_cost")),
    "gaussian_wasserstein": (gaussian_wasserstein, False, ("diagonal",)),
    "gaussian_kl": (gaussian_kl, False, ("diagonal",) + KL_OPTIONS),
    "class_gaussian": (class_conditional_gaussian, True, ("divergence", "diagonal") + KL_OPTIONS),
    "mmd": (mmd, False, ("kernel", "bandwidth")),
    "hinton": (hinton_kd, False, ("temperature",)),
}

_VALIDATORS = {
    "beta": lambda v: check_nonnegative(v, "beta", allow_none=True),
    "label_cost": lambda v: check_choice(v, "label_cost", ("sqeuclidean", "onehot", "ce")),
    "diagonal": lambda v: _check_bool(v, "diagonal"),
    "shrinkage": _check_shrinkage,
    "eps": lambda v: check_nonnegative(v, "eps"),
    "divergence": lambda v: check_choice(v, "divergence", ("wasserstein", "kl")),
    "kernel": lambda v: check_choice(v, "kernel", ("gaussian", "polynomial")),
    "bandwidth": lambda v: check_nonnegative(v, "bandwidth", strict=True, allow_none=True),
    "temperature": lambda v: check_nonnegative(v, "temperature", strict=True),
}


class Metric:
    """A configured metric: ``fn(zs, zt, y=None, **extra)`` -> 0-dim tensor.

    ``name`` is the registry name, ``inputs`` is ``"features"`` (pooled
    features of student and teacher) or ``"logits"`` (``hinton``: the trainer
    passes the logits in place of the features). ``y`` is ignored by the
    metrics that do not use labels. ``extra`` keywords are forwarded: when
    ``uses_predictions`` is true (``joint_wasserstein`` unless
    ``label_cost="onehot"``) the trainer passes ``ps=softmax(student logits)``
    and ``pt=softmax(teacher logits)``.
    """

    def __init__(self, name: str, options: dict):
        self.name = name
        self._fn, self.uses_labels, _ = _SPECS[name]
        self.inputs = "logits" if name == "hinton" else "features"
        self.options = dict(options)
        self.uses_predictions = (
            name == "joint_wasserstein" and self.options.get("label_cost") != "onehot"
        )
        self._call = functools.partial(self._fn, **self.options)

    def __call__(self, zs, zt, y=None, **extra):
        if self.uses_labels:
            if y is None:
                raise ValueError(f"metric {self.name!r} needs labels y; got y=None")
            return self._call(zs, zt, y, **extra)
        return self._call(zs, zt, **extra)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"Metric({self.name!r}{', ' if opts else ''}{opts})"


def get_metric(name: str, **options) -> Metric:
    """Return the registered metric ``name`` configured with ``options``.

    Unknown names and options raise ValueError (listing what is known);
    option values are validated here, before any training step.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    check_options(options, _SPECS[name][2], f"metric {name!r}")
    for key, value in options.items():
        _VALIDATORS[key](value)
    if name == "class_gaussian" and options.get("divergence", "wasserstein") == "wasserstein":
        check_options(options, ("divergence", "diagonal"), "metric 'class_gaussian' (wasserstein)")
    return Metric(name, options)
