"""Real-size backbones at 224 px per view: seconds and peak memory per image per stage, FLOPs per image, and what
one training run costs on one H100.

``python -m benchmarks.architectures [--json] [--names dinov2-vits14 ...] [--large] [--images 2]
[--stages inference train explora export] [--config pipelines/configs/gpu.yaml] [--utilisation 0.4]``

Each architecture (a released DINOv2 / DINOv3 configuration at random init: ``load_backbone("<name>-random")``)
runs each stage in a fresh process, on the recipe of ``--config`` (its classifier views, its train and explora
sections, with the batch cut to ``--images``); peak memory is the process's resident high-water mark during the
stage (weights, activations, optimiser state; imports excluded from the growth column):

- ``inference``: the multi-view forward (global view + 3x3 tiles) of ``--images`` canvases;
- ``train``: one optimisation step as the recipe trains (adapters, trainable blocks, global or all views);
- ``explora``: two ExPLoRA steps of the recipe (its crops, heads and masking) on ``max(2, --images)`` images;
- ``export``: the ONNX export with its parity check (once), then ONNX Runtime on ``--images`` 1920x1080 photos.

FLOPs per image: the classifier's counted on the meta device (``benchmarks.flops``), ExPLoRA's counted while
its steps run. ``--large`` adds ViT-L/14 and ViT-L/16 (about 1.2 GB of weights each, minutes per stage here).

The cost table (``--cost``) multiplies the FLOPs per image by the images the recipe processes on NATIX
(6,251 train images, 2,298 test images) + Mapillary Vistas v2.0 (18,000 training images): ExPLoRA's
``max_steps x batch_size``, ``max_epochs`` passes over the train split plus a val_select pass per epoch, and one
pass over val_select, val_calib and val_test for top-K, calibration and evaluation; then divides by the H100's
dense BF16 peak at ``--utilisation``. The split follows the recipe's ``split`` section.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.flops import ASSUMED_UTILISATION, H100_BF16_DENSE_TFLOPS, classifier_flops
from benchmarks.memory import process_rss_mb, reset_peak_rss
from stage1_core.common.logit_map import LogitMap
from stage1_core.export.exporter import ExportConfig, TensorRTConfig, export_onnx
from stage1_core.modeling.adapters import add_adapters
from stage1_core.modeling.backbone import PUBLISHED_ARCHITECTURES, RANDOM_SUFFIX, load_backbone
from stage1_core.modeling.explora import run_explora
from stage1_core.modeling.model import ClassifierConfig, RoadworkClassifier
from stage1_core.modeling.training import set_trainable_blocks
from stage1_core.run.config import RunConfig
from stage1_core.run.settings import load_run_config
from stage1_core.serving.bundle import INPUT_NAME, cpu_session

DEFAULT_NAMES = ["dinov2-vits14", "dinov2-vitb14", "dinov3-vits16", "dinov3-vitb16"]
LARGE_NAMES = ["dinov2-vitl14", "dinov3-vitl16"]
STAGES = ["inference", "train", "explora", "export"]
# Images in the data a real run fuses (dataset cards: NATIX roadwork train / test, Mapillary Vistas v2.0 training).
NATIX_TRAIN, NATIX_TEST, VISTAS_TRAIN = 6251, 2298, 18000


class StageRun(BaseModel):
    """One architecture, one stage."""

    architecture: str
    stage: str
    images: int
    seconds_per_image: float
    peak_rss_mb: float  # resident memory high-water mark of the stage (weights and the process included)
    growth_mb: float  # peak minus the resident memory before the stage
    gflops_per_image: float | None  # None: not counted (the export)
    note: str = ""


def _stage(architecture: str, stage: str, images: int, body: Callable[[], tuple[float, float | None, str]]) -> StageRun:
    gc.collect()
    reset_peak_rss()
    before = process_rss_mb("VmRSS") or 0.0
    seconds, flops, note = body()
    peak = process_rss_mb("VmHWM") or 0.0
    return StageRun(
        architecture=architecture,
        stage=stage,
        images=images,
        seconds_per_image=seconds / images,
        peak_rss_mb=peak,
        growth_mb=peak - before,
        gflops_per_image=None if flops is None else flops / 1e9,
        note=note,
    )


def measure(name: str, config: RunConfig, images: int, stages: list[str]) -> list[StageRun]:
    """Every requested stage of one architecture, in this process."""
    multiview = config.classifier.multiview
    side = multiview.canvas_size
    generator = torch.Generator().manual_seed(0)
    canvases = torch.rand(images, 3, side, side, generator=generator)
    runs: list[StageRun] = []

    def classifier() -> RoadworkClassifier:
        return RoadworkClassifier(load_backbone(f"{name}{RANDOM_SUFFIX}"), ClassifierConfig(multiview=multiview))

    def inference() -> tuple[float, float | None, str]:
        model = classifier().eval()
        started = time.perf_counter()
        with torch.inference_mode():
            model(canvases)
        return time.perf_counter() - started, classifier_flops(name, multiview), f"{multiview.views_per_image} views"

    def train() -> tuple[float, float | None, str]:
        model = classifier()
        set_trainable_blocks(model, config.train.trainable_blocks)
        model.backbone = add_adapters(model.backbone, config.train.adapter, config.train.trainable_blocks)
        model.train()
        views = None
        if config.train.train_views == "global":
            views = multiview.model_copy(update={"aggregation": "global_only"})
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        labels = (torch.arange(images) % 2).float()
        started = time.perf_counter()
        F.binary_cross_entropy_with_logits(model(canvases, views), labels).backward()
        optimizer.step()
        note = f"{config.train.adapter.method}, {config.train.train_views} views"
        return time.perf_counter() - started, classifier_flops(name, multiview, config.train), note

    def explora() -> tuple[float, float | None, str]:
        batch = max(2, images)
        settings = config.explora.model_copy(update={"max_steps": 2, "batch_size": batch, "warmup_fraction": 0.0})
        pictures = [torch.rand(3, side, side, generator=generator) for _ in range(batch)]
        with FlopCounterMode(display=False) as counter:
            _, summary = run_explora(load_backbone(f"{name}{RANDOM_SUFFIX}"), pictures, settings)
        # seconds of the steps (heads and teacher built before); FLOPs of the steps and the final LoRA merge
        note = f"crops {summary.global_crop_size}/{summary.local_crop_size}, {settings.head_out_dim} prototypes"
        return summary.seconds * images / summary.images_seen, counter.get_total_flops() / summary.images_seen, note

    def export() -> tuple[float, float | None, str]:
        model = classifier().eval()
        photos = [torch.randint(0, 256, (3, 1080, 1920), dtype=torch.uint8, generator=generator) for _ in range(2)]
        started = time.perf_counter()
        exported = export_onnx(
            model, LogitMap.from_temperature(1.0), 0.5, photos, ExportConfig(tensorrt=TensorRTConfig(enabled=False))
        )
        export_seconds = time.perf_counter() - started
        session = cpu_session(exported.onnx_bytes)
        batch = np.stack([photos[0].numpy()] * images)
        session.run(None, {INPUT_NAME: batch[:1]})
        started = time.perf_counter()
        session.run(None, {INPUT_NAME: batch})
        parity = exported.metadata.parity[0].max_abs_diff
        note = f"export {export_seconds:.0f} s once, parity {parity:.1e}, ONNX Runtime on 1920x1080 photos"
        return time.perf_counter() - started, None, note

    bodies = {"inference": inference, "train": train, "explora": explora, "export": export}
    for stage in stages:
        runs.append(_stage(name, stage, images, bodies[stage]))
    return runs


class CostRow(BaseModel):
    """GPU hours of one training run of the recipe on one H100, by part."""

    architecture: str
    explora_images: int
    train_images: int
    explora_hours: float
    training_hours: float
    evaluation_hours: float
    total_hours: float


def cost_table(runs: list[StageRun], config: RunConfig, utilisation: float) -> list[CostRow]:
    """Hours on one H100 for each architecture whose inference, train and ExPLoRA FLOPs were measured."""
    fractions = config.split.fractions
    labelled = NATIX_TRAIN + VISTAS_TRAIN
    if config.split.natix_test_as_val_test:
        rest = 1 - fractions["val_test"]
        shares = {split: fractions[split] / rest * labelled for split in ("train", "val_select", "val_calib")}
        shares["val_test"] = NATIX_TEST
    else:
        shares = {split: fraction * (labelled + NATIX_TEST) for split, fraction in fractions.items()}
    rate = H100_BF16_DENSE_TFLOPS * 1e12 * utilisation * 3600  # FLOPs per hour
    flops = {(run.architecture, run.stage): run.gflops_per_image * 1e9 for run in runs if run.gflops_per_image}
    rows = []
    for name in dict.fromkeys(run.architecture for run in runs):
        if not all((name, stage) in flops for stage in ("inference", "train", "explora")):
            continue
        explora_images = config.explora.max_steps * config.explora.batch_size if config.explora_enabled else 0
        train_passes = config.train.max_epochs * shares["train"]
        evaluated = config.train.max_epochs * shares["val_select"] + sum(shares.values()) - shares["train"]
        explora_hours = explora_images * flops[(name, "explora")] / rate
        training_hours = train_passes * flops[(name, "train")] / rate
        evaluation_hours = evaluated * flops[(name, "inference")] / rate
        rows.append(
            CostRow(
                architecture=name,
                explora_images=explora_images,
                train_images=round(train_passes),
                explora_hours=explora_hours,
                training_hours=training_hours,
                evaluation_hours=evaluation_hours,
                total_hours=explora_hours + training_hours + evaluation_hours,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line: the stage table (and the cost table with ``--cost``), or ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--names", nargs="+", default=DEFAULT_NAMES, choices=list(PUBLISHED_ARCHITECTURES))
    parser.add_argument("--large", action="store_true", help=f"add {' and '.join(LARGE_NAMES)}")
    parser.add_argument("--images", type=int, default=2, help="images per stage (ExPLoRA: at least 2)")
    parser.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    parser.add_argument("--config", type=Path, default=Path("pipelines/configs/gpu.yaml"), help="the recipe")
    parser.add_argument("--cost", action="store_true", help="print the cost of one training run on one H100")
    parser.add_argument("--utilisation", type=float, default=ASSUMED_UTILISATION, help="share of the BF16 peak")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # child process: one architecture
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = load_run_config(args.config).config
    if args.measure is not None:
        runs = measure(args.measure, config, args.images, args.stages)
        print(json.dumps([run.model_dump() for run in runs]))
        return 0
    names = args.names + (LARGE_NAMES if args.large else [])
    runs = []
    for name in names:
        for stage in args.stages:  # a fresh process per stage: no stage inherits the memory another freed
            command = ["-m", "benchmarks.architectures", "--measure", name, "--config", str(args.config)]
            command += ["--images", str(args.images), "--stages", stage]
            child = subprocess.run([sys.executable, *command], check=True, capture_output=True, text=True)
            runs += [StageRun.model_validate(item) for item in json.loads(child.stdout.strip().splitlines()[-1])]
    costs = cost_table(runs, config, args.utilisation) if args.cost else []
    if args.json:
        print(json.dumps({"runs": [run.model_dump() for run in runs], "cost": [row.model_dump() for row in costs]}))
        return 0
    print(
        f"recipe {args.config}: {config.classifier.multiview.view_size} px views, {args.images} images per stage, CPU"
    )
    print(
        f"{'architecture':>14} {'stage':>9} {'s/image':>8} {'x first':>7} {'GFLOP/img':>9} {'peak MB':>8} "
        f"{'+MB':>6}  note"
    )
    first = {run.stage: run.seconds_per_image for run in reversed(runs)}
    for run in runs:
        flops = f"{run.gflops_per_image:>9.1f}" if run.gflops_per_image is not None else f"{'-':>9}"
        print(
            f"{run.architecture:>14} {run.stage:>9} {run.seconds_per_image:>8.2f} "
            f"{run.seconds_per_image / first[run.stage]:>7.1f} {flops} {run.peak_rss_mb:>8.0f} {run.growth_mb:>6.0f}  "
            f"{run.note}"
        )
    if costs:
        print(
            f"\none training run on one H100 ({H100_BF16_DENSE_TFLOPS:g} TFLOPS dense BF16 at {args.utilisation:.0%}), "
            f"NATIX + Mapillary Vistas, recipe {args.config}:"
        )
        print(
            f"{'architecture':>14} {'ExPLoRA img':>11} {'train img':>9} {'ExPLoRA h':>9} {'train h':>7} "
            f"{'eval h':>6} {'total h':>7}"
        )
        for row in costs:
            print(
                f"{row.architecture:>14} {row.explora_images:>11} {row.train_images:>9} {row.explora_hours:>9.2f} "
                f"{row.training_hours:>7.2f} {row.evaluation_hours:>6.2f} {row.total_hours:>7.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
