"""ExPLoRA: parameter-efficient continued self-supervised pre-training of a DINOv2 / DINOv3 backbone.

ExPLoRA (Khanna et al., ICML 2025, arXiv 2406.10973) adapts a ViT pre-trained on natural images to a
new domain by *continuing its own self-supervised objective* on unlabeled target-domain images, while
training only a small share of the weights: the last block(s) fully, all normalization layers and the
cls token (plus register / mask tokens), and LoRA (Hu et al. 2021) on the Q and V projections of every
other block. After pre-training the LoRA weights are merged, so the result is a plain backbone that the
supervised stage loads like any other.

For DINOv2 / DINOv3 the objective is the DINOv2 recipe (Oquab et al. 2023, arXiv 2304.07193):
student / teacher self-distillation with a DINO head on the cls token (Caron et al. 2021, arXiv
2104.14294; multi-crop, EMA teacher, teacher centering and sharpening), the iBOT masked-patch loss
(Zhou et al. 2022, arXiv 2111.07832) and the KoLeo regulariser (Sablayrolles et al. 2019, arXiv
1806.03198). Public checkpoints ship without the DINO / iBOT heads, so they start fresh here.

The version followed is the ``ssl_default_config.yaml`` that ExPLoRA's repository ships
(samar-khanna/ExPLoRA, ``linprobe/configs/``, commit c7f7810; its values are those of DINOv2's own
``dinov2/configs/ssl_default_config.yaml``), with DINOv2's training loop (``dinov2/train/train.py``:
the schedules), masking generator (``dinov2/data/masking.py``, ``collate.py``) and parameter groups
(``dinov2/utils/param_groups.py``). Each :class:`ExploraConfig` field names its source. In that config:
one DINO head shared by the iBOT loss (``ibot.separate_head: false``), block masking of 10-50% of the
patches on half the global crops, the teacher temperature warmed up from 0.04 to 0.07 over the first
30% of training, weight decay following a cosine from 0.04 to 0.4, layer-wise learning-rate decay 0.9,
and softmax centering of the teacher (``train.centering: "centering"``); DINOv2's released ViT-L/g
training configs use Sinkhorn-Knopp instead, available as ``centering="sinkhorn_knopp"``. Budgets
(steps, batch, crop sizes, head width) are the caller's: the demo run sets small ones in its YAML.

Deliberate deviations: the colour augmentation is milder than DINOv2's (jitter 0.2/0.2/0.1/0.02 at
p=0.5, no grayscale, blur or solarisation: roadwork cues are colours); the patch embedding is frozen, as
ExPLoRA prescribes, so DINOv2's ``patch_embed_lr_mult`` has nothing to act on; no stochastic depth
(``drop_path_rate``), which the loaded backbone's config decides; the learning rate is given directly
(DINOv2 scales ``base_lr`` 0.004 by sqrt(batch / 1024)).
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.fabric import Fabric
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import BaseModel, Field, model_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from stage1_core.data.images import LoaderConfig
from stage1_core.modeling.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_patch_size,
    lora_target_modules,
    transformer_blocks,
)
from stage1_core.modeling.distributed import DeviceConfig, all_reduce, is_distributed

logger = logging.getLogger(__name__)

# Leaf names of the query / value projections across transformers releases (v5: q_proj / v_proj,
# older DINOv2: query / value, timm-style: q / v). The modules actually present decide which apply.
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.BatchNorm2d)
TOKEN_SUFFIXES: tuple[str, ...] = ("cls_token", "mask_token", "register_tokens")
# DINOv2's MaskingGenerator as train.py builds it: blocks of at least 4 patches, aspect ratio in [0.3, 1/0.3],
# at most half of the patches masked by one block.
MASK_MIN_BLOCK_PATCHES = 4
MASK_MAX_BLOCK_SHARE = 0.5
MASK_MIN_ASPECT = 0.3
SINKHORN_ITERATIONS = 3  # DINOv2's sinkhorn_knopp_teacher


class ExploraConfig(DeviceConfig):
    """ExPLoRA settings. Recipe values default to the published ones (``src`` in each description:
    ExPLoRA = arXiv 2406.10973; ssl = the ``ssl_default_config.yaml`` shipped with ExPLoRA's code, equal to
    DINOv2's; train.py / masking.py / param_groups.py = DINOv2's code). Budget values (steps, batch) are
    small so that a default run takes seconds on a CPU; a real run raises them (DINOv2's recipe: 100 epochs
    of 1250 iterations at 1024 images). Schedules are fractions of ``max_steps`` (DINOv2: epochs of 100).
    """

    unfrozen_blocks: int = Field(1, ge=0, description="last blocks trained fully (src ExPLoRA: 1, sometimes 2)")
    lora_rank: int = Field(64, ge=1, description="LoRA rank on Q and V of every other block (src ExPLoRA: 64)")
    lora_alpha: int = Field(64, ge=1, description="LoRA scaling numerator: the update is (alpha / rank) * B A")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    max_steps: int = Field(30, ge=1, description="budget: optimisation steps (src ssl: 100 x 1250)")
    batch_size: int = Field(
        8, ge=2, description="budget: images per step and process; KoLeo needs at least two (src ssl: 1024)"
    )
    lr: float = Field(
        5e-4, gt=0.0, description="peak learning rate (src ssl: base_lr 0.004 x sqrt(batch / 1024), 3.5e-4 at 8)"
    )
    min_lr: float = Field(1e-6, ge=0.0, description="end of the cosine learning-rate schedule (src ssl: 1e-6)")
    warmup_fraction: float = Field(
        0.1, ge=0.0, le=1.0, description="linear warm-up of the learning rate from 0 (src ssl: 10 of 100 epochs)"
    )
    weight_decay: float = Field(0.04, ge=0.0, description="start of the cosine weight-decay schedule (src ssl: 0.04)")
    weight_decay_end: float = Field(0.4, ge=0.0, description="end of the weight-decay schedule (src ssl: 0.4)")
    layerwise_decay: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="lr multiplier decay^(L + 1 - layer): embeddings and tokens 0, block i i + 1, the rest L + 1 "
        "(src ssl: 0.9; param_groups.py)",
    )
    clip_grad_norm: float | None = Field(3.0, gt=0.0, description="src ssl: clip_grad 3.0; None disables")
    seed: int = 0
    global_crop_size: int = Field(
        224, ge=1, description="src ssl: 224; rounded up to a multiple of the backbone patch size"
    )
    local_crop_size: int = Field(
        96, ge=1, description="src ssl: 96 (98 for patch 14); rounded up to a multiple of the patch size"
    )
    n_local_crops: int = Field(8, ge=0, description="src ssl: 8")
    global_crop_scale: tuple[float, float] = Field((0.32, 1.0), description="src ssl")
    local_crop_scale: tuple[float, float] = Field((0.05, 0.32), description="src ssl")
    color_jitter_probability: float = Field(
        0.5, ge=0.0, le=1.0, description="mild jitter, a deliberate deviation: roadwork cues are colours"
    )
    head_hidden_dim: int = Field(2048, ge=1, description="DINO / iBOT head MLP width (src ssl: 2048)")
    head_bottleneck_dim: int = Field(256, ge=1, description="src ssl: 256")
    head_out_dim: int = Field(65536, ge=2, description="prototypes per head (src ssl: 65536)")
    ibot_separate_head: bool = Field(
        False, description="a head of its own for the iBOT patch loss (src ssl: separate_head false: shared)"
    )
    student_temp: float = Field(0.1, gt=0.0, description="src: DINOv2's DINOLoss / iBOTPatchLoss, 0.1")
    teacher_temp: float = Field(0.07, gt=0.0, description="teacher temperature after the warm-up (src ssl: 0.07)")
    warmup_teacher_temp: float = Field(0.04, gt=0.0, description="teacher temperature at step 0 (src ssl: 0.04)")
    teacher_temp_warmup_fraction: float = Field(
        0.3, ge=0.0, le=1.0, description="linear teacher-temperature warm-up (src ssl: 30 of 100 epochs)"
    )
    centering: Literal["centering", "sinkhorn_knopp"] = Field(
        "centering",
        description="teacher centering: softmax with an EMA center (src ssl: centering) or Sinkhorn-Knopp "
        "(DINOv2's released ViT-L/g train configs)",
    )
    center_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="EMA of the softmax centers (src: DINOv2 0.9)")
    teacher_momentum: float = Field(
        0.992, ge=0.0, le=1.0, description="start of the cosine EMA schedule to 1.0 (src ssl: 0.992 -> 1)"
    )
    freeze_last_layer_fraction: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="the heads' prototype layers get no learning rate for the first steps (src ssl: 1 of 100 "
        "epochs; at least one step when above 0)",
    )
    masking: Literal["block", "random"] = Field(
        "block", description="iBOT masks: blocks of patches (src masking.py) or patches drawn one by one"
    )
    mask_probability: float = Field(0.5, ge=0.0, le=1.0, description="share of global crops masked (src ssl: 0.5)")
    mask_ratio_range: tuple[float, float] = Field(
        (0.1, 0.5), description="masked share, spread linearly over the masked crops (src ssl: [0.1, 0.5])"
    )
    dino_loss_weight: float = Field(1.0, ge=0.0, description="src ssl: 1.0")
    ibot_loss_weight: float = Field(1.0, ge=0.0, description="src ssl: 1.0")
    koleo_loss_weight: float = Field(0.1, ge=0.0, description="src ssl: 0.1")
    export: Literal["teacher", "student"] = Field(
        "teacher", description="which backbone is returned; DINO / DINOv2 evaluate the teacher"
    )
    log_every_steps: int = Field(10, ge=1)
    loader: LoaderConfig = Field(
        LoaderConfig(), description="decoding workers, pinned memory, prefetch (multi-crop augmentation is CPU work)"
    )

    @model_validator(mode="after")
    def _check(self) -> ExploraConfig:
        for field in ("teacher_temp", "warmup_teacher_temp"):
            if getattr(self, field) >= self.student_temp:
                raise ValueError(
                    f"{field} {getattr(self, field)} must be below student_temp {self.student_temp}: "
                    "the teacher is sharpened (DINOv2 uses 0.04 -> 0.07 vs 0.1)"
                )
        for field in ("global_crop_scale", "local_crop_scale", "mask_ratio_range"):
            low, high = getattr(self, field)
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(f"{field} {(low, high)} must satisfy 0 < low <= high <= 1")
        return self

    def steps(self, fraction: float) -> int:
        """Steps a schedule fraction covers: at least one when the fraction is above 0 (DINOv2 counts epochs)."""
        return min(self.max_steps, math.ceil(fraction * self.max_steps))


class ExploraTrainableReport(BaseModel):
    """Which backbone parameters ExPLoRA trains (LoRA adapters counted in, DINO / iBOT heads not)."""

    trainable_params: int
    total_params: int
    trainable_share: float
    lora_target_modules: list[str]
    unfrozen_blocks: list[str]
    trainable_parameter_names: list[str]


class ExploraStepLoss(BaseModel):
    """Loss of one optimisation step: total = weighted sum of the parts (weights from the config), and the
    scheduled values the step used."""

    step: int
    total: float
    dino: float
    ibot: float
    koleo: float
    lr: float
    weight_decay: float
    teacher_temp: float
    teacher_momentum: float


class ExploraSummary(ExploraTrainableReport):
    """What a run did: the trainable set, the loss curve and its cost."""

    head_params: int
    global_crop_size: int
    local_crop_size: int
    exported: Literal["teacher", "student"]
    loss_curve: list[ExploraStepLoss]
    steps: int
    seconds: float
    images_seen: int
    processes: int = 1
    teacher_rank_difference: float = Field(
        0.0, description="max |difference| of the teacher and its centers between rank 0 and the others (must be 0)"
    )


def prepare_explora_backbone(backbone: PreTrainedModel, config: ExploraConfig) -> PeftModel:
    """A copy of ``backbone`` wrapped with LoRA and with exactly the ExPLoRA parameters trainable.

    Trainable: all of the last ``config.unfrozen_blocks`` blocks, every normalization layer, the cls
    token (and mask / register tokens where present) and the LoRA adapters; frozen: everything else
    (patch and position embeddings, all other weights). The caller's backbone is left untouched.
    """
    targets = lora_target_modules(backbone, config.unfrozen_blocks)
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
    )
    peft_model = get_peft_model(copy.deepcopy(backbone), lora)  # freezes everything but the adapters
    base = peft_model.get_base_model()
    blocks = list(transformer_blocks(base))
    for block in blocks[len(blocks) - config.unfrozen_blocks :]:
        block.requires_grad_(True)
    for module in base.modules():
        if isinstance(module, NORM_TYPES):
            module.requires_grad_(True)
    for name, parameter in base.named_parameters():
        if name.endswith(TOKEN_SUFFIXES):
            parameter.requires_grad_(True)
    return peft_model


def merge_explora_backbone(peft_model: PeftModel) -> PreTrainedModel:
    """Merge the LoRA updates into the weights (peft ``merge_and_unload``): a plain backbone again.

    The result has no peft modules, all parameters trainable (as a freshly loaded backbone) and is in
    eval mode, so it saves and loads with ``save_pretrained`` / ``from_pretrained``.
    """
    merged = peft_model.merge_and_unload()
    merged.requires_grad_(True)
    return merged.eval()


def explora_trainable_report(backbone: PreTrainedModel, config: ExploraConfig) -> ExploraTrainableReport:
    """Which parameters ``run_explora`` would train, without training (for checks and run reports)."""
    return _trainable_report(prepare_explora_backbone(backbone, config), config)


class DinoHead(nn.Module):
    """DINO projection head: MLP, L2-normalised bottleneck, weight-normalised prototype layer (Caron et al. 2021)."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        nn.init.trunc_normal_(last.weight, std=0.02)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)  # unit-norm prototypes, as DINOv2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Prototype logits of ``[N, in_dim]`` features."""
        return self.last_layer(F.normalize(self.mlp(features), dim=-1))


