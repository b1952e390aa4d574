"""Ablation step: one model of the run under the three inference modes on val_test, appended to the run's table."""

from typing import Annotated

import pandas as pd
from zenml import step

from stage1_core.data.splits import Consumer, take_split
from stage1_core.evaluation.ablation import AblationTable, score_inference_modes
from stage1_core.evaluation.calibration import CalibrationPolicy
from stage1_core.evaluation.report import EvaluationConfig
from stage1_core.modeling.model import RoadworkClassifier
from stage1_core.serving.adaptive import AdaptiveConfig


@step
def score_ablation(
    manifest: pd.DataFrame,
    classifier: RoadworkClassifier,
    policy: CalibrationPolicy,
    model_name: str,
    evaluation: EvaluationConfig,
    adaptive: AdaptiveConfig,
    table: AblationTable | None = None,
) -> Annotated[AblationTable, "ablation_table"]:
    """Chained through the run, so the evaluation step gets one table of every model.

    Each call takes the previous table.
    """
    val_select = take_split(manifest, "val_select", Consumer.MODEL_SELECTION)
    val_test = take_split(manifest, "val_test", Consumer.EVALUATION)
    rows = score_inference_modes(model_name, classifier, policy, val_select, val_test, evaluation, adaptive)
    return (table or AblationTable(n_images=len(val_test))).with_rows(rows)
