"""Supervised training of the classifier with Lightning.

The plain :class:`RoadworkClassifier` is injected into a thin LightningModule; model selection
(early stopping and the checkpoint kept) reads val_select only, through the split contracts.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, WeightAveraging
from pydantic import BaseModel, Field
from sklearn.metrics import matthews_corrcoef
from torch.nn import functional as F
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm.auto import tqdm

from stage1_core.common.config import StrictConfig
from stage1_core.data.fusion import FusionConfig, FusionSummary, sampling_weights, summarize
from stage1_core.data.images import AugmentationConfig, LoaderConfig, ManifestImageDataset, canvas_transform
from stage1_core.data.splits import Consumer, LeakageError, take_split
from stage1_core.modeling.adapters import AdapterConfig, adapter_parameters, add_adapters, merge_adapters
from stage1_core.modeling.backbone import transformer_blocks
from stage1_core.modeling.model import MultiViewConfig, RoadworkClassifier, TopKSelection, choose_top_k

logger = logging.getLogger(__name__)


def seed_per_epoch(seed: int, epoch: int) -> int:
    """A seed that is a pure function of (seed, epoch): an epoch replayed after a resume draws the same numbers."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class EmaConfig(StrictConfig):
    """EMA of the weights (Polyak averaging; the ``decay`` warms up as in timm's ModelEmaV2, so short runs are not
    dominated by the initial weights). The averaged weights are the ones validated, selected and returned."""

    enabled: bool = False
    decay: float = Field(
        0.99, ge=0.0, lt=1.0, description="upper bound of the per-step decay min(decay, (1 + n) / (10 + n))"
    )


class TrainConfig(StrictConfig):
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
    adapter: AdapterConfig = AdapterConfig()
    adapter_lr: float = Field(5e-4, gt=0.0, description="learning rate of LoRA / DoRA / DoRAN parameters")
    ema: EmaConfig = EmaConfig()
    top_k_candidates: list[int] = Field(
        [1, 2, 3, 5, 10], description="K values tried on val_select for topk_mean; [] keeps the configured top_k"
    )
    devices: int | str = Field(
        1, description="Lightning devices; used only when CUDA is present (CPU runs use one process)"
    )
    strategy: str = Field(
        "auto", description="Lightning strategy (e.g. ddp for several GPUs); used only when CUDA is present"
    )
    compile: bool = Field(False, description="torch.compile the classifier's forward; only when CUDA is present")
    sampling: FusionConfig = FusionConfig()
    early_stopping_patience: int = 3
    augmentation: AugmentationConfig = AugmentationConfig()
    loader: LoaderConfig = LoaderConfig()
    seed: int = 0
    accelerator: str = "auto"
    precision: str = Field(
        "auto", description="Lightning precision; auto: bf16-mixed on a CUDA GPU that has bf16, else 32-true"
    )
    checkpoint_root: str | None = (
        "data/checkpoints"  # resumable per-epoch checkpoints (kept until training succeeds); None: no resume
    )


class TrainSummary(BaseModel):
    """What training did: per-epoch history on val_select, the selected epoch, cost."""

    epochs_run: int
    best_epoch: int
    best_val_select_mcc: float
    history: list[dict[str, float]]
    trainable_params: int
    total_params: int
    seconds: float
    adapter: str = "none"
    adapter_params: int = 0
    ema: bool = False
    top_k: TopKSelection | None = None
    sampling: FusionSummary  # what the class-balanced, source-mixing sampler drew from train (expected shares)
    resumed_after_epochs: int = 0  # epochs restored from a checkpoint of an interrupted run (0: trained from the start)
    train_steps: int = 0  # optimisation steps this process ran (after a resume: those after it)
    seconds_per_train_step: float | None = None  # their mean wall seconds: forward, backward, update (not decoding)


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


def ema_average(
    averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor, *, decay: float
) -> torch.Tensor:
    """One EMA update for ``AveragedModel``: decay ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates.

    The decay's warm-up is timm's.
    """
    n = float(num_averaged)
    return averaged.lerp(current, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))


def ema_callback(config: EmaConfig) -> WeightAveraging | None:
    """Lightning's weight averaging with the EMA update.

    It validates, checkpoints and finally keeps the averaged weights.
    """
    return WeightAveraging(avg_fn=partial(ema_average, decay=config.decay)) if config.enabled else None


