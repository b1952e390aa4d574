"""The one image decoder: encoded bytes -> upright 8-bit RGB, the same pixels for ingest, training and serving.

Ingest (perceptual hash, size), training and evaluation (``data.images``), the export's parity images and the
predictor/miner all call :func:`decode_rgb`, so a model is served exactly the image it was trained on. The rule
for every Pillow mode:

- EXIF orientation is applied first (a phone photo is upright in every path);
- transparency (RGBA, LA, PA, a palette with a transparent index) is composited over white: a transparent
  pixel has no colour of its own, and white is what a viewer shows (Pillow's plain ``convert("RGB")`` would
  keep the hidden colour, usually black);
- 16-bit and 32-bit integer grey is scaled to 8 bits (65535 -> 255), not clipped (Pillow's conversion saturates
  everything above 255 to white); float grey is clipped to [0, 255];
- CMYK, palette, 1-bit, grey and YCbCr go through Pillow's own conversion.

NumPy and Pillow only: the serving package imports it without torch.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
TRANSPARENT_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
BACKGROUND = (255, 255, 255)  # what a transparent pixel becomes
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


class ImageDecodeError(ValueError):
    """Bytes that are no decodable image; the message names the source and the reason."""


def open_image(data: bytes, source: str) -> Image.Image:
    """Open encoded bytes lazily (header only: size and mode are known, no pixel is decoded yet).

    Raises:
        ImageDecodeError: empty, not an image Pillow can read, or refused by Pillow's decompression-bomb guard.
    """
    if not data:
        raise ImageDecodeError(f"{source}: empty file (0 bytes)")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"{source}: not an image Pillow can read ({len(data)} bytes starting {data[:8]!r})"
        ) from None
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"{source}: refused by Pillow's decompression-bomb guard ({error})") from None
    except Exception as error:  # noqa: BLE001 - a malformed header can raise anything in a format plugin: bad input
        raise ImageDecodeError(f"{source}: unreadable image header ({type(error).__name__}: {error})") from None


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image once its EXIF orientation is applied (read from the header).

    Raises:
        ImageDecodeError: the EXIF block cannot be parsed.
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as error:  # noqa: BLE001 - a malformed EXIF block is bad input, whatever Pillow raises
        raise ImageDecodeError(f"unreadable EXIF block ({type(error).__name__}: {error})") from None
    width, height = image.size
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of a decoded image of any Pillow mode, by the rule of this module's docstring."""
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.clip(np.round(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.nan_to_num(np.asarray(image)), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in TRANSPARENT_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_opened(image: Image.Image, source: str, target_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image opened by :func:`open_image` into upright 8-bit RGB.

    Args:
        target_size: a hint: the (width, height) the caller will shrink the image to. A decoder may decode at a
            reduced scale no smaller than it (JPEG's DCT scaling, ``Image.draft``); the result is then smaller
            than the file's own size, never smaller than the hint. None: full resolution.

    Raises:
        ImageDecodeError: corrupt or truncated data, or a mode Pillow cannot convert.
    """
    try:
        if target_size is not None:
            image.draft("RGB", target_size)
        image.load()
        upright = ImageOps.exif_transpose(image)
    except Exception as error:  # noqa: BLE001 - Pillow's decoders raise many types on malformed bytes: all bad input
        raise ImageDecodeError(f"{source}: corrupt or truncated image data ({type(error).__name__}: {error})") from None
    try:
        return to_rgb(upright)
    except (OSError, ValueError) as error:
        raise ImageDecodeError(f"{source}: pixel mode {upright.mode} cannot be converted to RGB ({error})") from None


def decode_rgb(data: bytes, source: str = "image", target_size: tuple[int, int] | None = None) -> Image.Image:
    """Encoded bytes -> upright 8-bit RGB image (see :func:`decode_opened` for ``target_size``).

    Raises:
        ImageDecodeError: naming ``source`` and why the bytes cannot be decoded.
    """
    return decode_opened(open_image(data, source), source, target_size)


def rgb_array(image: Image.Image) -> np.ndarray:
    """An RGB image as a contiguous uint8 ``[3, H, W]`` array (what the exported graph takes)."""
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
