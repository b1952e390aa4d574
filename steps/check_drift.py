"""Drift check step: a new batch against the training reference of the model in production."""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from stage1_core.modeling.model import RoadworkClassifier
from stage1_core.monitoring.drift import DriftConfig, DriftReport, EmbeddingProjection, batch_drift


@step
def check_drift(
    batch: pd.DataFrame,
    reference: pd.DataFrame,
    projection: EmbeddingProjection,
    classifier: RoadworkClassifier,
    config: DriftConfig,
) -> Annotated[DriftReport, "batch_drift_report"]:
    """Evidently report of the batch's image features and backbone embeddings; says whether retraining is warranted."""
    report = batch_drift(batch, reference, projection, classifier, config)
    log_metadata(report.metadata())
    return report
