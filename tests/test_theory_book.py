"""Tests for kd2m.book.theory_book (the Theory chapter's computations), on small synthetic data."""

from __future__ import annotations

import dataclasses
import math

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kd2m import theory  # noqa: E402
from kd2m.book import studies  # noqa: E402
from kd2m.book import theory_book as tb  # noqa: E402


def fake_monitor(
    n: int = 60, d: int = 6, k: int = 3, epochs: int = 3, seed: int = 0, sorted_labels: bool = True
) -> dict:
    """A monitor as kd2m.runs stores it: float16 student features per epoch (approaching
    the teacher's), float32 teacher features, int64 labels (sorted by class, as an image
    folder gives them), the student's head per epoch."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    if sorted_labels:
        y = torch.sort(y).values
    zt = torch.randn(n, d, generator=g) + 3 * torch.nn.functional.one_hot(y, d).float()
    noise = torch.randn(n, d, generator=g)
    feats = [(zt + noise / (e + 1)).half() for e in range(epochs)]
    heads = [(torch.randn(k, d, generator=g), torch.zeros(k)) for _ in range(epochs)]
    return {"epochs": feats, "head": heads, "teacher": zt, "labels": y}


def head(d: int = 6, k: int = 3, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((k, d)), rng.standard_normal(k)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --------------------------------------------------------------------------- #
# Helpers on a fixed head
# --------------------------------------------------------------------------- #
def test_per_sample_ce_matches_theory_risk():
    mon = fake_monitor()
    W, b = head()
    z = mon["teacher"].numpy()
    ce = tb.per_sample_ce(z, mon["labels"], W, b)
    assert ce.shape == (z.shape[0],) and np.all(ce >= 0)
    assert ce.mean() == pytest.approx(theory.risk(z, mon["labels"], W, b), rel=1e-12)
    with pytest.raises(ValueError):
        tb.per_sample_ce(z[:, :3], mon["labels"], W, b)


def test_head_accuracy():
    z = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    W = np.eye(2)
    assert tb.head_accuracy(z, [0, 1, 0], W) == 1.0
    assert tb.head_accuracy(z, [1, 1, 1], W, np.zeros(2)) == pytest.approx(1 / 3)


def test_lipschitz_constants_are_ordered():
    rng = np.random.default_rng(0)
    for _ in range(20):
        W = rng.standard_normal((4, 5)) + rng.standard_normal(5)  # rows share a mean
        zs, zt = rng.standard_normal((30, 5)), rng.standard_normal((30, 5))
        y = rng.integers(0, 4, 30)
        real = tb.realised_lipschitz(zs, zt, y, W)
        cen = tb.centred_lipschitz(W)
        assert 0 <= real <= cen * (1 + 1e-12)
        assert cen <= theory.lipschitz_ce_linear(W) * (1 + 1e-12)
    # identical rows: the loss does not depend on z at all
    assert tb.centred_lipschitz(np.ones((3, 2))) == pytest.approx(0.0, abs=1e-12)
    assert tb.realised_lipschitz(zs, zs, y, W) == 0.0


# --------------------------------------------------------------------------- #
# Synthetic part
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("d", [1, 2, 5])
def test_gaussian_pair_arrays_feed_the_theory(d):
    pair = studies.gaussian_pair(d, seed=3)
    m1, S1, m2, S2 = pair.arrays()
    assert np.linalg.norm(m1 - m2) == pytest.approx(1.0)
    for S in (S1, S2):
        assert np.allclose(S, S.T) and np.linalg.eigvalsh(S).min() > 0
    closed = theory.gaussian_w2_closed_form(m1, S1, m2, S2)
    assert closed**2 == pytest.approx(pair.wasserstein(), rel=1e-9)
    with pytest.raises(ValueError, match="d must be >= 1"):
        studies.gaussian_pair(0, seed=0)


def test_convergence_frame_and_figure():
    res = {
        f"d = {d}": theory.sample_w2_convergence(
            *studies.gaussian_pair(d, seed=0).arrays(), sizes=(10, 20, 40), repeats=2
        )
        for d in (1, 2)
    }
    df = tb.convergence_frame(res)
    assert len(df) == 6 and {"|error|", "closed form W2", "fitted rate"} <= set(df.columns)
    fig = tb.convergence_figure(res)
    assert len(fig.axes) == 2


def test_synthetic_features_eps_zero_is_the_teacher():
    f = tb.synthetic_features(n=40, d=4, n_classes=3, eps=0.0, seed=2)
    assert np.array_equal(f["zs"], f["zt"])
    r = theory.bound_report(f["zs"], f["zt"], f["y"], f["weight"], f["bias"])
    assert r.risk_gap == 0.0 and r.W1 == 0.0 and r.max_gap == 0.0
    assert theory.check_bounds(r, raise_on_violation=False) == []
    g = tb.synthetic_features(n=40, d=4, n_classes=3, eps=0.5, seed=2)
    for k in ("zt", "y", "weight"):
        assert np.array_equal(f[k], g[k])  # eps moves the student alone
    with pytest.raises(ValueError):
        tb.synthetic_features(eps=-1.0)


def test_synthetic_sweep_bounds_hold_and_shrink():
    eps = [0.0, 0.01, 0.1, 1.0]
    reps = tb.synthetic_sweep(eps, n=60, d=4, n_classes=3, seed=1)
    assert list(reps) == eps
    for r in reps.values():
        assert theory.check_bounds(r, raise_on_violation=False) == []
    bounds = [reps[e].lipschitz * reps[e].max_gap for e in eps]
    assert bounds[0] == 0.0 and all(a < b for a, b in zip(bounds, bounds[1:], strict=False))
    fig = tb.sweep_figure(reps)
    assert len(fig.axes) == 1


def test_swapped_labels_example_breaks_the_plain_bound_only():
    r = tb.swapped_labels_example()
    assert r.W1 == 0.0 and r.risk_gap > 1.0
    assert not r.plain_w1_bound().holds
    assert theory.check_bounds(r, raise_on_violation=False) == []
    table = tb.bound_table(r)
    assert list(table["checked"]) == [True] * len(r.inequalities) + [False]
    assert table["holds"].iloc[:-1].all() and not table["holds"].iloc[-1]
    assert len(tb.bound_table(r, with_plain=False)) == len(r.inequalities)


# --------------------------------------------------------------------------- #
# Trained part, on synthetic monitors
# --------------------------------------------------------------------------- #
def test_monitor_arrays_all_and_stratified_subset():
    mon = fake_monitor(n=60, k=3)
    epochs, zt, y = tb.monitor_arrays(mon)
    assert len(epochs) == 3 and all(z.dtype == np.float64 and z.shape == (60, 6) for z in epochs)
    assert np.array_equal(epochs[0], mon["epochs"][0].double().numpy())
    assert tb.monitor_arrays(mon, n_points=1000)[1].shape == (60, 6)

    e2, zt2, y2 = tb.monitor_arrays(mon, n_points=30, seed=5)
    assert zt2.shape == (30, 6) and np.bincount(y2).tolist() == [10, 10, 10]
    # the same rows for the teacher, the labels and every epoch
    rows = [int(np.flatnonzero((zt == r).all(axis=1))[0]) for r in zt2]
    assert np.array_equal(y[rows], y2)
    for e in range(3):
        assert np.array_equal(epochs[e][rows], e2[e])
    again = tb.monitor_arrays(mon, n_points=30, seed=5)[1]
    assert np.array_equal(again, zt2)
    assert np.bincount(tb.monitor_arrays(mon, n_points=7)[2]).sum() == 7

    with pytest.raises(ValueError):
        tb.monitor_arrays(mon, n_points=0)
    with pytest.raises(ValueError):
        tb.monitor_arrays(mon | {"teacher": None})
    with pytest.raises(ValueError):
        tb.monitor_arrays(mon | {"epochs": []})


def test_reports_over_epochs():
    mon = fake_monitor()
    W, b = head()
    reps = tb.reports_over_epochs(mon, W, b)
    assert len(reps) == 3
    zs0 = mon["epochs"][0].double().numpy()
    zt = mon["teacher"].double().numpy()
    assert reps[0].W1 == pytest.approx(theory.empirical_wasserstein(zs0, zt, p=1), rel=1e-12)
    assert reps[0].risk_teacher == pytest.approx(theory.risk(zt, mon["labels"], W, b))
    assert reps[0].risk_student == pytest.approx(theory.risk(zs0, mon["labels"], W, b))
    # the student approaches the teacher in this monitor
    assert reps[-1].coupling_gap < reps[0].coupling_gap
    assert tb.reports_over_epochs(mon, W, b, n_points=30)[0].n == 30
    # the teacher against itself
    same = mon | {"epochs": [mon["teacher"]]}
    (r,) = tb.reports_over_epochs(same, W, b)
    assert r.W1 == 0.0 and r.risk_gap == 0.0


def test_epoch_frame_extras_and_plot():
    W, b = head()
    reps = {
        "baseline": tb.reports_over_epochs(fake_monitor(seed=0), W, b),
        "wasserstein": tb.reports_over_epochs(fake_monitor(seed=1), W, b),
    }
    df = tb.epoch_frame(reps)
    assert list(df.index) == [(s, e) for s in reps for e in (1, 2, 3)]
    assert set(tb.EPOCH_QUANTITIES) <= set(df.columns)
    r = reps["baseline"][1]
    row = df.loc[("baseline", 2)]
    assert row["W1_labelled"] == r.W1_labelled
    assert row["lip_W1_labelled"] == pytest.approx(r.lipschitz * r.W1_labelled)
    assert row["gap_over_bound"] == pytest.approx(abs(r.risk_gap) / (r.lipschitz * r.W1_labelled))
    assert (df["gap_over_bound"] <= 1).all()
    zero = tb.report_extras(
        tb.reports_over_epochs(fake_monitor() | {"epochs": [fake_monitor()["teacher"]]}, W, b)[0]
    )
    assert math.isnan(zero["gap_over_bound"]) and zero["abs_risk_gap"] == 0.0
    records = {
        s: {"history": [{"monitor_acc": 0.1 * e, "monitor_ce": 2.0 - e} for e in (1, 2, 3)]}
        for s in reps
    }
    with_rec = tb.epoch_frame(reps, records)
    assert with_rec.loc[("wasserstein", 3), "own_test_acc"] == pytest.approx(0.3)
    assert with_rec.loc[("baseline", 1), "own_test_ce"] == 1.0
    assert "own_test_acc" not in df.columns
    fig = tb.plot_bounds_over_epochs(reps)
    assert len(fig.axes) == 6
    assert all(len(ax.lines) == 2 for ax in fig.axes[:4]) and len(fig.axes[4].lines) == 4


def test_violations_and_all_reports_hold():
    W, b = head()
    reps = {"a": tb.reports_over_epochs(fake_monitor(), W, b)}
    assert tb.violations(reps) == {"a": []}
    assert tb.all_reports_hold(reps)
    assert not tb.all_reports_hold({"a": []})
    bad = dataclasses.replace(reps["a"][1], risk_student=reps["a"][1].risk_teacher + 1e6)
    v = tb.violations({"a": [reps["a"][0], bad]})
    assert v["a"] and all(e == 2 for e, _ in v["a"])
    assert not tb.all_reports_hold({"a": [reps["a"][0], bad]})


def test_summary_frame():
    mons = {"baseline": fake_monitor(seed=0), "kd": fake_monitor(seed=1)}
    W, b = head()
    reps = {s: tb.reports_over_epochs(m, W, b) for s, m in mons.items()}
    records = {s: {"final": {"test_acc": 0.5}} for s in mons}
    df = tb.summary_frame(reps, mons, W, b, records=records)
    assert list(df.index) == ["baseline", "kd"]
    assert df.loc["kd", "R_S(h_T)"] == reps["kd"][-1].risk_student
    assert df.loc["kd", "student acc (own head) %"] == 50.0
    assert ((df["err bound (CE/ln2)"] > 0) & (df["err bound (CE/ln2)"] <= 1)).all()
    assert (df["Lip realised"] <= df["Lip centred"] * (1 + 1e-12)).all()
    assert (df["Lip centred"] <= df["Lip"] * (1 + 1e-12)).all()
    assert (df["W1_lab / coupling gap"] <= 1 + 1e-9).all()
    assert (df["coupling gap / max gap"] <= 1).all()
    first = tb.summary_frame(reps, mons, W, b, epoch=0)
    assert first.loc["kd", "W1"] == reps["kd"][0].W1
    assert "student acc (own head) %" not in first.columns


def test_w2_crosscheck():
    mon = fake_monitor()
    zt = mon["teacher"].double().numpy()
    logged = [
        theory.empirical_wasserstein(z.float().numpy(), zt, p=2) ** 2 * (1 + 1e-7)
        for z in mon["epochs"]
    ]
    rec = {"history": [{"epoch": e + 1, "test_feature_w2": w} for e, w in enumerate(logged)]}
    df = tb.w2_crosscheck({"kd": rec}, {"kd": mon})
    assert len(df) == 3 and (df["rel_diff"] < 1e-5).all()
    rec_none = {"history": [{"epoch": 1}]}
    df2 = tb.w2_crosscheck({"b": rec_none}, {"b": mon | {"epochs": mon["epochs"][:1]}})
    assert math.isnan(df2["rel_diff"].iloc[0])


def test_looseness_ladder_holds_and_ends_at_lip_times_coupling_gap():
    rng = np.random.default_rng(4)
    for seed in range(10):
        mon = fake_monitor(seed=seed)
        W, b = head(seed=seed)
        epochs, zt, y = tb.monitor_arrays(mon)
        ladder = tb.looseness_ladder(epochs[0], zt, y, W, b)
        assert len(ladder) == 4 and all(i.holds for i in ladder)
        for lo, hi in zip(ladder, ladder[1:], strict=False):
            assert lo.rhs == hi.lhs
        r = theory.bound_report(epochs[0], zt, y, W, b)
        assert ladder[0].lhs == pytest.approx(abs(r.risk_gap), rel=1e-12)
        assert ladder[-1].rhs == pytest.approx(r.lipschitz * r.coupling_gap, rel=1e-12)
    # tight rungs: in 1-D no direction is lost, and a tiny displacement of points that
    # the head puts firmly in the wrong class meets the loss's largest slope
    W = np.array([[0.0], [10.0]])
    zt = rng.standard_normal((5, 1)) + 5.0
    ladder = tb.looseness_ladder(zt + 1e-6, zt, np.zeros(5, int), W)
    assert ladder[0].ratio == pytest.approx(1.0)
    assert ladder[1].ratio == pytest.approx(1.0, rel=1e-6)
    assert ladder[2].ratio == pytest.approx(1.0)
    assert ladder[3].ratio == pytest.approx(math.sqrt(50) / 10)


def test_looseness_frame():
    mons = {"a": fake_monitor(seed=0), "b": fake_monitor(seed=1)}
    W, b = head()
    df = tb.looseness_frame(mons, W, b)
    assert len(df) == 8 and df["holds"].all() and (df["ratio"] <= 1 + 1e-12).all()
    assert len(tb.looseness_frame(mons, W, b, n_points=30, epoch=0)) == 8
