"""Pre-train a ``dinov2-demo``-architecture backbone on a stream of generated street scenes.

Why: the demo run cannot download DINOv2 / DINOv3 weights, and a ViT trained from random init on the
demo's 800 images learns too slowly on a CPU to show what the pipeline does. This module makes the
stand-in for the downloaded weights: a small DINOv2-architecture backbone pre-trained by this project's
own code on scenes drawn on the fly by :mod:`stage1_core.demo_data` with seeds disjoint from every
dataset the pipeline or the tests evaluate on (those use seeds below 1,000,000).

Objective: supervised multi-task learning on what the generator knows it drew (Caruana 1997, "Multitask
Learning"), densely per view: the generator knows every roadwork object's box, so each of the classifier's
views (the global view and the 3x3 tiles, cut exactly as the classifier cuts them) gets its own target,
roadwork present and the roadwork kinds it shows. A tile holding at least half of an object is positive, a
tile touching none is negative, a tile cutting an object is left out of the loss. Per-view targets give
the tiles, where small objects are visible, a direct signal that image-level multiple-instance learning
gives only weakly. Daytime, weather, environment and the hard-negative kind are learnt on the global view,
so the features also encode the scene and the orange look-alikes. Only the backbone is kept
(``save_pretrained``); the heads are discarded.

``python -m stage1_core.pretrain_demo OUT_DIR [--seed S] [--steps N] [--minutes M]`` writes the backbone,
its training history, a curves figure and ``MODEL_CARD.md``. Same seed and steps, same weights (on the
same machine and thread count). Pass the folder as ``--backbone OUT_DIR`` to the pipeline.

"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import math
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
from PIL import Image
from pydantic import BaseModel, Field
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import matthews_corrcoef
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from stage1_core.backbone import load_backbone
from stage1_core.demo_data import DAYTIMES, ENVIRONMENTS, HARD_NEGATIVE_KINDS, ROADWORK_KINDS, WEATHERS, DemoDataConfig, DrawnFrame, draw_frames
from stage1_core.images import canvas_transform
from stage1_core.model import IMAGENET_MEAN, IMAGENET_STD, MultiViewConfig, aggregate_view_logits, make_views

logger = logging.getLogger(__name__)

# Every dataset the pipeline, the configs and the tests draw uses a seed below this: the stream starts here.
FIRST_STREAM_SEED = 1_000_000
SCENE_TASKS: dict[str, tuple[str, ...]] = {
    "daytime": DAYTIMES,
    "weather": WEATHERS,
    "environment": ENVIRONMENTS,
    "hard_negative": ("none", *HARD_NEGATIVE_KINDS),
}


class PretrainConfig(BaseModel):
    """Recipe of the demo backbone's pre-training."""

    seed: int = Field(0, ge=0, description="random init, flips and scene order")
    steps: int = Field(1500, ge=1, description="optimiser steps; the cosine schedule spans them")
    max_minutes: float | None = Field(None, gt=0, description="wall-clock cap: stop early (and say so) when reached")
    batch_size: int = Field(8, ge=1, description="scenes per step; each gives 1 + grid^2 views")
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = Field(50, ge=0)
    grad_clip: float = 1.0
    tile_positive_fraction: float = Field(0.5, gt=0, le=1, description="share of an object's box inside a tile that makes the tile positive")
    kinds_weight: float = Field(0.5, ge=0, description="weight of the per-view roadwork-kind loss")
    scene_weight: float = Field(0.25, ge=0, description="weight of each scene-tag loss (daytime, weather, ...)")
    base_backbone: str = Field("dinov2-demo-random", description="randomly initialised architecture to pre-train")
    multiview: MultiViewConfig = MultiViewConfig()
    stream_seed_start: int = Field(FIRST_STREAM_SEED, ge=FIRST_STREAM_SEED, description="generator seed of the stream's first chunk")
    chunk_images: int = Field(64, ge=1, description="scenes drawn per generator call (one seed each)")
    frames_per_sequence: int = Field(2, ge=1)
    image_width: int = 640
    image_height: int = 480
    probe_seed: int = Field(2 * FIRST_STREAM_SEED - 1, ge=FIRST_STREAM_SEED, description="generator seed of the held-out probe set")
    probe_images: int = Field(800, ge=0, description="held-out scenes for the probe figures (a quarter is its test part); 0: no probe")
    num_workers: int = Field(1, ge=0, description="processes drawing scenes while the main process trains")
    log_every: int = Field(25, ge=1)

    def chunk_seed(self, chunk: int) -> int:
        """Generator seed of the stream's ``chunk``-th call; the probe set's seed is never reached."""
        seed = self.stream_seed_start + chunk
        if seed >= self.probe_seed >= self.stream_seed_start:
            raise ValueError(f"scene stream reached the probe seed {self.probe_seed}: lower steps or raise probe_seed")
        return seed

    def demo_config(self, seed: int, n_images: int, test_fraction: float = 0.0) -> DemoDataConfig:
        return DemoDataConfig(seed=seed, n_images=n_images, image_width=self.image_width, image_height=self.image_height,
                              frames_per_sequence=self.frames_per_sequence, test_fraction=test_fraction)


