"""kd2m.stats against independent references: the t interval in closed form and on Student's
sleep data (published values), the t-test p-value from the closed-form t CDF for 3 degrees of
freedom, McNemar's exact p from math.comb sums, the bit packing by hand."""

from __future__ import annotations

import base64
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats as sps

from kd2m.stats import (
    Discordant,
    compare_rows,
    decode_correct,
    discordant_test,
    encode_correct,
    mean_std,
    paired_difference,
)

# ---------------------------------------------------------------- encode / decode


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.bool_, st.integers(1, 2000)))
def test_encode_decode_round_trip(correct):
    text = encode_correct(correct)
    assert text.isascii()
    assert len(base64.b64decode(text)) == math.ceil(correct.size / 8)
    out = decode_correct(text, correct.size)
    assert out.dtype == np.bool_ and out.shape == correct.shape
    np.testing.assert_array_equal(out, correct)


def test_encode_bit_order_by_hand():
    # little bit order: image i is bit i % 8 of byte i // 8 (value 2 ** (i % 8))
    correct = np.zeros(11, dtype=bool)
    correct[[0, 2, 7, 8, 10]] = True
    expected = bytes([1 + 4 + 128, 1 + 4])
    assert base64.b64decode(encode_correct(correct)) == expected
    assert encode_correct(correct) == base64.b64encode(expected).decode("ascii")


def test_encode_accepts_torch_and_lists():
    torch = pytest.importorskip("torch")
    arr = np.array([True, False, True, True, False, False, True, False, True])
    assert encode_correct(torch.from_numpy(arr)) == encode_correct(arr)
    assert encode_correct(arr.tolist()) == encode_correct(arr)


def test_encode_refuses_non_bool():
    with pytest.raises(ValueError, match="bool array.*int"):
        encode_correct(np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"1-D.*\(2, 2\)"):
        encode_correct(np.ones((2, 2), dtype=bool))


def test_decode_wrong_length_names_both():
    text = encode_correct(np.ones(100, dtype=bool))  # 13 bytes
    with pytest.raises(ValueError, match=r"holds 13 bytes.*expected 2 bytes for n = 10 images"):
        decode_correct(text, 10)
    with pytest.raises(ValueError, match=r"holds 13 bytes.*expected 25 bytes for n = 200"):
        decode_correct(text, 200)
    # same byte count, but the 100th image is set: the text has more than 99 images
    with pytest.raises(ValueError, match="more images than n"):
        decode_correct(text, 99)


def test_decode_bad_base64_and_bad_n():
    with pytest.raises(ValueError, match="not base64"):
        decode_correct("not base64!!", 8)
    with pytest.raises(ValueError, match="not base64"):
        decode_correct("QQ", 8)  # missing padding
    with pytest.raises(ValueError, match="n: expected"):
        decode_correct("AA==", -1)
    with pytest.raises(ValueError, match="n: expected"):
        decode_correct("AA==", 8.0)  # type: ignore[arg-type]


# ---------------------------------------------------------------- paired over seeds


def test_paired_interval_closed_form():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        base = 85 + rng.normal(size=n)
        other = base + 0.3 + 0.5 * rng.normal(size=n)
        for conf in (0.9, 0.95, 0.99):
            r = paired_difference(base, other, conf)
            d = [o - b for o, b in zip(other.tolist(), base.tolist(), strict=True)]
            mean = sum(d) / n
            sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
            half = sps.t.ppf((1 + conf) / 2, n - 1) * sd / math.sqrt(n)
            assert r.n == n
            assert r.mean == pytest.approx(mean, rel=1e-12, abs=1e-12)
            assert r.sd == pytest.approx(sd, rel=1e-10)
            assert r.low == pytest.approx(mean - half, rel=1e-10, abs=1e-12)
            assert r.high == pytest.approx(mean + half, rel=1e-10, abs=1e-12)
            assert r.half_width == pytest.approx(half, rel=1e-10)


