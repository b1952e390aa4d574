import json

import numpy as np
import onnx
import pytest
import torch
from sklearn.metrics import matthews_corrcoef

from stage1_core.common.logit_map import LogitMap
from stage1_core.data.splits import Consumer, SplitConfig, assign_splits, take_split
from stage1_core.export.exporter import (
    ExportConfig,
    ServingGraph,
    TensorRTConfig,
    TensorRTRunner,
    export_bundle,
    export_onnx,
    read_images,
    tensorrt_unavailable,
)
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier
from stage1_core.serving.bundle import ENGINE_FILE, ExportedModel

TRT_MISSING = tensorrt_unavailable()


@pytest.fixture(scope="module")
def tiny_model() -> RoadworkClassifier:
    return RoadworkClassifier(
        load_backbone("dinov2-demo"), ClassifierConfig(multiview=MultiViewConfig(view_size=28))
    ).eval()


def _images(sizes: list[tuple[int, int]], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in sizes]


def test_onnx_export_matches_pytorch_on_images_of_several_sizes(tiny_model, tmp_path) -> None:
    images = _images([(60, 80), (60, 80), (90, 40), (33, 200)], seed=0)
    calibration = LogitMap(a=0.8, b=0.5, c=0.3)  # a Dirichlet-like map, not only a temperature
    exported = export_onnx(
        tiny_model, calibration=calibration, decision_threshold=0.4, images=images, config=ExportConfig()
    )
    parity = exported.metadata.parity[0]
    assert parity.passed and parity.max_abs_diff <= 1e-4 and parity.n_images == 4
    assert exported.metadata.calibration == calibration and exported.metadata.views_per_image == 10
    if TRT_MISSING:  # a CPU machine: no engine, and the reason is recorded instead of failing the export
        assert (
            exported.tensorrt_engine is None
            and exported.metadata.tensorrt == TRT_MISSING
            and len(exported.metadata.parity) == 1
        )

    reloaded = ExportedModel.load(exported.save(tmp_path / "bundle"))
    batch = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    onnx_probs = reloaded.session().run(None, {"image": batch.numpy()})[0]
    with torch.no_grad():
        torch_probs = ServingGraph(tiny_model, calibration)(batch).numpy()
    assert onnx_probs.shape == (5,)
    assert np.abs(onnx_probs - torch_probs).max() <= 1e-4
    assert ((onnx_probs >= 0) & (onnx_probs <= 1)).all()


def test_served_graph_is_fused_keeps_parity_and_the_plain_one_has_standard_operators_only(tiny_model) -> None:
    images = _images([(48, 64), (70, 50)], seed=2)
    exported = export_onnx(
        tiny_model, LogitMap.from_temperature(1.2), 0.5, images, ExportConfig(tensorrt=TensorRTConfig(enabled=False))
    )
    fusions = exported.metadata.onnxruntime_fusions
    assert fusions.get("sdpa", 0) == tiny_model.backbone.config.num_hidden_layers, fusions
    assert exported.metadata.parity[0].passed and exported.metadata.parity[0].max_abs_diff <= 1e-4
    assert exported.metadata.tensorrt.startswith("skipped: disabled")
    op_types = {node.op_type for node in onnx.load_from_string(exported.onnx_bytes).graph.node}
    assert "MultiHeadAttention" in op_types and "Softmax" not in op_types
    assert (
        "SkipLayerNormalization" not in op_types and "LayerNormalization" in op_types
    )  # ONNX Runtime's CPU kernel for it is the slower one
    plain = export_onnx(
        tiny_model,
        LogitMap.from_temperature(1.2),
        0.5,
        images,
        ExportConfig(fuse_for_onnxruntime=False, tensorrt=TensorRTConfig(enabled=False)),
    )
    assert plain.metadata.onnxruntime_fusions == {} and plain.metadata.parity[0].passed
    assert {node.domain for node in onnx.load_from_string(plain.onnx_bytes).graph.node} <= {"", "ai.onnx"}