class ScenePretrainSummary(BaseModel):
    """What a pre-training run did and how good its backbone is on held-out generated scenes."""

    config: PretrainConfig
    steps_run: int
    scenes_seen: int
    chunk_seeds: tuple[int, int]
    seconds: float
    stopped_early: bool
    history: list[dict[str, float]]
    probe: dict[str, float]
    hardware: dict[str, str]
    finished_at: str


def view_targets(frame: DrawnFrame, config: PretrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-view targets ``[V, 1 + kinds]`` (roadwork present, then each kind) and their loss mask ``[V]``.

    View 0 (the whole canvas) takes the image's truth. A tile is positive for a kind when it holds at
    least ``tile_positive_fraction`` of one of that kind's boxes, negative when it overlaps no roadwork box,
    and masked out otherwise. The canvas is the image squashed to a square, as ``canvas_transform`` does.
    """
    views = config.multiview
    scale = np.array([views.canvas_size / config.image_width, views.canvas_size / config.image_height] * 2)
    targets = np.zeros((views.views_per_image, 1 + len(ROADWORK_KINDS)), np.float32)
    mask = np.ones(views.views_per_image, np.float32)
    targets[0, 0] = frame.label
    for kind, _ in frame.roadwork_boxes:
        targets[0, 1 + ROADWORK_KINDS.index(kind)] = 1.0
    for tile in range(views.grid * views.grid):
        x0, y0 = (tile % views.grid) * views.tile_stride, (tile // views.grid) * views.tile_stride
        for kind, box in frame.roadwork_boxes:
            bx0, by0, bx1, by1 = np.asarray(box) * scale
            inside = max(0.0, min(bx1, x0 + views.view_size) - max(bx0, x0)) * max(0.0, min(by1, y0 + views.view_size) - max(by0, y0))
            share = inside / max((bx1 - bx0) * (by1 - by0), 1e-6)
            if share >= config.tile_positive_fraction:
                targets[1 + tile, 0] = targets[1 + tile, 1 + ROADWORK_KINDS.index(kind)] = 1.0
            elif share > 0:
                mask[1 + tile] = 0.0
    mask[1:][targets[1:, 0] > 0] = 1.0  # a tile that holds one object enough is positive even if it cuts another
    return targets, mask


def mirror_views(targets: np.ndarray, mask: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-view targets of the horizontally flipped canvas: the tile columns swap."""
    order = np.concatenate([[0], 1 + np.arange(grid * grid).reshape(grid, grid)[:, ::-1].reshape(-1)])
    return targets[order], mask[order]


def _sample(frame: DrawnFrame, config: PretrainConfig, transform: torch.nn.Module, flip: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    canvas = transform(Image.open(io.BytesIO(frame.jpeg)).convert("RGB"))
    views, mask = view_targets(frame, config)
    if flip:
        canvas = canvas.flip(-1)
        views, mask = mirror_views(views, mask, config.multiview.grid)
    targets = {
        "views": torch.from_numpy(views),
        "mask": torch.from_numpy(mask),
        "daytime": torch.tensor(DAYTIMES.index(frame.daytime)),
        "weather": torch.tensor(WEATHERS.index(frame.weather)),
        "environment": torch.tensor(ENVIRONMENTS.index(frame.environment)),
        "hard_negative": torch.tensor(SCENE_TASKS["hard_negative"].index(frame.hard_negative)),
    }
    return canvas, targets


class SceneStream(IterableDataset):
    """An endless, seeded stream of canvases and their per-view targets, drawn chunk by chunk in memory.

    Every scene is new (no repeats, so no augmentation is needed beyond a seeded horizontal flip).
    Worker ``w`` of ``n`` draws chunks ``w, w + n, ...``; the DataLoader interleaves workers in a fixed
    order, so the stream is the same for a seed whatever the timing.
    """

    def __init__(self, config: PretrainConfig) -> None:
        self.config = config
        self.transform = canvas_transform(config.multiview.canvas_size, None)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        worker = torch.utils.data.get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker else (0, 1)
        for chunk in itertools.count(first, step):
            frames = list(draw_frames(self.config.demo_config(self.config.chunk_seed(chunk), self.config.chunk_images)))
            rng = np.random.default_rng([self.config.seed, chunk])
            for index in rng.permutation(len(frames)):
                yield _sample(frames[int(index)], self.config, self.transform, flip=bool(rng.random() < 0.5))


class MultiTaskHeads(nn.Module):
    """Per-view roadwork heads (present + kinds) and global-view scene heads around a backbone."""

    def __init__(self, backbone: PreTrainedModel, multiview: MultiViewConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.multiview = multiview
        hidden = backbone.config.hidden_size
        self.roadwork = nn.Linear(hidden, 1 + len(ROADWORK_KINDS))
        self.scene = nn.ModuleDict({task: nn.Linear(hidden, len(classes)) for task, classes in SCENE_TASKS.items()})
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, canvas: torch.Tensor) -> torch.Tensor:
        """``[B, V, D]`` cls features of every view, cut exactly as the classifier cuts them."""
        views = make_views(canvas, self.multiview)
        batch, n_views = views.shape[:2]
        pixels = (views.flatten(0, 1) - self.mean) / self.std
        return self.backbone(pixel_values=pixels).pooler_output.view(batch, n_views, -1)

    def forward(self, canvas: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per task: ``views`` [B, V, 1 + kinds] and the scene tasks [B, C] (global view)."""
        features = self.features(canvas)
        return {"views": self.roadwork(features)} | {task: head(features[:, 0]) for task, head in self.scene.items()}


def multitask_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], config: PretrainConfig) -> dict[str, torch.Tensor]:
    """Per-task losses and their weighted ``total``; the per-view losses skip masked views."""
    per_view = F.binary_cross_entropy_with_logits(outputs["views"], targets["views"], reduction="none")  # [B, V, 1 + kinds]
    mask = targets["mask"]
    denominator = mask.sum().clamp_min(1.0)
    losses = {
        "roadwork": (per_view[..., 0] * mask).sum() / denominator,
        "kinds": (per_view[..., 1:].mean(-1) * mask).sum() / denominator,
    } | {task: F.cross_entropy(outputs[task], targets[task]) for task in SCENE_TASKS}
    losses["total"] = losses["roadwork"] + config.kinds_weight * losses["kinds"] + config.scene_weight * sum(losses[task] for task in SCENE_TASKS)
    return losses


def _accuracies(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], multiview: MultiViewConfig) -> dict[str, float]:
    logits, truth, mask = outputs["views"][..., 0], targets["views"][..., 0], targets["mask"] > 0
    image = aggregate_view_logits(logits, multiview)
    accuracies = {
        "roadwork_views": ((logits > 0).float() == truth)[mask].float().mean().item(),
        "roadwork_image": ((image > 0).float() == truth[:, 0]).float().mean().item(),
    }
    return accuracies | {task: (outputs[task].argmax(1) == targets[task]).float().mean().item() for task in SCENE_TASKS}


def pretrain_backbone(config: PretrainConfig) -> tuple[MultiTaskHeads, ScenePretrainSummary]:
    """Pre-train ``config.base_backbone`` on the scene stream; return it with its heads (eval mode) and a summary."""
    torch.manual_seed(config.seed)
    backbone = load_backbone(config.base_backbone, seed=config.seed)
    model = MultiTaskHeads(backbone, config.multiview).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    loader = DataLoader(SceneStream(config), batch_size=config.batch_size, num_workers=config.num_workers)
    history: list[dict[str, float]] = []
    window: list[dict[str, float]] = []
    started = time.perf_counter()
    steps_run, stopped_early = 0, False
    with tqdm(total=config.steps, desc="pretrain demo backbone", unit="step") as progress:
        for images, targets in loader:
            outputs = model(images)
            losses = multitask_loss(outputs, targets, config)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            schedule.step()
            steps_run += 1
            with torch.no_grad():
                window.append({f"loss_{k}": v.item() for k, v in losses.items()} | {f"acc_{k}": v for k, v in _accuracies(outputs, targets, config.multiview).items()})
            progress.update(1)
            if steps_run % config.log_every == 0 or steps_run == config.steps:
                row = {key: float(np.mean([w[key] for w in window])) for key in window[0]}
                row |= {"step": float(steps_run), "seconds": time.perf_counter() - started, "lr": schedule.get_last_lr()[0]}
                history.append(row)
                window = []
                progress.set_postfix(loss=f"{row['loss_total']:.3f}", image_acc=f"{row['acc_roadwork_image']:.3f}")
                logger.info("step %d: loss %.4f, roadwork accuracy per view %.3f, per image %.3f, daytime %.3f, weather %.3f",
                            steps_run, row["loss_total"], row["acc_roadwork_views"], row["acc_roadwork_image"], row["acc_daytime"], row["acc_weather"])
            if steps_run >= config.steps:
                break
            if config.max_minutes is not None and time.perf_counter() - started > 60 * config.max_minutes:
                stopped_early = True
                logger.warning("stopped at step %d of %d: the %.1f-minute cap was reached (the schedule did not finish)", steps_run, config.steps, config.max_minutes)
                break
    seconds = time.perf_counter() - started
    n_chunks = math.ceil(steps_run * config.batch_size / config.chunk_images)
    summary = ScenePretrainSummary(
        config=config,
        steps_run=steps_run,
        scenes_seen=steps_run * config.batch_size,
        chunk_seeds=(config.chunk_seed(0), config.chunk_seed(max(0, n_chunks - 1))),
        seconds=seconds,
        stopped_early=stopped_early,
        history=history,
        probe={},
        hardware=_hardware(),
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return model.eval(), summary


@torch.no_grad()
def _probe_features(model: MultiTaskHeads, frames: Sequence[DrawnFrame], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Global-view cls features and the multi-view roadwork logit (top-K mean over views) of every frame."""
    transform = canvas_transform(model.multiview.canvas_size, None)
    features, logits = [], []
    model.eval()
    for start in tqdm(range(0, len(frames), batch_size), desc="probe features", unit="batch", leave=False):
        images = torch.stack([transform(Image.open(io.BytesIO(f.jpeg)).convert("RGB")) for f in frames[start : start + batch_size]])
        view_features = model.features(images)
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
    this backbone and for the same architecture at random init. ``head_mcc``: the pre-training roadwork
    head itself on the last quarter, multi-view (top-K mean), at logit 0.
    """
    frames = list(draw_frames(config.demo_config(config.probe_seed, config.probe_images)))
    labels = np.array([f.label for f in frames])
    train = np.arange(len(frames)) < (3 * len(frames)) // 4  # frames come sequence by sequence: no sequence spans both parts
    random_backbone = load_backbone(config.base_backbone, seed=config.seed)
    results = {"probe_train_images": float(train.sum()), "probe_test_images": float((~train).sum())}
    random_features, _ = _probe_features(MultiTaskHeads(random_backbone, config.multiview), frames)
    results["random_init_linear_probe_mcc"] = _linear_probe_mcc(random_features, labels, train)
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
    for key in ("roadwork", "kinds", *SCENE_TASKS):
        loss_axis.plot(steps, [row[f"loss_{key}"] for row in history], label=key)
    for key in ("roadwork_views", "roadwork_image", *SCENE_TASKS):
        accuracy_axis.plot(steps, [row[f"acc_{key}"] for row in history], label=key)
    loss_axis.set(title="training loss (mean per logged window)", xlabel="step", yscale="log")
    accuracy_axis.set(title="training accuracy", xlabel="step", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write_model_card(summary: ScenePretrainSummary, path: Path, command: str) -> None:
    """``MODEL_CARD.md``: recipe, data, cost, hardware and figures of the run, from its own summary."""
    config = summary.config
    history = summary.history
    rows = [history[i] for i in sorted({0, len(history) // 4, len(history) // 2, 3 * len(history) // 4, len(history) - 1})] if history else []
    table = "\n".join(
        f"| {int(r['step'])} | {r['seconds'] / 60:.1f} | {r['loss_total']:.3f} | {r['acc_roadwork_views']:.3f} | {r['acc_roadwork_image']:.3f} "
        f"| {r['acc_daytime']:.3f} | {r['acc_weather']:.3f} | {r['acc_environment']:.3f} | {r['acc_hard_negative']:.3f} |"
        for r in rows
    )
    probe = summary.probe
    views = config.multiview
    card = f"""# dinov2-demo: pretrained demo backbone

A {config.base_backbone!r}-architecture model (DINOv2, 4 blocks, width 192, patch 14, views of {views.view_size} px),
pre-trained by this project's own code. It stands in for the DINOv2 / DINOv3 weights a user downloads:
pass this directory as `--backbone DIR` and it is read through the same local-directory path as real
weights; the run's ExPLoRA step then adapts it to the run's data. Not a general-purpose image model: it has
only ever seen the procedural scenes of `stage1_core/demo_data.py`.

Made by (seeded: same seed and steps give the same weights on the same machine and thread count):

```
{command}
```

## Recipe
- Init: `{config.base_backbone}` with seed {config.seed}. AdamW (lr {config.lr}, weight decay {config.weight_decay}),
  {config.warmup_steps} warm-up steps then cosine decay over {config.steps} steps, gradient clipping {config.grad_clip}, fp32.
- Each step: {config.batch_size} new scenes, each resized to a {views.canvas_size} px canvas (flipped horizontally with
  probability 0.5, no other augmentation: no scene is ever shown twice), cut into the classifier's views (1 global +
  {views.grid}x{views.grid} tiles, overlap {views.overlap}) by `stage1_core.model.make_views`.
- Supervised multi-task objective on the generator's truth (Caruana 1997), densely per view: roadwork present and
  the 5 roadwork kinds for every view (kinds weight {config.kinds_weight}). The global view takes the image's truth; a tile
  is positive when it holds at least {config.tile_positive_fraction:.0%} of a roadwork object's box, negative when it touches
  none, and left out of the loss when it cuts one. Daytime, weather, environment and hard-negative kind on the
  global view (weight {config.scene_weight} each). The heads are discarded; only the backbone is saved (`save_pretrained`).

## Data
- {summary.scenes_seen} scenes drawn in memory by `stage1_core.demo_data.draw_frames` ({config.image_width}x{config.image_height} JPEG,
  {config.frames_per_sequence} frames per sequence, no distribution shift), {config.chunk_images} per generator call, generator
  seeds {summary.chunk_seeds[0]}..{summary.chunk_seeds[1]}. Every dataset the pipeline, its configs and the tests draw uses a seed
  below {FIRST_STREAM_SEED}: no evaluation image was seen.
- Held-out probe set: {config.probe_images} scenes with seed {config.probe_seed}, split by sequence into
  {int(probe.get('probe_train_images', 0))} probe-train / {int(probe.get('probe_test_images', 0))} probe-test images.

## Cost
- {summary.steps_run} steps in {summary.seconds / 60:.1f} minutes{' (stopped early by the time cap: the schedule did not finish)' if summary.stopped_early else ''};
  finished {summary.finished_at}.
- Hardware: {summary.hardware['machine']} CPU, {summary.hardware['cpu_count']} cores (shared), {summary.hardware['torch_threads']} torch threads,
  {config.num_workers} scene-drawing worker(s); torch {summary.hardware['torch']}, Python {summary.hardware['python']}.

## Figures
Pre-training curves (training batches, mean per {config.log_every}-step window): `pretraining_curves.png`,
history in `pretrain_summary.json`.

| step | min | loss | roadwork acc (per view) | roadwork acc (per image, top-K views) | daytime | weather | environment | hard negative |
|---|---|---|---|---|---|---|---|---|
{table}

Held-out probe (MCC on the probe set's test part):

| backbone | linear probe, global view | pre-training head, multi-view |
|---|---|---|
| random init (`{config.base_backbone}`) | {probe.get('random_init_linear_probe_mcc', float('nan')):.3f} | - |
| this backbone | {probe.get('linear_probe_mcc', float('nan')):.3f} | {probe.get('head_mcc', float('nan')):.3f} |
"""
    path.write_text(card)


def save_pretrained_demo(backbone: PreTrainedModel, summary: ScenePretrainSummary, out_dir: Path, command: str) -> Path:
    """Write the backbone (``save_pretrained``), ``pretrain_summary.json``, the curves and ``MODEL_CARD.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(out_dir)
    (out_dir / "pretrain_summary.json").write_text(summary.model_dump_json(indent=1))
    if summary.history:
        plot_history(summary.history, out_dir / "pretraining_curves.png")
    write_model_card(summary, out_dir / "MODEL_CARD.md", command)
    return out_dir


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``python -m stage1_core.pretrain_demo OUT_DIR [--seed S] [--steps N] [--minutes M] ...``."""
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(description="Pre-train the dinov2-demo backbone on a stream of generated scenes.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock cap; the run stops early (and says so) when reached")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--chunk-images", type=int, default=defaults.chunk_images)
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"), default=(defaults.image_width, defaults.image_height))
    parser.add_argument("--view-size", type=int, default=defaults.multiview.view_size)
    parser.add_argument("--probe-images", type=int, default=defaults.probe_images, help="held-out scenes for the figures (0: no probe)")
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = PretrainConfig(
        seed=args.seed, steps=args.steps, max_minutes=args.minutes, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=args.warmup_steps, chunk_images=args.chunk_images, image_width=args.image_size[0],
        image_height=args.image_size[1], multiview=MultiViewConfig(view_size=args.view_size),
        probe_images=args.probe_images, num_workers=args.num_workers, log_every=args.log_every,
    )
    model, summary = pretrain_backbone(config)
    if config.probe_images > 0:
        summary.probe = probe_backbone(model, config)
        logger.info("held-out probe: %s", json.dumps(summary.probe))
    command = "python -m stage1_core.pretrain_demo " + " ".join(argv if argv is not None else sys.argv[1:])
    save_pretrained_demo(model.backbone, summary, args.out_dir, command)
    logger.info("backbone, summary, curves and model card written to %s", args.out_dir)


if __name__ == "__main__":
    main()
