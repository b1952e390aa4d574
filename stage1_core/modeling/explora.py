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
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import BaseModel, Field, model_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from stage1_core.common.config import StrictConfig
from stage1_core.modeling.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_patch_size,
    lora_target_modules,
    transformer_blocks,
)

logger = logging.getLogger(__name__)

# Leaf names of the query / value projections across transformers releases (v5: q_proj / v_proj,
# older DINOv2: query / value, timm-style: q / v). The modules actually present decide which apply.
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.BatchNorm2d)
TOKEN_SUFFIXES: tuple[str, ...] = ("cls_token", "mask_token", "register_tokens")


class ExploraConfig(StrictConfig):
    """ExPLoRA settings. Defaults are demo-sized (seconds on a CPU); real runs raise steps, crops and heads.

    The paper's main configuration is one unfrozen block and LoRA rank 64; DINOv2 itself uses global /
    local crops of 224 / 98 pixels, 8 local crops and 65536 prototypes per head.
    """

    unfrozen_blocks: int = Field(1, ge=0, description="last transformer blocks trained fully (paper: 1, sometimes 2)")
    lora_rank: int = Field(64, ge=1, description="LoRA rank on Q and V of every other block (paper: 64)")
    lora_alpha: int = Field(64, ge=1, description="LoRA scaling numerator: the update is (alpha / rank) * B A")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    max_steps: int = Field(30, ge=1)
    batch_size: int = Field(8, ge=2, description="images per step; KoLeo needs at least two")
    lr: float = Field(5e-4, gt=0.0, description="peak learning rate of the cosine schedule")
    warmup_steps: int = Field(3, ge=0)
    weight_decay: float = Field(0.04, ge=0.0, description="on matrices only; biases, norms and tokens get none")
    clip_grad_norm: float | None = Field(3.0, gt=0.0, description="DINOv2 clips gradients at 3.0; None disables")
    seed: int = 0
    global_crop_size: int = Field(112, ge=1, description="rounded up to a multiple of the backbone patch size")
    local_crop_size: int = Field(56, ge=1, description="rounded up to a multiple of the backbone patch size")
    n_local_crops: int = Field(6, ge=0)
    global_crop_scale: tuple[float, float] = (0.32, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.32)
    color_jitter_probability: float = Field(0.5, ge=0.0, le=1.0, description="mild jitter: roadwork cues are colours")
    head_hidden_dim: int = Field(512, ge=1, description="DINO / iBOT head MLP width (DINOv2: 2048)")
    head_bottleneck_dim: int = Field(128, ge=1, description="DINOv2: 256")
    head_out_dim: int = Field(1024, ge=2, description="prototypes per head (DINOv2: 65536)")
    student_temp: float = Field(0.1, gt=0.0)
    teacher_temp: float = Field(0.04, gt=0.0, description="below student_temp: the teacher is sharpened")
    center_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="EMA of the teacher centers")
    teacher_momentum: float = Field(0.992, ge=0.0, le=1.0, description="start of the cosine EMA schedule to 1.0")
    freeze_last_layer_steps: int = Field(10, ge=0, description="steps with the heads' prototype layers frozen")
    mask_probability: float = Field(0.5, ge=0.0, le=1.0, description="share of student global crops masked")
    mask_ratio_range: tuple[float, float] = (0.1, 0.5)
    dino_loss_weight: float = Field(1.0, ge=0.0)
    ibot_loss_weight: float = Field(1.0, ge=0.0)
    koleo_loss_weight: float = Field(0.1, ge=0.0)
    export: Literal["teacher", "student"] = Field(
        "teacher", description="which backbone is returned; DINO / DINOv2 evaluate the teacher"
    )
    log_every_steps: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _check(self) -> ExploraConfig:
        if self.teacher_temp >= self.student_temp:
            raise ValueError(
                f"teacher_temp {self.teacher_temp} must be below student_temp {self.student_temp}: "
                "the teacher is sharpened (DINO uses 0.04 vs 0.1)"
            )
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} exceeds max_steps {self.max_steps}; lower warmup_steps")
        for field in ("global_crop_scale", "local_crop_scale", "mask_ratio_range"):
            low, high = getattr(self, field)
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(f"{field} {(low, high)} must satisfy 0 < low <= high <= 1")
        return self


class ExploraTrainableReport(BaseModel):
    """Which backbone parameters ExPLoRA trains (LoRA adapters counted in, DINO / iBOT heads not)."""

    trainable_params: int
    total_params: int
    trainable_share: float
    lora_target_modules: list[str]
    unfrozen_blocks: list[str]
    trainable_parameter_names: list[str]


class ExploraStepLoss(BaseModel):
    """Loss of one optimisation step: total = weighted sum of the parts (weights from the config)."""

    step: int
    total: float
    dino: float
    ibot: float
    koleo: float
    lr: float
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


