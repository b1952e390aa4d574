"""The roadwork classifier: a DINOv2/DINOv3 backbone, a head, and multi-view inference.

Small roadwork objects vanish when a whole street photo is resized to the backbone's input
size, so the model also looks at 3x3 overlapping tiles of a larger canvas. The view scores are
pooled by top-K mean (the MIL pooling of CHOWDER/WELDON, Durand et al. 2016), which keeps one
confident tile from being averaged away, with K chosen on val_select; or by gated attention over
the view features (attention-based deep MIL, Ilse et al. 2018, arXiv 1802.04712), learned end to
end. Calibration happens after aggregation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, PreTrainedModel

from stage1_core.common.config import StrictConfig
from stage1_core.modeling.adapters import has_adapters
from stage1_core.modeling.backbone import IMAGENET_MEAN, IMAGENET_STD


class MultiViewConfig(StrictConfig):
    """Views per image: one global view plus a ``grid`` x ``grid`` set of overlapping tiles."""

    view_size: int = Field(
        112, description="side of every view fed to the backbone, in px (a multiple of the patch size)"
    )
    grid: int = 3
    overlap: float = Field(0.15, ge=0.0, lt=1.0)
    aggregation: Literal["topk_mean", "mean", "attention", "global_only"] = "topk_mean"
    top_k: int = Field(
        3, ge=1, description="views pooled by topk_mean; training replaces it by the K chosen on val_select"
    )
    attention_dim: int = Field(64, ge=1, description="hidden width of the gated attention aggregator")
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


class ClassifierConfig(StrictConfig):
    """Head and multi-view settings of the classifier."""

    dropout: float = 0.3
    multiview: MultiViewConfig = MultiViewConfig()


def resize_to_canvas(images: torch.Tensor, canvas_size: int, maximum: float = 1.0) -> torch.Tensor:
    """Float ``[B, C, H, W]`` in [0, maximum] -> ``[B, C, S, S]``: bilinear, antialiased, clipped (antialiasing can
    overshoot by a rounding error). The one resize that :func:`prepare_canvas` and the exported graphs share."""
    return F.interpolate(
        images, size=(canvas_size, canvas_size), mode="bilinear", align_corners=False, antialias=True
    ).clamp(0.0, maximum)


def prepare_canvas(images: torch.Tensor | Sequence[torch.Tensor], canvas_size: int) -> torch.Tensor:
    """Any batch of images -> float canvas ``[B, 3, S, S]`` in [0, 1], the multi-view module's input.

    Accepts one tensor ``[B, C, H, W]`` or a sequence of ``[C, H, W]`` / ``[H, W]`` images of mixed sizes,
    uint8 (0..255) or float in [0, 1], with 1 (grey, repeated to RGB) or 3 channels. Each image is resized
    to the square canvas as training (``images.canvas_transform``) and the exported graph do: images smaller
    than a tile are upsampled, extreme aspect ratios (4000x300) are stretched, never cropped away.

    Raises:
        ValueError: naming the image index and what is wrong (channels, value range, empty).
    """
    if isinstance(images, torch.Tensor):
        batch = list(images.unbind(0)) if images.ndim == 4 else [images]
    else:
        batch = list(images)
    if not batch:
        raise ValueError("prepare_canvas got no images")
    canvases = []
    for index, image in enumerate(batch):
        image = image.unsqueeze(0) if image.ndim == 2 else image
        if image.ndim != 3 or image.shape[0] not in (1, 3) or min(image.shape[1:]) < 1:
            raise ValueError(
                f"image {index}: shape {tuple(image.shape)}, expected [1 or 3, H, W] (convert RGBA / CMYK to RGB first)"
            )
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        elif not image.dtype.is_floating_point or float(image.min()) < 0.0 or float(image.max()) > 1.0:
            raise ValueError(f"image {index}: dtype {image.dtype}, values must be uint8 or float in [0, 1]")
        image = image.float().expand(3, -1, -1).unsqueeze(0)
        canvases.append(resize_to_canvas(image, canvas_size))
    return torch.cat(canvases)


def _check_canvas(canvas: torch.Tensor, config: MultiViewConfig) -> None:
    if canvas.ndim != 4 or tuple(canvas.shape[2:]) != (config.canvas_size, config.canvas_size):
        raise ValueError(
            f"canvas of shape {tuple(canvas.shape)}, expected [B, C, {config.canvas_size}, {config.canvas_size}]: "
            "build it with prepare_canvas"
        )


def _tile_slices(canvas: torch.Tensor, config: MultiViewConfig) -> list[torch.Tensor]:
    size = config.view_size
    corners = [
        (row * config.tile_stride, col * config.tile_stride) for row in range(config.grid) for col in range(config.grid)
    ]
    return [canvas[:, :, top : top + size, left : left + size] for top, left in corners]


def make_tiles(canvas: torch.Tensor, config: MultiViewConfig) -> torch.Tensor:
    """The ``grid x grid`` overlapping tiles of a whole batch, row by row: ``[B, grid * grid, C, view, view]``.

    Each tile is a plain slice of the batch, stacked once: the exported graph gets Slice + Concat
    instead of the 6-D Transpose that ``unfold`` exports to, which ONNX Runtime runs slowly.

    Raises:
        ValueError: the canvas is not ``S x S`` with ``S == config.canvas_size``.
    """
    _check_canvas(canvas, config)
    return torch.stack(_tile_slices(canvas, config), dim=1)


def make_views(canvas: torch.Tensor, config: MultiViewConfig) -> torch.Tensor:
    """Cut the global view and all tiles of a whole batch.

    Args:
        canvas: ``[B, C, S, S]`` with ``S == config.canvas_size`` (:func:`prepare_canvas` makes it from any images).

    Returns:
        ``[B, V, C, view, view]``: view 0 is the whole canvas resized, views 1.. the tiles row by row
        (:func:`make_tiles`).

    Raises:
        ValueError: the canvas is not ``S x S``.
    """
    _check_canvas(canvas, config)
    global_view = F.interpolate(
        canvas, size=(config.view_size, config.view_size), mode="bilinear", align_corners=False, antialias=True
    )
    if config.aggregation == "global_only":
        return global_view.unsqueeze(1)
    return torch.stack([global_view, *_tile_slices(canvas, config)], dim=1)


def aggregate_view_logits(view_logits: torch.Tensor, config: MultiViewConfig) -> torch.Tensor:
    """Pool ``[B, V]`` view logits to one logit per image.

    Attention aggregation pools features instead: :meth:`RoadworkClassifier.pool`.
    """
    if config.aggregation == "global_only" or view_logits.shape[1] == 1:
        return view_logits[:, 0]
    if config.aggregation == "attention":
        raise ValueError("aggregation 'attention' pools view features, not logits: use RoadworkClassifier.pool")
    if config.aggregation == "mean":
        return view_logits.mean(dim=1)
    k = min(config.top_k, view_logits.shape[1])
    return view_logits.topk(k, dim=1).values.mean(dim=1)


class TopKSelection(BaseModel):
    """K of the top-K mean chosen on val_select, with the AUROC of every candidate."""

    top_k: int
    auroc_by_k: dict[int, float]
    n_images: int


def choose_top_k(view_logits: np.ndarray, labels: np.ndarray, candidates: Sequence[int]) -> TopKSelection:
    """The K whose top-K mean of view logits ranks val_select best (AUROC; ties: the smallest K).

    CHOWDER (Durand et al. 2016) treats the number of pooled instances as a hyper-parameter chosen on
    validation data. AUROC is threshold-free, as it should be here: calibration and the decision
    threshold are fitted after aggregation. Pass val_select view logits only (``take_split`` with
    ``Consumer.MODEL_SELECTION``).

    Raises:
        ValueError: no candidate within 1..V, or labels of one class only.
    """
    view_logits, labels = np.asarray(view_logits, dtype=np.float64), np.asarray(labels)
    n_views = view_logits.shape[1]
    valid = sorted({k for k in candidates if 1 <= k <= n_views})
    if not valid:
        raise ValueError(f"top-K candidates {list(candidates)}: none lies within 1..{n_views} (the views per image)")
    if len(np.unique(labels)) < 2:
        raise ValueError(
            f"choosing K needs both classes in val_select; "
            f"its {len(labels)} labels are all {labels[0] if len(labels) else None}"
        )
    ranked = -np.sort(-view_logits, axis=1)
    auroc = {k: float(roc_auc_score(labels, ranked[:, :k].mean(axis=1))) for k in valid}
    best = max(valid, key=lambda k: (auroc[k], -k))
    return TopKSelection(top_k=best, auroc_by_k=auroc, n_images=len(labels))


class ViewAttention(nn.Module):
    """Gated attention over the views of an image (Ilse et al. 2018).

    ``a_v = softmax_v w^T (tanh(V h_v) * sigm(U h_v))``.
    """

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.value = nn.Linear(features, hidden)
        self.gate = nn.Linear(features, hidden)
        self.score = nn.Linear(hidden, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, V, D]`` view features -> ``[B, V]`` weights that sum to 1 over the views."""
        scores = self.score(torch.tanh(self.value(features)) * torch.sigmoid(self.gate(features))).squeeze(-1)
        return scores.softmax(dim=1)


