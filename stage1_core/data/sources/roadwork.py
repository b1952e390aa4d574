"""ROADWork (CMU, ICCV 2025): extended COCO annotations in ``scene/annotations`` and the images in ``scene/images``.

Every image comes from a work zone, so the source gives positives only; file names ``<city>_<seq>_...`` name
the sequence, and a sequence is one group (it must stay on one side of a split).
"""

from __future__ import annotations

import json
import logging
import re
from functools import partial
from typing import Any

import pandas as pd
from fsspec import AbstractFileSystem
from tqdm import tqdm

from stage1_core.data.sources.base import file_row, file_uri, filesystem, manifest_frame, unreadable_row
from stage1_core.data.sources.config import IngestConfig

logger = logging.getLogger(__name__)

ROADWORK_SCENE = "scene"
ROADWORK_IMAGES = "images"
ROADWORK_ANNOTATIONS = "annotations"
ROADWORK_SPLITS: tuple[str, ...] = ("train", "val")
ROADWORK_ANNOTATION_FILE = "instances_{split}_gps_split.json"  # as published; the reader takes any instances_*.json
ROADWORK_SEQUENCE = re.compile(r"^(?P<city>[^_/]+)_(?P<seq>[^_/]+)_")


def roadwork_file_name(city: str, seq_id: int, t: int) -> str:
    """ROADWork's ``<city>_<seq>_<frame>.jpg`` naming: the sequence is in the name."""
    return f"{city.lower()}_{seq_id:04d}_{t:06d}.jpg"


def _roadwork_annotation_files(fs: AbstractFileSystem, root: str) -> list[str]:
    """ROADWork's COCO files: ``scene/annotations/instances_*.json`` (or ``annotations/`` at the top)."""
    return sorted(fs.glob(f"{root}/{ROADWORK_SCENE}/{ROADWORK_ANNOTATIONS}/instances_*.json")) or sorted(
        fs.glob(f"{root}/{ROADWORK_ANNOTATIONS}/instances_*.json")
    )


def is_roadwork(fs: AbstractFileSystem, root: str) -> bool:
    """Detector: ROADWork COCO annotation files."""
    return bool(_roadwork_annotation_files(fs, root))


def _gps_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(str(part) for part in value)
    if isinstance(value, dict):
        return ",".join(str(value[key]) for key in ("lat", "lon") if key in value) or json.dumps(value, sort_keys=True)
    return str(value)


def _read_coco(fs: AbstractFileSystem, annotation_file: str) -> tuple[dict[str, Any], str]:
    """The COCO document and, when it cannot be used, why (not JSON, not an object, no ``images`` list)."""
    try:
        coco = json.loads(fs.cat_file(annotation_file))
    except (OSError, ValueError) as error:
        return {}, f"unreadable COCO file ({type(error).__name__}: {error})"
    if not isinstance(coco, dict):
        return {}, f"not a COCO file: the top level is a {type(coco).__name__}, not an object"
    if not isinstance(coco.get("images"), list):
        return {}, "not a COCO file: it has no `images` list"
    return coco, ""


def _objects_by_image(coco: dict[str, Any], annotation_file: str) -> dict[Any, set[str]]:
    """Category names per image id; annotations that name no known image, or lack its keys, are counted and named."""
    categories = {
        category.get("id"): category.get("name", "unknown")
        for category in coco.get("categories", [])
        if isinstance(category, dict)
    }
    image_ids = {image.get("id") for image in coco["images"] if isinstance(image, dict)}
    objects: dict[Any, set[str]] = {}
    dangling: list[Any] = []
    for annotation in coco.get("annotations", []):
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        if image_id not in image_ids:
            dangling.append(image_id)
            continue
        objects.setdefault(image_id, set()).add(categories.get(annotation.get("category_id"), "unknown"))
    if dangling:
        logger.warning(
            "%s: %d annotations point at no image of its `images` list (image ids %s): they are not used; "
            "check that the file is complete",
            annotation_file,
            len(dangling),
            sorted({str(image_id) for image_id in dangling})[:5],
        )
    return objects


def ingest_roadwork(path: str, config: IngestConfig) -> pd.DataFrame:
    """ROADWork COCO annotations: every image is a work zone (label 1); ``<city>_<seq>_...`` names a sequence group.

    An annotation file that cannot be used (not JSON, no ``images`` list) and an image entry without a file name
    become quarantined rows naming the problem; the other files are read.
    """
    fs, root = filesystem(path)
    rows = []
    for annotation_file in _roadwork_annotation_files(fs, root):
        name = annotation_file.rsplit("/", 1)[-1]
        official_split = re.sub(r"^instances_|(_gps_split)?\.json$", "", name)
        uri = file_uri(fs, annotation_file)
        problem_row = partial(unreadable_row, source="roadwork", uri=uri, official_split=official_split, config=config)
        coco, problem = _read_coco(fs, annotation_file)
        if problem:
            logger.warning("%s: %s", uri, problem)
            rows.append(problem_row(row_id=f"roadwork:{name}", problem=f"{uri}: {problem}", whole_file=True))
            continue
        images_dir = annotation_file.rsplit("/", 2)[0] + f"/{ROADWORK_IMAGES}"
        objects = _objects_by_image(coco, annotation_file)
        ungrouped = 0
        for index, image in enumerate(tqdm(coco["images"], desc=f"ingest roadwork {official_split}", unit="img")):
            file_name = image.get("file_name") if isinstance(image, dict) else None
            if not isinstance(file_name, str) or not file_name:
                problem = f"{uri}: images[{index}] has no file_name"
                rows.append(problem_row(row_id=f"roadwork:{name}#image{index}", problem=problem, whole_file=False))
                continue
            row_id = f"roadwork:{file_name}"
            sequence = ROADWORK_SEQUENCE.match(file_name.rsplit("/", 1)[-1])
            ungrouped += sequence is None
            description = image.get("scene_description") or ""
            rows.append(
                file_row(
                    fs,
                    f"{images_dir}/{file_name}",
                    config,
                    row_id=row_id,
                    source="roadwork",
                    label=1,
                    group_id=f"roadwork:seq:{sequence['city']}_{sequence['seq']}" if sequence else row_id,
                    official_split=official_split,
                    extras={"coco_id": image.get("id"), "objects": sorted(objects.get(image.get("id"), set()))},
                    city=sequence["city"] if sequence else "",
                    gps=_gps_text(image.get("gps")),
                    scene_description=description
                    if isinstance(description, str)
                    else json.dumps(description, sort_keys=True),
                )
            )
        if ungrouped:
            logger.warning(
                "%s: %d file names do not follow <city>_<seq>_...; each is its own group", annotation_file, ungrouped
            )
    logger.info("ingested %d ROADWork rows under %s", len(rows), path)
    return manifest_frame(rows)