def random_patch_masks(
    n_images: int, n_patches: int, probability: float, ratio_range: tuple[float, float]
) -> torch.Tensor:
    """Boolean ``[n_images, n_patches]`` masks: ``probability`` of the images get a masked share spread over
    ``ratio_range`` (DINOv2 spreads the ratios linearly over the batch); the rest none."""
    n_masked_images = int(n_images * probability)
    edges = torch.linspace(ratio_range[0], ratio_range[1], n_masked_images + 1)
    ratios = edges[:-1] + (edges[1:] - edges[:-1]) * torch.rand(n_masked_images)
    counts = torch.zeros(n_images, dtype=torch.long)
    counts[:n_masked_images] = (ratios * n_patches).long().clamp(min=1)
    counts = counts[torch.randperm(n_images)]
    ranks = torch.rand(n_images, n_patches).argsort(dim=1).argsort(dim=1)
    return ranks < counts.unsqueeze(1)


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
        self.heads = nn.ModuleDict(
            {
                name: DinoHead(hidden, config.head_hidden_dim, config.head_bottleneck_dim, config.head_out_dim)
                for name in ("dino", "ibot")
            }
        ).to(device)
        self.teacher = copy.deepcopy(student).requires_grad_(False)
        self.teacher_heads = copy.deepcopy(self.heads).requires_grad_(False)
        for name in ("dino", "ibot"):
            self.register_buffer(f"{name}_center", torch.zeros(1, config.head_out_dim, device=device))

    def train(self, mode: bool = True) -> _SelfDistillation:
        """The teacher stays in eval mode whatever the student does."""
        super().train(mode)
        self.teacher.eval()
        self.teacher_heads.eval()
        return self

    def trainable_pairs(self) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
        """(name, student parameter, its teacher twin) for every trainable student parameter."""
        student = itertools.chain(
            self.student.get_base_model().named_parameters(), self.heads.named_parameters(prefix="heads")
        )
        teacher = itertools.chain(self.teacher.get_base_model().parameters(), self.teacher_heads.parameters())
        return [(name, s, t) for (name, s), t in zip(student, teacher, strict=True) if s.requires_grad]

    def head_last_layers(self) -> list[nn.Parameter]:
        """The prototype layers, frozen for the first steps because that stabilises DINO (Caron et al. 2021)."""
        return [parameter for head in self.heads.values() for parameter in head.last_layer.parameters()]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher = momentum * teacher + (1 - momentum) * student, on the trainable parameters (the rest are equal)."""
        for _, student_param, teacher_param in self.trainable_pairs():
            teacher_param.lerp_(student_param, 1.0 - momentum)

    def losses(self, crops: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """DINO, iBOT and KoLeo losses of one multi-crop batch (2 global crops first); updates the centers."""
        config = self.config
        batch = crops[0].shape[0]
        global_crops = torch.cat(crops[:2])
        n_patches = (global_crops.shape[-2] // self.patch_size) * (global_crops.shape[-1] // self.patch_size)
        masks = random_patch_masks(2 * batch, n_patches, config.mask_probability, config.mask_ratio_range)
        masks = masks.to(global_crops.device)

        with torch.no_grad():
            teacher_tokens = self.teacher(pixel_values=global_crops).last_hidden_state
            teacher_cls = self._centered_softmax(self.teacher_heads["dino"](teacher_tokens[:, 0]), "dino")
            teacher_patches = self.teacher_heads["ibot"](teacher_tokens[:, self.n_prefix :][masks])
            teacher_patches = self._centered_softmax(teacher_patches, "ibot")

        student_tokens = self.student(pixel_values=global_crops, bool_masked_pos=masks).last_hidden_state
        global_cls = student_tokens[:, 0]
        cls_features = [global_cls]
        if config.n_local_crops:
            cls_features.append(self.student(pixel_values=torch.cat(crops[2:])).last_hidden_state[:, 0])
        student_cls = self.heads["dino"](torch.cat(cls_features)).split(batch)
        student_patches = self.heads["ibot"](student_tokens[:, self.n_prefix :][masks])
        return {
            "dino": dino_loss(list(student_cls), list(teacher_cls.split(batch)), config.student_temp),
            "ibot": ibot_loss(student_patches, teacher_patches, masks, config.student_temp),
            "koleo": sum(koleo_loss(features) for features in global_cls.split(batch)),
        }

    def _centered_softmax(self, logits: torch.Tensor, name: str) -> torch.Tensor:
        """Teacher probabilities centred and sharpened (DINO), then the center's EMA step with this batch."""
        center = getattr(self, f"{name}_center")
        probs = F.softmax((logits - center) / self.config.teacher_temp, dim=-1)
        if logits.shape[0]:
            momentum = self.config.center_momentum
            center.mul_(momentum).add_(logits.mean(dim=0, keepdim=True), alpha=1 - momentum)
        return probs


