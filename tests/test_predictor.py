import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from onnx import TensorProto, helper
from PIL import Image, ImageOps

from pipelines import predict as predict_cli
from stage1_core.common.logit_map import LogitMap
from stage1_core.export.exporter import ExportConfig, GlobalViewGraph, ServingGraph, export_adaptive, export_onnx
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier
from stage1_core.registry.champion import load_predictor, log_exported_model
from stage1_core.registry.promotion import PromotionConfig, register_and_promote
from stage1_core.serving import predictor as predictor_module
from stage1_core.serving.bundle import ExportedModel, ExportMetadata
from stage1_core.serving.errors import PredictionError
from stage1_core.serving.predictor import (
    BadImageError,
    ModelLoadError,
    Predictor,
    PredictorConfig,
    decode_image,
    predict_base64_jpeg,
)
from tests.commands import run_module

CALIBRATION = LogitMap.from_temperature(1.5)
REPO = Path(__file__).resolve().parents[1]


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny_model() -> RoadworkClassifier:
    return RoadworkClassifier(
        load_backbone("dinov2-demo", seed=2), ClassifierConfig(multiview=MultiViewConfig(view_size=28))
    ).eval()


@pytest.fixture(scope="module")
def bundle(tiny_model: RoadworkClassifier, tmp_path_factory: pytest.TempPathFactory) -> tuple[ExportedModel, Path]:
    """A tiny exported model with its adaptive graphs, saved as one bundle folder."""
    generator = torch.Generator().manual_seed(1)
    images = [
        torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
        for h, w in [(48, 64), (64, 48), (50, 50), (40, 90)]
    ]
    config = ExportConfig(parity_images=2)
    exported = export_onnx(tiny_model, CALIBRATION, 0.5, images, config)
    exported.adaptive = export_adaptive(
        tiny_model, CALIBRATION, images[:2], [image.numpy() for image in images], np.array([1, 0, 1, 0]), config
    )
    directory = exported.save(tmp_path_factory.mktemp("bundle"))
    return exported, directory


def test_decoding_applies_exif_orientation_and_turns_every_colour_mode_into_rgb() -> None:
    config = PredictorConfig()
    photo = _photo(40, 24)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rotated = decode_image(_encode(photo, "PNG", exif=exif), source="exif.png", config=config)
    assert rotated.shape == (3, 40, 24)
    np.testing.assert_array_equal(
        rotated,
        np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(_encode(photo, "PNG", exif=exif))))).transpose(
            2, 0, 1
        ),
    )

    grey = decode_image(_encode(Image.new("L", (20, 20), 77), "PNG"), source="grey.png", config=config)
    assert grey.shape == (3, 20, 20) and (grey == 77).all()

    deep = np.full((20, 20), 32896, dtype=np.uint16)
    deep[:, :10] = 65535
    sixteen = decode_image(_encode(Image.fromarray(deep), "PNG"), source="16bit.png", config=config)
    assert (sixteen[:, :, :10] == 255).all() and (sixteen[:, :, 10:] == 128).all()  # scaled, not clipped at 255

    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, 10:, 3] = 255  # left half fully transparent
    composited = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), source="alpha.png", config=config)
    assert (composited[:, :, :10] == 255).all() and (
        composited[:, :, 10:] == np.array([200, 0, 0])[:, None, None]
    ).all()

    cmyk = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # pure red in CMYK
    red = decode_image(_encode(cmyk, "JPEG", quality=95), source="cmyk.jpg", config=config)
    assert red.shape == (3, 20, 20) and red[0].mean() > 200 and red[1:].mean() < 60


