"""The split contracts hold through the ZenML steps: a consumer step given a leaking manifest fails the run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import pytest
from zenml import pipeline, step
from zenml.client import Client

from stage1_core.data.sources.config import IngestConfig
from stage1_core.data.splits import SplitConfig, assign_splits
from stage1_core.evaluation.calibration import CalibrationConfig
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier
from steps.calibrate_model import calibrate_model
from steps.ingest_data import ingest_data

CLASSIFIER = ClassifierConfig(multiview=MultiViewConfig(view_size=28))


@step
def unsplit_manifest(manifest: pd.DataFrame) -> Annotated[pd.DataFrame, "manifest"]:
    return manifest.drop(columns=["split"], errors="ignore")


@step
def manifest_with_a_moved_frame(manifest: pd.DataFrame) -> Annotated[pd.DataFrame, "manifest"]:
    """Moves one frame of a val_calib sequence into train: that sequence now spans two splits."""
    split = assign_splits(manifest, SplitConfig(seed=0))
    calib_groups = split.loc[split["split"] == "val_calib", "group_id"]
    sequence = calib_groups[calib_groups.duplicated()].iloc[0]
    moved = split.index[split["group_id"] == sequence][0]
    split.loc[moved, "split"] = "train"
    return split


@step
def random_classifier() -> Annotated[RoadworkClassifier, "classifier"]:
    return RoadworkClassifier(load_backbone("dinov2-demo", seed=0), CLASSIFIER)


@pipeline(enable_cache=False)
def calibrate_on(data: IngestConfig, tamper: str) -> None:
    manifest = ingest_data(data, "test")
    tampered = unsplit_manifest(manifest) if tamper == "unsplit" else manifest_with_a_moved_frame(manifest)
    calibrate_model(tampered, random_classifier(), CalibrationConfig())


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("unsplit", "calibration was given a manifest without a split column"),
        ("moved_frame", "group_id values span several splits"),
    ],
)
def test_the_calibrate_step_refuses_a_leaking_manifest(
    demo_dataset: Path, session_dir: Path, tamper: str, message: str
) -> None:
    with pytest.raises(RuntimeError, match="failure in step"):
        calibrate_on(IngestConfig(path=str(demo_dataset), image_store=str(session_dir / "image_store")), tamper)
    step_run = Client().get_pipeline("calibrate_on").last_run.steps["calibrate_model"]
    assert step_run.status.value == "failed"
    assert "LeakageError" in step_run.exception_info.traceback
    assert message in step_run.exception_info.traceback