def run_explora(
    backbone: PreTrainedModel, images: Dataset | Sequence[torch.Tensor], config: ExploraConfig
) -> tuple[PreTrainedModel, ExploraSummary]:
    """Continue the backbone's DINOv2-style self-supervised pre-training ExPLoRA-style (arXiv 2406.10973).

    Args:
        backbone: a DINOv2 / DINOv3 ViT from transformers; left untouched (the run works on copies) and
            trained on the device it sits on.
        images: unlabeled target-domain images, each a float tensor ``3xHxW`` in [0, 1] of any size.
        config: the run settings.

    Returns:
        The merged backbone (same class as ``backbone``, no peft modules; the EMA teacher unless
        ``config.export == "student"``) and a summary with the trainable set and the loss curve.

    Raises:
        ValueError: fewer images than one batch, a bad image (named by index), a backbone without a mask
            token while iBOT is on, or a backbone whose blocks / projections cannot be found.
        FloatingPointError: the loss stopped being finite (the step and the loss parts are named).
    """
    if len(images) < config.batch_size:
        raise ValueError(f"ExPLoRA needs at least batch_size={config.batch_size} images, got {len(images)}")
    has_mask_token = any(name.endswith("mask_token") for name, _ in backbone.named_parameters())
    if not has_mask_token and config.ibot_loss_weight > 0:
        raise ValueError(
            f"{type(backbone).__name__} has no mask token, which the iBOT loss needs; "
            "load it with use_mask_token=True or set ibot_loss_weight=0"
        )
    device = next(backbone.parameters()).device
    patch = backbone_patch_size(backbone)
    global_size = math.ceil(config.global_crop_size / patch) * patch
    local_size = math.ceil(config.local_crop_size / patch) * patch
    weights = {"dino": config.dino_loss_weight, "ibot": config.ibot_loss_weight, "koleo": config.koleo_loss_weight}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        student = prepare_explora_backbone(backbone, config)
        report = _trainable_report(student, config)
        model = _SelfDistillation(student, config).train()
        pairs = model.trainable_pairs()
        trainable = [student_param for _, student_param, _ in pairs]
        optimizer = torch.optim.AdamW(_param_groups(pairs, config.weight_decay), lr=config.lr)
        schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
        loader = DataLoader(
            MultiCropDataset(images, config, global_size, local_size),
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(config.seed),
        )
        logger.info(
            "ExPLoRA: %d/%d backbone params trainable (%.2f%%), LoRA on %d modules, unfrozen %s; crops %d/%d px",
            report.trainable_params,
            report.total_params,
            100 * report.trainable_share,
            len(report.lora_target_modules),
            report.unfrozen_blocks,
            global_size,
            local_size,
        )
        curve: list[ExploraStepLoss] = []
        started = time.perf_counter()
        batches = _endless(loader)
        progress = tqdm(range(config.max_steps), desc="ExPLoRA", unit="step")
        for step in progress:
            parts = model.losses([crop.to(device) for crop in next(batches)])
            total = sum(weights[name] * value for name, value in parts.items())
            values = {name: float(value.detach()) for name, value in parts.items()}
            if not torch.isfinite(total):
                raise FloatingPointError(
                    f"ExPLoRA step {step}: loss is {float(total.detach())} {values}; lower lr or raise teacher_temp"
                )
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if step < config.freeze_last_layer_steps:
                for parameter in model.head_last_layers():
                    parameter.grad = None  # AdamW skips parameters without a gradient
            if config.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(trainable, config.clip_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            schedule.step()
            momentum = _teacher_momentum(step, config)
            model.update_teacher(momentum)
            record = ExploraStepLoss(step=step, total=float(total.detach()), **values, lr=lr, teacher_momentum=momentum)
            curve.append(record)
            progress.set_postfix(loss=f"{record.total:.4f}")
            if step % config.log_every_steps == 0 or step == config.max_steps - 1:
                logger.info(
                    "ExPLoRA step %d/%d: loss %.4f (dino %.4f, ibot %.4f, koleo %.4f), lr %.2e",
                    step + 1,
                    config.max_steps,
                    record.total,
                    record.dino,
                    record.ibot,
                    record.koleo,
                    lr,
                )
        seconds = time.perf_counter() - started
    logger.info("ExPLoRA: %d steps in %.1f s; returning the merged %s", config.max_steps, seconds, config.export)
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
        images_seen=config.max_steps * config.batch_size,
    )
    return merged, summary


def _teacher_momentum(step: int, config: ExploraConfig) -> float:
    """Cosine schedule from ``config.teacher_momentum`` to 1 over the run (DINO)."""
    return 1.0 - (1.0 - config.teacher_momentum) * (math.cos(math.pi * step / config.max_steps) + 1) / 2


def _param_groups(pairs: list[tuple[str, nn.Parameter, nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices, none on biases, norms and tokens (as DINOv2)."""
    decay = [param for name, param, _ in pairs if param.ndim >= 2 and not name.endswith(TOKEN_SUFFIXES)]
    no_decay = [param for name, param, _ in pairs if param.ndim < 2 or name.endswith(TOKEN_SUFFIXES)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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
