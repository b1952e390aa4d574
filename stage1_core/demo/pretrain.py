"""Pre-train the ``dinov2-demo`` backbone on a large pool of generated street scenes.

Why: the demo run cannot download DINOv2 / DINOv3 weights, and a ViT trained from random init on the
demo's 800 images learns too slowly on a CPU to show what the pipeline does. This module makes the
stand-in for the downloaded weights: a small DINOv2-architecture backbone pre-trained by this project's
own code on a large pool of scenes drawn by :mod:`stage1_core.demo.render` with seeds disjoint from every
dataset the pipeline or the tests evaluate on (those use seeds below 1,000,000).

Objective: supervised multi-task learning on what the generator knows it drew (Caruana 1997, "Multitask
Learning"), densely per view: the generator knows every roadwork object's box, so each of the classifier's
views (the global view and the 3x3 tiles, cut exactly as the classifier cuts them) gets its own target,
roadwork present and the roadwork kinds it shows. A tile holding at least half of an object is positive, a
tile touching none is negative, a tile cutting an object is left out of the loss. Per-view targets give
the tiles, where small objects are visible, a direct signal that image-level multiple-instance learning
gives only weakly; every patch token is also told whether it shows roadwork (dense, like a segmentation
target), which teaches a ViT from scratch what roadwork looks like far faster than one label per view.
Each step looks at the global view and a few random tiles of every scene (all ten views would cost ten
backbone passes per scene for little more signal). Daytime, weather, environment and the hard-negative
kind are learnt on the global view, so the features also encode the scene and the orange look-alikes.
Only the backbone is kept (``save_pretrained``); the heads are discarded.

The pool is drawn once, in parallel processes, and kept in memory as JPEG bytes: drawing a scene costs
about as much CPU as two views' training pass, so reusing each scene for a few epochs (flipped at random,
other tiles each time) buys more training per CPU-second than a stream of fresh scenes.

``python -m stage1_core.demo.pretrain OUT_DIR [--seed S] [--steps N] [--minutes M]`` writes the backbone,
its training history, a curves figure and ``MODEL_CARD.md``. Same seed and steps, same weights (on the
same machine and thread count). ``--base-backbone DIR --stream-seed-start S`` continues from an earlier
run's output on a fresh pool: one session's CPU time is too short for the whole schedule, so the demo
backbone is trained in stages, and the card lists every stage's command, data and cost. The committed
result is ``stage1_core/demo/weights/dinov2-demo``, which the demo name ``dinov2-demo`` loads.

"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import matthews_corrcoef
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from stage1_core.common.cli import EXIT_OK, configure_logging, run_command
from stage1_core.common.config import OptionsError, StrictConfig, config_from_options
from stage1_core.common.images import decode_rgb
from stage1_core.data.images import canvas_transform
from stage1_core.demo.config import (
    DAYTIMES,
    ENVIRONMENTS,
    HARD_NEGATIVE_KINDS,
    ROADWORK_KINDS,
    WEATHERS,
    DemoDataConfig,
)
from stage1_core.demo.render import DrawnFrame, draw_frames
from stage1_core.modeling.backbone import IMAGENET_MEAN, IMAGENET_STD, load_backbone, resolve_backbone
from stage1_core.modeling.model import MultiViewConfig, aggregate_view_logits, make_views

logger = logging.getLogger(__name__)

# Every dataset the pipeline, the configs and the tests draw uses a seed below this: the stream starts here.
FIRST_STREAM_SEED = 1_000_000
SCENE_TASKS: dict[str, tuple[str, ...]] = {
    "daytime": DAYTIMES,
    "weather": WEATHERS,
    "environment": ENVIRONMENTS,
    "hard_negative": ("none", *HARD_NEGATIVE_KINDS),
}


class PretrainConfig(StrictConfig):
    """Recipe of the demo backbone's pre-training."""

    seed: int = Field(0, ge=0, description="random init, flips and scene order")
    steps: int = Field(
        8000, ge=1, description="optimiser steps; the cosine schedule spans them (8000: the shipped weights)"
    )
    max_minutes: float | None = Field(None, gt=0, description="wall-clock cap: stop early (and say so) when reached")
    batch_size: int = Field(32, ge=1, description="scenes per step")
    tiles_per_scene: int = Field(2, ge=0, description="random tiles per scene and step, next to the global view")
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = Field(200, ge=0)
    grad_clip: float = 1.0
    tile_positive_fraction: float = Field(
        0.5, gt=0, le=1, description="share of an object's box inside a tile that makes the tile positive"
    )
    patch_cover: float = Field(
        0.25, gt=0, le=1, description="share of a patch covered by roadwork that makes the patch positive"
    )
    patch_weight: float = Field(1.0, ge=0, description="weight of the per-patch roadwork loss")
    patch_pos_weight: float = Field(5.0, gt=0, description="weight of positive patches in their loss (they are rare)")
    kinds_weight: float = Field(0.5, ge=0, description="weight of the per-view roadwork-kind loss")
    scene_weight: float = Field(0.25, ge=0, description="weight of each scene-tag loss (daytime, weather, ...)")
    base_backbone: str = Field(
        "dinov2-demo-random",
        description="randomly initialised architecture to pre-train, "
        "or an earlier stage's output directory to continue",
    )
    multiview: MultiViewConfig = MultiViewConfig()
    stream_seed_start: int = Field(
        FIRST_STREAM_SEED, ge=FIRST_STREAM_SEED, description="generator seed of the pool's first chunk"
    )
    pool_images: int = Field(40_000, ge=1, description="scenes drawn once and reused across epochs")
    pool_workers: int = Field(2, ge=0, description="processes drawing the pool (0: in this process)")
    chunk_images: int = Field(64, ge=1, description="scenes drawn per generator call (one seed each)")
    frames_per_sequence: int = Field(2, ge=1)
    image_width: int = 640
    image_height: int = 480
    probe_seed: int = Field(
        2 * FIRST_STREAM_SEED - 1, ge=FIRST_STREAM_SEED, description="generator seed of the held-out probe set"
    )
    probe_images: int = Field(
        800, ge=0, description="held-out scenes for the probe figures (a quarter is its test part); 0: no probe"
    )
    num_workers: int = Field(1, ge=0, description="processes decoding scenes while the main process trains")
    log_every: int = Field(25, ge=1)

    @model_validator(mode="after")
    def _pool_fills_a_batch(self) -> PretrainConfig:
        if self.pool_images < self.batch_size:
            raise ValueError(
                f"pool_images ({self.pool_images}) must hold at least one batch (batch_size {self.batch_size})"
            )
        if self.tiles_per_scene > self.multiview.grid**2:
            raise ValueError(
                f"tiles_per_scene ({self.tiles_per_scene}) exceeds the {self.multiview.grid**2} tiles of a scene"
            )
        return self

    @property
    def pool_chunks(self) -> int:
        return math.ceil(self.pool_images / self.chunk_images)

    def chunk_seed(self, chunk: int) -> int:
        """Generator seed of the stream's ``chunk``-th call; the probe set's seed is never reached."""
        seed = self.stream_seed_start + chunk
        if seed >= self.probe_seed >= self.stream_seed_start:
            raise ValueError(
                f"scene pool reached the probe seed {self.probe_seed}: lower pool_images or raise probe_seed"
            )
        return seed

    def demo_config(self, seed: int, n_images: int, test_fraction: float = 0.0) -> DemoDataConfig:
        return DemoDataConfig(
            seed=seed,
            n_images=n_images,
            image_width=self.image_width,
            image_height=self.image_height,
            frames_per_sequence=self.frames_per_sequence,
            test_fraction=test_fraction,
        )


