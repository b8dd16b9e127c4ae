"""Distribution metrics between student and teacher features (EQUATIONS.md eq. 3-7).

Every function takes the student's features ``zs`` (n x d) and the teacher's
``zt`` (the same images through the teacher: row i of both is image i),
labels ``y`` (n,) where needed, and returns a differentiable 0-dim tensor
computed in float32 at least. ``get_metric(name, **options)`` builds the
callables the trainer uses; ``TABLE1_METRICS`` maps the paper's Table 1 rows
to registry names. Each function has its registry name; the former names
``class_conditional_wasserstein``, ``class_conditional_gaussian`` and
``hinton_kd`` still work and warn (DeprecationWarning).
"""

import functools
import warnings

from .baselines import hinton, mmd
from .empirical import class_wasserstein, joint_wasserstein, wasserstein
from .gaussian import class_gaussian, gaussian_kl, gaussian_wasserstein
from .registry import ALIASES, METRICS, TABLE1_METRICS, Metric, get_metric

__all__ = [
    "wasserstein",
    "class_wasserstein",
    "joint_wasserstein",
    "gaussian_wasserstein",
    "gaussian_kl",
    "class_gaussian",
    "mmd",
    "hinton",
    "ALIASES",
    "METRICS",
    "TABLE1_METRICS",
    "Metric",
    "get_metric",
]


def _deprecated(old: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.warn(
            f"kd2m.metrics.{old} is deprecated: use kd2m.metrics.{fn.__name__}",
            DeprecationWarning,
            stacklevel=2,
        )
        return fn(*args, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = old
    return wrapper


class_conditional_wasserstein = _deprecated("class_conditional_wasserstein", class_wasserstein)
class_conditional_gaussian = _deprecated("class_conditional_gaussian", class_gaussian)
hinton_kd = _deprecated("hinton_kd", hinton)
