"""Post-hoc calibration of the roadwork logit and the choice of the decision threshold.

Fitted on the ``val_calib`` split only, after training; evaluated on ``val_test``. The model
emits one logit ``z`` per image (P(roadwork) = sigmoid(z)).

* Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"):
  p = sigmoid(z / T) with the single T > 0 that minimises the NLL on the calibration split.
  It changes confidence, never the decision at 0.5 (the sign of z is kept) nor the ranking.
* Dirichlet calibration with the ODIR penalty (Kull et al. 2019, "Beyond temperature scaling"):
  q = softmax(W ln p + b) on p = [1 - sigmoid(z), sigmoid(z)], fitted by penalised NLL with
  lambda / (k(k-1)) * sum_{i != j} w_ij^2 + mu / k * sum_j b_j^2, lambda and mu chosen by
  stratified cross-validation on the calibration split. With two classes it reduces to beta
  calibration (Kull et al. 2017): logit(q) = a ln p - b ln(1 - p) + c. As in the authors' reference
  code (dirichletcal, ``MultinomialRegression`` with ``ref_row=True`` and ``reg_norm=True``), the
  last row of [W | b] is fixed at zero: softmax only sees row differences, and without the reference
  row a full 2x2 W can move its weight onto the diagonal, where the penalty makes lambda a no-op. With
  the reference row the penalty is lambda / 2 * a^2 + mu / 2 * c^2, so both shrink the map.
* A decision threshold can be chosen on the same split for a decision metric (off by default:
  the threshold stays 0.5). The subnet validator always rounds at 0.5, so a policy with another
  threshold must submit ``validator_probabilities`` (the logit shifted by ``logit(threshold)``)
  for the threshold to count.

Both calibrators map the aggregated logit to a calibrated logit of the beta form above
(temperature: a = b = 1 / T, c = 0), exposed as ``CalibrationPolicy.logit_map`` so that an
exported graph applies either one with the same three numbers. The policy also carries the
conformal thresholds fitted on the calibrated val_calib probabilities (``stage1_core.evaluation.conformal``)
and the val_calib sample itself, so its reliability before/after can be drawn from the artifact.
"""

from __future__ import annotations

import html
import logging
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, computed_field
from scipy.optimize import minimize
from scipy.special import expit, log_expit, logit, softmax
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from stage1_core.common.config import StrictConfig
from stage1_core.common.logit_map import VALIDATOR_THRESHOLD, LogitMap, finite_logits
from stage1_core.common.metrics import (
    as_binary_labels,
    as_finite_vector,
    as_probabilities,
    decision_metrics_from_counts,
)
from stage1_core.evaluation.conformal import (
    ConformalConfig,
    ConformalPolicy,
    TooFewCalibrationSamples,
    fit_conformal_policy,
)
from stage1_core.evaluation.plots import reliability_diagram_png

logger = logging.getLogger(__name__)

