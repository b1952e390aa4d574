"""Source adapters: turn a dataset folder into the unified manifest.

Layouts read (see :data:`LAYOUTS`): NATIX as parquet shards or as a ``datasets`` arrow folder,
Mapillary Vistas v2.0, ROADWork COCO, a plain ``roadwork/`` + ``no_roadwork/`` folder, and a folder
whose subfolders are each one of those (several sources fused into one manifest).

Each adapter streams its source (one record batch or one file at a time, never all images in
memory) and returns manifest rows. NATIX images live inside parquet/arrow files, so they are
written once into a content-addressed image store; the other sources are image files already, so
their ``uri`` is the file itself (an fsspec path: local or ``s3://``). Problems never crash the
ingest and never drop a row: an image that cannot be decoded keeps ``decode_error`` set, and a
problem the adapter found (e.g. a Mapillary image without its polygons file) is written to
``extras["ingest_error"]``, so validation quarantines the row with that reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import fsspec
import imagehash
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from PIL import ExifTags, Image
from pydantic import BaseModel, Field, field_validator
from tqdm import tqdm

from stage1_core.common.atomic_io import write_atomic
from stage1_core.common.cli import UsageError
from stage1_core.common.manifest import conform_manifest, empty_manifest

logger = logging.getLogger(__name__)

Source = Literal["natix", "mapillary", "roadwork", "folder"]

NATIX_COLUMNS: tuple[str, ...] = (
    "image",
    "id",
    "label",
    "gps",
    "city_name",
    "scene_description",
    "video_info.seq_id",
    "video_info.vid_id",
    "scene_level_tags.daytime",
    "scene_level_tags.weather",
    "scene_level_tags.scene_environment",
    "scene_level_tags.travel_alteration",
)
NATIX_REQUIRED: tuple[str, ...] = ("image", "id", "label")

# Exact Mapillary Vistas v2.0 label names that mean roadwork (reference: data-and-evaluator.md).
MAPILLARY_ROADWORK_LABELS: tuple[str, ...] = (
    "construction--barrier--temporary",
    "object--traffic-cone",
    "object--traffic-sign--temporary-front",
    "object--traffic-sign--temporary-back",
)
# Ordinary road surfaces and permanent structures: a substring match on "construction"/"barrier" would
# make nearly every street image positive, so these can never be configured as roadwork evidence.
MAPILLARY_TRAP_PREFIXES: tuple[str, ...] = ("construction--flat--",)
MAPILLARY_TRAP_LABELS: tuple[str, ...] = (
    "construction--barrier--curb",
    "construction--barrier--fence",
    "construction--barrier--guard-rail",
)

LAYOUTS: dict[str, str] = {
    "natix": "NATIX parquet: DIR/data/{train,test}-*.parquet (or *.parquet in DIR) with an `image` column",
    "natix_arrow": "NATIX `datasets` save_to_disk or cache folder: DIR/**/*.arrow with an `image` column",
    "mapillary": "Mapillary Vistas v2.0: DIR/config_v2.0.json and DIR/{training,validation}/images/*.jpg "
    "with DIR/<split>/v2.0/polygons/<image id>.json",
    "roadwork": "ROADWork COCO: DIR/scene/annotations/instances_*.json (or DIR/annotations/instances_*.json) "
    "with the images in the sibling images/ folder",
    "folder": "plain folder: DIR/roadwork/** and DIR/no_roadwork/** image files",
    "multi": "several sources: every subfolder of DIR in one of the layouts above",
}
LAYOUT_SOURCE: dict[str, str] = {
    "natix": "natix",
    "natix_arrow": "natix",
    "mapillary": "mapillary",
    "roadwork": "roadwork",
    "folder": "folder",
}

# Pixel modes that PIL converts to 8-bit RGB faithfully (alpha dropped, CMYK and grey converted) when
# an image is read. High-bit-depth modes (16-bit grey "I;16", 32-bit "I", float "F") are rejected:
# PIL's RGB conversion clips them to white instead of rescaling.
ACCEPTED_MODES: frozenset[str] = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
# EXIF orientation -> the transpose that makes the image upright (as PIL.ImageOps.exif_transpose).
_EXIF_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_THUMBNAIL_SIDE = 128
_SPLIT_NAMES = ("train", "test", "validation", "val")
_ROADWORK_SEQUENCE = re.compile(r"^(?P<city>[^_/]+)_(?P<seq>[^_/]+)_")


class DataLayoutError(UsageError, ValueError):
    """The data path is missing, empty, or in no layout this project reads."""


class MapillaryConfig(BaseModel):
    """How Mapillary Vistas polygons become labels: by exact label names, never by substring."""

    roadwork_labels: list[str] = Field(
        default=list(MAPILLARY_ROADWORK_LABELS),
        description="labels that make an image positive; add construction--barrier--concrete-block to count jersey barriers",
    )
    hard_negative_labels: list[str] = Field(
        default=["object--pothole"], description="labels that tag a negative as hard"
    )
    splits: list[str] = Field(
        default=["training", "validation"], description="split folders read (testing has no labels)"
    )

    @field_validator("roadwork_labels")
    @classmethod
    def _no_traps(cls, labels: list[str]) -> list[str]:
        traps = [
            label for label in labels if label.startswith(MAPILLARY_TRAP_PREFIXES) or label in MAPILLARY_TRAP_LABELS
        ]
        if traps:
            raise ValueError(
                f"roadwork_labels {traps} are road surfaces or permanent structures, never roadwork evidence; remove them"
            )
        return labels


class IngestConfig(BaseModel):
    """Where to read from, what source to expect, and where NATIX's embedded images are written."""

    path: str = "data/demo"
    image_store: str = "data/image_store"
    record_batch_size: int = Field(64, ge=1, description="NATIX rows converted to Python objects at a time")
    source: Source | None = Field(None, description="expected source; None: whatever the detected layout is")
    max_decode_megapixels: float = Field(
        50.0, gt=0, description="larger images are not decoded (their header size is kept and the row is quarantined)"
    )
    orange_red_min_fraction: float = Field(
        0.002,
        ge=0,
        le=1,
        description="a negative with at least this share of orange/red pixels is tagged a hard negative",
    )
    mapillary: MapillaryConfig = MapillaryConfig()


