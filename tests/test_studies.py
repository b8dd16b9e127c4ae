"""The Metrics chapter's studies (kd2m.book.studies) at small sizes: each claim holds, and a
wrong value is caught."""

import numpy as np
import pytest

from kd2m.book import studies


@pytest.fixture(scope="module")
def batch():
    return studies.labelled_batch(60, 6, 3, seed=0)


def test_every_metric_matches_its_reference(batch):
    zs, zt, y = batch
    head = studies.random_head(6, 3, seed=0)
    claims = (
        studies.closed_form_claims(6, seed=0)
        + studies.class_conditional_claims(zs, zt, y)
        + studies.baseline_claims(zs, zt, head)
    )
    assert len(claims) == 12 and all(c.holds for c in claims), studies.claims_table(claims)
    assert str(claims[0]).endswith(": True")


def test_a_claim_fails_on_a_wrong_value():
    claim = studies._claim_close("x equals 1", 1.001, 1.0, rtol=1e-6)
    assert not claim.holds and str(claim).endswith(": False")
    assert claim.details["relative error"] == pytest.approx(1e-3)


def test_joint_beta_study_runs_between_its_limits(batch):
    zs, zt, y = batch
    result = studies.joint_beta_study(zs, zt, y, n_betas=6)
    assert result["balanced"] and len(result["values"]) == 7
    claims = studies.joint_beta_claims(result)
    assert all(c.holds for c in claims), studies.claims_table(claims)


def test_kl_regularisation_and_convergence_studies_are_seeded():
    kl = studies.kl_regularisation_study(4, [0.5, 2, 8], seed=0)
    assert np.array_equal(kl["sizes"], [2, 8, 32])
    again = studies.kl_regularisation_study(4, [0.5, 2, 8], seed=0)
    for k, v in kl["values"].items():
        np.testing.assert_array_equal(v, again["values"][k])
    conv = studies.convergence_study(2, 64, 2, seed=0)
    assert list(conv["sizes"]) == [16, 32, 64] and conv["truth"] > 0
    assert set(conv["rate"]) == {"empirical W2^2 (eq. 3)", "Gaussian plug-in W2^2 (eq. 6)"}


def test_metric_table_evaluates_every_registered_metric_as_the_trainer_does(batch):
    """Every metric of the registry gets the inputs it declares (logits, probabilities)."""
    import torch

    from kd2m import metrics

    zs, zt, y = batch
    head = studies.random_head(6, 3, seed=0)
    rows = {r["metric"]: r["value"] for r in studies.metric_table(zs, zt, y, head)}
    assert set(rows) == set(metrics.METRICS)
    assert all(np.isfinite(v) for v in rows.values()), rows
    ps, pt = torch.softmax(zs @ head, dim=1), torch.softmax(zt @ head, dim=1)
    joint = metrics.joint_wasserstein(zs, zt, y, ps=ps, pt=pt)
    assert rows["joint_wasserstein"] == pytest.approx(float(joint), rel=1e-12)