def dino_loss(
    student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor], student_temp: float
) -> torch.Tensor:
    """Cross-entropy between teacher and student crops, over all pairs of different crops (Caron et al. 2021).

    ``teacher_probs[i]`` belongs to global crop ``i``, which is also ``student_logits[i]``; that pair is skipped.
    """
    total = student_logits[0].new_zeros(())
    pairs = 0
    for student_index, logits in enumerate(student_logits):
        log_probs = F.log_softmax(logits / student_temp, dim=-1)
        for teacher_index, probs in enumerate(teacher_probs):
            if teacher_index == student_index:
                continue
            total = total - (probs * log_probs).sum(dim=-1).mean()
            pairs += 1
    return total / pairs


def ibot_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """iBOT masked-patch loss (Zhou et al. 2022), as DINOv2 weighs it: mean over each image's masked patches,
    summed over images and divided by the number of images.

    ``student_logits`` / ``teacher_probs`` hold one row per masked patch (``masks[masks]`` order).
    """
    if not bool(masks.any()):
        return student_logits.new_zeros(())
    per_patch = -(teacher_probs * F.log_softmax(student_logits / student_temp, dim=-1)).sum(dim=-1)
    weights = (1.0 / masks.sum(dim=1).clamp(min=1)).unsqueeze(1).expand_as(masks)[masks]
    return (per_patch * weights).sum() / masks.shape[0]


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo regulariser (Sablayrolles et al. 2019, used by DINOv2): -mean log distance to the nearest neighbour
    of the L2-normalised features, which spreads the batch's features uniformly."""
    normalised = F.normalize(features, dim=-1, eps=eps)
    similarity = normalised @ normalised.T
    similarity.fill_diagonal_(-2.0)  # never one's own neighbour
    neighbours = similarity.argmax(dim=1)
    distances = F.pairwise_distance(normalised, normalised[neighbours], eps=eps)
    return -torch.log(distances + eps).mean()


