r"""Baselines outside Table 1: MMD (NST, Huang & Wang 2017) and Hinton et al. (2015) logit KD."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_choice, check_features, check_nonnegative, public_metric

__all__ = ["mmd", "hinton"]


def _sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise squared distances, clamped at 0 (differentiable, finite gradient at 0)."""
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return d.clamp_min(0)


@torch.no_grad()
def _median_bandwidth(dxx, dyy, dxy) -> torch.Tensor:
    """Median heuristic: sigma = median pairwise distance of the pooled sample (1 if all zero)."""
    n, m = dxx.shape[0], dyy.shape[0]
    iu_x = torch.triu_indices(n, n, 1, device=dxx.device)
    iu_y = torch.triu_indices(m, m, 1, device=dyy.device)
    pooled = torch.cat([dxx[iu_x[0], iu_x[1]], dyy[iu_y[0], iu_y[1]], dxy.reshape(-1)])
    sigma2 = pooled.median()
    return torch.where(sigma2 > 0, sigma2, torch.ones_like(sigma2)).sqrt()


@public_metric
def mmd(zs, zt, *, kernel: str = "gaussian", bandwidth=None, validate: bool = True):
    r"""Squared maximum mean discrepancy, biased V-statistic (NST baseline).

    .. math::
        \mathrm{MMD}^2 = \frac{1}{n^2}\sum_{ii'} k(s_i, s_{i'})
                       + \frac{1}{m^2}\sum_{jj'} k(t_j, t_{j'})
                       - \frac{2}{nm}\sum_{ij} k(s_i, t_j)

    (not in EQUATIONS.md: the NST baseline of Huang & Wang 2017 cited by the
    paper). The V-statistic keeps the diagonal terms, so the value is >= 0 and
    equals 0 when the two batches coincide. **Squared**; symmetric.

    * ``kernel="gaussian"``: ``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))``;
      ``bandwidth`` = sigma > 0, or ``None`` for the median heuristic (sigma =
      median pairwise distance of the pooled batch, computed without
      gradient; 1 if all points coincide).
    * ``kernel="polynomial"``: NST's best kernel, ``k(x, y) = (x^T y)^2`` on
      L2-normalised features (each row divided by its norm; an all-zero row
      stays zero, with finite gradient). NST applies it to the spatial
      positions of each channel; on pooled features the samples are the
      images. ``bandwidth`` must be ``None``.

    No covariance is involved. Computed in float32 at least; differentiable.
    ``zs`` and ``zt`` may have different numbers of rows.
    """
    zs, zt = check_features(zs, zt, same_n=False, validate=validate)
    check_choice(kernel, "kernel", ("gaussian", "polynomial"))
    if kernel == "polynomial":
        if bandwidth is not None:
            raise ValueError(f"bandwidth applies to kernel='gaussian' only; got {bandwidth!r}")
        xs, xt = F.normalize(zs, dim=1), F.normalize(zt, dim=1)
        kxx, kyy, kxy = (xs @ xs.T) ** 2, (xt @ xt.T) ** 2, (xs @ xt.T) ** 2
    else:
        bandwidth = check_nonnegative(bandwidth, "bandwidth", strict=True, allow_none=True)
        dxx, dyy, dxy = _sq_dists(zs, zs), _sq_dists(zt, zt), _sq_dists(zs, zt)
        sigma = _median_bandwidth(dxx, dyy, dxy) if bandwidth is None else bandwidth
        gamma = 1.0 / (2 * sigma**2)
        kxx, kyy, kxy = (torch.exp(-gamma * dd) for dd in (dxx, dyy, dxy))
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


@public_metric
def hinton(logits_s, logits_t, *, temperature: float = 4.0, validate: bool = True):
    r"""Hinton et al. (2015) distillation loss on logits.

    .. math::
        T^2 \cdot \frac{1}{n}\sum_i \mathrm{KL}\big(\mathrm{softmax}(t_i/T) \,\|\,
        \mathrm{softmax}(s_i/T)\big)

    teacher distribution first (the student is fitted to the teacher's soft
    targets; the author's code had the two swapped), batch mean, scaled by
    ``T^2`` so that gradient magnitudes do not depend on ``T``. ``temperature``
    must be > 0. Not squared, not symmetric. Computed in float32 at least
    (log-softmax, so no probability is ever 0 inside the log).
    """
    logits_s, logits_t = check_features(
        logits_s, logits_t, names=("logits_s", "logits_t"), validate=validate
    )
    T = check_nonnegative(temperature, "temperature", strict=True)
    log_ps = F.log_softmax(logits_s / T, dim=1)
    log_pt = F.log_softmax(logits_t / T, dim=1)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * T**2
