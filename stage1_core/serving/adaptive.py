"""Adaptive multi-view inference: look at the tiles only when the global view is unsure.

The 3x3 tiles exist for small roadwork objects that vanish in the global view (see ``model.py``).
Most street photos are clear from the global view alone, and a tile pass costs nine backbone
calls, so serving runs the global view first and the tiles only for images whose global margin
``|logit(p_global) - logit(threshold)|`` is below a fitted bound, one bound per side of the threshold
(the tiles rarely overturn a global "roadwork" under top-K pooling, often a global "no roadwork": one
bound for both sides wastes the first). This is the early-exit idea of
confidence-based adaptive inference (BranchyNet, Teerapittayanon et al. 2016; "Shallow-Deep
Networks", Kaya et al. 2019) applied to views instead of layers.

This module is the policy: fitting the margin bounds and applying them, in NumPy alone (a miner runs
it without PyTorch). The two ONNX graphs it drives (global view; tiles) are built in ``export.py``
and served by ``serving.AdaptiveSessions``: an uncertain image gets exactly the fixed 10-view result
and a confident one the global-view result, both calibrated by the model's calibration policy. The
bounds are the pair that skips most while the MCC drop against fixed multi-view stays within ``max_mcc_drop``
on most bootstrap resamples of ``val_select`` (:func:`fit_adaptive_policy` says why not on the sample alone).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stage1_core.common.config import StrictConfig
from stage1_core.common.logit_map import VALIDATOR_THRESHOLD
from stage1_core.common.metrics import (
    as_binary_labels,
    as_probabilities,
    bootstrap_group_weights,
    decision_mcc,
    decision_metrics_from_counts,
    group_codes,
)

logger = logging.getLogger(__name__)

_PROBABILITY_EPS = 1e-7

GlobalPass = Callable[
    [np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]
]  # images -> (global features, P from the global view, canvas)
TilesPass = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (canvas, global features) -> multi-view P


class AdaptiveConfig(StrictConfig):
    """How much MCC adaptive serving may give up against the fixed multi-view model, and at which threshold.

    The MCC drop is measured on val_select.
    """

    max_mcc_drop: float = Field(0.01, ge=0.0, description="1 MCC point = 0.01")
    confidence: float = Field(
        0.75,
        ge=0.5,
        lt=1.0,
        description="share of bootstrap resamples of val_select (split groups resampled whole) "
        "on which the MCC drop must stay within max_mcc_drop; 0.5 is about the point estimate, "
        "which on a few hundred images skips too much (measured: 4 points lost on fresh data)",
    )
    n_bootstrap: int = Field(200, ge=1, description="resamples of val_select for the confidence rule")
    max_candidates: int = Field(
        64, ge=1, description='steps of the "roadwork" side\'s bound tried by the fit (each one sweeps the other side)'
    )
    seed: int = 0
    decision_threshold: float = Field(
        VALIDATOR_THRESHOLD,
        gt=0.0,
        lt=1.0,
        description="threshold the served P is judged at (the subnet validator's 0.5, as the promotion gate); "
        "margins and MCC are taken at it",
    )


class AdaptiveOutcome(BaseModel):
    """Adaptive against fixed multi-view and against the global view alone, on one labelled set.

    MCC is taken at the decision threshold.
    """

    model_config = ConfigDict(ser_json_inf_nan="constants")  # an undefined MCC (one predicted class) stays NaN

    n_images: int
    skip_rate: float  # share of images answered from the global view alone
    views_per_image: float  # mean backbone views per image
    mcc_full: float  # fixed multi-view (every image gets all views)
    mcc_adaptive: float
    mcc_global: float  # single view: the global view of the same model for every image
    mcc_drop: float  # mcc_full - mcc_adaptive


class AdaptivePolicy(BaseModel):
    """Skip the tiles when the global view's margin reaches the bound of the side it falls on.

    A bound of ``inf`` never skips that side.
    """

    model_config = ConfigDict(ser_json_inf_nan="constants")

    decision_threshold: float = Field(gt=0.0, lt=1.0)
    margin_threshold: float = Field(
        ge=0.0,
        description="bound where the global view says no roadwork (P <= threshold); "
        "both sides when positive_margin_threshold is None",
    )
    positive_margin_threshold: float | None = Field(
        None,
        ge=0.0,
        description="bound where the global view says roadwork (P > threshold); "
        "None: margin_threshold (bundles exported before the two-sided fit)",
    )
    max_mcc_drop: float
    confidence: float = 0.5  # the fit's resample share (0.5: bundles exported before the confidence rule)
    full_views: int
    fitted_on: AdaptiveOutcome | None = None  # the outcome on val_select, set by ``fit_adaptive_policy``

    @property
    def positive_bound(self) -> float:
        return self.margin_threshold if self.positive_margin_threshold is None else self.positive_margin_threshold

    def describe(self) -> str:
        return (
            f"skip tiles at global margin >= {self.margin_threshold:.3f} (says no roadwork) "
            f"/ >= {self.positive_bound:.3f} (says roadwork)"
        )


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def signed_margin(p_global: np.ndarray, decision_threshold: float) -> np.ndarray:
    """The global view's calibrated logit minus the decision threshold's logit: > 0 where it says roadwork."""
    p = np.clip(np.asarray(p_global, dtype=np.float64), _PROBABILITY_EPS, 1.0 - _PROBABILITY_EPS)
    return _logit(p) - _logit(np.float64(decision_threshold))


def skip_tiles(p_global: np.ndarray, policy: AdaptivePolicy) -> np.ndarray:
    """Boolean mask: images confident enough, on their side of the threshold, to be answered from the global view."""
    margin = signed_margin(p_global, policy.decision_threshold)
    return np.where(margin > 0, margin >= policy.positive_bound, -margin >= policy.margin_threshold)


def _confusion(predicted: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    positive = labels == 1
    return predicted & positive, predicted & ~positive, ~predicted & positive, ~predicted & ~positive


def _checked(p_global: np.ndarray, p_full: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = as_binary_labels(labels)
    if y.min() == y.max():
        raise ValueError(
            f"labels: all {y.size} images are class {int(y[0])}; "
            "MCC needs both classes (use val_select with positives and negatives)"
        )
    return (
        as_probabilities(p_global, name="p_global", length=y.size),
        as_probabilities(p_full, name="p_full", length=y.size),
        y,
    )


def evaluate_adaptive(
    p_global: np.ndarray, p_full: np.ndarray, labels: np.ndarray, policy: AdaptivePolicy
) -> AdaptiveOutcome:
    """MCC of fixed multi-view, adaptive serving and the global view alone, and the views spent.

    Scored on a labelled set, e.g. val_test.
    """
    p_global, p_full, y = _checked(p_global, p_full, labels)
    skip = skip_tiles(p_global, policy)
    threshold = policy.decision_threshold
    mcc_full = decision_mcc(p_full > threshold, y)
    mcc_adaptive = decision_mcc(np.where(skip, p_global, p_full) > threshold, y)
    return AdaptiveOutcome(
        n_images=int(y.size),
        skip_rate=float(skip.mean()),
        views_per_image=float(1 + (policy.full_views - 1) * (1 - skip.mean())),
        mcc_full=mcc_full,
        mcc_adaptive=mcc_adaptive,
        mcc_global=decision_mcc(p_global > threshold, y),
        mcc_drop=mcc_full - mcc_adaptive,
    )


def _mcc_by_skip_count(
    skip_predicted: list[np.ndarray], full_predicted: list[np.ndarray], weights: np.ndarray
) -> np.ndarray:
    """``[B, n + 1]`` MCC of each weighted resample when the first ``j`` images take the global answer.

    The images are in margin order.
    """

    def through(cell: np.ndarray) -> np.ndarray:  # [B, n + 1]: weighted count of the cell among the first j images
        return np.pad(np.cumsum(weights * cell, axis=1), ((0, 0), (1, 0)))

    counts = []
    for g, f in zip(skip_predicted, full_predicted, strict=True):
        full_through = through(f)
        counts.append(through(g) + full_through[:, -1:] - full_through)
    return np.nan_to_num(
        decision_metrics_from_counts(*counts)["mcc"], nan=0.0
    )  # undefined (one predicted class): 0, as sklearn


def _positive_bound_candidates(positive_margins: np.ndarray, max_candidates: int) -> np.ndarray:
    """``inf`` (never skip a global "roadwork"), then the distinct margins of the images it gives, largest first.

    At most ``max_candidates`` in all.
    """
    distinct = np.unique(positive_margins)[::-1]
    if distinct.size > max_candidates:
        distinct = np.unique(np.quantile(distinct, np.linspace(0.0, 1.0, max_candidates), method="higher"))[::-1]
    return np.concatenate([[np.inf], distinct])


def fit_adaptive_policy(
    p_global: np.ndarray,
    p_full: np.ndarray,
    labels: np.ndarray,
    full_views: int,
    config: AdaptiveConfig,
    groups: np.ndarray | None = None,
) -> AdaptivePolicy:
    """The pair of margin bounds (one per side of ``config.decision_threshold``) that skips the tiles for most images.

    It does so while the MCC drop against fixed multi-view stays within ``config.max_mcc_drop`` on
    ``config.confidence`` of the bootstrap resamples.

    Why resamples: the largest skip whose drop is within budget on the fitting sample itself is the one that
    sample flatters most (a winner's curse); on a few hundred images it lost about four times the budget on
    fresh data. Requiring the budget on most resamples, and stopping at the first bound that fails, keeps the
    promise on new images at the cost of skipping less.

    Why two bounds: under top-K pooling a tile can lift the score but rarely lower it, so an image the global
    view confidently calls roadwork keeps that answer with its tiles far more often than one it calls clear.
    The "roadwork" bound is lowered step by step from ``inf`` through the margins of the images it would skip
    (at most ``max_candidates`` steps) until that side alone breaks the budget; for each, the "no roadwork"
    bound is the smallest whose drop stays within budget for it and every larger bound. Each sweep is
    evaluated for every skip count and every resample at once with cumulative weighted confusion counts, at
    margins where the count changes (ties are skipped together). Never skipping always qualifies. An undefined
    MCC (every image predicted one class) counts as 0 here, sklearn's convention.

    Args:
        groups: one group per image (the split group), resampled whole; None resamples images one by one.

    Raises:
        ValueError: bad labels, probabilities or groups (named), or labels of one class only.
    """
    threshold = config.decision_threshold
    p_global, p_full, y = _checked(p_global, p_full, labels)
    codes = group_codes(groups, y.size)
    codes = np.arange(y.size) if codes is None else codes
    margin = signed_margin(p_global, threshold)
    says_clear = np.flatnonzero(margin <= 0)
    order = np.concatenate(
        [says_clear[np.argsort(margin[says_clear], kind="stable")], np.flatnonzero(margin > 0)]
    )  # the clear side, most confident first
    margin, y, global_says, full_says = (
        margin[order],
        y[order],
        (p_global > threshold)[order],
        (p_full > threshold)[order],
    )
    weights = bootstrap_group_weights(codes, config.n_bootstrap, config.seed)[:, codes[order]]
    n_clear = says_clear.size
    clear_margin = -margin[:n_clear]
    boundary = np.ones(n_clear + 1, dtype=bool)
    boundary[1:-1] = clear_margin[:-1] > clear_margin[1:]
    global_cells = _confusion(global_says, y)
    baseline: np.ndarray | None = None
    best_skipped, best_positive, best_clear = 0, np.inf, np.inf
    for positive_bound in _positive_bound_candidates(margin[n_clear:], config.max_candidates):
        answered = margin >= positive_bound  # every candidate bound is > 0: only global "roadwork" images
        mcc = _mcc_by_skip_count(global_cells, _confusion(np.where(answered, global_says, full_says), y), weights)[
            :, : n_clear + 1
        ]
        baseline = mcc[:, :1] if baseline is None else baseline
        drop = np.quantile(baseline - mcc, config.confidence, axis=0)
        failing = boundary & (drop > config.max_mcc_drop + 1e-12)
        if failing[0]:
            break
        last = (
            int(np.flatnonzero(failing).min()) if failing.any() else n_clear + 1
        )  # first clear-side bound that breaks the budget
        clear_skipped = int(np.flatnonzero(boundary[:last]).max())
        if int(answered.sum()) + clear_skipped > best_skipped:
            best_skipped = int(answered.sum()) + clear_skipped
            best_positive, best_clear = (
                float(positive_bound),
                float(clear_margin[clear_skipped - 1]) if clear_skipped else np.inf,
            )
    policy = AdaptivePolicy(
        decision_threshold=threshold,
        margin_threshold=best_clear,
        positive_margin_threshold=best_positive,
        max_mcc_drop=config.max_mcc_drop,
        confidence=config.confidence,
        full_views=full_views,
    )
    policy.fitted_on = evaluate_adaptive(p_global[order], p_full[order], y, policy)
    logger.info(
        "adaptive multi-view: %s: %.0f%% of %d val_select images, %.2f views/image, MCC %.4f -> %.4f "
        "(drop within %.3f on %.0f%% of %d resamples)",
        policy.describe(),
        100 * policy.fitted_on.skip_rate,
        y.size,
        policy.fitted_on.views_per_image,
        policy.fitted_on.mcc_full,
        policy.fitted_on.mcc_adaptive,
        config.max_mcc_drop,
        100 * config.confidence,
        config.n_bootstrap,
    )
    return policy


def run_adaptive(
    global_pass: GlobalPass, tiles_pass: TilesPass, images: np.ndarray, policy: AdaptivePolicy
) -> tuple[np.ndarray, np.ndarray]:
    """P(roadwork) and views used per image of a uint8 ``[B, 3, H, W]`` batch, with any runtime's two passes."""
    global_features, p_global, canvas = global_pass(images)
    probabilities = np.asarray(p_global, dtype=np.float32).copy()
    views = np.ones(len(images), dtype=np.int64)
    uncertain = np.flatnonzero(~skip_tiles(p_global, policy))
    if uncertain.size:
        probabilities[uncertain] = tiles_pass(canvas[uncertain], global_features[uncertain])
        views[uncertain] = policy.full_views
    return probabilities, views
