"""Static int8 graphs: calibrated on val_calib, guarded against the fp32 graphs, served where the guard lets them."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil

import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from pipelines import predict as predict_cli
from stage1_core.common.logit_map import LogitMap
from stage1_core.data.splits import Consumer, SplitConfig, assign_splits, take_split
from stage1_core.export.exporter import (
    ExportConfig,
    ServingGraph,
    TensorRTConfig,
    export_adaptive,
    export_bundle,
    export_int8,
    export_onnx,
    int8_guard_checks,
    read_images,
    score_serving_paths,
)
from stage1_core.export.quantization import BACKBONE_SCOPE, Int8Config, guard_decision, precision_check
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier
from stage1_core.registry.champion import load_registered_model, log_exported_model
from stage1_core.registry.promotion import score_champion
from stage1_core.serving import predictor as predictor_module
from stage1_core.serving.bundle import INT8_FILES, ExportedModel, cpu_session
from stage1_core.serving.errors import ModelLoadError
from stage1_core.serving.predictor import Predictor, PredictorConfig, predict_base64_jpeg

NO_TENSORRT = TensorRTConfig(enabled=False)


@pytest.fixture(scope="module")
def tiny_model() -> RoadworkClassifier:
    return RoadworkClassifier(
        load_backbone("dinov2-demo"), ClassifierConfig(multiview=MultiViewConfig(view_size=28))
    ).eval()


@pytest.fixture(scope="module")
def splits(demo_manifest: pd.DataFrame) -> dict[str, pd.DataFrame]:
    manifest = assign_splits(demo_manifest, SplitConfig())
    consumers = {
        "val_select": Consumer.MODEL_SELECTION,
        "val_calib": Consumer.CALIBRATION,
        "val_test": Consumer.EVALUATION,
    }
    return {name: take_split(manifest, name, consumer) for name, consumer in consumers.items()}


def _centred_calibration(model: RoadworkClassifier, images: list[np.ndarray]) -> LogitMap:
    """A sharp calibration map centred on these images' median logit: their P spread on both sides of 0.5."""
    with torch.inference_mode():
        p = np.array(
            [ServingGraph(model, LogitMap.from_temperature(1.0))(torch.from_numpy(i)[None]).item() for i in images]
        )
    logits = np.log(p) - np.log1p(-p)
    temperature = max(float(logits.std()), 1e-3) / 3
    return LogitMap(a=1 / temperature, b=1 / temperature, c=-float(np.median(logits)) / temperature)


def _quantized_weights(graph: bytes) -> dict[str, bool]:
    """MatMul/Conv node name -> whether its weight comes through a DequantizeLinear (int8 in the QDQ graph)."""
    model = onnx.load_from_string(graph)
    dequantized = {output for node in model.graph.node if node.op_type == "DequantizeLinear" for output in node.output}
    return {node.name: node.input[1] in dequantized for node in model.graph.node if node.op_type in ("MatMul", "Conv")}


def _in_backbone(graph: bytes) -> dict[str, bool]:
    model = onnx.load_from_string(graph)
    scopes = {
        node.name: next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
        for node in model.graph.node
    }
    return {name: BACKBONE_SCOPE in scope for name, scope in scopes.items()}


