"""Reading manifest images into tensors, streamed one file at a time."""

from __future__ import annotations

import os
from typing import Any

import fsspec
import pandas as pd
import torch
from PIL import Image
from pydantic import Field
from torch.utils.data import Dataset
from torchvision.transforms import v2

from stage1_core.common.config import StrictConfig
from stage1_core.common.draft import draft_box
from stage1_core.common.images import decode_rgb

MAX_AUTO_WORKERS = 16  # the cores of one GPU node of the project's cluster (H100: 16 cores)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. a container's CPU set), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class LoaderConfig(StrictConfig):
    """How batches reach the model.

    On a CUDA machine, worker processes decode and cut the images ahead of the model (kept alive between
    epochs), into page-locked memory that the GPU copies from asynchronously: ``benchmarks.input_pipeline``
    measures how many images/s one core prepares against what a GPU consumes. Without CUDA, one process: the
    model's matrix products already use every core, and decoding workers would take them away.
    """

    num_workers: int | None = Field(
        None,
        ge=0,
        description=f"decoding processes; None: 0 without CUDA, else every core but one (at most {MAX_AUTO_WORKERS})",
    )
    prefetch_factor: int = Field(4, ge=1, description="batches each worker prepares ahead (PyTorch's default: 2)")
    pin_memory: bool | None = Field(
        None, description="page-locked batches for asynchronous copies to the GPU; None: when CUDA is present"
    )

    def dataloader_options(self, processes: int = 1) -> dict[str, Any]:
        """Keyword arguments of ``torch.utils.data.DataLoader`` for this machine, for one of ``processes`` training
        processes that share its cores (several GPUs in one machine: the automatic worker count is split)."""
        cuda = torch.cuda.is_available()
        workers = self.num_workers
        if workers is None:
            workers = min(MAX_AUTO_WORKERS, max(1, (available_cores() - processes) // processes)) if cuda else 0
        options: dict[str, Any] = {
            "num_workers": workers,
            "pin_memory": cuda if self.pin_memory is None else self.pin_memory,
        }
        if workers:
            options |= {"prefetch_factor": self.prefetch_factor, "persistent_workers": True}
        return options


class AugmentationConfig(StrictConfig):
    """Training-time augmentation; colour jitter is off by default (colour is a roadwork cue)."""

    scale_min: float = 0.8
    scale_max: float = 1.0
    horizontal_flip: bool = True
    random_erasing: float = 0.25
    color_jitter: float = 0.0


def load_rgb(uri: str, canvas_size: int | None = None) -> Image.Image:
    """Read an image from an fsspec path as the predictor will: :func:`~stage1_core.common.images.decode_rgb`.

    With ``canvas_size``, a JPEG is decoded at the smallest DCT scale that keeps both sides at least twice the
    canvas side (:func:`~stage1_core.common.draft.draft_box`): 4x fewer pixels for a 12 MP photo on a 604 px
    canvas, within the stated canvas tolerance of a full decode.

    Raises:
        ImageDecodeError: the file is no decodable image (validation quarantines such rows before training).
    """
    with fsspec.open(uri, "rb") as handle:
        return decode_rgb(handle.read(), source=uri, target_size=draft_box(canvas_size))


def clamp_unit(image: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1]: antialiased resizing can overshoot by a rounding error."""
    return image.clamp(0.0, 1.0)


def canvas_transform(canvas_size: int, augmentation: AugmentationConfig | None) -> v2.Compose:
    """PIL image -> float tensor ``[3, S, S]`` in [0, 1]; random crops etc. only when ``augmentation`` is given.

    The resize (bilinear, antialiased: the operation the exported ONNX graph performs on floats) runs on the
    8-bit pixels before they become floats: 9x faster for a 2 MP photo on a 604 px canvas, 17 ms instead of
    163 + 238 ms (resize + float conversion) for 12 MP on one core, and within 1/255 of the float resize
    (PyTorch's uint8 kernel rounds once). ``stage1_core.common.draft`` states the tolerance of the whole fast
    path (drafted decode + this resize) against a full decode resized as the served graph does.
    """
    to_float = [v2.ToDtype(torch.float32, scale=True)]
    if augmentation is None:
        return v2.Compose([v2.PILToTensor(), v2.Resize((canvas_size, canvas_size), antialias=True), *to_float])
    steps: list = [
        v2.PILToTensor(),
        v2.RandomResizedCrop(canvas_size, scale=(augmentation.scale_min, augmentation.scale_max), antialias=True),
        *to_float,
    ]
    if augmentation.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    if augmentation.color_jitter > 0:
        jitter = augmentation.color_jitter
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    if augmentation.random_erasing > 0:
        steps.append(v2.RandomErasing(p=augmentation.random_erasing))
    return v2.Compose(steps)


class ManifestImageDataset(Dataset):
    """(image tensor, label) pairs for the rows of a manifest; images are read lazily.

    ``canvas_size``: the side the transform resizes to, so JPEGs are decoded at a reduced scale (see
    :func:`load_rgb`); None decodes every image in full.
    """

    def __init__(self, manifest: pd.DataFrame, transform: v2.Compose, canvas_size: int | None = None) -> None:
        self.uris = manifest["uri"].tolist()
        self.labels = manifest["label"].astype("float32").tolist()
        self.transform = transform
        self.canvas_size = canvas_size

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_rgb(self.uris[index], self.canvas_size)
        return self.transform(image), torch.tensor(self.labels[index])


class UnlabeledImageDataset(Dataset):
    """Image tensors ``[3, side, side]`` in [0, 1] without labels, for self-supervised training."""

    def __init__(self, manifest: pd.DataFrame, side: int) -> None:
        self.uris = manifest["uri"].tolist()
        self.side = side
        self.transform = canvas_transform(side, None)

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_rgb(self.uris[index], self.side))


def load_uint8_images(manifest: pd.DataFrame) -> list[torch.Tensor]:
    """The rows' images as uint8 ``[3, H, W]`` tensors at their own size (what a server receives)."""
    return [v2.functional.pil_to_tensor(load_rgb(uri)) for uri in manifest["uri"]]
