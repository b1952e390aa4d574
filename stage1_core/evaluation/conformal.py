"""Conformal prediction sets and selective conformal risk control for P(roadwork).

Fitted on the calibrated val_calib probabilities, measured on val_test. Definitions follow
``shared/reference/methods.md``; the class probabilities of an image are ``[1 - p, p]``.

* Split conformal prediction (Vovk et al. 2005; Angelopoulos & Bates 2021, "A gentle
  introduction"): q_hat is the ceil((n+1)(1-alpha))-th smallest calibration score and
  C(x) = {k : s(x, k) <= q_hat}, so P(y in C(x)) >= 1 - alpha on exchangeable data. The exact
  order statistic is taken (numpy's ``quantile(..., ceil((n+1)(1-alpha))/n, method="higher")``
  indexes with (n - 1) q and returns the next larger score whenever that level is below 1: valid,
  but one rank more conservative than the definition).
* Scores: LAC (Sadinle et al. 2019) s = 1 - p_y; APS (Romano et al. 2020) the probability mass
  ranked above y plus u * p_y (u ~ U(0, 1), randomised) or plus p_y (not randomised); RAPS
  (Angelopoulos et al. 2021) APS + lambda * max(0, rank(y) - k_reg) with rank 1 for the top class.
  With two classes a set is {}, {y_hat} or {0, 1}, and RAPS with k_reg >= 2 equals APS.
* Conformal risk control (Angelopoulos et al. 2022): for losses non-increasing in lambda and
  bounded by B, lambda_hat = inf{lambda : n/(n+1) R_n(lambda) + B/(n+1) <= alpha}.
* SCRC, selective conformal risk control (Xu, Guo & Wei 2025, arXiv 2512.12844), calibration-only
  variant (SCRC-I): stage 1 selects images whose confidence max(p, 1-p) reaches a threshold set
  for a target selection rate; stage 2 runs conformal risk control with the miscoverage loss of
  LAC sets on the selected calibration images only. An image is accepted when it is selected and
  its set is one class; every other image is deferred.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stage1_core.common.config import StrictConfig
from stage1_core.common.metrics import as_binary_labels, as_probabilities

ScoreName = Literal["lac", "aps", "raps"]
PredictorName = Literal["lac", "aps", "aps_randomized", "raps", "raps_randomized"]
PREDICTORS: dict[str, tuple[ScoreName, bool]] = {
    name: (name.split("_")[0], name.endswith("_randomized")) for name in get_args(PredictorName)
}  # type: ignore[misc]


class TooFewCalibrationSamples(ValueError):
    """The calibration sample cannot give a finite conformal threshold at this alpha (n < 1/alpha - 1)."""


class SCRCConfig(StrictConfig):
    """SCRC targets: the share of images to select (stage 1) and the miscoverage allowed among them (stage 2)."""

    target_selection_rate: float = Field(0.8, gt=0.0, lt=1.0)
    alpha: float = Field(0.05, gt=0.0, lt=1.0)


class ConformalConfig(StrictConfig):
    """Miscoverage level, which conformal predictors to fit, RAPS regularisation and the SCRC targets."""

    alpha: float = Field(0.1, gt=0.0, lt=1.0)
    predictors: tuple[PredictorName, ...] = ("lac", "aps", "aps_randomized", "raps")
    raps_lambda: float = Field(0.01, ge=0.0)
    raps_k_reg: int = Field(1, ge=0)
    seed: int = 0  # of the uniform draws of randomised scores
    scrc: SCRCConfig | None = SCRCConfig()


def class_probabilities(probs: np.ndarray, *, name: str = "probs") -> np.ndarray:
    """``[n, 2]`` = (1 - p, p) of a vector of P(roadwork), validated (finite, in [0, 1])."""
    p = as_probabilities(probs, name=name, length=np.asarray(probs).size)
    return np.column_stack([1.0 - p, p])


def class_scores(
    probs: np.ndarray, score: ScoreName, *, u: np.ndarray | None = None, raps_lambda: float = 0.0, raps_k_reg: int = 1
) -> np.ndarray:
    """Nonconformity score of every candidate class: ``[n, k]`` for class probabilities ``[n, k]``.

    ``u`` (one uniform per row) randomises APS/RAPS; None gives the non-randomised score (u = 1).
    For a fixed u the APS/RAPS score grows with the class's rank, so {k : score <= q} keeps the top classes.
    """
    if score == "lac":
        return 1.0 - probs
    n, k = probs.shape
    order = np.argsort(-probs, axis=1, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=1)
    weight = np.ones((n, 1)) if u is None else np.asarray(u, dtype=np.float64).reshape(n, 1)
    ranked_scores = np.cumsum(ranked, axis=1) - ranked + weight * ranked
    if score == "raps":
        ranked_scores = ranked_scores + raps_lambda * np.maximum(0, np.arange(1, k + 1) - raps_k_reg)
    scores = np.empty_like(ranked_scores)
    np.put_along_axis(scores, order, ranked_scores, axis=1)
    return scores


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """q_hat = the ceil((n+1)(1-alpha))-th smallest score (the split-conformal finite-sample quantile).

    Raises:
        TooFewCalibrationSamples: n < 1/alpha - 1, where that rank exceeds n (q_hat would be infinite).
        ValueError: empty or non-finite scores.
    """
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("conformal scores: empty calibration split; fit on a non-empty val_calib")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"conformal scores: {int(np.sum(~np.isfinite(values)))} values are NaN or infinite")
    n = values.size
    rank = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)  # the tolerance keeps (n+1)(1-alpha) = integer from rounding up
    if rank > n:
        raise TooFewCalibrationSamples(
            f"{n} calibration samples are too few for alpha={alpha}: split conformal needs n >= 1/alpha - 1 = "
            f"{1.0 / alpha - 1.0:.1f}; use a larger val_calib or a larger alpha"
        )
    return float(np.partition(values, rank - 1)[rank - 1])


class ConformalPredictor(BaseModel):
    """A fitted split-conformal predictor: its score, q_hat and what it was fitted on."""

    model_config = ConfigDict(frozen=True)

    name: PredictorName
    alpha: float
    q_hat: float
    n_calibration: int
    raps_lambda: float = 0.0
    raps_k_reg: int = 1

    @property
    def score(self) -> ScoreName:
        return PREDICTORS[self.name][0]

    @property
    def randomized(self) -> bool:
        return PREDICTORS[self.name][1]

    @classmethod
    def fit(
        cls,
        name: PredictorName,
        labels: np.ndarray,
        probs: np.ndarray,
        alpha: float,
        *,
        rng: np.random.Generator,
        raps_lambda: float = 0.0,
        raps_k_reg: int = 1,
    ) -> ConformalPredictor:
        """q_hat from the true-class scores of the calibration sample (``probs``: ``[n, k]`` class probabilities)."""
        y = as_binary_labels(labels)
        u = rng.random(y.size) if PREDICTORS[name][1] else None
        scores = class_scores(probs, PREDICTORS[name][0], u=u, raps_lambda=raps_lambda, raps_k_reg=raps_k_reg)
        q_hat = conformal_quantile(scores[np.arange(y.size), y], alpha)
        return cls(
            name=name,
            alpha=alpha,
            q_hat=q_hat,
            n_calibration=int(y.size),
            raps_lambda=raps_lambda,
            raps_k_reg=raps_k_reg,
        )

    def prediction_sets(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``[n, k]`` booleans: class k is in the set of image i (``rng`` draws u when randomised)."""
        u = rng.random(probs.shape[0]) if self.randomized else None
        return (
            class_scores(probs, self.score, u=u, raps_lambda=self.raps_lambda, raps_k_reg=self.raps_k_reg) <= self.q_hat
        )