class RoadworkClassifier(nn.Module):
    """Backbone + linear head (+ attention aggregator), scored over multiple views; input is an RGB canvas in [0, 1]."""

    def __init__(self, backbone: PreTrainedModel, config: ClassifierConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        hidden = backbone.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(hidden, 1))
        self.attention = (
            ViewAttention(hidden, config.multiview.attention_dim)
            if config.multiview.aggregation == "attention"
            else None
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def embed(self, views: torch.Tensor) -> torch.Tensor:
        """Backbone cls features of ``[N, C, v, v]`` views, in chunks of ``chunk_size``."""
        views = (views - self.mean) / self.std
        if (
            torch.compiler.is_exporting()
        ):  # an exported graph keeps the batch dimension dynamic: no Python-level chunking
            return self.backbone(pixel_values=views).pooler_output
        chunks = views.split(self.config.multiview.chunk_size)
        return torch.cat([self.backbone(pixel_values=chunk).pooler_output for chunk in chunks])

    def view_features(self, canvas: torch.Tensor, multiview: MultiViewConfig | None = None) -> torch.Tensor:
        """``[B, V, D]`` backbone features, one per view (``multiview`` overrides the configured views)."""
        views = make_views(canvas, multiview or self.config.multiview)
        batch, n_views = views.shape[:2]
        return self.embed(views.flatten(0, 1)).view(batch, n_views, -1)

    def view_logits(self, canvas: torch.Tensor, multiview: MultiViewConfig | None = None) -> torch.Tensor:
        """``[B, V]`` logits, one per view (``multiview`` overrides the configured views, e.g. global-only training)."""
        return self.head(self.view_features(canvas, multiview)).squeeze(-1)

    def pool(self, features: torch.Tensor, multiview: MultiViewConfig | None = None) -> torch.Tensor:
        """``[B, V, D]`` view features -> one logit per image, by the configured aggregation."""
        multiview = multiview or self.config.multiview
        if multiview.aggregation != "attention":
            return aggregate_view_logits(self.head(features).squeeze(-1), multiview)
        if self.attention is None:
            raise ValueError(
                f"this classifier was built for aggregation {self.config.multiview.aggregation!r} "
                "and has no attention aggregator"
            )
        weights = self.attention(features)
        return self.head((weights.unsqueeze(-1) * features).sum(dim=1)).squeeze(-1)

    def logits_and_global(
        self, canvas: torch.Tensor, multiview: MultiViewConfig | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The aggregated logit and the global view's own logit (view 0, as adaptive serving scores it), one pass."""
        multiview = multiview or self.config.multiview
        features = self.view_features(canvas, multiview)
        return self.pool(features, multiview), self.head(features[:, 0]).squeeze(-1)

    def forward(self, canvas: torch.Tensor, multiview: MultiViewConfig | None = None) -> torch.Tensor:
        """One aggregated logit per image."""
        multiview = multiview or self.config.multiview
        return self.pool(self.view_features(canvas, multiview), multiview)

    def score_images(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """One aggregated logit per image of any size, channel count 1 or 3, uint8 or float.

        See :func:`prepare_canvas`.
        """
        return self(prepare_canvas(images, self.config.multiview.canvas_size).to(self.mean.device))

    def save(self, directory: Path) -> None:
        """Write backbone (save_pretrained), head (and attention) weights and config.

        The directory is loadable without this run's code state.

        Raises:
            ValueError: DoRA / DoRAN adapters are still attached (merge them first: ``adapters.merge_adapters``).
        """
        if has_adapters(self.backbone):
            raise ValueError(
                "the backbone still has DoRA / DoRAN adapters: "
                "merge them with stage1_core.modeling.adapters.merge_adapters before saving"
            )
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(directory / "backbone")
        save_file(
            {name: tensor.contiguous() for name, tensor in self.head.state_dict().items()},
            str(directory / "head.safetensors"),
        )
        if self.attention is not None:
            save_file(
                {name: tensor.contiguous() for name, tensor in self.attention.state_dict().items()},
                str(directory / "attention.safetensors"),
            )
        (directory / "classifier.json").write_text(self.config.model_dump_json(indent=2))

    @classmethod
    def load(cls, directory: Path) -> RoadworkClassifier:
        """Inverse of :meth:`save`."""
        config = ClassifierConfig.model_validate(json.loads((directory / "classifier.json").read_text()))
        backbone_config = AutoConfig.from_pretrained(directory / "backbone", local_files_only=True)
        backbone = AutoModel.from_pretrained(directory / "backbone", config=backbone_config, local_files_only=True)
        model = cls(backbone, config)
        model.head.load_state_dict(load_file(str(directory / "head.safetensors")))
        if model.attention is not None:
            model.attention.load_state_dict(load_file(str(directory / "attention.safetensors")))
        return model.eval()
