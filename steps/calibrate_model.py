"""Calibrate step: calibrator, decision threshold and conformal thresholds, fitted on val_calib only."""

from typing import Annotated

import pandas as pd
from zenml import step

from stage1_core.data.splits import Consumer, take_split
from stage1_core.evaluation.calibration import CalibrationConfig, CalibrationPolicy, fit_calibration_policy
from stage1_core.modeling.inference import predict_logits
from stage1_core.modeling.model import RoadworkClassifier
from steps.variants import MAIN_MODEL, MODEL_VARIANT


@step(substitutions=MAIN_MODEL)
def calibrate_model(
    manifest: pd.DataFrame, classifier: RoadworkClassifier, config: CalibrationConfig
) -> Annotated[CalibrationPolicy, f"calibration_policy{MODEL_VARIANT}"]:
    """Fit the calibration policy on val_calib logits (after multi-view aggregation).

    Its parameters, NLL before/after, conformal thresholds and reliability diagrams are stored by
    ``materializers.calibration_policy`` as the artifact's metadata and visualizations.
    """
    val_calib = take_split(manifest, "val_calib", Consumer.CALIBRATION)
    return fit_calibration_policy(
        predict_logits(classifier, val_calib, desc="val_calib"), val_calib["label"].to_numpy(), config
    )
