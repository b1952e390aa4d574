"""The trained classifier: backbone folder + head weights + config."""

from __future__ import annotations

from typing import Any, ClassVar

from zenml.enums import ArtifactType
from zenml.materializers.base_materializer import BaseMaterializer

from materializers.directory import load_directory, save_directory
from stage1_core.modeling.model import RoadworkClassifier


class ClassifierMaterializer(BaseMaterializer):
    """Stores a :class:`RoadworkClassifier` with its own ``save``/``load``."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (RoadworkClassifier,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def save(self, data: RoadworkClassifier) -> None:
        save_directory(self, data.save)

    def load(self, data_type: type[Any]) -> RoadworkClassifier:
        return load_directory(self, RoadworkClassifier.load)

    def extract_metadata(self, data: RoadworkClassifier) -> dict[str, Any]:
        multiview = data.config.multiview
        return {
            "views_per_image": multiview.views_per_image,
            "aggregation": multiview.aggregation,
            "canvas_size": multiview.canvas_size,
            "parameters": sum(p.numel() for p in data.parameters()),
        }
