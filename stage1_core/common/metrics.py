"""Binary metrics of P(roadwork) with vectorised bootstrap confidence intervals.

Every metric is written once, as a function of counts: for each resample, how many of its draws
fall in each cell (distinct probability, label). The point estimate uses the sample's own counts;
the bootstrap (Efron & Tibshirani 1993, percentile intervals) turns a ``B x n`` index matrix into
counts, one ``bincount`` per chunk of rows. So an estimate and its interval come from the same
code, and 1,000 resamples cost a few matrix products and cumulative sums instead of a Python
loop per resample and per metric.

With ``groups`` (e.g. the frames of one driving sequence), the bootstrap resamples whole groups
(the cluster bootstrap, Davison & Hinkley 1997, section 3.8): frames of a sequence are not independent
draws, and resampling them one by one gives intervals that are too narrow. A resample draws as many
groups as there are, with replacement, and each row counts as often as its group was drawn: the same
counts, weighted.

Definitions follow ``shared/reference/methods.md``:

* decisions are ``p > threshold`` (strictly: ``p == 0.5`` is "no roadwork", as the subnet
  validator rounds);
* the calibration and selective-classification metrics (ECE, MCE, ACE, AURC, AUGRC) judge the
  top-label prediction ``argmax([1 - p, p])`` with confidence ``max(p, 1 - p)``, whatever the
  decision threshold; at threshold 0.5 the two predictions coincide;
* ECE / MCE bins are Guo et al.'s (2017) equal-width, right-closed intervals ((m - 1)/M, m/M]: a confidence
  on an edge belongs to the bin below it and a confidence of 1.0 to the last bin, as in their reference
  code (``confidence > lower and confidence <= upper``); the first bin also takes 0 (never a top-label
  confidence, which is at least 0.5). torchmetrics uses left-closed bins and a bin of its own for 1.0:
  the two agree unless a confidence falls on an edge or is exactly 1.0;
* Brier score and NLL are computed on the probability of the true class;
* AURC and AUGRC are fractions in [0, 1]. AUGRC is Traub et al.'s (2024): the trapezoid of the generalized
  risk over coverage from (0, 0), equal to their closed form; their reference implementation (fd-shifts)
  prints it x 1000. AURC follows Geifman, Uziel & El-Yaniv (2019, "Bias-reduced uncertainty estimation"):
  the mean over the n samples of the selective risk at each sample's confidence level (tied samples are
  accepted together), the area under the step-shaped risk-coverage curve. It is not fd-shifts' AURC,
  which interpolates the same curve its own way; no parity with fd-shifts is claimed for it.
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from stage1_core.common.config import StrictConfig

logger = logging.getLogger(__name__)

MetricName = Literal[
    "accuracy",
    "balanced_accuracy",
    "mcc",
    "reward",
    "precision",
    "recall",
    "f1",
    "auroc",
    "auprc",
    "ece",
    "mce",
    "ace",
    "brier",
    "nll",
    "aurc",
    "augrc",
]
METRIC_NAMES: tuple[str, ...] = get_args(MetricName)
# Errors, losses and calibration gaps: a smaller value is better. Every other metric is a score (higher is better).
LOWER_IS_BETTER: frozenset[str] = frozenset({"ece", "mce", "ace", "brier", "nll", "aurc", "augrc"})

_CHUNK_ELEMENTS = 2**19  # counts per bootstrap chunk (4 MiB of float64): bounded memory, cache-sized arrays
_LOG_EPS = np.finfo(np.float64).eps  # probability clipping of the NLL, as scikit-learn's log_loss


class MetricsConfig(StrictConfig):
    """How metrics and their intervals are computed: bootstrap resamples, interval level, calibration bins, seed."""

    n_bootstrap: int = 1000
    confidence: float = 0.95
    n_bins: int = 15
    seed: int = 0


class MetricValue(BaseModel):
    """A metric, its bootstrap percentile interval, and why it is undefined when it is."""

    model_config = ConfigDict(frozen=True)

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    undefined_reason: str | None = None
    n_resamples_undefined: int = 0  # resamples where the metric was undefined (e.g. drew one class only)


class MetricsReport(BaseModel):
    """All metrics of one set of predictions, with the settings that produced them."""

    model_config = ConfigDict(frozen=True)

    n: int
    positive_rate: float
    threshold: float
    n_bootstrap: int
    confidence: float
    seed: int
    n_bins: int
    n_groups: int | None = None  # groups resampled by the cluster bootstrap; None: rows resampled one by one
    accuracy: MetricValue
    balanced_accuracy: MetricValue
    mcc: MetricValue
    reward: MetricValue
    precision: MetricValue
    recall: MetricValue
    f1: MetricValue
    auroc: MetricValue
    auprc: MetricValue
    ece: MetricValue
    mce: MetricValue
    ace: MetricValue
    brier: MetricValue
    nll: MetricValue
    aurc: MetricValue
    augrc: MetricValue

    def metric(self, name: MetricName) -> MetricValue:
        """The named metric (names as in ``METRIC_NAMES``)."""
        if name not in METRIC_NAMES:
            raise ValueError(f"unknown metric {name!r}; choose one of {list(METRIC_NAMES)}")
        return getattr(self, name)

    def to_flat_dict(self) -> dict[str, float]:
        """Defined values and interval ends as ``name``, ``name_ci_low``, ``name_ci_high`` (for metric logs)."""
        flat: dict[str, float] = {"n": float(self.n), "positive_rate": self.positive_rate}
        for name in METRIC_NAMES:
            metric = self.metric(name)
            if metric.value is None:
                continue
            flat[name] = metric.value
            if metric.ci_low is not None and metric.ci_high is not None:
                flat[f"{name}_ci_low"] = metric.ci_low
                flat[f"{name}_ci_high"] = metric.ci_high
        return flat


class ReliabilityBins(BaseModel):
    """Equal-width top-label confidence bins of a reliability diagram (Guo et al. 2017), right-closed:
    bin m holds the confidences in (edges[m], edges[m + 1]]."""

    edges: list[float]
    count: list[int]
    mean_confidence: list[float | None]  # None for an empty bin
    accuracy: list[float | None]
    ece: float


class RiskCoverageCurve(BaseModel):
    """Selective and generalized risk at each distinct confidence level, most confident first."""

    coverage: list[float]
    selective_risk: list[float]
    generalized_risk: list[float]


def as_binary_labels(labels: np.ndarray, *, name: str = "labels") -> np.ndarray:
    """Labels as a 1-D int8 array of 0/1 (1 = roadwork), or a ValueError saying which rows are wrong."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name}: empty; metrics need at least one sample")
    if array.dtype == bool:
        return array.astype(np.int8)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name}: expected numbers 0/1, got dtype {array.dtype}")
    bad = np.flatnonzero(~np.isin(array, (0, 1)))
    if bad.size:
        raise ValueError(
            f"{name}: {bad.size} values are not 0 or 1 (first at row {bad[0]}: {array[bad[0]]!r}); "
            "use 1 = roadwork, 0 = no roadwork"
        )
    return array.astype(np.int8)


