"""Train step: supervised training with Lightning; selection on val_select only; resumes an interrupted run."""

from pathlib import Path
from typing import Annotated

import lightning as L
import pandas as pd
from transformers import PreTrainedModel
from zenml import log_metadata, step

from stage1_core.data.splits import Consumer, take_split
from stage1_core.modeling.model import ClassifierConfig, RoadworkClassifier
from stage1_core.modeling.training import TrainConfig, TrainSummary, train_classifier
from stage1_core.registry.tracking import log_config, log_history
from stage1_core.run.reliability import content_hash, manifest_data_hash, reproducibility_record
from steps.variants import MAIN_MODEL, MODEL_VARIANT


@step(experiment_tracker=True, substitutions=MAIN_MODEL)
def train_model(
    manifest: pd.DataFrame, backbone: PreTrainedModel, classifier_config: ClassifierConfig, config: TrainConfig
) -> tuple[
    Annotated[RoadworkClassifier, f"classifier{MODEL_VARIANT}"],
    Annotated[TrainSummary, f"train_summary{MODEL_VARIANT}"],
]:
    """Fine-tune the head (and last blocks) on train; keep the val_select-best checkpoint.

    Outputs are named per trained model (``classifier`` for the main one, ``classifier_<ablation>`` for an
    ablation, see :mod:`steps.variants`), so a model version's ``classifier`` is the model it ships.

    Checkpoints go to ``config.checkpoint_root/<hash of the inputs and configs>``: a run killed during training
    and started again (upstream steps cached) finds its folder and resumes from the last finished epoch.
    """
    train = take_split(manifest, "train", Consumer.TRAINING)
    val_select = take_split(manifest, "val_select", Consumer.MODEL_SELECTION)
    log_config(config, "train")
    log_config(classifier_config, "classifier")
    training_config = config.model_copy(
        update={"checkpoint_root": None}
    )  # where checkpoints live does not change the result
    fingerprint = content_hash(manifest, backbone, classifier_config, training_config)
    record = reproducibility_record(config.seed, manifest_data_hash(manifest), fingerprint)
    log_config(record, "reproducibility")
    log_metadata({"reproducibility": record.model_dump(mode="json")})
    L.seed_everything(config.seed, workers=True)  # the head's initialisation draws from the global RNG
    checkpoint_dir = Path(config.checkpoint_root).expanduser() / fingerprint[:16] if config.checkpoint_root else None
    model, summary = train_classifier(
        RoadworkClassifier(backbone, classifier_config), train, val_select, config, checkpoint_dir
    )
    log_history(summary.history, "")
    log_metadata(
        {
            "best_val_select_mcc": summary.best_val_select_mcc,
            "best_epoch": summary.best_epoch,
            "epochs_run": summary.epochs_run,
            "resumed_after_epochs": summary.resumed_after_epochs,
            "processes": summary.processes,
            "seconds": summary.seconds,
            "train_steps": summary.train_steps,
            "sampling": summary.sampling.model_dump(mode="json"),
        }
        | ({"seconds_per_train_step": summary.seconds_per_train_step} if summary.train_steps else {})
    )
    return model, summary
