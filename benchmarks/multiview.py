"""Multi-view cost: crop generation and aggregation on top of the backbone, the vectorised crop path, training.

    python -m benchmarks.multiview [--json] [--batch 8] [--threads N] [--rounds 3] [--train-steps 3]

All variants run in one process with the same ``torch.set_num_threads`` and the demo backbone
(``dinov2-demo`` config, views of 112 px, 3x3 tiles with 15% overlap: 10 views per image); speed
does not depend on the weights. Figures, side by side:

- inference images/s of single-view (global view only) and 10-view (``topk_mean`` and ``attention``),
  and of the backbone alone on the 10 pre-cut views; the ratio ``multi / (single / views)`` should be
  at least 0.9 (crops and aggregation cost at most 10% on top of the backbone);
- the crops of a batch by ``make_views`` (one slice per tile position, over the whole batch) against
  a per-image, per-tile Python loop: time and speed ratio, with a check that both give the same tensors;
- one training step (forward, loss, backward, AdamW; the last 2 blocks and the head trainable) for
  single-view and multi-view training: seconds per step and peak memory (CUDA: allocator peak;
  CPU: resident-memory high-water mark over the step, Linux).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from collections.abc import Callable

import torch
from pydantic import BaseModel
from torch.nn import functional as F
from tqdm.auto import tqdm

from benchmarks.command import run_benchmark
from benchmarks.inference import process_rss_mb, reset_peak_rss
from stage1_core.common.cli import configure_logging, positive_int
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier, make_views
from stage1_core.modeling.training import set_trainable_blocks

TARGET_RATIO = 0.9


class TrainingFigure(BaseModel):
    views: str
    seconds_per_step: float
    peak_memory_mb: float | None


class MultiViewBenchmark(BaseModel):
    """Every measured figure and the ratios between them."""

    threads: int
    device: str
    batch: int
    views_per_image: int
    images_per_s: dict[str, float]
    multi_over_single_per_view: dict[str, float]
    crop_overhead: float
    crops_vectorised_ms: float
    crops_loop_ms: float
    crops_speedup: float
    training: list[TrainingFigure]
    meets_target: bool


def _best_seconds(run: Callable[[], object], rounds: int) -> float:
    run()  # warm-up: allocator, kernels
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return min(timings)


def loop_views(canvas: torch.Tensor, config: MultiViewConfig) -> torch.Tensor:
    """The slow reference: one resize per image and one slice per tile, in Python loops."""
    size, stride = config.view_size, config.tile_stride
    images = []
    for image in canvas:
        views = [
            F.interpolate(image.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False, antialias=True)[
                0
            ]
        ]
        for row in range(config.grid):
            for col in range(config.grid):
                views.append(image[:, row * stride : row * stride + size, col * stride : col * stride + size])
        images.append(torch.stack(views))
    return torch.stack(images)


def _training_step(
    model: RoadworkClassifier,
    canvas: torch.Tensor,
    labels: torch.Tensor,
    views: MultiViewConfig,
    optimizer: torch.optim.Optimizer,
) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.binary_cross_entropy_with_logits(model(canvas, views), labels).backward()
    optimizer.step()


def _peak_memory(run: Callable[[], object], device: torch.device) -> float | None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        run()
        return torch.cuda.max_memory_allocated() / 2**20
    if not reset_peak_rss():
        return None
    run()
    return process_rss_mb("VmHWM")


def run(batch: int, threads: int, rounds: int, train_steps: int, seed: int = 0) -> MultiViewBenchmark:
    """Measure every figure of the module docstring."""
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    multiview = MultiViewConfig()
    single = multiview.model_copy(update={"aggregation": "global_only"})
    attention = multiview.model_copy(update={"aggregation": "attention"})
    backbone = load_backbone("dinov2-demo", seed=seed)
    models = {
        "topk_mean": RoadworkClassifier(backbone, ClassifierConfig(multiview=multiview)),
        "attention": RoadworkClassifier(backbone, ClassifierConfig(multiview=attention)),
    }
    for model in models.values():
        model.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    canvas = torch.rand(batch, 3, multiview.canvas_size, multiview.canvas_size, generator=generator).to(device)
    views = multiview.views_per_image
    model = models["topk_mean"]
    pre_cut = make_views(canvas, multiview).flatten(0, 1)
    images_per_s: dict[str, float] = {}
    with torch.inference_mode():
        figures = {
            "single_view": lambda: model(canvas, single),
            "multi_view_topk_mean": lambda: model(canvas),
            "multi_view_attention": lambda: models["attention"](canvas),
            "backbone_only_10_views": lambda: model.head(model.embed(pre_cut)),
        }
        for name, call in tqdm(figures.items(), desc="inference", unit="variant"):
            images_per_s[name] = batch / _best_seconds(call, rounds)
        vectorised = _best_seconds(lambda: make_views(canvas, multiview), rounds)
        looped = _best_seconds(lambda: loop_views(canvas, multiview), rounds)
        if not torch.equal(make_views(canvas, multiview), loop_views(canvas, multiview)):
            raise RuntimeError("make_views and the per-tile loop disagree: the vectorised crop path is wrong")
    per_view = images_per_s["single_view"] / views
    ratios = {name: images_per_s[f"multi_view_{name}"] / per_view for name in ("topk_mean", "attention")}

    training = []
    labels = torch.randint(0, 2, (batch,), generator=generator).float().to(device)
    for name, train_views in tqdm(
        [("single_view", single), ("multi_view", multiview)], desc="training", unit="variant"
    ):
        trained = (
            RoadworkClassifier(load_backbone("dinov2-demo", seed=seed), ClassifierConfig(multiview=multiview))
            .to(device)
            .train()
        )
        set_trainable_blocks(trained, 2)
        optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=1e-4)
        step = functools.partial(_training_step, trained, canvas, labels, train_views, optimizer)
        seconds = _best_seconds(step, train_steps)
        training.append(TrainingFigure(views=name, seconds_per_step=seconds, peak_memory_mb=_peak_memory(step, device)))
    return MultiViewBenchmark(
        threads=threads,
        device=str(device),
        batch=batch,
        views_per_image=views,
        images_per_s=images_per_s,
        multi_over_single_per_view=ratios,
        crop_overhead=images_per_s["backbone_only_10_views"] / images_per_s["multi_view_topk_mean"] - 1.0,
        crops_vectorised_ms=vectorised * 1e3,
        crops_loop_ms=looped * 1e3,
        crops_speedup=looped / vectorised,
        training=training,
        meets_target=min(ratios.values()) >= TARGET_RATIO,
    )


def print_table(result: MultiViewBenchmark) -> None:
    print(
        f"device {result.device}, threads {result.threads}, batch {result.batch}, "
        f"{result.views_per_image} views per image"
    )
    print(f"{'inference':<26}{'img/s':>9}")
    for name, value in result.images_per_s.items():
        print(f"{name:<26}{value:>9.2f}")
    for name, ratio in result.multi_over_single_per_view.items():
        print(f"multi ({name}) / (single / {result.views_per_image}): {ratio:.3f}  (target >= {TARGET_RATIO})")
    print(f"crops + aggregation over the backbone alone: {result.crop_overhead:+.1%}")
    print(
        f"crops of the batch: vectorised {result.crops_vectorised_ms:.2f} ms, "
        f"per-image per-tile loop {result.crops_loop_ms:.2f} ms: {result.crops_speedup:.1f}x"
    )
    print(f"{'training step':<26}{'s/step':>9}{'peak MB':>10}")
    for figure in result.training:
        peak = "-" if figure.peak_memory_mb is None else f"{figure.peak_memory_mb:.0f}"
        print(f"{figure.views:<26}{figure.seconds_per_step:>9.3f}{peak:>10}")
    single, multi = result.training
    print(f"multi-view / single-view training step: {multi.seconds_per_step / single.seconds_per_step:.2f}x time")
    print(f"target met: {result.meets_target}")


def main(argv: list[str] | None = None) -> int:
    """Command line; the exit-code contract of ``stage1_core.common.cli`` (0 when measured)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object of the figures")
    parser.add_argument("--batch", type=positive_int, default=8, help="images per call")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=torch.get_num_threads(),
        help="intra-op threads, the same for every variant",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=5, help="timed repetitions per inference figure (the best counts)"
    )
    parser.add_argument(
        "--train-steps", type=positive_int, default=3, help="timed training steps per variant (the best counts)"
    )
    args = parser.parse_args(argv)
    configure_logging(logging.WARNING)

    return run_benchmark(
        "benchmarks.multiview",
        lambda: run(args.batch, args.threads, args.rounds, args.train_steps),
        print_table,
        args.json,
    )


if __name__ == "__main__":
    sys.exit(main())