def as_finite_vector(values: np.ndarray, *, name: str, length: int) -> np.ndarray:
    """A 1-D float64 array of the given length with no NaN or infinity, or a ValueError naming the rows."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if array.size != length:
        raise ValueError(f"{name}: length {array.size} does not match the {length} labels; pass one value per label")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{name}: expected real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name}: {bad.size} values are NaN or infinite (first at row {bad[0]}: {array[bad[0]]})")
    return array


def as_probabilities(probs: np.ndarray, *, name: str = "probs", length: int) -> np.ndarray:
    """Finite P(roadwork) values in [0, 1], or a ValueError naming the rows outside."""
    array = as_finite_vector(probs, name=name, length=length)
    bad = np.flatnonzero((array < 0.0) | (array > 1.0))
    if bad.size:
        raise ValueError(
            f"{name}: {bad.size} values are outside [0, 1] (first at row {bad[0]}: {array[bad[0]]}); "
            "pass probabilities, not logits (apply a sigmoid first)"
        )
    return array


def decision_metrics_from_counts(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray
) -> dict[str, np.ndarray]:
    """Confusion-matrix metrics for arrays of (possibly weighted) counts; NaN where a metric is undefined.

    MCC (Matthews 1975) is NaN when the labels hold one class only, and 0 when the labels hold
    both classes but the predictions one: the limit convention of scikit-learn, which the subnet
    validator uses. The reward is the validator's ``(0.5 * max(MCC, 0) + 0.5 * accuracy) ** 3``,
    here with both terms on the whole set (the validator uses the last 100 and last 10 answers).
    """
    tp, fp, fn, tn = (np.asarray(count, dtype=np.float64) for count in (tp, fp, fn, tn))
    positives, negatives = tp + fn, fp + tn
    predicted_pos, predicted_neg = tp + fp, fn + tn
    accuracy = _ratio(tp + tn, positives + negatives)
    recall = _ratio(tp, positives)
    specificity = _ratio(tn, negatives)
    both_classes = (positives > 0) & (negatives > 0)
    denominator = np.sqrt(predicted_pos * predicted_neg) * np.sqrt(positives * negatives)
    mcc = np.where(both_classes, _ratio(tp * tn - fp * fn, denominator, empty=0.0), np.nan)
    return {
        "accuracy": accuracy,
        "balanced_accuracy": (recall + specificity) / 2.0,
        "mcc": mcc,
        "reward": (0.5 * np.maximum(mcc, 0.0) + 0.5 * accuracy) ** 3,
        "precision": _ratio(tp, predicted_pos),
        "recall": recall,
        "f1": _ratio(2.0 * tp, 2.0 * tp + fp + fn),
    }


def decision_mcc(predicted: np.ndarray, labels: np.ndarray) -> float:
    """MCC of boolean decisions against 0/1 labels (NaN or 0 as in :func:`decision_metrics_from_counts`)."""
    predicted, positive = np.asarray(predicted, dtype=bool), np.asarray(labels) == 1
    counts = (predicted & positive, predicted & ~positive, ~predicted & positive, ~predicted & ~positive)
    return float(decision_metrics_from_counts(*(count.sum() for count in counts))["mcc"])


def bootstrap_indices(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """The ``n_bootstrap x n`` matrix of resampled row indices (with replacement) used by every bootstrap here.

    Public so that a caller can reproduce any resample: row ``b`` is the ``b``-th resample.
    """
    return np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n), dtype=np.int32)


def group_codes(groups: np.ndarray | None, length: int) -> np.ndarray | None:
    """Integer code per row of the resampling groups (None: every row is its own group), or a ValueError."""
    if groups is None:
        return None
    array = np.asarray(groups)
    if array.shape != (length,):
        raise ValueError(f"groups: expected one group per label ({length}), got shape {array.shape}")
    missing = np.flatnonzero(pd.isna(array))
    if missing.size:
        raise ValueError(
            f"groups: {missing.size} rows have no group (first at row {int(missing[0])}); give every row one"
        )
    return pd.factorize(array, sort=True)[0]


def bootstrap_group_weights(codes: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """The ``n_bootstrap x n_groups`` matrix of how often each group is drawn in each cluster-bootstrap resample."""
    n_groups = int(codes.max()) + 1
    draws = np.random.default_rng(seed).integers(0, n_groups, size=(n_bootstrap, n_groups), dtype=np.int32)
    return _count(draws, n_groups)


def higher_is_better(name: str) -> bool:
    """Whether a larger value of the named metric is better (scores) or worse (errors, losses, calibration gaps).

    Raises:
        ValueError: an unknown metric name.
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; choose one of {list(METRIC_NAMES)}")
    return name not in LOWER_IS_BETTER