def test_int8_bundle_is_calibrated_guarded_and_served_by_the_predictor_cli_miner_and_registry(
    tiny_model, splits, tmp_path, monkeypatch, capsys, caplog
) -> None:
    val_test = splits["val_test"]
    test_images = list(read_images(val_test["uri"]))
    calibration = _centred_calibration(tiny_model, test_images)
    config = ExportConfig(
        parity_images=2, tensorrt=NO_TENSORRT, int8=Int8Config(calibration_images=8, max_mcc_drop=2.0)
    )
    exported = export_bundle(tiny_model, calibration, 0.5, splits["val_select"], val_test, config, splits["val_calib"])
    int8 = exported.int8
    assert int8 is not None and int8.metadata.calibration_images == min(8, len(splits["val_calib"]))

    # the backbone's MatMul and Conv are int8, everything outside it (head, pooling, calibration) stays fp32
    quantized, in_backbone = _quantized_weights(int8.onnx_bytes), _in_backbone(exported.onnx_bytes)
    assert {name for name, is_int8 in quantized.items() if is_int8} == {
        name for name in quantized if in_backbone.get(name)
    }
    assert sum(quantized.values()) == int8.metadata.quantized_nodes["fixed"] > 0 and not all(quantized.values())

    # the guard's figures are what the sessions give on val_test and val_select, for both serving paths
    guard = pd.concat([val_test, splits["val_select"]])
    assert [(c.dataset, c.path, c.n_images) for c in int8.metadata.checks] == [
        ("val_test+val_select", "full", len(guard)),
        ("val_test+val_select", "adaptive", len(guard)),
    ]
    guard_images = list(read_images(guard["uri"]))
    fp32_session, int8_session = cpu_session(exported.onnx_bytes), cpu_session(int8.onnx_bytes)
    p_fp32 = np.concatenate([fp32_session.run(None, {"image": i[None]})[0] for i in guard_images])
    p_int8 = np.concatenate([int8_session.run(None, {"image": i[None]})[0] for i in guard_images])
    full = int8.metadata.checks[0]
    assert full == precision_check("val_test+val_select", "full", p_fp32, p_int8, guard["label"].to_numpy(), 2.0)
    assert 0 < full.max_abs_diff < 0.5, "int8 is a different model numerically, not a broken one"
    assert int8.metadata.served == "int8" and "within its MCC budget" in int8.metadata.reason
    summary = exported.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["int8_served"] == "int8" and summary["images_per_s_int8_fixed"] > 0

    # saved and loaded, the bundle serves int8 (its guard's choice) through the predictor, the CLI and the miner
    directory = exported.save(tmp_path / "bundle")
    fixed = Predictor.from_bundle(directory, PredictorConfig(mode="full"))
    assert (
        fixed.precision == "int8"
        and Predictor.from_bundle(directory, PredictorConfig(precision="fp32")).precision == "fp32"
    )
    sources = [str(i) for i in range(len(test_images))]
    served = [p.p_roadwork for p in fixed.predict_arrays(test_images, sources)]
    np.testing.assert_allclose(served, p_int8[: len(test_images)], atol=1e-6)
    adaptive = Predictor.from_bundle(directory)
    assert adaptive.mode == "adaptive" and adaptive.precision == "int8"

    buffer = io.BytesIO()
    Image.fromarray(test_images[0].transpose(1, 2, 0)).save(buffer, format="PNG")
    image_file = tmp_path / "street.png"
    image_file.write_bytes(buffer.getvalue())
    expected = adaptive.predict_bytes(buffer.getvalue()).p_roadwork
    assert predict_cli.main([str(image_file), "--model", str(directory), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["precision"] == "int8" and report["predictions"][0]["p_roadwork"] == pytest.approx(expected, abs=1e-6)
    monkeypatch.setenv(predictor_module.MODEL_ENV, str(directory))
    predictor_module.default_predictor.cache_clear()
    try:
        assert predict_base64_jpeg(base64.b64encode(buffer.getvalue()).decode()) == pytest.approx(expected, abs=1e-6)
    finally:
        predictor_module.default_predictor.cache_clear()

    # the int8 graphs and the guard's decision travel with the bundle through the MLflow registry
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(uri, uri)
        experiment = client.create_experiment("int8", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = log_exported_model(exported)
        version = mlflow.register_model(info.model_uri, "roadwork-int8")
        client.set_registered_model_alias("roadwork-int8", "champion", version.version)
    finally:
        mlflow.set_tracking_uri(previous)
    registered, _ = load_registered_model("champion", tracking_uri=uri, registered_model_name="roadwork-int8")
    assert registered.int8 is not None and registered.int8.onnx_bytes == int8.onnx_bytes
    assert registered.int8.tiles_onnx == int8.tiles_onnx and registered.int8.metadata == int8.metadata
    assert Predictor(registered).precision == "int8"
    # the promotion gate compares the champion as evaluated (fp32), not as its int8 guard serves it
    champion = score_champion(client, "roadwork-int8", list(val_test["uri"]))
    np.testing.assert_allclose(champion, p_fp32[: len(val_test)], atol=1e-6)

    # broken int8 files: the bundle serves fp32 with a warning naming the file, unless int8 is asked for
    broken = shutil.copytree(directory, tmp_path / "broken")
    graph = broken / INT8_FILES["fixed"]
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        assert Predictor.from_bundle(broken, PredictorConfig(mode="full")).precision == "fp32"
    assert f"{graph}: not a loadable ONNX model" in caplog.text
    with pytest.raises(ModelLoadError, match="model_int8.onnx: not a loadable ONNX model"):
        Predictor.from_bundle(broken, PredictorConfig(precision="int8"))
    (broken / INT8_FILES["tiles"]).unlink()
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert ExportedModel.load(broken).int8 is None
    assert "tiles_int8.onnx: missing beside global_view_int8.onnx" in caplog.text


def test_guard_serves_fp32_when_int8_costs_more_mcc_than_the_budget(tiny_model, splits) -> None:
    images = list(read_images(splits["val_test"]["uri"])) + list(read_images(splits["val_select"]["uri"]))
    calibration = _centred_calibration(tiny_model, images)
    config = ExportConfig(parity_images=2, tensorrt=NO_TENSORRT)
    parity = [torch.from_numpy(image) for image in images[:2]]
    exported = export_onnx(tiny_model, calibration, 0.5, parity, config)
    fp32_session = exported.session()
    p_fp32 = np.concatenate([fp32_session.run(None, {"image": i[None]})[0] for i in images])
    labels = (p_fp32 > 0.5).astype(int)  # labels the fp32 model gets all right: MCC 1
    assert 0 < labels.sum() < len(labels)
    exported.adaptive = export_adaptive(tiny_model, calibration, parity, images, labels, config)
    # activation ranges fixed on blank images: real images saturate the int8 graphs
    exported.int8 = export_int8(exported, [np.zeros_like(images[0])] * 4, config.int8)
    scores, _ = score_serving_paths(exported, images)
    checks = int8_guard_checks("val_test", scores, labels, config.int8.max_mcc_drop)
    served, reason = guard_decision(checks)
    assert served == "fp32" and all(not check.passed and check.decisions_changed > 0 for check in checks)
    assert "val_test full: MCC 1.0000 ->" in reason and "> 0.01" in reason
    exported.int8.metadata = exported.int8.metadata.model_copy(
        update={"checks": checks, "served": served, "reason": reason}
    )

    predictor = Predictor(exported, PredictorConfig(mode="full"))
    assert predictor.precision == "fp32"
    served_p = [p.p_roadwork for p in predictor.predict_arrays(images, [str(i) for i in range(len(images))])]
    np.testing.assert_allclose(served_p, p_fp32, atol=1e-6)
    assert Predictor(exported, PredictorConfig(mode="full", precision="int8")).precision == "int8"


def test_guard_checks_name_what_changed_and_refuse_one_class_sets() -> None:
    labels = np.array([1, 1, 0, 0])
    check = precision_check(
        "held-out", "full", np.array([0.9, 0.6, 0.4, 0.1]), np.array([0.9, 0.4, 0.4, 0.1]), labels, 0.01
    )
    assert check.decisions_changed == 1 and check.max_abs_diff == pytest.approx(0.2) and not check.passed
    assert check.mcc_fp32 == 1.0 and check.mcc_drop == pytest.approx(1.0 - check.mcc_int8)
    assert guard_decision([]) == ("fp32", "no guard set was scored: int8 is not served unchecked")
    with pytest.raises(ValueError, match="needs both classes"):
        precision_check("held-out", "full", np.array([0.9, 0.1]), np.array([0.9, 0.1]), np.array([1, 1]), 0.01)
