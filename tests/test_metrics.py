"""Metrics against scikit-learn / torchmetrics / closed forms, bootstrap intervals, undefined cases, plots."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm
from torchmetrics.classification import MulticlassCalibrationError

from stage1_core.common.metrics import (
    METRIC_NAMES,
    bootstrap_indices,
    compute_metrics,
    paired_bootstrap_difference,
    reliability_bins,
    risk_coverage_curve,
)
from stage1_core.evaluation.plots import confusion_matrix_png, reliability_diagram_png, risk_coverage_png


def predictions(n: int, seed: int, *, sharpness: float = 1.6, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z), probabilities sigmoid(sharpness * z): an overconfident model for sharpness > 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(int)
    probs = 1.0 / (1.0 + np.exp(-sharpness * z))
    return labels, np.round(probs, 2) if ties else probs


def top_label(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) of the top-label prediction, written independently of the module."""
    return np.maximum(probs, 1.0 - probs), ((probs > 0.5).astype(int) == labels).astype(int)


@pytest.mark.parametrize("ties", [False, True])
def test_matches_scikit_learn(ties: bool) -> None:
    labels, probs = predictions(2000, seed=1, ties=ties)
    report = compute_metrics(labels, probs, n_bootstrap=0)
    predicted = probs > 0.5
    expected = {
        "accuracy": skm.accuracy_score(labels, predicted),
        "balanced_accuracy": skm.balanced_accuracy_score(labels, predicted),
        "mcc": skm.matthews_corrcoef(labels, predicted),
        "precision": skm.precision_score(labels, predicted),
        "recall": skm.recall_score(labels, predicted),
        "f1": skm.f1_score(labels, predicted),
        "auroc": skm.roc_auc_score(labels, probs),
        "auprc": skm.average_precision_score(labels, probs),
        "brier": skm.brier_score_loss(labels, probs),
        "nll": skm.log_loss(labels, probs),
    }
    for name, value in expected.items():
        assert report.metric(name).value == pytest.approx(value, rel=1e-10, abs=1e-12), name
    assert report.n == 2000
    assert report.positive_rate == pytest.approx(labels.mean())


def test_threshold_is_strict_and_moves_decisions() -> None:
    labels = np.array([0, 1, 1, 0, 1])
    probs = np.array([0.5, 0.5, 0.7, 0.2, 0.9])
    at_half = compute_metrics(labels, probs, n_bootstrap=0)
    assert at_half.accuracy.value == pytest.approx(0.8)  # both 0.5 count as "no roadwork"
    at_seven = compute_metrics(labels, probs, threshold=0.7, n_bootstrap=0)
    assert at_seven.recall.value == pytest.approx(skm.recall_score(labels, probs > 0.7))
    assert at_seven.recall.value == pytest.approx(1 / 3)


@pytest.mark.parametrize(("name", "norm"), [("ece", "l1"), ("mce", "max")])
def test_top_label_calibration_errors_match_torchmetrics(name: str, norm: str) -> None:
    labels, probs = predictions(3000, seed=2)
    # torchmetrics puts confidence 1.0 in a bin of its own, and breaks ties at 0.5 its own way: avoid both
    assert np.all((probs > 0.0) & (probs < 1.0) & (probs != 0.5))
    reference = MulticlassCalibrationError(num_classes=2, n_bins=15, norm=norm)
    expected = reference(torch.tensor(np.stack([1.0 - probs, probs], axis=1)), torch.tensor(labels)).item()
    value = compute_metrics(labels, probs, n_bootstrap=0).metric(name).value
    assert value == pytest.approx(expected, rel=1e-5)  # torchmetrics casts confidences to float32
    assert value > 0.02  # the synthetic model is miscalibrated: a zero here would be a broken comparison


