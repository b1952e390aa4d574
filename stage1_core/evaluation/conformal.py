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
  Randomised sets are {k : s(x, k) <= q_hat} and may be empty. Non-randomised APS / RAPS sets also
  hold the class at which the cumulative score crosses q_hat (the "+1" of Romano et al.'s
  generalized quantile and of the RAPS reference code's ``gcq``), so they are never empty and cover at
  least as often. With two classes a set is {}, {y_hat} or {0, 1}, and RAPS with k_reg >= 2 equals APS.
* RAPS tunes its regularisation on a held-out part of the calibration data, as the paper and its
  reference code (``pick_parameters``) do: a random ``raps_tuning_fraction`` (0.3) of val_calib picks
  k_reg = 1 + the (1 - alpha) quantile ("higher") of the true class's 0-based rank, and lambda from
  (0.001, 0.01, 0.1, 0.2, 0.5) as the one giving the smallest mean set size on that part (fitted and
  measured there; the first on ties); q_hat is then fitted on the rest. Set ``raps_lambda`` and
  ``raps_k_reg`` to fix both instead (the whole split then fits q_hat).
* Conformal risk control (Angelopoulos et al. 2022): for losses non-increasing in lambda and
  bounded by B, lambda_hat = inf{lambda : n/(n+1) R_n(lambda) + B/(n+1) <= alpha}. It bounds the
  risk on average over calibration draws, not for the draw at hand.
* SCRC, selective conformal risk control (Xu, Guo & Wei 2025, arXiv 2512.12844), its calibration-only
  variant SCRC-I, with the PAC guarantee: with probability at least 1 - delta over the calibration draw,
  the selection rate is at least the target, and (separately, also 1 - delta) the miscoverage among
  selected images is at most alpha. Stage 1 selects images whose confidence max(p, 1-p) reaches a
  threshold; stage 2 sets the LAC set threshold on the selected calibration images. An image is
  accepted when it is selected and its set is one class; every other image is deferred. See
  :class:`SCRCPolicy` for the bounds (exact binomial tails) and ``benchmarks/scrc_guarantee.py`` for
  the violation rates measured over many calibration draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import binom

from stage1_core.common.config import StrictConfig
from stage1_core.common.metrics import as_binary_labels, as_probabilities

ScoreName = Literal["lac", "aps", "raps"]
PredictorName = Literal["lac", "aps", "aps_randomized", "raps", "raps_randomized"]
PREDICTORS: dict[str, tuple[ScoreName, bool]] = {
    name: (name.split("_")[0], name.endswith("_randomized")) for name in get_args(PredictorName)
}  # type: ignore[misc]


class TooFewCalibrationSamples(ValueError):
    """The calibration sample cannot give a finite conformal threshold at this alpha (n < 1/alpha - 1)."""


RAPS_LAMBDA_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 0.2, 0.5)  # the RAPS reference code's pick_lamda_size


class SCRCConfig(StrictConfig):
    """SCRC-I targets: the share of images to select (stage 1), the miscoverage allowed among them (stage 2), and
    delta, the probability over calibration draws that either target is missed (each bounded by delta)."""

    target_selection_rate: float = Field(0.8, gt=0.0, lt=1.0)
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    delta: float = Field(
        0.1, gt=0.0, lt=1.0, description="P(selection rate < target) <= delta and P(selected risk > alpha) <= delta"
    )


class ConformalConfig(StrictConfig):
    """Miscoverage level, which conformal predictors to fit, RAPS regularisation and the SCRC targets."""

    alpha: float = Field(0.1, gt=0.0, lt=1.0)
    predictors: tuple[PredictorName, ...] = ("lac", "aps", "aps_randomized", "raps")
    raps_lambda: float | None = Field(
        None, ge=0.0, description=f"None: tuned on the held-out part from {RAPS_LAMBDA_GRID} (Angelopoulos 2021)"
    )
    raps_k_reg: int | None = Field(None, ge=0, description="None: tuned on the held-out part (Angelopoulos 2021)")
    raps_tuning_fraction: float = Field(
        0.3, gt=0.0, lt=1.0, description="share of val_calib that tunes RAPS (reference code: pct_paramtune 0.3)"
    )
    seed: int = 0  # of the uniform draws of randomised scores and of the RAPS tuning split
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
    order, ranked_scores = _ranked_scores(probs, score, u, raps_lambda, raps_k_reg)
    scores = np.empty_like(ranked_scores)
    np.put_along_axis(scores, order, ranked_scores, axis=1)
    return scores


