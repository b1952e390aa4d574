"""The input pipeline: JPEG decoding at a reduced DCT scale for a small canvas (the canvas stays within the stated
tolerance of the canvas of a full decode, on real-resolution photos, progressive and baseline, EXIF-turned or not),
and the DataLoader settings that feed a GPU."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from stage1_core.common.draft import (
    CANVAS_MAX_TOLERANCE,
    CANVAS_MEAN_TOLERANCE,
    CANVAS_P999_TOLERANCE,
    DRAFT_MARGIN,
    draft_box,
)
from stage1_core.common.images import decode_opened, open_image
from stage1_core.data import images
from stage1_core.data.images import (
    MAX_AUTO_WORKERS,
    LoaderConfig,
    ManifestImageDataset,
    canvas_transform,
    load_rgb,
)
from stage1_core.modeling.model import resize_to_canvas


def _photos(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.jpg"))


@pytest.mark.parametrize("size", ["1920x1080", "4032x3024"])
def test_fast_canvas_stays_within_the_stated_tolerance_of_a_full_decode(
    real_resolution_photos: dict[str, Path], size: str
) -> None:
    """The datasets' canvas (drafted decode, 8-bit resize) against the full decode resized on floats as the served
    graph does, on canvases 604 (224 px views on a 3x3 grid) and 224 (the global view alone)."""
    width, height = (int(side) for side in size.split("x"))
    bounds = (CANVAS_MEAN_TOLERANCE, CANVAS_P999_TOLERANCE, CANVAS_MAX_TOLERANCE)
    drafted_at = set()
    for path in _photos(real_resolution_photos[size]):
        full = load_rgb(str(path))
        assert sorted(full.size) == sorted((width, height)) and full.size[0] >= full.size[1], "upright, EXIF applied"
        pixels = v2.functional.pil_to_tensor(full).unsqueeze(0).float() / 255.0
        for canvas_size in (604, 224):
            drafted = load_rgb(str(path), canvas_size)
            assert min(drafted.size) >= DRAFT_MARGIN * canvas_size or drafted.size == full.size
            assert drafted.size[0] >= drafted.size[1], "the drafted image is turned upright too"
            if drafted.size != full.size:
                drafted_at.add(canvas_size)
            reference = resize_to_canvas(pixels, canvas_size)[0]
            difference = (canvas_transform(canvas_size, None)(drafted) - reference).abs().flatten()
            stats = (float(difference.mean()), float(torch.quantile(difference[::3], 0.999)), float(difference.max()))
            assert all(value <= bound for value, bound in zip(stats, bounds, strict=True)), (path.name, stats)
    assert drafted_at == {side for side in (604, 224) if min(width, height) >= 2 * DRAFT_MARGIN * side}, (
        "drafted exactly where a smaller DCT scale still keeps the margin"
    )


def test_only_jpegs_are_drafted_and_modes_are_kept() -> None:
    for fmt, mode in (("PNG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK")):
        buffer = io.BytesIO()
        Image.new(mode, (1600, 1200), 90).save(buffer, format=fmt)
        image = open_image(buffer.getvalue(), fmt)
        decoded = decode_opened(image, fmt, draft_box(150))  # sides >= 300: a quarter
        assert image.mode == mode, "drafting decodes in the file's own mode; to_rgb converts it afterwards"
        assert decoded.size == ((1600, 1200) if fmt == "PNG" else (400, 300)), (fmt, mode, decoded.size)
    assert decode_opened(open_image(buffer.getvalue(), fmt), fmt, draft_box(None)).size == (1600, 1200)


def test_the_training_datasets_decode_at_the_canvas_scale(real_resolution_photos: dict[str, Path]) -> None:
    """A 12 MP photo on a 604 px canvas decodes at half scale (4x fewer pixels); the tensors keep the canvas size."""
    path = _photos(real_resolution_photos["4032x3024"])[0]
    with Image.open(path) as opened:
        stored = opened.size
    drafted = load_rgb(str(path), 604)
    assert sorted(drafted.size) == sorted(side // 2 for side in stored)
    upright = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    assert torch.equal(canvas_transform(604, None)(load_rgb(str(path))), canvas_transform(604, None)(upright)), (
        "without a canvas size the decode is the full one"
    )


def test_loader_defaults_feed_a_gpu_and_keep_a_cpu_machine_to_one_process(monkeypatch) -> None:
    assert LoaderConfig().dataloader_options() == {"num_workers": 0, "pin_memory": False}, "no CUDA here"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(images, "available_cores", lambda: 16)
    assert LoaderConfig().dataloader_options() == {
        "num_workers": 15,
        "pin_memory": True,
        "prefetch_factor": 4,
        "persistent_workers": True,
    }, "every core but the main process's"
    monkeypatch.setattr(images, "available_cores", lambda: 96)
    assert LoaderConfig().dataloader_options()["num_workers"] == MAX_AUTO_WORKERS
    assert LoaderConfig(num_workers=0, pin_memory=False).dataloader_options() == {"num_workers": 0, "pin_memory": False}


def test_decoding_workers_yield_the_batches_of_one_process(real_resolution_photos: dict[str, Path]) -> None:
    manifest = pd.DataFrame({"uri": [str(path) for path in _photos(real_resolution_photos["4032x3024"])], "label": 1})
    dataset = ManifestImageDataset(manifest, canvas_transform(224, None), 224)
    batches = {
        workers: torch.cat([batch for batch, _ in DataLoader(dataset, batch_size=2, **options)])
        for workers, options in (
            (0, LoaderConfig().dataloader_options()),
            (2, LoaderConfig(num_workers=2, prefetch_factor=1).dataloader_options()),
        )
    }
    assert batches[0].shape == (len(manifest), 3, 224, 224) and torch.equal(batches[0], batches[2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_gpu_decoder_canvas_stays_within_the_stated_tolerance(real_resolution_photos: dict[str, Path]) -> None:
    """Batched nvJPEG (torchvision, orientation applied) resized on the GPU, against the full decode on the CPU."""
    paths = _photos(real_resolution_photos["4032x3024"])
    encoded = [torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8) for path in paths]
    decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device="cuda", apply_exif_orientation=True)
    bounds = (CANVAS_MEAN_TOLERANCE, CANVAS_P999_TOLERANCE, CANVAS_MAX_TOLERANCE)
    for path, pixels in zip(paths, decoded, strict=True):
        gpu = resize_to_canvas(pixels.unsqueeze(0).float() / 255.0, 604)[0].cpu()
        full = v2.functional.pil_to_tensor(load_rgb(str(path))).unsqueeze(0).float() / 255.0
        difference = (gpu - resize_to_canvas(full, 604)[0]).abs().flatten()
        stats = (float(difference.mean()), float(torch.quantile(difference[::3], 0.999)), float(difference.max()))
        assert all(value <= bound for value, bound in zip(stats, bounds, strict=True)), (path.name, stats)
