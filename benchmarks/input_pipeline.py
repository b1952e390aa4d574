"""Input pipeline: decode + EXIF orientation + canvas + 10 views, images/s per CPU core, per decoder and photo size.

``python -m benchmarks.input_pipeline [--json] [--images 8] [--sizes 1920x1080 4032x3024] [--view 224] [--work DIR]``

Photos are demo street scenes rendered at each size (cached under ``--work``), half of them progressive JPEGs
and half stored turned with an EXIF Orientation tag, as cameras write them. Every path runs what the training
loader runs for one image: decode, orientation, RGB, the antialiased resize to the canvas (604 px for 224 px
views), floats, and the cut into the global view + 3x3 tiles. One thread (``torch.set_num_threads(1)``), so
the figure is per core. Side by side, each with its canvas distance from the path before:

- ``pil_full_float_resize``: the path before, and the reference: Pillow decodes every pixel, the pixels become
  floats and are resized on floats (as the served ONNX graph does);
- ``pil_full``: Pillow full decode, then the datasets' canvas transform (antialiased resize of the 8-bit pixels);
- ``pil_draft``: the default of the training, evaluation and ExPLoRA datasets: libjpeg's DCT-domain downscaling
  to the smallest scale keeping twice the canvas side (``stage1_core.common.draft``), then the 8-bit resize;
- ``torchvision_cpu``: ``torchvision.io.decode_jpeg`` (libjpeg-turbo) on the CPU, full size, then the 8-bit resize;
- ``torchvision_cuda``: ``decode_jpeg(device="cuda")`` on a batch (nvJPEG) with the resize and the cut on the
  GPU; only where CUDA is present, and per batch, not per core: the CPU only reads the files.

Last, the CPU cores it takes to feed one H100 with ViT-B/14 multi-view images at ``ASSUMED_UTILISATION`` of its
BF16 peak, for inference and for a training step of ``pipelines/configs/gpu.yaml`` (FLOPs counted by
``benchmarks.flops``), with the default decoder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from pydantic import BaseModel
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from benchmarks.flops import ASSUMED_UTILISATION, H100_BF16_DENSE_TFLOPS, classifier_flops, images_per_second
from stage1_core.common.draft import draft_box
from stage1_core.common.images import decode_rgb
from stage1_core.data.images import canvas_transform
from stage1_core.demo.config import camera_photos
from stage1_core.demo.writers import generate_demo_dataset
from stage1_core.modeling.model import MultiViewConfig, make_views, resize_to_canvas
from stage1_core.run.settings import load_run_config

DEFAULT_DECODER = "pil_draft"  # what ManifestImageDataset / UnlabeledImageDataset run
REFERENCE = "pil_full_float_resize"
FED_ARCHITECTURE = "dinov2-vitb14"
RECIPE = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "gpu.yaml"  # its train: section


class DecoderRun(BaseModel):
    """One decoder on one photo size."""

    size: str
    decoder: str
    images: int
    images_per_second_per_core: float
    ratio_to_reference: float  # images/s over those of the path before (full decode, float resize)
    canvas_mean_abs_diff: float  # against that path's canvas, floats in [0, 1]
    canvas_max_abs_diff: float


class FeedEstimate(BaseModel):
    """CPU cores one H100 needs, with the default decoder, to be fed at its compute rate."""

    architecture: str
    size: str
    stage: str  # inference (10 views, forward) or training (a step of the gpu.yaml recipe: LoRA, 10 views)
    gflops_per_image: float
    gpu_images_per_second: float
    cpu_images_per_second_per_core: float
    cores: float


def photos(work: Path, size: str, n_images: int) -> list[bytes]:
    """``n_images`` demo photos of ``size`` (WIDTHxHEIGHT) as JPEG bytes, drawn once and cached under ``work``."""
    root = work / f"photos_{size}_{n_images}"
    if not (root / "demo_truth.parquet").exists():
        generate_demo_dataset(root, camera_photos(n_images, size, layout="folder", frames_per_sequence=1))
    return [path.read_bytes() for path in sorted(root.glob("*/*.jpg"))]


def pil_upright(data: bytes, canvas_size: int | None) -> Image.Image:
    """The project's decoder (drafted for ``canvas_size``, or full with None) -> upright RGB: what training reads."""
    return decode_rgb(data, target_size=draft_box(canvas_size))


def float_resize_canvas(data: bytes, canvas_size: int) -> torch.Tensor:
    """The path before: full decode, floats, then the antialiased resize on floats (as the served graph does)."""
    pixels = v2.functional.pil_to_tensor(pil_upright(data, None)).unsqueeze(0).float() / 255.0
    return resize_to_canvas(pixels, canvas_size)


def torchvision_upright(data: bytes) -> torch.Tensor:
    """libjpeg-turbo through torchvision on the CPU, orientation applied: uint8 ``[3, H, W]``."""
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return decode_jpeg(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True)


Decoder = Callable[[list[bytes], int], list[torch.Tensor]]  # JPEG bytes, canvas side -> canvases [1, 3, S, S]


def cuda_canvases(data: list[bytes], canvas_size: int) -> list[torch.Tensor]:
    """One batched nvJPEG decode on the GPU, orientation applied, then the resize to the canvas there."""
    encoded = [torch.frombuffer(bytearray(item), dtype=torch.uint8) for item in data]
    decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device="cuda", apply_exif_orientation=True)
    return [resize_to_canvas(pixels.unsqueeze(0).float() / 255.0, canvas_size) for pixels in decoded]