def conformal_risk_control(losses: np.ndarray, lambdas: np.ndarray, alpha: float, bound: float = 1.0) -> float:
    """lambda_hat = inf{lambda : n/(n+1) R_n(lambda) + B/(n+1) <= alpha} over the ascending grid ``lambdas``.

    ``losses[i, j]`` is sample i's loss at ``lambdas[j]``: non-increasing in j, within [0, bound].

    Raises:
        TooFewCalibrationSamples: no lambda of the grid satisfies the bound (n too small for alpha).
        ValueError: an empty sample, a grid not ascending, or losses outside [0, B] or increasing in lambda.
    """
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 2 or losses.shape[0] == 0:
        raise ValueError(f"losses: expected a non-empty [n, m] matrix, got shape {losses.shape}")
    if np.any(np.diff(lambdas) <= 0) or losses.shape[1] != len(lambdas):
        raise ValueError("lambdas: need one strictly ascending value per loss column")
    if np.any((losses < 0) | (losses > bound)) or np.any(np.diff(losses, axis=1) > 0):
        raise ValueError(
            f"losses: must lie in [0, {bound}] and be non-increasing in lambda (conformal risk control needs both)"
        )
    n = losses.shape[0]
    adjusted = n / (n + 1) * losses.mean(axis=0) + bound / (n + 1)
    feasible = np.flatnonzero(adjusted <= alpha + 1e-12)
    if feasible.size == 0:
        raise TooFewCalibrationSamples(
            f"conformal risk control: no lambda reaches risk {alpha} with {n} samples "
            f"(B/(n+1) = {bound / (n + 1):.3f}); "
            "use more calibration samples or a larger alpha"
        )
    return float(lambdas[feasible[0]])