def class_sets(
    probs: np.ndarray,
    score: ScoreName,
    q_hat: float,
    *,
    u: np.ndarray | None = None,
    raps_lambda: float = 0.0,
    raps_k_reg: int = 1,
) -> np.ndarray:
    """``[n, k]`` booleans: the conformal set of each row at threshold ``q_hat``.

    LAC and randomised APS / RAPS keep {k : s(x, k) <= q_hat}. Non-randomised APS / RAPS (``u`` None) keep
    the top classes up to and including the one whose cumulative score first exceeds q_hat (Romano et al.
    2020; RAPS reference code: size = #{score <= q_hat} + 1, at most k), so a set is never empty.
    """
    if score == "lac" or u is not None:
        return class_scores(probs, score, u=u, raps_lambda=raps_lambda, raps_k_reg=raps_k_reg) <= q_hat
    order, ranked_scores = _ranked_scores(probs, score, None, raps_lambda, raps_k_reg)
    score_above = np.c_[np.full(len(probs), -np.inf), ranked_scores[:, :-1]]  # of the class ranked just above
    sets = np.empty(probs.shape, dtype=bool)
    np.put_along_axis(sets, order, score_above <= q_hat, axis=1)
    return sets


def _ranked_scores(
    probs: np.ndarray, score: ScoreName, u: np.ndarray | None, raps_lambda: float, raps_k_reg: int
) -> tuple[np.ndarray, np.ndarray]:
    """(class order, most probable first; APS / RAPS score of each class in that order)."""
    n, k = probs.shape
    order = np.argsort(-probs, axis=1, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=1)
    weight = np.ones((n, 1)) if u is None else np.asarray(u, dtype=np.float64).reshape(n, 1)
    ranked_scores = np.cumsum(ranked, axis=1) - ranked + weight * ranked
    if score == "raps":
        ranked_scores = ranked_scores + raps_lambda * np.maximum(0, np.arange(1, k + 1) - raps_k_reg)
    return order, ranked_scores


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
    n_calibration: int  # samples q_hat was fitted on
    raps_lambda: float = 0.0
    raps_k_reg: int = 1
    n_tuning: int = 0  # samples that tuned raps_lambda and raps_k_reg (0: set by hand)

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
        return class_sets(probs, self.score, self.q_hat, u=u, raps_lambda=self.raps_lambda, raps_k_reg=self.raps_k_reg)