def test_reliability_bins_give_the_report_ece() -> None:
    labels, probs = predictions(1000, seed=3)
    bins = reliability_bins(labels, probs)
    assert sum(bins.count) == 1000
    assert bins.ece == pytest.approx(compute_metrics(labels, probs, n_bootstrap=0).ece.value)
    confidence, correct = top_label(labels, probs)
    filled = [i for i, count in enumerate(bins.count) if count]
    first = filled[0]
    in_first = (confidence > bins.edges[first]) & (confidence <= bins.edges[first + 1])
    assert bins.accuracy[first] == pytest.approx(correct[in_first].mean())
    assert bins.mean_confidence[first] == pytest.approx(confidence[in_first].mean())


def test_calibration_bins_are_guo_et_al_right_closed_intervals() -> None:
    """Bin m is (m/M - 1/M, m/M], as Guo et al.'s reference ECE (conf > lower and conf <= upper): a confidence on
    an edge belongs to the bin below, and 1.0 to the last bin. Confidences here sit exactly on the edges."""
    edges = np.linspace(0.0, 1.0, 16)
    on_edges = edges[8:]  # 8/15 ... 1.0: every edge above 0.5, so each is its own top-label confidence
    probs = np.repeat(on_edges, 3)
    labels = np.tile([1, 1, 0], on_edges.size)  # accuracy 2/3 in every group of tied confidences
    confidence, correct = top_label(labels, probs)
    expected_count = [int(((confidence > low) & (confidence <= high)).sum()) for low, high in zip(edges, edges[1:])]
    gaps = [
        abs(correct[in_bin].mean() - confidence[in_bin].mean()) * in_bin.sum() / confidence.size
        for low, high in zip(edges, edges[1:])
        if (in_bin := (confidence > low) & (confidence <= high)).any()
    ]
    bins = reliability_bins(labels, probs)
    assert bins.count == expected_count
    assert bins.count[:8] == [0] * 7 + [3]  # 8/15 lands in (7/15, 8/15], not in (8/15, 9/15]
    assert bins.count[-1] == 3  # 1.0 alone in (14/15, 1]: 14/15 closes the bin below
    assert bins.ece == pytest.approx(sum(gaps), rel=1e-12)
    assert compute_metrics(labels, probs, n_bootstrap=0).ece.value == pytest.approx(sum(gaps), rel=1e-12)


def test_ace_uses_equal_mass_ranges_of_both_classes() -> None:
    labels, probs = predictions(1500, seed=4)  # 1500 = 15 ranges of 100 samples
    terms = []
    for class_probs, class_hits in ((probs, labels), (1.0 - probs, 1 - labels)):  # Nixon et al. 2019, K = 2
        order = np.argsort(class_probs)
        for chunk in np.split(order, 15):
            terms.append(abs(class_hits[chunk].mean() - class_probs[chunk].mean()))
    assert compute_metrics(labels, probs, n_bootstrap=0).ace.value == pytest.approx(np.mean(terms), rel=1e-9)


def test_ace_splits_ranges_by_mass_through_ties() -> None:
    # 1000 samples in 15 ranges of 66.67, probabilities tied in 101 values: boundaries fall inside tie groups.
    labels, probs = predictions(1000, seed=14, sharpness=1.0, ties=True)
    values, rank = np.unique(probs, return_inverse=True)
    samples = np.bincount(rank)
    # Cumulative label and probability mass as piecewise-linear functions of sample mass: tied samples spread evenly.
    mass = np.r_[0.0, np.cumsum(samples)]
    positive_mass = np.r_[0.0, np.cumsum(np.bincount(rank, weights=labels))]
    probability_mass = np.r_[0.0, np.cumsum(samples * values)]
    edges = np.linspace(0.0, 1000.0, 16)
    gaps = np.diff(np.interp(edges, mass, positive_mass)) - np.diff(np.interp(edges, mass, probability_mass))
    assert compute_metrics(labels, probs, n_bootstrap=0).ace.value == pytest.approx(np.abs(gaps).mean() / (1000 / 15))


def test_metrics_do_not_depend_on_sample_order() -> None:
    labels, probs = predictions(700, seed=15, ties=True)
    order = np.random.default_rng(0).permutation(700)
    shuffled = compute_metrics(labels[order], probs[order], n_bootstrap=0)
    original = compute_metrics(labels, probs, n_bootstrap=0)
    for name in METRIC_NAMES:
        assert shuffled.metric(name).value == pytest.approx(original.metric(name).value, rel=1e-12), name