class PretrainStage(BaseModel):
    """One run of the command in a backbone's lineage: where it started, what it saw and what it cost."""

    command: str
    base_backbone: str
    steps_run: int
    scenes_seen: int
    chunk_seeds: tuple[int, int]
    seconds: float
    finished_at: str


class ScenePretrainSummary(BaseModel):
    """What a pre-training run did and how good its backbone is on held-out generated scenes."""

    model_config = ConfigDict(
        ser_json_inf_nan="constants"
    )  # a window without roadwork has a NaN patch recall: keep it readable

    config: PretrainConfig
    command: str = ""
    earlier_stages: list[PretrainStage] = []
    steps_run: int
    scenes_seen: int
    epochs: float
    chunk_seeds: tuple[int, int]
    seconds: float
    stopped_early: bool
    history: list[dict[str, float]]
    probe: dict[str, float]
    hardware: dict[str, str]
    finished_at: str

    def stage(self) -> PretrainStage:
        return PretrainStage(
            command=self.command,
            base_backbone=self.config.base_backbone,
            steps_run=self.steps_run,
            scenes_seen=self.scenes_seen,
            chunk_seeds=self.chunk_seeds,
            seconds=self.seconds,
            finished_at=self.finished_at,
        )


def lineage(base_backbone: str) -> list[PretrainStage]:
    """The stages that made ``base_backbone``, oldest first.

    Empty for a random init, else its summary's stages and itself.
    """
    summary_path = Path(resolve_backbone(base_backbone)) / "pretrain_summary.json"
    if not summary_path.is_file():
        return []
    earlier = ScenePretrainSummary.model_validate_json(summary_path.read_text())
    return [*earlier.earlier_stages, earlier.stage()]


