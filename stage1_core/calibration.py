"""Post-hoc calibration of the roadwork logit and the choice of the decision threshold.

Fitted on the ``val_calib`` split only, after training; evaluated on ``val_test``. The model
emits one logit ``z`` per image (P(roadwork) = sigmoid(z)).

* Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"):
  p = sigmoid(z / T) with the single T > 0 that minimises the NLL on the calibration split.
  It changes confidence, never the decision at 0.5 (the sign of z is kept) nor the ranking.
* The decision threshold is chosen on the same split for a decision metric (MCC by default).
  The subnet validator always rounds at 0.5, so a policy with another threshold must submit
  ``validator_probabilities`` (the logit shifted by ``logit(threshold)``) for the threshold to count.

``CalibrationPolicy.calibrator`` is one calibrator model with a ``method`` tag; Dirichlet
calibration with the ODIR penalty (Kull et al. 2019) would join as a second model in a union
discriminated on ``method``.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, computed_field
from scipy.optimize import minimize
from scipy.special import expit, logit

from stage1_core.metrics import as_binary_labels, as_finite_vector, as_probabilities, decision_metrics_from_counts

logger = logging.getLogger(__name__)

ThresholdObjective = Literal["mcc", "accuracy", "balanced_accuracy"]

VALIDATOR_THRESHOLD = 0.5  # the subnet validator predicts roadwork when p > 0.5


class TemperatureScaler(BaseModel):
    """Temperature scaling of the roadwork logit (Guo et al. 2017), with its fit diagnostics."""

    model_config = ConfigDict(frozen=True)

    method: Literal["temperature"] = "temperature"
    temperature: float = Field(gt=0.0)
    nll_before: float  # mean NLL of sigmoid(z) on the calibration split
    nll_after: float  # mean NLL of sigmoid(z / T) on the calibration split
    n_samples: int

    @classmethod
    def fit(
        cls, logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = (1e-2, 1e2)
    ) -> TemperatureScaler:
        """Minimise the NLL of sigmoid(z / T) over T in ``bounds`` (L-BFGS-B on log T, exact gradient).

        The NLL is convex in 1/T, so the optimum is unique. It runs off to T -> 0 when the
        calibration split is perfectly separated; the bound stops it and a warning says so.

        Raises:
            ValueError: bad input (empty, length mismatch, labels not 0/1, non-finite logits) or
                labels of one class only (the NLL then has no finite minimum).
        """
        y = as_binary_labels(labels)
        z = as_finite_vector(logits, name="logits", length=y.size)
        if y.min() == y.max():
            raise ValueError(
                f"labels: all {y.size} calibration samples are class {int(y[0])}; temperature scaling "
                "needs both classes in val_calib"
            )
        if not 0.0 < bounds[0] < bounds[1]:
            raise ValueError(f"bounds={bounds}: need 0 < lower < upper temperature")
        low, high = np.log(bounds[0]), np.log(bounds[1])
        result = minimize(
            _nll_and_gradient, x0=np.array([0.0]), args=(z, y), jac=True, method="L-BFGS-B", bounds=[(low, high)]
        )
        if not result.success:
            logger.warning("temperature fit did not converge (%s); keeping its last iterate", result.message)
        log_temperature = float(result.x[0])
        if np.isclose(log_temperature, low) or np.isclose(log_temperature, high):
            logger.warning(
                "temperature %.4g sits on the bound %s: the calibration split is (nearly) separable or the "
                "logits carry no signal; use a larger val_calib",
                np.exp(log_temperature),
                bounds,
            )
        return cls(
            temperature=float(np.exp(log_temperature)),
            nll_before=float(_nll_and_gradient(np.array([0.0]), z, y)[0]),
            nll_after=float(result.fun),
            n_samples=int(y.size),
        )

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated P(roadwork) = sigmoid(z / T)."""
        z = np.asarray(logits, dtype=np.float64)
        return expit(z / self.temperature)


class ThresholdChoice(BaseModel):
    """A decision threshold chosen on the calibration split, and what it buys over the validator's 0.5."""

    model_config = ConfigDict(frozen=True)

    objective: ThresholdObjective
    threshold: float = Field(ge=0.0, le=1.0)
    value: float  # objective at ``threshold``
    value_at_default: float  # objective at 0.5


class CalibrationConfig(BaseModel):
    """How ``fit_calibration_policy`` calibrates: temperature bounds, and the threshold objective (None keeps 0.5)."""

    threshold_objective: ThresholdObjective | None = None
    temperature_bounds: tuple[float, float] = (1e-2, 1e2)


