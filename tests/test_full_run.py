"""Integration: the real pipeline on a tiny demo configuration, checked through ZenML's and MLflow's own clients."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import ViewType

from pipelines.full_run import MODEL_NAME, main
from stage1_core.registry.tracking import data_lineage
from stage1_core.run.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
EXPECTED_OUTPUTS = {
    "ingest_data": {"raw_manifest"},
    "validate_data": {"valid_manifest", "quarantine", "validation_report"},
    "split_data": {"split_manifest"},
    "adapt_backbone": {"adapted_backbone", "explora_summary"},
    "train_model": {"classifier", "train_summary"},
    "calibrate_model": {"calibration_policy"},
    "evaluate_model": {"evaluation_report"},
    "export_model": {"exported_model"},
    "build_drift_reference": {"drift_reference", "embedding_projection", "drift_report"},
    "promote_model": {"promotion_decision"},
    "score_ablation": {"ablation_table"},
    "load_backbone_without_explora": {"pretrained_backbone"},
    "train_model_no_explora_linear_head": {
        "classifier_no_explora_linear_head",
        "train_summary_no_explora_linear_head",
    },
    "calibrate_model_no_explora_linear_head": {"calibration_policy_no_explora_linear_head"},
    "score_ablation_no_explora_linear_head": {"ablation_table"},
    "train_model_explora_doran_adapter": {"classifier_explora_doran_adapter", "train_summary_explora_doran_adapter"},
    "calibrate_model_explora_doran_adapter": {"calibration_policy_explora_doran_adapter"},
    "score_ablation_explora_doran_adapter": {"ablation_table"},
}
ABLATIONS = ("no_explora_linear_head", "explora_doran_adapter")
# bars any trained model clears: the first run becomes champion and its ZenML model version goes to production
LENIENT_BARS = {"min_mcc": -1.0, "max_ece": 1.0, "min_auroc": 0.0}


@pytest.fixture(scope="module")
def tiny_config(session_dir: Path) -> Path:
    document = yaml.safe_load((REPO / "pipelines" / "configs" / "tiny.yaml").read_text())
    document["parameters"]["data"] = {
        "path": str(session_dir / "tiny"),
        "image_store": str(session_dir / "tiny_images"),
    }
    document["parameters"]["train"]["checkpoint_root"] = str(session_dir / "checkpoints")
    document["parameters"]["evaluation"]["slices"]["truth_path"] = str(session_dir / "tiny" / "demo_truth.parquet")
    document["parameters"]["ablation"] = {"without_explora": True, "doran_head": True}
    document["parameters"]["promotion"] = LENIENT_BARS
    path = session_dir / "tiny.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def completed_run(tiny_config: Path):
    from zenml.client import Client

    assert main(["--config", str(tiny_config)]) == 0
    return Client().get_pipeline("full_run").last_run


@pytest.mark.slow
def test_full_run_completes_with_every_named_artifact(completed_run) -> None:
    assert completed_run.status.value == "completed"
    for step_name, outputs in EXPECTED_OUTPUTS.items():
        assert step_name in completed_run.steps, step_name
        assert set(completed_run.steps[step_name].outputs) == outputs, step_name
    report = completed_run.steps["evaluate_model"].outputs["evaluation_report"][0]
    assert {"metrics.html", "reliability_diagram.png", "ablations.html"} <= {
        Path(v.uri).name for v in report.visualizations
    }
    assert completed_run.steps["export_model"].outputs["exported_model"][0].load().metadata.parity[0].passed


def test_evaluation_report_shows_every_model_under_every_inference_mode(completed_run) -> None:
    """The ablation table reaches the evaluation report: 3 models x 3 modes.

    They are scored on the same val_test as the main model.
    """
    report = completed_run.steps["evaluate_model"].outputs["evaluation_report"][0].load()
    table = report.ablation
    assert [(row.model, row.inference) for row in table.rows] == [
        (model, mode)
        for model in ("main: ExPLoRA + linear head", "no ExPLoRA + linear head", "ExPLoRA + DoRAN adapter")
        for mode in ("global view", "multi-view", "adaptive")
    ]
    assert table.n_images == report.calibrated.n
    main_multiview = table.rows[1].metrics["mcc"]
    assert main_multiview.value == pytest.approx(report.calibrated.mcc.value), (
        "the main model's multi-view row is the report's own figure"
    )
    assert [row.views_per_image for row in table.rows[:2]] == [1.0, 10.0] and 1.0 <= table.rows[
        2
    ].views_per_image <= 10.0
    trained = {completed_run.steps["train_model"].outputs["classifier"][0].id} | {
        completed_run.steps[f"train_model_{name}"].outputs[f"classifier_{name}"][0].id for name in ABLATIONS
    }
    assert len(trained) == 3, "each ablation trains its own model"
    assert report.flat_metrics()["ablation_main_explora_linear_head_multi_view_mcc"] == pytest.approx(
        main_multiview.value
    )


@pytest.mark.slow
def test_production_model_version_holds_the_promoted_model_and_its_record(completed_run) -> None:
    """Through ZenML's Client: each trained model has its own artifact names, and the version's metadata tells
    its metrics with intervals, data hash, config and promotion decision."""
    from zenml.client import Client
    from zenml.enums import ModelStages

    steps = completed_run.steps
    production = Client().get_model_version(MODEL_NAME, ModelStages.PRODUCTION)
    assert production.id == completed_run.model_version.id
    assert production.get_model_artifact("classifier").id == steps["train_model"].outputs["classifier"][0].id
    for name in ABLATIONS:
        ablation = steps[f"train_model_{name}"].outputs[f"classifier_{name}"][0]
        assert production.get_model_artifact(f"classifier_{name}").id == ablation.id
    assert (
        production.get_artifact("calibration_policy").id == steps["calibrate_model"].outputs["calibration_policy"][0].id
    )
    backbones = {name: production.get_model_artifact(name).id for name in ("adapted_backbone", "pretrained_backbone")}
    assert backbones == {
        "adapted_backbone": steps["adapt_backbone"].outputs["adapted_backbone"][0].id,
        "pretrained_backbone": steps["load_backbone_without_explora"].outputs["pretrained_backbone"][0].id,
    }

    metadata = production.run_metadata
    report = steps["evaluate_model"].outputs["evaluation_report"][0].load()
    decision = steps["promote_model"].outputs["promotion_decision"][0].load()
    mcc = report.calibrated.mcc
    assert metadata["val_test"]["mcc"] == {"value": mcc.value, "ci_low": mcc.ci_low, "ci_high": mcc.ci_high}
    assert metadata["val_test"]["n_images"] == report.calibrated.n
    lineage = data_lineage(steps["split_data"].outputs["split_manifest"][0].load())
    assert metadata["data"]["manifest_sha256"] == lineage.manifest_sha256
    assert RunConfig.model_validate(metadata["config"]) == RunConfig.model_validate(
        completed_run.config.parameters["config"]
    )
    assert metadata["promotion"]["alias"] == decision.alias == "champion"
    assert metadata["promotion"]["reasons"] == decision.reasons


@pytest.mark.slow
def test_registered_version_has_description_signature_dataset_and_alias(completed_run) -> None:
    """Through MLflow's client: what the MLflow UI shows on the model version and on its run."""
    from zenml.client import Client

    from stacks.local import mlflow_tracking_uri

    steps = completed_run.steps
    decision = steps["promote_model"].outputs["promotion_decision"][0].load()
    report = steps["evaluate_model"].outputs["evaluation_report"][0].load()
    mlflow.set_tracking_uri(mlflow_tracking_uri())
    try:
        client = MlflowClient()
        version = client.get_model_version_by_alias(decision.registered_model_name, decision.alias)
        signature = mlflow.models.get_model_info(version.source).signature
        run = client.get_run(version.run_id)
        experiments = client.search_experiments(view_type=ViewType.ALL)
    finally:
        mlflow.set_tracking_uri(None)
    assert str(version.version) == decision.version and decision.alias == "champion"
    assert f"mcc {report.calibrated.mcc.value:.4f}" in version.description
    assert "Promotion gate: champion" in version.description and version.tags["gate"] == "champion"
    assert [(spec.name, spec.type, spec.shape) for spec in signature.inputs.inputs] == [
        ("image", np.dtype("uint8"), (-1, 3, -1, -1))
    ]
    assert [(spec.name, spec.type, spec.shape) for spec in signature.outputs.inputs] == [
        ("p_roadwork", np.dtype("float32"), (-1,))
    ]
    manifest = steps["split_data"].outputs["split_manifest"][0]
    [dataset_input] = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert (dataset.name, dataset.digest) == ("split_manifest", data_lineage(manifest.load()).manifest_sha256[:16])
    # MLflow keeps one dataset per (experiment, name, digest): an earlier run of the same manifest may be its source
    [logged] = Client().list_artifact_versions(uri=json.loads(dataset.source)["uri"]).items
    assert logged.name == "split_manifest" and data_lineage(logged.load()).manifest_sha256[:16] == dataset.digest
    # no stray experiment: MLflow's empty Default one is deleted, the others keep artifacts in the artifact store
    artifact_store = Client().active_stack.artifact_store.path
    active = [experiment for experiment in experiments if experiment.lifecycle_stage == "active"]
    assert "Default" not in {experiment.name for experiment in active} and active
    assert all(artifact_store in experiment.artifact_location for experiment in active)


