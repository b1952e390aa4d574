"""Train step: supervised training with Lightning; selection on val_select only."""

from typing import Annotated

import pandas as pd
from transformers import PreTrainedModel
from zenml import log_metadata, step

from stage1_core.fusion import sampling_weights, summarize
from stage1_core.model import ClassifierConfig, RoadworkClassifier
from stage1_core.splits import Consumer, take_split
from stage1_core.tracking import log_config, log_history
from stage1_core.training import TrainConfig, TrainSummary, train_classifier


@step(experiment_tracker=True)
def train_model(manifest: pd.DataFrame, backbone: PreTrainedModel, classifier_config: ClassifierConfig, config: TrainConfig) -> tuple[
    Annotated[RoadworkClassifier, "classifier"],
    Annotated[TrainSummary, "train_summary"],
]:
    """Fine-tune the head (and last blocks) on train; keep the val_select-best checkpoint."""
    train = take_split(manifest, "train", Consumer.TRAINING)
    val_select = take_split(manifest, "val_select", Consumer.MODEL_SELECTION)
    log_config(config, "train")
    log_config(classifier_config, "classifier")
    log_metadata({"sampling": summarize(train, sampling_weights(train, config.sampling)).model_dump(mode="json")})
    model, summary = train_classifier(RoadworkClassifier(backbone, classifier_config), train, val_select, config)
    log_history(summary.history, "")
    log_metadata({"best_val_select_mcc": summary.best_val_select_mcc, "best_epoch": summary.best_epoch, "epochs_run": summary.epochs_run, "seconds": summary.seconds})
    return model, summary
