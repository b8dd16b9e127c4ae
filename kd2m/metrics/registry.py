"""Metric registry: names -> callables ``fn(zs, zt, y)`` used by the trainer and the configs."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._checks import check_choice, check_nonnegative, check_options
from .baselines import hinton, mmd
from .empirical import SOLVERS as EMPIRICAL_SOLVERS
from .empirical import class_wasserstein, joint_wasserstein, wasserstein
from .gaussian import (
    KL_OPTIONS,
    _check_shrinkage,
    class_gaussian,
    gaussian_kl,
    gaussian_wasserstein,
)
from .gaussian import SOLVERS as GAUSSIAN_SOLVERS
from .gaussian import _check_solver as _check_gaussian_solver

__all__ = ["ALIASES", "METRICS", "TABLE1_METRICS", "Metric", "get_metric"]

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
    "KD": "hinton",  # the positive control: logit distillation (Hinton et al., 2015)
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


@dataclass(frozen=True)
class _Spec:
    """What a registered metric is: its function, whether it reads the labels ``y``, the
    options it accepts and what the trainer passes as ``zs``/``zt`` (pooled
    ``"features"`` or ``"logits"``)."""

    fn: Callable[..., torch.Tensor]
    uses_labels: bool
    options: tuple[str, ...] = ()
    inputs: str = "features"
    solvers: tuple[str, ...] = ()  # values of its "solver" option (none: no such option)


_SPECS: dict[str, _Spec] = {
    "wasserstein": _Spec(wasserstein, False, ("solver",), solvers=EMPIRICAL_SOLVERS),
    "class_wasserstein": _Spec(class_wasserstein, True, ("solver",), solvers=EMPIRICAL_SOLVERS),
    "joint_wasserstein": _Spec(
        joint_wasserstein, True, ("beta", "label_cost", "solver"), solvers=EMPIRICAL_SOLVERS
    ),
    "gaussian_wasserstein": _Spec(
        gaussian_wasserstein, False, ("diagonal", "solver"), solvers=GAUSSIAN_SOLVERS
    ),
    "gaussian_kl": _Spec(gaussian_kl, False, ("diagonal",) + KL_OPTIONS),
    "class_gaussian": _Spec(
        class_gaussian,
        True,
        ("divergence", "diagonal", "solver") + KL_OPTIONS,
        solvers=GAUSSIAN_SOLVERS,
    ),
    "mmd": _Spec(mmd, False, ("kernel", "bandwidth")),
    "hinton": _Spec(hinton, False, ("temperature",), inputs="logits"),
}

#: Former names, accepted by :func:`get_metric` with a DeprecationWarning.
ALIASES: dict[str, str] = {
    "class_conditional_wasserstein": "class_wasserstein",
    "class_conditional_gaussian": "class_gaussian",
    "hinton_kd": "hinton",
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
    """A configured metric: ``metric(zs, zt, y=None, *, ps=None, pt=None, validate=True)`` ->
    0-dim tensor.

    It declares what the trainer must give it:

    * ``inputs``: ``"features"`` (pooled features of student and teacher, the student's
      projected) or ``"logits"`` (``hinton``: the logits in place of the features);
    * ``uses_labels``: whether ``y`` is read (it is ignored otherwise);
    * ``needs_student_probs``: whether ``ps``, the student's predicted probabilities
      (softmax of its logits, n x K), is required; ``needs_teacher_probs``: whether ``pt``,
      the teacher's (softmax of its logits), is. Both are, for ``joint_wasserstein`` unless
      ``label_cost="onehot"``: E3 compares the two networks' (feature, prediction)
      distributions (``"sqeuclidean"``, the default) or uses the JDOT cross-entropy between
      their predictions (``"ce"``). Each is refused where not needed;
    * ``validate=False`` skips the finiteness checks (no host synchronisation: the trainer
      checks each epoch's loss instead).
    """

    def __init__(self, name: str, options: dict):
        spec = _SPECS[name]
        self.name = name
        self.options = dict(options)
        self.inputs = spec.inputs
        self.uses_labels = spec.uses_labels
        predictions = name == "joint_wasserstein" and options.get("label_cost") != "onehot"
        self.needs_student_probs = self.needs_teacher_probs = predictions
        self._call = functools.partial(spec.fn, **self.options)

    def __call__(self, zs, zt, y=None, *, ps=None, pt=None, validate: bool = True) -> torch.Tensor:
        kwargs: dict = {"validate": validate}
        for key, value, needed, whose in (
            ("ps", ps, self.needs_student_probs, "student"),
            ("pt", pt, self.needs_teacher_probs, "teacher"),
        ):
            if needed:
                if value is None:
                    raise ValueError(
                        f"{self!r} needs {key}, the {whose}'s predicted probabilities (n, K)"
                    )
                kwargs[key] = value
            elif value is not None:
                raise ValueError(f"{self!r} takes no {key}")
        if self.uses_labels:
            if y is None:
                raise ValueError(f"metric {self.name!r} needs labels y; got y=None")
            return self._call(zs, zt, y, **kwargs)
        return self._call(zs, zt, **kwargs)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"Metric({self.name!r}{', ' if opts else ''}{opts})"


def get_metric(name: str, **options) -> Metric:
    """Return the registered metric ``name`` configured with ``options``.

    Unknown names and options raise ValueError (listing what is known);
    option values are validated here, before any training step. A former name
    (:data:`ALIASES`) warns and returns the metric under its registered name.
    """
    if name in ALIASES:
        warnings.warn(
            f"metric {name!r} is deprecated: use {ALIASES[name]!r}",
            DeprecationWarning,
            stacklevel=2,
        )
        name = ALIASES[name]
    if name not in _SPECS:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    check_options(options, _SPECS[name].options, f"metric {name!r}")
    for key, value in options.items():
        if key == "solver":
            check_choice(value, "solver", _SPECS[name].solvers)
        else:
            _VALIDATORS[key](value)
    if name == "class_gaussian" and options.get("divergence", "wasserstein") == "wasserstein":
        check_options(
            options, ("divergence", "diagonal", "solver"), "metric 'class_gaussian' (wasserstein)"
        )
    if name in ("gaussian_wasserstein", "class_gaussian"):  # a solver needs eq. (6), full
        _check_gaussian_solver(
            options.get("solver", "svd"),
            options.get("diagonal", False),
            options.get("divergence", "wasserstein"),
        )
    return Metric(name, options)
