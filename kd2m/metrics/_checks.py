"""Input validation and dtype handling shared by every public metric.

Every public function of :mod:`kd2m.metrics` validates its inputs here, at
the boundary, and raises :class:`ValueError` with a message that names the
offending argument, what it is and what was expected. The checks on shapes,
ranks, dtypes and devices are free (metadata only); the NaN/inf checks (of
the inputs, and of the result) cost one reduction and one host
synchronisation each per call and are skipped with ``validate=False`` (the
trainer's setting: it checks the loss once per epoch instead).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import numbers

import torch

__all__ = [
    "check_choice",
    "check_features",
    "check_labels",
    "check_nonnegative",
    "check_probabilities",
    "check_options",
    "public_metric",
    "work_dtype",
]


def public_metric(fn):
    """Decorator of the public metrics: keyword check, autocast disabled, finite result.

    * An unknown keyword argument raises ValueError naming it (instead of
      Python's TypeError), like the unknown options of ``get_metric``.
    * Metrics are often called inside the trainer's ``torch.autocast`` region,
      where autocast would silently run their matrix products in
      bfloat16/float16; it is disabled inside, and inputs produced under
      autocast are upcast by :func:`check_features` instead.
    * With ``validate=True`` (the default) a non-finite result of finite inputs
      (an overflow: e.g. features of magnitude 1e30 squared in float32) raises
      ValueError naming the metric, the value, the inputs' dtype and largest
      magnitude, and the way out (rescale, or float64), instead of returning
      inf/NaN. A failed factorisation (``torch.linalg.LinAlgError``, e.g. a
      Cholesky or SVD of such inputs) raises the same kind of ValueError,
      whatever ``validate``.
    """
    params = inspect.signature(fn).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not accepts_any:
            check_options(kwargs, allowed, f"{fn.__name__}()")
        with contextlib.ExitStack() as stack:
            if torch.is_autocast_enabled("cpu"):
                stack.enter_context(torch.autocast("cpu", enabled=False))
            if torch.cuda.is_available() and torch.is_autocast_enabled("cuda"):
                stack.enter_context(torch.autocast("cuda", enabled=False))
            try:
                out = fn(*args, **kwargs)
            except torch.linalg.LinAlgError as err:
                raise ValueError(
                    f"{fn.__name__}(): a matrix factorisation failed ({str(err).splitlines()[0]}) "
                    f"on {_describe_inputs(args, kwargs)}; the features are beyond the range "
                    "this metric can handle: rescale them (e.g. divide by their typical norm)"
                    + (
                        ""
                        if kwargs.get("validate", True)
                        else ", or check them for NaN/inf (validate=False skipped that check)"
                    )
                ) from err
        if kwargs.get("validate", True) and not bool(torch.isfinite(out).all()):
            raise ValueError(
                f"{fn.__name__}() returned {out.detach().cpu().tolist()} (not finite) on "
                f"{_describe_inputs(args, kwargs)}: the computation overflowed in {out.dtype}; "
                "rescale the features (e.g. divide by their typical norm) or pass float64 tensors"
            )
        return out

    return wrapper


def _describe_inputs(args, kwargs) -> str:
    """'finite float32 inputs of largest magnitude 1e+30' (error messages only)."""
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    tensors = [t.detach() for t in tensors if t.is_floating_point() and t.numel() > 0]
    if not tensors:
        return "its inputs"
    dtypes = ", ".join(sorted({str(t.dtype).removeprefix("torch.") for t in tensors}))
    try:
        largest = max(float(t.abs().max()) for t in tensors)
    except (RuntimeError, NotImplementedError):  # e.g. meta tensors: no values to report
        return f"{dtypes} inputs"
    return f"{dtypes} inputs of largest magnitude {largest:.3g}"


def work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype metrics compute in: the promotion of the inputs' dtypes, at least float32.

    float16 / bfloat16 (e.g. produced under ``torch.autocast``) are upcast to
    float32; float64 stays float64.
    """
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_matrix(z, name: str) -> None:
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (n, d); got {type(z).__name__}")
    if z.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D tensor of shape (n, d); got {z.ndim}-D shape {tuple(z.shape)}"
        )
    if not z.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {z.dtype}")
    if z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column; got {tuple(z.shape)}")