class CalibrationPolicy(BaseModel):
    """What a deployed model applies to its logit: a calibrator and a decision threshold."""

    model_config = ConfigDict(frozen=True)

    calibrator: TemperatureScaler
    threshold_choice: ThresholdChoice | None = None  # None: the validator's 0.5

    @computed_field  # type: ignore[prop-decorator]
    @property
    def method(self) -> str:
        """Name of the calibration method."""
        return self.calibrator.method

    @computed_field  # type: ignore[prop-decorator]
    @property
    def threshold(self) -> float:
        """Decision threshold on the calibrated probability (roadwork when p > threshold)."""
        return VALIDATOR_THRESHOLD if self.threshold_choice is None else self.threshold_choice.threshold

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated P(roadwork)."""
        return self.calibrator.apply(logits)

    def decisions(self, logits: np.ndarray) -> np.ndarray:
        """True where the policy predicts roadwork."""
        return self.probabilities(logits) > self.threshold

    def validator_probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Scores to submit to the validator, whose fixed 0.5 cut then reproduces this policy's decisions.

        sigmoid(z / T - logit(threshold)) > 0.5 exactly when sigmoid(z / T) > threshold; at
        threshold 0.5 it equals ``probabilities``.
        """
        z = np.asarray(logits, dtype=np.float64)
        return expit(z / self.calibrator.temperature - logit(self.threshold))


def choose_threshold(
    labels: np.ndarray, probs: np.ndarray, objective: ThresholdObjective = "mcc"
) -> ThresholdChoice:
    """The threshold t (predict roadwork when p > t) that maximises ``objective`` on these samples.

    Every distinct decision is tried at once: candidates lie midway between consecutive distinct
    probabilities (and below the lowest / above the highest), so the chosen cut sits in the gap
    rather than on a calibration sample. Ties in the objective go to the candidate nearest 0.5.

    Raises:
        ValueError: bad input, or labels of one class with an objective that needs both.
    """
    y = as_binary_labels(labels)
    p = as_probabilities(probs, length=y.size)
    if objective != "accuracy" and y.min() == y.max():
        raise ValueError(
            f"labels: all {y.size} samples are class {int(y[0])}; {objective} needs both classes "
            "(choose the threshold on a split with both, or use objective='accuracy')"
        )
    values, rank = np.unique(p, return_inverse=True)
    positives_at = np.bincount(rank, weights=y, minlength=values.size)
    negatives_at = np.bincount(rank, minlength=values.size) - positives_at
    # Candidate k predicts roadwork for the distinct values k, k+1, ... (ascending order).
    tp = np.r_[np.cumsum(positives_at[::-1])[::-1], 0.0]
    fp = np.r_[np.cumsum(negatives_at[::-1])[::-1], 0.0]
    candidates = (np.r_[0.0, values] + np.r_[values, 1.0]) / 2.0
    scores = decision_metrics_from_counts(tp, fp, tp[0] - tp, fp[0] - fp)[objective]
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    chosen = best[np.argmin(np.abs(candidates[best] - VALIDATOR_THRESHOLD))]
    at_default = np.searchsorted(values, VALIDATOR_THRESHOLD, side="right")  # the candidate deciding as p > 0.5
    return ThresholdChoice(
        objective=objective,
        threshold=float(candidates[chosen]),
        value=float(scores[chosen]),
        value_at_default=float(scores[at_default]),
    )


def fit_calibration_policy(
    logits: np.ndarray, labels: np.ndarray, config: CalibrationConfig | None = None
) -> CalibrationPolicy:
    """Fit the calibrator on the calibration split, then choose the threshold on its calibrated probabilities."""
    config = config or CalibrationConfig()
    scaler = TemperatureScaler.fit(logits, labels, bounds=config.temperature_bounds)
    logger.info(
        "temperature %.4f: NLL %.4f -> %.4f on %d samples",
        scaler.temperature,
        scaler.nll_before,
        scaler.nll_after,
        scaler.n_samples,
    )
    choice = None
    if config.threshold_objective is not None:
        choice = choose_threshold(labels, scaler.apply(logits), config.threshold_objective)
        logger.info(
            "threshold %.4f: %s %.4f (%.4f at 0.5)",
            choice.threshold,
            choice.objective,
            choice.value,
            choice.value_at_default,
        )
    return CalibrationPolicy(calibrator=scaler, threshold_choice=choice)


def _nll_and_gradient(log_temperature: np.ndarray, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean binary NLL of sigmoid(z / T) and its derivative in log T (s = z / T, ds/dlogT = -s)."""
    s = z / np.exp(log_temperature[0])
    nll = np.mean(np.logaddexp(0.0, s) - y * s)
    gradient = np.mean((expit(s) - y) * -s)
    return float(nll), np.array([gradient])
