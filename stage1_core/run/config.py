"""The run configuration: one pydantic model per stage, filled from a ZenML YAML run config.

``pipelines/configs/*.yaml`` hold ``parameters:`` whose keys are the fields below; they are
validated here before anything runs, so a typo fails at start with the field's name.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stage1_core.common.config import StrictConfig
from stage1_core.data.sources.config import IngestConfig
from stage1_core.data.splits import SplitConfig
from stage1_core.data.validation import ValidationConfig
from stage1_core.demo.config import DemoDataConfig
from stage1_core.evaluation.ablation import AblationConfig
from stage1_core.evaluation.calibration import CalibrationConfig
from stage1_core.evaluation.report import EvaluationConfig
from stage1_core.export.exporter import ExportConfig
from stage1_core.modeling.explora import ExploraConfig
from stage1_core.modeling.model import ClassifierConfig
from stage1_core.modeling.training import TrainConfig
from stage1_core.monitoring.drift import DriftConfig
from stage1_core.registry.promotion import PromotionConfig


class RunConfig(StrictConfig):
    """Everything ``full_run`` needs; each stage reads its own section."""

    data: IngestConfig = IngestConfig()
    demo: DemoDataConfig | None = DemoDataConfig()
    demo_sources: dict[Literal["natix", "mapillary", "roadwork"], int] | None = Field(
        None,
        description="draw the demo as several sources (layout -> images), one subfolder each; None: NATIX layout only",
    )
    validation: ValidationConfig = ValidationConfig()
    split: SplitConfig = SplitConfig()
    backbone: str = "dinov2-demo"
    seed: int = 0
    explora_enabled: bool = True
    explora: ExploraConfig = ExploraConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    train: TrainConfig = TrainConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    export: ExportConfig = ExportConfig()
    drift: DriftConfig = DriftConfig()
    promotion: PromotionConfig = PromotionConfig()
    ablation: AblationConfig = AblationConfig()
