"""Export step: ONNX of the whole serving path, parity-checked with ONNX Runtime on val_test images."""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from stage1_core.calibration import CalibrationPolicy
from stage1_core.export import ExportConfig, ExportedModel, export_onnx
from stage1_core.images import load_uint8_images
from stage1_core.model import RoadworkClassifier
from stage1_core.splits import Consumer, take_split


@step
def export_model(manifest: pd.DataFrame, classifier: RoadworkClassifier, policy: CalibrationPolicy, config: ExportConfig) -> Annotated[ExportedModel, "exported_model"]:
    """Export classifier + calibration; fails if ONNX Runtime and PyTorch disagree beyond the tolerance."""
    images = load_uint8_images(take_split(manifest, "val_test", Consumer.EVALUATION).head(config.parity_images))
    exported = export_onnx(classifier, policy.logit_map, policy.threshold, images, config)
    log_metadata({"onnx_max_abs_diff": exported.metadata.parity[0].max_abs_diff, "tensorrt": exported.metadata.tensorrt, "opset": exported.metadata.opset})
    return exported
