"""Metrics per slice of val_test: scene metadata, object size, and the subnet validator's image views.

A single val_test figure hides where a model fails: at night, in fog, on tiny cones, or on the
crops and distortions the validator applies before a miner sees an image. Every slice is scored
with ``stage1_core.common.metrics.compute_metrics`` (bootstrap intervals, undefined metrics with reasons),
so a slice of one class reports MCC as undefined instead of 0.

Robustness views reproduce the NATIX StreetVision validator's preprocessing
(``natix/utils/image_transforms.py``; ``shared/reference/data-and-evaluator.md``), at 224 px:

* ``L0``: centre crop to a square, resize.
* ``L1``: rotation up to 20 degrees (nearest, as the validator's override of ``RandomRotation``
  drops its interpolation argument), square random resized crop of 20-100 % of the area,
  horizontal and vertical flips (p = 0.5 each).
* ``L2``: L1 plus the DeeperForensics distortions colour saturation, "colour contrast" (a
  brightness scale) and JPEG-like down-up sampling, each at level 0 or 1 (drawn per image).
* ``L3``: L1 plus those three and Gaussian colour noise and Gaussian blur, each at level 0-2.
  (The DeeperForensics table goes to level 5, e.g. down-sampling by 6 and blur kernels of 21;
  the validator draws levels up to 2 only: factors 2-3, kernels 7-9.)
* ``letterbox``: pad to a square (black, centred), resize: the later validators' preprocessing.

Each image's random draws come from ``numpy.random.default_rng([seed, view, row])``: a view of an
image is the same on every run and in any batch order.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from stage1_core.common.config import StrictConfig
from stage1_core.common.metrics import MetricName, MetricsReport, compute_metrics
from stage1_core.data.images import canvas_transform, clamp_unit, load_rgb
from stage1_core.modeling.inference import predict_dataset_logits
from stage1_core.modeling.model import RoadworkClassifier

logger = logging.getLogger(__name__)

ValidatorView = Literal["L0", "L1", "L2", "L3", "letterbox"]
VALIDATOR_VIEWS: tuple[str, ...] = get_args(ValidatorView)
SLICE_METRICS: tuple[MetricName, ...] = ("accuracy", "balanced_accuracy", "mcc", "reward", "auroc", "ece")
MISSING = "(missing)"
UNKNOWN_SIZE = "(not in truth file)"
VALIDATOR_SIZE = 224
# DeeperForensics distortion parameters by level 1, 2 (the validator never draws higher levels).
_DISTORTIONS: dict[str, tuple[float, float]] = {
    "saturation": (0.4, 0.3),  # chroma kept
    "contrast": (0.85, 0.725),  # pixel scale
    "jpeg": (2, 3),  # down-sampling factor
    "noise": (0.001, 0.002),  # variance of the YCbCr noise
    "blur": (7, 9),  # Gaussian kernel size (sigma = size / 6)
}
_VIEW_DISTORTIONS: dict[str, tuple[int, tuple[str, ...]]] = {
    "L2": (1, ("saturation", "contrast", "jpeg")),
    "L3": (2, ("saturation", "contrast", "jpeg", "noise", "blur")),
}
# YCbCr (BT.601, OpenCV scaling) noise -> RGB: rows R, G, B; columns Y, Cb, Cr.
_YCBCR_TO_RGB = torch.tensor([[1.0, 0.0, 1.403], [1.0, -0.344, -0.714], [1.0, 1.773, 0.0]])


class SliceConfig(StrictConfig):
    """Which metadata columns to slice by, where per-image object sizes are, and the bootstrap per slice."""

    columns: tuple[str, ...] = ("daytime", "weather", "scene_environment", "source")
    truth_path: str | None = None  # demo_truth.parquet (demo data): adds the "object_size" slice; None: no such slice
    n_bootstrap: int = Field(200, ge=0)


class RobustnessConfig(StrictConfig):
    """Validator views to score val_test under (empty: none), their seed and the scoring batch size."""

    views: tuple[ValidatorView, ...] = VALIDATOR_VIEWS
    seed: int = 0
    batch_size: int = Field(16, ge=1)


class SliceMetrics(BaseModel):
    """All metrics of one slice (``group`` = the column or "robustness", ``value`` = its value or view)."""

    model_config = ConfigDict(frozen=True)

    group: str
    value: str
    metrics: MetricsReport

    def flat_metrics(self) -> dict[str, float]:
        """``slice_<group>_<value>_<metric>`` for the headline slice metrics that are defined (metric-log names)."""
        key = f"slice_{_safe(self.group)}_{_safe(self.value)}"
        values = {f"{key}_{name}": self.metrics.metric(name).value for name in SLICE_METRICS}
        return {name: float(value) for name, value in values.items() if value is not None} | {
            f"{key}_n": float(self.metrics.n)
        }


def _safe(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", text).strip("_") or "empty"


def object_size_classes(manifest: pd.DataFrame, truth_path: str | Path) -> pd.Series:
    """Per manifest row, the size class of its largest roadwork object from the demo's ``demo_truth.parquet``.

    Joined by id: manifest ``natix:{split}:{id}`` = truth (``split``, ``id``). Rows absent from the
    file are kept as ``"(not in truth file)"`` and counted in a warning.

    Raises:
        FileNotFoundError: the truth file does not exist.
        ValueError: the file lacks the ``id``, ``split`` or ``size_class`` columns.
    """
    path = Path(truth_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"object-size truth file {path} does not exist; set evaluation.slices.truth_path to the "
            "demo dataset's demo_truth.parquet, or to null for no object-size slice"
        )
    truth = pd.read_parquet(path)
    missing = {"id", "split", "size_class"} - set(truth.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}; expected the demo dataset's demo_truth.parquet")
    sizes = pd.Series(
        truth["size_class"].astype(str).to_numpy(),
        index="natix:" + truth["split"].astype(str) + ":" + truth["id"].astype(str),
    )
    joined = manifest["id"].map(sizes)
    if joined.isna().any():
        logger.warning(
            "object size: %d of %d rows are not in %s (sliced as %r)",
            int(joined.isna().sum()),
            len(manifest),
            path,
            UNKNOWN_SIZE,
        )
    return joined.fillna(UNKNOWN_SIZE).rename("object_size")


def slice_table(
    groups: pd.DataFrame,
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    n_bootstrap: int = 200,
    seed: int = 0,
    n_bins: int = 15,
    bootstrap_groups: np.ndarray | None = None,
) -> list[SliceMetrics]:
    """Metrics per value of every column of ``groups`` (one row per prediction); empty strings become "(missing)".
    ``bootstrap_groups``: the resampling group of each prediction (None: rows one by one)."""
    if len(groups) != len(labels):
        raise ValueError(
            f"slices: {len(groups)} metadata rows for {len(labels)} predictions; pass one row per prediction"
        )
    rows = []
    for column in groups.columns:
        values = groups[column].fillna("").astype(str).replace("", MISSING).to_numpy()
        for value in sorted(set(values)):
            member = values == value
            member_groups = None if bootstrap_groups is None else bootstrap_groups[member]
            report = compute_metrics(
                labels[member], probs[member], n_bootstrap=n_bootstrap, seed=seed, n_bins=n_bins, groups=member_groups
            )
            rows.append(SliceMetrics(group=column, value=value, metrics=report))
    return rows


def validator_view(
    image: Image.Image, view: ValidatorView, rng: np.random.Generator, size: int = VALIDATOR_SIZE
) -> torch.Tensor:
    """The image as the validator would send it under ``view``: float ``[3, size, size]`` in [0, 1]."""
    x = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
    height, width = x.shape[1:]
    if view == "L0":
        side = min(height, width)
        return clamp_unit(TF.resize(TF.center_crop(x, [side, side]), [size, size], antialias=True))
    if view == "letterbox":
        side = max(height, width)
        left, top = (side - width) // 2, (side - height) // 2
        padded = TF.pad(x, [left, top, side - width - left, side - height - top], fill=0.0)
        return clamp_unit(TF.resize(padded, [size, size], antialias=True))
    x = TF.rotate(x, float(rng.uniform(-20.0, 20.0)))
    top, left, side = _square_crop(height, width, rng)
    x = clamp_unit(TF.resized_crop(x, top, left, side, side, [size, size], antialias=True))
    if rng.random() < 0.5:
        x = TF.horizontal_flip(x)
    if rng.random() < 0.5:
        x = TF.vertical_flip(x)
    if view in _VIEW_DISTORTIONS:
        max_level, kinds = _VIEW_DISTORTIONS[view]
        for kind in kinds:
            level = int(rng.integers(0, max_level + 1))
            if level:
                x = _distort(x, kind, _DISTORTIONS[kind][level - 1], rng)
    return x


def _square_crop(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """torchvision's RandomResizedCrop parameters with ratio 1 and scale (0.2, 1): 10 tries, then the central square."""
    for _ in range(10):
        side = round(math.sqrt(rng.uniform(0.2, 1.0) * height * width))
        if 0 < side <= min(height, width):
            return int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1)), side
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def _distort(x: torch.Tensor, kind: str, param: float, rng: np.random.Generator) -> torch.Tensor:
    """One DeeperForensics distortion (Jiang et al. 2020) as the validator applies it, on 8-bit levels."""
    if kind == "saturation":
        x = TF.adjust_saturation(x, param)
    elif kind == "contrast":
        x = x * param
    elif kind == "jpeg":
        height, width = x.shape[1:]
        factor = int(param)
        small = TF.resize(x, [height // factor, width // factor], antialias=False)
        x = TF.resize(small, [height, width], antialias=False)
    elif kind == "noise":
        # The validator adds N(0, param) to YCbCr values scaled to [0, 1]
        # through a 255/219 (luma), 255/224 (chroma) rescale.
        std = math.sqrt(param) * torch.tensor([255.0 / 219.0, 255.0 / 224.0, 255.0 / 224.0])
        noise = torch.from_numpy(rng.standard_normal((3, *x.shape[1:]))).float() * std[:, None, None]
        x = x + torch.einsum("rc,chw->rhw", _YCBCR_TO_RGB, noise)
    else:
        size = int(param)
        x = TF.gaussian_blur(x, [size, size], [size / 6.0, size / 6.0])
    return torch.floor(clamp_unit(x) * 255.0) / 255.0  # the validator converts back to uint8 by truncation


class ValidatorViewDataset(Dataset):
    """(canvas, label) of manifest rows seen through one validator view, resized to the classifier's canvas."""

    def __init__(self, manifest: pd.DataFrame, view: ValidatorView, seed: int, canvas_size: int) -> None:
        self.uris = manifest["uri"].tolist()
        self.labels = manifest["label"].astype("float32").tolist()
        self.view, self.seed = view, seed
        self.view_index = VALIDATOR_VIEWS.index(view)
        self.canvas = canvas_transform(canvas_size, None)

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.view_index, index])
        image = validator_view(load_rgb(self.uris[index]), self.view, rng)
        return self.canvas(image), torch.tensor(self.labels[index])


def robustness_logits(
    model: RoadworkClassifier, manifest: pd.DataFrame, config: RobustnessConfig
) -> dict[str, np.ndarray]:
    """Aggregated logits of every manifest row under each configured validator view."""
    canvas_size = model.config.multiview.canvas_size
    return {
        view: predict_dataset_logits(
            model,
            ValidatorViewDataset(manifest, view, config.seed, canvas_size),
            batch_size=config.batch_size,
            desc=f"val_test {view}",
        )
        for view in config.views
    }
