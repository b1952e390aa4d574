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
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from tqdm import tqdm

from stage1_core.data.sources.base import (
    DataLayoutError,
    ImageFacts,
    describe_image,
    file_uri,
    filesystem,
    manifest_frame,
    manifest_row,
    store_image,
    unreadable_row,
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


# What pyarrow raises for a file that is not (or no longer) the format its name says.
READ_ERRORS: tuple[type[Exception], ...] = (pa.ArrowException, OSError)


def _parquet_schema(fs: AbstractFileSystem, file: str) -> pa.Schema | None:
    """The file's arrow schema; None when it is no readable parquet file (empty, truncated, another format)."""
    try:
        with fs.open(file, "rb") as handle:
            return pq.read_schema(handle)
    except READ_ERRORS:
        return None


def _natix_shards(files: list[str], schema: Callable[[str], pa.Schema | None]) -> list[str]:
    """The files of a NATIX folder to read: those with an ``image`` column, and the unreadable ones.

    An unreadable file is one of the shards (its name says so) that cannot be read: it is kept so the reader
    reports it. Readable files without an ``image`` column are someone else's (logged, not read). With no
    readable shard at all, the folder is NATIX only if every candidate file is unreadable.
    """
    schemas = {file: schema(file) for file in files}
    shards = [file for file, found in schemas.items() if found is not None and "image" in found.names]
    unreadable = [file for file, found in schemas.items() if found is None]
    others = [file for file, found in schemas.items() if found is not None and "image" not in found.names]
    if others and (shards or unreadable):
        logger.info("NATIX: %d files without an image column are not read (e.g. %s)", len(others), others[0])
    if not shards and others:
        return []
    return sorted(shards + unreadable)


def _natix_parquet_files(fs: AbstractFileSystem, root: str) -> list[str]:
    """The NATIX parquet shards under ``root`` (``data/*.parquet`` as in the dataset repo, or top level)."""
    files = sorted(fs.glob(f"{root}/{NATIX_DATA_DIR}/*.parquet")) or sorted(fs.glob(f"{root}/*.parquet"))
    return _natix_shards(files, lambda file: _parquet_schema(fs, file))


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
    """The file's arrow schema (stream or file format); None when it is no readable arrow file."""
    try:
        source = _open_arrow(fs, file)
    except READ_ERRORS:
        return None
    try:
        return pa.ipc.open_stream(source).schema
    except READ_ERRORS:
        source.seek(0)
        try:
            return pa.ipc.open_file(source).schema
        except READ_ERRORS:
            return None
    finally:
        source.close()


def _natix_arrow_files(fs: AbstractFileSystem, root: str) -> list[str]:
    """The arrow files of a ``datasets`` save_to_disk or cache folder that hold an ``image`` column.

    Unreadable arrow files among them are kept so the reader reports them (see :func:`_natix_shards`).
    """
    files = sorted(file for file in fs.find(root, maxdepth=6) if file.endswith(".arrow"))
    return _natix_shards(files, lambda file: _arrow_schema(fs, file))


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


def _image_bytes(value: Any) -> tuple[bytes, str]:
    """The encoded image of a record and, when there is none, why.

    The image column is the ``{bytes, path}`` struct of the dataset card or, in some exports, plain binary.
    """
    if isinstance(value, bytes | bytearray):
        return bytes(value), ""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"]), ""
        path = value.get("path")
        where = f" (only a path, {path!r}: export the dataset with the images embedded)" if path else ""
        return b"", f"image struct holds no bytes{where}"
    if value is None:
        return b"", "image is null"
    return b"", f"image column holds a {type(value).__name__}, expected bytes or a {{bytes, path}} struct"


def _label(value: Any) -> tuple[int, str]:
    """A record's label as an int and, when it is not 0 or 1, why: null/NaN, or a value that is no label.

    Integral numbers and the texts ``"0"`` / ``"1"`` are read as labels (text columns occur in hand-made exports);
    an integer outside {0, 1} is kept as it is for validation to quarantine.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return -1, "label is missing (null or NaN)"
    if isinstance(value, bool | int):
        return int(value), ""
    if isinstance(value, float) and value.is_integer():
        return int(value), ""
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip()), ""
    return -1, f"label {value!r} is not 0 or 1"


def _natix_row(official_split: str, record: dict[str, Any], config: IngestConfig) -> dict[str, Any]:
    image_bytes, image_problem = _image_bytes(record.get("image"))
    label, label_problem = _label(record.get("label"))
    row_id = f"natix:{official_split}:{record['id']}"
    if image_problem:
        sha, uri, facts = "", "", ImageFacts(decode_error=image_problem)
    else:
        (sha, uri), facts = (
            store_image(image_bytes, config.image_store),
            describe_image(image_bytes, config.max_decode_megapixels),
        )
    seq_id = record.get("video_info.seq_id")
    vid_id = record.get("video_info.vid_id") or ""
    extras: dict[str, Any] = {"travel_alteration": record.get("scene_level_tags.travel_alteration") or ""}
    return manifest_row(
        row_id=row_id,
        source="natix",
        uri=uri,
        sha256=sha,
        facts=facts,
        label=label,
        group_id=f"natix:seq:{vid_id}:{seq_id}" if seq_id is not None else row_id,
        official_split=official_split,
        config=config,
        extras=extras | ({"ingest_error": label_problem} if label_problem else {}),
        daytime=record.get("scene_level_tags.daytime") or "",
        weather=record.get("scene_level_tags.weather") or "",
        scene_environment=record.get("scene_level_tags.scene_environment") or "",
        city=record.get("city_name") or "",
        gps=record.get("gps") or "",
        scene_description=record.get("scene_description") or "",
    )


def _natix_columns(file: str, schema: pa.Schema) -> list[str]:
    """The NATIX columns present in ``file``; a missing required column is an error naming it."""
    names = schema.names
    missing = [name for name in NATIX_REQUIRED if name not in names]
    if missing:
        raise DataLayoutError(
            f"{file}: NATIX columns {missing} are missing (required: {list(NATIX_REQUIRED)}); fix the export"
        )
    absent = [name for name in NATIX_COLUMNS if name not in names]
    if absent:
        logger.warning("%s: optional NATIX columns %s are missing; their manifest fields stay empty", file, absent)
    label_type = schema.field("label").type
    if not pa.types.is_integer(label_type):
        logger.warning(
            "%s: the label column is %s, not int64: 0/1 values are read as labels, the others are quarantined",
            file,
            label_type,
        )
    return [name for name in NATIX_COLUMNS if name in names]


def _records(batches: Iterator[pa.RecordBatch], batch_size: int) -> Iterator[dict[str, Any]]:
    """Rows as Python dicts, ``batch_size`` at a time, so only one slice of images is ever copied out."""
    for batch in batches:
        for start in range(0, batch.num_rows, batch_size):
            yield from batch.slice(start, batch_size).to_pylist()


def _file_rows(
    fs: AbstractFileSystem,
    file: str,
    official_split: str,
    records: Iterator[dict[str, Any]],
    expected_rows: int | None,
    config: IngestConfig,
    progress: tqdm,
) -> list[dict[str, Any]]:
    """The manifest rows of one shard. A shard that cannot be read (not the format its name says, empty,
    truncated, corrupt midway) never stops the others: each row it should still have held (as many as its
    footer says, else one for the file) becomes a row naming the file and the problem, for validation to
    quarantine."""
    rows: list[dict[str, Any]] = []
    try:
        for record in records:
            rows.append(_natix_row(official_split, record, config))
            progress.update(1)
    except READ_ERRORS as error:
        uri, name = file_uri(fs, file), file.rsplit("/", 1)[-1]
        problem = f"{uri}: unreadable ({type(error).__name__}: {error}); re-download or re-export this file"
        base_id = f"natix:{official_split}:{name}"
        if expected_rows and expected_rows > len(rows):
            ids = [f"{base_id}#row{index}" for index in range(len(rows), expected_rows)]
            logger.warning("%s: %d of its %d rows not read", problem, len(ids), expected_rows)
        else:
            ids = [base_id]
            logger.warning("%s: its row count is unknown, one quarantined row stands for the file", problem)
        rows += [
            unreadable_row(
                row_id=row_id,
                source="natix",
                uri=uri,
                official_split=official_split,
                problem=problem,
                config=config,
                whole_file=True,
            )
            for row_id in ids
        ]
    return rows


def _parquet_rows(fs: AbstractFileSystem, file: str) -> int | None:
    """Rows a parquet file's footer declares; None when the footer cannot be read."""
    try:
        with fs.open(file, "rb") as handle:
            return pq.ParquetFile(handle).metadata.num_rows
    except READ_ERRORS:
        return None


def _parquet_records(fs: AbstractFileSystem, file: str, config: IngestConfig) -> Iterator[dict[str, Any]]:
    with fs.open(file, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        columns = _natix_columns(file, parquet.schema_arrow)
        batches = parquet.iter_batches(batch_size=config.record_batch_size, columns=columns)
        yield from _records(batches, config.record_batch_size)


def _arrow_records(fs: AbstractFileSystem, file: str, config: IngestConfig) -> Iterator[dict[str, Any]]:
    schema = _arrow_schema(fs, file)
    if schema is None:
        raise pa.ArrowInvalid("not an arrow file in stream or file format")
    columns = _natix_columns(file, schema)
    yield from _records((batch.select(columns) for batch in _arrow_batches(fs, file)), config.record_batch_size)


def ingest_natix(path: str, config: IngestConfig) -> pd.DataFrame:
    """Read NATIX parquet shards (train and test) into manifest rows, streaming record batches."""
    fs, root = filesystem(path)
    files = _natix_parquet_files(fs, root)
    expected = {file: _parquet_rows(fs, file) for file in files}
    rows = []
    with tqdm(total=sum(n for n in expected.values() if n), desc="ingest natix", unit="img") as progress:
        for file in files:
            official_split = "test" if file.rsplit("/", 1)[-1].startswith("test") else "train"
            records = _parquet_records(fs, file, config)
            rows += _file_rows(fs, file, official_split, records, expected[file], config, progress)
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
            rows += _file_rows(fs, file, official_split, _arrow_records(fs, file, config), None, config, progress)
    logger.info("ingested %d NATIX rows from %d arrow files under %s", len(rows), len(files), path)
    return manifest_frame(rows)
