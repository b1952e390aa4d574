"""Temperature scaling recovers a known temperature; the chosen threshold is optimal and beats 0.5 where it should."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit, log_expit
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression

from stage1_core.evaluation.calibration import (
    CalibrationConfig,
    CalibrationPolicy,
    DirichletCalibrator,
    DirichletConfig,
    TemperatureScaler,
    choose_threshold,
    fit_calibration_policy,
)


def calibrated_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True logits z and labels drawn from sigmoid(z): sigmoid(z) is perfectly calibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    return z, (rng.random(n) < expit(z)).astype(int)


SKLEARN_OBJECTIVES = {
    "mcc": skm.matthews_corrcoef,
    "accuracy": skm.accuracy_score,
    "balanced_accuracy": skm.balanced_accuracy_score,
}


@pytest.mark.parametrize("factor", [2.5, 0.5])  # overconfident, then underconfident logits
def test_temperature_recovers_the_scaling_factor(factor: float) -> None:
    z, labels = calibrated_logits(20_000, seed=0)
    scaler = TemperatureScaler.fit(z * factor, labels)
    assert scaler.temperature == pytest.approx(factor, rel=0.05)
    assert scaler.n_samples == 20_000
    assert scaler.nll_after < scaler.nll_before


def test_reported_nll_is_the_log_loss_before_and_after() -> None:
    z, labels = calibrated_logits(3000, seed=1)
    logits = 3.0 * z
    scaler = TemperatureScaler.fit(logits, labels)
    assert scaler.nll_before == pytest.approx(skm.log_loss(labels, expit(logits)), rel=1e-6)
    assert scaler.nll_after == pytest.approx(skm.log_loss(labels, scaler.apply(logits)), rel=1e-6)
    # the optimum: a slightly different temperature does worse
    for other in (0.9 * scaler.temperature, 1.1 * scaler.temperature):
        assert skm.log_loss(labels, expit(logits / other)) > scaler.nll_after


def test_temperature_keeps_the_decision_at_half() -> None:
    z, labels = calibrated_logits(1000, seed=2)
    scaler = TemperatureScaler.fit(4.0 * z, labels)
    np.testing.assert_array_equal(scaler.apply(4.0 * z) > 0.5, z > 0)
    with pytest.raises(ValueError, match="NaN or infinite.*index \\(1, 0\\)"):
        scaler.apply(np.array([[0.5], [np.nan]]))


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        ([0.3, -1.0, 2.0], [1, 1, 1], "both classes"),
        ([0.3, np.nan, 2.0], [1, 0, 1], "logits.*NaN.*row 1"),
        ([0.3, 2.0], [1, 0, 1], "length 2 does not match the 3 labels"),
        ([0.3, 1.0, 2.0], [1, 0, 3], "not 0 or 1"),
    ],
)
def test_fit_names_bad_input(logits: list, labels: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TemperatureScaler.fit(np.array(logits), np.array(labels))


@pytest.mark.parametrize("objective", ["mcc", "accuracy", "balanced_accuracy"])
def test_threshold_beats_half_on_shifted_probabilities(objective: str) -> None:
    z, labels = calibrated_logits(4000, seed=3)
    probs = expit(z + 2.0)  # systematically too high: the best cut lies well above 0.5
    choice = choose_threshold(labels, probs, objective)
    score = SKLEARN_OBJECTIVES[objective]
    assert choice.threshold > 0.6
    assert choice.value == pytest.approx(score(labels, probs > choice.threshold))
    assert choice.value_at_default == pytest.approx(score(labels, probs > 0.5))
    assert choice.value > choice.value_at_default + 0.03


@pytest.mark.parametrize("objective", ["mcc", "accuracy", "balanced_accuracy"])
def test_no_threshold_does_better(objective: str) -> None:
    z, labels = calibrated_logits(300, seed=4)
    probs = np.round(expit(1.5 * z - 0.7), 3)  # ties included
    choice = choose_threshold(labels, probs, objective)
    score = SKLEARN_OBJECTIVES[objective]
    every_cut = [score(labels, probs > t) for t in np.r_[-1.0, np.unique(probs)]]
    assert choice.value == pytest.approx(max(every_cut))
    assert not np.any(probs == choice.threshold)  # the cut sits between samples


def test_threshold_needs_both_classes_except_for_accuracy() -> None:
    labels, probs = np.ones(20, dtype=int), np.linspace(0.1, 0.9, 20)
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(labels, probs, "mcc")
    assert choose_threshold(labels, probs, "accuracy").value == 1.0


def test_policy_decisions_survive_the_validators_half_cut_and_a_round_trip() -> None:
    z, labels = calibrated_logits(3000, seed=5)
    logits = 2.0 * z + 1.5  # overconfident and shifted
    policy = fit_calibration_policy(logits, labels, CalibrationConfig(threshold_objective="mcc"))
    assert policy.method == "temperature"
    assert policy.threshold > 0.5
    decisions = policy.decisions(logits)
    np.testing.assert_array_equal(decisions, policy.probabilities(logits) > policy.threshold)
    np.testing.assert_array_equal(policy.validator_probabilities(logits) > 0.5, decisions)
    assert skm.matthews_corrcoef(labels, decisions) == pytest.approx(policy.threshold_choice.value)

    restored = CalibrationPolicy.model_validate_json(policy.model_dump_json())
    assert restored == policy
    np.testing.assert_array_equal(restored.probabilities(logits), policy.probabilities(logits))


def test_default_policy_keeps_the_validators_threshold() -> None:
    z, labels = calibrated_logits(1000, seed=6)
    policy = fit_calibration_policy(3.0 * z, labels)
    assert policy.threshold == 0.5 and policy.threshold_choice is None
    np.testing.assert_allclose(policy.validator_probabilities(3.0 * z), policy.probabilities(3.0 * z))


def beta_miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Model logits whose true probability is a beta map of the model's p (asymmetric: temperature cannot fix it)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.5, 2.5, n)
    true_logit = 0.6 * log_expit(z) - 2.0 * log_expit(-z) - 0.4
    return z, (rng.random(n) < expit(true_logit)).astype(int)


def test_dirichlet_improves_held_out_nll_beyond_temperature() -> None:
    z, labels = beta_miscalibrated(4000, seed=7)
    fit, held = slice(0, 2000), slice(2000, 4000)
    dirichlet = DirichletCalibrator.fit(z[fit], labels[fit])
    temperature = TemperatureScaler.fit(z[fit], labels[fit])
    raw_nll = skm.log_loss(labels[held], expit(z[held]))
    dirichlet_nll = skm.log_loss(labels[held], dirichlet.apply(z[held]))
    oracle_nll = skm.log_loss(labels[held], expit(0.6 * log_expit(z[held]) - 2.0 * log_expit(-z[held]) - 0.4))
    assert dirichlet_nll < skm.log_loss(labels[held], temperature.apply(z[held])) - 0.01
    assert dirichlet_nll < raw_nll - 0.02
    assert dirichlet_nll == pytest.approx(oracle_nll, abs=0.015)
    assert dirichlet.nll_after < dirichlet.nll_before
    assert dirichlet.nll_before == pytest.approx(skm.log_loss(labels[fit], expit(z[fit])), rel=1e-6)
    assert dirichlet.nll_after == pytest.approx(skm.log_loss(labels[fit], dirichlet.apply(z[fit])), rel=1e-6)


def test_dirichlet_reduces_to_beta_calibration() -> None:
    z, labels = beta_miscalibrated(3000, seed=8)
    tiny = DirichletConfig(odir_lambdas=(1e-8,), odir_mus=(1e-8,))
    dirichlet = DirichletCalibrator.fit(z, labels, tiny)
    # softmax(W ln p + b)[1] is sigmoid of the beta form a ln p - b ln(1 - p) + c
    beta = dirichlet.logit_map
    np.testing.assert_allclose(
        dirichlet.class_probabilities(z)[:, 1],
        expit(beta.a * log_expit(z) - beta.b * log_expit(-z) + beta.c),
        rtol=1e-10,
    )
    np.testing.assert_allclose(dirichlet.class_probabilities(z).sum(axis=1), 1.0)
    # beta calibration fitted directly (Kull et al. 2017: logistic regression on ln p and -ln(1 - p)) gives the same map
    reference = LogisticRegression(C=1e8, tol=1e-10, max_iter=10_000).fit(
        np.column_stack([log_expit(z), -log_expit(-z)]), labels
    )
    assert (beta.a, beta.b, beta.c) == pytest.approx((*reference.coef_[0], reference.intercept_[0]), rel=1e-3, abs=1e-3)


def dirichletcal_objective(raw: np.ndarray, log_probs: np.ndarray, labels: np.ndarray, lam: float, mu: float) -> float:
    """The authors' reference objective (dirichletcal ``MultinomialRegression._objective``, method "Full",
    ``ref_row=True``, ``reg_norm=True``), written out for k = 2: a full 2 x 3 [W | b] from which the last row
    is subtracted, mean NLL, and the ODIR penalty on the off-diagonal weights and the intercepts."""
    k = 2
    weights = raw.reshape(k, k + 1)
    weights = weights - weights[-1]  # ref_row: the last class is the reference
    scores = np.column_stack([log_probs, np.ones(len(labels))]) @ weights.T
    nll = np.mean(np.logaddexp(scores[:, 0], scores[:, 1]) - scores[np.arange(len(labels)), labels])
    off_diagonal = weights[:, :k] * (1.0 - np.eye(k))
    return nll + lam / (k * (k - 1)) * np.sum(off_diagonal**2) + mu / k * np.sum(weights[:, k] ** 2)


@pytest.mark.parametrize(("lam", "mu"), [(1e-3, 1e-3), (1.0, 1e-2), (0.1, 10.0)])
def test_dirichlet_fit_is_the_reference_codes_odir_optimum(lam: float, mu: float) -> None:
    z, labels = beta_miscalibrated(400, seed=12)
    log_probs = np.column_stack([log_expit(-z), log_expit(z)])
    identity = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])  # the reference code's identity initialisation
    reference = minimize(dirichletcal_objective, identity, args=(log_probs, labels, lam, mu), method="BFGS", tol=1e-12)
    weights = reference.x.reshape(2, 3) - reference.x.reshape(2, 3)[-1]
    expected = (weights[1, 1] - weights[0, 1], weights[0, 0] - weights[1, 0], weights[1, 2] - weights[0, 2])
    config = DirichletConfig(odir_lambdas=(lam,), odir_mus=(mu,))
    fitted = DirichletCalibrator.fit(z, labels, config).logit_map
    assert (fitted.a, fitted.b, fitted.c) == pytest.approx(expected, abs=1e-4)


def test_every_odir_penalty_of_the_grid_changes_the_fitted_map() -> None:
    """Kull et al.'s ODIR: lambda shrinks the off-diagonal weight (a, the weight of ln p in the reference-row form)
    and mu the intercept c. Each grid value gives another map, so the cross-validated search is not wasted."""
    z, labels = beta_miscalibrated(300, seed=8)
    grid = DirichletConfig()
    maps = {
        (lam, mu): DirichletCalibrator.fit(z, labels, DirichletConfig(odir_lambdas=(lam,), odir_mus=(mu,))).logit_map
        for lam in grid.odir_lambdas
        for mu in (grid.odir_mus[0], grid.odir_mus[-1])
    }
    for mu in (grid.odir_mus[0], grid.odir_mus[-1]):
        a = [maps[lam, mu].a for lam in grid.odir_lambdas]
        assert all(np.diff(a) < -1e-3), f"a must shrink with every lambda step, got {a} at mu={mu}"
    c = {mu: maps[grid.odir_lambdas[0], mu].c for mu in (grid.odir_mus[0], grid.odir_mus[-1])}
    assert abs(c[grid.odir_mus[-1]]) < 0.05 < abs(c[grid.odir_mus[0]])  # mu pins the intercept
    calibrator = DirichletCalibrator.fit(z, labels, grid)
    searched = {(point.odir_lambda, point.odir_mu) for point in calibrator.searched}
    assert searched == {(lam, mu) for lam in grid.odir_lambdas for mu in grid.odir_mus}
    assert calibrator.cv_nll == min(point.cv_nll for point in calibrator.searched)
    assert calibrator.parameters["odir_grid_points"] == 25


def test_temperature_is_the_symmetric_beta_map() -> None:
    z, labels = calibrated_logits(2000, seed=9)
    scaler = TemperatureScaler.fit(2.0 * z, labels)
    np.testing.assert_allclose(expit(scaler.logit_map.apply(2.0 * z)), scaler.apply(2.0 * z), rtol=1e-10)


def test_dirichlet_policy_round_trips_and_keeps_its_diagnostics() -> None:
    z, labels = beta_miscalibrated(600, seed=10)
    policy = fit_calibration_policy(
        z, labels, CalibrationConfig(method="dirichlet", threshold_objective="balanced_accuracy")
    )
    assert policy.method == "dirichlet" and policy.conformal is not None and policy.conformal.scrc is not None
    restored = CalibrationPolicy.model_validate_json(policy.model_dump_json())
    assert restored == policy and isinstance(restored.calibrator, DirichletCalibrator)
    np.testing.assert_allclose(restored.probabilities(z), policy.probabilities(z))
    np.testing.assert_array_equal(policy.validator_probabilities(z) > 0.5, policy.decisions(z))
    metadata = policy.metadata()
    assert metadata["method"] == "dirichlet" and metadata["nll_after"] < metadata["nll_before"]
    assert {"beta_a", "odir_lambda", "conformal_lac_q_hat", "scrc_risk_threshold"} <= set(metadata)
    files = policy.visualizations()
    assert files["reliability_val_calib_before.png"].startswith(b"\x89PNG") and files[
        "reliability_val_calib_after.png"
    ].startswith(b"\x89PNG")
    assert "dirichlet" in files["calibration.html"]


def test_small_calibration_split_keeps_the_policy_and_says_why_conformal_is_missing() -> None:
    z, labels = calibrated_logits(8, seed=11)
    labels[:2] = [0, 1]
    policy = fit_calibration_policy(z, labels, CalibrationConfig(method="dirichlet"))
    assert policy.conformal is None and "too few for alpha=0.1" in policy.conformal_undefined_reason
    assert "undefined" in str(policy.metadata()["conformal"])
    with pytest.raises(ValueError, match="both classes"):
        DirichletCalibrator.fit(z, np.ones(8, dtype=int))
