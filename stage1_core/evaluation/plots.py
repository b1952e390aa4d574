"""Evaluation plots as PNG bytes, ready for a ZenML visualization or an MLflow artifact.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting needs no display,
touches no global figure state and is safe in worker processes. The numbers shown come from
``stage1_core.common.metrics``, so a plot and the metrics report never disagree.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from stage1_core.common.metrics import (
    as_binary_labels,
    as_probabilities,
    compute_metrics,
    reliability_bins,
    risk_coverage_curve,
)

CLASS_NAMES = ("no roadwork", "roadwork")


def reliability_diagram_png(labels: np.ndarray, probs: np.ndarray, *, n_bins: int = 15) -> bytes:
    """Reliability diagram of the top-label prediction (Guo et al. 2017): accuracy per confidence bin,
    the gap to the bin's mean confidence, and the ECE in the title; bin counts below."""
    bins = reliability_bins(labels, probs, n_bins=n_bins)
    edges = np.asarray(bins.edges)
    width = np.diff(edges)
    filled = np.asarray(bins.count) > 0
    accuracy = np.array(bins.accuracy, dtype=float)  # NaN for empty bins, which are not drawn
    confidence = np.array(bins.mean_confidence, dtype=float)

    figure = Figure(figsize=(5.5, 6.0))
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(
        edges[:-1][filled],
        accuracy[filled],
        width=width[filled],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        label="accuracy",
    )
    top.bar(
        edges[:-1][filled],
        (confidence - accuracy)[filled],
        bottom=accuracy[filled],
        width=width[filled],
        align="edge",
        color="tab:red",
        alpha=0.35,
        hatch="//",
        edgecolor="tab:red",
        label="gap to confidence",
    )
    top.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="gray", label="perfect calibration")
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability (top label, {n_bins} bins): ECE = {bins.ece:.4f}")
    top.legend(loc="upper left")
    bottom.bar(edges[:-1], bins.count, width=width, align="edge", color="gray", edgecolor="black")
    bottom.set_ylabel("samples")
    bottom.set_xlabel("confidence max(p, 1 - p)")
    bottom.set_xlim(edges[np.argmax(filled)], 1.0)
    return _png(figure)


def risk_coverage_png(labels: np.ndarray, probs: np.ndarray) -> bytes:
    """Selective risk and generalized risk against coverage, with AURC and AUGRC (Traub et al. 2024) in the legend."""
    report = compute_metrics(labels, probs, n_bootstrap=0)
    curve = risk_coverage_curve(labels, probs)
    figure = Figure(figsize=(5.5, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.plot(
        curve.coverage, curve.selective_risk, color="tab:blue", label=f"selective risk (AURC = {report.aurc.value:.4f})"
    )
    axes.plot(
        [0.0, *curve.coverage],
        [0.0, *curve.generalized_risk],
        color="tab:orange",
        label=f"generalized risk (AUGRC = {report.augrc.value:.4f})",
    )
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(bottom=0.0)
    axes.set_xlabel("coverage (accepted fraction, most confident first)")
    axes.set_ylabel("risk")
    axes.set_title(f"Risk-coverage ({report.n} samples)")
    axes.legend(loc="upper left")
    return _png(figure)


def confusion_matrix_png(labels: np.ndarray, probs: np.ndarray, *, threshold: float = 0.5) -> bytes:
    """Confusion matrix of the decisions ``p > threshold``: counts and row percentages, with MCC and accuracy."""
    report = compute_metrics(labels, probs, threshold=threshold, n_bootstrap=0)
    y = as_binary_labels(labels)
    counts = confusion_matrix(y, as_probabilities(probs, length=y.size) > threshold, labels=[0, 1])
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)

    figure = Figure(figsize=(4.8, 4.2))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, column), count in np.ndenumerate(counts):
        axes.text(
            column,
            row,
            f"{count}\n{shares[row, column]:.1%}",
            ha="center",
            va="center",
            color="white" if shares[row, column] > 0.5 else "black",
        )
    axes.set_xticks([0, 1], labels=[f"pred. {name}" for name in CLASS_NAMES])
    axes.set_yticks([0, 1], labels=[f"true {name}" for name in CLASS_NAMES])
    mcc = "undefined" if report.mcc.value is None else f"{report.mcc.value:.3f}"
    axes.set_title(f"p > {threshold:g}: MCC {mcc}, accuracy {report.accuracy.value:.3f}")
    return _png(figure)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()