def mask_counts(n_images: int, n_patches: int, probability: float, ratio_range: tuple[float, float]) -> torch.Tensor:
    """Patches to mask per image, shuffled over the batch: ``probability`` of the images get a share drawn
    uniformly within its slot of ``ratio_range`` split linearly over them, the rest none (DINOv2's collate;
    here a masked image gets at least one patch, which DINOv2's rounding down can miss on tiny grids)."""
    n_masked_images = int(n_images * probability)
    edges = torch.linspace(ratio_range[0], ratio_range[1], n_masked_images + 1)
    ratios = edges[:-1] + (edges[1:] - edges[:-1]) * torch.rand(n_masked_images)
    counts = torch.zeros(n_images, dtype=torch.long)
    counts[:n_masked_images] = (ratios * n_patches).long().clamp(min=1)
    return counts[torch.randperm(n_images)]


def random_patch_masks(
    n_images: int, n_patches: int, probability: float, ratio_range: tuple[float, float]
) -> torch.Tensor:
    """Boolean ``[n_images, n_patches]`` masks with the patches of each image drawn one by one (the option;
    the recipe masks blocks, :func:`block_patch_masks`); counts as :func:`mask_counts`."""
    counts = mask_counts(n_images, n_patches, probability, ratio_range)
    ranks = torch.rand(n_images, n_patches).argsort(dim=1).argsort(dim=1)
    return ranks < counts.unsqueeze(1)