def test_paired_by_hand_three_degrees_of_freedom():
    # d = (0.5, 1, 1.5, 2): mean 5/4, sum of squares 5/4, sd = sqrt(5/12), se = sd / 2,
    # t = (5/4) / se = sqrt(15); t_{3, 0.975} = 3.182446305 (printed t tables: 3.182).
    # p from the closed-form CDF of t with 3 df:
    #   F(t) = 1/2 + (1/pi) * (u / (1 + u^2) + atan(u)),  u = t / sqrt(3)
    base = [80.0, 81.0, 82.0, 83.0]
    other = [80.5, 82.0, 83.5, 85.0]
    r = paired_difference(base, other)
    sd = math.sqrt(5 / 12)
    assert r.mean == pytest.approx(1.25, abs=1e-12)
    assert r.sd == pytest.approx(sd, rel=1e-12)
    half = 3.182446305 * sd / 2
    assert r.low == pytest.approx(1.25 - half, abs=1e-8)
    assert r.high == pytest.approx(1.25 + half, abs=1e-8)
    u = math.sqrt(15) / math.sqrt(3)
    cdf = 0.5 + (u / (1 + u * u) + math.atan(u)) / math.pi
    assert r.pvalue == pytest.approx(2 * (1 - cdf), rel=1e-9)
    assert 0.03 < r.pvalue < 0.031  # 0.0305...


def test_paired_student_sleep_data():
    # Cushny & Peebles' data as in Student (1908) and R's `sleep`; R's
    # t.test(extra ~ group, data = sleep, paired = TRUE) prints t = -4.0621, df = 9,
    # p-value = 0.002833, 95 percent CI -2.4598858 -0.7001142, mean difference -1.58
    g1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
    g2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
    r = paired_difference(g1, g2)
    assert r.n == 10
    assert r.mean == pytest.approx(1.58, abs=1e-12)
    assert r.low == pytest.approx(0.7001142, abs=1e-7)
    assert r.high == pytest.approx(2.4598858, abs=1e-7)
    assert r.pvalue == pytest.approx(0.002833, abs=1e-6)
    assert r.mean / (r.sd / math.sqrt(10)) == pytest.approx(4.0621, abs=1e-4)
    # swapping the sides flips the interval, keeps p
    s = paired_difference(g2, g1)
    assert (s.low, s.high) == pytest.approx((-r.high, -r.low), abs=1e-12)
    assert s.pvalue == pytest.approx(r.pvalue, rel=1e-12)


def test_paired_single_seed_and_constant_differences():
    r = paired_difference([85.0], [86.5])
    assert r.n == 1 and r.mean == pytest.approx(1.5)
    assert all(math.isnan(x) for x in (r.sd, r.low, r.high, r.pvalue, r.half_width))
    c = paired_difference([80.0, 81.0, 82.0], [80.5, 81.5, 82.5])
    assert (c.sd, c.low, c.high, c.pvalue) == (0.0, 0.5, 0.5, 0.0)
    z = paired_difference([80.0, 81.0], [80.0, 81.0])
    assert z.low == z.high == 0.0 and math.isnan(z.pvalue)


def test_paired_errors():
    with pytest.raises(ValueError, match="base has 2 seeds and other 3"):
        paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="empty"):
        paired_difference([], [])
    with pytest.raises(ValueError, match=r"other: non-finite values \[nan\] at positions \[1\]"):
        paired_difference([1.0, 2.0], [1.0, float("nan")])
    with pytest.raises(ValueError, match=r"base: non-finite values \[inf\]"):
        paired_difference([float("inf"), 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0, 2.0], [1.0, 3.0], confidence=95)


def test_mean_std():
    assert mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, math.sqrt(7 / 3)))
    m, s = mean_std([3.0])
    assert m == 3.0 and math.isnan(s)
    with pytest.raises(ValueError, match="empty"):
        mean_std([])


