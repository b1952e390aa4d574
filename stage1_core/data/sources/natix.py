"""NATIX roadwork (Hugging Face ``natix-network-org/roadwork``): parquet shards, or a ``datasets`` arrow folder.

The layout: ``DIR/data/{train,test}-*.parquet`` as in the dataset repo (or ``*.parquet`` at the top), one
row per image with the JPEG in an ``image`` struct (``bytes``, ``path``) and flattened column names (the dot
in ``video_info.seq_id`` is part of the name). A ``datasets`` save_to_disk or cache folder holds the same
columns in arrow files. Readers stream one record batch at a time and write each image once into the
content-addressed image store; frames of one video sequence form one group.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from tqdm import tqdm

from stage1_core.data.sources.base import (
    DataLayoutError,
    describe_image,
    filesystem,
    manifest_frame,
    manifest_row,
    store_image,
)
from stage1_core.data.sources.config import IngestConfig

logger = logging.getLogger(__name__)

NATIX_DATA_DIR = "data"
# The dataset repo's shard names: the split comes first (``test-...`` shards are the test split).
NATIX_SHARD_NAME = "{split}-{index:05d}-of-{count:05d}.parquet"
NATIX_IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
# Every column of the dataset card's ``dataset_info``, in its order and with its types.
_NATIX_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("image", NATIX_IMAGE_TYPE),
    ("id", pa.int64()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("license", pa.int64()),
    ("flickr_url", pa.float64()),
    ("coco_url", pa.float64()),
    ("date_captured", pa.int64()),
    ("gps", pa.string()),
    ("city_name", pa.string()),
    ("scene_description", pa.string()),
    ("video_info.frame_id", pa.string()),
    ("video_info.seq_id", pa.int64()),
    ("video_info.vid_id", pa.string()),
    ("scene_level_tags.daytime", pa.string()),
    ("scene_level_tags.scene_environment", pa.string()),
    ("scene_level_tags.travel_alteration", pa.string()),
    ("scene_level_tags.weather", pa.string()),
    ("label", pa.int64()),
)


def _hf_features() -> dict[str, Any]:
    """The ``huggingface`` schema metadata, so ``datasets`` decodes ``image`` as an Image feature."""
    features: dict[str, Any] = {"image": {"_type": "Image"}}
    for name, dtype in _NATIX_FIELDS[1:]:
        features[name] = {"dtype": str(dtype).replace("double", "float64"), "_type": "Value"}
    return {"info": {"features": features}}


NATIX_SCHEMA: pa.Schema = pa.schema(
    [pa.field(name, dtype) for name, dtype in _NATIX_FIELDS],
    metadata={"huggingface": json.dumps(_hf_features())},
)
# The columns the readers read: NATIX_REQUIRED must be present, the others fill manifest fields where they are.
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
# Split names a ``datasets`` folder or cache file name may carry.
_ARROW_SPLIT_NAMES = ("train", "test", "validation", "val")


def _parquet_schema(fs: AbstractFileSystem, file: str) -> pa.Schema:
    with fs.open(file, "rb") as handle:
        return pq.read_schema(handle)


def _natix_parquet_files(fs: AbstractFileSystem, root: str) -> list[str]:
    """The NATIX parquet shards under ``root`` (``data/*.parquet`` as in the dataset repo, or top level)."""
    files = sorted(fs.glob(f"{root}/{NATIX_DATA_DIR}/*.parquet")) or sorted(fs.glob(f"{root}/*.parquet"))
    return [file for file in files if "image" in _parquet_schema(fs, file).names]


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


def is_natix(fs: AbstractFileSystem, root: str) -> bool:
    """Detector: NATIX parquet shards with an ``image`` column."""
    return bool(_natix_parquet_files(fs, root))


def is_natix_arrow(fs: AbstractFileSystem, root: str) -> bool:
    """Detector: a ``datasets`` folder whose arrow files hold an ``image`` column."""
    return bool(_natix_arrow_files(fs, root))


def _official_split(relative: str) -> str:
    """The source's own split from a path: the last folder or file-name token that names one."""
    tokens = [token for token in re.split(r"[/_.-]", relative) if token]
    return next((token for token in reversed(tokens) if token in _ARROW_SPLIT_NAMES), "unknown")


def _natix_row(official_split: str, record: dict[str, Any], config: IngestConfig) -> dict[str, Any]:
    image_bytes = (record.get("image") or {}).get("bytes") or b""
    sha, uri = store_image(image_bytes, config.image_store)
    seq_id = record.get("video_info.seq_id")
    vid_id = record.get("video_info.vid_id") or ""
    row_id = f"natix:{official_split}:{record['id']}"
    return manifest_row(
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


def _row_group_batches(parquet: pq.ParquetFile, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    """Record batches one row group at a time, the memory of each row group given back before the next.

    Iterating a whole file at once keeps every row group's column chunk it has read until the file is closed
    (measured: a 400-row shard of 2 MP photos held 4 x 30 MB), so the memory of an ingest would grow with the
    shard size; NATIX's shards hold several hundred megabytes of JPEGs, in row groups of 100 rows.
    """
    for index in range(parquet.num_row_groups):
        yield from parquet.iter_batches(batch_size=batch_size, columns=columns, row_groups=[index])
        pa.default_memory_pool().release_unused()


def _records(batches: Iterator[pa.RecordBatch], batch_size: int) -> Iterator[dict[str, Any]]:
    """Rows as Python dicts, ``batch_size`` at a time, so only one slice of images is ever copied out."""
    for batch in batches:
        for start in range(0, batch.num_rows, batch_size):
            yield from batch.slice(start, batch_size).to_pylist()


def ingest_natix(path: str, config: IngestConfig) -> pd.DataFrame:
    """Read NATIX parquet shards (train and test) into manifest rows, streaming record batches."""
    fs, root = filesystem(path)
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
                batches = _row_group_batches(parquet, columns, config.record_batch_size)
                for record in _records(batches, config.record_batch_size):
                    rows.append(_natix_row(official_split, record, config))
                    progress.update(1)
    logger.info("ingested %d NATIX rows from %d parquet files under %s", len(rows), len(files), path)
    return manifest_frame(rows)


def ingest_natix_arrow(path: str, config: IngestConfig) -> pd.DataFrame:
    """Read a ``datasets`` save_to_disk or cache folder offline: its arrow files, memory-mapped, with pyarrow.

    The split comes from the folder (``save_to_disk``: ``DIR/train/data-*.arrow``) or the file name
    (cache: ``roadwork-test-00000-of-00002.arrow``). ``datasets`` itself is not needed.
    """
    fs, root = filesystem(path)
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
    return manifest_frame(rows)
