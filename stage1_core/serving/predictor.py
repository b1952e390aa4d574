"""Serve P(roadwork) from an exported model bundle (a registered one is fetched by ``registry.champion``).

The predictor needs ONNX Runtime only: neither it nor ``serving.py`` imports PyTorch, so a miner
starts in a fraction of the time. It decodes images with the one decoder training used
(:func:`stage1_core.common.images.decode_rgb`: EXIF orientation, transparency over white, 16-bit scaled),
and runs the adaptive two-graph path when the bundle has it (``mode="adaptive"``, see ``adaptive.py``),
else the fixed multi-view graph. ``predict_base64_jpeg`` is the miner's entry point: one base64 image in,
one float in [0, 1] out, or a :class:`~stage1_core.serving.errors.PredictionError` naming why nothing was
scored (the subnet validator scores an answer outside [0, 1] as 0, so no other value is ever returned).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from stage1_core.common.config import StrictConfig
from stage1_core.common.images import ImageDecodeError, decode_opened, open_image, rgb_array
from stage1_core.serving.adaptive import AdaptivePolicy
from stage1_core.serving.bundle import (
    INPUT_NAME,
    METADATA_FILE,
    MODEL_FILE,
    AdaptiveSessions,
    ExportedModel,
    ExportMetadata,
    checked_session,
)
from stage1_core.serving.errors import BadImageError, ModelLoadError

logger = logging.getLogger(__name__)

MODEL_ENV = "ROADWORK_MODEL"  # the exported bundle folder the miner function serves


class PredictorConfig(StrictConfig):
    """Input bounds and runtime settings of the predictor."""

    min_side: int = Field(
        16,
        ge=1,
        description="smallest image side scored, in px; smaller images are refused by the CLI and the miner alike",
    )
    max_pixels: int = Field(
        50_000_000, ge=1, description="largest image accepted, in pixels; the miner shrinks bigger ones instead"
    )
    batch_size: int = Field(16, ge=1, description="images per ONNX Runtime call (images of one size are batched)")
    mode: Literal["adaptive", "full"] = Field(
        "adaptive",
        description="adaptive: the two-graph path when the bundle has it (else full, with a warning); "
        "full: always all views",
    )
    threads: int | None = Field(None, ge=1, description="ONNX Runtime intra-op threads (None: its default)")
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto",
        description="auto: the int8 graphs where the bundle's accuracy guard chose them, else fp32; "
        "int8 serves them even against the guard (for measuring)",
    )


class Prediction(BaseModel):
    """P(roadwork) of one image and how it was obtained."""

    source: str
    p_roadwork: float = Field(ge=0.0, le=1.0)
    views: int  # backbone views spent on the image (1 = global view only)
    warning: str | None = None


def decode_image(data: bytes, *, source: str, config: PredictorConfig, fit_to_bounds: bool = False) -> np.ndarray:
    """Encoded image bytes -> uint8 RGB ``[3, H, W]``, decoded as training decoded it (:func:`decode_rgb`).

    The smallest-side rule is the same for every caller: an image with a side below ``config.min_side`` is
    refused, never upscaled. The validator never sends one (every preprocessing it used resizes to 224 px or
    sends the photo as it is, see data-and-evaluator.md), and an upscaled 8x8 image gave a confident 0.99999
    from no evidence at all; refusing it names the problem instead.

    Args:
        fit_to_bounds: shrink an image above ``config.max_pixels`` into the bound instead of refusing it (the
            miner answers every photo it can decode, however large).

    Raises:
        BadImageError: empty, not an image, corrupt or truncated, too large for Pillow's decompression-bomb
            guard, a side below ``min_side``, or (unless ``fit_to_bounds``) more than ``max_pixels``.
    """
    try:
        image = open_image(data, source)
        width, height = image.size
        target = None
        if width * height > config.max_pixels:
            if not fit_to_bounds:
                raise BadImageError(
                    f"{source}: {width}x{height} = {width * height / 1e6:.1f} Mpx "
                    f"is over the bound of {config.max_pixels / 1e6:.1f} Mpx "
                    "(PredictorConfig.max_pixels); downscale the image or raise the bound"
                )
            target = _shrunk_size(width, height, config)
        decoded = decode_opened(image, source, target_size=target)
    except ImageDecodeError as error:
        raise BadImageError(str(error)) from None
    return rgb_array(_fit(decoded, source, config))


def _shrunk_size(width: int, height: int, config: PredictorConfig) -> tuple[int, int]:
    scale = math.sqrt(config.max_pixels / (width * height))
    return max(config.min_side, int(width * scale)), max(config.min_side, int(height * scale))


def _fit(image: Image.Image, source: str, config: PredictorConfig) -> Image.Image:
    """Check the smallest side of the decoded, upright image; shrink one still above ``max_pixels``."""
    width, height = image.size
    if min(width, height) < config.min_side:
        raise BadImageError(
            f"{source}: {width}x{height} px is below the smallest side of {config.min_side} px "
            "(PredictorConfig.min_side): too small to hold evidence of roadwork; send the original photo"
        )
    if width * height > config.max_pixels:
        logger.warning("%s: %dx%d px shrunk to fit %d pixels", source, width, height, config.max_pixels)
        return image.resize(_shrunk_size(width, height, config), Image.Resampling.BILINEAR)
    return image


def _probability(value: float, source: str) -> tuple[float, str | None]:
    """Clip to [0, 1]; NaN becomes 0.5 (no decision either way). Either case is logged and reported."""
    if math.isnan(value):
        message = "the model returned NaN; answered 0.5"
        logger.warning("%s: %s", source, message)
        return 0.5, message
    if not 0.0 <= value <= 1.0:
        message = f"the model returned {value!r}, outside [0, 1]; clipped"
        logger.warning("%s: %s", source, message)
        return min(max(value, 0.0), 1.0), message
    return value, None


class Predictor:
    """P(roadwork) per image from an exported model (adaptive two-graph path when available)."""

    def __init__(self, exported: ExportedModel, config: PredictorConfig | None = None, origin: str = "") -> None:
        """Start the sessions of the graphs the bundle serves at ``config.precision``.

        Int8 graphs the guard chose that ONNX Runtime cannot load leave the predictor on the fp32 graphs (a warning
        names the file), as broken adaptive graphs leave it in full mode: the bundle still serves every image.

        Raises:
            ModelLoadError: the fixed graph cannot be loaded (or the int8 one, where ``precision`` asks for int8).
        """
        self.config = config or PredictorConfig()
        served = exported.served(self.config.precision)
        try:
            self._start(served, origin)
        except ModelLoadError as error:
            if served.precision == "fp32" or self.config.precision == "int8":
                raise
            logger.warning("%s; serving the fp32 graphs", error)
            self._start(exported, origin)

    def _start(self, exported: ExportedModel, origin: str) -> None:
        self.precision = exported.precision
        self.metadata: ExportMetadata = exported.metadata
        self.origin = origin
        prefix = f"{origin}/" if origin else ""
        self.session = checked_session(
            exported.onnx_bytes, f"{prefix}{exported.model_file}", (INPUT_NAME,), self.config.threads
        )
        adaptive = exported.adaptive if self.config.mode == "adaptive" else None
        self.adaptive_sessions: AdaptiveSessions | None = None
        if adaptive is not None:
            try:
                self.adaptive_sessions = adaptive.sessions(self.config.threads, origin)
            except ModelLoadError as error:
                logger.warning("%s; serving the fixed %d-view graph (full mode)", error, self.metadata.views_per_image)
                adaptive = None
        elif self.config.mode == "adaptive" and exported.adaptive_error is None:  # a broken one was named already
            logger.warning(
                "%s has no adaptive graphs (exported before they existed?): serving the fixed %d-view graph",
                origin or "the model",
                self.metadata.views_per_image,
            )
        self.adaptive_policy: AdaptivePolicy | None = adaptive.metadata.policy if adaptive else None

    @classmethod
    def from_bundle(cls, directory: Path, config: PredictorConfig | None = None) -> Predictor:
        """Load ``model.onnx`` + ``metadata.json`` (and the adaptive graphs when present) from an exported bundle."""
        directory = Path(directory)
        missing = [name for name in (MODEL_FILE, METADATA_FILE) if not (directory / name).is_file()]
        if missing:
            raise ModelLoadError(
                f"{directory}: not an exported model bundle (missing {', '.join(missing)}); "
                "pass the folder written by the export step"
            )
        return cls(ExportedModel.load(directory), config, origin=str(directory))

    @property
    def mode(self) -> str:
        return "adaptive" if self.adaptive_sessions else f"fixed {self.metadata.views_per_image}-view"

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.adaptive_sessions and self.adaptive_policy:
            return self.adaptive_sessions.predict(batch, self.adaptive_policy)
        probabilities = self.session.run(None, {INPUT_NAME: batch})[0]
        return probabilities, np.full(len(batch), self.metadata.views_per_image)

    def predict_arrays(self, images: Sequence[np.ndarray], sources: Sequence[str]) -> list[Prediction]:
        """Score uint8 RGB ``[3, H, W]`` images; images of one size share ONNX Runtime calls."""
        if len(images) != len(sources):
            raise ValueError(f"{len(images)} images but {len(sources)} sources: pass one source name per image")
        by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            by_size[image.shape].append(index)
        results: dict[int, Prediction] = {}
        for indices in by_size.values():
            for start in range(0, len(indices), self.config.batch_size):
                chunk = indices[start : start + self.config.batch_size]
                probabilities, views = self._run(np.stack([images[i] for i in chunk]))
                for index, p, n_views in zip(chunk, probabilities, views, strict=True):
                    value, warning = _probability(float(p), sources[index])
                    results[index] = Prediction(
                        source=sources[index], p_roadwork=value, views=int(n_views), warning=warning
                    )
        return [results[index] for index in range(len(images))]

    def predict_bytes(self, data: bytes, source: str = "image", *, fit_to_bounds: bool = False) -> Prediction:
        """Score one encoded image (JPEG, PNG, ...)."""
        return self.predict_arrays(
            [decode_image(data, source=source, config=self.config, fit_to_bounds=fit_to_bounds)], [source]
        )[0]

    def predict_base64(self, b64: str | bytes) -> float:
        """The miner's answer for one base64 image (a ``data:`` URL prefix is accepted): a float in [0, 1].

        Raises:
            BadImageError: not text, not base64, not a decodable image, or a side below ``min_side``.
        """
        if isinstance(b64, bytes | bytearray):
            b64 = b64.decode("ascii", errors="replace")
        if not isinstance(b64, str):
            raise BadImageError(f"base64 input: expected a base64 str, got {type(b64).__name__}")
        payload = b64.split(",", 1)[1] if b64.startswith("data:") else b64
        try:
            data = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as error:
            raise BadImageError(f"base64 input: not valid base64 ({error})") from None
        return self.predict_bytes(data, "base64 image", fit_to_bounds=True).p_roadwork


@lru_cache(maxsize=1)
def default_predictor() -> Predictor:
    """The miner's predictor: the exported bundle folder named by ``$ROADWORK_MODEL``.

    A miner serves a pinned bundle and needs no MLflow server to start; the champion's bundle is written
    to a folder by ``python -m pipelines.predict --model champion --save-bundle DIR``.

    Raises:
        ModelLoadError: the variable is unset or names no bundle folder.
    """
    location = os.environ.get(MODEL_ENV)
    if not location:
        raise ModelLoadError(
            f"set {MODEL_ENV} to an exported bundle folder "
            "(the champion's: python -m pipelines.predict --model champion --save-bundle DIR)"
        )
    return Predictor.from_bundle(Path(location).expanduser())


def predict_base64_jpeg(b64: str) -> float:
    """Miner entry point: P(roadwork) in [0, 1] of a base64-encoded JPEG (or any image Pillow reads).

    Raises:
        PredictionError: nothing was scored, whatever the input (``None`` included) or the bundle's state:
            :class:`BadImageError` for this input, :class:`ModelLoadError` for the bundle (unset, missing,
            truncated or corrupt files; retried on the next call).
    """
    return default_predictor().predict_base64(b64)