# ---------------------------------------------------------------- McNemar


def _p_by_likelihood(c: int, n: int) -> float:
    """Two-sided exact binomial p (p = 1/2): the sum of P(X = k) over the k with
    P(X = k) <= P(X = c), in exact rationals."""
    pmf = [Fraction(math.comb(n, k), 2**n) for k in range(n + 1)]
    return float(min(Fraction(1), sum(q for q in pmf if q <= pmf[c])))


def _p_by_tails(c: int, n: int) -> float:
    """Twice the smaller tail, capped at 1."""
    lo = sum(math.comb(n, k) for k in range(0, c + 1))
    hi = sum(math.comb(n, k) for k in range(c, n + 1))
    return float(min(Fraction(1), Fraction(2 * min(lo, hi), 2**n)))


def _pairs(b: int, c: int, same_right: int = 3, same_wrong: int = 2):
    base = np.array([True] * b + [False] * c + [True] * same_right + [False] * same_wrong)
    other = np.array([False] * b + [True] * c + [True] * same_right + [False] * same_wrong)
    return base, other


def test_mcnemar_against_comb_sums():
    # scipy's binomtest sums the probabilities not above the observed one; for p = 1/2 the
    # distribution is symmetric and this equals twice the smaller tail (capped at 1)
    for n in range(1, 31):
        for c in range(n + 1):
            base, other = _pairs(n - c, c)
            r = discordant_test([base], [other])
            assert (r.base_only, r.other_only) == (n - c, c)
            ref = _p_by_likelihood(c, n)
            assert r.pvalue == pytest.approx(ref, rel=1e-9)
            assert _p_by_tails(c, n) == pytest.approx(ref, rel=1e-12)
    for b, c in [(120, 80), (300, 250), (40, 0)]:
        base, other = _pairs(b, c)
        assert discordant_test([base], [other]).pvalue == pytest.approx(
            _p_by_likelihood(c, b + c), rel=1e-9
        )


def test_mcnemar_by_hand_and_pooled_over_seeds():
    # seed 0: b = 1, c = 4; seed 1: b = 0, c = 5 -> b = 1, c = 9 over 10 discordant images:
    # p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    b0, o0 = _pairs(1, 4, same_right=5, same_wrong=0)
    b1, o1 = _pairs(0, 5, same_right=3, same_wrong=2)
    r = discordant_test([b0, b1], [o0, o1])
    assert r == Discordant(n_images=10, base_only=1, other_only=9, pvalue=pytest.approx(22 / 1024))
    same = discordant_test([b0], [b0])
    assert (same.base_only, same.other_only, same.pvalue) == (0, 0, 1.0)


def test_mcnemar_errors():
    a = np.ones(5, dtype=bool)
    with pytest.raises(ValueError, match="base_correct has 2 seeds and other_correct 1"):
        discordant_test([a, a], [a])
    with pytest.raises(ValueError, match="empty"):
        discordant_test([], [])
    with pytest.raises(ValueError, match="seed #1: base_correct has 5 images and other_correct 4"):
        discordant_test([a, a], [a, a[:4]])
    with pytest.raises(ValueError, match=r"seed #1: base_correct has 6 .* expected 5"):
        discordant_test([a, np.ones(6, dtype=bool)], [a, np.ones(6, dtype=bool)])
    with pytest.raises(ValueError, match=r"other_correct\[0\].*bool"):
        discordant_test([a], [np.ones(5)])


# ---------------------------------------------------------------- compare_rows


def _record(name: str, seed, correct: np.ndarray, drop_correct: bool = False) -> dict:
    final = {
        "test_acc": float(correct.mean()),
        "test_ce": 0.5,
        "test_n": int(correct.size),
        "test_correct": encode_correct(correct),
    }
    if drop_correct:
        del final["test_correct"]
    return {"name": name, "config": {"seed": seed}, "final": final}


def _correct(n_right: int, n: int = 200, shift: int = 0) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[(np.arange(n_right) + shift) % n] = True
    return out


