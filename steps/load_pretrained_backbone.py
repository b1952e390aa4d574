"""Backbone step without ExPLoRA: the pretrained weights as they are (the ablation baseline).

Named ``pretrained_backbone``, apart from ExPLoRA's ``adapted_backbone``: a model version's artifacts say
which backbone each model started from.
"""

from typing import Annotated

from transformers import PreTrainedModel
from zenml import step

from stage1_core.modeling.backbone import load_backbone


@step
def load_pretrained_backbone(
    backbone_name: str, backbone_fingerprint: str, seed: int
) -> Annotated[PreTrainedModel, "pretrained_backbone"]:
    """Load the backbone by demo name, local directory or hub id (the fingerprint only keys the step cache)."""
    return load_backbone(backbone_name, seed=seed)
