"""Integration: full_run makes a champion, the drift monitor flags a night/fog/new-city batch, and the retrain
pipeline fuses that batch in, retrains and runs the gate against the champion (two real pipeline runs)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from pipelines import drift_monitor, full_run, retrain
from stage1_core.demo_data import DemoDataConfig, generate_demo_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config(session_dir: Path) -> Path:
    """tiny.yaml with its own data folder and bars any trained model clears, so the first run makes a champion."""
    document = yaml.safe_load((REPO / "pipelines" / "configs" / "tiny.yaml").read_text())
    parameters = document["parameters"]
    parameters["data"] = {"path": str(session_dir / "retrain_tiny"), "image_store": str(session_dir / "retrain_tiny_images")}
    parameters["evaluation"]["slices"]["truth_path"] = str(session_dir / "retrain_tiny" / "demo_truth.parquet")
    parameters["drift"] = {"retrain_min_rows": 10, "embedding_components": 3}
    # its own registered model: other tests of the session have registered champions under the default name
    parameters["promotion"] = {"registered_model_name": "roadwork-retrain-test", "min_mcc": -1.0, "max_ece": 1.0, "min_auroc": 0.0,
                               "min_compared_images": 1, "n_bootstrap": 50}
    path = session_dir / "retrain_tiny.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def shifted_batch(session_dir: Path, config: Path) -> Path:
    demo = yaml.safe_load(config.read_text())["parameters"]["demo"]
    size = {"image_width": demo["image_width"], "image_height": demo["image_height"]}  # same size: only the scenes shift
    return generate_demo_dataset(session_dir / "night_batch", DemoDataConfig(n_images=32, seed=21, shift="night_fog_city", frames_per_sequence=1, **size))


@pytest.fixture(scope="module")
def runs(config: Path, shifted_batch: Path, session_dir: Path):
    from zenml.client import Client

    assert full_run.main(["--config", str(config)]) == 0
    first = Client().get_pipeline("full_run").last_run
    assert drift_monitor.main(["--batch", str(shifted_batch), "--out", str(session_dir / "monitor"), "--config", str(config)]) == 0
    assert retrain.main(["--batch", str(shifted_batch), "--config", str(config), "--batch-name", "night"]) == 0
    return first, Client().get_pipeline("retrain_pipeline").last_run


def _decision(run):
    return run.steps["promote_model"].outputs["promotion_decision"][0].load()


def test_first_run_makes_a_champion_in_production(runs) -> None:
    first, _ = runs
    decision = _decision(first)
    assert decision.promoted and decision.champion_version is None and "no champion yet (first run)" in decision.reasons[-1]


def test_monitor_flags_the_shifted_batch(runs, session_dir: Path) -> None:
    first, _ = runs
    verdict = json.loads((session_dir / "monitor" / "drift_verdict.json").read_text())
    assert verdict["dataset_drift"] and verdict["retrain_recommended"]
    assert "brightness" in verdict["drifted_columns"] and any(column.startswith("emb_") for column in verdict["drifted_columns"])
    assert "in production" in verdict["reference"] and first.name in verdict["reference"]
    assert (session_dir / "monitor" / "drift.html").stat().st_size > 0


def test_retrain_fuses_the_batch_and_is_gated_against_the_champion(runs) -> None:
    first, rerun = runs
    assert rerun.status.value == "completed"
    drift = rerun.steps["check_drift"].outputs["batch_drift_report"][0]
    assert drift.load().retrain_recommended and {Path(v.uri).name for v in drift.visualizations} == {"drift.html"}
    manifest = rerun.steps["split_data"].outputs["split_manifest"][0].load()
    assert (manifest["source"] == "night").sum() > 0 and manifest.loc[manifest["source"] == "night", "id"].str.startswith("night:").all()
    decision = _decision(rerun)
    assert decision.champion_version == _decision(first).version and decision.comparison is not None
    assert decision.comparison.n_compared + decision.comparison.n_excluded_seen_by_champion == decision.comparison.n_val_test > 0
    promotion = rerun.steps["promote_model"].outputs["promotion_decision"][0]
    assert {Path(v.uri).name for v in promotion.visualizations} == {"promotion_decision.html"}


def test_alias_and_zenml_stage_move_together(runs) -> None:
    from stacks.local import mlflow_tracking_uri
    from zenml.client import Client
    from zenml.enums import ModelStages

    first, rerun = runs
    decision = _decision(rerun)
    mlflow.set_tracking_uri(mlflow_tracking_uri())
    try:
        champion = MlflowClient().get_model_version_by_alias(decision.registered_model_name, "champion")
    finally:
        mlflow.set_tracking_uri(None)
    expected_champion, old_stage = (decision.version, ModelStages.ARCHIVED) if decision.promoted else (_decision(first).version, ModelStages.PRODUCTION)
    assert str(champion.version) == expected_champion
    client = Client()
    assert client.get_model_version(full_run.MODEL_NAME, rerun.model_version.id).stage == (ModelStages.PRODUCTION if decision.promoted else ModelStages.STAGING)
    assert client.get_model_version(full_run.MODEL_NAME, first.model_version.id).stage == old_stage


def test_mlflow_run_holds_params_metrics_plots_model_and_lineage(runs) -> None:
    from stacks.local import mlflow_tracking_uri

    _, rerun = runs
    decision = _decision(rerun)
    client = MlflowClient(tracking_uri=mlflow_tracking_uri())
    version = client.get_model_version(decision.registered_model_name, decision.version)
    run = client.get_run(version.run_id)
    params, metrics = run.data.params, run.data.metrics
    manifest = rerun.steps["split_data"].outputs["split_manifest"][0].load()
    assert params["lineage.manifest_sha256"] == version.tags["manifest_sha256"] and params["split.seed"] == "0" and params["batch_name"] == "night"
    assert metrics["lineage.rows"] == len(manifest) and metrics["lineage.source.night.rows"] == (manifest["source"] == "night").sum()
    assert metrics["lineage.split.val_test.rows"] == (manifest["split"] == "val_test").sum()
    assert {"val_test_mcc", "val_test_mcc_ci_low", "val_test_mcc_ci_high", "val_test_ece"} <= set(metrics)
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"evaluation", "promotion", "drift_reference", "lineage", "model_metadata.json"} <= artifacts
    assert client.list_artifacts(run.info.run_id, "lineage")[0].path == "lineage/split_manifest.csv"
