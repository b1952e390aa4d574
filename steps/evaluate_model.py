"""Evaluate step: all metrics with bootstrap CIs on val_test only; logged to MLflow.

Per slice and validator view, with conformal sets.
"""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from stage1_core.data.splits import Consumer, bootstrap_groups, take_split
from stage1_core.evaluation.ablation import AblationTable
from stage1_core.evaluation.calibration import CalibrationPolicy
from stage1_core.evaluation.report import EvaluationConfig, EvaluationReport, evaluate_predictions
from stage1_core.evaluation.slices import object_size_classes, robustness_logits
from stage1_core.modeling.inference import predict_logits
from stage1_core.modeling.model import RoadworkClassifier
from stage1_core.registry.tracking import log_files, log_metrics


@step(experiment_tracker=True)
def evaluate_model(
    manifest: pd.DataFrame,
    classifier: RoadworkClassifier,
    policy: CalibrationPolicy,
    config: EvaluationConfig,
    ablation: AblationTable | None = None,
) -> Annotated[EvaluationReport, "evaluation_report"]:
    """Score val_test before and after calibration, per slice and under the validator's views.

    Also scores the conformal policy, and shows the ablations.
    """
    val_test = take_split(manifest, "val_test", Consumer.EVALUATION)
    slice_columns = val_test[list(config.slices.columns)]
    if config.slices.truth_path is not None:
        slice_columns = slice_columns.assign(object_size=object_size_classes(val_test, config.slices.truth_path))
    report = evaluate_predictions(
        val_test["label"].to_numpy(),
        predict_logits(classifier, val_test, desc="val_test"),
        policy,
        config,
        slice_columns=slice_columns,
        view_logits=robustness_logits(classifier, val_test, config.robustness),
        ablation=ablation,
        groups=bootstrap_groups(val_test),
    )
    log_metrics(report.calibrated.to_flat_dict(), prefix="val_test_")
    log_metrics(report.uncalibrated.to_flat_dict(), prefix="val_test_uncalibrated_")
    log_metrics(report.flat_metrics(), prefix="val_test_")
    log_files(report.visualizations(), "evaluation")
    log_metadata(report.metadata())
    return report
