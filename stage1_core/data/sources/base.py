"""What every source reader shares: its error, fsspec paths, what an image's bytes tell, the image store, the row.

NATIX images live inside parquet/arrow files, so they are written once into a content-addressed image store
(:func:`store_image`); the other sources are image files already, so their ``uri`` is the file itself (an
fsspec path: local or ``s3://``). Problems never crash the ingest and never drop a row: an image that cannot
be decoded keeps ``decode_error`` set, and a problem a reader found (e.g. a Mapillary image without its polygons
file) is written to ``extras["ingest_error"]``, so validation quarantines the row with that reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fsspec
import imagehash
import numpy as np
import pandas as pd
from fsspec import AbstractFileSystem
from PIL import Image
from pydantic import BaseModel

from stage1_core.common.atomic_io import write_atomic
from stage1_core.common.cli import UsageError
from stage1_core.common.images import ImageDecodeError, decode_opened, open_image, upright_size
from stage1_core.common.manifest import conform_manifest, empty_manifest
from stage1_core.data.sources.config import IngestConfig

_THUMBNAIL_SIDE = 128


class DataLayoutError(UsageError, ValueError):
    """The data path is missing, empty, or in no layout this project reads."""


class ImageFacts(BaseModel):
    """What ingest learns from an image's bytes, without keeping its pixels."""

    width: int = 0  # after the EXIF orientation is applied
    height: int = 0
    phash: str = ""
    mode: str = ""
    orange_red_fraction: float = 0.0
    decode_error: str = ""


