"""The evaluation report: metrics, slices, validator views and conformal results, on synthetic logits."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit

from stage1_core.evaluation.calibration import CalibrationConfig, fit_calibration_policy
from stage1_core.evaluation.report import EvaluationConfig, EvaluationReport, evaluate_predictions


def test_report_holds_slices_views_and_conformal_results() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, 600)
    labels = (rng.random(600) < expit(z)).astype(int)
    logits = 3.0 * z + rng.normal(0.0, 0.5, 600)
    policy = fit_calibration_policy(logits[:300], labels[:300], CalibrationConfig(method="dirichlet"))
    test_labels, test_logits = labels[300:], logits[300:]
    groups = pd.DataFrame({"daytime": rng.choice(["day", "night", ""], 300), "source": "natix"})
    views = {"L0": test_logits + rng.normal(0.0, 1.0, 300), "L3": test_logits * 0.2}
    report = evaluate_predictions(
        test_labels, test_logits, policy, EvaluationConfig(n_bootstrap=50), slice_columns=groups, view_logits=views
    )

    assert [(row.group, row.value) for row in report.slices] == [
        ("daytime", "(missing)"),
        ("daytime", "day"),
        ("daytime", "night"),
        ("source", "natix"),
        ("robustness", "L0"),
        ("robustness", "L3"),
    ]
    assert report.slices[3].metrics.accuracy.value == report.calibrated.accuracy.value
    assert report.conformal is not None and report.conformal.sets["lac"].coverage >= 0.85
    assert report.conformal.scrc is not None and 0.6 <= report.conformal.scrc.selection_rate <= 1.0
    flat = report.flat_metrics()
    assert {"slice_robustness_L3_mcc", "conformal_lac_coverage", "scrc_selection_rate"} <= set(flat)
    files = report.visualizations()
    assert (
        "<td>night</td>" in files["slices.html"]
        and "<td>L3</td>" in files["slices.html"]
        and "served variant SCRC-I" in files["conformal.html"]
        and "PAC guarantee: with probability at least 90%" in files["conformal.html"]
        and "tuned on 90 images" in files["conformal.html"]  # RAPS on ceil(0.3 * 300) val_calib images
    )
    metadata = report.metadata()
    assert metadata["calibration_method"] == "dirichlet" and "val_test_conformal_lac_coverage" in metadata
    assert EvaluationReport.model_validate_json(report.model_dump_json()) == report


def test_every_interval_resamples_the_given_groups() -> None:
    """With groups (four frames per sequence), the headline, slice and view intervals all resample sequences."""
    rng = np.random.default_rng(1)
    z = np.repeat(rng.normal(0.0, 2.0, 100), 4)
    labels = (np.repeat(rng.random(100), 4) < expit(z)).astype(int)
    logits = 2.0 * z + rng.normal(0.0, 0.3, 400)
    policy = fit_calibration_policy(logits, labels, CalibrationConfig())
    sequences = np.repeat([f"seq-{i}" for i in range(100)], 4)
    slice_columns = pd.DataFrame({"daytime": np.repeat(rng.choice(["day", "night"], 100), 4)})
    config = EvaluationConfig(n_bootstrap=50)
    report = evaluate_predictions(
        labels, logits, policy, config, slice_columns=slice_columns, view_logits={"L0": logits + 0.5}, groups=sequences
    )
    assert report.calibrated.n_groups == report.uncalibrated.n_groups == report.at_policy_threshold.n_groups == 100
    day = slice_columns["daytime"].to_numpy() == "day"
    assert [row.metrics.n_groups for row in report.slices] == [int(day.sum()) // 4, int((~day).sum()) // 4, 100]
    assert "100 split groups" in report.visualizations()["metrics.html"]
    one_by_one = evaluate_predictions(labels, logits, policy, config)
    assert one_by_one.calibrated.n_groups is None and one_by_one.calibrated.mcc.value == report.calibrated.mcc.value
    width = lambda metric: metric.ci_high - metric.ci_low  # noqa: E731
    assert width(one_by_one.calibrated.mcc) < width(report.calibrated.mcc)
