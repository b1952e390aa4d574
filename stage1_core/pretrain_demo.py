"""Pre-train a ``dinov2-demo``-architecture backbone on a stream of generated street scenes.

Why: the demo run cannot download DINOv2 / DINOv3 weights, and a ViT trained from random init on the
demo's 800 images learns too slowly on a CPU to show what the pipeline does. This module makes the
stand-in for the downloaded weights: a small DINOv2-architecture backbone pre-trained by this project's
own code on scenes drawn on the fly by :mod:`stage1_core.demo_data` with seeds disjoint from every
dataset the pipeline or the tests evaluate on (those use seeds below 1,000,000).

Objective: supervised multi-task learning on what the generator knows it drew (Caruana 1997, "Multitask
Learning"): roadwork present and the visible roadwork kinds, scored per view over the global view and
the 3x3 tiles and pooled by top-K mean as multiple-instance learning (the MIL pooling of WELDON,
Durand et al. 2016, which the classifier itself uses), plus daytime, weather, environment and the
hard-negative kind on the global view, so the features also encode the scene and the orange look-alikes.
Only the backbone is kept (``save_pretrained``); the heads are discarded.

``python -m stage1_core.pretrain_demo OUT_DIR [--seed S] [--steps N] [--minutes M]`` writes the backbone,
its training history, a curves figure and ``MODEL_CARD.md``. Same seed and steps, same weights (on the
same machine and thread count). Pass the folder as ``--backbone OUT_DIR`` to the pipeline.

Status: the recipe runs, but a 15-minute CPU run did not yet learn roadwork (held-out probe MCC about
0), so no weights are shipped and ``dinov2-demo`` stays a random-init config until a longer run does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
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
from stage1_core.demo_data import DAYTIMES, ENVIRONMENTS, HARD_NEGATIVE_KINDS, ROADWORK_KINDS, WEATHERS, DemoDataConfig, generate_demo_dataset
from stage1_core.images import AugmentationConfig, canvas_transform
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

    seed: int = Field(0, ge=0, description="random init, augmentation and scene order")
    steps: int = Field(1500, ge=1, description="optimiser steps; the cosine schedule spans them")
    max_minutes: float | None = Field(None, gt=0, description="wall-clock cap: stop early (and say so) when reached")
    batch_size: int = Field(16, ge=1, description="images per step; each gives 1 + grid^2 views")
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = 1.0
    kinds_weight: float = Field(0.5, ge=0, description="weight of the roadwork-kind losses")
    scene_weight: float = Field(0.25, ge=0, description="weight of each scene-tag loss (daytime, weather, ...)")
    base_backbone: str = Field("dinov2-demo", description="randomly initialised architecture to pre-train")
    multiview: MultiViewConfig = MultiViewConfig()
    augmentation: AugmentationConfig = AugmentationConfig(random_erasing=0.0)
    stream_seed_start: int = Field(FIRST_STREAM_SEED, ge=FIRST_STREAM_SEED, description="generator seed of the stream's first chunk")
    chunk_images: int = Field(64, ge=1, description="scenes drawn per generator call (one seed each)")
    chunk_repeats: int = Field(2, ge=1, description="passes over each drawn chunk, each with fresh augmentation: drawing is the bottleneck")
    global_only_fraction: float = Field(
        0.7, ge=0.0, le=1.0, description="first share of the steps on the global view alone (views-per-image times cheaper), then all views"
    )
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


def _targets(data_dir: Path) -> pd.DataFrame:
    """NATIX rows of a generated chunk joined with its truth: image bytes plus every task's target."""
    rows = pd.concat([pd.read_parquet(path) for path in sorted((data_dir / "data").glob("*.parquet"))], ignore_index=True)
    truth = pd.read_parquet(data_dir / "demo_truth.parquet", columns=["id", "split", "object_kinds", "hard_negative_kind"])
    rows = rows.merge(truth, on="id", how="left", validate="one_to_one")
    if rows["object_kinds"].isna().any():
        raise ValueError(f"{data_dir}: {int(rows['object_kinds'].isna().sum())} rows have no demo_truth row; regenerate the chunk")
    return rows.sort_values("id", ignore_index=True)