@pytest.mark.parametrize("ties", [False, True])
def test_augrc_matches_the_closed_form(ties: bool) -> None:
    labels, probs = predictions(2000, seed=5, ties=ties)
    confidence, correct = top_label(labels, probs)
    accuracy = correct.mean()
    auroc_f = skm.roc_auc_score(correct, confidence)  # confidence telling correct from wrong
    expected = (1 - accuracy) * accuracy * (1 - auroc_f) + 0.5 * (1 - accuracy) ** 2  # Traub et al. 2024
    assert compute_metrics(labels, probs, n_bootstrap=0).augrc.value == pytest.approx(expected, rel=1e-9)


def test_aurc_is_the_mean_selective_risk_over_coverage() -> None:
    labels, probs = predictions(2000, seed=6)
    confidence, correct = top_label(labels, probs)
    errors = 1 - correct[np.argsort(-confidence)]
    selective_risk = np.cumsum(errors) / np.arange(1, errors.size + 1)
    assert compute_metrics(labels, probs, n_bootstrap=0).aurc.value == pytest.approx(selective_risk.mean(), rel=1e-9)
    curve = risk_coverage_curve(labels, probs)
    np.testing.assert_allclose(curve.selective_risk, selective_risk, rtol=1e-12)
    assert curve.coverage[-1] == pytest.approx(1.0)
    assert curve.generalized_risk[-1] == pytest.approx(1.0 - correct.mean())


def test_reward_is_the_validators_formula_with_mcc_clipped_at_zero() -> None:
    labels, probs = predictions(1000, seed=7)
    for scores in (probs, 1.0 - probs):  # a good model, then a worse-than-chance one
        report = compute_metrics(labels, scores, n_bootstrap=0)
        mcc = skm.matthews_corrcoef(labels, scores > 0.5)
        accuracy = skm.accuracy_score(labels, scores > 0.5)
        assert report.reward.value == pytest.approx((0.5 * max(mcc, 0.0) + 0.5 * accuracy) ** 3)
    assert mcc < 0


def test_interval_contains_the_estimate_and_narrows_with_n() -> None:
    small = compute_metrics(*predictions(300, seed=8), n_bootstrap=400)
    large = compute_metrics(*predictions(5000, seed=8), n_bootstrap=400)
    for name in METRIC_NAMES:
        small_metric, large_metric = small.metric(name), large.metric(name)
        for metric in (small_metric, large_metric):
            assert metric.ci_low <= metric.value <= metric.ci_high, name
        assert large_metric.ci_high - large_metric.ci_low < small_metric.ci_high - small_metric.ci_low, name


def test_vectorised_bootstrap_equals_explicit_resamples() -> None:
    labels, probs = predictions(200, seed=9, ties=True)
    n_bootstrap, seed = 40, 3
    report = compute_metrics(labels, probs, n_bootstrap=n_bootstrap, seed=seed)
    indices = bootstrap_indices(labels.size, n_bootstrap, seed)
    reference = {
        "auroc": lambda y, p: skm.roc_auc_score(y, p),
        "auprc": lambda y, p: skm.average_precision_score(y, p),
        "mcc": lambda y, p: skm.matthews_corrcoef(y, p > 0.5),
        "brier": lambda y, p: skm.brier_score_loss(y, p),
    }
    for name, score in reference.items():
        values = [score(labels[row], probs[row]) for row in indices]
        low, high = np.quantile(values, [0.025, 0.975])
        assert report.metric(name).ci_low == pytest.approx(low, rel=1e-9), name
        assert report.metric(name).ci_high == pytest.approx(high, rel=1e-9), name


def test_bootstrap_is_reproducible_by_seed() -> None:
    labels, probs = predictions(500, seed=10)
    first = compute_metrics(labels, probs, n_bootstrap=100, seed=1)
    assert compute_metrics(labels, probs, n_bootstrap=100, seed=1) == first
    assert compute_metrics(labels, probs, n_bootstrap=100, seed=2).auroc.ci_low != first.auroc.ci_low