def compute_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    threshold: float = 0.5,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    n_bins: int = 15,
    groups: np.ndarray | None = None,
) -> MetricsReport:
    """All metrics of binary predictions ``probs`` = P(roadwork), each with a bootstrap percentile interval.

    Args:
        labels: 1 = roadwork, 0 = no roadwork.
        probs: P(roadwork) in [0, 1], one per label.
        threshold: decision threshold; a sample is predicted roadwork when ``p > threshold``.
        n_bootstrap: resamples of the percentile bootstrap; 0 gives point estimates only.
        confidence: coverage of the intervals (0.95 gives the 2.5th and 97.5th percentiles).
        seed: seed of the resampling, so reports are reproducible.
        n_bins: bins of ECE / MCE (equal width) and ACE (equal mass).
        groups: one group id per label (e.g. the split group: a sequence with its near-duplicates); the
            bootstrap then resamples whole groups. None resamples rows one by one.

    Raises:
        ValueError: empty input, length mismatch, labels not 0/1, probabilities NaN, infinite or
            outside [0, 1], groups missing or of the wrong length, or settings out of range; the message
            names the problem.
    """
    _check_settings(threshold=threshold, n_bootstrap=n_bootstrap, confidence=confidence, n_bins=n_bins)
    y = as_binary_labels(labels)
    p = as_probabilities(probs, length=y.size)
    sample = _Sample(y, p, threshold=threshold, n_bins=n_bins)
    point = sample.metric_rows(*sample.point_counts())
    reasons = _undefined_reasons(y, p, threshold)
    codes = group_codes(groups, y.size)
    rows = _bootstrap_rows([sample], n_bootstrap=n_bootstrap, seed=seed, codes=codes)[0] if n_bootstrap else None
    values = {
        name: _metric_value(name, point[name][0], None if rows is None else rows[name], reasons, confidence)
        for name in METRIC_NAMES
    }
    return MetricsReport(
        n=int(y.size),
        positive_rate=float(y.mean()),
        threshold=threshold,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
        n_bins=n_bins,
        n_groups=None if codes is None else int(codes.max()) + 1,
        **values,
    )