def block_patch_masks(
    n_images: int, grid: tuple[int, int], probability: float, ratio_range: tuple[float, float]
) -> torch.Tensor:
    """Boolean ``[n_images, height * width]`` iBOT masks made of rectangular blocks, as DINOv2 (``masking.py``).

    Each masked image gets rectangles of random area (at least 4 patches, at most half the grid) and aspect
    ratio (log-uniform in [0.3, 1/0.3]) until its count from :func:`mask_counts` is reached; a rectangle must
    fit strictly inside the grid and add at most the patches still missing, ten tries each, and the image
    stops short of its count when no rectangle fits (as DINOv2's generator).
    """
    height, width = grid
    n_patches = height * width
    max_block = MASK_MAX_BLOCK_SHARE * n_patches
    log_aspect = (math.log(MASK_MIN_ASPECT), -math.log(MASK_MIN_ASPECT))
    masks = torch.zeros(n_images, height, width, dtype=torch.bool)
    for image, target in enumerate(mask_counts(n_images, n_patches, probability, ratio_range).tolist()):
        mask, count = masks[image], 0
        while count < target:
            added = _add_block(mask, min(target - count, max_block), log_aspect)
            if added == 0:
                break
            count += added
    return masks.flatten(1)


def _add_block(mask: torch.Tensor, max_patches: float, log_aspect: tuple[float, float]) -> int:
    """Mask one random rectangle of ``mask`` in place (DINOv2's ``MaskingGenerator._mask``); patches added."""
    height, width = mask.shape
    for _ in range(10):
        area = _uniform(MASK_MIN_BLOCK_PATCHES, max_patches)
        aspect = math.exp(_uniform(*log_aspect))
        rows, columns = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if columns < width and rows < height:
            top = int(torch.randint(0, height - rows + 1, ()))
            left = int(torch.randint(0, width - columns + 1, ()))
            block = mask[top : top + rows, left : left + columns]
            new = rows * columns - int(block.sum())
            if 0 < new <= max_patches:
                block.fill_(True)
                return new
    return 0


def _uniform(low: float, high: float) -> float:
    """One uniform draw between two bounds in either order (as Python's ``random.uniform``), from torch's RNG."""
    return low + (high - low) * float(torch.rand(()))


def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = SINKHORN_ITERATIONS) -> torch.Tensor:
    """Teacher targets by Sinkhorn-Knopp (SwAV; DINOv2's ``sinkhorn_knopp_teacher``): exp(logits / T) scaled so
    that every prototype gets the same total mass over the batch and every row sums to 1.

    Over several processes the batch is all the ranks' rows, as in DINOv2: the total, the prototype sums and the
    number of rows are all-reduced (and the maximum subtracted for stability too, so that it cancels). A rank
    with no rows (no masked patch) still takes part in the reductions.
    """
    logits = logits.float()
    peak = all_reduce(logits.max() if logits.numel() else logits.new_tensor(-math.inf), dist.ReduceOp.MAX)
    n_samples = all_reduce(logits.new_tensor(float(logits.shape[0])))
    q = torch.exp((logits - peak) / temperature).T  # prototypes x samples
    n_prototypes = q.shape[0]
    q /= all_reduce(q.sum())
    for _ in range(iterations):
        q /= all_reduce(q.sum(dim=1, keepdim=True)) * n_prototypes
        q /= q.sum(dim=0, keepdim=True) * n_samples
    return (q * n_samples).T