def test_cluster_bootstrap_of_copied_frames_equals_the_bootstrap_of_the_scenes() -> None:
    """Four identical frames per sequence carry the information of one scene.

    Resampling sequences gives exactly the intervals of the scenes alone (every metric is a ratio of counts),
    while resampling frames one by one narrows them.
    """
    labels, probs = predictions(150, seed=14, ties=True)
    frames_labels, frames_probs, sequences = (
        np.repeat(labels, 4),
        np.repeat(probs, 4),
        np.repeat(np.arange(150) * 7 + 3, 4),
    )
    scenes = compute_metrics(labels, probs, n_bootstrap=200, seed=5)
    by_sequence = compute_metrics(frames_labels, frames_probs, n_bootstrap=200, seed=5, groups=sequences)
    by_frame = compute_metrics(frames_labels, frames_probs, n_bootstrap=200, seed=5)
    assert by_sequence.n_groups == 150 and by_frame.n_groups is None and by_sequence.n == 600
    for name in METRIC_NAMES:
        assert by_sequence.metric(name).value == pytest.approx(scenes.metric(name).value, rel=1e-9), name
        assert by_sequence.metric(name).ci_low == pytest.approx(scenes.metric(name).ci_low, rel=1e-9, abs=1e-12), name
        assert by_sequence.metric(name).ci_high == pytest.approx(scenes.metric(name).ci_high, rel=1e-9, abs=1e-12), name
    for name in ("mcc", "auroc", "accuracy", "ece"):
        frame_metric, sequence_metric = by_frame.metric(name), by_sequence.metric(name)
        assert frame_metric.ci_high - frame_metric.ci_low < 0.75 * (sequence_metric.ci_high - sequence_metric.ci_low), (
            name
        )
    paired_frames = paired_bootstrap_difference(
        frames_labels, frames_probs, 1.0 - frames_probs, "mcc", n_bootstrap=200, seed=5, groups=sequences
    )
    assert paired_frames == pytest.approx(
        paired_bootstrap_difference(labels, probs, 1.0 - probs, "mcc", n_bootstrap=200, seed=5)
    )


def test_groups_must_cover_every_label() -> None:
    labels, probs = predictions(20, seed=15)
    with pytest.raises(ValueError, match="one group per label"):
        compute_metrics(labels, probs, n_bootstrap=10, groups=np.zeros(19))
    with pytest.raises(ValueError, match="rows have no group.*row 3"):
        compute_metrics(labels, probs, n_bootstrap=10, groups=np.array(["a"] * 3 + [None] + ["b"] * 16, dtype=object))


def test_single_class_labels_give_reasons_not_zeros() -> None:
    rng = np.random.default_rng(11)
    probs = rng.random(200)
    report = compute_metrics(np.ones(200, dtype=int), probs, n_bootstrap=50)
    for name in ("auroc", "mcc", "balanced_accuracy", "reward"):
        metric = report.metric(name)
        assert metric.value is None and metric.ci_low is None, name
        assert "both classes" in metric.undefined_reason, name
    assert report.accuracy.value == pytest.approx(np.mean(probs > 0.5))
    assert report.recall.value == pytest.approx(report.accuracy.value)
    assert report.ece.value is not None and report.ece.ci_low is not None

    negatives = compute_metrics(np.zeros(200, dtype=int), probs * 0.4, n_bootstrap=0)
    for name in ("precision", "recall", "f1", "auprc"):
        assert negatives.metric(name).value is None and negatives.metric(name).undefined_reason, name
    assert negatives.accuracy.value == 1.0


def test_constant_predictions_give_mcc_zero_like_the_validator() -> None:
    labels = np.array([0, 1, 1, 0, 1, 1])
    report = compute_metrics(labels, np.full(6, 0.9), n_bootstrap=0)
    assert report.mcc.value == skm.matthews_corrcoef(labels, np.ones(6)) == 0.0
    assert report.precision.value == pytest.approx(4 / 6)