def tune_raps(
    name: PredictorName,
    labels: np.ndarray,
    probs: np.ndarray,
    alpha: float,
    *,
    rng: np.random.Generator,
    k_reg: int | None = None,
    raps_lambda: float | None = None,
) -> tuple[int, float]:
    """(k_reg, lambda) of RAPS chosen on a tuning sample, as Angelopoulos et al. (2021) and their reference code.

    k_reg = 1 + the (1 - alpha) quantile ("higher") of the true class's 0-based rank; lambda is the value of
    :data:`RAPS_LAMBDA_GRID` whose predictor, fitted on the tuning sample, gives the smallest mean set size
    there (the first on ties). A value given is kept (the other is still tuned).

    Raises:
        TooFewCalibrationSamples: the tuning sample is too small for the conformal quantile at ``alpha``.
    """
    y = as_binary_labels(labels)
    if k_reg is None:
        order = np.argsort(-probs, axis=1, kind="stable")
        true_rank = np.argmax(order == y[:, None], axis=1)
        k_reg = int(np.quantile(true_rank, 1.0 - alpha, method="higher")) + 1
    grid = RAPS_LAMBDA_GRID if raps_lambda is None else (raps_lambda,)
    seed = int(rng.integers(1 << 32))
    sizes = []
    for value in grid:
        draws = np.random.default_rng(seed)  # the same uniform draws for every lambda
        predictor = ConformalPredictor.fit(name, y, probs, alpha, rng=draws, raps_lambda=value, raps_k_reg=k_reg)
        sizes.append(float(predictor.prediction_sets(probs, draws).sum(axis=1).mean()))
    return k_reg, grid[int(np.argmin(sizes))]


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
    """Selective conformal risk control, SCRC-I (Xu, Guo & Wei 2025, arXiv 2512.12844) with its PAC guarantee.

    Fitted on calibration images only. With probability at least 1 - delta over the calibration draw the
    selection rate P(max(p, 1-p) >= selection_threshold) is at least ``target_selection_rate``, and with
    probability at least 1 - delta the miscoverage of the LAC sets among the selected images,
    P(y not in C(x) | selected), is at most ``alpha`` (both together: at least 1 - 2 delta). Each bound is
    an exact binomial tail (Clopper-Pearson), the tightest concentration bound for 0/1 events:

    * stage 1: the threshold is the k-th largest calibration confidence with the smallest k such that
      P(Binomial(n, rate) >= k) <= delta; the selection rate of that order statistic is Beta(k, n + 1 - k)
      distributed for continuous confidences (Vovk 2012, training-conditional conformal prediction);
      ceil((n + 1) * rate), the rank of the in-expectation version, is the smaller k it replaces;
    * stage 2: given the threshold, the m - 1 selected images other than the one that sets it are i.i.d.
      from the selected population. The LAC threshold is the (m - e)-th smallest true-class score
      1 - p_y of the m selected, with e the largest count such that P(Binomial(m - 1, alpha) <= e) <= delta:
      the upper Clopper-Pearson bound of the miscoverage, m - 1 trials with at most e misses, is alpha.
      This is the fixed-sequence (RCPS, Bates et al. 2021) choice for the monotone miscoverage loss.

    Both are exact for continuous confidences and conservative with ties. The paper's own algorithm text
    could not be consulted here beyond its abstract; these bounds implement its stated SCRC-I guarantee
    (calibration only, PAC, a concentration bound per stage), and ``benchmarks/scrc_guarantee.py``
    measures the violation rates over many calibration draws.
    """

    model_config = ConfigDict(frozen=True)

    variant: Literal["SCRC-I"] = "SCRC-I"
    target_selection_rate: float
    alpha: float
    delta: float
    selection_threshold: float  # select when max(p, 1 - p) >= this
    risk_threshold: float  # class k is in the set when 1 - p_k <= this
    n_calibration: int
    n_selected: int
    max_misses: int  # e: misses among the selected calibration images that the threshold allows

    @classmethod
    def fit(cls, labels: np.ndarray, probs: np.ndarray, config: SCRCConfig) -> SCRCPolicy:
        """Stage 1 on all calibration images, stage 2 on the selected ones (``probs``: ``[n, k]``).

        Raises:
            TooFewCalibrationSamples: too few images for the selection bound or for the risk bound at delta.
        """
        y = as_binary_labels(labels)
        n, rate, delta = y.size, config.target_selection_rate, config.delta
        at_least = binom.sf(np.arange(n + 1) - 1, n, rate)  # P(Binomial(n, rate) >= k), k = 0..n
        ranks = np.flatnonzero(at_least <= delta)
        if ranks.size == 0:
            raise TooFewCalibrationSamples(
                f"SCRC-I: {n} calibration samples are too few to reach a selection rate of {rate} with probability "
                f"1 - delta = {1 - delta:g} (needs rate^n <= delta: "
                f"n >= {math.ceil(math.log(delta) / math.log(rate))}); "
                "use a larger val_calib, a lower target_selection_rate or a larger delta"
            )
        rank = int(ranks[0])
        confidence = probs.max(axis=1)
        threshold = float(-np.partition(-confidence, rank - 1)[rank - 1])
        selected = confidence >= threshold
        m = int(selected.sum())
        at_most = binom.cdf(np.arange(m), m - 1, config.alpha)  # P(Binomial(m - 1, alpha) <= e), e = 0..m-1
        allowed = np.flatnonzero(at_most <= delta)
        if allowed.size == 0:
            raise TooFewCalibrationSamples(
                f"SCRC-I: {m} selected calibration images are too few to bound the miscoverage by alpha="
                f"{config.alpha} with probability 1 - delta = {1 - delta:g} (needs (1 - alpha)^(m - 1) <= delta: "
                f"m >= {math.ceil(math.log(delta) / math.log(1 - config.alpha)) + 1}); "
                "use a larger val_calib or a larger alpha or delta"
            )
        misses = int(allowed[-1])
        true_scores = 1.0 - probs[selected][np.arange(m), y[selected]]
        risk_threshold = float(np.partition(true_scores, m - misses - 1)[m - misses - 1])
        return cls(
            target_selection_rate=rate,
            alpha=config.alpha,
            delta=delta,
            selection_threshold=threshold,
            risk_threshold=risk_threshold,
            n_calibration=n,
            n_selected=m,
            max_misses=misses,
        )

    def decide(self, probs: np.ndarray) -> SCRCDecisions:
        """Selection, prediction set and accept/defer for each image (``probs``: ``[n, k]``)."""
        selected = probs.max(axis=1) >= self.selection_threshold
        sets = (1.0 - probs <= self.risk_threshold) & selected[:, None]
        return SCRCDecisions(
            selected=selected, sets=sets, accept=selected & (sets.sum(axis=1) == 1), prediction=probs.argmax(axis=1)
        )


