"""Drift monitor: a night/fog/new-city demo batch drifts from the training reference, an i.i.d. batch does not;
backbone embeddings are part of the comparison; the CLI's user errors exit 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.drift_monitor import main
from stage1_core.data.ingest import ingest
from stage1_core.data.sources.config import IngestConfig
from stage1_core.demo.config import DemoDataConfig
from stage1_core.demo.writers import generate_demo_dataset
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier
from stage1_core.monitoring.batch import write_verdict
from stage1_core.monitoring.drift import (
    DriftConfig,
    DriftReport,
    EmbeddingProjection,
    as_batch_source,
    batch_drift,
    build_reference,
    fit_embedding_projection,
)

SIZE = {
    "image_width": 320,
    "image_height": 240,
    "frames_per_sequence": 1,
}  # independent images: frames of one sequence are near-copies
# A reference four times the batch (see DriftConfig on chi-square false alarms); batches of 40 images.
CONFIG = DriftConfig(retrain_min_rows=20, embedding_components=3)


def _error_lines(capsys: pytest.CaptureFixture) -> list[str]:
    """The CLI's error lines (progress bars share stderr); there must be no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def _manifest(root: Path, name: str, **demo: object) -> pd.DataFrame:
    folder = generate_demo_dataset(root / name, DemoDataConfig(**SIZE, **demo))
    return ingest(IngestConfig(path=str(folder), image_store=str(root / f"{name}_images")))


@pytest.fixture(scope="module")
def classifier() -> RoadworkClassifier:
    torch.manual_seed(0)
    return RoadworkClassifier(
        load_backbone("dinov2-demo", seed=0), ClassifierConfig(multiview=MultiViewConfig(view_size=28))
    ).eval()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, classifier: RoadworkClassifier) -> dict[str, object]:
    root = tmp_path_factory.mktemp("drift_monitor")
    reference, projection = build_reference(_manifest(root, "train", n_images=160, seed=11), classifier, CONFIG)
    return {
        "reference": reference,
        "projection": projection,
        "shifted": _manifest(root, "shifted", n_images=40, seed=12, shift="night_fog_city"),
        "iid": _manifest(root, "iid", n_images=40, seed=13),
    }


@pytest.fixture(scope="module")
def shifted_report(demo: dict, classifier: RoadworkClassifier) -> DriftReport:
    return batch_drift(demo["shifted"], demo["reference"], demo["projection"], classifier, CONFIG)


@pytest.fixture(scope="module")
def iid_report(demo: dict, classifier: RoadworkClassifier) -> DriftReport:
    return batch_drift(demo["iid"], demo["reference"], demo["projection"], classifier, CONFIG)


def test_reference_has_projected_backbone_embeddings(demo: dict) -> None:
    reference, projection = demo["reference"], demo["projection"]
    assert projection.columns == ["emb_0", "emb_1", "emb_2"] and set(projection.columns) <= set(reference.columns)
    # PCA scores of the data it was fitted on are centred and ordered by variance
    scores = reference[projection.columns].to_numpy()
    assert np.abs(scores.mean(axis=0)).max() < 1e-3
    assert list(np.argsort(-scores.var(axis=0))) == [0, 1, 2]
    assert 0 < sum(projection.explained_variance_ratio) <= 1


def test_shifted_batch_drifts_and_warrants_retraining(shifted_report: DriftReport) -> None:
    assert shifted_report.dataset_drift and shifted_report.retrain_recommended
    assert {"brightness", "daytime"} <= set(shifted_report.drifted_columns)
    assert any(column.startswith("emb_") for column in shifted_report.drifted_columns), shifted_report.drifted_columns


def test_iid_batch_does_not_warrant_retraining(iid_report: DriftReport, shifted_report: DriftReport) -> None:
    assert not iid_report.dataset_drift and not iid_report.retrain_recommended
    assert iid_report.drift_share < shifted_report.drift_share
    assert [column.column for column in iid_report.columns] == [column.column for column in shifted_report.columns]


def test_verdict_files_are_written(iid_report: DriftReport, tmp_path: Path) -> None:
    path = write_verdict(iid_report, tmp_path / "out", "batch/folder", "requested: pipeline run x")
    verdict = json.loads(path.read_text())
    assert verdict["retrain_recommended"] is False and verdict["reference"] == "requested: pipeline run x"
    assert verdict["drifted_columns"] == iid_report.drifted_columns and "html" not in verdict
    assert (tmp_path / "out" / "drift.html").read_text().lstrip().startswith("<!DOCTYPE html>")


def test_projection_refuses_embeddings_of_another_backbone() -> None:
    projection = fit_embedding_projection(np.random.default_rng(0).normal(size=(30, 8)), 2)
    with pytest.raises(ValueError, match="8 dimensions|have 5 dimensions"):
        projection.transform(np.zeros((3, 5)), pd.RangeIndex(3))
    assert fit_embedding_projection(np.zeros((1, 8)), 4) == EmbeddingProjection(
        mean=[], components=[], explained_variance_ratio=[]
    )


def test_batch_becomes_its_own_source_without_id_collisions(demo: dict) -> None:
    batch = as_batch_source(demo["iid"], "week42")
    assert (batch["source"] == "week42").all() and batch["id"].str.startswith("week42:natix:").all()
    assert batch["group_id"].str.startswith("week42:").all()
    assert {json.loads(text)["batch_of"] for text in batch["extras"]} == {"natix"}
    with pytest.raises(ValueError, match="without ':'"):
        as_batch_source(demo["iid"], "a:b")


def test_missing_batch_path_exits_2_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    assert main(["--batch", str(missing), "--out", str(tmp_path / "out")]) == 2
    [error] = _error_lines(capsys)
    assert str(missing) in error and "does not exist" in error
    assert not (tmp_path / "out").exists()


def test_batch_in_the_wrong_schema_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "batch" / "data"
    data.mkdir(parents=True)
    pd.DataFrame({"photo": [b"x"], "tag": ["y"]}).to_parquet(data / "train-00000.parquet")
    assert main(["--batch", str(tmp_path / "batch"), "--reference", "no-such-run"]) == 2
    [error] = _error_lines(capsys)
    assert str(tmp_path / "batch") in error and "layouts" in error


def test_unknown_reference_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = generate_demo_dataset(tmp_path / "batch", DemoDataConfig(n_images=4, seed=5, **SIZE))
    capsys.readouterr()
    assert main(["--batch", str(folder), "--reference", "no-such-run"]) == 2
    [error] = _error_lines(capsys)
    assert "no pipeline run named 'no-such-run'" in error