@pytest.mark.slow
def test_unchanged_second_run_hits_the_step_cache(completed_run, tiny_config: Path) -> None:
    from zenml.client import Client

    assert main(["--config", str(tiny_config)]) == 0
    rerun = Client().get_pipeline("full_run").last_run
    assert rerun.id != completed_run.id
    assert {step.status.value for step in rerun.steps.values()} == {"cached"}


def test_missing_data_path_fails_in_one_line_before_training(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.full_run", "--data", str(missing)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 2
    assert str(missing) in result.stderr and "natix" in result.stderr.lower()
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["empty", "unknown"])
def test_empty_or_unknown_layout_is_refused(tmp_path: Path, kind: str, capsys) -> None:
    folder = tmp_path / kind
    folder.mkdir()
    if kind == "unknown":
        (folder / "notes.txt").write_text("not a dataset")
    assert main(["--data", str(folder)]) == 2
    error = capsys.readouterr().err
    assert str(folder) in error and "accepted layouts" in error


def test_library_fingerprint_follows_the_python_sources_only(tmp_path: Path) -> None:
    from stage1_core.run.code_version import source_fingerprint

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 8)
    first = source_fingerprint(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\x01" * 8)
    assert source_fingerprint(tmp_path) == first, "only .py files count"
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    edited = source_fingerprint(tmp_path)
    assert edited != first
    (tmp_path / "sub" / "b.py").rename(tmp_path / "b.py")
    assert source_fingerprint(tmp_path) not in (first, edited), "a moved file changes the fingerprint"


@pytest.mark.slow
def test_changed_library_code_reruns_the_steps(completed_run, tiny_config: Path, monkeypatch) -> None:
    """The step cache keys on the library code too: with another stage1_core fingerprint nothing is reused."""
    from zenml.client import Client

    import stage1_core.run.code_version

    monkeypatch.setattr(stage1_core.run.code_version, "library_fingerprint", lambda: "an edited stage1_core")
    assert main(["--config", str(tiny_config)]) == 0
    rerun = Client().get_pipeline("full_run").last_run
    assert "cached" not in {step.status.value for step in rerun.steps.values()}
    assert rerun.steps["train_model"].status.value == "completed"