def test_compare_rows_values():
    n = 200
    # baseline right on 160, 164, 170 images; the student on 170, 172, 175, on images
    # shifted by 5: each seed's discordant counts are b = 5 and c = 5 + (n_s - n_b)
    base_right, kd_right = [160, 164, 170], [170, 172, 175]
    records = {
        "kd": [
            _record(f"kd-s{s}", s, _correct(r, n, shift=5))
            for s, r in zip((2, 0, 1), (kd_right[2], kd_right[0], kd_right[1]), strict=True)
        ],
        "baseline": [_record(f"base-s{s}", s, _correct(r, n)) for s, r in enumerate(base_right)],
        "one": [_record("one-s0", 0, _correct(161, n))],
    }
    # a row with fewer seeds than the baseline is not paired silently
    with pytest.raises(ValueError, match=r"seeds missing in 'one': \[1, 2\], missing in "):
        compare_rows(records)
    del records["one"]
    rows = compare_rows(records)
    assert [r["row"] for r in rows] == ["baseline", "kd"]
    b, k = rows
    assert set(b) == {"row", "n_seeds", "mean", "sd"}
    acc_b = [100 * r / n for r in base_right]
    acc_k = [100 * r / n for r in kd_right]
    assert b["n_seeds"] == 3 and b["mean"] == pytest.approx(sum(acc_b) / 3)
    assert b["sd"] == pytest.approx(np.std(acc_b, ddof=1))
    d = [x - y for x, y in zip(acc_k, acc_b, strict=True)]  # 5, 4, 2.5 points
    dm = sum(d) / 3
    sd = math.sqrt(sum((x - dm) ** 2 for x in d) / 2)
    half = sps.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert k["diff"] == pytest.approx(dm) and k["half_width"] == pytest.approx(half)
    assert (k["low"], k["high"]) == pytest.approx((dm - half, dm + half))
    assert k["significant"] is True
    assert (k["base_only"], k["other_only"]) == (15, 15 + sum(kd_right) - sum(base_right))
    assert k["p_images"] == pytest.approx(_p_by_likelihood(38, 53), rel=1e-9)


def test_compare_rows_single_seed():
    records = {
        "baseline": [_record("b0", 0, _correct(150))],
        "kd": [_record("k0", 0, _correct(160))],
    }
    b, k = compare_rows(records)
    assert b["n_seeds"] == 1 and math.isnan(b["sd"])
    assert k["diff"] == pytest.approx(5.0) and k["significant"] is False
    assert math.isnan(k["low"]) and math.isnan(k["p_seeds"])
    assert (k["base_only"], k["other_only"]) == (0, 10)


def test_compare_rows_errors():
    ok = [_record("b0", 0, _correct(150)), _record("b1", 1, _correct(151))]
    with pytest.raises(
        ValueError, match=r"seeds missing in 'kd': \[1\], missing in 'baseline': \[7\]"
    ):
        compare_rows(
            {"baseline": ok, "kd": [_record("k0", 0, _correct(1)), _record("k7", 7, _correct(1))]}
        )
    with pytest.raises(ValueError, match="run k1 .*predates per-image predictions"):
        compare_rows(
            {
                "baseline": ok,
                "kd": [_record("k0", 0, _correct(1)), _record("k1", 1, _correct(1), True)],
            }
        )
    with pytest.raises(ValueError, match="no baseline row 'baseline' among the rows \\['kd'\\]"):
        compare_rows({"kd": ok})
    with pytest.raises(ValueError, match="seed 0 appears twice"):
        compare_rows({"baseline": [ok[0], ok[0]]})
    bad = _record("b9", 9, _correct(150))
    bad["final"]["test_acc"] = 0.9
    with pytest.raises(ValueError, match="run b9: final.test_acc = 0.9 but .* 150 of 200"):
        compare_rows({"baseline": [bad]})
