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
from collections.abc import Callable, Iterator, Sequence
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
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from stage1_core.common.config import StrictConfig
from stage1_core.data.fusion import FusionConfig, FusionSummary, sampling_weights, summarize
from stage1_core.data.images import AugmentationConfig, LoaderConfig, ManifestImageDataset, canvas_transform
from stage1_core.data.splits import Consumer, LeakageError, take_split
from stage1_core.modeling.adapters import AdapterConfig, adapter_parameters, add_adapters, merge_adapters
from stage1_core.modeling.backbone import transformer_blocks
from stage1_core.modeling.distributed import DeviceConfig
from stage1_core.modeling.model import MultiViewConfig, RoadworkClassifier, TopKSelection, choose_top_k

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last"  # the checkpoint of the last finished epoch, which an interrupted run resumes from


def seed_per_epoch(seed: int, epoch: int, *keys: int) -> int:
    """A seed that is a pure function of (seed, epoch, keys): an epoch replayed after a resume draws the same numbers.

    ``keys`` tell apart the streams of one epoch (the rank of a process).
    """
    return int(np.random.SeedSequence([seed, epoch, *keys]).generate_state(1)[0])


class EmaConfig(StrictConfig):
    """EMA of the weights (Polyak averaging; the ``decay`` warms up as in timm's ModelEmaV2, so short runs are not
    dominated by the initial weights). The averaged weights are the ones validated, selected and returned."""

    enabled: bool = False
    decay: float = Field(
        0.99, ge=0.0, lt=1.0, description="upper bound of the per-step decay min(decay, (1 + n) / (10 + n))"
    )


class DistillationConfig(StrictConfig):
    """Distil the multi-view aggregate into the global view, so that adaptive serving stops at the global view more.

    Adaptive serving (``serving.adaptive``) answers from the global view alone where its margin shows that the
    ten views would not change the answer; trained only through the top-K pooling, the global view often
    disagrees with the aggregate, and those images need the tiles. The model's own aggregate logit, detached
    (a stop-gradient, so the teacher is not pulled towards the student), teaches the global view's logit: the
    self-distillation of multi-exit networks, where the final exit teaches the early ones (Phuong & Lampert,
    ICCV 2019, "Distillation-based training for multi-exit architectures"; Zhang et al., ICCV 2019, "Be Your
    Own Teacher"), with Hinton et al.'s (2015, arXiv 1503.02531) soft-target loss for one logit:
    ``T^2 * BCE(z_global / T, sigmoid(z_aggregate / T))``. It costs nothing extra: the global view's features
    are computed for the aggregate anyway. It applies to multi-view training only (``train_views: multi``): a
    global-only model has no other views to learn from.

    Off by default (weight 0): measured on the demo recipe (same data, backbone and seed), weight 1 lowered the
    adaptive skip rate on 1,500 fresh held-out scenes from 42.4% to 37.1% (paired -5.3 points, 95% CI [-6.6, -4.1])
    and did not raise MCC (0.624 -> 0.612; val_test 0.784 -> 0.716): top-K pooling lifts the aggregate of a clear
    scene above its typical view, so the taught global view is less sure of "no roadwork". The run's ablation
    (``ablation.distillation``) trains the main recipe with it, so its effect stays measured on every full run.
    """

    weight: float = Field(
        0.0,
        ge=0.0,
        description="weight of the distillation term next to the label loss (both are the BCE of one logit); "
        "0 (the default) turns it off",
    )
    temperature: float = Field(
        1.0,
        gt=0.0,
        description="softens teacher and student alike; 1 keeps the aggregate's own confidence, which is what the "
        "adaptive margin reads (T > 1 pulls the global view towards 0.5 and it skips less)",
    )
    teacher: Literal["aggregate", "label"] = Field(
        "aggregate",
        description="aggregate: the detached ten-view logit (self-distillation); label: the image's (smoothed) label, "
        "the early exit's own loss of BranchyNet (Teerapittayanon et al. 2016)",
    )