def cosine_schedule(
    base: float, final: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """One value per step: a linear warm-up from ``warmup_start`` to ``base``, then a cosine from ``base`` to
    ``final`` (DINOv2's ``CosineScheduler``, which drives the learning rate, weight decay, teacher momentum and
    teacher temperature; base == final gives a warm-up to a constant)."""
    warmup = np.linspace(warmup_start, base, warmup_steps)
    steps = np.arange(total_steps - warmup_steps)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    return np.concatenate([warmup, cosine])


def layerwise_lr_multipliers(backbone: nn.Module, decay: float) -> dict[str, float]:
    """Learning-rate multiplier of every backbone parameter name: decay^(L + 1 - layer), with layer 0 for the
    embeddings and tokens, i + 1 for block i and L + 1 for the rest (the final norm), as DINOv2's
    ``get_vit_lr_decay_rate``; heads (not in the backbone) get 1."""
    blocks = list(transformer_blocks(backbone))
    n_layers = len(blocks)
    block_of = {id(parameter): index for index, block in enumerate(blocks) for parameter in block.parameters()}
    multipliers = {}
    for name, parameter in backbone.named_parameters():
        if id(parameter) in block_of:
            layer = block_of[id(parameter)] + 1
        elif name.startswith("embeddings.") or name.endswith(TOKEN_SUFFIXES):
            layer = 0
        else:
            layer = n_layers + 1
        multipliers[name] = decay ** (n_layers + 1 - layer)
    return multipliers


class MultiCropDataset(Dataset):
    """Wraps a dataset of ``3xHxW`` float images in [0, 1] and yields 2 global + ``n_local`` local crops.

    Crops follow DINOv2's multi-crop (random resized crops at two scale ranges, flips) with a milder colour
    jitter, then ImageNet normalisation as the backbones were trained with.
    """

    def __init__(
        self, images: Dataset | Sequence[torch.Tensor], config: ExploraConfig, global_size: int, local_size: int
    ) -> None:
        self.images = images
        self.n_local = config.n_local_crops

        def crops(size: int, scale: tuple[float, float]) -> v2.Compose:
            return v2.Compose(
                [
                    v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                    v2.RandomHorizontalFlip(),
                    v2.RandomApply(
                        [v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.02)],
                        p=config.color_jitter_probability,
                    ),
                    v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
                ]
            )

        self.global_transform = crops(global_size, config.global_crop_scale)
        self.local_transform = crops(local_size, config.local_crop_scale)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        image = self.images[index]
        is_tensor = isinstance(image, torch.Tensor)
        if not (is_tensor and image.dtype.is_floating_point and image.ndim == 3 and image.shape[0] == 3):
            shape = tuple(image.shape) if is_tensor else type(image).__name__
            dtype = image.dtype if is_tensor else None
            raise ValueError(f"ExPLoRA image {index}: expected a float tensor 3xHxW in [0, 1], got {shape} {dtype}")
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"ExPLoRA image {index}: values span [{low:.3f}, {high:.3f}], expected [0, 1]; scale by 1/255"
            )
        views = [self.global_transform(image), self.global_transform(image)]
        return views + [self.local_transform(image) for _ in range(self.n_local)]


