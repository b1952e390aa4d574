"""Integration: full_run makes a champion, the drift monitor flags a night/fog/new-city batch, a retrain on a batch
that does not warrant it stops after the drift check and leaves no model version, and the retrain pipeline fuses
the shifted batch in, retrains and runs the gate against the champion (two trainings, one skipped retrain)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from pipelines import drift_monitor, full_run, retrain
from stage1_core.demo.config import DemoDataConfig
from stage1_core.demo.writers import generate_demo_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config(session_dir: Path) -> Path:
    """tiny.yaml with its own data folder and bars any trained model clears, so the first run makes a champion."""
    document = yaml.safe_load((REPO / "pipelines" / "configs" / "tiny.yaml").read_text())
    parameters = document["parameters"]
    parameters["data"] = {
        "path": str(session_dir / "retrain_tiny"),
        "image_store": str(session_dir / "retrain_tiny_images"),
    }
    parameters["evaluation"]["slices"]["truth_path"] = str(session_dir / "retrain_tiny" / "demo_truth.parquet")
    parameters["drift"] = {"retrain_min_rows": 10, "embedding_components": 3}
    # its own registered model: other tests of the session have registered champions under the default name
    parameters["promotion"] = {
        "registered_model_name": "roadwork-retrain-test",
        "min_mcc": -1.0,
        "max_ece": 1.0,
        "min_auroc": 0.0,
        "min_compared_images": 1,
        "n_bootstrap": 50,
    }
    path = session_dir / "retrain_tiny.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _batch(session_dir: Path, config: Path, name: str, **demo: Any) -> Path:
    size = {
        key: yaml.safe_load(config.read_text())["parameters"]["demo"][key] for key in ("image_width", "image_height")
    }  # same size: only the scenes shift
    return generate_demo_dataset(session_dir / name, DemoDataConfig(frames_per_sequence=1, **size, **demo))


@pytest.fixture(scope="module")
def shifted_batch(session_dir: Path, config: Path) -> Path:
    return _batch(session_dir, config, "night_batch", n_images=32, seed=21, shift="night_fog_city")


@pytest.fixture(scope="module")
def small_batch(session_dir: Path, config: Path) -> Path:
    """Unshifted and below drift.retrain_min_rows (10): a retrain is not warranted whatever the drift test says."""
    return _batch(session_dir, config, "small_day_batch", n_images=6, seed=22)


@dataclass
class Runs:
    first: Any
    skipped: Any
    rerun: Any
    model_versions: list[int]  # of the ZenML model: before the skipped retrain, after it, after the retrain


def _model_versions() -> int:
    from zenml.client import Client

    return Client().list_model_versions(model=full_run.MODEL_NAME).total


@pytest.fixture(scope="module")
def runs(config: Path, shifted_batch: Path, small_batch: Path, session_dir: Path) -> Runs:
    from zenml.client import Client

    assert full_run.main(["--config", str(config)]) == 0
    first = Client().get_pipeline("full_run").last_run
    assert (
        drift_monitor.main(
            ["--batch", str(shifted_batch), "--out", str(session_dir / "monitor"), "--config", str(config)]
        )
        == 1  # the exit-code contract: the job ran and found drift
    )
    versions = [_model_versions()]
    assert retrain.main(["--batch", str(small_batch), "--config", str(config), "--batch-name", "small"]) == 0
    skipped = Client().get_pipeline("retrain_pipeline").last_run
    versions.append(_model_versions())
    assert retrain.main(["--batch", str(shifted_batch), "--config", str(config), "--batch-name", "night"]) == 0
    versions.append(_model_versions())
    return Runs(first, skipped, Client().get_pipeline("retrain_pipeline").last_run, versions)


def _decision(run):
    return run.steps["promote_model"].outputs["promotion_decision"][0].load()


def test_first_run_makes_a_champion_in_production(runs: Runs) -> None:
    decision = _decision(runs.first)
    assert (
        decision.promoted
        and decision.champion_version is None
        and "no champion yet (first run)" in decision.reasons[-1]
    )


def test_monitor_flags_the_shifted_batch(runs: Runs, session_dir: Path) -> None:
    verdict = json.loads((session_dir / "monitor" / "drift_verdict.json").read_text())
    assert verdict["dataset_drift"] and verdict["retrain_recommended"]
    assert "brightness" in verdict["drifted_columns"] and any(
        column.startswith("emb_") for column in verdict["drifted_columns"]
    )
    assert "in production" in verdict["reference"] and runs.first.name in verdict["reference"]
    assert (session_dir / "monitor" / "drift.html").stat().st_size > 0


def test_retrain_not_warranted_leaves_no_model_version(runs: Runs) -> None:
    skipped = runs.skipped
    assert skipped.status.value == "completed" and skipped.id != runs.rerun.id
    report = skipped.steps["check_drift"].outputs["batch_drift_report"][0].load()
    assert not report.retrain_recommended and "below retrain_min_rows" in report.retrain_reason
    assert "train_model" not in skipped.steps and "promote_model" not in skipped.steps
    assert skipped.model_version is None
    before, after_skip, after_retrain = runs.model_versions
    assert after_skip == before and after_retrain == before + 1


def test_retrain_fuses_the_batch_and_is_gated_against_the_champion(runs: Runs) -> None:
    first, rerun = runs.first, runs.rerun
    assert rerun.status.value == "completed"
    drift = rerun.steps["check_drift"].outputs["batch_drift_report"][0]
    assert drift.load().retrain_recommended and {Path(v.uri).name for v in drift.visualizations} == {
        "drift_summary.html",
        "drift.html",
    }
    manifest = rerun.steps["split_data"].outputs["split_manifest"][0].load()
    assert (manifest["source"] == "night").sum() > 0 and manifest.loc[
        manifest["source"] == "night", "id"
    ].str.startswith("night:").all()
    decision = _decision(rerun)
    assert decision.champion_version == _decision(first).version and decision.comparison is not None
    assert (
        decision.comparison.n_compared + decision.comparison.n_excluded_seen_by_champion
        == decision.comparison.n_val_test
        > 0
    )
    promotion = rerun.steps["promote_model"].outputs["promotion_decision"][0]
    assert {Path(v.uri).name for v in promotion.visualizations} == {"promotion_decision.html"}


def test_alias_and_zenml_stage_move_together(runs: Runs) -> None:
    from zenml.client import Client
    from zenml.enums import ModelStages

    from stacks.local import mlflow_tracking_uri

    first, rerun = runs.first, runs.rerun
    decision = _decision(rerun)
    mlflow.set_tracking_uri(mlflow_tracking_uri())
    try:
        champion = MlflowClient().get_model_version_by_alias(decision.registered_model_name, "champion")
    finally:
        mlflow.set_tracking_uri(None)
    expected_champion, old_stage = (
        (decision.version, ModelStages.ARCHIVED)
        if decision.promoted
        else (_decision(first).version, ModelStages.PRODUCTION)
    )
    assert str(champion.version) == expected_champion
    client = Client()
    assert client.get_model_version(full_run.MODEL_NAME, rerun.model_version.id).stage == (
        ModelStages.PRODUCTION if decision.promoted else ModelStages.STAGING
    )
    assert client.get_model_version(full_run.MODEL_NAME, first.model_version.id).stage == old_stage


def test_mlflow_run_holds_params_metrics_plots_model_and_lineage(runs: Runs) -> None:
    from stacks.local import mlflow_tracking_uri

    rerun = runs.rerun
    decision = _decision(rerun)
    client = MlflowClient(tracking_uri=mlflow_tracking_uri())
    version = client.get_model_version(decision.registered_model_name, decision.version)
    run = client.get_run(version.run_id)
    params, metrics = run.data.params, run.data.metrics
    manifest = rerun.steps["split_data"].outputs["split_manifest"][0].load()
    assert (
        params["lineage.manifest_sha256"] == version.tags["manifest_sha256"]
        and params["split.seed"] == "0"
        and params["batch_name"] == "night"
    )
    assert (
        metrics["lineage.rows"] == len(manifest)
        and metrics["lineage.source.night.rows"] == (manifest["source"] == "night").sum()
    )
    assert metrics["lineage.split.val_test.rows"] == (manifest["split"] == "val_test").sum()
    assert {"val_test_mcc", "val_test_mcc_ci_low", "val_test_mcc_ci_high", "val_test_ece"} <= set(metrics)
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"evaluation", "promotion", "drift_reference", "lineage", "model_metadata.json"} <= artifacts
    assert client.list_artifacts(run.info.run_id, "lineage")[0].path == "lineage/split_manifest.csv"
