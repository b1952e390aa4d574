"""FLOPs of the classifier counted, not estimated, and the H100 rate they are compared with.

The released architectures are built on PyTorch's meta device (shapes only, no memory, no arithmetic) and run
under ``torch.utils.flop_counter.FlopCounterMode``, which adds up the FLOPs of every matrix product,
convolution and attention call of the forward (and of the backward, for a training step) from their shapes:
exact for what the model runs, instantly, even for ViT-L. Element-wise work (norms, GELU, the canvas resize)
is not counted; it is a few percent of a ViT's FLOPs.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModel

from stage1_core.modeling.adapters import add_adapters
from stage1_core.modeling.backbone import published_config
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier
from stage1_core.modeling.training import TrainConfig, set_trainable_blocks

# NVIDIA H100 SXM5 datasheet: 989.4 TFLOPS dense BF16 tensor-core peak (1,979 with 2:4 sparsity); H100 PCIe 756.
H100_BF16_DENSE_TFLOPS = 989.4
# Share of that peak a well-fed ViT training or inference run reaches: ~40% model FLOPs utilisation is what
# large ViT trainings report on A100/H100 with bf16 and fused attention; small models and batches reach less.
ASSUMED_UTILISATION = 0.4


def classifier_flops(name: str, multiview: MultiViewConfig, train: TrainConfig | None = None) -> float:
    """FLOPs for one image: the forward over its views, plus, with ``train``, the backward of a training step set
    up as :func:`~stage1_core.modeling.training.train_classifier` sets it up (trainable blocks, adapters, global or
    all views); gradients flow back only as far as the lowest trained parameter, as autograd decides."""
    if train is not None and train.train_views == "global":
        multiview = multiview.model_copy(update={"aggregation": "global_only"})
    with torch.device("meta"):
        model = RoadworkClassifier(
            AutoModel.from_config(published_config(name), attn_implementation="sdpa"),
            ClassifierConfig(multiview=multiview),
        )
        canvas = torch.rand(1, 3, multiview.canvas_size, multiview.canvas_size)
        if train is not None:
            set_trainable_blocks(model, train.trainable_blocks)
            model.backbone = add_adapters(model.backbone, train.adapter, train.trainable_blocks)
    model.train(train is not None)
    with FlopCounterMode(display=False) as counter:
        if train is not None:
            model(canvas).sum().backward()
        else:
            with torch.no_grad():
                model(canvas)
    return float(counter.get_total_flops())


def images_per_second(flops_per_image: float, utilisation: float = ASSUMED_UTILISATION) -> float:
    """Images/s one H100 sustains at ``utilisation`` of its dense BF16 peak for a given FLOPs per image."""
    return H100_BF16_DENSE_TFLOPS * 1e12 * utilisation / flops_per_image
