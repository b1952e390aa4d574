"""A :class:`CalibrationPolicy` is stored as JSON, summarised as metadata (method, parameters, NLL before/after,
conformal thresholds) and shown as its reliability diagrams on val_calib before and after calibration."""

from __future__ import annotations

from typing import Any, ClassVar

from zenml.enums import ArtifactType

from materializers.report import ReportMaterializer
from stage1_core.evaluation.calibration import CalibrationPolicy


class CalibrationPolicyMaterializer(ReportMaterializer):
    """The report materializer's JSON storage and visualization files, for the policy type (a deployable model part)."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (CalibrationPolicy,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL
