"""Backbones (transformers models) stored with save_pretrained, so any transformers install can read them."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import AutoModel, PreTrainedModel
from zenml.enums import ArtifactType
from zenml.materializers.base_materializer import BaseMaterializer

from materializers.directory import load_directory, save_directory


class BackboneMaterializer(BaseMaterializer):
    """A DINOv2/DINOv3 backbone as a ``save_pretrained`` folder (config.json + safetensors)."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (PreTrainedModel,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def save(self, data: PreTrainedModel) -> None:
        save_directory(self, data.save_pretrained)

    def load(self, data_type: type[Any]) -> PreTrainedModel:
        return load_directory(self, lambda path: AutoModel.from_pretrained(path, local_files_only=True).eval())

    def extract_metadata(self, data: PreTrainedModel) -> dict[str, Any]:
        return {
            "model_type": data.config.model_type,
            "parameters": sum(p.numel() for p in data.parameters()),
            "hidden_size": data.config.hidden_size,
        }
