"""Exported bundles in the MLflow model registry: logging one into a run, and loading the one behind an alias.

The registered model version points at the ONNX model; its run holds the bundle's other files (metadata,
adaptive graphs, int8 graphs, TensorRT engine) beside it, so a version behind an alias can be rebuilt into the same
:class:`ExportedModel` the export step wrote.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import mlflow
import mlflow.artifacts
import mlflow.onnx
import onnx
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import Schema, TensorSpec

from stage1_core.serving.bundle import (
    ENGINE_FILE,
    MODEL_FILE,
    AdaptiveExport,
    ExportedModel,
    ExportMetadata,
    Int8Export,
)
from stage1_core.serving.predictor import ModelLoadError, Predictor, PredictorConfig

logger = logging.getLogger(__name__)

REGISTERED_MODEL_NAME = "roadwork-classifier"
CHAMPION = "champion"  # the version served: it passed the bars and the comparison with the previous champion
CHALLENGER = "challenger"  # the latest version that passed the bars but not the comparison
FAILED_BARS = "failed_bars"  # a version that failed the bars: no alias, this value in its GATE_TAG
GATE_TAG = "gate"  # every version's gate outcome: champion, challenger or failed_bars
REGISTERED_MODEL_DESCRIPTION = (
    "P(roadwork) classifier: calibrated multi-view DINOv2/DINOv3, exported to ONNX. Aliases: "
    f"'{CHAMPION}' is the version served (it cleared the absolute bars and was not worse than the previous "
    f"champion on the same unseen val_test images); '{CHALLENGER}' is the latest version that cleared the bars "
    f"but not that comparison. A version that failed the bars gets no alias; every version's '{GATE_TAG}' tag and "
    "description say how the gate decided."
)


def onnx_signature(model: onnx.ModelProto) -> ModelSignature:
    """The graph's own inputs and outputs as an MLflow signature (named dimensions such as ``batch`` become -1).

    For ``model.onnx``: uint8 ``image`` [batch, 3, height, width] -> ``p_roadwork`` [batch].
    """
    weights = {initializer.name for initializer in model.graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        shape = tuple(dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor.shape.dim)
        return TensorSpec(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type), shape, value.name)

    return ModelSignature(
        inputs=Schema([spec(value) for value in model.graph.input if value.name not in weights]),
        outputs=Schema([spec(value) for value in model.graph.output]),
    )


def log_exported_model(exported: ExportedModel, name: str = "model") -> ModelInfo:
    """Log the ONNX model into the active MLflow run, with its signature, metadata, extra graphs and engine.

    The adaptive graphs go under ``{name}_adaptive/``, the int8 graphs and the guard's figures under ``{name}_int8/``,
    the TensorRT engine under ``{name}_tensorrt/``.
    """
    model = onnx.load_from_string(exported.onnx_bytes)
    info = mlflow.onnx.log_model(model, name=name, signature=onnx_signature(model))
    mlflow.log_dict(exported.metadata.model_dump(mode="json"), f"{name}_metadata.json")
    with tempfile.TemporaryDirectory() as tmp:
        if exported.adaptive is not None:
            mlflow.log_artifacts(str(exported.adaptive.save(Path(tmp) / "adaptive")), artifact_path=f"{name}_adaptive")
        if exported.int8 is not None:
            mlflow.log_artifacts(str(exported.int8.save(Path(tmp) / "int8")), artifact_path=f"{name}_int8")
        if exported.tensorrt_engine is not None:
            engine = Path(tmp) / ENGINE_FILE
            engine.write_bytes(exported.tensorrt_engine)
            mlflow.log_artifact(str(engine), artifact_path=f"{name}_tensorrt")
    return info


def load_registered_model(
    alias: str = CHAMPION, *, tracking_uri: str | None = None, registered_model_name: str = REGISTERED_MODEL_NAME
) -> tuple[ExportedModel, str]:
    """The exported model of the version behind ``alias``, and where it came from.

    Raises:
        ModelLoadError: no tracking URI, registry unreachable or unreadable, or no version holds the alias.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ModelLoadError(
            "no MLflow tracking URI: pass tracking_uri (CLI: --tracking-uri) or set MLFLOW_TRACKING_URI, "
            "or load an exported bundle path instead"
        )
    name = registered_model_name
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ModelLoadError(
                f"the MLflow registry at {uri} has no {name!r} version with alias {alias!r} ({error.message}); "
                "run the pipeline until a model passes the promotion gate, or pass an exported bundle path"
            ) from None
        raise ModelLoadError(
            f"cannot read the MLflow registry at {uri}: {error.message}; check the URI and that the server is up"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            location = client.get_model_version_download_uri(
                name, version.version
            )  # a plain artifact URI: no default-store lookup
            model_dir = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(Path(tmp) / "model"))
            )
            metadata = mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path="model_metadata.json", dst_path=tmp, tracking_uri=uri
            )
            artifacts = {item.path for item in client.list_artifacts(version.run_id)}
            extras = {
                folder: Path(
                    mlflow.artifacts.download_artifacts(
                        run_id=version.run_id, artifact_path=folder, dst_path=tmp, tracking_uri=uri
                    )
                )
                for folder in ("model_adaptive", "model_int8")
                if folder in artifacts
            }
        except (MlflowException, OSError) as error:
            raise ModelLoadError(
                f"{name} v{version.version} ({alias}) at {uri}: cannot download its files ({error})"
            ) from None
        onnx_bytes = onnx.load(
            str(model_dir / MODEL_FILE)
        ).SerializeToString()  # mlflow.onnx stores weights as external data
        adaptive_dir, int8_dir = extras.get("model_adaptive"), extras.get("model_int8")
        adaptive = AdaptiveExport.load(adaptive_dir) if adaptive_dir and AdaptiveExport.present(adaptive_dir) else None
        int8 = Int8Export.load(int8_dir) if int8_dir and Int8Export.present(int8_dir) else None
        exported = ExportedModel(
            onnx_bytes, ExportMetadata.model_validate(json.loads(Path(metadata).read_text())), adaptive, int8=int8
        )
    logger.info(
        "loaded %s v%s (%s) from %s%s%s",
        name,
        version.version,
        alias,
        uri,
        " with adaptive multi-view" if adaptive else "",
        f", int8 graphs (guard: serve {int8.metadata.served})" if int8 else "",
    )
    return exported, f"{name}@{alias} (v{version.version}, {uri})"


def looks_like_a_path(model: str) -> bool:
    """Whether ``model`` names a bundle folder (it exists, or has a path's shape) rather than a registry alias."""
    return Path(model).expanduser().exists() or os.sep in model or model.startswith((".", "~"))


def load_predictor(
    model: str = CHAMPION, *, tracking_uri: str | None = None, config: PredictorConfig | None = None
) -> Predictor:
    """``model`` is an exported bundle folder, or else a registry alias such as ``champion``."""
    path = Path(model).expanduser()
    if path.exists():
        return Predictor.from_bundle(path, config)
    if looks_like_a_path(model):
        raise ModelLoadError(f"{model}: no such model bundle folder")
    exported, origin = load_registered_model(model, tracking_uri=tracking_uri)
    return Predictor(exported, config, origin=origin)
