"""Final evaluation on val_test: metrics before and after calibration, per slice, under the validator's
image views, and of the conformal sets and SCRC, with plots and tables a person can read.

The report keeps the labels and logits it was computed from (val_test is small), so its pictures
and any later metric can be recomputed from the artifact alone.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
from scipy.special import expit

from stage1_core.common.logit_map import VALIDATOR_THRESHOLD
from stage1_core.common.metrics import METRIC_NAMES, MetricsConfig, MetricsReport, compute_metrics
from stage1_core.common.reports import Report, format_number, metric_cell
from stage1_core.evaluation.ablation import AblationTable
from stage1_core.evaluation.calibration import CalibrationPolicy
from stage1_core.evaluation.conformal import ConformalEvaluation, ConformalPredictor
from stage1_core.evaluation.plots import confusion_matrix_png, reliability_diagram_png, risk_coverage_png
from stage1_core.evaluation.slices import SLICE_METRICS, RobustnessConfig, SliceConfig, SliceMetrics, slice_table

HEADLINE = ("mcc", "accuracy", "reward", "balanced_accuracy", "auroc", "ece", "brier")


class EvaluationConfig(MetricsConfig):
    """The metric settings of the evaluation, and its slices and robustness checks."""

    slices: SliceConfig = SliceConfig()
    robustness: RobustnessConfig = RobustnessConfig()


class EvaluationReport(Report):
    """Metrics of one model on val_test: raw (sigmoid of the logit), calibrated, and at the policy's threshold."""

    split: str = "val_test"
    labels: list[int]
    logits: list[float]
    policy: CalibrationPolicy
    uncalibrated: MetricsReport
    calibrated: MetricsReport
    at_policy_threshold: MetricsReport
    slices: list[SliceMetrics] = []  # metadata slices, then the validator views (group "robustness")
    conformal: ConformalEvaluation | None = None
    ablation: AblationTable | None = None  # every model of the run under every inference mode, on the same val_test

    def calibrated_probs(self) -> np.ndarray:
        return self.policy.probabilities(np.asarray(self.logits))

    def gate_metrics(self) -> dict[str, float | None]:
        """What the promotion gate reads: calibrated probabilities scored at the validator's 0.5."""
        return {name: self.calibrated.metric(name).value for name in HEADLINE}

    def summary_text(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"val_test ({self.calibrated.n} images), calibrated, threshold 0.5 (as the validator scores); "
            f"CIs resample {_resampling_unit(self.calibrated)}:"
        ]
        for name in HEADLINE:
            metric = self.calibrated.metric(name)
            lines.append(
                f"  {name:<18} {format_number(metric.value)}  "
                f"95% CI [{format_number(metric.ci_low)}, {format_number(metric.ci_high)}]"
                if metric.value is not None
                else f"  {name:<18} undefined ({metric.undefined_reason})"
            )
        return "\n".join(lines)

    def visualizations(self) -> dict[str, str | bytes]:
        labels, probs = np.asarray(self.labels), self.calibrated_probs()
        return {
            "metrics.html": self._metrics_table(),
            "reliability_diagram.png": reliability_diagram_png(labels, probs, n_bins=self.calibrated.n_bins),
            "risk_coverage.png": risk_coverage_png(labels, probs),
            "confusion_matrix.png": confusion_matrix_png(labels, probs, threshold=VALIDATOR_THRESHOLD),
            "slices.html": self._slice_table(),
            "conformal.html": self._conformal_table(),
        } | (self.ablation.visualizations() if self.ablation is not None else {})

    def metadata(self) -> dict[str, float | int | str | bool]:
        values = {f"val_test_{name}": self.calibrated.metric(name).value for name in HEADLINE}
        if self.conformal is not None:
            values |= {
                f"val_test_{name}": value
                for name, value in self.conformal.to_flat_dict().items()
                if name.endswith(("_coverage", "_mean_size", "selection_rate", "selective_risk"))
            }
        calibration = {f"calibration_{name}": value for name, value in self.policy.calibrator.parameters.items()}
        return (
            {name: value for name, value in values.items() if value is not None}
            | {"n": self.calibrated.n, "calibration_method": self.policy.method}
            | calibration
        )

    def flat_metrics(self) -> dict[str, float]:
        """Slice and conformal figures for metric logs (the main metrics come from ``MetricsReport.to_flat_dict``)."""
        flat: dict[str, float] = {}
        for row in self.slices:
            flat |= row.flat_metrics()
        flat |= self.conformal.to_flat_dict() if self.conformal is not None else {}
        return flat | (self.ablation.flat_metrics() if self.ablation is not None else {})

    def _slice_table(self) -> str:
        header = "".join(f"<th>{name}</th>" for name in SLICE_METRICS)
        rows = []
        for row in self.slices:
            cells = "".join(metric_cell(row.metrics.metric(name)) for name in SLICE_METRICS)
            rows.append(
                f"<tr><td>{html.escape(row.group)}</td><td>{html.escape(row.value)}</td><td>{row.metrics.n}</td>"
                f"<td>{row.metrics.positive_rate:.1%}</td>{cells}</tr>"
            )
        return (
            "<html><body style='font-family:sans-serif'>"
            f"<h2>Slices of {self.split} (calibrated probabilities, threshold 0.5)</h2>"
            "<p>Metadata slices, then the subnet validator's views of the same images (group <i>robustness</i>: L0-L3 "
            f"augmentation levels and letterbox). Values with {self.calibrated.confidence:.0%} bootstrap CI; "
            "small slices give wide intervals.</p>"
            "<table border=1 cellpadding=4><tr><th>slice</th><th>value</th><th>n</th><th>roadwork</th>"
            f"{header}</tr>{''.join(rows)}</table></body></html>"
        )

    def _conformal_table(self) -> str:
        conformal = self.policy.conformal
        if self.conformal is None or conformal is None:
            reason = self.policy.conformal_undefined_reason or "not configured"
            return (
                "<html><body style='font-family:sans-serif'><h2>Conformal prediction</h2>"
                f"<p>Not available: {html.escape(reason)}</p></body></html>"
            )
        fitted = {predictor.name: predictor for predictor in conformal.predictors}
        rows = "".join(
            f"<tr><td>{html.escape(name)}{_raps_note(fitted[name])}</td><td>{result.coverage:.4f}</td>"
            f"<td>{result.mean_size:.3f}</td><td>{result.empty_rate:.3f}</td><td>{result.singleton_rate:.3f}</td>"
            f"<td>{result.full_rate:.3f}</td></tr>"
            for name, result in self.conformal.sets.items()
        )
        rows += "".join(
            f"<tr><td>{html.escape(name)}</td><td colspan=5>not fitted: {html.escape(reason)}</td></tr>"
            for name, reason in conformal.predictors_undefined.items()
        )
        scrc = self.conformal.scrc
        scrc_policy = conformal.scrc
        if scrc is None or scrc_policy is None:
            reason = conformal.scrc_undefined_reason
            scrc_html = f"<p>SCRC not available: {html.escape(reason or 'not configured')}</p>"
        else:
            scrc_html = (
                f"<h3>SCRC, served variant {scrc_policy.variant} (Xu, Guo &amp; Wei 2025; target selection rate "
                f"{scrc_policy.target_selection_rate:.0%}, risk alpha {scrc_policy.alpha}, delta {scrc_policy.delta})"
                "</h3>"
                f"<p>PAC guarantee: with probability at least {1 - scrc_policy.delta:.0%} over the calibration draw "
                f"the selection rate is at least {scrc_policy.target_selection_rate:.0%}, and with probability at "
                f"least {1 - scrc_policy.delta:.0%} the miscoverage among selected images is at most "
                f"{scrc_policy.alpha} (fitted on {scrc_policy.n_calibration} val_calib images, "
                f"{scrc_policy.n_selected} selected, at most {scrc_policy.max_misses} misses allowed).</p>"
                f"<p>Selected: {scrc.selection_rate:.1%}; "
                f"miscoverage among selected: {format_number(scrc.selective_risk)}; "
                f"mean set size among selected: {format_number(scrc.selective_mean_size)}; "
                f"accepted (selected, one class): {scrc.accept_rate:.1%}; "
                f"errors among accepted: {format_number(scrc.accepted_error_rate)}; the rest is deferred.</p>"
            )
        return (
            "<html><body style='font-family:sans-serif'>"
            f"<h2>Conformal prediction sets on {self.split} (alpha = {self.conformal.alpha}, "
            f"target coverage {1 - self.conformal.alpha:.0%})</h2>"
            "<table border=1 cellpadding=4><tr><th>score</th><th>coverage</th><th>mean size</th>"
            "<th>empty</th><th>one class</th><th>both classes</th></tr>"
            f"{rows}</table>{scrc_html}</body></html>"
        )

    def _metrics_table(self) -> str:
        columns = [
            ("uncalibrated @0.5", self.uncalibrated),
            ("calibrated @0.5", self.calibrated),
            (f"calibrated @{self.policy.threshold:.3f}", self.at_policy_threshold),
        ]
        header = "".join(f"<th>{html.escape(title)}</th>" for title, _ in columns)
        rows = []
        for name in METRIC_NAMES:
            cells = []
            for _, report in columns:
                cells.append(metric_cell(report.metric(name)))
            rows.append(f"<tr><td>{name}</td>{''.join(cells)}</tr>")
        return (
            "<html><body style='font-family:sans-serif'>"
            f"<h2>Evaluation on {self.split} ({self.calibrated.n} images, "
            f"{self.calibrated.positive_rate:.1%} roadwork)</h2>"
            f"<p>Calibration: {self.policy.method} ({html.escape(_parameters(self.policy))}). "
            f"Values with {self.calibrated.confidence:.0%} bootstrap CI "
            f"({self.calibrated.n_bootstrap} resamples of {_resampling_unit(self.calibrated)}).</p>"
            f"<table border=1 cellpadding=4><tr><th>metric</th>{header}</tr>{''.join(rows)}</table></body></html>"
        )


