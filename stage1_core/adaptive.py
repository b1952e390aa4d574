"""Adaptive multi-view inference: look at the tiles only when the global view is unsure.

The 3x3 tiles exist for small roadwork objects that vanish in the global view (see ``model.py``).
Most street photos are clear from the global view alone, and a tile pass costs nine backbone
calls, so serving runs the global view first and the tiles only for images whose global margin
``|logit(p_global) - logit(threshold)|`` is below a fitted bound. This is the early-exit idea of
confidence-based adaptive inference (BranchyNet, Teerapittayanon et al. 2016; "Shallow-Deep
Networks", Kaya et al. 2019) applied to views instead of layers.

Serving uses two ONNX graphs: the global graph (uint8 image -> global logit, P(roadwork) from the
global view, and the canvas) and the tiles graph (canvas + global logit -> the full multi-view
P(roadwork)), so an uncertain image gets exactly the fixed 10-view result and a confident one the
global-view result, both calibrated by the model's calibration policy. The margin bound is the
smallest one whose MCC on ``val_select`` is at most ``max_mcc_drop`` below the fixed multi-view MCC.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import logit
from tqdm import tqdm

from stage1_core.calibration import LogitMap
from stage1_core.export import CalibrationLayer, ExportConfig, ParityReport, ServingGraph, cpu_session, image_dims, image_to_canvas, module_to_onnx
from stage1_core.metrics import as_binary_labels, as_probabilities, decision_metrics_from_counts
from stage1_core.model import RoadworkClassifier, aggregate_view_logits, make_views

logger = logging.getLogger(__name__)

GLOBAL_FILE = "global_view.onnx"
TILES_FILE = "tiles.onnx"
METADATA_FILE = "adaptive.json"
_PROBABILITY_EPS = 1e-7

GlobalPass = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
TilesPass = Callable[[np.ndarray, np.ndarray], np.ndarray]


class AdaptiveConfig(BaseModel):
    """How much MCC (on val_select) adaptive serving may give up against the fixed multi-view model."""

    max_mcc_drop: float = Field(0.01, ge=0.0, description="1 MCC point = 0.01")


class AdaptiveOutcome(BaseModel):
    """Adaptive against fixed multi-view on one labelled set."""

    n_images: int
    skip_rate: float  # share of images answered from the global view alone
    views_per_image: float  # mean backbone views per image
    mcc_full: float
    mcc_adaptive: float
    mcc_drop: float


class AdaptivePolicy(BaseModel):
    """Skip the tiles when ``margin >= margin_threshold`` (``inf``: never skip)."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    decision_threshold: float = Field(gt=0.0, lt=1.0)
    margin_threshold: float = Field(ge=0.0)
    max_mcc_drop: float
    full_views: int
    fitted_on: AdaptiveOutcome | None = None  # the outcome on val_select, set by ``fit_adaptive_policy``