class SCRCPolicy(BaseModel):
    """Selective conformal risk control (SCRC-I): selection threshold on confidence, then the LAC set threshold."""

    model_config = ConfigDict(frozen=True)

    target_selection_rate: float
    alpha: float
    selection_threshold: float  # select when max(p, 1 - p) >= this
    risk_threshold: float  # lambda_hat: class k is in the set when 1 - p_k <= this
    n_calibration: int
    n_selected: int

    @classmethod
    def fit(cls, labels: np.ndarray, probs: np.ndarray, config: SCRCConfig) -> SCRCPolicy:
        """Stage 1 on all calibration images, stage 2 on the selected ones (``probs``: ``[n, k]``).

        The selection threshold is the ceil((n+1) * rate)-th largest calibration confidence, so that a
        new exchangeable image is selected with probability at least ``rate``.

        Raises:
            TooFewCalibrationSamples: too few images for the selection rank or for the risk bound.
        """
        y = as_binary_labels(labels)
        confidence = probs.max(axis=1)
        n = y.size
        rank = math.ceil((n + 1) * config.target_selection_rate - 1e-9)
        if rank > n:
            raise TooFewCalibrationSamples(
                f"SCRC: {n} calibration samples are too few for a selection rate of {config.target_selection_rate} "
                "(needs n >= rate / (1 - rate) = "
                f"{config.target_selection_rate / (1 - config.target_selection_rate):.1f})"
            )
        threshold = float(-np.partition(-confidence, rank - 1)[rank - 1])
        selected = confidence >= threshold
        true_scores = 1.0 - probs[selected][np.arange(int(selected.sum())), y[selected]]
        lambdas = np.unique(np.r_[0.0, true_scores])
        losses = (true_scores[:, None] > lambdas[None, :]).astype(np.float64)  # miscoverage of the LAC set C_lambda
        risk_threshold = conformal_risk_control(losses, lambdas, config.alpha, bound=1.0)
        return cls(
            target_selection_rate=config.target_selection_rate,
            alpha=config.alpha,
            selection_threshold=threshold,
            risk_threshold=risk_threshold,
            n_calibration=n,
            n_selected=int(selected.sum()),
        )

    def decide(self, probs: np.ndarray) -> SCRCDecisions:
        """Selection, prediction set and accept/defer for each image (``probs``: ``[n, k]``)."""
        selected = probs.max(axis=1) >= self.selection_threshold
        sets = (1.0 - probs <= self.risk_threshold) & selected[:, None]
        return SCRCDecisions(
            selected=selected, sets=sets, accept=selected & (sets.sum(axis=1) == 1), prediction=probs.argmax(axis=1)
        )


@dataclass(frozen=True)
class SCRCDecisions:
    """Per-image SCRC output: accept (answer ``prediction``) or defer (to a person, a larger model...)."""

    selected: np.ndarray
    sets: np.ndarray
    accept: np.ndarray
    prediction: np.ndarray


class SetEvaluation(BaseModel):
    """Coverage and size of prediction sets on labelled images."""

    model_config = ConfigDict(frozen=True)

    n: int
    coverage: float
    mean_size: float
    empty_rate: float
    singleton_rate: float
    full_rate: float


class SCRCEvaluation(BaseModel):
    """SCRC on labelled images: selection rate, risk (miscoverage) among the selected, accept rate and its errors."""

    model_config = ConfigDict(frozen=True)

    n: int
    selection_rate: float
    selective_risk: float | None  # miscoverage among the selected; None when none was selected
    selective_mean_size: float | None
    accept_rate: float
    accepted_error_rate: float | None  # wrong answers among the accepted; None when none was accepted


def evaluate_sets(sets: np.ndarray, labels: np.ndarray) -> SetEvaluation:
    """Empirical coverage P(y in C), mean |C| and the shares of empty, single-class and all-class sets."""
    y = as_binary_labels(labels)
    sizes = sets.sum(axis=1)
    return SetEvaluation(
        n=int(y.size),
        coverage=float(sets[np.arange(y.size), y].mean()),
        mean_size=float(sizes.mean()),
        empty_rate=float(np.mean(sizes == 0)),
        singleton_rate=float(np.mean(sizes == 1)),
        full_rate=float(np.mean(sizes == sets.shape[1])),
    )


