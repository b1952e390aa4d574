"""Source adapters: turn a dataset folder into the unified manifest.

Each adapter streams its source (one record batch or one file at a time, never all images in
memory), writes every image once into a content-addressed image store, and returns manifest
rows. Images that cannot be decoded are kept with ``decode_error`` set, so validation can
quarantine them with a reason instead of losing them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import fsspec
import imagehash
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image
from pydantic import BaseModel
from tqdm import tqdm

from stage1_core.manifest import conform_manifest, empty_manifest

logger = logging.getLogger(__name__)

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

LAYOUTS: dict[str, str] = {
    "natix": "NATIX parquet: DIR/data/{train,test}-*.parquet (or *.parquet in DIR) with an `image` column",
}


class DataLayoutError(ValueError):
    """The data path is missing, empty, or in no layout this project reads."""


class IngestConfig(BaseModel):
    """Where to read from and where the decoded image files go."""

    path: str = "data/demo"
    image_store: str = "data/image_store"
    record_batch_size: int = 64


def describe_layouts() -> str:
    """One line per accepted layout, for error messages and the README."""
    return "; ".join(f"{name}: {text}" for name, text in LAYOUTS.items())


def detect_layout(path: Path) -> str:
    """Name the layout of ``path``, or raise :class:`DataLayoutError` saying what is accepted."""
    if not path.exists():
        raise DataLayoutError(f"data path {path} does not exist; accepted layouts: {describe_layouts()}")
    if not path.is_dir() or not any(path.iterdir()):
        raise DataLayoutError(f"data path {path} is empty or not a folder; accepted layouts: {describe_layouts()}")
    if natix_parquet_files(path):
        return "natix"
    raise DataLayoutError(f"data path {path} is in no known layout; accepted layouts: {describe_layouts()}")


def natix_parquet_files(path: Path) -> list[Path]:
    """The NATIX parquet shards under ``path`` (``data/*.parquet`` as in the dataset repo, or top level)."""
    files = sorted((path / "data").glob("*.parquet")) or sorted(path.glob("*.parquet"))
    return [file for file in files if "image" in pq.read_schema(file).names]


def dataset_fingerprint(path: Path) -> str:
    """Hash of file names, sizes and modification times: cheap, and changes when the data does.

    Passed to the ingest step as a parameter so that ZenML's step cache is invalidated when
    the files change, without reading every byte on each run.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def store_image(image_bytes: bytes, image_store: str) -> tuple[str, str]:
    """Write bytes under their sha256 (once) and return (sha256, uri)."""
    sha = hashlib.sha256(image_bytes).hexdigest()
    uri = f"{image_store.rstrip('/')}/{sha[:2]}/{sha}"
    fs, fs_path = fsspec.core.url_to_fs(uri)
    if not fs.exists(fs_path):
        fs.makedirs(fs_path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(fs_path + ".tmp", "wb") as handle:
            handle.write(image_bytes)
        fs.mv(fs_path + ".tmp", fs_path)
    return sha, uri


def describe_image(image_bytes: bytes) -> tuple[int, int, str, str]:
    """(width, height, perceptual hash, decode error) of an encoded image; errors are returned, not raised."""
    try:
        with Image.open(io.BytesIO(image_bytes)) as image:
            width, height = image.size
            image.draft("L", (64, 64))
            phash = str(imagehash.phash(image.convert("L")))
        return width, height, phash, ""
    except Exception as error:  # any decoder failure is a data problem to quarantine, not a crash
        return 0, 0, "", f"{type(error).__name__}: {error}"


def _natix_records(files: list[Path], batch_size: int) -> Iterator[tuple[str, dict]]:
    for file in files:
        official_split = "test" if file.name.startswith("test") else "train"
        parquet = pq.ParquetFile(file)
        columns = [name for name in NATIX_COLUMNS if name in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
            for record in batch.to_pylist():
                yield official_split, record


def ingest_natix(path: Path, config: IngestConfig) -> pd.DataFrame:
    """Read NATIX parquet shards (train and test) into manifest rows, streaming record batches."""
    files = natix_parquet_files(path)
    total = sum(pq.ParquetFile(file).metadata.num_rows for file in files)
    rows = []
    for official_split, record in tqdm(_natix_records(files, config.record_batch_size), total=total, desc="ingest natix", unit="img"):
        image_bytes = (record.get("image") or {}).get("bytes") or b""
        sha, uri = store_image(image_bytes, config.image_store)
        width, height, phash, decode_error = describe_image(image_bytes)
        seq_id = record.get("video_info.seq_id")
        vid_id = record.get("video_info.vid_id") or ""
        row_id = f"natix:{official_split}:{record['id']}"
        rows.append(
            {
                "id": row_id,
                "source": "natix",
                "uri": uri,
                "sha256": sha,
                "phash": phash,
                "label": -1 if record.get("label") is None else record["label"],
                "width": width,
                "height": height,
                "daytime": record.get("scene_level_tags.daytime") or "",
                "weather": record.get("scene_level_tags.weather") or "",
                "scene_environment": record.get("scene_level_tags.scene_environment") or "",
                "city": record.get("city_name") or "",
                "gps": record.get("gps") or "",
                "group_id": f"natix:seq:{vid_id}:{seq_id}" if seq_id is not None else row_id,
                "official_split": official_split,
                "scene_description": record.get("scene_description") or "",
                "decode_error": decode_error,
                "extras": json.dumps({"travel_alteration": record.get("scene_level_tags.travel_alteration") or ""}),
            }
        )
    logger.info("ingested %d NATIX rows from %d parquet files under %s", len(rows), len(files), path)
    return conform_manifest(pd.DataFrame(rows)) if rows else empty_manifest()


ADAPTERS = {"natix": ingest_natix}


def ingest(config: IngestConfig) -> pd.DataFrame:
    """Detect the layout of ``config.path`` and run its adapter."""
    path = Path(config.path).expanduser()
    layout = detect_layout(path)
    return ADAPTERS[layout](path, config)
