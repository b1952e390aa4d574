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
from mlflow.models.model import ModelInfo

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


def log_exported_model(exported: ExportedModel, name: str = "model") -> ModelInfo:
    """Log the ONNX model into the active MLflow run, with its metadata, adaptive graphs, int8 graphs and engine.

    The adaptive graphs go under ``{name}_adaptive/``, the int8 graphs and the guard's figures under ``{name}_int8/``.
    """
    info = mlflow.onnx.log_model(onnx.load_from_string(exported.onnx_bytes), name=name)
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


def load_predictor(
    model: str = CHAMPION, *, tracking_uri: str | None = None, config: PredictorConfig | None = None
) -> Predictor:
    """``model`` is an exported bundle folder, or else a registry alias such as ``champion``."""
    path = Path(model).expanduser()
    if path.exists():
        return Predictor.from_bundle(path, config)
    if os.sep in model or model.startswith("."):
        raise ModelLoadError(f"{model}: no such model bundle folder")
    exported, origin = load_registered_model(model, tracking_uri=tracking_uri)
    return Predictor(exported, config, origin=origin)