def test_bundle_fits_adaptive_on_val_select_and_measures_it_on_val_test(tiny_model, demo_manifest, tmp_path) -> None:
    manifest = assign_splits(demo_manifest, SplitConfig())
    val_select = take_split(manifest, "val_select", Consumer.MODEL_SELECTION)
    val_test = take_split(manifest, "val_test", Consumer.EVALUATION)
    calibration = LogitMap.from_temperature(0.05)  # a sharp map: the random head's logits spread over [0, 1]
    config = ExportConfig(parity_images=3)
    exported = export_bundle(tiny_model, calibration, 0.4, val_select, val_test, config)
    threshold = (
        config.adaptive.decision_threshold
    )  # adaptive serving is fitted and judged at the validator's 0.5, not the policy's 0.4
    assert exported.metadata.decision_threshold == 0.4 and threshold == 0.5

    adaptive = exported.adaptive
    assert adaptive is not None and all(report.passed for report in exported.metadata.parity + adaptive.metadata.parity)
    policy, outcome, speed = adaptive.metadata.policy, adaptive.metadata.val_test, adaptive.metadata.speed
    assert (
        policy.decision_threshold == threshold
        and policy.fitted_on.n_images == len(val_select)
        and outcome.n_images == len(val_test) == speed.n_images
    )

    # the val_test figures, recomputed from the bundle's own sessions
    fixed, sessions = exported.session(), adaptive.sessions()
    for session in (
        fixed,
        sessions.global_session,
        sessions.tiles_session,
    ):  # the adaptive pair alternates: spinning idle pools would fight for the cores
        assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    images = list(read_images(val_test["uri"]))
    p_full = np.concatenate([fixed.run(None, {"image": image[None]})[0] for image in images])
    p_global = np.concatenate([sessions.global_pass(image[None])[1] for image in images])
    served = [sessions.predict(image[None], policy) for image in images]
    p_adaptive, views = np.concatenate([p for p, _ in served]), np.concatenate([v for _, v in served])
    labels = val_test["label"].to_numpy()
    assert outcome.mcc_full == pytest.approx(matthews_corrcoef(labels, p_full > threshold), abs=1e-9, nan_ok=True)
    assert outcome.mcc_global == pytest.approx(matthews_corrcoef(labels, p_global > threshold), abs=1e-9, nan_ok=True)
    assert outcome.mcc_adaptive == pytest.approx(
        matthews_corrcoef(labels, p_adaptive > threshold), abs=1e-9, nan_ok=True
    )
    assert outcome.views_per_image == pytest.approx(views.mean())
    assert speed.fixed_images_per_s > 0 and speed.adaptive_speedup == pytest.approx(
        speed.adaptive_images_per_s / speed.fixed_images_per_s
    )

    reloaded = ExportedModel.load(exported.save(tmp_path / "bundle"))
    assert reloaded.adaptive.metadata.val_test == outcome and reloaded.adaptive.global_onnx == adaptive.global_onnx
    summary = reloaded.summary()
    json.dumps(summary, allow_nan=False)  # ZenML metadata: plain JSON values
    assert summary["val_test_views_per_image_adaptive"] == pytest.approx(views.mean()) and summary["adaptive"] is True
    assert summary["tensorrt_engine"] is (reloaded.tensorrt_engine is not None)

    # saving over a bundle replaces the folder whole: no adaptive graphs of the old bundle linger beside the new model
    replaced = ExportedModel.load(ExportedModel(exported.onnx_bytes, exported.metadata).save(tmp_path / "bundle"))
    assert replaced.adaptive is None and sorted(path.name for path in (tmp_path / "bundle").iterdir()) == [
        "metadata.json",
        "model.onnx",
    ]


@pytest.mark.gpu
@pytest.mark.skipif(TRT_MISSING is not None, reason=f"TensorRT engine build: {TRT_MISSING}")
def test_tensorrt_fp16_engine_is_built_checked_and_stored(tiny_model, tmp_path) -> None:
    images = _images([(60, 80), (90, 40)], seed=4)
    calibration = LogitMap.from_temperature(1.5)
    exported = export_onnx(
        tiny_model, calibration, 0.5, images, ExportConfig(tensorrt=TensorRTConfig(max_side=512, max_batch=4))
    )
    assert exported.metadata.tensorrt.startswith("built"), exported.metadata.tensorrt
    report = exported.metadata.parity[1]
    assert (
        report.runtime.startswith("tensorrt")
        and report.passed
        and report.max_abs_diff <= TensorRTConfig().parity_tolerance
    )
    directory = exported.save(tmp_path / "bundle")
    assert (directory / ENGINE_FILE).is_file()
    batch = torch.randint(0, 256, (3, 3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    engine = TensorRTRunner(ExportedModel.load(directory).tensorrt_engine)
    with torch.inference_mode():
        reference = ServingGraph(tiny_model, calibration)(batch).numpy()
    assert np.abs(engine(batch.numpy()) - reference).max() <= TensorRTConfig().parity_tolerance
