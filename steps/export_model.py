"""Export step: ONNX of the whole serving path, parity-checked.

Fixed and adaptive multi-view, their int8 versions behind an accuracy guard, and a TensorRT engine where available.
"""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from stage1_core.data.splits import Consumer, take_split
from stage1_core.evaluation.calibration import CalibrationPolicy
from stage1_core.export.exporter import ExportConfig, export_bundle
from stage1_core.modeling.model import RoadworkClassifier
from stage1_core.serving.bundle import ExportedModel


@step
def export_model(
    manifest: pd.DataFrame, classifier: RoadworkClassifier, policy: CalibrationPolicy, config: ExportConfig
) -> Annotated[ExportedModel, "exported_model"]:
    """Export classifier + calibration; the adaptive bound is fitted on val_select and measured on val_test.

    The int8 graphs are calibrated on val_calib images and served only if the guard keeps MCC on val_test and
    val_select.

    Fails if ONNX Runtime and PyTorch disagree beyond the tolerance; TensorRT never fails it (its status is recorded).
    """
    val_select = take_split(manifest, "val_select", Consumer.MODEL_SELECTION)
    val_test = take_split(manifest, "val_test", Consumer.EVALUATION)
    val_calib = take_split(manifest, "val_calib", Consumer.CALIBRATION)
    exported = export_bundle(classifier, policy.logit_map, policy.threshold, val_select, val_test, config, val_calib)
    log_metadata(exported.summary())
    return exported