class AdaptiveMetadata(BaseModel):
    """What a server needs to run the two graphs, and how they were checked against the fixed graph."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    opset: int
    canvas_size: int
    calibration: LogitMap
    policy: AdaptivePolicy
    parity: list[ParityReport]


def logit_margin(p_global: np.ndarray, decision_threshold: float) -> np.ndarray:
    """Distance of the global view's calibrated logit from the decision threshold's logit (confidence)."""
    p = np.clip(np.asarray(p_global, dtype=np.float64), _PROBABILITY_EPS, 1.0 - _PROBABILITY_EPS)
    return np.abs(logit(p) - logit(decision_threshold))


def skip_tiles(p_global: np.ndarray, policy: AdaptivePolicy) -> np.ndarray:
    """Boolean mask: images confident enough to be answered from the global view."""
    return logit_margin(p_global, policy.decision_threshold) >= policy.margin_threshold


def _confusion(predicted: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    positive = labels == 1
    return predicted & positive, predicted & ~positive, ~predicted & positive, ~predicted & ~positive


def _mcc(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(decision_metrics_from_counts(*(count.sum() for count in _confusion(predicted, labels)))["mcc"])


def _checked(p_global: np.ndarray, p_full: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = as_binary_labels(labels)
    if y.min() == y.max():
        raise ValueError(f"labels: all {y.size} images are class {int(y[0])}; MCC needs both classes (use val_select with positives and negatives)")
    return as_probabilities(p_global, name="p_global", length=y.size), as_probabilities(p_full, name="p_full", length=y.size), y


def evaluate_adaptive(p_global: np.ndarray, p_full: np.ndarray, labels: np.ndarray, policy: AdaptivePolicy) -> AdaptiveOutcome:
    """MCC of fixed multi-view and of adaptive serving on a labelled set (e.g. val_test), and the views spent."""
    p_global, p_full, y = _checked(p_global, p_full, labels)
    skip = skip_tiles(p_global, policy)
    threshold = policy.decision_threshold
    mcc_full = _mcc(p_full > threshold, y)
    mcc_adaptive = _mcc(np.where(skip, p_global, p_full) > threshold, y)
    return AdaptiveOutcome(
        n_images=int(y.size),
        skip_rate=float(skip.mean()),
        views_per_image=float(1 + (policy.full_views - 1) * (1 - skip.mean())),
        mcc_full=mcc_full,
        mcc_adaptive=mcc_adaptive,
        mcc_drop=mcc_full - mcc_adaptive,
    )


def fit_adaptive_policy(p_global: np.ndarray, p_full: np.ndarray, labels: np.ndarray, decision_threshold: float, full_views: int, config: AdaptiveConfig) -> AdaptivePolicy:
    """The smallest margin bound whose adaptive MCC is at most ``config.max_mcc_drop`` below fixed multi-view.

    Images are ranked by global margin; skipping the ``j`` most confident ones is evaluated for every
    ``j`` at once with cumulative confusion counts, and only at ``j`` where the margin changes (ties
    are skipped together). ``j = 0`` (never skip) always qualifies.

    Raises:
        ValueError: bad labels or probabilities (named), or labels of one class only.
    """
    p_global, p_full, y = _checked(p_global, p_full, labels)
    margin = logit_margin(p_global, decision_threshold)
    order = np.argsort(-margin, kind="stable")
    margin, y = margin[order], y[order]
    global_counts = _confusion(p_global[order] > decision_threshold, y)
    full_counts = _confusion(p_full[order] > decision_threshold, y)
    counts = [
        np.concatenate([[0], np.cumsum(g)]) + (f.sum() - np.concatenate([[0], np.cumsum(f)]))
        for g, f in zip(global_counts, full_counts, strict=True)
    ]
    mcc = decision_metrics_from_counts(*counts)["mcc"]
    boundary = np.ones(y.size + 1, dtype=bool)
    boundary[1:-1] = margin[:-1] > margin[1:]
    feasible = boundary & (mcc >= mcc[0] - config.max_mcc_drop - 1e-12)
    skipped = int(np.flatnonzero(feasible).max())
    policy = AdaptivePolicy(
        decision_threshold=decision_threshold,
        margin_threshold=float(margin[skipped - 1]) if skipped else float("inf"),
        max_mcc_drop=config.max_mcc_drop,
        full_views=full_views,
    )
    policy.fitted_on = evaluate_adaptive(p_global[order], p_full[order], y, policy)
    logger.info(
        "adaptive multi-view: skip tiles at margin >= %.3f: %.0f%% of %d val_select images, %.2f views/image, MCC %.4f -> %.4f",
        policy.margin_threshold, 100 * policy.fitted_on.skip_rate, y.size, policy.fitted_on.views_per_image, policy.fitted_on.mcc_full, policy.fitted_on.mcc_adaptive,
    )
    return policy


def run_adaptive(global_pass: GlobalPass, tiles_pass: TilesPass, images: np.ndarray, policy: AdaptivePolicy) -> tuple[np.ndarray, np.ndarray]:
    """P(roadwork) and views used per image of a uint8 ``[B, 3, H, W]`` batch, with any runtime's two passes."""
    global_logit, p_global, canvas = global_pass(images)
    probabilities = np.asarray(p_global, dtype=np.float32).copy()
    views = np.ones(len(images), dtype=np.int64)
    uncertain = np.flatnonzero(~skip_tiles(p_global, policy))
    if uncertain.size:
        probabilities[uncertain] = tiles_pass(canvas[uncertain], global_logit[uncertain])
        views[uncertain] = policy.full_views
    return probabilities, views


