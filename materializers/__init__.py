"""How this project's own types are stored, summarised and shown (imported for registration)."""

from materializers.backbone import BackboneMaterializer
from materializers.calibration_policy import CalibrationPolicyMaterializer
from materializers.classifier import ClassifierMaterializer
from materializers.exported_model import ExportedModelMaterializer
from materializers.report import ReportMaterializer

__all__ = [
    "BackboneMaterializer",
    "CalibrationPolicyMaterializer",
    "ClassifierMaterializer",
    "ExportedModelMaterializer",
    "ReportMaterializer",
]
