"""Distribution metrics between student and teacher features (EQUATIONS.md eq. 3-7).

Every function takes the student's features ``zs`` (n x d) and the teacher's
``zt`` (the same images through the teacher: row i of both is image i),
labels ``y`` (n,) where needed, and returns a differentiable 0-dim tensor
computed in float32 at least. ``get_metric(name, **options)`` builds the
callables the trainer uses; ``TABLE1_METRICS`` maps the paper's Table 1 rows
to registry names.
"""

from .baselines import hinton_kd, mmd
from .empirical import class_conditional_wasserstein, joint_wasserstein, wasserstein
from .gaussian import class_conditional_gaussian, gaussian_kl, gaussian_wasserstein
from .registry import METRICS, TABLE1_METRICS, Metric, get_metric

__all__ = [
    "wasserstein",
    "class_conditional_wasserstein",
    "joint_wasserstein",
    "gaussian_wasserstein",
    "gaussian_kl",
    "class_conditional_gaussian",
    "mmd",
    "hinton_kd",
    "METRICS",
    "TABLE1_METRICS",
    "Metric",
    "get_metric",
]
