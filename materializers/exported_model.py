"""The exported ONNX model with its metadata (opset, input spec, parity figures)."""

from __future__ import annotations

from typing import Any, ClassVar

from zenml.enums import ArtifactType

from zenml.materializers.base_materializer import BaseMaterializer

from materializers.directory import load_directory, save_directory
from stage1_core.export import ExportedModel


class ExportedModelMaterializer(BaseMaterializer):
    """Stores ``model.onnx`` + ``metadata.json``: the same folder the predictor loads."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (ExportedModel,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def save(self, data: ExportedModel) -> None:
        save_directory(self, data.save)

    def load(self, data_type: type[Any]) -> ExportedModel:
        return load_directory(self, ExportedModel.load)

    def extract_metadata(self, data: ExportedModel) -> dict[str, Any]:
        meta = data.metadata
        parity = meta.parity[0]
        return {
            "opset": meta.opset,
            "input_spec": meta.input_spec,
            "onnx_max_abs_diff": parity.max_abs_diff,
            "parity_images": parity.n_images,
            "tensorrt": meta.tensorrt,
            "size_mb": round(len(data.onnx_bytes) / 1e6, 2),
        }