def _all_finite(*tensors: torch.Tensor) -> bool:
    flag = torch.isfinite(tensors[0]).all()
    for t in tensors[1:]:
        flag = flag & torch.isfinite(t).all()
    return bool(flag)  # the one host synchronisation


def check_features(
    zs,
    zt,
    *,
    same_n: bool = True,
    names: tuple[str, str] = ("zs", "zt"),
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a (student, teacher) feature pair and cast both to the working dtype.

    Returns ``(zs, zt)`` in :func:`work_dtype` (a no-op cast when already there).
    """
    ns, nt = names
    _check_matrix(zs, ns)
    _check_matrix(zt, nt)
    if zs.shape[1] != zt.shape[1]:
        raise ValueError(
            f"{ns} and {nt} must have the same feature dimension d; got {ns} {tuple(zs.shape)} "
            f"and {nt} {tuple(zt.shape)}"
        )
    if same_n and zs.shape[0] != zt.shape[0]:
        raise ValueError(
            f"{ns} and {nt} must have the same number of rows (row i = image i through each "
            f"network); got {ns} {tuple(zs.shape)} and {nt} {tuple(zt.shape)}"
        )
    if zs.device != zt.device:
        raise ValueError(
            f"{ns} and {nt} must be on the same device; got {zs.device} and {zt.device}"
        )
    if validate and not _all_finite(zs, zt):
        bad = ns if not bool(torch.isfinite(zs).all()) else nt
        raise ValueError(f"{bad} contains NaN or inf values; expected finite features")
    dtype = work_dtype(zs, zt)
    return zs.to(dtype), zt.to(dtype)


def check_labels(y, n: int, *, name: str = "y", device=None) -> torch.Tensor:
    """Validate integer labels of length ``n`` (one per feature row), on ``device`` if given."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of integer labels; got {type(y).__name__}")
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor of shape (n,); got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor (e.g. torch.int64); got {y.dtype}")
    if y.shape[0] != n:
        raise ValueError(
            f"{name} must have length n={n} (one label per feature row); got length {y.shape[0]}"
        )
    _check_device(y, device, name)
    return y


def _check_device(t: torch.Tensor, device, name: str) -> None:
    if device is not None and t.device != torch.device(device):
        raise ValueError(
            f"{name} is on device {t.device} but the features are on {torch.device(device)}; "
            f"move it there first (e.g. {name}.to(zs.device))"
        )


def check_nonnegative(value, name: str, *, strict: bool = False, allow_none: bool = False):
    """Validate a real scalar option (``>= 0``, or ``> 0`` when ``strict``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number; got {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite; got {value!r}")
    if strict and value <= 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")
    return value


def check_probabilities(
    p, n: int, name: str, *, validate: bool = True, atol: float = 1e-2, device=None
):
    """Validate an (n, K) matrix of probabilities (rows in the simplex, up to ``atol``)."""
    _check_matrix(p, name)
    if p.shape[0] != n:
        raise ValueError(f"{name} must have n={n} rows; got shape {tuple(p.shape)}")
    _check_device(p, device, name)
    if validate:
        p32 = p.to(work_dtype(p))
        ok = torch.isfinite(p32).all() & (p32 >= 0).all()
        ok = ok & ((p32.sum(dim=1) - 1).abs() <= atol).all()
        if not bool(ok):
            raise ValueError(
                f"{name} must hold probabilities (finite, >= 0, rows summing to 1); got values "
                f"in [{float(p32.min()):.3g}, {float(p32.max()):.3g}] - pass softmax(logits), "
                "not logits"
            )
    return p


def check_options(options: dict, allowed, where: str) -> None:
    """Raise ValueError naming any option not in ``allowed``."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {where}; "
            f"allowed: {', '.join(sorted(allowed)) or 'none'}"
        )


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value
