"""Integration: the real pipeline on a tiny demo configuration, checked through ZenML's and MLflow's own clients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from pipelines.full_run import main

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
    "load_backbone_without_explora": {"adapted_backbone"},
    "train_model_no_explora_linear_head": {"classifier", "train_summary"},
    "calibrate_model_no_explora_linear_head": {"calibration_policy"},
    "score_ablation_no_explora_linear_head": {"ablation_table"},
    "train_model_explora_doran_adapter": {"classifier", "train_summary"},
    "calibrate_model_explora_doran_adapter": {"calibration_policy"},
    "score_ablation_explora_doran_adapter": {"ablation_table"},
}


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
    trained = {
        completed_run.steps[name].outputs["classifier"][0].id
        for name in ("train_model", "train_model_no_explora_linear_head", "train_model_explora_doran_adapter")
    }
    assert len(trained) == 3, "each ablation trains its own model"
    assert report.flat_metrics()["ablation_main_explora_linear_head_multi_view_mcc"] == pytest.approx(
        main_multiview.value
    )


@pytest.mark.slow
def test_model_version_is_registered_in_mlflow(completed_run) -> None:
    from stacks.local import mlflow_tracking_uri

    decision = completed_run.steps["promote_model"].outputs["promotion_decision"][0].load()
    mlflow.set_tracking_uri(mlflow_tracking_uri())
    try:
        version = MlflowClient().get_model_version_by_alias(decision.registered_model_name, decision.alias)
    finally:
        mlflow.set_tracking_uri(None)
    assert str(version.version) == decision.version
    assert decision.alias in {"champion", "challenger"} and decision.reasons


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