def evaluate_scrc(decisions: SCRCDecisions, labels: np.ndarray) -> SCRCEvaluation:
    """The figures SCRC promises (risk among the selected <= alpha) and what deferring costs.

    What deferring costs is measured by the selection and accept rates.
    """
    y = as_binary_labels(labels)
    selected, accept = decisions.selected, decisions.accept
    covered = decisions.sets[np.arange(y.size), y]
    return SCRCEvaluation(
        n=int(y.size),
        selection_rate=float(selected.mean()),
        selective_risk=float(1.0 - covered[selected].mean()) if selected.any() else None,
        selective_mean_size=float(decisions.sets[selected].sum(axis=1).mean()) if selected.any() else None,
        accept_rate=float(accept.mean()),
        accepted_error_rate=float(np.mean(decisions.prediction[accept] != y[accept])) if accept.any() else None,
    )


class ConformalEvaluation(BaseModel):
    """Every predictor's sets and SCRC, measured on one labelled split (val_test)."""

    model_config = ConfigDict(frozen=True)

    alpha: float
    sets: dict[str, SetEvaluation]
    scrc: SCRCEvaluation | None = None

    def to_flat_dict(self) -> dict[str, float]:
        """Numbers for metric logs: ``conformal_<predictor>_<figure>`` and ``scrc_<figure>``."""
        flat = {
            f"conformal_{name}_{field}": float(value)
            for name, result in self.sets.items()
            for field, value in result.model_dump().items()
        }
        if self.scrc is not None:
            flat |= {
                f"scrc_{field}": float(value) for field, value in self.scrc.model_dump().items() if value is not None
            }
        return flat


class ConformalPolicy(BaseModel):
    """The fitted conformal predictors and SCRC policy of a calibration policy."""

    model_config = ConfigDict(frozen=True)

    alpha: float
    seed: int
    predictors: list[ConformalPredictor]
    scrc: SCRCPolicy | None = None
    scrc_undefined_reason: str | None = None

    def thresholds(self) -> dict[str, float]:
        """q_hat per predictor and the SCRC thresholds, for metadata."""
        values = {f"conformal_{predictor.name}_q_hat": predictor.q_hat for predictor in self.predictors}
        if self.scrc is not None:
            values |= {
                "scrc_selection_threshold": self.scrc.selection_threshold,
                "scrc_risk_threshold": self.scrc.risk_threshold,
            }
        return values

    def evaluate(self, labels: np.ndarray, probs: np.ndarray) -> ConformalEvaluation:
        """Coverage, set sizes and SCRC figures of calibrated P(roadwork) ``probs`` against ``labels``."""
        y = as_binary_labels(labels)
        matrix = class_probabilities(probs)
        if matrix.shape[0] != y.size:
            raise ValueError(f"probs: length {matrix.shape[0]} does not match the {y.size} labels")
        rng = np.random.default_rng([self.seed, 1])  # test-time draws, independent of the calibration draws
        sets = {
            predictor.name: evaluate_sets(predictor.prediction_sets(matrix, rng), y) for predictor in self.predictors
        }
        scrc = evaluate_scrc(self.scrc.decide(matrix), y) if self.scrc is not None else None
        return ConformalEvaluation(alpha=self.alpha, sets=sets, scrc=scrc)


def fit_conformal_policy(labels: np.ndarray, probs: np.ndarray, config: ConformalConfig) -> ConformalPolicy:
    """Fit every configured predictor and SCRC on calibrated P(roadwork) of the calibration split.

    Raises:
        TooFewCalibrationSamples: the split is too small for the conformal quantile at ``config.alpha``
            (a split too small for SCRC alone only leaves ``scrc`` None, with the reason).
        ValueError: bad labels or probabilities (NaN, infinite, outside [0, 1], length mismatch, empty).
    """
    y = as_binary_labels(labels)
    matrix = class_probabilities(probs)
    if matrix.shape[0] != y.size:
        raise ValueError(f"probs: length {matrix.shape[0]} does not match the {y.size} labels")
    rng = np.random.default_rng([config.seed, 0])
    predictors = [
        ConformalPredictor.fit(
            name, y, matrix, config.alpha, rng=rng, raps_lambda=config.raps_lambda, raps_k_reg=config.raps_k_reg
        )
        for name in config.predictors
    ]
    scrc, reason = None, None
    if config.scrc is not None:
        try:
            scrc = SCRCPolicy.fit(y, matrix, config.scrc)
        except TooFewCalibrationSamples as error:
            reason = str(error)
    return ConformalPolicy(
        alpha=config.alpha, seed=config.seed, predictors=predictors, scrc=scrc, scrc_undefined_reason=reason
    )
