"""Batch scoring of manifest rows with a trained classifier (multi-view, no augmentation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from stage1_core.data.images import ManifestImageDataset, canvas_transform
from stage1_core.modeling.model import RoadworkClassifier


def manifest_canvases(model: RoadworkClassifier, manifest: pd.DataFrame) -> ManifestImageDataset:
    """The rows' images as ``model``'s canvases (no augmentation), with their labels."""
    canvas_size = model.config.multiview.canvas_size
    return ManifestImageDataset(manifest, canvas_transform(canvas_size, None), canvas_size)


def predict_logits(
    model: RoadworkClassifier, manifest: pd.DataFrame, *, batch_size: int = 16, desc: str = "predict"
) -> np.ndarray:
    """Aggregated logits, one per manifest row, in row order."""
    return predict_dataset_logits(model, manifest_canvases(model, manifest), batch_size=batch_size, desc=desc)


@torch.inference_mode()
def predict_dataset_logits(
    model: RoadworkClassifier, dataset: Dataset, *, batch_size: int = 16, desc: str = "predict"
) -> np.ndarray:
    """Aggregated logits of a dataset of (canvas, label) pairs, in order (e.g. transformed images).

    Each canvas is ``[3, S, S]`` with values in [0, 1].
    """
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    outputs = [model(images).float() for images, _ in tqdm(loader, desc=desc, unit="batch")]
    return torch.cat(outputs).numpy() if outputs else np.zeros(0, dtype=np.float32)


@torch.inference_mode()
def predict_global_and_full_logits(
    model: RoadworkClassifier, manifest: pd.DataFrame, *, batch_size: int = 16, desc: str = "predict"
) -> tuple[np.ndarray, np.ndarray]:
    """The global view's logit and the aggregated multi-view logit of every row.

    Both come from one backbone pass over all views.
    """
    model.eval()
    loader = DataLoader(manifest_canvases(model, manifest), batch_size=batch_size, shuffle=False)
    global_logits, full_logits = [], []
    for images, _ in tqdm(loader, desc=desc, unit="batch"):
        full, global_view = model.logits_and_global(images)
        global_logits.append(global_view.float())
        full_logits.append(full.float())
    if not global_logits:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
    return torch.cat(global_logits).numpy(), torch.cat(full_logits).numpy()