class TrainConfig(DeviceConfig):
    """Supervised training settings (the plan's safe defaults: dropout in the head, wd 0.01, smoothing 0.1).

    ``batch_size`` is per process: with ``devices: N`` a step takes N x ``batch_size`` images (Lightning's rule).
    """

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
    distillation: DistillationConfig = DistillationConfig()
    top_k_candidates: list[int] = Field(
        [1, 2, 3, 5, 10], description="K values tried on val_select for topk_mean; [] keeps the configured top_k"
    )
    compile: bool = Field(False, description="torch.compile the classifier's forward; only when CUDA is present")
    sampling: FusionConfig = FusionConfig()
    early_stopping_patience: int = 3
    augmentation: AugmentationConfig = AugmentationConfig()
    loader: LoaderConfig = LoaderConfig()
    seed: int = 0
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
    distillation_weight: float = 0.0  # weight of the global-view distillation applied (0: none)
    top_k: TopKSelection | None = None
    sampling: FusionSummary  # what the class-balanced, source-mixing sampler drew from train (expected shares)
    resumed_after_epochs: int = 0  # epochs restored from a checkpoint of an interrupted run (0: trained from the start)
    processes: int = 1  # training processes (DDP ranks) Lightning ran: train.devices
    train_steps: int = 0  # optimisation steps of rank 0, those before a resume included
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
    """Trainer settings by hardware: bf16 and torch.compile only when CUDA is present.

    ``devices`` processes on either hardware (several: spawned, see :mod:`stage1_core.modeling.distributed`).
    Determinism is strict on the CPU; on CUDA it warns instead of failing, since some fused kernels
    (SDPA backward) have no deterministic implementation.
    """
    cuda = torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda")
    precision = config.precision
    if precision == "auto":
        precision = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"
    if config.compile and not cuda:
        logger.info("no CUDA device: compile does not apply")
    return {
        "accelerator": config.accelerator,
        "devices": config.devices,
        "strategy": config.launch_strategy(),
        "precision": precision,
        "deterministic": "warn" if cuda else True,
    }


def global_view_distillation(
    global_logits: torch.Tensor,
    aggregate_logits: torch.Tensor,
    targets: torch.Tensor,
    config: DistillationConfig | None = None,
) -> torch.Tensor:
    """BCE of the global view's logit against its teacher (see ``DistillationConfig``).

    The teacher is the detached aggregate (soft targets at the temperature) or the image's ``targets``.
    """
    config = config or DistillationConfig()
    if config.teacher == "label":
        return F.binary_cross_entropy_with_logits(global_logits, targets)
    temperature = config.temperature
    teacher = torch.sigmoid(aggregate_logits.detach() / temperature)
    return temperature**2 * F.binary_cross_entropy_with_logits(global_logits / temperature, teacher)


