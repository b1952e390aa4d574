"""Calibrate step: temperature scaling and the decision threshold, fitted on val_calib only."""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from stage1_core.calibration import CalibrationConfig, CalibrationPolicy, fit_calibration_policy
from stage1_core.inference import predict_logits
from stage1_core.model import RoadworkClassifier
from stage1_core.splits import Consumer, take_split


@step
def calibrate_model(manifest: pd.DataFrame, classifier: RoadworkClassifier, config: CalibrationConfig) -> Annotated[CalibrationPolicy, "calibration_policy"]:
    """Fit the calibrator after multi-view aggregation, on val_calib."""
    val_calib = take_split(manifest, "val_calib", Consumer.CALIBRATION)
    policy = fit_calibration_policy(predict_logits(classifier, val_calib, desc="val_calib"), val_calib["label"].to_numpy(), config)
    log_metadata({"temperature": policy.calibrator.temperature, "nll_before": policy.calibrator.nll_before, "nll_after": policy.calibrator.nll_after, "threshold": policy.threshold})
    return policy
