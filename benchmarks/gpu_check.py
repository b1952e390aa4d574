"""One prepared check of the real-scale path on a CUDA machine, within a time budget, written as one JSON.

``python -m benchmarks.gpu_check [--json] [--out gpu_check.json] [--budget-s 480]``

In order, each part skipped (with the reason) when the budget left is too small, each failure recorded without
stopping the others:

1. ``pytest -m gpu``: the GPU tests (bf16, SDPA, torch.compile training; TensorRT; real-size ViTs on CUDA);
2. multi-view inference of ViT-B/14 and ViT-L/14 at 224 px (random init: speed does not depend on the weights),
   bf16 autocast, SDPA, 32 images x 10 views per batch, eager and ``torch.compile``: images/s and the share of
   the card's BF16 peak reached (FLOPs counted by ``benchmarks.flops``);
3. one training step of the recipe (``pipelines/configs/gpu.yaml``: LoRA, all 10 views) at batch 32 x 10 views:
   seconds and peak GPU memory, for ViT-B/14 and ViT-L/14;
4. DDP over all visible GPUs (plain PyTorch DDP, NCCL) of the same step, when there are several;
5. the input pipeline with the GPU decoder (``benchmarks.input_pipeline``: batched nvJPEG next to the CPU paths);
6. ONNX Runtime's CUDA provider on the exported ViT-B/14 serving graph, when onnxruntime-gpu is installed.

Without CUDA it says so and exits 0 (nothing to check here; the CPU figures come from the other benchmarks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from benchmarks import input_pipeline
from benchmarks.flops import H100_BF16_DENSE_TFLOPS, classifier_flops
from stage1_core.common.logit_map import LogitMap
from stage1_core.export.exporter import ExportConfig, TensorRTConfig, export_onnx
from stage1_core.modeling.adapters import add_adapters
from stage1_core.modeling.backbone import RANDOM_SUFFIX, load_backbone
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier
from stage1_core.modeling.training import TrainConfig, set_trainable_blocks
from stage1_core.run.settings import load_run_config
from stage1_core.serving.bundle import INPUT_NAME

ARCHITECTURES = ("dinov2-vitb14", "dinov2-vitl14")
BATCH = 32  # images per step; x 10 views
RECIPE = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "gpu.yaml"
NO_CUDA = "no CUDA device: nothing to check on this machine (python -m benchmarks.architectures measures the CPU)"


class Budget:
    """Seconds left of the check; a part runs only when its estimate fits."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _part(report: dict[str, Any], name: str, budget: Budget, needs_s: float, body: Callable[[], Any]) -> None:
    """Run one part into ``report[name]``: its result, or why it was skipped, or the error it raised."""
    if budget.left() < needs_s:
        report[name] = {"skipped": f"budget: {budget.left():.0f} s left, needs about {needs_s:.0f} s"}
        return
    started = time.monotonic()
    try:
        result = body()
    except Exception as error:  # noqa: BLE001 - one failing part must not hide the others' figures
        result = {"error": f"{type(error).__name__}: {error}"}
    report[name] = {"seconds": round(time.monotonic() - started, 1), **result}
    print(f"gpu_check: {name} done in {report[name]['seconds']} s", file=sys.stderr)


def device_facts() -> dict[str, Any]:
    """The card(s) and the software the figures belong to."""
    properties = torch.cuda.get_device_properties(0)
    return {
        "cards": [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())],
        "memory_gb": round(properties.total_memory / 1e9, 1),
        "bf16": torch.cuda.is_bf16_supported(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
    }


def run_gpu_tests(timeout_s: float) -> dict[str, Any]:
    """``pytest -m gpu`` in a child process: its summary line and exit status."""
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=Path(__file__).resolve().parents[1],
    )
    lines = child.stdout.strip().splitlines()
    return {"exit_status": child.returncode, "summary": lines[-1] if lines else child.stderr[-500:]}