def trainer_hardware(config: TrainConfig) -> dict[str, Any]:
    """Trainer settings by hardware: bf16, several devices and strategies only when CUDA is present.

    Determinism is strict on the CPU; on CUDA it warns instead of failing, since some fused kernels
    (SDPA backward) have no deterministic implementation.
    """
    cuda = torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda")
    precision = config.precision
    if precision == "auto":
        precision = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"
    if cuda:
        return {
            "accelerator": config.accelerator,
            "devices": config.devices,
            "strategy": config.strategy,
            "precision": precision,
            "deterministic": "warn",
        }
    if config.devices != 1 or config.strategy != "auto" or config.compile:
        logger.info(
            "no CUDA device: devices=%s, strategy=%s, compile=%s do not apply; training in one CPU process",
            config.devices,
            config.strategy,
            config.compile,
        )
    return {
        "accelerator": config.accelerator,
        "devices": 1,
        "strategy": "auto",
        "precision": precision,
        "deterministic": True,
    }


def val_select_rows(val_select: pd.DataFrame) -> pd.DataFrame:
    """``val_select`` through its split contract (model selection); rows of any other split are an error, not dropped.

    Raises:
        LeakageError: the frame holds rows of other splits (or no split column).
    """
    others = sorted(set(val_select["split"]) - {"val_select"}) if "split" in val_select.columns else []
    if others:
        raise LeakageError(
            f"val_select holds rows of splits {others}: "
            "pass take_split(manifest, 'val_select', Consumer.MODEL_SELECTION)"
        )
    return take_split(val_select, "val_select", Consumer.MODEL_SELECTION)


def select_top_k(model: RoadworkClassifier, val_select: pd.DataFrame, config: TrainConfig) -> TopKSelection | None:
    """Choose K of the top-K mean on val_select view logits and write it into the model's config.

    None (K unchanged) when the aggregation is not top-K mean, no candidates are configured, or
    val_select holds one class only (logged).
    """
    if model.config.multiview.aggregation != "topk_mean" or not config.top_k_candidates:
        return None
    rows = val_select_rows(val_select)
    if rows["label"].nunique() < 2:
        logger.warning(
            "top-K: val_select has one class only (%d rows); keeping K=%d", len(rows), model.config.multiview.top_k
        )
        return None
    logits, labels = [], []
    model.eval()
    with torch.inference_mode():
        for images, batch_labels in tqdm(
            _loader(rows, model.config.multiview.canvas_size, config), desc="top-K on val_select", unit="batch"
        ):
            logits.append(model.view_logits(images.to(model.mean.device)).float().cpu())
            labels.append(batch_labels)
    selection = choose_top_k(torch.cat(logits).numpy(), torch.cat(labels).numpy(), config.top_k_candidates)
    model.config = model.config.model_copy(
        update={"multiview": model.config.multiview.model_copy(update={"top_k": selection.top_k})}
    )
    logger.info(
        "top-K: K=%d chosen on val_select (AUROC by K: %s)",
        selection.top_k,
        {k: round(v, 4) for k, v in selection.auroc_by_k.items()},
    )
    return selection


