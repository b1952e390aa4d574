"""Drift reference step: features of the training data, and a first report against val_test.

The features are image features and projected backbone embeddings.
"""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from stage1_core.data.splits import Consumer, take_split
from stage1_core.modeling.model import RoadworkClassifier
from stage1_core.monitoring.drift import (
    DriftConfig,
    DriftReport,
    EmbeddingProjection,
    build_reference,
    drift_features,
    drift_report,
)
from stage1_core.registry.tracking import log_files


@step(experiment_tracker=True)
def build_drift_reference(
    manifest: pd.DataFrame, classifier: RoadworkClassifier, config: DriftConfig
) -> tuple[
    Annotated[pd.DataFrame, "drift_reference"],
    Annotated[EmbeddingProjection, "embedding_projection"],
    Annotated[DriftReport, "drift_report"],
]:
    """Features of the train split are the reference later batches are compared with.

    They include this classifier's embeddings of the images.
    The report against val_test (same distribution by construction) shows what "no drift" looks like.
    """
    reference, projection = build_reference(take_split(manifest, "train", Consumer.DRIFT_REFERENCE), classifier, config)
    holdout = drift_features(take_split(manifest, "val_test", Consumer.EVALUATION), classifier, projection)
    report = drift_report(reference, holdout, config)
    log_files(report.visualizations(), "drift_reference")
    log_metadata(
        {
            "reference_rows": len(reference),
            "embedding_explained_variance": sum(projection.explained_variance_ratio),
            "holdout_drift_share": report.drift_share,
            "holdout_dataset_drift": report.dataset_drift,
        }
    )
    return reference, projection, report