class SCRCGuaranteeCheck(BaseModel):
    """SCRC-I refitted on many calibration draws from a labelled pool taken as the population: how often the
    true selection rate misses its target and the true miscoverage among the selected exceeds alpha."""

    model_config = ConfigDict(frozen=True)

    n_population: int
    n_calibration: int
    n_draws: int
    n_infeasible: int  # draws too small for the bounds (no policy fitted)
    selection_violation_rate: float  # share of fitted draws with population selection rate < target
    risk_violation_rate: float  # share of fitted draws with population miscoverage among the selected > alpha
    mean_selection_rate: float
    mean_risk: float


def check_scrc_guarantee(
    labels: np.ndarray, probs: np.ndarray, config: SCRCConfig, *, n_calibration: int, n_draws: int, seed: int = 0
) -> SCRCGuaranteeCheck:
    """Fit SCRC-I on ``n_draws`` calibration samples of ``n_calibration`` drawn with replacement from the pool
    (``probs``: P(roadwork)), and measure each fitted policy's selection rate and risk on the whole pool.

    Drawing with replacement makes each calibration sample i.i.d. from the pool's distribution, so the pool's
    figures are the policy's true figures and the violation rates estimate the probabilities delta bounds.
    """
    y = as_binary_labels(labels)
    matrix = class_probabilities(probs)
    if matrix.shape[0] != y.size:
        raise ValueError(f"probs: length {matrix.shape[0]} does not match the {y.size} labels")
    rng = np.random.default_rng(seed)
    rates, risks = [], []
    for _ in range(n_draws):
        rows = rng.integers(0, y.size, n_calibration)
        try:
            policy = SCRCPolicy.fit(y[rows], matrix[rows], config)
        except TooFewCalibrationSamples:
            continue
        decisions = policy.decide(matrix)
        covered = decisions.sets[np.arange(y.size), y]
        rates.append(float(decisions.selected.mean()))
        risks.append(float(1.0 - covered[decisions.selected].mean()))
    fitted = max(len(rates), 1)
    return SCRCGuaranteeCheck(
        n_population=int(y.size),
        n_calibration=n_calibration,
        n_draws=n_draws,
        n_infeasible=n_draws - len(rates),
        selection_violation_rate=sum(rate < config.target_selection_rate for rate in rates) / fitted,
        risk_violation_rate=sum(risk > config.alpha for risk in risks) / fitted,
        mean_selection_rate=float(np.mean(rates)) if rates else float("nan"),
        mean_risk=float(np.mean(risks)) if risks else float("nan"),
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
    predictors_undefined: dict[str, str] = {}  # configured predictors the split was too small for, with the reason
    scrc: SCRCPolicy | None = None
    scrc_undefined_reason: str | None = None

    def thresholds(self) -> dict[str, float]:
        """q_hat per predictor and the SCRC thresholds, for metadata."""
        values = {f"conformal_{predictor.name}_q_hat": predictor.q_hat for predictor in self.predictors}
        for predictor in self.predictors:
            if predictor.score == "raps":
                values |= {
                    f"conformal_{predictor.name}_lambda": predictor.raps_lambda,
                    f"conformal_{predictor.name}_k_reg": float(predictor.raps_k_reg),
                }
        if self.scrc is not None:
            values |= {
                "scrc_selection_threshold": self.scrc.selection_threshold,
                "scrc_risk_threshold": self.scrc.risk_threshold,
                "scrc_delta": self.scrc.delta,
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
            (a split too small for SCRC or for a tuned RAPS alone only leaves those out, with the reason).
        ValueError: bad labels or probabilities (NaN, infinite, outside [0, 1], length mismatch, empty).
    """
    y = as_binary_labels(labels)
    matrix = class_probabilities(probs)
    if matrix.shape[0] != y.size:
        raise ValueError(f"probs: length {matrix.shape[0]} does not match the {y.size} labels")
    rng = np.random.default_rng([config.seed, 0])
    predictors, undefined = [], {}
    for name in config.predictors:
        if PREDICTORS[name][0] != "raps":
            predictors.append(ConformalPredictor.fit(name, y, matrix, config.alpha, rng=rng))
            continue
        try:
            predictors.append(_fit_raps(name, y, matrix, config, rng))
        except TooFewCalibrationSamples as error:  # its tuning split halves the sample: it alone may not fit
            undefined[name] = (
                f"RAPS tuning on {config.raps_tuning_fraction:.0%} of the split, q_hat on the rest: {error}"
            )
    scrc, reason = None, None
    if config.scrc is not None:
        try:
            scrc = SCRCPolicy.fit(y, matrix, config.scrc)
        except TooFewCalibrationSamples as error:
            reason = str(error)
    return ConformalPolicy(
        alpha=config.alpha,
        seed=config.seed,
        predictors=predictors,
        predictors_undefined=undefined,
        scrc=scrc,
        scrc_undefined_reason=reason,
    )


def _fit_raps(
    name: PredictorName, y: np.ndarray, matrix: np.ndarray, config: ConformalConfig, rng: np.random.Generator
) -> ConformalPredictor:
    """RAPS with the configured regularisation, or tuned on a random ``raps_tuning_fraction`` of the split
    (the same split for every RAPS predictor) and fitted on the rest."""
    if config.raps_lambda is not None and config.raps_k_reg is not None:
        return ConformalPredictor.fit(
            name, y, matrix, config.alpha, rng=rng, raps_lambda=config.raps_lambda, raps_k_reg=config.raps_k_reg
        )
    rows = np.random.default_rng([config.seed, 2]).permutation(y.size)
    n_tuning = math.ceil(config.raps_tuning_fraction * y.size)
    tuning, calibration = rows[:n_tuning], rows[n_tuning:]
    k_reg, raps_lambda = tune_raps(
        name,
        y[tuning],
        matrix[tuning],
        config.alpha,
        rng=rng,
        k_reg=config.raps_k_reg,
        raps_lambda=config.raps_lambda,
    )
    predictor = ConformalPredictor.fit(
        name, y[calibration], matrix[calibration], config.alpha, rng=rng, raps_lambda=raps_lambda, raps_k_reg=k_reg
    )
    return predictor.model_copy(update={"n_tuning": n_tuning})
