"""Public API of kd2m.metrics: input validation, registry, benchmark entry point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kd2m.metrics as M
from kd2m import bench

torch.set_num_threads(1)


def ok(n=8, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), torch.arange(n) % 3


FEATURE_FNS = {
    "wasserstein": lambda s, t, y: M.wasserstein(s, t),
    "class_wasserstein": M.class_wasserstein,
    "joint_wasserstein": M.joint_wasserstein,
    "gaussian_wasserstein": lambda s, t, y: M.gaussian_wasserstein(s, t),
    "gaussian_kl": lambda s, t, y: M.gaussian_kl(s, t),
    "class_gaussian": M.class_gaussian,
    "mmd": lambda s, t, y: M.mmd(s, t),
    "hinton": lambda s, t, y: M.hinton(s, t),
}
LABELLED = ["class_wasserstein", "joint_wasserstein", "class_gaussian"]


@pytest.mark.parametrize("name", sorted(FEATURE_FNS))
def test_bad_feature_shapes_and_values(name):
    fn = FEATURE_FNS[name]
    zs, zt, y = ok()
    first = "logits_s" if name == "hinton" else "zs"
    second = "logits_t" if name == "hinton" else "zt"
    with pytest.raises(ValueError, match=rf"{first} must be a 2-D tensor.*\(8, 4, 1\)"):
        fn(zs[..., None], zt, y)
    with pytest.raises(ValueError, match=rf"{second} must be a 2-D tensor.*got 1-D"):
        fn(zs, zt[:, 0], y)
    with pytest.raises(ValueError, match=r"same feature dimension.*\(8, 4\).*\(8, 3\)"):
        fn(zs, zt[:, :3], y)
    with pytest.raises(ValueError, match=rf"{first} must be a floating-point tensor.*int64"):
        fn(zs.long(), zt, y)
    with pytest.raises(ValueError, match=rf"{first} must be a torch.Tensor.*ndarray"):
        fn(zs.numpy(), zt, y)
    bad = zs.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=rf"{first} contains NaN or inf"):
        fn(bad, zt, y)
    bad = zt.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match=rf"{second} contains NaN or inf"):
        fn(zs, bad, y)


@pytest.mark.parametrize("name", LABELLED + ["hinton"])
def test_row_count_mismatch(name):
    zs, zt, y = ok()
    with pytest.raises(ValueError, match=r"same number of rows.*\(8, 4\).*\(7, 4\)"):
        FEATURE_FNS[name](zs, zt[:7], y)


@pytest.mark.parametrize("name", LABELLED)
def test_bad_labels(name):
    fn = FEATURE_FNS[name]
    zs, zt, y = ok()
    with pytest.raises(ValueError, match=r"y must have length n=8.*got length 7"):
        fn(zs, zt, y[:7])
    with pytest.raises(ValueError, match=r"y must be an integer tensor.*float32"):
        fn(zs, zt, y.float())
    with pytest.raises(ValueError, match=r"y must be an integer tensor.*bool"):
        fn(zs, zt, y > 0)
    with pytest.raises(ValueError, match=r"y must be a 1-D tensor.*\(8, 1\)"):
        fn(zs, zt, y[:, None])
    with pytest.raises(ValueError, match=r"y must be a torch.Tensor.*list"):
        fn(zs, zt, y.tolist())


def test_bad_scalar_options():
    zs, zt, y = ok()
    with pytest.raises(ValueError, match=r"beta must be >= 0; got -1.0"):
        M.joint_wasserstein(zs, zt, y, beta=-1.0)
    with pytest.raises(ValueError, match=r"eps must be >= 0; got -1e-06"):
        M.gaussian_kl(zs, zt, eps=-1e-6)
    with pytest.raises(ValueError, match=r"eps must be >= 0; got -0.1"):
        M.class_gaussian(zs, zt, y, divergence="kl", eps=-0.1)
    with pytest.raises(ValueError, match=r"bandwidth must be > 0; got -2.0"):
        M.mmd(zs, zt, bandwidth=-2.0)
    with pytest.raises(ValueError, match=r"bandwidth must be > 0; got 0"):
        M.mmd(zs, zt, bandwidth=0)
    with pytest.raises(ValueError, match=r"bandwidth applies to kernel='gaussian' only"):
        M.mmd(zs, zt, kernel="polynomial", bandwidth=1.0)
    with pytest.raises(ValueError, match=r"temperature must be > 0; got -4.0"):
        M.hinton(zs, zt, temperature=-4.0)
    with pytest.raises(ValueError, match=r"temperature must be > 0; got 0"):
        M.hinton(zs, zt, temperature=0)
    with pytest.raises(ValueError, match=r"beta must be a real number; got 'big'"):
        M.joint_wasserstein(zs, zt, y, beta="big")
    with pytest.raises(ValueError, match=r"beta must be finite; got nan"):
        M.joint_wasserstein(zs, zt, y, beta=float("nan"))


def test_bad_choices_and_unknown_options():
    zs, zt, y = ok()
    with pytest.raises(ValueError, match=r"label_cost must be one of 'onehot', 'ce'; got 'l2'"):
        M.joint_wasserstein(zs, zt, y, label_cost="l2")
    with pytest.raises(ValueError, match=r"kernel must be one of.*got 'laplace'"):
        M.mmd(zs, zt, kernel="laplace")
    with pytest.raises(ValueError, match=r"divergence must be one of.*got 'js'"):
        M.class_gaussian(zs, zt, y, divergence="js")
    with pytest.raises(ValueError, match=r"shrinkage must be .*got 'oas'"):
        M.gaussian_kl(zs, zt, shrinkage="oas")
    with pytest.raises(ValueError, match=r"shrinkage must be a float in \[0, 1\]; got 1.5"):
        M.gaussian_kl(zs, zt, shrinkage=1.5)
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'bandwith'"):
        M.class_gaussian(zs, zt, y, divergence="kl", bandwith=1)
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'shrinkage'.*wasserstein"):
        M.class_gaussian(zs, zt, y, shrinkage=0.1)
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'foo' for gaussian_kl\(\)"):
        M.gaussian_kl(zs, zt, foo=1)
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'temp' for hinton\(\)"):
        M.hinton(zs, zt, temp=1)


def test_joint_ce_inputs():
    zs, zt, y = ok()
    ps = torch.softmax(torch.randn(8, 3), 1)
    with pytest.raises(ValueError, match=r"label_cost='ce' needs ps"):
        M.joint_wasserstein(zs, zt, y, label_cost="ce")
    with pytest.raises(ValueError, match=r"ps must hold probabilities.*not logits"):
        M.joint_wasserstein(zs, zt, y, label_cost="ce", ps=torch.randn(8, 3))
    with pytest.raises(ValueError, match=r"ps must have n=8 rows; got shape \(7, 3\)"):
        M.joint_wasserstein(zs, zt, y, label_cost="ce", ps=ps[:7])
    with pytest.raises(ValueError, match=r"y must hold class indices in \[0, 2\)"):
        M.joint_wasserstein(zs, zt, y, label_cost="ce", ps=torch.softmax(torch.randn(8, 2), 1))
    with pytest.raises(ValueError, match=r"pt must have K=3 columns"):
        M.joint_wasserstein(zs, zt, y, label_cost="ce", ps=ps, pt=torch.full((8, 4), 0.25))
    with pytest.raises(ValueError, match=r"ps and pt are only used with label_cost='ce'"):
        M.joint_wasserstein(zs, zt, y, ps=ps)


def test_bad_weights():
    zs, zt, _ = ok()
    with pytest.raises(ValueError, match=r"a must sum to 1; got sum 2"):
        M.wasserstein(zs, zt, a=np.full(8, 0.25))
    with pytest.raises(ValueError, match=r"b must have shape \(8,\).*\(7,\)"):
        M.wasserstein(zs, zt, b=np.full(7, 1 / 7))
    with pytest.raises(ValueError, match=r"a must hold finite nonnegative weights"):
        M.wasserstein(zs, zt, a=np.array([-0.5, 1.5] + [0.0] * 6))


def test_validate_false_skips_only_the_finite_check():
    zs, zt, y = ok()
    zs[0, 0] = float("nan")
    assert torch.isnan(M.gaussian_wasserstein(zs, zt, diagonal=True, validate=False))
    with pytest.raises(ValueError, match="same feature dimension"):
        M.gaussian_wasserstein(zs, zt[:, :2], validate=False)


def test_outputs_are_scalars_on_the_input_dtype():
    zs, zt, y = ok()
    for name, fn in FEATURE_FNS.items():
        v = fn(zs, zt, y)
        assert v.shape == () and v.dtype == torch.float32, name


# --------------------------------------------------------------------------- registry


def test_registry_has_one_name_per_function():
    # every registered metric is exported under its registry name, and every Table 1 row
    # names a registered metric
    for name in M.METRICS:
        assert getattr(M, name).__name__ == name
    assert set(M.TABLE1_METRICS.values()) <= set(M.METRICS)
    assert not set(M.ALIASES) & set(M.METRICS)


@pytest.mark.parametrize("old", sorted(M.ALIASES))
def test_former_names_warn_and_give_the_same_metric(old):
    zs, zt, y = ok(12, 5)
    new = M.ALIASES[old]
    args = (zs, zt) if new == "hinton" else (zs, zt, y)
    with pytest.warns(DeprecationWarning, match=new):
        value = getattr(M, old)(*args)
    torch.testing.assert_close(value, getattr(M, new)(*args))
    with pytest.warns(DeprecationWarning, match=new):
        metric = M.get_metric(old)
    assert metric.name == new


def test_metric_declares_what_it_needs():
    zs, zt, y = ok(12, 5)
    ps = torch.softmax(zs[:, :3], 1)
    plain = M.get_metric("joint_wasserstein")
    jdot = M.get_metric("joint_wasserstein", label_cost="ce")
    assert (plain.needs_student_probs, jdot.needs_student_probs) == (False, True)
    assert plain.uses_labels and not M.get_metric("mmd").uses_labels
    with pytest.raises(ValueError, match="needs ps"):
        jdot(zs, zt, y)
    with pytest.raises(ValueError, match="takes no ps"):
        plain(zs, zt, y, ps=ps)
    bad = zs.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        plain(bad, zt, y)
    assert not torch.isfinite(M.get_metric("mmd")(bad, zt, validate=False))


def test_get_metric_callables_match_functions():
    zs, zt, y = ok(12, 5)
    expected = {
        "wasserstein": M.wasserstein(zs, zt),
        "class_wasserstein": M.class_wasserstein(zs, zt, y),
        "joint_wasserstein": M.joint_wasserstein(zs, zt, y),
        "gaussian_wasserstein": M.gaussian_wasserstein(zs, zt),
        "gaussian_kl": M.gaussian_kl(zs, zt),
        "class_gaussian": M.class_gaussian(zs, zt, y),
        "mmd": M.mmd(zs, zt),
        "hinton": M.hinton(zs, zt),
    }
    for name, value in expected.items():
        fn = M.get_metric(name)
        assert fn.name == name
        assert fn.inputs == ("logits" if name == "hinton" else "features")
        torch.testing.assert_close(fn(zs, zt, y), value)
    fn = M.get_metric("class_gaussian", divergence="kl", diagonal=True, shrinkage=0.2)
    torch.testing.assert_close(
        fn(zs, zt, y),
        M.class_gaussian(zs, zt, y, divergence="kl", diagonal=True, shrinkage=0.2),
    )
    fn = M.get_metric("joint_wasserstein", label_cost="ce", beta=0.5)
    ps = torch.softmax(zs[:, :3], 1)
    torch.testing.assert_close(
        fn(zs, zt, y, ps=ps), M.joint_wasserstein(zs, zt, y, beta=0.5, label_cost="ce", ps=ps)
    )


def test_get_metric_errors():
    with pytest.raises(ValueError, match=r"unknown metric 'wasserstien'.*wasserstein.*hinton"):
        M.get_metric("wasserstien")
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) 'diagonal' for metric 'wasserstein'"
    ):
        M.get_metric("wasserstein", diagonal=True)
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'temp'.*allowed: temperature"):
        M.get_metric("hinton", temp=2)
    with pytest.raises(ValueError, match=r"beta must be >= 0; got -3"):
        M.get_metric("joint_wasserstein", beta=-3)
    with pytest.raises(ValueError, match=r"diagonal must be True or False; got 'yes'"):
        M.get_metric("gaussian_wasserstein", diagonal="yes")
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'eps'"):
        M.get_metric("class_gaussian", eps=1e-3)  # KL option on the (default) Wasserstein variant
    with pytest.raises(ValueError, match=r"needs labels y"):
        M.get_metric("class_wasserstein")(*ok()[:2])


# --------------------------------------------------------------------------- benchmark


def test_bench_metrics_rows_and_cli(capsys, tmp_path):
    rows = bench.bench_metrics(n=8, d=16, repeats=1, warmup=0, step_repeats=1)
    assert [r["metric"] for r in rows] == list(M.METRICS)
    for r in rows:
        assert (
            r["median_ms"] > 0 and r["step_ms"] > 0 and r["ratio"] == r["median_ms"] / r["step_ms"]
        )
    assert {r["table1"] for r in rows} >= {"E1", "E2", "E3", "G1", "G2", "G3"}
    out = tmp_path / "rows.json"
    argv = ["metrics", "--n", "6", "--d", "5", "--repeats", "1", "--warmup", "0"]
    argv += ["--step-repeats", "0", "--metric", "mmd", "--json", str(out)]
    assert bench.main(argv) == 0
    assert "mmd" in capsys.readouterr().out and out.exists()
