"""Backbone step without ExPLoRA: the pretrained weights as they are (the ablation baseline)."""

from typing import Annotated

from transformers import PreTrainedModel
from zenml import step

from stage1_core.modeling.backbone import load_backbone


@step
def load_pretrained_backbone(
    backbone_name: str, backbone_fingerprint: str, seed: int
) -> Annotated[PreTrainedModel, "adapted_backbone"]:
    """Load the backbone by demo name, local directory or hub id (the fingerprint only keys the step cache)."""
    return load_backbone(backbone_name, seed=seed)
