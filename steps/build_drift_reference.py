"""Drift reference step: image features of the training data, and a first Evidently report against val_test."""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from stage1_core.drift import DriftConfig, DriftReport, drift_report, image_features
from stage1_core.splits import Consumer, take_split


@step
def build_drift_reference(manifest: pd.DataFrame, config: DriftConfig) -> tuple[
    Annotated[pd.DataFrame, "drift_reference"],
    Annotated[DriftReport, "drift_report"],
]:
    """Features of the train split are the reference later batches are compared with.

    The report against val_test (same distribution by construction) shows what "no drift" looks like.
    """
    reference = image_features(take_split(manifest, "train", Consumer.DRIFT_REFERENCE))
    holdout = image_features(take_split(manifest, "val_test", Consumer.EVALUATION))
    report = drift_report(reference, holdout, config)
    log_metadata({"reference_rows": len(reference), "holdout_drift_share": report.drift_share, "holdout_dataset_drift": report.dataset_drift})
    return reference, report
