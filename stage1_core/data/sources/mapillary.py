"""Mapillary Vistas v2.0: ``config_v2.0.json`` at the root, ``<split>/images/*.jpg`` and one polygons file per image.

An image is positive iff one of its polygons carries a configured roadwork label (exact names, never a
substring: see :class:`~stage1_core.data.sources.config.MapillaryConfig`, which holds the label names and the
labelled split folders). Vistas has no sequences: each image is its own group.
"""

from __future__ import annotations

import json
import logging

import pandas as pd
from fsspec import AbstractFileSystem
from tqdm import tqdm

from stage1_core.data.sources.base import DataLayoutError, file_row, filesystem, is_visible, manifest_frame, subfolders
from stage1_core.data.sources.config import IngestConfig

logger = logging.getLogger(__name__)

MAPILLARY_CONFIG_FILE = "config_v2.0.json"  # labels[]: name, readable, color, instances, evaluate
MAPILLARY_IMAGES = "images"  # <split>/images/<image id>.jpg
MAPILLARY_POLYGONS = "v2.0/polygons"  # <split>/v2.0/polygons/<image id>.json: objects[]: id, label, polygon


def is_mapillary(fs: AbstractFileSystem, root: str) -> bool:
    """Detector: a Vistas v2.0 config file at the root."""
    return fs.isfile(f"{root}/{MAPILLARY_CONFIG_FILE}")


def _mapillary_label_names(fs: AbstractFileSystem, root: str) -> set[str]:
    config_file = f"{root}/{MAPILLARY_CONFIG_FILE}"
    try:
        return {label["name"] for label in json.loads(fs.cat_file(config_file))["labels"]}
    except (KeyError, TypeError, ValueError) as error:
        raise DataLayoutError(f"{config_file}: not a Mapillary v2.0 config ({type(error).__name__}: {error})") from None


def _mapillary_objects(fs: AbstractFileSystem, polygons: str) -> tuple[set[str], str]:
    """Label names in a polygons file, or the problem that prevented reading them."""
    try:
        return {str(item["label"]) for item in json.loads(fs.cat_file(polygons))["objects"]}, ""
    except FileNotFoundError:
        return set(), f"polygons file {polygons} is missing: the image has no label"
    except (KeyError, TypeError, ValueError) as error:
        return set(), f"polygons file {polygons} is unreadable ({type(error).__name__}: {error})"


def ingest_mapillary(path: str, config: IngestConfig) -> pd.DataFrame:
    """Mapillary Vistas v2.0: positive iff a polygon carries one of the configured roadwork labels (exact names).

    Negatives with a hard-negative label (e.g. ``object--pothole``) or orange/red pixels are tagged
    hard negatives. Vistas has no sequences: each image is its own group until near-duplicate
    clustering merges it with others.

    Raises:
        DataLayoutError: a configured label does not exist in ``config_v2.0.json`` (a typo would label
            every image negative).
    """
    fs, root = filesystem(path)
    settings = config.mapillary
    known = _mapillary_label_names(fs, root)
    unknown = sorted(set(settings.roadwork_labels + settings.hard_negative_labels) - known)
    if unknown:
        raise DataLayoutError(
            f"{root}/{MAPILLARY_CONFIG_FILE} does not define the configured Mapillary labels {unknown}; "
            "fix IngestConfig.mapillary"
        )
    roadwork, hard = set(settings.roadwork_labels), set(settings.hard_negative_labels)
    unread = {folder.rsplit("/", 1)[-1] for folder in subfolders(fs, root)} - set(settings.splits)
    for split in sorted(unread):
        logger.info("mapillary: split folder %s/%s not read (not in IngestConfig.mapillary.splits)", root, split)
    rows = []
    for split in settings.splits:
        images = sorted(file for file in fs.glob(f"{root}/{split}/{MAPILLARY_IMAGES}/*") if is_visible(file))
        for image in tqdm(images, desc=f"ingest mapillary {split}", unit="img"):
            image_id = image.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            labels, problem = _mapillary_objects(fs, f"{root}/{split}/{MAPILLARY_POLYGONS}/{image_id}.json")
            found = sorted(labels & roadwork)
            row_id = f"mapillary:{split}:{image_id}"
            rows.append(
                file_row(
                    fs,
                    image,
                    config,
                    row_id=row_id,
                    source="mapillary",
                    label=-1 if problem else int(bool(found)),
                    group_id=row_id,
                    official_split=split,
                    extras={"roadwork_labels": found} | ({"ingest_error": problem} if problem else {}),
                    hard_negative_reasons=sorted(labels & hard),
                )
            )
    logger.info("ingested %d Mapillary rows (%s) under %s", len(rows), ", ".join(settings.splits), path)
    return manifest_frame(rows)
