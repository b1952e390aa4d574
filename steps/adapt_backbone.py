"""ExPLoRA step: continue the backbone's self-supervised pre-training on the run's train images."""

from typing import Annotated

import pandas as pd
from transformers import PreTrainedModel
from zenml import log_metadata, step

from stage1_core.data.images import UnlabeledImageDataset
from stage1_core.data.splits import Consumer, take_split
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.explora import ExploraConfig, ExploraSummary, run_explora
from stage1_core.registry.tracking import log_config, log_metrics


@step(experiment_tracker=True)
def adapt_backbone(
    manifest: pd.DataFrame, backbone_name: str, backbone_fingerprint: str, config: ExploraConfig, image_side: int
) -> tuple[
    Annotated[PreTrainedModel, "adapted_backbone"],
    Annotated[ExploraSummary, "explora_summary"],
]:
    """Load the backbone and adapt it with ExPLoRA on the (unlabeled) train split; LoRA is merged.

    ``backbone_fingerprint`` (a hash of a local weights directory) is only here so the step cache notices new weights.
    """
    train = take_split(manifest, "train", Consumer.SELF_SUPERVISED)
    backbone, summary = run_explora(
        load_backbone(backbone_name, seed=config.seed), UnlabeledImageDataset(train, image_side), config
    )
    log_config(config, "explora")
    for loss in summary.loss_curve:
        log_metrics(
            {"total": loss.total, "dino": loss.dino, "ibot": loss.ibot, "koleo": loss.koleo},
            prefix="explora_loss_",
            step=loss.step,
        )
    log_metrics({"explora_trainable_share": summary.trainable_share})
    log_metadata(
        {
            "trainable_share": summary.trainable_share,
            "steps": summary.steps,
            "final_loss": summary.loss_curve[-1].total if summary.loss_curve else float("nan"),
        }
    )
    return backbone, summary