def paired_bootstrap_difference(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    metric: MetricName = "mcc",
    *,
    threshold: float = 0.5,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    n_bins: int = 15,
    groups: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """``metric(a) - metric(b)`` on the same samples, with a paired bootstrap percentile interval.

    Both models are scored on the same resamples, so the interval reflects the difference and
    not the two models' separate sampling noise: the comparison a promotion gate needs
    (a candidate ``a`` against the champion ``b``; the interval above 0 means ``a`` is better for
    metrics where higher is better, worse for the others: see :func:`higher_is_better`). ``groups`` as in
    :func:`compute_metrics`.

    Returns:
        (difference, ci_low, ci_high).

    Raises:
        ValueError: bad input (as ``compute_metrics``), an unknown metric, no resamples, or a
            metric undefined on these labels (e.g. MCC when the labels hold one class).
    """
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; choose one of {list(METRIC_NAMES)}")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap={n_bootstrap}: a paired interval needs at least one resample")
    _check_settings(threshold=threshold, n_bootstrap=n_bootstrap, confidence=confidence, n_bins=n_bins)
    y = as_binary_labels(labels)
    samples = [
        _Sample(y, as_probabilities(probs, name=name, length=y.size), threshold=threshold, n_bins=n_bins)
        for name, probs in (("probs_a", probs_a), ("probs_b", probs_b))
    ]
    points = [sample.metric_rows(*sample.point_counts())[metric][0] for sample in samples]
    for name, sample, point in zip(("probs_a", "probs_b"), samples, points):
        if not np.isfinite(point):
            reason = _undefined_reasons(y, sample.p, threshold)[metric]
            raise ValueError(f"{metric} is undefined for {name}: {reason}; compare on another metric")
    rows_a, rows_b = _bootstrap_rows(samples, n_bootstrap=n_bootstrap, seed=seed, codes=group_codes(groups, y.size))
    interval = _percentile_interval(rows_a[metric] - rows_b[metric], confidence, f"{metric} difference")
    if interval is None:
        raise ValueError(f"{metric} is undefined on every resample; use more samples or another metric")
    return float(points[0] - points[1]), *interval