class ClassifierModule(L.LightningModule):
    """Loss, optimiser and val_select scoring around an injected classifier."""

    def __init__(self, model: RoadworkClassifier, config: TrainConfig, steps_per_epoch: int) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.train_views = (
            MultiViewConfig(**{**model.config.multiview.model_dump(), "aggregation": "global_only"})
            if config.train_views == "global"
            else None
        )
        self.val_logits: list[torch.Tensor] = []
        self.val_labels: list[torch.Tensor] = []
        self.history: list[dict[str, float]] = []
        self.resumed_after_epochs = 0
        self.compiled: Callable[..., torch.Tensor] | None = (
            None  # a function, not a module: no second copy of the weights
        )

    def on_fit_start(self) -> None:
        """torch.compile on CUDA only (after the EMA callback copied the module, so its copy stays plain)."""
        if self.config.compile and self.device.type == "cuda":
            self.compiled = torch.compile(self.model.forward)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = (self.compiled or self.model)(images, self.train_views)
        smoothing = self.config.label_smoothing
        loss = F.binary_cross_entropy_with_logits(logits, labels * (1 - smoothing) + smoothing / 2)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.val_logits.append((self.compiled or self.model)(images).float())
        self.val_labels.append(labels)

    def on_validation_epoch_end(self) -> None:
        logits, labels = (
            self.all_gather(torch.cat(values)).reshape(-1).float().cpu()
            for values in (self.val_logits, self.val_labels)
        )  # all ranks' rows
        self.val_logits, self.val_labels = [], []
        loss = F.binary_cross_entropy_with_logits(logits, labels).item()
        predictions = (torch.sigmoid(logits) > 0.5).int().numpy()
        mcc = float(matthews_corrcoef(labels.int().numpy(), predictions)) if len(np.unique(labels.numpy())) > 1 else 0.0
        accuracy = float((predictions == labels.int().numpy()).mean())
        self.log_dict({"val_select/mcc": mcc, "val_select/loss": loss, "val_select/accuracy": accuracy}, prog_bar=True)
        if not self.trainer.sanity_checking:
            train_loss = self.trainer.callback_metrics.get("train/loss_epoch")
            self.history.append(
                {
                    "epoch": float(self.current_epoch),
                    "val_select_mcc": mcc,
                    "val_select_loss": loss,
                    "val_select_accuracy": accuracy,
                }
                | ({"train_loss": float(train_loss)} if train_loss is not None else {})
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["val_select_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run continues the history of the epochs it restores."""
        self.history = checkpoint["val_select_history"]
        self.resumed_after_epochs = len(self.history)

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's own return shape
        head = [
            p for name, p in self.model.named_parameters() if not name.startswith("backbone.")
        ]  # head and attention aggregator
        adapters = adapter_parameters(self.model.backbone)
        adapter_ids = {id(p) for p in adapters}
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad and id(p) not in adapter_ids]
        groups = [{"params": head, "lr": self.config.head_lr}]
        for params, lr in ((adapters, self.config.adapter_lr), (backbone, self.config.backbone_lr)):
            if params:
                groups.append({"params": params, "lr": lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)
        total = max(1, self.steps_per_epoch * self.config.max_epochs)
        warmup = max(1, int(total * self.config.warmup_fraction))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), "interval": "step"},
        }


class StepTimer(Callback):
    """Wall seconds of each optimisation step, forward + backward + update, batch decoding excluded: what a budget
    for a longer run on the same machine is computed from (``benchmarks.realistic_run`` prints it)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._started = self._now(pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.seconds.append(self._now(pl_module) - self._started)

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":  # CUDA kernels run asynchronously: wait for the step's
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()


class EpochWeightedSampler(WeightedRandomSampler):
    """Weighted sampling whose draw is a function of (seed, epoch): Lightning calls ``set_epoch`` before every epoch,
    so an epoch replayed after a resume sees the same samples in the same order as in an uninterrupted run."""

    def __init__(self, weights: torch.Tensor, num_samples: int, seed: int) -> None:
        super().__init__(weights, num_samples=num_samples, replacement=True, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(seed_per_epoch(self.seed, epoch))


class EpochSeeding(Callback):
    """Seed the global RNGs (augmentations, dropout) from (seed, epoch) at each epoch start, for exact resumes."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        L.seed_everything(seed_per_epoch(self.seed, trainer.current_epoch), workers=True, verbose=False)


@contextmanager
def _checkpoint_directory(directory: Path | None) -> Iterator[Path]:
    """``directory`` (created), or a temporary one.

    ``directory`` is removed once training succeeded and kept after a crash for the resume.
    """
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="roadwork-ckpt-") as temporary:
            yield Path(temporary)
        return
    directory.mkdir(parents=True, exist_ok=True)
    yield directory
    shutil.rmtree(directory)


def _loader(
    manifest: pd.DataFrame, canvas_size: int, config: TrainConfig, weights: pd.Series | None = None
) -> DataLoader:
    """In order and unaugmented, unless sampling ``weights`` are given (training).

    With ``weights``: augmented and drawn by the epoch-seeded sampler.
    """
    dataset = ManifestImageDataset(
        manifest, canvas_transform(canvas_size, None if weights is None else config.augmentation), canvas_size
    )
    if weights is None:
        return DataLoader(dataset, batch_size=config.batch_size, shuffle=False, **config.loader.dataloader_options())
    sampler = EpochWeightedSampler(
        torch.as_tensor(weights.to_numpy(), dtype=torch.double), num_samples=len(manifest), seed=config.seed
    )
    # the loader's own generator: creating its iterator must not draw from the global RNG that EpochSeeding seeds
    loader_generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        generator=loader_generator,
        **config.loader.dataloader_options(),
    )


