"""The exported model bundle: ONNX graphs (fixed and adaptive multi-view), metadata, TensorRT engine when built."""

from __future__ import annotations

from typing import Any, ClassVar

from zenml.enums import ArtifactType
from zenml.materializers.base_materializer import BaseMaterializer

from materializers.directory import load_directory, save_directory
from stage1_core.serving.bundle import ExportedModel


class ExportedModelMaterializer(BaseMaterializer):
    """Stores the bundle folder: the same folder the predictor loads.

    The folder holds ``model.onnx``, ``metadata.json``, the adaptive graphs and the engine.
    """

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (ExportedModel,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def save(self, data: ExportedModel) -> None:
        save_directory(self, data.save)

    def load(self, data_type: type[Any]) -> ExportedModel:
        return load_directory(self, ExportedModel.load)

    def extract_metadata(self, data: ExportedModel) -> dict[str, Any]:
        return data.summary()