def _classifier(name: str, multiview: MultiViewConfig) -> RoadworkClassifier:
    return RoadworkClassifier(load_backbone(f"{name}{RANDOM_SUFFIX}"), ClassifierConfig(multiview=multiview)).cuda()


def _timed(step: Callable[[], Any], repeats: int) -> float:
    """Seconds per call after two warm-up calls (compilation, cuDNN / SDPA kernel choice)."""
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def inference_speed(name: str, multiview: MultiViewConfig, compiled: bool) -> dict[str, Any]:
    """Images/s of the multi-view forward in bf16, and the share of the BF16 peak it reaches."""
    model = _classifier(name, multiview).eval()
    forward = torch.compile(model) if compiled else model
    canvas = torch.rand(BATCH, 3, multiview.canvas_size, multiview.canvas_size, device="cuda")

    def step() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            forward(canvas)

    seconds = _timed(step, repeats=5)
    images_per_second = BATCH / seconds
    flops = classifier_flops(name, multiview)
    return {
        "images_per_second": round(images_per_second, 1),
        "views_per_second": round(images_per_second * multiview.views_per_image, 1),
        "h100_bf16_peak_share": round(images_per_second * flops / (H100_BF16_DENSE_TFLOPS * 1e12), 3),
    }


def _training_model(name: str, multiview: MultiViewConfig, train: TrainConfig) -> RoadworkClassifier:
    model = _classifier(name, multiview)
    set_trainable_blocks(model, train.trainable_blocks)
    model.backbone = add_adapters(model.backbone, train.adapter, train.trainable_blocks).cuda()
    return model.train()


def _optimisation_step(model: torch.nn.Module, multiview: MultiViewConfig) -> Callable[[], None]:
    """One AdamW step of ``model`` on a batch of BATCH random canvases, bf16 autocast."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    canvas = torch.rand(BATCH, 3, multiview.canvas_size, multiview.canvas_size, device="cuda")
    labels = (torch.arange(BATCH, device="cuda") % 2).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.binary_cross_entropy_with_logits(model(canvas).float(), labels)
        loss.backward()
        optimizer.step()

    return step


def training_step(name: str, multiview: MultiViewConfig, train: TrainConfig) -> dict[str, Any]:
    """Seconds and peak GPU memory of one step of the recipe at BATCH x 10 views (bf16 autocast)."""
    step = _optimisation_step(_training_model(name, multiview, train), multiview)
    torch.cuda.reset_peak_memory_stats()
    seconds = _timed(step, repeats=3)
    flops = classifier_flops(name, multiview, train)
    return {
        "seconds_per_step": round(seconds, 3),
        "images_per_second": round(BATCH / seconds, 1),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
        "h100_bf16_peak_share": round(BATCH / seconds * flops / (H100_BF16_DENSE_TFLOPS * 1e12), 3),
    }


def _ddp_worker(rank: int, world: int, name: str, multiview: MultiViewConfig, train: TrainConfig, out: str) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    model = DistributedDataParallel(_training_model(name, multiview, train), device_ids=[rank])
    step = _optimisation_step(model, multiview)
    seconds = _timed(step, repeats=3)
    if rank == 0:
        Path(out).write_text(json.dumps({"gpus": world, "images_per_second": round(world * BATCH / seconds, 1)}))
    dist.destroy_process_group()


def ddp_step(name: str, multiview: MultiViewConfig, train: TrainConfig, work: Path) -> dict[str, Any]:
    """Images/s of the recipe's step with DDP over every visible GPU (skipped with one GPU)."""
    world = torch.cuda.device_count()
    if world < 2:
        return {"skipped": f"{world} GPU visible: DDP needs several"}
    out = work / "ddp.json"
    mp.spawn(_ddp_worker, args=(world, name, multiview, train, str(out)), nprocs=world, join=True)
    return json.loads(out.read_text())