def _resampling_unit(report: MetricsReport) -> str:
    return (
        f"{report.n} images one by one"
        if report.n_groups is None
        else f"{report.n_groups} split groups (sequences with their near-duplicates) of {report.n} images"
    )


def _parameters(policy: CalibrationPolicy) -> str:
    return ", ".join(f"{name} = {value:.4g}" for name, value in policy.calibrator.parameters.items())


def evaluate_predictions(
    labels: np.ndarray,
    logits: np.ndarray,
    policy: CalibrationPolicy,
    config: EvaluationConfig,
    *,
    slice_columns: pd.DataFrame | None = None,
    view_logits: dict[str, np.ndarray] | None = None,
    ablation: AblationTable | None = None,
    groups: np.ndarray | None = None,
) -> EvaluationReport:
    """Score val_test logits raw, calibrated at 0.5 and calibrated at the policy's threshold.

    Also scores them per slice, under the validator's views, and by conformal prediction.

    Args:
        slice_columns: one row per prediction, one column per slice dimension (e.g. daytime, object_size).
        view_logits: logits of the same images under each validator view (``slices.robustness_logits``).
        ablation: the run's ablation table (``ablation.score_inference_modes`` rows), shown with the report.
        groups: the group of each prediction (:func:`bootstrap_groups`), resampled whole by the bootstrap;
            None: images one by one.
    """
    settings = {
        "n_bootstrap": config.n_bootstrap,
        "confidence": config.confidence,
        "seed": config.seed,
        "n_bins": config.n_bins,
        "groups": groups,
    }
    slice_settings = {"n_bootstrap": config.slices.n_bootstrap, "seed": config.seed, "n_bins": config.n_bins}
    calibrated = policy.probabilities(logits)
    slices = (
        []
        if slice_columns is None
        else slice_table(slice_columns, labels, calibrated, bootstrap_groups=groups, **slice_settings)
    )
    for view, view_z in (view_logits or {}).items():
        report = compute_metrics(labels, policy.probabilities(view_z), groups=groups, **slice_settings)
        slices.append(SliceMetrics(group="robustness", value=view, metrics=report))
    return EvaluationReport(
        labels=[int(label) for label in labels],
        logits=[float(logit) for logit in logits],
        policy=policy,
        uncalibrated=compute_metrics(labels, expit(logits), threshold=VALIDATOR_THRESHOLD, **settings),
        calibrated=compute_metrics(labels, calibrated, threshold=VALIDATOR_THRESHOLD, **settings),
        at_policy_threshold=compute_metrics(labels, calibrated, threshold=policy.threshold, **settings),
        slices=slices,
        conformal=policy.conformal.evaluate(labels, calibrated) if policy.conformal is not None else None,
        ablation=ablation,
    )


def _raps_note(predictor: ConformalPredictor) -> str:
    """RAPS's regularisation, and whether it was tuned on a held-out part of val_calib."""
    if predictor.score != "raps":
        return ""
    how = f"tuned on {predictor.n_tuning} images" if predictor.n_tuning else "set by hand"
    return f" (lambda {predictor.raps_lambda:g}, k_reg {predictor.raps_k_reg}, {how})"