class GlobalViewGraph(torch.nn.Module):
    """uint8 ``[B, 3, H, W]`` -> (global-view logit ``[B]``, calibrated P(roadwork) from it ``[B]``, canvas ``[B, 3, S, S]``)."""

    def __init__(self, classifier: RoadworkClassifier, calibration: LogitMap) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.calibrate = CalibrationLayer(calibration)
        self.canvas_size = classifier.config.multiview.canvas_size
        self.global_only = classifier.config.multiview.model_copy(update={"aggregation": "global_only"})

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        canvas = image_to_canvas(image, self.canvas_size)
        global_logit = self.classifier.view_logits(canvas, self.global_only)[:, 0]
        return global_logit, self.calibrate(global_logit), canvas


class TilesGraph(torch.nn.Module):
    """(canvas ``[B, 3, S, S]``, global logit ``[B]``) -> calibrated multi-view P(roadwork) ``[B]`` (same as ``ServingGraph``)."""

    def __init__(self, classifier: RoadworkClassifier, calibration: LogitMap) -> None:
        super().__init__()
        if classifier.config.multiview.aggregation == "global_only":
            raise ValueError("adaptive multi-view needs a multi-view classifier; this one is configured global_only")
        self.classifier = classifier.eval()
        self.calibrate = CalibrationLayer(calibration)
        self.multiview = classifier.config.multiview

    def forward(self, canvas: torch.Tensor, global_logit: torch.Tensor) -> torch.Tensor:
        tiles = make_views(canvas, self.multiview)[:, 1:]
        batch, n_tiles = tiles.shape[:2]
        tile_logits = self.classifier.head(self.classifier.embed(tiles.flatten(0, 1))).view(batch, n_tiles)
        view_logits = torch.cat([global_logit.unsqueeze(1), tile_logits], dim=1)
        return self.calibrate(aggregate_view_logits(view_logits, self.multiview))


