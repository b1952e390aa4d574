"""Supervised training of the classifier with Lightning.

The plain :class:`RoadworkClassifier` is injected into a thin LightningModule; model selection
(early stopping and the checkpoint kept) reads val_select only, through the split contracts.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from typing import Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from pydantic import BaseModel
from sklearn.metrics import matthews_corrcoef
from torch.nn import functional as F
from torch.utils.data import DataLoader, WeightedRandomSampler

from stage1_core.backbone import transformer_blocks
from stage1_core.fusion import FusionConfig, sampling_weights
from stage1_core.images import AugmentationConfig, ManifestImageDataset, canvas_transform
from stage1_core.model import MultiViewConfig, RoadworkClassifier

logger = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    """Supervised training settings (the plan's safe defaults: dropout in the head, wd 0.01, smoothing 0.1)."""

    max_epochs: int = 8
    batch_size: int = 32
    head_lr: float = 1e-3
    backbone_lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1
    trainable_blocks: int = 2
    train_views: Literal["global", "multi"] = "global"
    sampling: FusionConfig = FusionConfig()
    early_stopping_patience: int = 3
    augmentation: AugmentationConfig = AugmentationConfig()
    num_workers: int = 0
    seed: int = 0
    accelerator: str = "auto"
    precision: str = "32-true"


class TrainSummary(BaseModel):
    """What training did: per-epoch history on val_select, the selected epoch, cost."""

    epochs_run: int
    best_epoch: int
    best_val_select_mcc: float
    history: list[dict[str, float]]
    trainable_params: int
    total_params: int
    seconds: float


def set_trainable_blocks(model: RoadworkClassifier, trainable_blocks: int) -> None:
    """Freeze the backbone except its last ``trainable_blocks`` blocks and final norm (-1: train everything)."""
    backbone = model.backbone
    if trainable_blocks < 0:
        backbone.requires_grad_(True)
        return
    backbone.requires_grad_(False)
    blocks = transformer_blocks(backbone)
    for block in list(blocks)[len(blocks) - trainable_blocks :] if trainable_blocks else []:
        block.requires_grad_(True)
    for name, module in backbone.named_modules():
        if name in ("layernorm", "norm"):
            module.requires_grad_(True)


class ClassifierModule(L.LightningModule):
    """Loss, optimiser and val_select scoring around an injected classifier."""

    def __init__(self, model: RoadworkClassifier, config: TrainConfig, steps_per_epoch: int) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.train_views = MultiViewConfig(**{**model.config.multiview.model_dump(), "aggregation": "global_only"}) if config.train_views == "global" else None
        self.val_logits: list[torch.Tensor] = []
        self.val_labels: list[torch.Tensor] = []
        self.history: list[dict[str, float]] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self.model(images, self.train_views)
        smoothing = self.config.label_smoothing
        loss = F.binary_cross_entropy_with_logits(logits, labels * (1 - smoothing) + smoothing / 2)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.val_logits.append(self.model(images).float().cpu())
        self.val_labels.append(labels.cpu())

    def on_validation_epoch_end(self) -> None:
        logits, labels = torch.cat(self.val_logits), torch.cat(self.val_labels)
        self.val_logits, self.val_labels = [], []
        loss = F.binary_cross_entropy_with_logits(logits, labels).item()
        predictions = (torch.sigmoid(logits) > 0.5).int().numpy()
        mcc = float(matthews_corrcoef(labels.int().numpy(), predictions)) if len(np.unique(labels.numpy())) > 1 else 0.0
        accuracy = float((predictions == labels.int().numpy()).mean())
        self.log_dict({"val_select/mcc": mcc, "val_select/loss": loss, "val_select/accuracy": accuracy}, prog_bar=True)
        if not self.trainer.sanity_checking:
            train_loss = self.trainer.callback_metrics.get("train/loss_epoch")
            self.history.append(
                {"epoch": float(self.current_epoch), "val_select_mcc": mcc, "val_select_loss": loss, "val_select_accuracy": accuracy}
                | ({"train_loss": float(train_loss)} if train_loss is not None else {})
            )

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's own return shape
        head = list(self.model.head.parameters())
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        groups = [{"params": head, "lr": self.config.head_lr}]
        if backbone:
            groups.append({"params": backbone, "lr": self.config.backbone_lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)
        total = max(1, self.steps_per_epoch * self.config.max_epochs)
        warmup = max(1, int(total * self.config.warmup_fraction))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), "interval": "step"}}


def _loader(manifest: pd.DataFrame, canvas_size: int, config: TrainConfig, train: bool) -> DataLoader:
    dataset = ManifestImageDataset(manifest, canvas_transform(canvas_size, config.augmentation if train else None))
    if not train:
        return DataLoader(dataset, batch_size=config.batch_size, shuffle=False, num_workers=config.num_workers)
    weights = torch.as_tensor(sampling_weights(manifest, config.sampling).to_numpy(), dtype=torch.double)
    sampler = WeightedRandomSampler(weights, num_samples=len(manifest), replacement=True, generator=torch.Generator().manual_seed(config.seed))
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers)


def train_classifier(model: RoadworkClassifier, train: pd.DataFrame, val_select: pd.DataFrame, config: TrainConfig) -> tuple[RoadworkClassifier, TrainSummary]:
    """Train on ``train``, select the checkpoint on ``val_select`` (MCC), return the selected model."""
    L.seed_everything(config.seed, workers=True)
    set_trainable_blocks(model, config.trainable_blocks)
    model.train()
    canvas = model.config.multiview.canvas_size
    train_loader = _loader(train, canvas, config, train=True)
    val_loader = _loader(val_select, canvas, config, train=False)
    module = ClassifierModule(model, config, steps_per_epoch=len(train_loader))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="roadwork-ckpt-") as checkpoint_dir:
        checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, monitor="val_select/mcc", mode="max", save_top_k=1, save_weights_only=True)
        stopping = EarlyStopping(monitor="val_select/mcc", mode="max", patience=config.early_stopping_patience)
        trainer = L.Trainer(
            max_epochs=config.max_epochs,
            accelerator=config.accelerator,
            devices=1,
            precision=config.precision,
            callbacks=[checkpoint, stopping],
            logger=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            deterministic=True,
        )
        trainer.fit(module, train_loader, val_loader)
        best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(best)
    history = module.history
    best_index = int(np.argmax([row["val_select_mcc"] for row in history]))
    summary = TrainSummary(
        epochs_run=len(history),
        best_epoch=int(history[best_index]["epoch"]),
        best_val_select_mcc=history[best_index]["val_select_mcc"],
        history=history,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in model.parameters()),
        seconds=time.perf_counter() - started,
    )
    logger.info("training: %d epochs, best val_select MCC %.3f at epoch %d", summary.epochs_run, summary.best_val_select_mcc, summary.best_epoch)
    return model.eval(), summary