def check_fresh_pool(config: PretrainConfig, earlier_stages: Sequence[PretrainStage]) -> None:
    """Refuse a pool whose generator seeds an earlier stage already drew: a continuation must see new scenes."""
    first, last = config.chunk_seed(0), config.chunk_seed(config.pool_chunks - 1)
    for number, stage in enumerate(earlier_stages, start=1):
        if first <= stage.chunk_seeds[1] and stage.chunk_seeds[0] <= last:
            next_free_seed = max(s.chunk_seeds[1] for s in earlier_stages) + 1
            raise OptionsError(
                f"the pool's generator seeds {first}..{last} overlap those of stage {number} "
                f"({stage.chunk_seeds[0]}..{stage.chunk_seeds[1]}) "
                f"of {config.base_backbone!r}: pass --stream-seed-start {next_free_seed}"
            )


def view_regions(views: MultiViewConfig) -> np.ndarray:
    """``[V, 3]`` canvas region of every view: (x0, y0, side) in canvas px.

    View 0 is the whole canvas, then come the tiles row by row.
    """
    tiles = [
        ((t % views.grid) * views.tile_stride, (t // views.grid) * views.tile_stride, views.view_size)
        for t in range(views.grid * views.grid)
    ]
    return np.array([(0, 0, views.canvas_size), *tiles][: views.views_per_image], dtype=np.float64)


def canvas_boxes(frame: DrawnFrame, config: PretrainConfig, flip: bool) -> np.ndarray:
    """``[K, 4]`` roadwork boxes in canvas px, mirrored when ``flip``.

    The image is squashed to a square, as ``canvas_transform`` does.
    """
    side = config.multiview.canvas_size
    boxes = np.array([box for _, box in frame.roadwork_boxes], dtype=np.float64).reshape(-1, 4)
    boxes *= np.array([side / config.image_width, side / config.image_height] * 2)
    if flip:
        boxes[:, [0, 2]] = side - boxes[:, [2, 0]]
    return boxes


def _overlap(regions: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``[..., K]`` intersection areas of square regions ``[..., 3]`` (x0, y0, side) with boxes ``[K, 4]``."""
    x0, y0, side = (regions[..., i, None] for i in range(3))
    width = np.clip(np.minimum(boxes[:, 2], x0 + side) - np.maximum(boxes[:, 0], x0), 0, None)
    height = np.clip(np.minimum(boxes[:, 3], y0 + side) - np.maximum(boxes[:, 1], y0), 0, None)
    return width * height


def view_targets(
    frame: DrawnFrame, config: PretrainConfig, patch_grid: int, flip: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets of the (optionally mirrored) canvas's views.

    Per view ``[V, 1 + kinds]``, its loss mask ``[V]`` and per patch ``[V, P]``.

    View 0 (the whole canvas) takes the image's truth. A tile is positive for a kind when it holds at
    least ``tile_positive_fraction`` of one of that kind's boxes, negative when it overlaps no roadwork box,
    and masked out otherwise (a tile holding enough of one object is positive even if it cuts another).
    A patch of a view (``patch_grid`` x ``patch_grid`` per view) is positive when roadwork covers at least
    ``patch_cover`` of it or it holds at least half of an object: the dense signal that teaches the
    backbone what roadwork looks like wherever it is.
    """
    views = config.multiview
    regions = view_regions(views)
    boxes = canvas_boxes(frame, config, flip)
    kinds = np.array([ROADWORK_KINDS.index(kind) for kind, _ in frame.roadwork_boxes], dtype=np.int64)
    box_area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
    share = _overlap(regions, boxes) / box_area  # [V, K]
    holds = share >= config.tile_positive_fraction
    targets = np.zeros((len(regions), 1 + len(ROADWORK_KINDS)), np.float32)
    for kind in np.unique(kinds):
        targets[:, 1 + kind] = holds[:, kinds == kind].any(axis=1)
    targets[:, 0] = holds.any(axis=1)
    targets[0, 0] = frame.label
    targets[0, 1 + kinds] = 1.0
    mask = np.where((share > 0).any(axis=1) & ~holds.any(axis=1), 0.0, 1.0).astype(np.float32)
    mask[0] = 1.0
    cell = regions[:, 2:3] / patch_grid  # [V, 1]
    rows, cols = np.divmod(np.arange(patch_grid * patch_grid), patch_grid)
    patches = np.stack(
        [
            regions[:, 0:1] + cols * cell,
            regions[:, 1:2] + rows * cell,
            np.broadcast_to(cell, (len(regions), patch_grid * patch_grid)),
        ],
        axis=-1,
    )
    inside = _overlap(patches, boxes)  # [V, P, K]
    patch_targets = ((inside / cell[..., None] ** 2 >= config.patch_cover) | (inside / box_area >= 0.5)).any(axis=-1)
    return targets, mask, patch_targets.astype(np.float32)


def _sample(
    frame: DrawnFrame, config: PretrainConfig, transform: torch.nn.Module, patch_grid: int, flip: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    canvas = transform(decode_rgb(frame.jpeg))
    if flip:
        canvas = canvas.flip(-1)
    views, mask, patches = view_targets(frame, config, patch_grid, flip)
    targets = {
        "views": torch.from_numpy(views),
        "mask": torch.from_numpy(mask),
        "patches": torch.from_numpy(patches),
        "daytime": torch.tensor(DAYTIMES.index(frame.daytime)),
        "weather": torch.tensor(WEATHERS.index(frame.weather)),
        "environment": torch.tensor(ENVIRONMENTS.index(frame.environment)),
        "hard_negative": torch.tensor(SCENE_TASKS["hard_negative"].index(frame.hard_negative)),
    }
    return canvas, targets


def _draw_chunk(job: tuple[PretrainConfig, int]) -> list[DrawnFrame]:
    config, chunk = job
    return list(draw_frames(config.demo_config(config.chunk_seed(chunk), config.chunk_images)))


def draw_pool(config: PretrainConfig) -> list[DrawnFrame]:
    """The ``config.pool_images`` scenes of the pool, chunk by chunk in seed order (same config, same pool)."""
    jobs = [(config, chunk) for chunk in range(config.pool_chunks)]
    with tqdm(total=config.pool_chunks * config.chunk_images, desc="draw scene pool", unit="scene") as progress:
        frames: list[DrawnFrame] = []
        if config.pool_workers == 0:
            chunks: Iterator[list[DrawnFrame]] = map(_draw_chunk, jobs)
            for chunk_frames in chunks:
                frames += chunk_frames
                progress.update(len(chunk_frames))
        else:
            with multiprocessing.get_context("spawn").Pool(config.pool_workers) as pool:
                for chunk_frames in pool.imap(_draw_chunk, jobs):
                    frames += chunk_frames
                    progress.update(len(chunk_frames))
    return frames[: config.pool_images]


class ScenePool(Dataset):
    """Canvases of the pool's scenes with their per-view targets, each flipped horizontally with probability 0.5.

    The flip draws from torch's random state, which the DataLoader seeds per worker from its seeded
    generator: the same seed gives the same samples whatever the timing.
    """

    def __init__(self, frames: Sequence[DrawnFrame], config: PretrainConfig, patch_grid: int) -> None:
        self.frames = frames
        self.config = config
        self.patch_grid = patch_grid
        self.transform = canvas_transform(config.multiview.canvas_size, None)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return _sample(
            self.frames[index], self.config, self.transform, self.patch_grid, flip=bool(torch.rand(()) < 0.5)
        )


def sample_views(batch_size: int, config: PretrainConfig, generator: torch.Generator) -> torch.Tensor:
    """``[B, 1 + tiles_per_scene]`` view indices per scene: the global view (0), then distinct random tiles."""
    n_tiles = config.multiview.grid**2
    tiles = torch.rand(batch_size, n_tiles, generator=generator).argsort(dim=1)[:, : config.tiles_per_scene] + 1
    return torch.cat([torch.zeros(batch_size, 1, dtype=torch.long), tiles], dim=1)


def select_views(targets: dict[str, torch.Tensor], view_index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Keep the per-view and per-patch targets and the mask of the sampled views only."""

    def per_view(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.gather(1, view_index.unsqueeze(-1).expand(-1, -1, tensor.shape[-1]))

    return targets | {
        "views": per_view(targets["views"]),
        "patches": per_view(targets["patches"]),
        "mask": targets["mask"].gather(1, view_index),
    }


class MultiTaskHeads(nn.Module):
    """Pre-training heads around a backbone.

    Per-view roadwork heads (present + kinds), a per-patch roadwork head and global-view scene heads.
    """

    def __init__(self, backbone: PreTrainedModel, multiview: MultiViewConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.multiview = multiview
        hidden = backbone.config.hidden_size
        self.roadwork = nn.Linear(hidden, 1 + len(ROADWORK_KINDS))
        self.patch_roadwork = nn.Linear(hidden, 1)
        self.patch_grid = multiview.view_size // int(backbone.config.patch_size)
        self.scene = nn.ModuleDict({task: nn.Linear(hidden, len(classes)) for task, classes in SCENE_TASKS.items()})
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(
        self, canvas: torch.Tensor, view_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cls features ``[B, V, D]`` and patch features ``[B, V, P, D]`` of every view (or of ``view_index`` [B, V]).

        The views are cut as the classifier cuts them.
        """
        views = make_views(canvas, self.multiview)
        if view_index is not None:
            views = views[torch.arange(len(views)).unsqueeze(1), view_index]
        batch, n_views = views.shape[:2]
        pixels = (views.flatten(0, 1) - self.mean) / self.std
        output = self.backbone(pixel_values=pixels)
        patches = output.last_hidden_state[:, -(self.patch_grid**2) :]
        return output.pooler_output.view(batch, n_views, -1), patches.reshape(batch, n_views, self.patch_grid**2, -1)

    def forward(self, canvas: torch.Tensor, view_index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Logits per task: ``views`` [B, V, 1 + kinds], ``patches`` [B, V, P] and the scene tasks [B, C].

        The scene tasks read the global view (index 0).
        """
        features, patches = self.features(canvas, view_index)
        outputs = {"views": self.roadwork(features), "patches": self.patch_roadwork(patches).squeeze(-1)}
        return outputs | {task: head(features[:, 0]) for task, head in self.scene.items()}


def multitask_loss(
    outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], config: PretrainConfig
) -> dict[str, torch.Tensor]:
    """Per-task losses and their weighted ``total``; the per-view losses skip masked views."""
    per_view = F.binary_cross_entropy_with_logits(
        outputs["views"], targets["views"], reduction="none"
    )  # [B, V, 1 + kinds]
    mask = targets["mask"]
    denominator = mask.sum().clamp_min(1.0)
    pos_weight = torch.tensor(config.patch_pos_weight)
    losses = {
        "roadwork": (per_view[..., 0] * mask).sum() / denominator,
        "kinds": (per_view[..., 1:].mean(-1) * mask).sum() / denominator,
        "patches": F.binary_cross_entropy_with_logits(outputs["patches"], targets["patches"], pos_weight=pos_weight),
    } | {task: F.cross_entropy(outputs[task], targets[task]) for task in SCENE_TASKS}
    losses["total"] = (
        losses["roadwork"]
        + config.kinds_weight * losses["kinds"]
        + config.patch_weight * losses["patches"]
        + config.scene_weight * sum(losses[task] for task in SCENE_TASKS)
    )
    return losses


def _accuracies(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, float]:
    logits, truth, mask = outputs["views"][..., 0], targets["views"][..., 0], targets["mask"] > 0
    positive_patches = targets["patches"] > 0
    accuracies = {
        "roadwork_views": ((logits > 0).float() == truth)[mask].float().mean().item(),
        "roadwork_global": ((logits[:, 0] > 0).float() == truth[:, 0]).float().mean().item(),
        "patch_recall": (outputs["patches"][positive_patches] > 0).float().mean().item()
        if positive_patches.any()
        else float("nan"),
        "patch_specificity": (outputs["patches"][~positive_patches] <= 0).float().mean().item(),
    }
    return accuracies | {task: (outputs[task].argmax(1) == targets[task]).float().mean().item() for task in SCENE_TASKS}


def pretrain_backbone(config: PretrainConfig) -> tuple[MultiTaskHeads, ScenePretrainSummary]:
    """Pre-train ``config.base_backbone`` on the scene pool; return it with its heads (eval mode) and a summary."""
    earlier_stages = lineage(config.base_backbone)
    check_fresh_pool(config, earlier_stages)
    torch.manual_seed(config.seed)
    backbone = load_backbone(config.base_backbone, seed=config.seed)
    model = MultiTaskHeads(backbone, config.multiview).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    pool = draw_pool(config)
    loader = DataLoader(
        ScenePool(pool, config, model.patch_grid),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),
        persistent_workers=config.num_workers > 0,
    )
    tile_generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    steps_run, stopped_early = 0, False
    with tqdm(total=config.steps, desc="pretrain demo backbone", unit="step") as progress:
        while steps_run < config.steps and not stopped_early:
            steps_run, stopped_early = _train_epoch(
                model, loader, tile_generator, optimizer, schedule, config, steps_run, started, history, progress
            )
    seconds = time.perf_counter() - started
    summary = ScenePretrainSummary(
        config=config,
        earlier_stages=earlier_stages,
        steps_run=steps_run,
        scenes_seen=steps_run * config.batch_size,
        epochs=steps_run * config.batch_size / len(pool),
        chunk_seeds=(config.chunk_seed(0), config.chunk_seed(config.pool_chunks - 1)),
        seconds=seconds,
        stopped_early=stopped_early,
        history=history,
        probe={},
        hardware=_hardware(),
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return model.eval(), summary


def _train_epoch(
    model: MultiTaskHeads,
    loader: DataLoader,
    tile_generator: torch.Generator,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    config: PretrainConfig,
    steps_run: int,
    started: float,
    history: list[dict[str, float]],
    progress: tqdm,
) -> tuple[int, bool]:
    """One pass over the pool (or up to the last step / the time cap).

    Returns the steps run so far and whether the cap hit.
    """
    window: list[dict[str, float]] = []
    for images, all_targets in loader:
        view_index = sample_views(len(images), config, tile_generator)
        targets = select_views(all_targets, view_index)
        outputs = model(images, view_index)
        losses = multitask_loss(outputs, targets, config)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        schedule.step()
        steps_run += 1
        with torch.no_grad():
            window.append(
                {f"loss_{k}": v.item() for k, v in losses.items()}
                | {f"acc_{k}": v for k, v in _accuracies(outputs, targets).items()}
            )
        progress.update(1)
        if steps_run % config.log_every == 0 or steps_run == config.steps:
            row = {
                key: float(np.nanmean([w[key] for w in window])) for key in window[0]
            }  # patch recall is NaN in a batch without roadwork
            row |= {"step": float(steps_run), "seconds": time.perf_counter() - started, "lr": schedule.get_last_lr()[0]}
            history.append(row)
            window = []
            progress.set_postfix(
                loss=f"{row['loss_total']:.3f}",
                global_acc=f"{row['acc_roadwork_global']:.3f}",
                patch_recall=f"{row['acc_patch_recall']:.3f}",
            )
            logger.info(
                "step %d: loss %.4f, roadwork accuracy per view %.3f, global view %.3f, daytime %.3f, weather %.3f",
                steps_run,
                row["loss_total"],
                row["acc_roadwork_views"],
                row["acc_roadwork_global"],
                row["acc_daytime"],
                row["acc_weather"],
            )
        if steps_run >= config.steps:
            return steps_run, False
        if config.max_minutes is not None and time.perf_counter() - started > 60 * config.max_minutes:
            logger.warning(
                "stopped at step %d of %d: the %.1f-minute cap was reached (the schedule did not finish)",
                steps_run,
                config.steps,
                config.max_minutes,
            )
            return steps_run, True
    return steps_run, False


@torch.no_grad()
def _probe_features(
    model: MultiTaskHeads, frames: Sequence[DrawnFrame], batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Global-view cls features and the multi-view roadwork logit (top-K mean over views) of every frame."""
    transform = canvas_transform(model.multiview.canvas_size, None)
    features, logits = [], []
    model.eval()
    for start in tqdm(range(0, len(frames), batch_size), desc="probe features", unit="batch", leave=False):
        images = torch.stack([transform(decode_rgb(f.jpeg)) for f in frames[start : start + batch_size]])
        view_features, _ = model.features(images)
        features.append(view_features[:, 0].numpy())
        logits.append(aggregate_view_logits(model.roadwork(view_features)[..., 0], model.multiview).numpy())
    return np.concatenate(features), np.concatenate(logits)


def _linear_probe_mcc(features: np.ndarray, labels: np.ndarray, train: np.ndarray) -> float:
    """MCC on the test part of a logistic-regression probe fitted on the train part (frozen features)."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(features[train], labels[train])
    return float(matthews_corrcoef(labels[~train], probe.predict(features[~train])))


def probe_backbone(model: MultiTaskHeads, config: PretrainConfig) -> dict[str, float]:
    """Held-out figures on ``config.probe_images`` scenes drawn with ``config.probe_seed``.

    ``linear_probe_mcc``: the frozen backbone's global-view features under a logistic regression
    (Alain & Bengio 2016) fitted on the first three quarters of the scenes, scored on the last quarter, for
    this backbone and for the backbone it started from (``config.base_backbone``). ``head_mcc``: the
    pre-training roadwork head itself on the last quarter, multi-view (top-K mean), at logit 0.
    """
    frames = list(draw_frames(config.demo_config(config.probe_seed, config.probe_images)))
    labels = np.array([f.label for f in frames])
    train = (
        np.arange(len(frames)) < (3 * len(frames)) // 4
    )  # frames come sequence by sequence: no sequence spans both parts
    initial_backbone = load_backbone(config.base_backbone, seed=config.seed)
    results = {"probe_train_images": float(train.sum()), "probe_test_images": float((~train).sum())}
    initial_features, _ = _probe_features(MultiTaskHeads(initial_backbone, config.multiview), frames)
    results["initial_linear_probe_mcc"] = _linear_probe_mcc(initial_features, labels, train)
    features, logits = _probe_features(model, frames)
    results["linear_probe_mcc"] = _linear_probe_mcc(features, labels, train)
    results["head_mcc"] = float(matthews_corrcoef(labels[~train], (logits[~train] > 0).astype(int)))
    return results


def _hardware() -> dict[str, str]:
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def plot_history(history: Sequence[dict[str, float]], path: Path) -> None:
    """Loss and accuracy curves of the pre-training run (one PNG)."""
    steps = [row["step"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    loss_axis.plot(steps, [row["loss_total"] for row in history], label="total (weighted)", color="black")
    for key in ("roadwork", "kinds", "patches", *SCENE_TASKS):
        loss_axis.plot(steps, [row[f"loss_{key}"] for row in history], label=key)
    for key in ("roadwork_views", "roadwork_global", "patch_recall", "patch_specificity", *SCENE_TASKS):
        accuracy_axis.plot(steps, [row[f"acc_{key}"] for row in history], label=key)
    loss_axis.set(title="training loss (mean per logged window)", xlabel="step", yscale="log")
    accuracy_axis.set(title="training accuracy", xlabel="step", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write_model_card(summary: ScenePretrainSummary, path: Path) -> None:
    """Write ``MODEL_CARD.md`` from the run's own summary.

    It gives the recipe, data, cost, hardware and figures of the run and of the stages before it.
    """
    config = summary.config
    stages = [*summary.earlier_stages, summary.stage()]
    architecture = stages[0].base_backbone
    commands = "\n".join(stage.command for stage in stages)
    made_by = (
        "Made by this command (seeded: same seed and steps give the same weights on the same machine and thread count):"
        if len(stages) == 1
        else f"Made by these {len(stages)} commands, in order "
        "(seeded: same seeds and steps give the same weights on the same machine and thread count); "
        "each stage continues from its `--base-backbone`, which held the stage before's output when it ran "
        "(to replay, copy each output directory there before the next command), and draws a pool of new scenes; "
        "the files of the last command's output directory are the ones shipped here:"
    )
    stage_lines = "\n".join(
        f"- Stage {number}: from `{stage.base_backbone}`, {stage.steps_run} steps, {stage.scenes_seen} scenes shown, "
        f"pool seeds {stage.chunk_seeds[0]}..{stage.chunk_seeds[1]}, {stage.seconds / 60:.1f} min of training, "
        f"finished {stage.finished_at}."
        for number, stage in enumerate(stages, start=1)
    )
    history = summary.history
    count = len(history)
    row_indices = sorted({0, count // 4, count // 2, 3 * count // 4, count - 1}) if history else []
    rows = [history[i] for i in row_indices]
    table = "\n".join(
        f"| {int(r['step'])} | {r['seconds'] / 60:.1f} | {r['loss_total']:.3f} "
        f"| {r['acc_roadwork_views']:.3f} | {r['acc_roadwork_global']:.3f} | {r['acc_patch_recall']:.3f} "
        f"| {r['acc_daytime']:.3f} | {r['acc_weather']:.3f} | {r['acc_environment']:.3f} "
        f"| {r['acc_hard_negative']:.3f} |"
        for r in rows
    )
    probe = summary.probe
    views = config.multiview
    hardware = summary.hardware
    total_steps = sum(stage.steps_run for stage in stages)
    total_minutes = sum(stage.seconds for stage in stages) / 60
    early_stop_note = " (stopped early by the time cap: the schedule did not finish)" if summary.stopped_early else ""
    # In the card below, a backslash at the end of a line joins the next line to it (the card keeps its long lines).
    card = f"""# dinov2-demo: pretrained demo backbone

A {architecture!r}-architecture model (DINOv2, 4 blocks, width 192, patch 14, views of {views.view_size} px),
pre-trained by this project's own code. It stands in for the DINOv2 / DINOv3 weights a user downloads:
pass this directory as `--backbone DIR` and it is read through the same local-directory path as real
weights; the run's ExPLoRA step then adapts it to the run's data. Not a general-purpose image model: it has
only ever seen the procedural scenes of `stage1_core/demo/scenes.py`.

{made_by}

```
{commands}
```

{stage_lines}

## Recipe (this stage; the earlier stages' differences are in their commands)
- This stage's init: `{config.base_backbone}` (seed {config.seed}). AdamW (lr {config.lr}, \
weight decay {config.weight_decay}),
  {config.warmup_steps} warm-up steps then cosine decay over {config.steps} steps, gradient clipping \
{config.grad_clip}, fp32.
- Each step: {config.batch_size} scenes of the pool, each resized to a {views.canvas_size} px canvas \
(flipped horizontally with
  probability 0.5, no other augmentation), cut into the classifier's views (1 global + {views.grid}x{views.grid} tiles,
  overlap {views.overlap}) by `stage1_core.modeling.model.make_views`; the global view and \
{config.tiles_per_scene} random tiles of each
  scene go through the backbone.
- Supervised multi-task objective on the generator's truth (Caruana 1997), densely per view: roadwork present and
  the 5 roadwork kinds for every view (kinds weight {config.kinds_weight}). The global view takes the image's truth; \
a tile
  is positive when it holds at least {config.tile_positive_fraction:.0%} of a roadwork object's box, \
negative when it touches
  none, and left out of the loss when it cuts one. Every patch token of every view is classified too (weight
  {config.patch_weight}, positives weighted {config.patch_pos_weight}): \
positive when roadwork covers at least {config.patch_cover:.0%} of it or it
  holds half of an object. Daytime, weather, environment and hard-negative kind on the global view \
(weight {config.scene_weight} each). The heads are discarded; only the backbone is saved (`save_pretrained`).

## Data
- This stage's pool: {config.pool_images} scenes drawn once in memory by `stage1_core.demo.render.draw_frames` \
({config.image_width}x{config.image_height}
  JPEG, {config.frames_per_sequence} frames per sequence, no distribution shift), \
{config.chunk_images} per generator call, generator
  seeds {summary.chunk_seeds[0]}..{summary.chunk_seeds[1]}; {summary.scenes_seen} scenes shown in all \
({summary.epochs:.1f} epochs). Every dataset the pipeline, its configs and the tests draw uses a seed
  below {FIRST_STREAM_SEED}: no evaluation image was seen.
- Held-out probe set: {config.probe_images} scenes with seed {config.probe_seed}, split by sequence into
  {int(probe.get("probe_train_images", 0))} probe-train / {int(probe.get("probe_test_images", 0))} probe-test images.

## Cost
- All stages: {total_steps} steps in {total_minutes:.1f} minutes of training.
- This stage: {summary.steps_run} steps in {summary.seconds / 60:.1f} minutes of training \
after drawing the pool{early_stop_note};
  finished {summary.finished_at}.
- Hardware: {hardware["machine"]} CPU, {hardware["cpu_count"]} cores (shared), \
{hardware["torch_threads"]} torch threads,
  {config.pool_workers} pool-drawing process(es), {config.num_workers} decoding worker(s); \
torch {hardware["torch"]}, Python {hardware["python"]}.

## Figures
Pre-training curves (training batches, mean per {config.log_every}-step window): `pretraining_curves.png`,
history in `pretrain_summary.json`.

| step | min | loss | roadwork acc (per view) | roadwork acc (global view) \
| roadwork patch recall | daytime | weather | environment | hard negative |
|---|---|---|---|---|---|---|---|---|---|
{table}

Held-out probe (MCC on the probe set's test part):

| backbone | linear probe, global view | pre-training head, multi-view |
|---|---|---|
| this stage's init (`{config.base_backbone}`) | {probe.get("initial_linear_probe_mcc", float("nan")):.3f} | - |
| this backbone | {probe.get("linear_probe_mcc", float("nan")):.3f} | {probe.get("head_mcc", float("nan")):.3f} |
"""
    path.write_text(card)


def save_pretrained_demo(backbone: PreTrainedModel, summary: ScenePretrainSummary, out_dir: Path) -> Path:
    """Write the backbone (``save_pretrained``), ``pretrain_summary.json``, the curves and ``MODEL_CARD.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(out_dir)
    (out_dir / "pretrain_summary.json").write_text(summary.model_dump_json(indent=1))
    if summary.history:
        plot_history(summary.history, out_dir / "pretraining_curves.png")
    write_model_card(summary, out_dir / "MODEL_CARD.md")
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m stage1_core.demo.pretrain OUT_DIR [--seed S] [--steps N] [--minutes M] ...``."""
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(description="Pre-train the dinov2-demo backbone on a stream of generated scenes.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument(
        "--minutes", type=float, default=None, help="wall-clock cap; the run stops early (and says so) when reached"
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--base-backbone",
        default=defaults.base_backbone,
        help="random-init architecture, or an earlier stage's output directory to continue",
    )
    parser.add_argument(
        "--stream-seed-start",
        type=int,
        default=defaults.stream_seed_start,
        help="generator seed of the pool's first chunk (a continuation needs new ones)",
    )
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--chunk-images", type=int, default=defaults.chunk_images)
    parser.add_argument(
        "--pool-images", type=int, default=defaults.pool_images, help="scenes drawn once and reused across epochs"
    )
    parser.add_argument(
        "--pool-workers", type=int, default=defaults.pool_workers, help="processes drawing the pool (0: this one)"
    )
    parser.add_argument("--tiles-per-scene", type=int, default=defaults.tiles_per_scene)
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("WIDTH", "HEIGHT"),
        default=(defaults.image_width, defaults.image_height),
    )
    parser.add_argument("--view-size", type=int, default=defaults.multiview.view_size)
    parser.add_argument(
        "--probe-images", type=int, default=defaults.probe_images, help="held-out scenes for the figures (0: no probe)"
    )
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    args = parser.parse_args(argv)
    configure_logging()
    return run_command("demo.pretrain", lambda: _pretrain(args, argv))


def _pretrain(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    config = config_from_options(
        PretrainConfig,
        seed=args.seed,
        steps=args.steps,
        max_minutes=args.minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        base_backbone=args.base_backbone,
        stream_seed_start=args.stream_seed_start,
        warmup_steps=args.warmup_steps,
        chunk_images=args.chunk_images,
        pool_images=args.pool_images,
        pool_workers=args.pool_workers,
        tiles_per_scene=args.tiles_per_scene,
        image_width=args.image_size[0],
        image_height=args.image_size[1],
        multiview={"view_size": args.view_size},
        probe_images=args.probe_images,
        num_workers=args.num_workers,
        log_every=args.log_every,
    )
    model, summary = pretrain_backbone(config)
    summary.command = "python -m stage1_core.demo.pretrain " + " ".join(argv if argv is not None else sys.argv[1:])
    if config.probe_images > 0:
        summary.probe = probe_backbone(model, config)
        logger.info("held-out probe: %s", json.dumps(summary.probe))
    save_pretrained_demo(model.backbone, summary, args.out_dir)
    logger.info("backbone, summary, curves and model card written to %s", args.out_dir)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