def reliability_bins(labels: np.ndarray, probs: np.ndarray, *, n_bins: int = 15) -> ReliabilityBins:
    """Per-bin counts, mean confidence and accuracy of the top-label prediction, and the ECE they give."""
    _check_settings(threshold=0.5, n_bootstrap=0, confidence=0.95, n_bins=n_bins)
    y = as_binary_labels(labels)
    sample = _Sample(y, as_probabilities(probs, length=y.size), threshold=0.5, n_bins=n_bins)
    cells, _ = sample.point_counts()
    count, confidence_sum, correct_sum = sample.bin_sums(sample.sums(cells))
    count, confidence_sum, correct_sum = count[0], confidence_sum[0], correct_sum[0]
    filled = count > 0
    return ReliabilityBins(
        edges=np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        count=count.astype(int).tolist(),
        mean_confidence=[float(s / c) if f else None for s, c, f in zip(confidence_sum, count, filled)],
        accuracy=[float(s / c) if f else None for s, c, f in zip(correct_sum, count, filled)],
        ece=float(_ece(count, confidence_sum, correct_sum)),
    )


def risk_coverage_curve(labels: np.ndarray, probs: np.ndarray) -> RiskCoverageCurve:
    """Risk-coverage points of the top label, ranked by confidence max(p, 1 - p) (Geifman & El-Yaniv 2017).

    One point per distinct confidence level (tied samples are accepted together); the
    generalized risk is errors among the accepted divided by all samples (Traub et al. 2024).
    """
    y = as_binary_labels(labels)
    sample = _Sample(y, as_probabilities(probs, length=y.size), threshold=0.5, n_bins=1)
    _, confidence_cells = sample.point_counts()
    _, accepted, _, errors = (values[0] for values in sample.selective_cumulants(confidence_cells))
    return RiskCoverageCurve(
        coverage=(accepted / y.size).tolist(),
        selective_risk=(errors / accepted).tolist(),
        generalized_risk=(errors / y.size).tolist(),
    )