class AdaptiveSessions:
    """The two graphs in ONNX Runtime, run as adaptive serving (or both passes for every image, for fitting)."""

    def __init__(self, global_onnx: bytes, tiles_onnx: bytes, threads: int | None = None) -> None:
        self.global_session = cpu_session(global_onnx, threads)
        self.tiles_session = cpu_session(tiles_onnx, threads)

    def global_pass(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        global_logit, p_global, canvas = self.global_session.run(None, {"image": images})
        return global_logit, p_global, canvas

    def tiles_pass(self, canvas: np.ndarray, global_logit: np.ndarray) -> np.ndarray:
        return self.tiles_session.run(None, {"canvas": canvas, "global_logit": global_logit})[0]

    def predict(self, images: np.ndarray, policy: AdaptivePolicy) -> tuple[np.ndarray, np.ndarray]:
        """P(roadwork) and views used per image of a uint8 ``[B, 3, H, W]`` batch."""
        return run_adaptive(self.global_pass, self.tiles_pass, images, policy)

    def both(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(global-view P, fixed multi-view P) for every image: what the policy is fitted on."""
        global_logit, p_global, canvas = self.global_pass(images)
        return p_global, self.tiles_pass(canvas, global_logit)


class AdaptiveExport:
    """The two ONNX graphs and their policy; stored as ``global_view.onnx`` + ``tiles.onnx`` + ``adaptive.json``."""

    def __init__(self, global_onnx: bytes, tiles_onnx: bytes, metadata: AdaptiveMetadata) -> None:
        self.global_onnx = global_onnx
        self.tiles_onnx = tiles_onnx
        self.metadata = metadata

    def save(self, directory: Path) -> Path:
        """Write the files into ``directory`` (next to ``model.onnx`` in an exported bundle)."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / GLOBAL_FILE).write_bytes(self.global_onnx)
        (directory / TILES_FILE).write_bytes(self.tiles_onnx)
        (directory / METADATA_FILE).write_text(self.metadata.model_dump_json(indent=2))
        return directory

    @staticmethod
    def present(directory: Path) -> bool:
        return all((directory / name).is_file() for name in (GLOBAL_FILE, TILES_FILE, METADATA_FILE))

    @classmethod
    def load(cls, directory: Path) -> AdaptiveExport:
        metadata = AdaptiveMetadata.model_validate(json.loads((directory / METADATA_FILE).read_text()))
        return cls((directory / GLOBAL_FILE).read_bytes(), (directory / TILES_FILE).read_bytes(), metadata)

    def log_to_mlflow(self, name: str = "model") -> str:
        """Log the files into the active MLflow run under ``{name}_adaptive/`` (where the predictor looks)."""
        artifact_path = f"{name}_adaptive"
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifacts(str(self.save(Path(tmp))), artifact_path=artifact_path)
        return artifact_path

    def sessions(self, threads: int | None = None) -> AdaptiveSessions:
        return AdaptiveSessions(self.global_onnx, self.tiles_onnx, threads)


def score_both(sessions: AdaptiveSessions, images: list[torch.Tensor], desc: str = "adaptive fit") -> tuple[np.ndarray, np.ndarray]:
    """(global-view P, fixed multi-view P) per uint8 ``[3, H, W]`` image, one image per call (sizes differ)."""
    pairs = [sessions.both(image.unsqueeze(0).numpy()) for image in tqdm(images, desc=desc, unit="img")]
    return np.concatenate([p for p, _ in pairs]), np.concatenate([p for _, p in pairs])


def _check_parity(
    classifier: RoadworkClassifier, calibration: LogitMap, sessions: AdaptiveSessions, images: list[torch.Tensor], tolerance: float
) -> ParityReport:
    """Both ONNX passes against PyTorch: the global P against the global view, the tiles P against ``ServingGraph``."""
    full_graph = ServingGraph(classifier, calibration).eval()
    global_graph = GlobalViewGraph(classifier, calibration).eval()
    diffs = []
    with torch.inference_mode():
        for image in images:
            batch = image.unsqueeze(0)
            p_global, p_full = sessions.both(batch.numpy())
            diffs += [np.abs(p_global - global_graph(batch)[1].numpy()), np.abs(p_full - full_graph(batch).numpy())]
    flat = np.concatenate(diffs)
    max_diff = float(flat.max())
    return ParityReport(
        runtime=f"onnxruntime {onnxruntime.__version__} CPU, adaptive global + tiles graphs",
        n_images=len(images), max_abs_diff=max_diff, mean_abs_diff=float(flat.mean()), tolerance=tolerance, passed=max_diff <= tolerance,
    )


def export_adaptive(
    classifier: RoadworkClassifier,
    calibration: LogitMap,
    decision_threshold: float,
    select_images: list[torch.Tensor],
    select_labels: np.ndarray,
    export_config: ExportConfig,
    config: AdaptiveConfig,
) -> AdaptiveExport:
    """Export the global and tiles graphs, check them against PyTorch, fit the margin bound on val_select.

    Args:
        select_images: uint8 ``[3, H, W]`` val_select images (the first ``parity_images`` also serve the parity check).
        select_labels: their 0/1 labels.

    Raises:
        RuntimeError: the ONNX graphs differ from PyTorch beyond ``export_config.parity_tolerance``.
        ValueError: no images, or labels of one class only.
    """
    if not select_images:
        raise ValueError("adaptive export needs val_select images to fit the margin bound and check parity")
    global_graph = GlobalViewGraph(classifier, calibration).eval()
    tiles_graph = TilesGraph(classifier, calibration).eval()
    example = select_images[0].unsqueeze(0)
    with torch.inference_mode():  # a batch of two: an example batch of one would be specialised to a fixed size
        global_logit, _, canvas = global_graph(example.expand(2, -1, -1, -1))
    batch = torch.export.Dim("batch", min=1, max=4096)
    global_onnx = module_to_onnx(global_graph, (example,), ["image"], ["global_logit", "p_global", "canvas"], {"image": image_dims()}, export_config.opset)
    tiles_onnx = module_to_onnx(
        tiles_graph, (canvas, global_logit), ["canvas", "global_logit"], ["p_roadwork"], {"canvas": {0: batch}, "global_logit": {0: batch}}, export_config.opset
    )
    sessions = AdaptiveSessions(global_onnx, tiles_onnx)
    parity = _check_parity(classifier, calibration, sessions, select_images[: export_config.parity_images], export_config.parity_tolerance)
    if not parity.passed:
        raise RuntimeError(f"adaptive ONNX graphs differ from PyTorch by {parity.max_abs_diff:.2e} > {parity.tolerance:.0e} on {parity.n_images} images")
    p_global, p_full = score_both(sessions, select_images)
    policy = fit_adaptive_policy(p_global, p_full, select_labels, decision_threshold, classifier.config.multiview.views_per_image, config)
    metadata = AdaptiveMetadata(opset=export_config.opset, canvas_size=global_graph.canvas_size, calibration=calibration, policy=policy, parity=[parity])
    return AdaptiveExport(global_onnx, tiles_onnx, metadata)
