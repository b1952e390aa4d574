"""Reading manifest images into tensors, streamed one file at a time."""

from __future__ import annotations

import fsspec
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from stage1_core.common.config import StrictConfig
from stage1_core.common.images import decode_rgb


class AugmentationConfig(StrictConfig):
    """Training-time augmentation; colour jitter is off by default (colour is a roadwork cue)."""

    scale_min: float = 0.8
    scale_max: float = 1.0
    horizontal_flip: bool = True
    random_erasing: float = 0.25
    color_jitter: float = 0.0


def load_rgb(uri: str) -> Image.Image:
    """Read an image from an fsspec path as the predictor will: :func:`~stage1_core.common.images.decode_rgb`.

    Raises:
        ImageDecodeError: the file is no decodable image (validation quarantines such rows before training).
    """
    with fsspec.open(uri, "rb") as handle:
        return decode_rgb(handle.read(), source=uri)


def clamp_unit(image: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1]: antialiased resizing can overshoot by a rounding error."""
    return image.clamp(0.0, 1.0)


def canvas_transform(canvas_size: int, augmentation: AugmentationConfig | None) -> v2.Compose:
    """PIL image -> float tensor ``[3, S, S]`` in [0, 1]; random crops etc. only when ``augmentation`` is given.

    Resizing happens on the float tensor (bilinear, antialiased), the same operation the exported
    ONNX graph performs, so training, evaluation and serving see the same pixels.
    """
    to_float = [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    if augmentation is None:
        return v2.Compose([*to_float, v2.Resize((canvas_size, canvas_size), antialias=True), v2.Lambda(clamp_unit)])
    steps: list = [
        *to_float,
        v2.RandomResizedCrop(canvas_size, scale=(augmentation.scale_min, augmentation.scale_max), antialias=True),
        v2.Lambda(clamp_unit),
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
    """(image tensor, label) pairs for the rows of a manifest; images are read lazily."""

    def __init__(self, manifest: pd.DataFrame, transform: v2.Compose) -> None:
        self.uris = manifest["uri"].tolist()
        self.labels = manifest["label"].astype("float32").tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(load_rgb(self.uris[index])), torch.tensor(self.labels[index])


class UnlabeledImageDataset(Dataset):
    """Image tensors ``[3, side, side]`` in [0, 1] without labels, for self-supervised training."""

    def __init__(self, manifest: pd.DataFrame, side: int) -> None:
        self.uris = manifest["uri"].tolist()
        self.transform = canvas_transform(side, None)

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_rgb(self.uris[index]))


def load_uint8_images(manifest: pd.DataFrame) -> list[torch.Tensor]:
    """The rows' images as uint8 ``[3, H, W]`` tensors at their own size (what a server receives)."""
    return [v2.functional.pil_to_tensor(load_rgb(uri)) for uri in manifest["uri"]]