class _SelfDistillation(nn.Module):
    """Student (LoRA backbone + DINO / iBOT heads), its EMA teacher and the teacher centers (DINOv2 recipe)."""

    def __init__(self, student: PeftModel, config: ExploraConfig) -> None:
        super().__init__()
        self.config = config
        base = student.get_base_model()
        self.patch_size = backbone_patch_size(base)
        self.n_prefix = 1 + int(getattr(base.config, "num_register_tokens", 0) or 0)
        hidden = base.config.hidden_size
        device = next(base.parameters()).device
        self.student = student
        head_names = ("dino", "ibot") if config.ibot_separate_head else ("dino",)
        self.heads = nn.ModuleDict(
            {
                name: DinoHead(hidden, config.head_hidden_dim, config.head_bottleneck_dim, config.head_out_dim)
                for name in head_names
            }
        ).to(device)
        self.ibot_head = "ibot" if config.ibot_separate_head else "dino"  # shared: DINOv2's separate_head false
        self.teacher = copy.deepcopy(student).requires_grad_(False)
        self.teacher_heads = copy.deepcopy(self.heads).requires_grad_(False)
        for name in ("dino", "ibot"):  # one center per loss, shared head or not (DINOv2)
            self.register_buffer(f"{name}_center", torch.zeros(1, config.head_out_dim, device=device))

    def train(self, mode: bool = True) -> _SelfDistillation:
        """The teacher stays in eval mode whatever the student does."""
        super().train(mode)
        self.teacher.eval()
        self.teacher_heads.eval()
        return self

    def named_trainable(self) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
        """(name, student parameter, its teacher twin) for every trainable student parameter; backbone names as
        the base model names them, head names prefixed ``heads.``."""
        student = itertools.chain(
            self.student.get_base_model().named_parameters(), self.heads.named_parameters(prefix="heads")
        )
        teacher = itertools.chain(self.teacher.get_base_model().parameters(), self.teacher_heads.parameters())
        return [(name, s, t) for (name, s), t in zip(student, teacher, strict=True) if s.requires_grad]

    def param_groups(self) -> list[dict]:
        """AdamW groups as DINOv2's ``get_params_groups_with_decay``: a learning-rate multiplier per layer
        (:func:`layerwise_lr_multipliers`), no weight decay on 1-D parameters (biases, norms, layer scales; DINOv2
        names them bias / norm / gamma), and the heads' prototype layers flagged for their own schedule."""
        multipliers = layerwise_lr_multipliers(self.student.get_base_model(), self.config.layerwise_decay)
        groups: dict[tuple[float, float, bool], list[nn.Parameter]] = {}
        for name, parameter, _ in self.named_trainable():
            key = (multipliers.get(name, 1.0), 0.0 if parameter.ndim < 2 else 1.0, ".last_layer." in name)
            groups.setdefault(key, []).append(parameter)
        return [
            {"params": params, "lr_multiplier": lr, "wd_multiplier": wd, "is_last_layer": last}
            for (lr, wd, last), params in groups.items()
        ]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher = momentum * teacher + (1 - momentum) * student, on the trainable parameters (the rest are equal)."""
        for _, student_param, teacher_param in self.named_trainable():
            teacher_param.lerp_(student_param, 1.0 - momentum)

    def forward(self, crops: list[torch.Tensor], teacher_temp: float) -> dict[str, torch.Tensor]:
        """DINO, iBOT and KoLeo losses of one multi-crop batch (2 global crops first); updates the centers.

        With several processes this is the forward that DDP wraps (its gradients are averaged over the ranks); the
        teacher's centers and Sinkhorn-Knopp statistics span every rank's batch and KoLeo stays within the
        rank's own batch, as in DINOv2.
        """
        config = self.config
        batch = crops[0].shape[0]
        global_crops = torch.cat(crops[:2])
        grid = (global_crops.shape[-2] // self.patch_size, global_crops.shape[-1] // self.patch_size)
        if config.masking == "block":
            masks = block_patch_masks(2 * batch, grid, config.mask_probability, config.mask_ratio_range)
        else:
            masks = random_patch_masks(2 * batch, grid[0] * grid[1], config.mask_probability, config.mask_ratio_range)
        masks = masks.to(global_crops.device)

        with torch.no_grad():
            teacher_tokens = self.teacher(pixel_values=global_crops).last_hidden_state
            teacher_cls = self._teacher_targets(self.teacher_heads["dino"](teacher_tokens[:, 0]), "dino", teacher_temp)
            teacher_patches = self.teacher_heads[self.ibot_head](teacher_tokens[:, self.n_prefix :][masks])
            teacher_patches = self._teacher_targets(teacher_patches, "ibot", teacher_temp)

        student_tokens = self.student(pixel_values=global_crops, bool_masked_pos=masks).last_hidden_state
        global_cls = student_tokens[:, 0]
        cls_features = [global_cls]
        if config.n_local_crops:
            cls_features.append(self.student(pixel_values=torch.cat(crops[2:])).last_hidden_state[:, 0])
        student_cls = self.heads["dino"](torch.cat(cls_features)).split(batch)
        student_patches = self.heads[self.ibot_head](student_tokens[:, self.n_prefix :][masks])
        return {
            "dino": dino_loss(list(student_cls), list(teacher_cls.split(batch)), config.student_temp),
            "ibot": ibot_loss(student_patches, teacher_patches, masks, config.student_temp),
            "koleo": sum(koleo_loss(features) for features in global_cls.split(batch)),
        }

    def _teacher_targets(self, logits: torch.Tensor, name: str, temperature: float) -> torch.Tensor:
        """Teacher probabilities: centred and sharpened softmax, then the center's EMA step with this batch
        (DINO; ``centering="centering"``), or Sinkhorn-Knopp over the batch (``"sinkhorn_knopp"``).

        The batch mean is over every rank's rows (DINOv2 all-reduces it), so the centers stay equal on all ranks.
        """
        if self.config.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, temperature)
        center = getattr(self, f"{name}_center")
        probs = F.softmax((logits - center) / temperature, dim=-1)
        rows = all_reduce(logits.new_tensor(float(logits.shape[0])))
        total = all_reduce(logits.sum(dim=0, keepdim=True))
        if rows > 0:
            momentum = self.config.center_momentum
            center.mul_(momentum).add_(total / rows, alpha=1 - momentum)
        return probs


class _Schedules:
    """Per-step values of DINOv2's ``build_schedulers``, as fractions of ``max_steps``."""

    def __init__(self, config: ExploraConfig) -> None:
        total = config.max_steps
        self.lr = cosine_schedule(config.lr, config.min_lr, total, config.steps(config.warmup_fraction))
        self.last_layer_lr = self.lr.copy()
        self.last_layer_lr[: config.steps(config.freeze_last_layer_fraction)] = 0.0
        self.weight_decay = cosine_schedule(config.weight_decay, config.weight_decay_end, total)
        self.teacher_momentum = cosine_schedule(config.teacher_momentum, 1.0, total)
        self.teacher_temp = cosine_schedule(
            config.teacher_temp,
            config.teacher_temp,
            total,
            config.steps(config.teacher_temp_warmup_fraction),
            warmup_start=config.warmup_teacher_temp,
        )

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Learning rate and weight decay of every group for ``step`` (DINOv2's ``apply_optim_scheduler``)."""
        for group in optimizer.param_groups:
            lr = self.last_layer_lr[step] if group["is_last_layer"] else self.lr[step]
            group["lr"] = float(lr) * group["lr_multiplier"]
            group["weight_decay"] = float(self.weight_decay[step]) * group["wd_multiplier"]


def run_explora(
    backbone: PreTrainedModel, images: Dataset | Sequence[torch.Tensor], config: ExploraConfig
) -> tuple[PreTrainedModel, ExploraSummary]:
    """Continue the backbone's DINOv2-style self-supervised pre-training ExPLoRA-style (arXiv 2406.10973).

    The loop is DINOv2's own (schedules per step, EMA teacher, three losses), run by Lightning Fabric rather than
    recast as a LightningModule: Fabric adds the processes, the device and the gradient all-reduce around the same
    loop. With ``config.devices`` above 1 it runs in that many spawned processes (see
    :mod:`stage1_core.modeling.distributed`): each takes its own share of the images (``batch_size`` each), the
    student's gradients are averaged (DDP), so the students, and the teachers (their EMA), stay equal on every
    rank; rank 0's result comes back to this process.

    Args:
        backbone: a DINOv2 / DINOv3 ViT from transformers; left untouched (the run works on copies). Trained on
            ``config.accelerator`` and returned on the device it came on.
        images: unlabeled target-domain images, each a float tensor ``3xHxW`` in [0, 1] of any size.
        config: the run settings.

    Returns:
        The merged backbone (same class as ``backbone``, no peft modules; the EMA teacher unless
        ``config.export == "student"``) and a summary with the trainable set and the loss curve.

    Raises:
        ValueError: fewer images than one batch per process, a bad image (named by index), a backbone without a
            mask token while iBOT is on, or a backbone whose blocks / projections cannot be found.
        FloatingPointError: the loss stopped being finite (the step and the loss parts are named).
    """
    if len(images) < config.batch_size * config.devices:
        raise ValueError(
            f"ExPLoRA needs at least batch_size={config.batch_size} images, got {len(images)}"
            + (f" (that many per process: devices={config.devices})" if config.devices > 1 else "")
        )
    has_mask_token = any(name.endswith("mask_token") for name, _ in backbone.named_parameters())
    if not has_mask_token and config.ibot_loss_weight > 0:
        raise ValueError(
            f"{type(backbone).__name__} has no mask token, which the iBOT loss needs; "
            "load it with use_mask_token=True or set ibot_loss_weight=0"
        )
    fabric = Fabric(accelerator=config.accelerator, devices=config.devices, strategy=config.launch_strategy())
    with tempfile.TemporaryDirectory(prefix="roadwork-explora-") as folder:
        result = Path(folder) / "result.pt"
        fabric.launch(_train, backbone, images, config, result)
        saved = torch.load(result, map_location=next(backbone.parameters()).device, weights_only=False)  # ours
    merged = copy.deepcopy(backbone)
    merged.load_state_dict(saved["weights"])
    return merged.requires_grad_(True).eval(), ExploraSummary.model_validate(saved["summary"])


def _train(
    fabric: Fabric,
    backbone: PreTrainedModel,
    images: Dataset | Sequence[torch.Tensor],
    config: ExploraConfig,
    result: Path,
) -> None:
    """:func:`run_explora` in one process (rank) of ``fabric``; rank 0 saves the merged weights and the summary to
    ``result``. A file, as Lightning's Trainer does: Fabric's spawn launcher returns a result through a pipe that it
    reads only after the processes ended, so anything above the pipe's buffer (64 KiB) would block rank 0 forever."""
    patch = backbone_patch_size(backbone)
    global_size = math.ceil(config.global_crop_size / patch) * patch
    local_size = math.ceil(config.local_crop_size / patch) * patch
    weights = {"dino": config.dino_loss_weight, "ibot": config.ibot_loss_weight, "koleo": config.koleo_loss_weight}
    rank, world_size = fabric.global_rank, fabric.world_size
    with torch.random.fork_rng(devices=[fabric.device] if fabric.device.type == "cuda" else []):
        torch.manual_seed(config.seed)  # the same heads on every rank
        student = prepare_explora_backbone(backbone, config)
        report = _trainable_report(student, config)
        model = _SelfDistillation(student, config).train()
        trainable = [student_param for _, student_param, _ in model.named_trainable()]
        wrapped, optimizer = fabric.setup(model, torch.optim.AdamW(model.param_groups(), lr=config.lr))
        torch.manual_seed(int(np.random.SeedSequence([config.seed, rank]).generate_state(1)[0]))  # crops, masks
        schedules = _Schedules(config)
        dataset = MultiCropDataset(images, config, global_size, local_size)
        sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=config.seed, drop_last=True)
        loader = fabric.setup_dataloaders(
            DataLoader(
                dataset,
                batch_size=config.batch_size,
                sampler=sampler,
                drop_last=True,
                **config.loader.dataloader_options(processes=world_size),
            ),
            use_distributed_sampler=False,  # ours: seeded by the config; Fabric sets its epoch at each pass
        )
        logger.info(
            "ExPLoRA: %d/%d backbone params trainable (%.2f%%), LoRA on %d modules, unfrozen %s; crops %d/%d px; "
            "%d process(es) of %d images",
            report.trainable_params,
            report.total_params,
            100 * report.trainable_share,
            len(report.lora_target_modules),
            report.unfrozen_blocks,
            global_size,
            local_size,
            world_size,
            config.batch_size,
        )
        curve: list[ExploraStepLoss] = []
        started = time.perf_counter()
        batches = _endless(loader)
        progress = tqdm(range(config.max_steps), desc="ExPLoRA", unit="step", disable=rank != 0)
        for step in progress:
            schedules.apply(optimizer, step)
            teacher_temp = float(schedules.teacher_temp[step])
            parts = wrapped(next(batches), teacher_temp)
            total = sum(weights[name] * value for name, value in parts.items())
            # the record is the mean over the ranks (each rank's loss is over its own images)
            reduced = all_reduce(torch.stack([total.detach(), *parts.values()]).detach().float()) / world_size
            values = dict(zip(parts, reduced[1:].tolist(), strict=True))
            if not torch.isfinite(reduced[0]):
                raise FloatingPointError(
                    f"ExPLoRA step {step}: loss is {float(reduced[0])} {values}; lower lr or raise teacher_temp"
                )
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(total)
            if config.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(trainable, config.clip_grad_norm)
            optimizer.step()
            momentum = float(schedules.teacher_momentum[step])
            model.update_teacher(momentum)
            record = ExploraStepLoss(
                step=step,
                total=float(reduced[0]),
                **values,
                lr=float(schedules.lr[step]),
                weight_decay=float(schedules.weight_decay[step]),
                teacher_temp=teacher_temp,
                teacher_momentum=momentum,
            )
            curve.append(record)
            progress.set_postfix(loss=f"{record.total:.4f}")
            if step % config.log_every_steps == 0 or step == config.max_steps - 1:
                logger.info(
                    "ExPLoRA step %d/%d: loss %.4f (dino %.4f, ibot %.4f, koleo %.4f), lr %.2e, teacher temp %.3f",
                    step + 1,
                    config.max_steps,
                    record.total,
                    record.dino,
                    record.ibot,
                    record.koleo,
                    record.lr,
                    teacher_temp,
                )
        seconds = time.perf_counter() - started
    logger.info("ExPLoRA: %d steps in %.1f s; returning the merged %s", config.max_steps, seconds, config.export)
    teacher_state = [parameter for _, _, parameter in model.named_trainable()] + [model.dino_center, model.ibot_center]
    merged = merge_explora_backbone(model.teacher if config.export == "teacher" else model.student)
    summary = ExploraSummary(
        **report.model_dump(),
        head_params=sum(parameter.numel() for parameter in model.heads.parameters()),
        global_crop_size=global_size,
        local_crop_size=local_size,
        exported=config.export,
        loss_curve=curve,
        steps=config.max_steps,
        seconds=seconds,
        images_seen=config.max_steps * config.batch_size * world_size,
        processes=world_size,
        teacher_rank_difference=_rank_difference(teacher_state),
    )
    if rank == 0:
        torch.save({"weights": merged.state_dict(), "summary": summary.model_dump()}, result)


