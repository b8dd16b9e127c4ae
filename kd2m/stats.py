"""Comparing a baseline student with distilled students over seeds (Table 1).

Two paired comparisons, both over the same seeds:

* over seeds (:func:`paired_difference`): the per-seed accuracy differences
  ``d_s = other_s - base_s`` (points of %), their mean, the Student t interval
  ``mean ± t_{n-1, (1+confidence)/2} · sd / sqrt(n)`` and the two-sided paired t-test. It assumes
  the seeds' differences are independent draws from one normal distribution; with 3 to 5 seeds
  the interval is wide, and it says so.
* over images (:func:`discordant_test`): the per-image correctness of the two models on the test
  set, pooled over seeds, and the exact McNemar test on the discordant images.

Per-image correctness travels in the run records as :func:`encode_correct` strings (base64 of
``numpy.packbits``, 1 bit per test image). :func:`compare_rows` reads such records and returns one
plain dict per row. numpy and scipy only: no dataframe package.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _sps

__all__ = [
    "encode_correct",
    "decode_correct",
    "PairedDifference",
    "paired_difference",
    "Discordant",
    "discordant_test",
    "mean_std",
    "compare_rows",
]


# ---------------------------------------------------------------- per-image correctness


def _as_bool_vector(correct: Any, what: str = "correct") -> np.ndarray:
    """``correct`` (numpy array, torch tensor on any device, or a sequence of bools) as a 1-D
    numpy bool array. Integer 0/1 arrays are refused: a bool dtype says the values are
    per-image correctness, not labels or predictions."""
    if hasattr(correct, "detach"):  # a torch tensor, without importing torch
        correct = correct.detach().cpu().numpy()
    arr = np.asarray(correct)
    if arr.dtype != np.bool_:
        raise ValueError(
            f"{what}: expected a bool array (one True/False per test image), got dtype "
            f"{arr.dtype}: pass e.g. predictions == labels"
        )
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D bool array, got shape {arr.shape}")
    return arr


def encode_correct(correct: Any) -> str:
    """Per-image correctness (1-D bool, numpy or torch, length n) as an ASCII string for a JSON
    record: ``base64(numpy.packbits(correct, bitorder="little"))``, ceil(n/8) bytes before
    base64 (10 000 images: 1 668 characters). The length n is not stored: keep it beside the
    string (the records' ``final.test_n``) and give it to :func:`decode_correct`."""
    arr = _as_bool_vector(correct)
    return base64.b64encode(np.packbits(arr, bitorder="little").tobytes()).decode("ascii")


def decode_correct(text: str, n: int) -> np.ndarray:
    """The bool array of length ``n`` that :func:`encode_correct` turned into ``text``.

    Raises ValueError when ``text`` is not base64, when it holds a number of bytes other than
    ceil(n/8), or when a padding bit after the n-th is set (the text encodes more than n
    images)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n: expected a number of images >= 0, got {n!r}")
    n = int(n)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as e:
        shown = text if len(str(text)) <= 40 else f"{str(text)[:40]}..."
        raise ValueError(
            f"per-image correctness {shown!r} is not base64 ({e}): expected the string "
            "kd2m.stats.encode_correct wrote"
        ) from e
    expected = (n + 7) // 8
    if len(raw) != expected:
        raise ValueError(
            f"per-image correctness holds {len(raw)} bytes (up to {8 * len(raw)} images), "
            f"expected {expected} bytes for n = {n} images: "
            "the string belongs to a different test set or record"
        )
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little").astype(bool)
    if bits[n:].any():
        raise ValueError(
            f"per-image correctness: a bit after the first n = {n} is set, so the string encodes "
            "more images than n: the string belongs to a different test set or record"
        )
    return bits[:n]


# ---------------------------------------------------------------- paired over seeds


@dataclass(frozen=True)
class PairedDifference:
    """``other - base`` over n paired seeds (points of accuracy): mean, sample sd (ddof=1),
    the t interval [low, high] and the two-sided paired t-test's p-value. n == 1: sd, low,
    high and pvalue are NaN."""

    n: int
    mean: float
    sd: float
    low: float
    high: float
    pvalue: float
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        """(high - low) / 2 = t_{n-1, (1+confidence)/2} · sd / sqrt(n); NaN for n == 1."""
        return (self.high - self.low) / 2


def _finite_vector(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D sequence of numbers, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(
            f"{what}: non-finite values {arr[bad].tolist()} at positions {bad.tolist()}: "
            "every seed needs a finite accuracy"
        )
    return arr


def paired_difference(
    base: Sequence[float] | np.ndarray,
    other: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
) -> PairedDifference:
    """Paired comparison of ``other`` with ``base`` (per-seed accuracies in %, same seeds in the
    same order): ``d_s = other_s - base_s``, ``mean = sum(d)/n``,
    ``sd = sqrt(sum((d - mean)^2) / (n - 1))`` and, from ``scipy.stats.ttest_rel(other, base)``,
    the interval ``mean ± t_{n-1, (1+confidence)/2} · sd / sqrt(n)`` and the two-sided p-value
    of ``t = mean / (sd / sqrt(n))`` on n - 1 degrees of freedom.

    Assumes the n differences are independent draws from one normal distribution (seeds
    independent; the pairing removes what the two runs of one seed share).

    n == 1: ``mean`` only; ``sd``, ``low``, ``high``, ``pvalue`` are NaN (no spread to
    estimate). All differences equal (sd == 0, n >= 2): ``low = high = mean`` and
    ``pvalue`` 0.0 if mean != 0 (t infinite), NaN if mean == 0 (t = 0/0).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a level in (0, 1), got {confidence!r}")
    b = _finite_vector(base, "base")
    o = _finite_vector(other, "other")
    if b.size != o.size:
        raise ValueError(
            f"base has {b.size} seeds and other {o.size}: a paired difference needs the same "
            "seeds on both sides"
        )
    if b.size == 0:
        raise ValueError("base and other are empty: at least one seed is needed")
    n = int(b.size)
    d = o - b
    mean = float(d.mean())
    nan = float("nan")
    if n == 1:
        return PairedDifference(1, mean, nan, nan, nan, nan, confidence)
    sd = float(d.std(ddof=1))
    if np.all(d == d[0]):  # scipy would warn and return t = ±inf or 0/0
        p = nan if mean == 0.0 else 0.0
        return PairedDifference(n, mean, 0.0, mean, mean, p, confidence)
    res = _sps.ttest_rel(o, b)
    ci = res.confidence_interval(confidence)
    return PairedDifference(
        n, mean, sd, float(ci.low), float(ci.high), float(res.pvalue), confidence
    )


# ---------------------------------------------------------------- paired over images


@dataclass(frozen=True)
class Discordant:
    """Discordant test images pooled over seeds: ``base_only`` (the baseline right, the other
    wrong) and ``other_only`` (the reverse), summed over seeds; ``n_images`` is the size of
    the test set (per seed); ``pvalue`` the exact two-sided McNemar test."""

    n_images: int
    base_only: int
    other_only: int
    pvalue: float


def discordant_test(base_correct: Sequence[Any], other_correct: Sequence[Any]) -> Discordant:
    """Exact McNemar test of the per-image correctness of two models, pooled over seeds.

    ``base_correct[s]`` and ``other_correct[s]`` are the 1-D bool arrays (numpy or torch) of the
    baseline and of the other model of seed s on the same test images in the same order; one
    entry per seed, the seeds in the same order in both lists. With ``b`` = sum over seeds of
    #(base right, other wrong) and ``c`` = #(base wrong, other right), the p-value is
    ``scipy.stats.binomtest(c, b + c, 0.5).pvalue``: under the null, each discordant image is
    equally likely to favour either model; two-sided = sum of the Binomial(b + c, 1/2)
    probabilities not above that of c (for p = 1/2: twice the smaller tail, capped at 1).
    No discordant image (b + c == 0): p = 1.0.

    Assumes the discordant pairs are independent. Pooling seeds counts each image once per
    seed, and an image hard for one seed tends to be hard for the others, so with several seeds
    the p-value is smaller than an exact account of that dependence would give: read it as a
    per-image companion to the over-seeds t-test of :func:`paired_difference`, not instead.
    """
    if len(base_correct) != len(other_correct):
        raise ValueError(
            f"base_correct has {len(base_correct)} seeds and other_correct "
            f"{len(other_correct)}: one array per seed on both sides, the same seeds"
        )
    if len(base_correct) == 0:
        raise ValueError("base_correct and other_correct are empty: at least one seed is needed")
    n_images = None
    b = c = 0
    for s, (bc, oc) in enumerate(zip(base_correct, other_correct, strict=True)):
        x = _as_bool_vector(bc, f"base_correct[{s}]")
        y = _as_bool_vector(oc, f"other_correct[{s}]")
        if n_images is None:
            n_images = x.size
        if x.size != n_images or y.size != n_images:
            raise ValueError(
                f"seed #{s}: base_correct has {x.size} images and other_correct {y.size}, "
                f"expected {n_images} (the test set of seed #0): every array must cover the "
                "same test images"
            )
        b += int(np.count_nonzero(x & ~y))
        c += int(np.count_nonzero(~x & y))
    p = 1.0 if b + c == 0 else float(_sps.binomtest(c, b + c, 0.5).pvalue)
    return Discordant(int(n_images or 0), b, c, p)


# ---------------------------------------------------------------- summaries and rows


def mean_std(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(mean, sample sd with ddof=1) of finite ``values``; sd is NaN for a single value."""
    arr = _finite_vector(values, "values")
    if arr.size == 0:
        raise ValueError("values is empty: the mean of nothing is undefined")
    sd = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    return float(arr.mean()), sd


def _runs_by_seed(row: str, recs: Sequence[Mapping]) -> dict[Any, tuple[float, np.ndarray]]:
    """seed -> (accuracy in %, per-image correctness) for the records of one row."""
    if not recs:
        raise ValueError(f"row {row!r} has no run records")
    out: dict[Any, tuple[float, np.ndarray]] = {}
    for rec in recs:
        name = rec.get("name", "?")
        seed = rec["config"]["seed"]
        final = rec["final"]
        if seed in out:
            raise ValueError(
                f"row {row!r}: seed {seed!r} appears twice (run {name}): one record per seed"
            )
        if "test_correct" not in final:
            raise ValueError(
                f"run {name} (row {row!r}) has no final.test_correct: the record predates "
                "per-image predictions; train the run again with this version of kd2m"
            )
        correct = decode_correct(final["test_correct"], int(final["test_n"]))
        acc = float(final["test_acc"])
        if abs(acc * correct.size - np.count_nonzero(correct)) > 0.5:
            raise ValueError(
                f"run {name}: final.test_acc = {acc} but final.test_correct has "
                f"{np.count_nonzero(correct)} of {correct.size} right: the record is inconsistent"
            )
        out[seed] = (100.0 * acc, correct)
    return out


def _seed_key(seed: Any) -> tuple[str, Any]:
    return (type(seed).__name__, seed)


def _compare_one(
    row: str, base: dict, runs: dict, baseline: str, confidence: float
) -> dict[str, Any]:
    """The Table 1 entries of ``row`` against the baseline's runs ``base`` (seed -> run)."""
    missing_here = sorted(set(base) - set(runs), key=_seed_key)
    missing_base = sorted(set(runs) - set(base), key=_seed_key)
    if missing_here or missing_base:
        raise ValueError(
            f"row {row!r} cannot be paired with {baseline!r} by seed: seeds missing in "
            f"{row!r}: {missing_here}, missing in {baseline!r}: {missing_base}; run the "
            "missing seeds or drop them from both rows"
        )
    seeds = sorted(base, key=_seed_key)
    acc = [runs[s][0] for s in seeds]
    mean, sd = mean_std(acc)
    pd = paired_difference([base[s][0] for s in seeds], acc, confidence)
    dt = discordant_test([base[s][1] for s in seeds], [runs[s][1] for s in seeds])
    return {
        "row": row,
        "n_seeds": len(seeds),
        "mean": mean,
        "sd": sd,
        "diff": pd.mean,
        "low": pd.low,
        "high": pd.high,
        "half_width": pd.half_width,
        "p_seeds": pd.pvalue,
        "base_only": dt.base_only,
        "other_only": dt.other_only,
        "p_images": dt.pvalue,
        "significant": bool(pd.low > 0.0 or pd.high < 0.0),  # False when NaN (n == 1)
    }


def compare_rows(
    records: Mapping[str, Sequence[Mapping]],
    baseline: str = "baseline",
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Table 1 rows compared with the baseline row, paired by seed.

    ``records[row]`` lists the run records of one row (one per seed), each with
    ``config.seed``, ``final.test_acc`` (fraction), ``final.test_n`` and ``final.test_correct``
    (:func:`encode_correct`). Returns one dict per row, the baseline first and then the others
    in the order given: ``row``, ``n_seeds``, ``mean``, ``sd`` (accuracy in %, sd with ddof=1);
    for the other rows also ``diff`` (mean paired difference, points), ``low``, ``high``,
    ``half_width`` (:func:`paired_difference` at ``confidence``), ``p_seeds`` (paired t-test),
    ``base_only``, ``other_only``, ``p_images`` (:func:`discordant_test`) and ``significant``
    (the interval excludes 0; False for a single seed, whose interval is NaN).

    Raises ValueError when the baseline row is absent, when a row's seeds differ from the
    baseline's (naming the seeds missing on each side), when a seed repeats within a row, or
    when a record has no ``test_correct`` (it predates per-image predictions).
    """
    if baseline not in records:
        raise ValueError(f"no baseline row {baseline!r} among the rows {list(records)}")
    base = _runs_by_seed(baseline, records[baseline])
    mean, sd = mean_std([acc for acc, _ in base.values()])
    out: list[dict[str, Any]] = [{"row": baseline, "n_seeds": len(base), "mean": mean, "sd": sd}]
    for row, recs in records.items():
        if row != baseline:
            out.append(_compare_one(row, base, _runs_by_seed(row, recs), baseline, confidence))
    return out
