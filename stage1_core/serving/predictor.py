"""Serve P(roadwork) from an exported model bundle (a registered one is fetched by ``registry.champion``).

The predictor needs ONNX Runtime only: neither it nor ``serving.py`` imports PyTorch, so a miner
starts in a fraction of the time. It decodes images the way the training data was read (EXIF
orientation applied, every colour mode turned into 8-bit RGB), and runs the adaptive two-graph path
when the bundle has it (``mode="adaptive"``, see ``adaptive.py``), else the fixed multi-view graph.
``predict_base64_jpeg`` is the miner's entry point: one base64 image in, one float in [0, 1] out,
never an exception for an image that decodes (the subnet validator scores an answer outside
[0, 1] or no answer as 0).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from stage1_core.common.cli import UsageError
from stage1_core.serving.adaptive import AdaptivePolicy
from stage1_core.serving.bundle import (
    INPUT_NAME,
    METADATA_FILE,
    MODEL_FILE,
    AdaptiveSessions,
    ExportedModel,
    ExportMetadata,
    cpu_session,
)

logger = logging.getLogger(__name__)

MODEL_ENV = "ROADWORK_MODEL"  # the exported bundle folder the miner function serves
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_TRANSPARENT_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class PredictorConfig(BaseModel):
    """Input bounds and runtime settings of the predictor."""

    model_config = ConfigDict(extra="forbid")

    min_side: int = Field(
        16, ge=1, description="smallest image side accepted, in px (the exported graph's lower bound)"
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


class BadImageError(ValueError):
    """An input that cannot be scored; the message names the input and the reason."""


class ModelLoadError(UsageError, RuntimeError):
    """The model cannot be loaded; the message says from where and what to do."""


class Prediction(BaseModel):
    """P(roadwork) of one image and how it was obtained."""

    source: str
    p_roadwork: float = Field(ge=0.0, le=1.0)
    views: int  # backbone views spent on the image (1 = global view only)
    warning: str | None = None


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any Pillow mode.

    16-bit grey is scaled (not clipped), transparency goes over white, CMYK/palette/grey are converted.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.clip(np.round(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.nan_to_num(np.asarray(image)), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in _TRANSPARENT_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, *, source: str, config: PredictorConfig, fit_to_bounds: bool = False) -> np.ndarray:
    """Encoded image bytes -> uint8 RGB ``[3, H, W]`` with EXIF orientation applied.

    Args:
        fit_to_bounds: resize an image outside ``[min_side, max_pixels]`` into the bounds instead of
            refusing it (the miner must answer every image it can decode).

    Raises:
        BadImageError: empty, not an image, corrupt or truncated, too large for Pillow's decompression-bomb
            guard, or (unless ``fit_to_bounds``) outside the configured size bounds.
    """
    if not data:
        raise BadImageError(f"{source}: empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImageError(
            f"{source}: not an image Pillow can read ({len(data)} bytes starting {data[:8]!r})"
        ) from None
    except Image.DecompressionBombError as error:
        raise BadImageError(f"{source}: refused by Pillow's decompression-bomb guard ({error})") from None
    width, height = image.size
    if width * height > config.max_pixels:
        if not fit_to_bounds:
            raise BadImageError(
                f"{source}: {width}x{height} = {width * height / 1e6:.1f} Mpx "
                f"is over the bound of {config.max_pixels / 1e6:.1f} Mpx "
                "(PredictorConfig.max_pixels); downscale the image or raise the bound"
            )
        scale = math.sqrt(config.max_pixels / (width * height))
        image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))  # JPEG: decode at a reduced scale
    try:
        image.load()
        image = to_rgb(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(f"{source}: corrupt or truncated image data ({error})") from None
    image = _fit(image, source, config, fit_to_bounds)
    return np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))


def _fit(image: Image.Image, source: str, config: PredictorConfig, fit_to_bounds: bool) -> Image.Image:
    """Check (or, with ``fit_to_bounds``, enforce by resizing) the size bounds on the decoded, upright image."""
    width, height = image.size
    if min(width, height) < config.min_side:
        if not fit_to_bounds:
            raise BadImageError(
                f"{source}: {width}x{height} px is below the smallest side of {config.min_side} px "
                "(PredictorConfig.min_side)"
            )
        scale = config.min_side / min(width, height)
        logger.warning(
            "%s: %dx%d px upscaled to a %d px short side to be scored", source, width, height, config.min_side
        )
        return image.resize((math.ceil(width * scale), math.ceil(height * scale)), Image.Resampling.BILINEAR)
    if width * height > config.max_pixels:
        scale = math.sqrt(config.max_pixels / (width * height))
        logger.warning("%s: %dx%d px shrunk to fit %d pixels", source, width, height, config.max_pixels)
        return image.resize(
            (max(config.min_side, int(width * scale)), max(config.min_side, int(height * scale))),
            Image.Resampling.BILINEAR,
        )
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
        self.config = config or PredictorConfig()
        exported = exported.served(self.config.precision)
        self.precision = exported.precision
        self.metadata: ExportMetadata = exported.metadata
        self.origin = origin
        self.session = cpu_session(exported.onnx_bytes, self.config.threads)
        adaptive = exported.adaptive if self.config.mode == "adaptive" else None
        if self.config.mode == "adaptive" and adaptive is None:
            logger.warning(
                "%s has no adaptive graphs (exported before they existed?): serving the fixed %d-view graph",
                origin or "the model",
                self.metadata.views_per_image,
            )
        self.adaptive_policy: AdaptivePolicy | None = adaptive.metadata.policy if adaptive else None
        self.adaptive_sessions: AdaptiveSessions | None = adaptive.sessions(self.config.threads) if adaptive else None

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

    def predict_base64(self, b64: str) -> float:
        """The miner's answer for one base64 image (a ``data:`` URL prefix is accepted): a float in [0, 1].

        Raises:
            BadImageError: the text is not base64 or the bytes are not a decodable image.
        """
        payload = b64.split(",", 1)[1] if b64.startswith("data:") else b64
        try:
            data = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as error:
            raise BadImageError(f"base64 input: cannot decode ({error})") from None
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
    """Miner entry point: P(roadwork) in [0, 1] of a base64-encoded JPEG (or any image Pillow reads)."""
    return default_predictor().predict_base64(b64)