class ImageFacts(BaseModel):
    """What ingest learns from an image's bytes, without keeping its pixels."""

    width: int = 0  # after the EXIF orientation is applied
    height: int = 0
    phash: str = ""
    mode: str = ""
    orange_red_fraction: float = 0.0
    decode_error: str = ""


def describe_layouts() -> str:
    """One line per accepted layout, for error messages and the README."""
    return "; ".join(f"{name}: {text}" for name, text in LAYOUTS.items())


def _filesystem(path: str | Path) -> tuple[AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(str(Path(path).expanduser()) if "://" not in str(path) else str(path))


def _uri(fs: AbstractFileSystem, path: str) -> str:
    """A path other processes can open: plain for local files, with its protocol (``s3://``) otherwise."""
    return path if "file" in fs.protocol else fs.unstrip_protocol(path)


def _visible(path: str) -> bool:
    return not path.rsplit("/", 1)[-1].startswith(".")


def _natix_parquet_files(fs: AbstractFileSystem, root: str) -> list[str]:
    """The NATIX parquet shards under ``root`` (``data/*.parquet`` as in the dataset repo, or top level)."""
    files = sorted(fs.glob(f"{root}/data/*.parquet")) or sorted(fs.glob(f"{root}/*.parquet"))
    return [file for file in files if "image" in _parquet_schema(fs, file).names]


def _parquet_schema(fs: AbstractFileSystem, file: str) -> pa.Schema:
    with fs.open(file, "rb") as handle:
        return pq.read_schema(handle)


def _open_arrow(fs: AbstractFileSystem, file: str) -> Any:
    """A seekable arrow source: memory-mapped when local, so record batches are not copied to the heap."""
    return pa.memory_map(file) if "file" in fs.protocol else fs.open(file, "rb")


def _arrow_batches(fs: AbstractFileSystem, file: str) -> Iterator[pa.RecordBatch]:
    """Record batches of an arrow file in IPC stream format (what ``datasets`` writes) or file format."""
    source = _open_arrow(fs, file)
    try:
        reader = pa.ipc.open_stream(source)
        yield from reader
    except pa.ArrowInvalid:
        source.seek(0)
        reader = pa.ipc.open_file(source)
        for index in range(reader.num_record_batches):
            yield reader.get_batch(index)
    finally:
        source.close()


def _arrow_schema(fs: AbstractFileSystem, file: str) -> pa.Schema | None:
    source = _open_arrow(fs, file)
    try:
        return pa.ipc.open_stream(source).schema
    except pa.ArrowInvalid:
        source.seek(0)
        try:
            return pa.ipc.open_file(source).schema
        except pa.ArrowInvalid:
            return None
    finally:
        source.close()


def _natix_arrow_files(fs: AbstractFileSystem, root: str) -> list[str]:
    """The arrow files of a ``datasets`` save_to_disk or cache folder that hold an ``image`` column."""
    files = sorted(file for file in fs.find(root, maxdepth=6) if file.endswith(".arrow"))
    return [file for file in files if (schema := _arrow_schema(fs, file)) is not None and "image" in schema.names]


def _official_split(relative: str) -> str:
    """The source's own split from a path: the last folder or file-name token that names one."""
    tokens = [token for token in re.split(r"[/_.-]", relative) if token]
    return next((token for token in reversed(tokens) if token in _SPLIT_NAMES), "unknown")


def _roadwork_annotation_files(fs: AbstractFileSystem, root: str) -> list[str]:
    """ROADWork's COCO files: ``scene/annotations/instances_*.json`` (or ``annotations/`` at the top)."""
    return sorted(fs.glob(f"{root}/scene/annotations/instances_*.json")) or sorted(
        fs.glob(f"{root}/annotations/instances_*.json")
    )


def _is_mapillary(fs: AbstractFileSystem, root: str) -> bool:
    return fs.isfile(f"{root}/config_v2.0.json")


def _is_folder(fs: AbstractFileSystem, root: str) -> bool:
    return fs.isdir(f"{root}/roadwork") and fs.isdir(f"{root}/no_roadwork")


_DETECTORS: tuple[tuple[str, Callable[[AbstractFileSystem, str], bool]], ...] = (
    ("mapillary", _is_mapillary),
    ("folder", _is_folder),
    ("roadwork", lambda fs, root: bool(_roadwork_annotation_files(fs, root))),
    ("natix", lambda fs, root: bool(_natix_parquet_files(fs, root))),
    ("natix_arrow", lambda fs, root: bool(_natix_arrow_files(fs, root))),
)


def _single_layout(fs: AbstractFileSystem, root: str) -> str | None:
    return next((name for name, detect in _DETECTORS if detect(fs, root)), None)


def _subfolders(fs: AbstractFileSystem, root: str) -> list[str]:
    return sorted(
        entry["name"] for entry in fs.ls(root, detail=True) if entry["type"] == "directory" and _visible(entry["name"])
    )


def detect_layout(path: str | Path) -> str:
    """Name the layout of ``path``, or raise :class:`DataLayoutError` saying what is accepted."""
    fs, root = _filesystem(path)
    if not fs.exists(root):
        raise DataLayoutError(f"data path {path} does not exist; accepted layouts: {describe_layouts()}")
    if not fs.isdir(root) or not fs.ls(root):
        raise DataLayoutError(f"data path {path} is empty or not a folder; accepted layouts: {describe_layouts()}")
    layout = _single_layout(fs, root)
    if layout is not None:
        return layout
    subfolders = {folder: _single_layout(fs, folder) for folder in _subfolders(fs, root)}
    if subfolders and all(subfolders.values()):
        return "multi"
    unknown = [folder for folder, found in subfolders.items() if found is None]
    hint = f" (subfolders in no known layout: {unknown})" if unknown and len(unknown) < len(subfolders) else ""
    raise DataLayoutError(f"data path {path} is in no known layout{hint}; accepted layouts: {describe_layouts()}")


def dataset_fingerprint(path: str | Path) -> str:
    """Hash of file names, sizes and modification times: cheap, and changes when the data does.

    Passed to the ingest step as a parameter so that ZenML's step cache is invalidated when
    the files change, without reading every byte on each run.
    """
    fs, root = _filesystem(path)
    digest = hashlib.sha256()
    for name, info in sorted(fs.find(root, detail=True).items()):
        stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or ""
        digest.update(f"{name[len(root) :]}:{info.get('size')}:{stamp}\n".encode())
    return digest.hexdigest()


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

    Errors are returned in ``decode_error``, never raised. The header is read first, so an image
    above ``max_megapixels`` is refused before its pixels are decoded (a decompression bomb costs
    nothing); images above PIL's own bomb limit fail at open. JPEGs are decoded at a reduced DCT
    scale (``draft``): enough for a 64-bit pHash (Zauner 2010) and a colour share.
    """
    try:
        with Image.open(io.BytesIO(image_bytes)) as image:
            width, height = image.size
            megapixels = width * height / 1e6
            if megapixels > max_megapixels:  # checked before getexif, which decodes a PNG in full
                return ImageFacts(
                    width=width,
                    height=height,
                    mode=image.mode,
                    decode_error=f"{megapixels:.1f} megapixels, above the {max_megapixels:g} limit: not decoded",
                )
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            facts = ImageFacts(width=width, height=height, mode=image.mode)
            if image.mode not in ACCEPTED_MODES:
                return facts.model_copy(
                    update={
                        "decode_error": f"pixel mode {image.mode} (high bit depth) is rejected: convert it to 8-bit RGB"
                    }
                )
            image.draft("RGB", (_THUMBNAIL_SIDE, _THUMBNAIL_SIDE))
            thumbnail = image.convert("RGB")
        if orientation in _EXIF_TRANSPOSE:
            thumbnail = thumbnail.transpose(_EXIF_TRANSPOSE[orientation])
        thumbnail.thumbnail((_THUMBNAIL_SIDE, _THUMBNAIL_SIDE))
        return facts.model_copy(
            update={"phash": str(imagehash.phash(thumbnail)), "orange_red_fraction": orange_red_fraction(thumbnail)}
        )
    except Exception as error:  # noqa: BLE001 - any decoder failure is a data problem to quarantine, not a crash
        return ImageFacts(decode_error=f"{type(error).__name__}: {error}")


def _row(
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


def _file_row(fs: AbstractFileSystem, path: str, config: IngestConfig, **fields: Any) -> dict[str, Any]:
    """A manifest row for an image file left in place; an unreadable file becomes a decode error."""
    try:
        image_bytes = fs.cat_file(path)
    except OSError as error:
        facts = ImageFacts(decode_error=f"file unreadable: {type(error).__name__}: {error}")
        return _row(uri=_uri(fs, path), sha256="", facts=facts, config=config, **fields)
    facts = describe_image(image_bytes, config.max_decode_megapixels)
    return _row(
        uri=_uri(fs, path), sha256=hashlib.sha256(image_bytes).hexdigest(), facts=facts, config=config, **fields
    )


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return conform_manifest(pd.DataFrame(rows)) if rows else empty_manifest()


def _natix_row(official_split: str, record: dict[str, Any], config: IngestConfig) -> dict[str, Any]:
    image_bytes = (record.get("image") or {}).get("bytes") or b""
    sha, uri = store_image(image_bytes, config.image_store)
    seq_id = record.get("video_info.seq_id")
    vid_id = record.get("video_info.vid_id") or ""
    row_id = f"natix:{official_split}:{record['id']}"
    return _row(
        row_id=row_id,
        source="natix",
        uri=uri,
        sha256=sha,
        facts=describe_image(image_bytes, config.max_decode_megapixels),
        label=-1 if record.get("label") is None else record["label"],
        group_id=f"natix:seq:{vid_id}:{seq_id}" if seq_id is not None else row_id,
        official_split=official_split,
        config=config,
        extras={"travel_alteration": record.get("scene_level_tags.travel_alteration") or ""},
        daytime=record.get("scene_level_tags.daytime") or "",
        weather=record.get("scene_level_tags.weather") or "",
        scene_environment=record.get("scene_level_tags.scene_environment") or "",
        city=record.get("city_name") or "",
        gps=record.get("gps") or "",
        scene_description=record.get("scene_description") or "",
    )


def _natix_columns(file: str, names: list[str]) -> list[str]:
    """The NATIX columns present in ``file``; a missing required column is an error naming it."""
    missing = [name for name in NATIX_REQUIRED if name not in names]
    if missing:
        raise DataLayoutError(
            f"{file}: NATIX columns {missing} are missing (required: {list(NATIX_REQUIRED)}); fix the export"
        )
    absent = [name for name in NATIX_COLUMNS if name not in names]
    if absent:
        logger.warning("%s: optional NATIX columns %s are missing; their manifest fields stay empty", file, absent)
    return [name for name in NATIX_COLUMNS if name in names]


def _records(batches: Iterator[pa.RecordBatch], batch_size: int) -> Iterator[dict[str, Any]]:
    """Rows as Python dicts, ``batch_size`` at a time, so only one slice of images is ever copied out."""
    for batch in batches:
        for start in range(0, batch.num_rows, batch_size):
            yield from batch.slice(start, batch_size).to_pylist()


def ingest_natix(path: str, config: IngestConfig) -> pd.DataFrame:
    """Read NATIX parquet shards (train and test) into manifest rows, streaming record batches."""
    fs, root = _filesystem(path)
    files = _natix_parquet_files(fs, root)
    rows = []
    total = 0
    for file in files:
        with fs.open(file, "rb") as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    with tqdm(total=total, desc="ingest natix", unit="img") as progress:
        for file in files:
            official_split = "test" if file.rsplit("/", 1)[-1].startswith("test") else "train"
            with fs.open(file, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                columns = _natix_columns(file, parquet.schema_arrow.names)
                for record in _records(
                    parquet.iter_batches(batch_size=config.record_batch_size, columns=columns), config.record_batch_size
                ):
                    rows.append(_natix_row(official_split, record, config))
                    progress.update(1)
    logger.info("ingested %d NATIX rows from %d parquet files under %s", len(rows), len(files), path)
    return _frame(rows)


def ingest_natix_arrow(path: str, config: IngestConfig) -> pd.DataFrame:
    """Read a ``datasets`` save_to_disk or cache folder offline: its arrow files, memory-mapped, with pyarrow.

    The split comes from the folder (``save_to_disk``: ``DIR/train/data-*.arrow``) or the file name
    (cache: ``roadwork-test-00000-of-00002.arrow``). ``datasets`` itself is not needed.
    """
    fs, root = _filesystem(path)
    files = _natix_arrow_files(fs, root)
    rows = []
    with tqdm(total=None, desc="ingest natix (arrow)", unit="img") as progress:
        for file in files:
            official_split = _official_split(file[len(root) :])
            columns = _natix_columns(file, _arrow_schema(fs, file).names)
            batches = (batch.select(columns) for batch in _arrow_batches(fs, file))
            for record in _records(batches, config.record_batch_size):
                rows.append(_natix_row(official_split, record, config))
                progress.update(1)
    logger.info("ingested %d NATIX rows from %d arrow files under %s", len(rows), len(files), path)
    return _frame(rows)


def _mapillary_label_names(fs: AbstractFileSystem, root: str) -> set[str]:
    config_file = f"{root}/config_v2.0.json"
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
        ValueError: a configured label does not exist in ``config_v2.0.json`` (a typo would label
            every image negative).
    """
    fs, root = _filesystem(path)
    settings = config.mapillary
    known = _mapillary_label_names(fs, root)
    unknown = sorted(set(settings.roadwork_labels + settings.hard_negative_labels) - known)
    if unknown:
        raise ValueError(
            f"{root}/config_v2.0.json does not define the configured Mapillary labels {unknown}; fix IngestConfig.mapillary"
        )
    roadwork, hard = set(settings.roadwork_labels), set(settings.hard_negative_labels)
    unread = {folder.rsplit("/", 1)[-1] for folder in _subfolders(fs, root)} - set(settings.splits)
    for split in sorted(unread):
        logger.info("mapillary: split folder %s/%s not read (not in IngestConfig.mapillary.splits)", root, split)
    rows = []
    for split in settings.splits:
        images = sorted(file for file in fs.glob(f"{root}/{split}/images/*") if _visible(file))
        for image in tqdm(images, desc=f"ingest mapillary {split}", unit="img"):
            image_id = image.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            labels, problem = _mapillary_objects(fs, f"{root}/{split}/v2.0/polygons/{image_id}.json")
            found = sorted(labels & roadwork)
            row_id = f"mapillary:{split}:{image_id}"
            rows.append(
                _file_row(
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
    return _frame(rows)


def _gps_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(str(part) for part in value)
    if isinstance(value, dict):
        return ",".join(str(value[key]) for key in ("lat", "lon") if key in value) or json.dumps(value, sort_keys=True)
    return str(value)


def ingest_roadwork(path: str, config: IngestConfig) -> pd.DataFrame:
    """ROADWork COCO annotations: every image is a work zone (label 1); ``<city>_<seq>_...`` names a sequence group."""
    fs, root = _filesystem(path)
    rows = []
    for annotation_file in _roadwork_annotation_files(fs, root):
        name = annotation_file.rsplit("/", 1)[-1]
        official_split = re.sub(r"^instances_|(_gps_split)?\.json$", "", name)
        coco = json.loads(fs.cat_file(annotation_file))
        images_dir = annotation_file.rsplit("/", 2)[0] + "/images"
        categories = {category["id"]: category["name"] for category in coco.get("categories", [])}
        objects: dict[Any, set[str]] = {}
        for annotation in coco.get("annotations", []):
            objects.setdefault(annotation["image_id"], set()).add(categories.get(annotation["category_id"], "unknown"))
        ungrouped = 0
        for image in tqdm(coco["images"], desc=f"ingest roadwork {official_split}", unit="img"):
            file_name = image["file_name"]
            row_id = f"roadwork:{file_name}"
            sequence = _ROADWORK_SEQUENCE.match(file_name.rsplit("/", 1)[-1])
            ungrouped += sequence is None
            description = image.get("scene_description") or ""
            rows.append(
                _file_row(
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
    return _frame(rows)


def ingest_folder(path: str, config: IngestConfig) -> pd.DataFrame:
    """``roadwork/`` (label 1) and ``no_roadwork/`` (label 0), at any depth; every visible file is a row."""
    fs, root = _filesystem(path)
    rows = []
    for folder, label in (("roadwork", 1), ("no_roadwork", 0)):
        files = sorted(fs.find(f"{root}/{folder}"))
        hidden = [file for file in files if not _visible(file)]
        if hidden:
            logger.info("folder: %d hidden files under %s/%s not read (e.g. %s)", len(hidden), root, folder, hidden[0])
        for file in tqdm([file for file in files if _visible(file)], desc=f"ingest folder {folder}", unit="img"):
            relative = file[len(root) + 1 :]
            row_id = f"folder:{relative}"
            rows.append(
                _file_row(
                    fs,
                    file,
                    config,
                    row_id=row_id,
                    source="folder",
                    label=label,
                    group_id=row_id,
                    official_split="",
                    extras={"relative_path": relative},
                )
            )
    logger.info("ingested %d folder rows under %s", len(rows), path)
    return _frame(rows)


ADAPTERS: dict[str, Callable[[str, IngestConfig], pd.DataFrame]] = {
    "natix": ingest_natix,
    "natix_arrow": ingest_natix_arrow,
    "mapillary": ingest_mapillary,
    "roadwork": ingest_roadwork,
    "folder": ingest_folder,
}


def ingest(config: IngestConfig) -> pd.DataFrame:
    """Detect the layout of ``config.path`` and run its adapter (each subfolder's, for a multi-source folder).

    Raises:
        DataLayoutError: the path is in no known layout, or not in the layout of ``config.source``.
    """
    fs, root = _filesystem(config.path)
    layout = detect_layout(config.path)
    paths = (
        {config.path: layout}
        if layout != "multi"
        else {fs.unstrip_protocol(f): _single_layout(fs, f) for f in _subfolders(fs, root)}
    )
    if config.source is not None:
        wrong = {path: found for path, found in paths.items() if LAYOUT_SOURCE[found] != config.source}
        if wrong:
            found = ", ".join(f"{path} is in the {name} layout" for path, name in wrong.items())
            raise DataLayoutError(f"expected {config.source} data, but {found}; accepted layouts: {describe_layouts()}")
    frames = [ADAPTERS[found](path, config) for path, found in paths.items()]
    return conform_manifest(pd.concat(frames, ignore_index=True)) if len(frames) > 1 else frames[0]