def _rank_difference(tensors: list[torch.Tensor]) -> float:
    """The largest absolute difference between rank 0's ``tensors`` and any other rank's (0 in one process)."""
    if not is_distributed():
        return 0.0
    largest = torch.zeros((), device=tensors[0].device)
    for tensor in tensors:
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        largest = torch.maximum(largest, (tensor.detach() - reference).abs().max())
    return float(all_reduce(largest, dist.ReduceOp.MAX))


def _trainable_report(peft_model: PeftModel, config: ExploraConfig) -> ExploraTrainableReport:
    base = peft_model.get_base_model()
    names = _module_names(base)
    blocks = list(transformer_blocks(base))
    trainable = [name for name, parameter in base.named_parameters() if parameter.requires_grad]
    counts = {True: 0, False: 0}
    for parameter in base.parameters():
        counts[parameter.requires_grad] += parameter.numel()
    total = counts[True] + counts[False]
    return ExploraTrainableReport(
        trainable_params=counts[True],
        total_params=total,
        trainable_share=counts[True] / total,
        lora_target_modules=sorted(peft_model.peft_config["default"].target_modules),
        unfrozen_blocks=[names[block] for block in blocks[len(blocks) - config.unfrozen_blocks :]],
        trainable_parameter_names=trainable,
    )


def _module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {module: name for name, module in model.named_modules()}


def _endless(loader: DataLoader) -> Iterator[list[torch.Tensor]]:
    while True:
        yield from loader