ThresholdObjective = Literal["mcc", "accuracy", "balanced_accuracy"]
CalibrationMethod = Literal["temperature", "dirichlet"]


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
        z, y = _calibration_sample(logits, labels, "temperature scaling")
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

    @property
    def logit_map(self) -> LogitMap:
        """z / T = (ln p - ln(1 - p)) / T: the beta form with a = b = 1 / T, c = 0."""
        return LogitMap.from_temperature(self.temperature)

    @property
    def parameters(self) -> dict[str, float]:
        """Fitted parameters, for metadata and reports."""
        return {"temperature": self.temperature}

    def calibrated_logits(self, logits: np.ndarray) -> np.ndarray:
        """z / T, any shape: the logit of the calibrated P(roadwork).

        Raises:
            ValueError: a NaN or infinite logit (the validator scores a NaN answer 0: fail loudly instead).
        """
        return finite_logits(logits) / self.temperature

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated P(roadwork) = sigmoid(z / T)."""
        return expit(self.calibrated_logits(logits))


class DirichletConfig(StrictConfig):
    """ODIR penalty grid searched by stratified k-fold cross-validation (as Kull et al. 2019 choose lambda and mu).

    Every (lambda, mu) pair of the grid is searched. The paper's deep-network experiments search lambda over
    {1, 2.5, 5} x 10^-5..10^6 and mu over 10^-5..10^6; the default keeps the decades where the fitted map
    still moves on a calibration split of a few hundred images (below 1e-3 the penalty changes the map by
    less than 1e-3 in a, b and c; above 10 it pins a and c near 0).
    """

    odir_lambdas: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    odir_mus: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    cv_folds: int = Field(5, ge=2)
    seed: int = 0


class ODIRCandidate(BaseModel):
    """One (lambda, mu) of the searched grid and its mean held-out NLL."""

    model_config = ConfigDict(frozen=True)

    odir_lambda: float
    odir_mu: float
    cv_nll: float


class DirichletCalibrator(BaseModel):
    """Dirichlet calibration with the ODIR penalty (Kull et al. 2019) of p = [1 - sigmoid(z), sigmoid(z)].

    ``weights`` (k x k) and ``bias`` (k) give q = softmax(weights @ ln p + bias), with the last row (roadwork)
    fixed at zero as the reference code does; the penalty strengths ``odir_lambda`` (off-diagonal weights)
    and ``odir_mu`` (bias) were chosen by cross-validated NLL on the calibration split, over ``searched``.
    """

    model_config = ConfigDict(frozen=True)

    method: Literal["dirichlet"] = "dirichlet"
    weights: list[list[float]]
    bias: list[float]
    odir_lambda: float = Field(ge=0.0)
    odir_mu: float = Field(ge=0.0)
    cv_nll: float | None  # mean held-out NLL of the chosen (lambda, mu); None when the split was too small for CV
    searched: list[ODIRCandidate] = []  # the grid searched, with each point's held-out NLL (empty without CV)
    nll_before: float  # mean NLL of sigmoid(z) on the calibration split
    nll_after: float  # mean NLL of the calibrated probabilities on the calibration split (penalty excluded)
    n_samples: int

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray, config: DirichletConfig | None = None) -> DirichletCalibrator:
        """Choose (lambda, mu) on the grid by stratified k-fold NLL, then refit on the whole calibration split.

        Raises:
            ValueError: bad input (as :meth:`TemperatureScaler.fit`) or labels of one class only.
        """
        config = config or DirichletConfig()
        z, y = _calibration_sample(logits, labels, "Dirichlet calibration")
        # One BLAS thread: the products are tiny, and threads that spin on a shared machine made each fit
        # 50-100x slower (measured: 40-77 ms of CPU per fit against 0.8 ms).
        with threadpool_limits(limits=1, user_api="blas"):
            return cls._fit(z, y, config)

    @classmethod
    def _fit(cls, z: np.ndarray, y: np.ndarray, config: DirichletConfig) -> DirichletCalibrator:
        features = _log_class_probabilities(z)
        grid = [(lam, mu) for lam in config.odir_lambdas for mu in config.odir_mus]
        folds = min(config.cv_folds, int(np.bincount(y).min()))
        cv_nll, searched = None, []
        if folds >= 2:
            splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
            splits = list(splitter.split(features, y))
            held_out = [
                float(
                    np.mean(
                        [
                            _nll(_fit_dirichlet(features[train], y[train], lam, mu), features[test], y[test])
                            for train, test in splits
                        ]
                    )
                )
                for lam, mu in grid
            ]
            best = int(np.argmin(held_out))
            cv_nll = held_out[best]
            searched = [
                ODIRCandidate(odir_lambda=lam, odir_mu=mu, cv_nll=nll) for (lam, mu), nll in zip(grid, held_out)
            ]
        else:
            best = len(grid) - 1  # the strongest penalty of the grid: the safest choice without held-out data
            logger.warning(
                "Dirichlet calibration: the rarer class has %d sample(s) in val_calib, too few for %d-fold CV; "
                "using the strongest ODIR penalty of the grid (lambda=%g, mu=%g)",
                folds,
                config.cv_folds,
                *grid[best],
            )
        lam, mu = grid[best]
        params = _fit_dirichlet(features, y, lam, mu)
        weights, bias = _unpack(params)
        return cls(
            weights=weights.tolist(),
            bias=bias.tolist(),
            odir_lambda=lam,
            odir_mu=mu,
            cv_nll=cv_nll,
            searched=searched,
            nll_before=float(np.mean(np.logaddexp(0.0, z) - y * z)),
            nll_after=_nll(params, features, y),
            n_samples=int(y.size),
        )

    @property
    def logit_map(self) -> LogitMap:
        """logit(q) = s_1 - s_0 with s = W ln p + b: a = w11 - w01, b = w00 - w10, c = b1 - b0 (beta calibration)."""
        w, bias = np.asarray(self.weights), np.asarray(self.bias)
        return LogitMap(a=float(w[1, 1] - w[0, 1]), b=float(w[0, 0] - w[1, 0]), c=float(bias[1] - bias[0]))

    @property
    def parameters(self) -> dict[str, float]:
        """Fitted parameters (and the beta form they reduce to), for metadata and reports."""
        beta = self.logit_map
        weights = {f"w{i}{j}": value for i, row in enumerate(self.weights) for j, value in enumerate(row)}
        return weights | {
            "b0": self.bias[0],
            "b1": self.bias[1],
            "beta_a": beta.a,
            "beta_b": beta.b,
            "beta_c": beta.c,
            "odir_lambda": self.odir_lambda,
            "odir_mu": self.odir_mu,
            "odir_grid_points": float(len(self.searched)),
        }

    def class_probabilities(self, logits: np.ndarray) -> np.ndarray:
        """softmax(W ln p + b): ``[..., 2]`` calibrated probabilities of (no roadwork, roadwork)."""
        features = _log_class_probabilities(finite_logits(logits))
        return softmax(features @ np.asarray(self.weights).T + np.asarray(self.bias), axis=-1)

    def calibrated_logits(self, logits: np.ndarray) -> np.ndarray:
        """The logit of the calibrated P(roadwork), any shape (the beta form of :attr:`logit_map`)."""
        return self.logit_map.apply(logits)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated P(roadwork)."""
        return expit(self.calibrated_logits(logits))