def filesystem(path: str | Path) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of ``path`` and the path on it (a local path has ``~`` expanded)."""
    return fsspec.core.url_to_fs(str(Path(path).expanduser()) if "://" not in str(path) else str(path))


def file_uri(fs: AbstractFileSystem, path: str) -> str:
    """A path other processes can open: plain for local files, with its protocol (``s3://``) otherwise."""
    return path if "file" in fs.protocol else fs.unstrip_protocol(path)


def is_visible(path: str) -> bool:
    """False for hidden files and folders (a name starting with a dot)."""
    return not path.rsplit("/", 1)[-1].startswith(".")


def subfolders(fs: AbstractFileSystem, root: str) -> list[str]:
    """The visible folders directly under ``root``, sorted."""
    return sorted(
        entry["name"]
        for entry in fs.ls(root, detail=True)
        if entry["type"] == "directory" and is_visible(entry["name"])
    )


def store_image(image_bytes: bytes, image_store: str) -> tuple[str, str]:
    """Write bytes under their sha256 (once) and return (sha256, uri)."""
    sha = hashlib.sha256(image_bytes).hexdigest()
    uri = f"{image_store.rstrip('/')}/{sha[:2]}/{sha}"
    fs, fs_path = fsspec.core.url_to_fs(uri)
    if not fs.exists(fs_path):
        if (
            "file" in fs.protocol
        ):  # a unique temporary name, then a rename: a crash or a concurrent ingest never leaves a torn image
            write_atomic(Path(fs_path), image_bytes, durable=False)
        else:  # object stores publish an object whole or not at all
            fs.pipe_file(fs_path, image_bytes)
    return sha, uri


def orange_red_fraction(image: Image.Image) -> float:
    """Share of saturated, bright orange-to-red pixels: the colour of cones and of their look-alikes."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.uint8)
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    red_orange = (hue <= 24) | (hue >= 245)  # 0-34 degrees and 346-360 degrees on PIL's 0-255 hue scale
    return float(np.mean(red_orange & (saturation >= 140) & (value >= 110)))


def describe_image(image_bytes: bytes, max_megapixels: float = 50.0) -> ImageFacts:
    """Size (EXIF orientation applied), perceptual hash and colour facts of an encoded image.

    The image is decoded by :func:`~stage1_core.common.images.decode_rgb`'s rule, the one training and serving
    use (transparency over white, 16-bit scaled, EXIF orientation), so the hash and the colour share describe the
    pixels the model will see. Errors are returned in ``decode_error``, never raised. The header is read first,
    so an image above ``max_megapixels`` is refused before its pixels are decoded (a decompression bomb costs
    nothing); images above PIL's own bomb limit fail at open. The hash needs a 128 px thumbnail only, which is
    passed to the decoder as its target size: a 64-bit pHash (Zauner 2010) and a colour share.
    """
    try:
        image = open_image(image_bytes, "image")
    except ImageDecodeError as error:
        return ImageFacts(decode_error=str(error).removeprefix("image: "))
    with image:
        width, height = image.size
        megapixels = width * height / 1e6
        facts = ImageFacts(width=width, height=height, mode=image.mode)
        if megapixels > max_megapixels:  # checked before getexif, which decodes a PNG in full
            return facts.model_copy(
                update={"decode_error": f"{megapixels:.1f} megapixels, above the {max_megapixels:g} limit: not decoded"}
            )
        try:
            if upright_size(image) != image.size:
                facts = facts.model_copy(update={"width": height, "height": width})
            thumbnail = decode_opened(image, "image", target_size=(_THUMBNAIL_SIDE, _THUMBNAIL_SIDE))
        except ImageDecodeError as error:
            return facts.model_copy(update={"decode_error": str(error).removeprefix("image: ")})
    thumbnail.thumbnail((_THUMBNAIL_SIDE, _THUMBNAIL_SIDE))
    return facts.model_copy(
        update={
            "phash": str(imagehash.phash(thumbnail)),
            "orange_red_fraction": orange_red_fraction(thumbnail),
        }
    )


def manifest_row(
    *,
    row_id: str,
    source: str,
    uri: str,
    sha256: str,
    facts: ImageFacts,
    label: int,
    group_id: str,
    official_split: str,
    config: IngestConfig,
    extras: dict[str, Any],
    hard_negative_reasons: Sequence[str] = (),
    **tags: str,
) -> dict[str, Any]:
    """One manifest row; negatives with orange/red look-alikes (or source-given reasons) are tagged hard."""
    reasons = list(hard_negative_reasons)
    if facts.orange_red_fraction >= config.orange_red_min_fraction > 0:
        reasons.append("orange_red_pixels")
    hard = label == 0 and bool(reasons)
    extras = extras | {"mode": facts.mode, "hard_negative": hard} | ({"hard_negative_reasons": reasons} if hard else {})
    return {
        "id": row_id,
        "source": source,
        "uri": uri,
        "sha256": sha256,
        "phash": facts.phash,
        "label": label,
        "width": facts.width,
        "height": facts.height,
        "daytime": tags.get("daytime", ""),
        "weather": tags.get("weather", ""),
        "scene_environment": tags.get("scene_environment", ""),
        "city": tags.get("city", ""),
        "gps": tags.get("gps", ""),
        "group_id": group_id,
        "official_split": official_split,
        "scene_description": tags.get("scene_description", ""),
        "decode_error": facts.decode_error,
        "extras": json.dumps(extras, sort_keys=True),
    }


def file_row(fs: AbstractFileSystem, path: str, config: IngestConfig, **fields: Any) -> dict[str, Any]:
    """A manifest row for an image file left in place; an unreadable file becomes a decode error."""
    try:
        image_bytes = fs.cat_file(path)
    except OSError as error:
        facts = ImageFacts(decode_error=f"file unreadable: {type(error).__name__}: {error}")
        return manifest_row(uri=file_uri(fs, path), sha256="", facts=facts, config=config, **fields)
    facts = describe_image(image_bytes, config.max_decode_megapixels)
    return manifest_row(
        uri=file_uri(fs, path), sha256=hashlib.sha256(image_bytes).hexdigest(), facts=facts, config=config, **fields
    )


UNREADABLE_FILE = "unreadable_file"  # extras key of a row standing for (part of) a source file that cannot be read


def unreadable_row(
    *, row_id: str, source: str, uri: str, official_split: str, problem: str, config: IngestConfig, whole_file: bool
) -> dict[str, Any]:
    """A manifest row standing for what a source file held but could not be read (a corrupt shard, a COCO file
    without images, an image entry without a file name): validation quarantines it with ``problem`` as its
    reason, so it is counted and named instead of stopping the ingest of the readable files around it.

    Args:
        whole_file: the row stands for (part of) a file that cannot be read, not for one bad entry: how many
            images such a file held is unknown, so validation makes it critical.
    """
    return manifest_row(
        row_id=row_id,
        source=source,
        uri=uri,
        sha256="",
        facts=ImageFacts(),
        label=-1,
        group_id=row_id,
        official_split=official_split,
        config=config,
        extras={"ingest_error": problem} | ({UNREADABLE_FILE: uri} if whole_file else {}),
    )


def manifest_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows as a conformed manifest (an empty manifest with its columns when there are none)."""
    return conform_manifest(pd.DataFrame(rows)) if rows else empty_manifest()