def decoders(cuda: bool) -> dict[str, Decoder]:
    """The paths compared, by name: the one before (float resize), then each decoder followed by the datasets'
    canvas transform (8-bit resize); the GPU one only with CUDA."""
    table: dict[str, Decoder] = {
        REFERENCE: lambda data, side: [float_resize_canvas(item, side) for item in data],
        "pil_full": lambda data, side: [canvas_transform(side, None)(pil_upright(item, None))[None] for item in data],
        "pil_draft": lambda data, side: [canvas_transform(side, None)(pil_upright(item, side))[None] for item in data],
        "torchvision_cpu": lambda data, side: [
            canvas_transform(side, None)(torchvision_upright(item))[None] for item in data
        ],
    }
    if cuda:
        table["torchvision_cuda"] = cuda_canvases
    return table


def _seconds_per_image(decoder: Decoder, data: list[bytes], config: MultiViewConfig) -> float:
    def run() -> None:
        for canvas in decoder(data, config.canvas_size):
            make_views(canvas, config)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    run()  # warm-up: allocators, lazy initialisation, nvJPEG handles
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) / len(data)


def measure(size: str, data: list[bytes], config: MultiViewConfig) -> list[DecoderRun]:
    """Every decoder on ``data``: time per image (one core; the GPU decoder per batch), and how far its canvases
    lie from those of the PIL full decode."""
    table = decoders(torch.cuda.is_available())
    reference = table[REFERENCE](data, config.canvas_size)
    seconds = {name: _seconds_per_image(decoder, data, config) for name, decoder in table.items()}
    runs = []
    for name, decoder in table.items():
        diffs = [
            (canvas.cpu() - ref).abs() for canvas, ref in zip(decoder(data, config.canvas_size), reference, strict=True)
        ]
        runs.append(
            DecoderRun(
                size=size,
                decoder=name,
                images=len(data),
                images_per_second_per_core=1.0 / seconds[name],
                ratio_to_reference=seconds[REFERENCE] / seconds[name],
                canvas_mean_abs_diff=max(float(diff.mean()) for diff in diffs),
                canvas_max_abs_diff=max(float(diff.max()) for diff in diffs),
            )
        )
    return runs


def feed_estimates(runs: list[DecoderRun], view_size: int) -> list[FeedEstimate]:
    """Cores to feed one H100 with ViT-B/14 multi-view at its compute rate, per photo size and stage."""
    estimates = []
    multiview = MultiViewConfig(view_size=view_size)
    for stage, train in (("inference", None), ("training", load_run_config(RECIPE).config.train)):
        flops = classifier_flops(FED_ARCHITECTURE, multiview, train)
        gpu_rate = images_per_second(flops)
        for run in runs:
            if run.decoder == DEFAULT_DECODER:
                estimates.append(
                    FeedEstimate(
                        architecture=FED_ARCHITECTURE,
                        size=run.size,
                        stage=stage,
                        gflops_per_image=flops / 1e9,
                        gpu_images_per_second=gpu_rate,
                        cpu_images_per_second_per_core=run.images_per_second_per_core,
                        cores=gpu_rate / run.images_per_second_per_core,
                    )
                )
    return estimates


def main(argv: list[str] | None = None) -> int:
    """Command line: one table of decoders per photo size, then the cores an H100 needs (or ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--images", type=int, default=8, help="photos per size")
    parser.add_argument("--sizes", nargs="+", default=["1920x1080", "4032x3024"])
    parser.add_argument("--view", type=int, default=224, help="view side; the canvas holds 3x3 overlapping tiles")
    parser.add_argument("--work", type=Path, default=Path("data/benchmark"), help="where the photos are cached")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = MultiViewConfig(view_size=args.view)
    runs = [run for size in args.sizes for run in measure(size, photos(args.work, size, args.images), config)]
    estimates = feed_estimates(runs, args.view)
    if args.json:
        print(json.dumps({"decoders": [r.model_dump() for r in runs], "feed": [e.model_dump() for e in estimates]}))
        return 0
    print(f"decode + orientation + {config.canvas_size} px canvas + 10 views of {args.view} px, one CPU thread")
    print(f"{'size':>10} {'decoder':>22} {'img/s/core':>10} {'x before':>8} {'canvas mean|d|':>14} {'max|d|':>7}")
    for run in runs:
        print(
            f"{run.size:>10} {run.decoder:>22} {run.images_per_second_per_core:>10.1f} {run.ratio_to_reference:>8.2f} "
            f"{run.canvas_mean_abs_diff:>14.4f} {run.canvas_max_abs_diff:>7.3f}"
        )
    print(
        f"\nCores to feed one H100 ({H100_BF16_DENSE_TFLOPS:g} TFLOPS BF16 at {ASSUMED_UTILISATION:.0%}) with "
        f"{FED_ARCHITECTURE} multi-view, decoder {DEFAULT_DECODER}:"
    )
    print(f"{'size':>10} {'stage':>10} {'GFLOP/img':>9} {'GPU img/s':>9} {'CPU img/s/core':>14} {'cores':>6}")
    for estimate in estimates:
        print(
            f"{estimate.size:>10} {estimate.stage:>10} {estimate.gflops_per_image:>9.0f} "
            f"{estimate.gpu_images_per_second:>9.0f} {estimate.cpu_images_per_second_per_core:>14.1f} "
            f"{estimate.cores:>6.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