Calibrator = Annotated[TemperatureScaler | DirichletCalibrator, Field(discriminator="method")]


def _calibration_sample(logits: np.ndarray, labels: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated (logits, labels) of a calibration split holding both classes."""
    y = as_binary_labels(labels)
    z = as_finite_vector(logits, name="logits", length=y.size)
    if y.min() == y.max():
        raise ValueError(
            f"labels: all {y.size} calibration samples are class {int(y[0])}; {method} needs both classes in val_calib"
        )
    return z, y


def _log_class_probabilities(z: np.ndarray) -> np.ndarray:
    """``[..., 2]`` = (ln(1 - p), ln p) of p = sigmoid(z), computed from z without clipping."""
    return np.stack([log_expit(-z), log_expit(z)], axis=-1)


def _unpack(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) from the free parameters (w00, w01, b0): the roadwork row of [W | b] is the zero reference row."""
    return np.array([[params[0], params[1]], [0.0, 0.0]]), np.array([params[2], 0.0])


def _nll(params: np.ndarray, features: np.ndarray, y: np.ndarray) -> float:
    """Mean NLL of softmax(W ln p + b) on (features, y), without the penalty."""
    weights, bias = _unpack(params)
    scores = features @ weights.T + bias
    return float(np.mean(np.logaddexp(scores[:, 0], scores[:, 1]) - scores[np.arange(y.size), y]))


def _fit_dirichlet(features: np.ndarray, y: np.ndarray, lam: float, mu: float) -> np.ndarray:
    """Minimise mean NLL + lam / (k(k-1)) sum_{i!=j} w_ij^2 + mu / k sum_j b_j^2 (k = 2) by L-BFGS, exact gradient.

    The free parameters are row 0 of [W | b] (w00, w01, b0); row 1 is the zero reference row of dirichletcal
    (``ref_row=True``), so the only off-diagonal weight is w01 = -a and the only bias b0 = -c: the penalty
    is lam / 2 * w01^2 + mu / 2 * b0^2. Starts from the identity map (q = p: w00 = 1, w01 = -1, b0 = 0), as the
    reference code. The NLL is that of a logistic regression on (ln(1 - p), ln p, 1), so the objective is convex.
    """
    k = 2
    onehot = np.eye(k)[y]

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        weights, bias = _unpack(params)
        scores = features @ weights.T + bias
        log_norm = np.logaddexp(scores[:, 0], scores[:, 1])
        nll = np.mean(log_norm - scores[np.arange(y.size), y])
        residual = (np.exp(scores[:, 0] - log_norm) - onehot[:, 0]) / y.size  # d NLL / d s_0 per sample
        penalty = lam / (k * (k - 1)) * params[1] ** 2 + mu / k * params[2] ** 2
        gradient = np.array(
            [
                residual @ features[:, 0],
                residual @ features[:, 1] + 2.0 * lam / (k * (k - 1)) * params[1],
                residual.sum() + 2.0 * mu / k * params[2],
            ]
        )
        return float(nll + penalty), gradient

    result = minimize(objective, x0=np.array([1.0, -1.0, 0.0]), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    if not result.success:  # typically a separable split: the unpenalised diagonal grows without bound
        logger.warning(
            "Dirichlet fit (lambda=%g, mu=%g) did not converge (%s); keeping its last iterate", lam, mu, result.message
        )
    return result.x


class ThresholdChoice(BaseModel):
    """A decision threshold chosen on the calibration split, and what it buys over the validator's 0.5."""

    model_config = ConfigDict(frozen=True)

    objective: ThresholdObjective
    threshold: float = Field(ge=0.0, le=1.0)
    value: float  # objective at ``threshold``
    value_at_default: float  # objective at 0.5


class CalibrationConfig(StrictConfig):
    """How ``fit_calibration_policy`` calibrates: temperature bounds, and the threshold objective (None keeps 0.5).

    NATIX data are 80-90% roadwork while validator challenges are 50/50: MCC and accuracy optima
    move with the class balance, balanced accuracy's does not, so it is the objective that
    transfers from val_calib to the validator.
    """

    method: CalibrationMethod = "temperature"
    threshold_objective: ThresholdObjective | None = None
    temperature_bounds: tuple[float, float] = (1e-2, 1e2)
    dirichlet: DirichletConfig = DirichletConfig()
    conformal: ConformalConfig | None = ConformalConfig()  # None: no conformal sets / SCRC
    n_bins: int = Field(15, ge=1)  # reliability diagrams of the policy artifact


class CalibrationSample(BaseModel):
    """The val_calib sample a policy was fitted on, kept to draw its reliability before and after."""

    model_config = ConfigDict(frozen=True)

    labels: list[int]
    logits: list[float]


class CalibrationPolicy(BaseModel):
    """What a deployed model applies to its logit: a calibrator, a decision threshold and conformal thresholds."""

    model_config = ConfigDict(frozen=True)

    calibrator: Calibrator
    threshold_choice: ThresholdChoice | None = None  # None: the validator's 0.5
    conformal: ConformalPolicy | None = None
    conformal_undefined_reason: str | None = None  # why ``conformal`` is None when it was asked for
    sample: CalibrationSample | None = None
    n_bins: int = 15

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

    @property
    def logit_map(self) -> LogitMap:
        """The calibration as ``sigmoid(a * logsigmoid(z) - b * logsigmoid(-z) + c)``: what an export applies."""
        return self.calibrator.logit_map

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
        return expit(self.calibrator.calibrated_logits(logits) - logit(self.threshold))

    def metadata(self) -> dict[str, float | int | str | bool]:
        """Method, parameters, NLL before/after and conformal thresholds: the artifact's summary."""
        values: dict[str, float | int | str | bool] = {
            "method": self.method,
            "nll_before": self.calibrator.nll_before,
            "nll_after": self.calibrator.nll_after,
            "n_calibration": self.calibrator.n_samples,
            "threshold": self.threshold,
        }
        values |= self.calibrator.parameters
        if self.conformal is not None:
            values |= self.conformal.thresholds()
        elif self.conformal_undefined_reason:
            values["conformal"] = f"undefined: {self.conformal_undefined_reason}"
        return values

    def visualizations(self) -> dict[str, str | bytes]:
        """Reliability on val_calib before and after calibration (PNG), and a parameter table (HTML)."""
        files: dict[str, str | bytes] = {"calibration.html": self._summary_html()}
        if self.sample is not None:
            labels, logits = np.asarray(self.sample.labels), np.asarray(self.sample.logits)
            files["reliability_val_calib_before.png"] = reliability_diagram_png(
                labels, expit(logits), n_bins=self.n_bins
            )
            files["reliability_val_calib_after.png"] = reliability_diagram_png(
                labels, self.probabilities(logits), n_bins=self.n_bins
            )
        return files

    def _summary_html(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{value:.6g}</td></tr>"
            if isinstance(value, float) and not isinstance(value, bool)
            else f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(value))}</td></tr>"
            for name, value in self.metadata().items()
        )
        return (
            "<html><body style='font-family:sans-serif'>"
            f"<h2>Calibration policy: {html.escape(self.method)}</h2>"
            "<p>Fitted on val_calib only; NLL of the raw sigmoid(z) and of the calibrated probabilities on that split. "
            "Conformal thresholds (q_hat per score, SCRC selection and risk thresholds) "
            "apply to the calibrated probabilities.</p>"
            f"<table border=1 cellpadding=4><tr><th>field</th><th>value</th></tr>{rows}</table></body></html>"
        )


