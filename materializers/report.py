"""Every :class:`Report` is stored as JSON, shown as its HTML/PNG visualizations and summarised as metadata."""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.materializers.base_materializer import BaseMaterializer

from materializers.directory import save_file
from stage1_core.common.reports import Report

VISUALIZATION_TYPES = {
    ".html": VisualizationType.HTML,
    ".png": VisualizationType.IMAGE,
    ".md": VisualizationType.MARKDOWN,
    ".csv": VisualizationType.CSV,
}
DATA_FILE = "report.json"


class ReportMaterializer(BaseMaterializer):
    """Stores the report's fields; writes its visualizations next to them."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (Report,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS

    def save(self, data: Report) -> None:
        save_file(self, DATA_FILE, data.model_dump_json())

    def load(self, data_type: type[Report]) -> Report:
        with self.artifact_store.open(os.path.join(self.uri, DATA_FILE), "r") as handle:
            return data_type.model_validate(json.loads(handle.read()))

    def save_visualizations(self, data: Report) -> dict[str, VisualizationType]:
        saved = {}
        for name, content in data.visualizations().items():
            saved[save_file(self, name, content)] = VISUALIZATION_TYPES[os.path.splitext(name)[1]]
        return saved

    def extract_metadata(self, data: Report) -> dict[str, Any]:
        return data.metadata()
