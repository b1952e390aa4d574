"""Final evaluation on val_test: metrics before and after calibration, with plots a person can read.

The report keeps the labels and logits it was computed from (val_test is small), so its pictures
and any later metric can be recomputed from the artifact alone.
"""

from __future__ import annotations

import html

import numpy as np
from pydantic import BaseModel
from scipy.special import expit

from stage1_core.calibration import CalibrationPolicy
from stage1_core.metrics import METRIC_NAMES, MetricsReport, compute_metrics
from stage1_core.plots import confusion_matrix_png, reliability_diagram_png, risk_coverage_png
from stage1_core.reports import Report

VALIDATOR_THRESHOLD = 0.5
HEADLINE = ("mcc", "accuracy", "reward", "balanced_accuracy", "auroc", "ece", "brier")


class EvaluationConfig(BaseModel):
    """Bootstrap and binning settings of the evaluation."""

    n_bootstrap: int = 1000
    confidence: float = 0.95
    n_bins: int = 15
    seed: int = 0


class EvaluationReport(Report):
    """Metrics of one model on val_test: raw (sigmoid of the logit), calibrated, and at the policy's threshold."""

    split: str = "val_test"
    labels: list[int]
    logits: list[float]
    policy: CalibrationPolicy
    uncalibrated: MetricsReport
    calibrated: MetricsReport
    at_policy_threshold: MetricsReport

    def calibrated_probs(self) -> np.ndarray:
        return self.policy.probabilities(np.asarray(self.logits))

    def gate_metrics(self) -> dict[str, float | None]:
        """What the promotion gate reads: calibrated probabilities scored at the validator's 0.5."""
        return {name: self.calibrated.metric(name).value for name in HEADLINE}

    def summary_text(self) -> str:
        """A few lines for the terminal."""
        lines = [f"val_test ({self.calibrated.n} images), calibrated, threshold 0.5 (as the validator scores):"]
        for name in HEADLINE:
            metric = self.calibrated.metric(name)
            lines.append(f"  {name:<18} {_format(metric.value)}  95% CI [{_format(metric.ci_low)}, {_format(metric.ci_high)}]" if metric.value is not None else f"  {name:<18} undefined ({metric.undefined_reason})")
        return "\n".join(lines)

    def visualizations(self) -> dict[str, str | bytes]:
        labels, probs = np.asarray(self.labels), self.calibrated_probs()
        return {
            "metrics.html": self._metrics_table(),
            "reliability_diagram.png": reliability_diagram_png(labels, probs, n_bins=self.calibrated.n_bins),
            "risk_coverage.png": risk_coverage_png(labels, probs),
            "confusion_matrix.png": confusion_matrix_png(labels, probs, threshold=VALIDATOR_THRESHOLD),
        }

    def metadata(self) -> dict[str, float | int | str | bool]:
        values = {f"val_test_{name}": self.calibrated.metric(name).value for name in HEADLINE}
        return {name: value for name, value in values.items() if value is not None} | {"n": self.calibrated.n, "temperature": self.policy.calibrator.temperature}

    def _metrics_table(self) -> str:
        columns = [("uncalibrated @0.5", self.uncalibrated), ("calibrated @0.5", self.calibrated), (f"calibrated @{self.policy.threshold:.3f}", self.at_policy_threshold)]
        header = "".join(f"<th>{html.escape(title)}</th>" for title, _ in columns)
        rows = []
        for name in METRIC_NAMES:
            cells = []
            for _, report in columns:
                metric = report.metric(name)
                cells.append(f"<td>{_format(metric.value)} [{_format(metric.ci_low)}, {_format(metric.ci_high)}]</td>" if metric.value is not None else f"<td>undefined: {html.escape(metric.undefined_reason or '')}</td>")
            rows.append(f"<tr><td>{name}</td>{''.join(cells)}</tr>")
        return (
            "<html><body style='font-family:sans-serif'>"
            f"<h2>Evaluation on {self.split} ({self.calibrated.n} images, {self.calibrated.positive_rate:.1%} roadwork)</h2>"
            f"<p>Calibration: {self.policy.method}, T = {self.policy.calibrator.temperature:.3f}. Values with {self.calibrated.confidence:.0%} bootstrap CI ({self.calibrated.n_bootstrap} resamples).</p>"
            f"<table border=1 cellpadding=4><tr><th>metric</th>{header}</tr>{''.join(rows)}</table></body></html>"
        )


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def evaluate_predictions(labels: np.ndarray, logits: np.ndarray, policy: CalibrationPolicy, config: EvaluationConfig) -> EvaluationReport:
    """Score val_test logits raw, calibrated at 0.5, and calibrated at the policy's threshold."""
    settings = {"n_bootstrap": config.n_bootstrap, "confidence": config.confidence, "seed": config.seed, "n_bins": config.n_bins}
    calibrated = policy.probabilities(logits)
    return EvaluationReport(
        labels=[int(label) for label in labels],
        logits=[float(logit) for logit in logits],
        policy=policy,
        uncalibrated=compute_metrics(labels, expit(logits), threshold=VALIDATOR_THRESHOLD, **settings),
        calibrated=compute_metrics(labels, calibrated, threshold=VALIDATOR_THRESHOLD, **settings),
        at_policy_threshold=compute_metrics(labels, calibrated, threshold=policy.threshold, **settings),
    )