class _Sample:
    """One set of predictions reduced to count cells that every resample shares.

    Every per-sample quantity depends only on (p, label), so a resample is fully described by how
    many of its draws fall in each cell (distinct probability, label); the selective metrics need
    only the counts per cell (distinct confidence, top-label error). Tied samples share a cell, so
    ties are handled exactly (a threshold cannot split them), and heavily tied scores are cheap.
    Cells are ordered from the highest value down, label 0 (or correct) before label 1 (or error).
    """

    def __init__(self, y: np.ndarray, p: np.ndarray, *, threshold: float, n_bins: int) -> None:
        self.p, self.n_bins = p, n_bins
        values, rank = np.unique(p, return_inverse=True)
        self.n_values = values.size
        self.values = values[::-1]
        self.cell = 2 * (values.size - 1 - rank) + y
        cell_p = np.repeat(self.values, 2)
        cell_y = np.tile([0.0, 1.0], values.size)
        top_correct = ((cell_p > 0.5) == cell_y).astype(np.float64)
        cell_confidence = np.maximum(cell_p, 1.0 - cell_p)
        confidence_values, confidence_rank = np.unique(np.maximum(p, 1.0 - p), return_inverse=True)
        self.n_confidences = confidence_values.size
        self.confidence_cell = 2 * (confidence_values.size - 1 - confidence_rank) + ((p > 0.5) != y)

        predicted = (cell_p > threshold).astype(np.float64)
        p_true = np.clip(np.where(cell_y == 1, cell_p, 1.0 - cell_p), _LOG_EPS, 1.0 - _LOG_EPS)
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        bins = np.clip(np.searchsorted(edges, cell_confidence, side="left") - 1, 0, n_bins - 1)  # ((m-1)/M, m/M]
        one_hot = np.zeros((cell_p.size, n_bins))
        one_hot[np.arange(cell_p.size), bins] = 1.0
        self.per_cell = np.column_stack(
            [
                np.ones_like(cell_p),
                cell_y,
                predicted,
                cell_y * predicted,
                (cell_p - cell_y) ** 2,
                -np.log(p_true),
                one_hot,
                one_hot * cell_confidence[:, None],
                one_hot * top_correct[:, None],
            ]
        )

    @property
    def width(self) -> int:
        """The widest count matrix per resample (sizes the bootstrap chunks)."""
        return max(self.p.size, 2 * self.n_values, 2 * self.n_confidences)

    def counts(self, indices: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cell counts of each row of sample indices, each draw counted ``weights`` times (default once):
        (probability cells, confidence cells)."""
        cells = _count(self.cell[indices], 2 * self.n_values, weights)
        return cells, _count(self.confidence_cell[indices], 2 * self.n_confidences, weights)

    def point_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell counts of the sample itself (a single row)."""
        return self.counts(np.arange(self.p.size)[None, :])

    def sums(self, cells: np.ndarray) -> np.ndarray:
        """Sums of every per-sample column, one row per resample (one matrix product)."""
        return cells @ self.per_cell

    def bin_sums(self, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-bin count, confidence sum and correct-prediction sum, taken from ``sums``."""
        m = self.n_bins
        return sums[:, 6 : 6 + m], sums[:, 6 + m : 6 + 2 * m], sums[:, 6 + 2 * m : 6 + 3 * m]

    @staticmethod
    def selective_cumulants(confidence_cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per distinct confidence, most confident first: accepted, accepted so far, errors, errors so far."""
        errors = confidence_cells[:, 1::2]
        accepted = confidence_cells[:, 0::2] + errors
        return accepted, np.cumsum(accepted, axis=1), errors, np.cumsum(errors, axis=1)

    def metric_rows(self, cells: np.ndarray, confidence_cells: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric for each row of cell counts (one row per resample); NaN where undefined."""
        sums = self.sums(cells)
        n, positives, predicted_pos, tp = sums[:, 0], sums[:, 1], sums[:, 2], sums[:, 3]
        negatives = n - positives
        fp, fn = predicted_pos - tp, positives - tp
        rows = decision_metrics_from_counts(tp, fp, fn, negatives - fp)
        rows["brier"] = sums[:, 4] / n
        rows["nll"] = sums[:, 5] / n
        count, confidence_sum, correct_sum = self.bin_sums(sums)
        rows["ece"] = _ece(count, confidence_sum, correct_sum)
        rows["mce"] = (np.abs(correct_sum - confidence_sum) / np.maximum(count, 1.0)).max(axis=1)

        negatives_at, positives_at = cells[:, 0::2], cells[:, 1::2]  # per distinct p, highest first
        samples_at = negatives_at + positives_at
        samples_through, positives_through = np.cumsum(samples_at, axis=1), np.cumsum(positives_at, axis=1)
        # Mann-Whitney: a positive beats the negatives with a lower p and half of those with the same p.
        beaten = negatives[:, None] - (samples_through - positives_through) + 0.5 * negatives_at
        rows["auroc"] = _ratio((positives_at * beaten).sum(axis=1), positives * negatives)
        # Average precision (as scikit-learn): each distinct p adds its recall step times the precision there.
        precision_at = _ratio(positives_through, samples_through, empty=0.0)
        rows["auprc"] = _ratio((positives_at * precision_at).sum(axis=1), positives)
        rows["ace"] = self._ace(samples_at, positives_at, samples_through, positives_through, n)

        accepted, accepted_through, errors, errors_through = self.selective_cumulants(confidence_cells)
        # AURC: each accepted sample adds 1/n of coverage at the selective risk of its confidence level.
        rows["aurc"] = (accepted * _ratio(errors_through, accepted_through, empty=0.0)).sum(axis=1) / n
        # AUGRC (Traub et al. 2024): trapezoid of the generalized risk errors/n over coverage, from (0, 0).
        rows["augrc"] = (accepted * (2.0 * errors_through - errors)).sum(axis=1) / (2.0 * n**2)
        return rows

    def _ace(
        self,
        samples_at: np.ndarray,
        positives_at: np.ndarray,
        samples_through: np.ndarray,
        positives_through: np.ndarray,
        n: np.ndarray,
    ) -> np.ndarray:
        """Adaptive calibration error (Nixon et al. 2019) with ``n_bins`` equal-mass ranges.

        Nixon's ACE averages |accuracy - confidence| over R equal-mass ranges of each class's
        probability and over the K classes. With two classes the class-0 ranges mirror the
        class-1 ranges and give the same terms, so ACE = mean over ranges of
        |fraction of roadwork - mean p|. Each range holds exactly n / R samples: samples tied on
        the p that straddles a range boundary are split pro rata between the two ranges (p cannot
        order them), which keeps the mass equal for any n and for the repeated draws of a resample.
        """
        rows, columns = samples_at.shape
        probability_at = samples_at * self.values
        probability_through = np.cumsum(probability_at, axis=1)
        inner_edges = (np.arange(1, self.n_bins)[None, :] * (n[:, None] / self.n_bins)).ravel()
        # Offsetting each row by more than its total mass makes all rows one increasing sequence.
        offsets = np.arange(rows)[:, None] * (n.max() + 1.0)
        row = np.repeat(np.arange(rows), self.n_bins - 1)
        flat = np.searchsorted((samples_through + offsets).ravel(), inner_edges + offsets[row, 0], side="right")
        column = flat - row * columns  # the distinct p whose samples straddle each edge
        below = inner_edges - (samples_through[row, column] - samples_at[row, column])  # its samples below the edge
        positive_below = positives_through[row, column] - positives_at[row, column]
        positive_below += positives_at[row, column] * below / samples_at[row, column]
        probability_below = probability_through[row, column] - probability_at[row, column]
        probability_below += self.values[column] * below
        zeros = np.zeros((rows, 1))
        positive_edges = np.hstack([zeros, positive_below.reshape(rows, -1), positives_through[:, -1:]])
        probability_edges = np.hstack([zeros, probability_below.reshape(rows, -1), probability_through[:, -1:]])
        return np.abs(np.diff(positive_edges, axis=1) - np.diff(probability_edges, axis=1)).sum(axis=1) / n


def _count(keys: np.ndarray, n_keys: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Per row of ``keys``, how many times each key in ``range(n_keys)`` occurs, each occurrence counted
    ``weights`` times when given (as float64)."""
    offsets = np.arange(keys.shape[0], dtype=np.int64)[:, None] * n_keys
    flat_weights = None if weights is None else np.broadcast_to(weights, keys.shape).ravel()
    counts = np.bincount((keys + offsets).ravel(), weights=flat_weights, minlength=keys.shape[0] * n_keys)
    return counts.reshape(keys.shape[0], n_keys).astype(np.float64)


def _ece(count: np.ndarray, confidence_sum: np.ndarray, correct_sum: np.ndarray) -> np.ndarray:
    """ECE (Guo et al. 2017): sum over bins of |B|/n * |acc(B) - conf(B)| = sum |correct - confidence| / n."""
    return np.abs(correct_sum - confidence_sum).sum(axis=-1) / count.sum(axis=-1)


def _ratio(numerator: np.ndarray, denominator: np.ndarray, *, empty: float = np.nan) -> np.ndarray:
    """numerator / denominator, with ``empty`` where the denominator is 0."""
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, float), np.asarray(denominator, float))
    out = np.full(numerator.shape, empty)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _bootstrap_rows(
    samples: list[_Sample], *, n_bootstrap: int, seed: int, codes: np.ndarray | None = None
) -> list[dict[str, np.ndarray]]:
    """Metric values per resample for each prediction set, all scored on the same resamples (of rows, or of
    the groups ``codes`` when given)."""
    size = samples[0].p.size
    if codes is None:
        indices, group_weights = bootstrap_indices(size, n_bootstrap, seed), None
    else:
        indices, group_weights = (
            np.broadcast_to(np.arange(size), (n_bootstrap, size)),
            bootstrap_group_weights(codes, n_bootstrap, seed),
        )
    chunk = max(1, _CHUNK_ELEMENTS // max(sample.width for sample in samples))
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in samples]
    # One BLAS thread: the products are small, and on a shared 2-core machine BLAS threads that spin
    # against other processes turned 0.3 s of matrix products into 45 s (measured).
    with (
        threadpool_limits(limits=1, user_api="blas"),
        tqdm(total=n_bootstrap, desc="bootstrap", unit="resample", leave=False) as progress,
    ):
        for start in range(0, n_bootstrap, chunk):
            block = indices[start : start + chunk]
            weights = None if group_weights is None else group_weights[start : start + chunk][:, codes]
            for part, sample in zip(parts, samples):
                part.append(sample.metric_rows(*sample.counts(block, weights)))
            progress.update(block.shape[0])
    return [{name: np.concatenate([rows[name] for rows in part]) for name in METRIC_NAMES} for part in parts]


def _percentile_interval(values: np.ndarray, confidence: float, what: str) -> tuple[float, float] | None:
    """Percentile interval of the finite resample values (undefined ones are logged); None if there are none."""
    finite = values[np.isfinite(values)]
    if finite.size < values.size:
        logger.warning(
            "%s undefined on %d of %d resamples; interval from the rest", what, values.size - finite.size, values.size
        )
    if finite.size == 0:
        return None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return float(low), float(high)


def _metric_value(
    name: str, point: float, rows: np.ndarray | None, reasons: dict[str, str], confidence: float
) -> MetricValue:
    if not np.isfinite(point):
        return MetricValue(value=None, undefined_reason=reasons[name])
    if rows is None:
        return MetricValue(value=float(point))
    n_undefined = int((~np.isfinite(rows)).sum())
    low, high = _percentile_interval(rows, confidence, name) or (None, None)
    return MetricValue(value=float(point), ci_low=low, ci_high=high, n_resamples_undefined=n_undefined)


def _undefined_reasons(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, str]:
    """Why each metric is undefined on these samples (only the undefined ones are keys)."""
    positives = int(y.sum())
    negatives = y.size - positives
    predicted_pos = int((p > threshold).sum())
    reasons: dict[str, str] = {}
    if positives == 0 or negatives == 0:
        present = "roadwork (1)" if negatives == 0 else "no roadwork (0)"
        why = f"labels hold only class {present} in {y.size} samples; this metric needs both classes"
        reasons.update(dict.fromkeys(("balanced_accuracy", "mcc", "reward", "auroc"), why))
    if positives == 0:
        reasons["recall"] = "no roadwork labels: recall is 0/0"
        reasons["auprc"] = "no roadwork labels: average precision has no recall axis"
    if predicted_pos == 0:
        reasons["precision"] = f"no probability above the threshold {threshold}: precision is 0/0"
        if positives == 0:
            reasons["f1"] = "no roadwork labels and no roadwork predictions: F1 is 0/0"
    return reasons


def _check_settings(*, threshold: float, n_bootstrap: int, confidence: float, n_bins: int) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold}: must lie in [0, 1]")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap={n_bootstrap}: must be >= 0 (0 = no intervals)")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}: must lie strictly between 0 and 1 (e.g. 0.95)")
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins}: must be >= 1")