def _sample(row: pd.Series, transform: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    image = transform(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB"))
    kinds = set(filter(None, row["object_kinds"].split(",")))
    targets = {
        "roadwork": torch.tensor(float(row["label"])),
        "kinds": torch.tensor([float(kind in kinds) for kind in ROADWORK_KINDS]),
        "daytime": torch.tensor(DAYTIMES.index(row["scene_level_tags.daytime"])),
        "weather": torch.tensor(WEATHERS.index(row["scene_level_tags.weather"])),
        "environment": torch.tensor(ENVIRONMENTS.index(row["scene_level_tags.scene_environment"])),
        "hard_negative": torch.tensor(SCENE_TASKS["hard_negative"].index(row["hard_negative_kind"])),
    }
    return image, targets


def draw_scenes(out_dir: Path, seed: int, n_images: int, config: PretrainConfig, test_fraction: float = 0.0) -> pd.DataFrame:
    """Generate ``n_images`` demo scenes with ``seed`` and return their rows with targets.

    The generator's own progress bar is swallowed: the pre-training bar counts scenes already.
    """
    demo = DemoDataConfig(
        seed=seed, n_images=n_images, image_width=config.image_width, image_height=config.image_height,
        frames_per_sequence=config.frames_per_sequence, test_fraction=test_fraction, rows_per_shard=max(n_images, 1),
    )
    with contextlib.redirect_stderr(io.StringIO()):
        generate_demo_dataset(out_dir, demo)
    return _targets(out_dir)


class SceneStream(IterableDataset):
    """An endless, seeded stream of augmented canvases and their targets, drawn chunk by chunk.

    Worker ``w`` of ``n`` draws chunks ``w, w + n, ...``; the DataLoader interleaves workers in a fixed
    order, so the stream is the same for a seed whatever the timing.
    """

    def __init__(self, config: PretrainConfig) -> None:
        self.config = config
        self.transform = canvas_transform(config.multiview.canvas_size, config.augmentation)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        worker = torch.utils.data.get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker else (0, 1)
        for chunk in itertools.count(first, step):
            with tempfile.TemporaryDirectory(prefix="pretrain-chunk-") as tmp:
                rows = draw_scenes(Path(tmp), self.config.chunk_seed(chunk), self.config.chunk_images, self.config)
            for repeat in range(self.config.chunk_repeats):
                for index in np.random.default_rng([self.config.seed, chunk, repeat]).permutation(len(rows)):
                    yield _sample(rows.iloc[int(index)], self.transform)


class MultiTaskHeads(nn.Module):
    """Per-view roadwork heads (present + kinds, MIL-pooled) and global-view scene heads around a backbone."""

    def __init__(self, backbone: PreTrainedModel, multiview: MultiViewConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.multiview = multiview
        hidden = backbone.config.hidden_size
        self.roadwork = nn.Linear(hidden, 1 + len(ROADWORK_KINDS))
        self.scene = nn.ModuleDict({task: nn.Linear(hidden, len(classes)) for task, classes in SCENE_TASKS.items()})
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, canvas: torch.Tensor, multiview: MultiViewConfig | None = None) -> torch.Tensor:
        """``[B, V, D]`` cls features of every view, cut exactly as the classifier cuts them."""
        views = make_views(canvas, multiview or self.multiview)
        batch, n_views = views.shape[:2]
        pixels = (views.flatten(0, 1) - self.mean) / self.std
        return self.backbone(pixel_values=pixels).pooler_output.view(batch, n_views, -1)

    def forward(self, canvas: torch.Tensor, multiview: MultiViewConfig | None = None) -> dict[str, torch.Tensor]:
        """Logits per task: ``roadwork`` [B] (top-K over views), ``roadwork_global`` [B], ``kinds`` [B, 5], scene tasks [B, C].

        ``multiview`` overrides the configured views (the global-only phase of the curriculum).
        """
        multiview = multiview or self.multiview
        features = self.features(canvas, multiview)
        per_view = self.roadwork(features)  # [B, V, 1 + kinds]
        batch, n_views, n_out = per_view.shape
        pooled = aggregate_view_logits(per_view.permute(0, 2, 1).reshape(batch * n_out, n_views), multiview).view(batch, n_out)
        outputs = {"roadwork": pooled[:, 0], "roadwork_global": per_view[:, 0, 0], "kinds": pooled[:, 1:]}
        return outputs | {task: head(features[:, 0]) for task, head in self.scene.items()}


def multitask_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], config: PretrainConfig) -> dict[str, torch.Tensor]:
    """Per-task losses and their weighted ``total``."""
    losses = {
        "roadwork": F.binary_cross_entropy_with_logits(outputs["roadwork"], targets["roadwork"]),
        "roadwork_global": F.binary_cross_entropy_with_logits(outputs["roadwork_global"], targets["roadwork"]),
        "kinds": F.binary_cross_entropy_with_logits(outputs["kinds"], targets["kinds"]),
    } | {task: F.cross_entropy(outputs[task], targets[task]) for task in SCENE_TASKS}
    total = losses["roadwork"] + losses["roadwork_global"] + config.kinds_weight * losses["kinds"]
    losses["total"] = total + config.scene_weight * sum(losses[task] for task in SCENE_TASKS)
    return losses


