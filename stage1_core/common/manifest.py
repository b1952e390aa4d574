"""The unified image manifest: one row per image, whatever the source.

Every source adapter produces this schema, so validation, splitting, training and
evaluation never need to know where an image came from. Images stay where they are
(``uri`` is an fsspec path, local or ``s3://``); only the manifest travels as an artifact.
"""

from __future__ import annotations

import pandas as pd

MANIFEST_COLUMNS: dict[str, str] = {
    "id": "string",  # unique across sources, e.g. "natix:train:123"
    "source": "string",  # adapter that produced the row: natix, mapillary, roadwork, folder
    "uri": "string",  # fsspec path of the image file
    "sha256": "string",  # of the image bytes; "" when the file could not be read
    "phash": "string",  # perceptual hash (hex); "" when the image could not be decoded
    "label": "int64",  # 1 = roadwork, 0 = no roadwork
    "width": "int64",
    "height": "int64",
    "daytime": "string",
    "weather": "string",
    "scene_environment": "string",
    "city": "string",
    "gps": "string",
    "group_id": "string",  # sequence / near-duplicate group: never spans two splits
    "official_split": "string",  # the source's own split ("train"/"test"), "" if none
    "scene_description": "string",
    "decode_error": "string",  # "" when the image decoded; else why it did not
    "extras": "string",  # JSON object of source-specific fields
}

SPLITS: tuple[str, ...] = ("train", "val_select", "val_calib", "val_test")


def empty_manifest() -> pd.DataFrame:
    """An empty manifest with the right columns and dtypes."""
    return conform_manifest(pd.DataFrame({name: [] for name in MANIFEST_COLUMNS}))


def conform_manifest(frame: pd.DataFrame) -> pd.DataFrame:
    """Order and type the manifest columns; extra columns (e.g. ``split``) are kept at the end.

    Raises:
        ValueError: naming the missing columns, so an adapter bug is caught at its source.
    """
    missing = [name for name in MANIFEST_COLUMNS if name not in frame.columns]
    if missing:
        raise ValueError(
            f"manifest is missing columns {missing}; every adapter must fill all of {list(MANIFEST_COLUMNS)}"
        )
    extra = [name for name in frame.columns if name not in MANIFEST_COLUMNS]
    typed = frame[list(MANIFEST_COLUMNS) + extra].astype(MANIFEST_COLUMNS)
    return typed.reset_index(drop=True)