def train_classifier(
    model: RoadworkClassifier,
    train: pd.DataFrame,
    val_select: pd.DataFrame,
    config: TrainConfig,
    checkpoint_dir: Path | None = None,
) -> tuple[RoadworkClassifier, TrainSummary]:
    """Train on ``train``, select the checkpoint on ``val_select`` (MCC), return the selected model.

    With ``checkpoint_dir``, every epoch ends with a full checkpoint there (``last.ckpt``: weights, optimizer,
    scheduler, early stopping, history); a run that finds one resumes from it and, with the per-epoch seeding,
    ends with the weights an uninterrupted run would have. The folder is removed once training succeeded.
    """
    if model.config.multiview.aggregation == "attention" and config.train_views == "global":
        raise ValueError(
            "aggregation 'attention' is learned end to end over the views: set train.train_views to 'multi'"
        )
    val_select_rows(val_select)  # the contract before any training, not after it
    L.seed_everything(config.seed, workers=True)
    set_trainable_blocks(model, config.trainable_blocks)
    model.backbone = add_adapters(model.backbone, config.adapter, config.trainable_blocks)
    model.train()
    canvas = model.config.multiview.canvas_size
    weights = sampling_weights(train, config.sampling)
    train_loader = _loader(train, canvas, config, weights)
    val_loader = _loader(val_select, canvas, config)
    module = ClassifierModule(model, config, steps_per_epoch=len(train_loader))
    started = time.perf_counter()
    with _checkpoint_directory(checkpoint_dir) as directory:
        last = directory / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        resume = last if last.is_file() else None
        if resume is not None:
            logger.info("training: resuming from %s (the checkpoint of an interrupted run)", resume)
        checkpoint = ModelCheckpoint(
            dirpath=directory, monitor="val_select/mcc", mode="max", save_top_k=1, save_last=True
        )
        stopping = EarlyStopping(monitor="val_select/mcc", mode="max", patience=config.early_stopping_patience)
        timer = StepTimer()
        trainer = L.Trainer(
            max_epochs=config.max_epochs,
            **trainer_hardware(config),
            callbacks=[
                checkpoint,
                stopping,
                EpochSeeding(config.seed),
                timer,
                *filter(None, [ema_callback(config.ema)]),
            ],
            default_root_dir=directory,
            logger=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(module, train_loader, val_loader, ckpt_path=resume)
        best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)[
            "state_dict"
        ]  # our own file
        module.load_state_dict(best)
    trainable_params, total_params = (
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        sum(p.numel() for p in model.parameters()),
    )
    adapter_params = sum(p.numel() for p in adapter_parameters(model.backbone))
    model.backbone = merge_adapters(model.backbone)
    top_k = select_top_k(model, val_select, config)
    history = module.history
    best_index = int(np.argmax([row["val_select_mcc"] for row in history]))
    summary = TrainSummary(
        epochs_run=len(history),
        best_epoch=int(history[best_index]["epoch"]),
        best_val_select_mcc=history[best_index]["val_select_mcc"],
        history=history,
        trainable_params=trainable_params,
        total_params=total_params,
        seconds=time.perf_counter() - started,
        adapter=config.adapter.method,
        adapter_params=adapter_params,
        ema=config.ema.enabled,
        top_k=top_k,
        sampling=summarize(train, weights),
        resumed_after_epochs=module.resumed_after_epochs,
        train_steps=len(timer.seconds),
        seconds_per_train_step=float(np.mean(timer.seconds)) if timer.seconds else None,
    )
    logger.info(
        "training: %d epochs, best val_select MCC %.3f at epoch %d; %d steps, %.2f s per step",
        summary.epochs_run,
        summary.best_val_select_mcc,
        summary.best_epoch,
        summary.train_steps,
        summary.seconds_per_train_step or float("nan"),
    )
    return model.eval(), summary