def distillation_weight(multiview: MultiViewConfig, config: TrainConfig) -> float:
    """The distillation weight that applies: 0 unless the model is trained over several views."""
    multi = config.train_views == "multi" and multiview.aggregation != "global_only"
    return config.distillation.weight if multi else 0.0


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
    """Loss, optimiser and val_select scoring around an injected classifier.

    With several processes the training loss is averaged over the ranks before it is logged, and val_select is
    scored on every rank's rows gathered (each rank validates a shard, :class:`ShardSampler`).
    """

    def __init__(self, model: RoadworkClassifier, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.train_views = (
            MultiViewConfig(**{**model.config.multiview.model_dump(), "aggregation": "global_only"})
            if config.train_views == "global"
            else None
        )
        self.val_logits: list[torch.Tensor] = []
        self.val_labels: list[torch.Tensor] = []
        self.history: list[dict[str, float]] = []
        self.distillation_weight = distillation_weight(model.config.multiview, config)
        self.compiled: Callable[..., torch.Tensor] | None = (
            None  # a function, not a module: no second copy of the weights
        )
        self.compiled_pair: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None

    def on_fit_start(self) -> None:
        """torch.compile on CUDA only (after the EMA callback copied the module, so its copy stays plain)."""
        if self.config.compile and self.device.type == "cuda":
            self.compiled = torch.compile(self.model.forward)
            self.compiled_pair = torch.compile(self.model.logits_and_global) if self.distillation_weight else None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self.distillation_weight:
            logits, global_logits = (self.compiled_pair or self.model.logits_and_global)(images, self.train_views)
        else:
            logits = (self.compiled or self.model)(images, self.train_views)
        smoothing = self.config.label_smoothing
        targets = labels * (1 - smoothing) + smoothing / 2
        loss = F.binary_cross_entropy_with_logits(logits, targets)
        if self.distillation_weight:
            distillation = global_view_distillation(global_logits, logits, targets, self.config.distillation)
            self.log("train/distillation", distillation, on_step=False, on_epoch=True, sync_dist=True)
            loss = loss + self.distillation_weight * distillation
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.val_logits.append((self.compiled or self.model)(images).float())
        self.val_labels.append(labels)

    def on_validation_epoch_end(self) -> None:
        rows = len(self.trainer.val_dataloaders.dataset)
        logits, labels = (
            ShardSampler.gathered(self.all_gather(torch.cat(values)).float().cpu(), rows, self.trainer.world_size)
            for values in (self.val_logits, self.val_labels)
        )  # all ranks' rows, in order, once each
        self.val_logits, self.val_labels = [], []
        loss = F.binary_cross_entropy_with_logits(logits, labels).item()
        predictions = (torch.sigmoid(logits) > 0.5).int().numpy()
        mcc = float(matthews_corrcoef(labels.int().numpy(), predictions)) if len(np.unique(labels.numpy())) > 1 else 0.0
        accuracy = float((predictions == labels.int().numpy()).mean())
        metrics = {"val_select/mcc": mcc, "val_select/loss": loss, "val_select/accuracy": accuracy}
        self.log_dict(metrics, prog_bar=True, sync_dist=True)  # equal on every rank (all rows): the mean is a no-op
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
        total = max(1, int(self.trainer.estimated_stepping_batches))  # this rank's batches over max_epochs
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
    for a longer run on the same machine is computed from (``benchmarks.realistic_run`` prints it).

    Its list travels in the checkpoints (a callback's state), which is how spawned DDP processes hand rank 0's
    timings back and how a resumed run keeps those of the steps before the interruption.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": list(self.seconds)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds = list(state_dict["seconds"])

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
        if pl_module.device.type == "cuda":  # CUDA kernels run asynchronously: wait until the step has run
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()


class EpochWeightedSampler(Sampler[int]):
    """Weighted sampling with replacement whose draw is a function of (seed, epoch), split over the ranks.

    Lightning calls ``set_epoch`` before every epoch, so an epoch replayed after a resume sees the same samples in
    the same order as in an uninterrupted run. Every rank draws the same epoch (``num_samples`` rounded up to a
    multiple of ``world_size``) and takes every ``world_size``-th draw from its ``rank``: the ranks' draws together
    are exactly one process's draw, each once, and the ranks' k-th batches together are one process's k-th batch
    at ``world_size`` times the batch size (the same step as one process with that global batch).
    """

    def __init__(self, weights: torch.Tensor, num_samples: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.weights = weights
        self.draws = math.ceil(num_samples / world_size) * world_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(seed_per_epoch(self.seed, self.epoch))
        draw = torch.multinomial(self.weights, self.draws, replacement=True, generator=generator)
        return iter(draw[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.draws // self.world_size


class ShardSampler(Sampler[int]):
    """Rows ``rank, rank + world_size, ...`` of ``0 .. rows - 1``, for scoring a frame over several processes.

    The last rows wrap around to the first ones so that every rank holds as many (collectives need equal shapes);
    :meth:`gathered` puts the ranks' results back in row order and cuts the repeated rows.
    """

    def __init__(self, rows: int, rank: int = 0, world_size: int = 1) -> None:
        self.rows, self.rank, self.world_size = rows, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(index % self.rows for index in range(self.rank, len(self) * self.world_size, self.world_size))

    def __len__(self) -> int:
        return math.ceil(self.rows / self.world_size)

    @staticmethod
    def gathered(values: torch.Tensor, rows: int, world_size: int) -> torch.Tensor:
        """Row-ordered values from ``all_gather``'s ``[world_size, per_rank, ...]`` (a rank's own values alone)."""
        if world_size == 1:
            return values.reshape(-1)
        return values.transpose(0, 1).reshape(-1)[:rows]


class EpochSeeding(Callback):
    """Seed the global RNGs (augmentations, dropout) from (seed, epoch, rank) at each epoch start, for exact resumes.

    Each rank gets a stream of its own: otherwise the ranks' k-th images would get the same crops and dropout masks.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed = seed_per_epoch(self.seed, trainer.current_epoch, trainer.global_rank)
        L.seed_everything(seed, workers=True, verbose=False)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint this module wrote (our own file: full unpickling is safe)."""
    return torch.load(path, map_location="cpu", weights_only=False)


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
    manifest: pd.DataFrame,
    canvas_size: int,
    config: TrainConfig,
    weights: pd.Series | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """This rank's rows in order and unaugmented (:class:`ShardSampler`), unless sampling ``weights`` are given.

    With ``weights`` (training): augmented and drawn by the epoch-seeded sampler, this rank's share of the draw.
    """
    dataset = ManifestImageDataset(
        manifest, canvas_transform(canvas_size, None if weights is None else config.augmentation), canvas_size
    )
    options = config.loader.dataloader_options(processes=world_size)
    if weights is None:
        sampler: Sampler[int] = ShardSampler(len(manifest), rank, world_size)
        return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, **options)
    sampler = EpochWeightedSampler(
        torch.as_tensor(weights.to_numpy(), dtype=torch.double), len(manifest), config.seed, rank, world_size
    )
    # the loader's own generator: creating its iterator must not draw from the global RNG that EpochSeeding seeds
    loader_generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, generator=loader_generator, **options)


class ManifestData(L.LightningDataModule):
    """The train and val_select loaders, built in each process for its rank (Lightning's own sampler replacement
    is off: it would neither reseed the weighted draw per epoch nor keep val_select's rows once each)."""

    def __init__(
        self, train: pd.DataFrame, val_select: pd.DataFrame, weights: pd.Series, canvas_size: int, config: TrainConfig
    ) -> None:
        super().__init__()
        self.train, self.val_select, self.weights = train, val_select, weights
        self.canvas_size, self.config = canvas_size, config

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self.trainer.global_rank, self.trainer.world_size
        return _loader(self.train, self.canvas_size, self.config, self.weights, rank, world_size)

    def val_dataloader(self) -> DataLoader:
        rank, world_size = self.trainer.global_rank, self.trainer.world_size
        return _loader(self.val_select, self.canvas_size, self.config, None, rank, world_size)


def train_classifier(
    model: RoadworkClassifier,
    train: pd.DataFrame,
    val_select: pd.DataFrame,
    config: TrainConfig,
    checkpoint_dir: Path | None = None,
    callbacks: Sequence[Callback] = (),
) -> tuple[RoadworkClassifier, TrainSummary]:
    """Train on ``train``, select the checkpoint on ``val_select`` (MCC), return the selected model.

    With ``checkpoint_dir``, every epoch ends with a full checkpoint there (``last.ckpt``: weights, optimizer,
    scheduler, early stopping, history); a run that finds one resumes from it and, with the per-epoch seeding,
    ends with the weights an uninterrupted run would have. The folder is removed once training succeeded.

    With ``config.devices`` above 1 the training runs in that many spawned processes (DDP); rank 0 alone writes
    the checkpoints, and this process gets the selected weights back and does everything after the training
    (top-K choice, summary) once. ``callbacks`` (extra Lightning callbacks) run in every training process.
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
    data = ManifestData(train, val_select, weights, canvas, config)
    module = ClassifierModule(model, config)
    started = time.perf_counter()
    with _checkpoint_directory(checkpoint_dir) as directory:
        last = directory / f"{LAST_CHECKPOINT}{ModelCheckpoint.FILE_EXTENSION}"
        resume = last if last.is_file() else None
        resumed_after_epochs = len(_read_checkpoint(resume)["val_select_history"]) if resume is not None else 0
        if resume is not None:
            logger.info("training: resuming from %s (the checkpoint of an interrupted run)", resume)
        checkpoint = ModelCheckpoint(dirpath=directory, monitor="val_select/mcc", mode="max", save_top_k=1)
        # every epoch, improved or not (ModelCheckpoint's save_last writes only when a top-k checkpoint was saved)
        every_epoch = ModelCheckpoint(dirpath=directory, filename=LAST_CHECKPOINT, enable_version_counter=False)
        stopping = EarlyStopping(monitor="val_select/mcc", mode="max", patience=config.early_stopping_patience)
        trainer = L.Trainer(
            max_epochs=config.max_epochs,
            **trainer_hardware(config),
            callbacks=[
                checkpoint,  # first: the Trainer's checkpoint_callback, whose best path spawned processes hand back
                every_epoch,
                stopping,
                EpochSeeding(config.seed),
                StepTimer(),
                *filter(None, [ema_callback(config.ema)]),
                *callbacks,
            ],
            default_root_dir=directory,
            logger=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,  # ManifestData shards for the rank itself
        )
        logger.info("training: %d process(es), strategy %s", config.devices, config.launch_strategy())
        trainer.fit(module, datamodule=data, ckpt_path=resume)
        # read back in this process: spawned training processes hand over the checkpoint paths, not the module
        module.load_state_dict(_read_checkpoint(Path(checkpoint.best_model_path))["state_dict"])
        last_state = _read_checkpoint(last)
        history = last_state["val_select_history"]
        step_seconds = last_state["callbacks"][StepTimer.__qualname__]["seconds"]
    trainable_params, total_params = (
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        sum(p.numel() for p in model.parameters()),
    )
    adapter_params = sum(p.numel() for p in adapter_parameters(model.backbone))
    model.backbone = merge_adapters(model.backbone)
    top_k = select_top_k(model, val_select, config)
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
        distillation_weight=module.distillation_weight,
        top_k=top_k,
        sampling=summarize(train, weights),
        resumed_after_epochs=resumed_after_epochs,
        processes=trainer.world_size,
        train_steps=len(step_seconds),
        seconds_per_train_step=float(np.mean(step_seconds)) if step_seconds else None,
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