def test_bad_inputs_are_refused_with_the_reason_and_large_ones_fitted_for_the_miner() -> None:
    config = PredictorConfig(max_pixels=20_000)
    jpeg = _encode(_photo(64, 48), "JPEG")
    cases = {
        "empty file": b"",
        "not an image Pillow can read": b"hello, not an image",
        "corrupt or truncated": jpeg[: len(jpeg) // 2],
        "below the smallest side": _encode(Image.new("RGB", (1, 1)), "PNG"),
        "over the bound": _encode(_photo(200, 150), "JPEG"),
    }
    for reason, data in cases.items():
        with pytest.raises(BadImageError, match=reason) as error:
            decode_image(data, source="input.x", config=config)
        assert str(error.value).startswith("input.x: ")
    with pytest.raises(BadImageError, match="1x1 px is below the smallest side of 16 px"):
        decode_image(cases["below the smallest side"], source="tiny", config=config, fit_to_bounds=True)
    shrunk = decode_image(cases["over the bound"], source="big", config=config, fit_to_bounds=True)
    assert shrunk.shape[1] * shrunk.shape[2] <= 20_000 and abs(shrunk.shape[2] / shrunk.shape[1] - 4 / 3) < 0.05


def test_bundle_predictor_matches_pytorch_and_adaptive_uses_one_or_all_views(bundle, tiny_model) -> None:
    exported, directory = bundle
    adaptive = ExportedModel.load(directory).adaptive
    assert (
        adaptive is not None
        and adaptive.metadata.policy.margin_threshold == exported.adaptive.metadata.policy.margin_threshold
    )
    assert adaptive.metadata.parity[0].passed and adaptive.metadata.parity[0].max_abs_diff <= 1e-4
    generator = torch.Generator().manual_seed(5)
    images = [
        torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
        for h, w in [(48, 64)] * 5 + [(70, 30)] * 3
    ]
    sources = [f"img{i}" for i in range(len(images))]
    arrays = [image.numpy() for image in images]
    with torch.inference_mode():
        full = np.array([ServingGraph(tiny_model, CALIBRATION)(image.unsqueeze(0)).item() for image in images])
        p_global = np.array(
            [GlobalViewGraph(tiny_model, CALIBRATION)(image.unsqueeze(0))[1].item() for image in images]
        )

    fixed = Predictor.from_bundle(directory, PredictorConfig(mode="full", batch_size=3)).predict_arrays(arrays, sources)
    assert [p.source for p in fixed] == sources and all(p.views == 10 for p in fixed)
    np.testing.assert_allclose([p.p_roadwork for p in fixed], full, atol=1e-4)

    policy = adaptive.metadata.policy
    margin = np.abs(np.log(p_global / (1 - p_global)))
    served = Predictor.from_bundle(directory)
    served.adaptive_policy = policy.model_copy(
        update={"margin_threshold": float(np.median(margin)), "positive_margin_threshold": None}
    )
    results = served.predict_arrays(arrays, sources)
    confident = np.array([p.views == 1 for p in results])
    assert served.mode == "adaptive" and 0 < confident.sum() < len(images)
    expected = np.where(confident, p_global, full)
    np.testing.assert_allclose([p.p_roadwork for p in results], expected, atol=1e-4)


def test_miner_function_returns_a_probability_for_any_decodable_image(bundle, monkeypatch) -> None:
    monkeypatch.setenv(predictor_module.MODEL_ENV, str(bundle[1]))
    predictor_module.default_predictor.cache_clear()
    try:
        inputs = [
            _encode(_photo(64, 48), "JPEG"),
            _encode(Image.new("RGBA", (40, 30), (255, 128, 0, 90)), "PNG"),
            _encode(Image.new("L", (30, 30), 10), "JPEG"),
        ]
        answers = [predict_base64_jpeg(base64.b64encode(data).decode()) for data in inputs]
        answers.append(predict_base64_jpeg("data:image/jpeg;base64," + base64.b64encode(inputs[0]).decode()))
        assert all(isinstance(a, float) and 0.0 <= a <= 1.0 for a in answers)
        assert answers[3] == answers[0]
    finally:
        predictor_module.default_predictor.cache_clear()


def test_miner_function_raises_one_documented_error_type_for_every_bad_input(bundle, monkeypatch) -> None:
    """Whatever the miner is given, it answers a float in [0, 1] or raises PredictionError naming the reason."""
    monkeypatch.setenv(predictor_module.MODEL_ENV, str(bundle[1]))
    predictor_module.default_predictor.cache_clear()
    try:
        cases = {
            "expected a base64 str, got NoneType": None,
            "expected a base64 str, got int": 12,
            "empty file": "",
            "not an image Pillow can read": base64.b64encode(b"plain text").decode(),
            "(?i)truncated": base64.b64encode(_encode(_photo(64, 48), "JPEG")[:400]).decode(),
            "8x8 px is below the smallest side of 16 px": base64.b64encode(
                _encode(Image.new("RGB", (8, 8), (255, 128, 0)), "PNG")
            ).decode(),  # the CLI refuses it too (test_cli_scores_good_inputs_and_names_each_bad_one)
        }
        for reason, value in cases.items():
            with pytest.raises(PredictionError, match=reason) as error:
                predict_base64_jpeg(value)
            assert isinstance(error.value, BadImageError), reason
    finally:
        predictor_module.default_predictor.cache_clear()


def test_miner_runs_on_onnxruntime_alone_without_importing_torch_or_fitting_code(bundle, tmp_path) -> None:
    image = tmp_path / "street.jpg"
    image.write_bytes(_encode(_photo(64, 48), "JPEG"))
    script = (
        "import base64, sys\n"
        "from stage1_core.serving.predictor import predict_base64_jpeg\n"
        f"p = predict_base64_jpeg(base64.b64encode(open({str(image)!r}, 'rb').read()).decode())\n"
        "print(p, *(name in sys.modules for name in ('torch', 'mlflow', 'scipy', 'sklearn', 'matplotlib')))\n"
    )
    env = {**os.environ, predictor_module.MODEL_ENV: str(bundle[1])}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    p, *loaded = result.stdout.split()
    assert 0.0 <= float(p) <= 1.0
    assert loaded == ["False"] * 5, "torch, mlflow, scipy, sklearn, matplotlib: none is needed to serve a bundle"
    expected = Predictor.from_bundle(bundle[1]).predict_bytes(image.read_bytes(), fit_to_bounds=True).p_roadwork
    assert float(p) == pytest.approx(expected, abs=1e-6)


def _constant_graph_bundle(directory: Path, scale: float, offset: float) -> Path:
    """A hand-built ONNX model: p = mean(image) * scale + offset (so it can return NaN or leave [0, 1])."""
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels", "axes"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["p_roadwork"]),
    ]
    initializers = [
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
        helper.make_tensor("offset", TensorProto.FLOAT, [], [offset]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("p_roadwork", TensorProto.FLOAT, ["b"])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    metadata = ExportMetadata(
        opset=18,
        input_spec="image",
        output_spec="p_roadwork",
        canvas_size=16,
        views_per_image=1,
        calibration=LogitMap.from_temperature(1.0),
        decision_threshold=0.5,
        parity=[],
        tensorrt="skipped",
        torch_version=torch.__version__,
        onnxruntime_version="test",
    )
    return ExportedModel(model.SerializeToString(), metadata).save(directory)


@pytest.mark.parametrize(
    ("scale", "offset", "dark", "bright"), [(4 / 255, -1.5, 0.0, 1.0), (float("nan"), 0.0, 0.5, 0.5)]
)
def test_out_of_range_and_nan_model_outputs_become_valid_answers(tmp_path, scale, offset, dark, bright) -> None:
    predictor = Predictor.from_bundle(_constant_graph_bundle(tmp_path, scale, offset))
    black, white = np.zeros((3, 20, 20), np.uint8), np.full((3, 20, 20), 255, np.uint8)
    results = predictor.predict_arrays([black, white], ["black", "white"])
    assert [r.p_roadwork for r in results] == [dark, bright]
    assert all(r.warning for r in results)
    assert predictor.predict_base64(base64.b64encode(_encode(Image.new("RGB", (20, 20)), "PNG")).decode()) == dark


def test_champion_is_loaded_from_the_mlflow_registry_and_a_missing_one_is_explained(
    bundle, tmp_path, monkeypatch, capsys
) -> None:
    exported, directory = bundle
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(uri, uri)
        image = tmp_path / "x.jpg"
        image.write_bytes(_encode(_photo(32, 32), "JPEG"))
        assert predict_cli.main([str(image), "--tracking-uri", uri]) == 2
        assert "has no 'roadwork-classifier' version with alias 'champion'" in capsys.readouterr().err
        experiment = client.create_experiment("predictor-test", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_exported_model(exported)
        metrics = {"mcc": 0.9, "auroc": 0.95, "ece": 0.02}
        decision = register_and_promote(client, info.model_uri, run.info.run_id, metrics, PromotionConfig(), [])
        assert decision.promoted
    finally:
        mlflow.set_tracking_uri(previous)
    champion = load_predictor(tracking_uri=uri)
    local = Predictor.from_bundle(directory)
    assert champion.mode == "adaptive" and "roadwork-classifier@champion" in champion.origin
    images = [np.random.default_rng(i).integers(0, 256, (3, 40, 60), dtype=np.uint8) for i in range(4)]
    names = [str(i) for i in range(4)]
    assert [p.p_roadwork for p in champion.predict_arrays(images, names)] == [
        p.p_roadwork for p in local.predict_arrays(images, names)
    ]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ModelLoadError, match="MLFLOW_TRACKING_URI"):
        load_predictor()

    # --json: stdout carries the JSON alone on the registry-alias path, also when ZenML (which logs to stdout)
    # is imported to look for a tracking URI and creates its store on the way.
    scored = run_module("pipelines.predict", str(image), "--tracking-uri", uri, "--json")
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert "roadwork-classifier@champion" in json.loads(scored.stdout)["model"]
    fresh_zenml = {"ZENML_CONFIG_PATH": str(tmp_path / "fresh_zenml"), "MLFLOW_TRACKING_URI": ""}
    unresolved = run_module("pipelines.predict", str(image), "--json", env=fresh_zenml)
    assert unresolved.returncode == 2 and "no MLflow tracking URI" in unresolved.stderr
    assert "global active stack" in unresolved.stderr and unresolved.stdout == "", "ZenML logs to stderr"


def test_cli_scores_good_inputs_and_names_each_bad_one(tmp_path, capsys) -> None:
    model = _constant_graph_bundle(
        tmp_path / "model", 1 / 255, 0.0
    )  # p = mean pixel value: the CLI, not the model, is under test
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    jpeg = _encode(_photo(64, 48), "JPEG")
    (inputs / "good.jpg").write_bytes(jpeg)
    (inputs / "good.png").write_bytes(_encode(_photo(50, 60, seed=1), "PNG"))
    (inputs / "empty.jpg").write_bytes(b"")
    (inputs / "corrupt.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (inputs / "notes.jpg").write_text("not an image at all")
    (inputs / "dot.png").write_bytes(_encode(Image.new("RGB", (1, 1)), "PNG"))
    (inputs / "huge.png").write_bytes(_encode(_photo(400, 300), "PNG"))
    (inputs / "README.txt").write_text("skipped: no image extension")
    missing = tmp_path / "missing.jpg"
    arguments = [str(inputs), str(missing), "--model", str(model), "--max-pixels", "100000"]

    result = subprocess.run(
        [sys.executable, "-m", "pipelines.predict", *arguments, "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    scored = {Path(p["source"]).name: p for p in report["predictions"]}
    assert sorted(scored) == ["good.jpg", "good.png"]
    expected = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float64).mean() / 255
    assert scored["good.jpg"]["p_roadwork"] == pytest.approx(expected, abs=1e-5) and scored["good.jpg"]["views"] == 1
    errors = {Path(f["source"]).name: f["error"] for f in report["failures"]}
    reasons = {
        "empty.jpg": "empty file",
        "corrupt.jpg": "truncated",
        "notes.jpg": "not an image",
        "dot.png": "1x1 px is below the smallest side",
        "huge.png": "over the bound",
        "missing.jpg": "no such file",
    }
    assert set(errors) == set(reasons)
    for name, reason in reasons.items():
        assert reason in errors[name], (name, errors[name])
    assert [(Path(s["source"]).name, s["reason"]) for s in report["skipped"]] == [
        ("README.txt", "not an image file extension")
    ]

    assert predict_cli.main(arguments) == 1
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 2
    assert f"FAILED {inputs / 'dot.png'}: 1x1 px" in err and "2 scored, 6 failed, 1 skipped" in err


def _broken_copy(directory: Path, target: Path, name: str, damage: str) -> Path:
    shutil.copytree(directory, target)
    path = target / name
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 3], "empty": b"", "garbage": b'{"opset": 18, "inp'}[damage])
    return target


@pytest.mark.parametrize(
    ("name", "damage", "reason"),
    [
        ("model.onnx", "truncated", "model.onnx: not a loadable ONNX model"),
        ("model.onnx", "empty", "model.onnx: empty file (0 bytes)"),
        ("metadata.json", "garbage", "metadata.json: not a valid ExportMetadata"),
    ],
)
def test_a_broken_bundle_is_one_line_from_the_cli_and_one_error_type_from_the_miner(
    bundle, tmp_path, monkeypatch, capsys, name: str, damage: str, reason: str
) -> None:
    broken = _broken_copy(bundle[1], tmp_path / "bundle", name, damage)
    image = tmp_path / "street.jpg"
    image.write_bytes(_encode(_photo(64, 48), "JPEG"))
    assert predict_cli.main([str(image), "--model", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {broken}/{reason}") and "--save-bundle" in err and "Traceback" not in err
    monkeypatch.setenv(predictor_module.MODEL_ENV, str(broken))
    predictor_module.default_predictor.cache_clear()
    try:
        with pytest.raises(PredictionError, match=re.escape(f"{broken}/{reason}")) as error:
            predict_base64_jpeg(base64.b64encode(image.read_bytes()).decode())
        assert isinstance(error.value, ModelLoadError)
    finally:
        predictor_module.default_predictor.cache_clear()


@pytest.mark.parametrize(("name", "damage"), [("global_view.onnx", "truncated"), ("adaptive.json", "garbage")])
def test_broken_adaptive_graphs_serve_in_full_mode_with_a_warning(
    bundle, tmp_path, capsys, caplog, name: str, damage: str
) -> None:
    broken = _broken_copy(bundle[1], tmp_path / "bundle", name, damage)
    image = tmp_path / "street.jpg"
    image.write_bytes(_encode(_photo(64, 48), "JPEG"))
    assert predict_cli.main([str(image), "--model", str(broken)]) == 0
    out, err = capsys.readouterr()
    assert f"{broken}/{name}" in caplog.text and "full mode" in caplog.text
    assert "views=10" in out and "(fixed 10-view, fp32)" in err


def test_every_input_is_reported_scored_failed_or_skipped_and_the_counts_add_up(tmp_path, capsys) -> None:
    """The inputs that used to vanish: a broken link in a folder, a folder named like an image, hidden entries."""
    model = _constant_graph_bundle(tmp_path / "model", 1 / 255, 0.0)
    inputs = tmp_path / "inputs"
    (inputs / "nested").mkdir(parents=True)
    (inputs / "good.jpg").write_bytes(_encode(_photo(64, 48), "JPEG"))
    (inputs / "nested" / "also.png").write_bytes(_encode(_photo(50, 60, seed=1), "PNG"))
    (inputs / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (inputs / "linked.jpg").symlink_to(inputs / "good.jpg")
    (inputs / "elsewhere").symlink_to(inputs / "nested", target_is_directory=True)
    (inputs / ".thumbnail.jpg").write_bytes(b"hidden")
    (inputs / ".cache").mkdir()
    (inputs / ".cache" / "x.jpg").write_bytes(b"hidden too")
    os.mkfifo(inputs / "pipe.jpg")
    folder_named_like_an_image = tmp_path / "x.jpg"
    folder_named_like_an_image.mkdir()
    empty_of_images = tmp_path / "notes"
    empty_of_images.mkdir()
    (empty_of_images / "todo.txt").write_text("no images here")
    named = [str(inputs), str(folder_named_like_an_image), str(empty_of_images), str(tmp_path / "missing.png")]

    assert predict_cli.main([*named, "--model", str(model), "--json"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    scored = sorted(Path(p["source"]).name for p in report["predictions"])
    failed = {Path(f["source"]).name: f["error"] for f in report["failures"]}
    skipped = {Path(s["source"]).name: s["reason"] for s in report["skipped"]}
    assert scored == ["also.png", "good.jpg", "linked.jpg"]
    assert failed == {
        "gone.jpg": f"broken symbolic link to {tmp_path / 'deleted.jpg'}",
        "x.jpg": "a folder holding no image file to score",
        "notes": "a folder holding no image file to score",
        "missing.png": "no such file or folder",
    }
    assert skipped == {
        "elsewhere": "link to a folder (not followed)",
        ".thumbnail.jpg": "hidden file",
        ".cache": "hidden folder (not read)",
        "pipe.jpg": "not a regular file",
        "todo.txt": "not an image file extension",
    }
    assert predict_cli.main([*named, "--model", str(model)]) == 1
    err = capsys.readouterr().err
    assert "12 inputs: 3 scored, 4 failed, 5 skipped" in err
    assert f"FAILED {folder_named_like_an_image}: a folder holding no image file to score" in err