def test_resamples_missing_a_class_are_counted() -> None:
    labels = np.r_[np.zeros(18, dtype=int), np.ones(2, dtype=int)]
    probs = np.linspace(0.05, 0.95, 20)
    report = compute_metrics(labels, probs, n_bootstrap=200)
    assert report.auroc.value == pytest.approx(skm.roc_auc_score(labels, probs))
    # P(no positive drawn in 20 draws) = 0.9 ** 20 ~ 12%: some resamples must be undefined, and counted.
    assert 0 < report.auroc.n_resamples_undefined < 200
    assert report.accuracy.n_resamples_undefined == 0


@pytest.mark.parametrize(
    ("labels", "probs", "message"),
    [
        ([0, 1, 1], [0.2, np.nan, 0.4], "NaN or infinite.*row 1"),
        ([0, 1, 1], [0.2, np.inf, 0.4], "NaN or infinite"),
        ([0, 1, 1], [0.2, 1.5, 0.4], r"outside \[0, 1\].*row 1"),
        ([0, 1, 1], [-0.1, 0.5, 0.4], r"outside \[0, 1\].*row 0"),
        ([0, 2, 1], [0.2, 0.3, 0.4], "not 0 or 1.*row 1"),
        ([0, 0.5, 1], [0.2, 0.3, 0.4], "not 0 or 1"),
        ([0, 1, 1], [0.2, 0.3], "length 2 does not match the 3 labels"),
        ([], [], "empty"),
        ([[0, 1]], [[0.2, 0.3]], "1-D"),
    ],
)
def test_bad_input_is_named(labels: list, probs: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(np.array(labels), np.array(probs), n_bootstrap=0)


@pytest.mark.parametrize(
    ("setting", "message"),
    [({"threshold": 1.5}, "threshold"), ({"confidence": 1.0}, "confidence"), ({"n_bootstrap": -1}, "n_bootstrap")],
)
def test_bad_settings_are_named(setting: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(np.array([0, 1]), np.array([0.2, 0.8]), **setting)


def test_paired_difference_detects_the_better_model() -> None:
    labels, sharp = predictions(2000, seed=12)
    rng = np.random.default_rng(99)  # not the seed of the labels: the noise must be independent of z
    noisy = np.clip(sharp + rng.normal(0.0, 0.35, sharp.size), 0.0, 1.0)
    difference, low, high = paired_bootstrap_difference(labels, sharp, noisy, "mcc", n_bootstrap=300)
    expected = skm.matthews_corrcoef(labels, sharp > 0.5) - skm.matthews_corrcoef(labels, noisy > 0.5)
    assert difference == pytest.approx(expected)
    assert 0.0 < low <= difference <= high
    swapped = paired_bootstrap_difference(labels, noisy, sharp, "mcc", n_bootstrap=300)
    assert swapped == pytest.approx((-difference, -high, -low))
    assert paired_bootstrap_difference(labels, sharp, sharp, "auroc", n_bootstrap=50) == (0.0, 0.0, 0.0)


def test_paired_difference_refuses_undefined_metrics() -> None:
    with pytest.raises(ValueError, match="probs_a.*both classes"):
        paired_bootstrap_difference(np.ones(10, dtype=int), np.full(10, 0.7), np.full(10, 0.6), "mcc")
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap_difference(np.array([0, 1]), np.array([0.2, 0.8]), np.array([0.2, 0.8]), "kappa")


def test_flat_dict_holds_defined_values_and_intervals() -> None:
    flat = compute_metrics(np.ones(50, dtype=int), np.linspace(0.0, 1.0, 50), n_bootstrap=20).to_flat_dict()
    assert "auroc" not in flat and "mcc" not in flat
    assert flat["accuracy_ci_low"] <= flat["accuracy"] <= flat["accuracy_ci_high"]
    assert flat["n"] == 50.0


@pytest.mark.parametrize("draw", [reliability_diagram_png, risk_coverage_png, confusion_matrix_png])
def test_plots_are_png_images(draw) -> None:
    labels, probs = predictions(500, seed=13)
    png = draw(labels, probs)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.width > 200 and image.height > 200
    with pytest.raises(ValueError, match="outside"):
        draw(labels, probs * 2.0)