def choose_threshold(labels: np.ndarray, probs: np.ndarray, objective: ThresholdObjective = "mcc") -> ThresholdChoice:
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
    """Fit the calibrator on the calibration split, then the thresholds on its calibrated probabilities.

    The thresholds are the decision threshold and the conformal thresholds.
    The conformal thresholds reuse the split the calibrator was fitted on: the calibrator has one
    (temperature) or six (Dirichlet) parameters, so the dependence it adds between the conformal
    scores is small, but the finite-sample guarantee is then approximate rather than exact.
    A split too small for the conformal quantile leaves ``conformal`` None with the reason.
    """
    config = config or CalibrationConfig()
    calibrator: TemperatureScaler | DirichletCalibrator
    if config.method == "temperature":
        calibrator = TemperatureScaler.fit(logits, labels, bounds=config.temperature_bounds)
    else:
        calibrator = DirichletCalibrator.fit(logits, labels, config.dirichlet)
    logger.info(
        "%s calibration %s: NLL %.4f -> %.4f on %d samples",
        calibrator.method,
        calibrator.parameters,
        calibrator.nll_before,
        calibrator.nll_after,
        calibrator.n_samples,
    )
    probs = calibrator.apply(logits)
    conformal, reason = None, None
    if config.conformal is not None:
        try:
            conformal = fit_conformal_policy(labels, probs, config.conformal)
        except TooFewCalibrationSamples as error:
            reason = str(error)
            logger.warning("conformal prediction skipped: %s", reason)
    choice = None
    if config.threshold_objective is not None:
        choice = choose_threshold(labels, probs, config.threshold_objective)
        logger.info(
            "threshold %.4f: %s %.4f (%.4f at 0.5)",
            choice.threshold,
            choice.objective,
            choice.value,
            choice.value_at_default,
        )
    sample = CalibrationSample(labels=[int(label) for label in labels], logits=[float(z) for z in logits])
    return CalibrationPolicy(
        calibrator=calibrator,
        threshold_choice=choice,
        conformal=conformal,
        conformal_undefined_reason=reason,
        sample=sample,
        n_bins=config.n_bins,
    )


def _nll_and_gradient(log_temperature: np.ndarray, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean binary NLL of sigmoid(z / T) and its derivative in log T (s = z / T, ds/dlogT = -s)."""
    s = z / np.exp(log_temperature[0])
    nll = np.mean(np.logaddexp(0.0, s) - y * s)
    gradient = np.mean((expit(s) - y) * -s)
    return float(nll), np.array([gradient])