def onnxruntime_cuda(multiview: MultiViewConfig) -> dict[str, Any]:
    """Images/s of the exported ViT-B/14 serving graph on ONNX Runtime's CUDA provider (fp32, 1920x1080 input)."""
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return {"skipped": "onnxruntime has no CUDA provider (pip install onnxruntime-gpu)"}
    model = RoadworkClassifier(
        load_backbone(f"{ARCHITECTURES[0]}{RANDOM_SUFFIX}"), ClassifierConfig(multiview=multiview)
    )
    photos = [torch.randint(0, 256, (3, 1080, 1920), dtype=torch.uint8) for _ in range(2)]
    exported = export_onnx(
        model.eval(), LogitMap.from_temperature(1.0), 0.5, photos, ExportConfig(tensorrt=TensorRTConfig(enabled=False))
    )
    session = onnxruntime.InferenceSession(exported.onnx_bytes, providers=["CUDAExecutionProvider"])
    batch = torch.stack(photos * 4).numpy()  # 8 photos
    for _ in range(2):
        session.run(None, {INPUT_NAME: batch})
    started = time.perf_counter()
    for _ in range(3):
        session.run(None, {INPUT_NAME: batch})
    return {"images_per_second": round(3 * len(batch) / (time.perf_counter() - started), 1), "graph": "fused fp32"}


def input_pipeline_gpu(work: Path) -> dict[str, Any]:
    """The decoders of ``benchmarks.input_pipeline`` on 2 and 12 MP photos, the batched nvJPEG one included."""
    config = MultiViewConfig(view_size=224)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU decoders per core, as benchmarks.input_pipeline measures them
    try:
        runs = []
        for size in ("1920x1080", "4032x3024"):
            runs += input_pipeline.measure(size, input_pipeline.photos(work, size, 16), config)
    finally:
        torch.set_num_threads(threads)
    return {"decoders": [run.model_dump() for run in runs]}


def main(argv: list[str] | None = None) -> int:
    """Command line; exit 0 without CUDA (nothing to check), else 0 when every part ran, 1 when one failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="where the JSON report is written")
    parser.add_argument("--budget-s", type=float, default=480.0, help="seconds the whole check may take")
    parser.add_argument("--work", type=Path, default=Path("data/benchmark"), help="photos and scratch files")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(json.dumps({"cuda": False, "reason": NO_CUDA}) if args.json else NO_CUDA)
        return 0
    budget = Budget(args.budget_s)
    args.work.mkdir(parents=True, exist_ok=True)
    recipe = load_run_config(RECIPE).config
    multiview, train = recipe.classifier.multiview, recipe.train
    report: dict[str, Any] = {"cuda": True, "device": device_facts(), "batch": f"{BATCH} images x 10 views"}
    _part(report, "gpu_tests", budget, 60, lambda: run_gpu_tests(timeout_s=max(60.0, budget.left() / 4)))
    for name in ARCHITECTURES:
        for compiled in (False, True):
            label = f"inference_{name}_{'compiled' if compiled else 'eager'}"
            _part(
                report,
                label,
                budget,
                40,
                lambda name=name, compiled=compiled: inference_speed(name, multiview, compiled),
            )
        _part(report, f"train_step_{name}", budget, 40, lambda name=name: training_step(name, multiview, train))
    _part(report, "ddp_train_step", budget, 60, lambda: ddp_step(ARCHITECTURES[0], multiview, train, args.work))
    _part(report, "input_pipeline", budget, 60, lambda: input_pipeline_gpu(args.work))
    _part(report, "onnxruntime_cuda", budget, 90, lambda: onnxruntime_cuda(multiview))
    report["budget_left_s"] = round(budget.left(), 1)
    text = json.dumps(report, indent=2)
    args.out.write_text(text)
    print(text if args.json else f"gpu_check: report written to {args.out}")
    failed = [name for name, part in report.items() if isinstance(part, dict) and "error" in part]
    tests_failed = report.get("gpu_tests", {}).get("exit_status", 0) not in (0, 5)  # 5: no test collected
    return 1 if failed or tests_failed else 0


if __name__ == "__main__":
    sys.exit(main())
