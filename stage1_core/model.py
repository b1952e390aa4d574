"""The roadwork classifier: a DINOv2/DINOv3 backbone, a head, and multi-view inference.

Small roadwork objects vanish when a whole street photo is resized to the backbone's input
size, so the model also looks at 3x3 overlapping tiles of a larger canvas. The view scores are
pooled by top-K mean (the MIL pooling of CHOWDER/WELDON), which keeps one confident tile from
being averaged away; calibration then happens after aggregation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, PreTrainedModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MultiViewConfig(BaseModel):
    """Views per image: one global view plus a ``grid`` x ``grid`` set of overlapping tiles."""

    view_size: int = Field(112, description="side of every view fed to the backbone, in px (a multiple of the patch size)")
    grid: int = 3
    overlap: float = Field(0.15, ge=0.0, lt=1.0)
    aggregation: Literal["topk_mean", "mean", "global_only"] = "topk_mean"
    top_k: int = 3
    chunk_size: int = Field(64, description="views per backbone forward pass: bounds memory")

    @property
    def tile_stride(self) -> int:
        return max(1, round(self.view_size * (1 - self.overlap)))

    @property
    def canvas_size(self) -> int:
        """Side of the square canvas the tiles are cut from."""
        return self.view_size + (self.grid - 1) * self.tile_stride

    @property
    def views_per_image(self) -> int:
        return 1 if self.aggregation == "global_only" else 1 + self.grid * self.grid


class ClassifierConfig(BaseModel):
    """Head and multi-view settings of the classifier."""

    dropout: float = 0.3
    multiview: MultiViewConfig = MultiViewConfig()


def make_views(canvas: torch.Tensor, config: MultiViewConfig) -> torch.Tensor:
    """Cut the global view and all tiles of a batch in one tensor operation.

    Args:
        canvas: ``[B, C, S, S]`` with ``S == config.canvas_size``.

    Returns:
        ``[B, V, C, view, view]``: view 0 is the whole canvas resized, views 1.. the tiles row by row.
    """
    size = config.view_size
    global_view = F.interpolate(canvas, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if config.aggregation == "global_only":
        return global_view.unsqueeze(1)
    batch, channels = canvas.shape[:2]
    tiles = canvas.unfold(2, size, config.tile_stride).unfold(3, size, config.tile_stride)
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(batch, config.grid * config.grid, channels, size, size)
    return torch.cat([global_view.unsqueeze(1), tiles], dim=1)


def aggregate_view_logits(view_logits: torch.Tensor, config: MultiViewConfig) -> torch.Tensor:
    """Pool ``[B, V]`` view logits to one logit per image."""
    if config.aggregation == "global_only" or view_logits.shape[1] == 1:
        return view_logits[:, 0]
    if config.aggregation == "mean":
        return view_logits.mean(dim=1)
    k = min(config.top_k, view_logits.shape[1])
    return view_logits.topk(k, dim=1).values.mean(dim=1)


class RoadworkClassifier(nn.Module):
    """Backbone + linear head, scored over multiple views; input is an RGB canvas in [0, 1]."""

    def __init__(self, backbone: PreTrainedModel, config: ClassifierConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(backbone.config.hidden_size, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def embed(self, views: torch.Tensor) -> torch.Tensor:
        """Backbone cls features of ``[N, C, v, v]`` views, in chunks of ``chunk_size``."""
        views = (views - self.mean) / self.std
        if torch.compiler.is_exporting():  # an exported graph keeps the batch dimension dynamic: no Python-level chunking
            return self.backbone(pixel_values=views).pooler_output
        chunks = views.split(self.config.multiview.chunk_size)
        return torch.cat([self.backbone(pixel_values=chunk).pooler_output for chunk in chunks])

    def view_logits(self, canvas: torch.Tensor, multiview: MultiViewConfig | None = None) -> torch.Tensor:
        """``[B, V]`` logits, one per view (``multiview`` overrides the configured views, e.g. global-only training)."""
        views = make_views(canvas, multiview or self.config.multiview)
        batch, n_views = views.shape[:2]
        features = self.embed(views.flatten(0, 1))
        return self.head(features).view(batch, n_views)

    def forward(self, canvas: torch.Tensor, multiview: MultiViewConfig | None = None) -> torch.Tensor:
        """One aggregated logit per image."""
        multiview = multiview or self.config.multiview
        return aggregate_view_logits(self.view_logits(canvas, multiview), multiview)

    def save(self, directory: Path) -> None:
        """Write backbone (save_pretrained), head weights and config: loadable without this run's code state."""
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(directory / "backbone")
        save_file({name: tensor.contiguous() for name, tensor in self.head.state_dict().items()}, str(directory / "head.safetensors"))
        (directory / "classifier.json").write_text(self.config.model_dump_json(indent=2))

    @classmethod
    def load(cls, directory: Path) -> RoadworkClassifier:
        """Inverse of :meth:`save`."""
        config = ClassifierConfig.model_validate(json.loads((directory / "classifier.json").read_text()))
        backbone_config = AutoConfig.from_pretrained(directory / "backbone", local_files_only=True)
        backbone = AutoModel.from_pretrained(directory / "backbone", config=backbone_config, local_files_only=True)
        model = cls(backbone, config)
        model.head.load_state_dict(load_file(str(directory / "head.safetensors")))
        return model.eval()