def _accuracies(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, float]:
    accuracies = {
        "roadwork": ((outputs["roadwork"] > 0).float() == targets["roadwork"]).float().mean().item(),
        "roadwork_global": ((outputs["roadwork_global"] > 0).float() == targets["roadwork"]).float().mean().item(),
        "kinds": ((outputs["kinds"] > 0).float() == targets["kinds"]).float().mean().item(),
    }
    return accuracies | {task: (outputs[task].argmax(1) == targets[task]).float().mean().item() for task in SCENE_TASKS}


def pretrain_backbone(config: PretrainConfig) -> tuple[MultiTaskHeads, ScenePretrainSummary]:
    """Pre-train ``config.base_backbone`` on the scene stream; return it with its heads (eval mode) and a summary."""
    torch.manual_seed(config.seed)
    backbone = load_backbone(config.base_backbone, seed=config.seed)
    model = MultiTaskHeads(backbone, config.multiview).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    loader = DataLoader(
        SceneStream(config), batch_size=config.batch_size, num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),
    )
    global_only = config.multiview.model_copy(update={"aggregation": "global_only"})
    global_steps = int(config.global_only_fraction * config.steps)
    history: list[dict[str, float]] = []
    window: list[dict[str, float]] = []
    started = time.perf_counter()
    steps_run, stopped_early = 0, False
    with tqdm(total=config.steps, desc="pretrain demo backbone", unit="step") as progress:
        for images, targets in loader:
            if steps_run == global_steps:
                logger.info("step %d: from the global view alone to all %d views", steps_run, config.multiview.views_per_image)
            outputs = model(images, global_only if steps_run < global_steps else None)
            losses = multitask_loss(outputs, targets, config)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            schedule.step()
            steps_run += 1
            with torch.no_grad():
                window.append({f"loss_{k}": v.item() for k, v in losses.items()} | {f"acc_{k}": v for k, v in _accuracies(outputs, targets).items()})
            progress.update(1)
            if steps_run % config.log_every == 0 or steps_run == config.steps:
                row = {key: float(np.mean([w[key] for w in window])) for key in window[0]}
                row |= {"step": float(steps_run), "seconds": time.perf_counter() - started, "lr": schedule.get_last_lr()[0]}
                history.append(row)
                window = []
                progress.set_postfix(loss=f"{row['loss_total']:.3f}", acc=f"{row['acc_roadwork']:.3f}")
                logger.info("step %d: loss %.4f, roadwork accuracy %.3f (global view %.3f), kinds %.3f, daytime %.3f, weather %.3f",
                            steps_run, row["loss_total"], row["acc_roadwork"], row["acc_roadwork_global"], row["acc_kinds"], row["acc_daytime"], row["acc_weather"])
            if steps_run >= config.steps:
                break
            if config.max_minutes is not None and time.perf_counter() - started > 60 * config.max_minutes:
                stopped_early = True
                logger.warning("stopped at step %d of %d: the %.1f-minute cap was reached (the schedule did not finish)", steps_run, config.steps, config.max_minutes)
                break
    seconds = time.perf_counter() - started
    n_chunks = math.ceil(steps_run * config.batch_size / (config.chunk_images * config.chunk_repeats))
    summary = ScenePretrainSummary(
        config=config,
        steps_run=steps_run,
        scenes_seen=math.ceil(steps_run * config.batch_size / config.chunk_repeats),
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
def _probe_features(model: MultiTaskHeads, rows: pd.DataFrame, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Global-view cls features and the multi-view roadwork logit of every row (no augmentation)."""
    transform = canvas_transform(model.multiview.canvas_size, None)
    features, logits = [], []
    model.eval()
    for start in tqdm(range(0, len(rows), batch_size), desc="probe features", unit="batch", leave=False):
        images = torch.stack([_sample(row, transform)[0] for _, row in rows.iloc[start : start + batch_size].iterrows()])
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
    (Alain & Bengio 2016) fitted on the generator's train split, scored on its test split, for this
    backbone and for the same architecture at random init. ``head_mcc``: the pre-training roadwork head
    itself, multi-view, at threshold 0.5.
    """
    with tempfile.TemporaryDirectory(prefix="pretrain-probe-") as tmp:
        rows = draw_scenes(Path(tmp), config.probe_seed, config.probe_images, config, test_fraction=0.25)
    labels = rows["label"].to_numpy()
    train = (rows["split"] == "train").to_numpy()
    random_backbone = load_backbone(config.base_backbone, seed=config.seed)
    results = {"probe_train_images": float(train.sum()), "probe_test_images": float((~train).sum())}
    random_features, _ = _probe_features(MultiTaskHeads(random_backbone, config.multiview), rows)
    results["random_init_linear_probe_mcc"] = _linear_probe_mcc(random_features, labels, train)
    features, logits = _probe_features(model, rows)
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
    for key in ("roadwork", "roadwork_global", "kinds", *SCENE_TASKS):
        loss_axis.plot(steps, [row[f"loss_{key}"] for row in history], label=key)
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
        f"| {int(r['step'])} | {r['seconds'] / 60:.1f} | {r['loss_total']:.3f} | {r['acc_roadwork']:.3f} | {r['acc_roadwork_global']:.3f} "
        f"| {r['acc_kinds']:.3f} | {r['acc_daytime']:.3f} | {r['acc_weather']:.3f} | {r['acc_environment']:.3f} | {r['acc_hard_negative']:.3f} |"
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
- Each step: {config.batch_size} scenes, each resized to a {views.canvas_size} px canvas (random resized crop, scale
  {config.augmentation.scale_min}-{config.augmentation.scale_max}, horizontal flip, no colour jitter, no erasing: erasing would
  hide the only roadwork object of a positive), cut into the classifier's views (1 global + {views.grid}x{views.grid} tiles,
  overlap {views.overlap}) by `stage1_core.model.make_views`. Curriculum: the first {config.global_only_fraction:.0%} of the steps
  use the global view alone ({views.views_per_image}x cheaper, large objects first), the rest all {views.views_per_image} views.
- Supervised multi-task objective on the generator's truth (Caruana 1997): roadwork present and the 5 visible roadwork
  kinds, scored per view and pooled by top-{views.top_k} mean as multiple-instance learning (WELDON, Durand et al. 2016),
  plus roadwork present on the global view alone (weight 1 each, kinds {config.kinds_weight}); daytime, weather,
  environment and hard-negative kind on the global view (weight {config.scene_weight} each). The heads are discarded;
  only the backbone is saved (`save_pretrained`).

## Data
- {summary.scenes_seen} scenes drawn on the fly by `generate_demo_dataset` ({config.image_width}x{config.image_height} JPEG,
  {config.frames_per_sequence} frames per sequence, no distribution shift), {config.chunk_images} per generator call, each chunk
  passed {config.chunk_repeats} time(s) with fresh augmentation ({summary.steps_run * config.batch_size} samples), generator
  seeds {summary.chunk_seeds[0]}..{summary.chunk_seeds[1]}. Every dataset the pipeline, its configs and the tests draw uses a seed
  below {FIRST_STREAM_SEED}: no evaluation image was seen.
- Held-out probe set: {config.probe_images} scenes with seed {config.probe_seed} (its generator split by sequence:
  {int(probe.get('probe_train_images', 0))} train / {int(probe.get('probe_test_images', 0))} test).

## Cost
- {summary.steps_run} steps in {summary.seconds / 60:.1f} minutes{' (stopped early by the time cap: the schedule did not finish)' if summary.stopped_early else ''};
  finished {summary.finished_at}.
- Hardware: {summary.hardware['machine']} CPU, {summary.hardware['cpu_count']} cores (shared), {summary.hardware['torch_threads']} torch threads,
  {config.num_workers} scene-drawing worker(s); torch {summary.hardware['torch']}, Python {summary.hardware['python']}.

## Figures
Pre-training curves (training batches, mean per {config.log_every}-step window): `pretraining_curves.png`,
history in `pretrain_summary.json`.

| step | min | loss | roadwork acc (multi-view) | roadwork acc (global) | kinds acc | daytime | weather | environment | hard negative |
|---|---|---|---|---|---|---|---|---|---|
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
    parser.add_argument("--chunk-repeats", type=int, default=defaults.chunk_repeats)
    parser.add_argument("--global-only-fraction", type=float, default=defaults.global_only_fraction)
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"), default=(defaults.image_width, defaults.image_height))
    parser.add_argument("--view-size", type=int, default=defaults.multiview.view_size)
    parser.add_argument("--probe-images", type=int, default=defaults.probe_images, help="held-out scenes for the figures (0: no probe)")
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("stage1_core.demo_data").setLevel(logging.WARNING)  # one line per chunk otherwise
    config = PretrainConfig(
        seed=args.seed, steps=args.steps, max_minutes=args.minutes, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=args.warmup_steps, chunk_images=args.chunk_images, chunk_repeats=args.chunk_repeats,
        global_only_fraction=args.global_only_fraction, image_width=args.image_size[0],
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
