"""Ingest: detect a data folder's layout and run its reader into the unified manifest.

Layouts read (see :data:`LAYOUTS`; each reader lives in :mod:`stage1_core.data.sources`): NATIX as parquet
shards or as a ``datasets`` arrow folder, Mapillary Vistas v2.0, ROADWork COCO, a plain ``roadwork/`` +
``no_roadwork/`` folder, and a folder whose subfolders are each one of those (several sources fused into one
manifest). Each reader streams its source (one record batch or one file at a time, never all images in
memory) and returns manifest rows; problems never crash the ingest and never drop a row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from fsspec import AbstractFileSystem

from stage1_core.common.manifest import conform_manifest
from stage1_core.data.sources.base import DataLayoutError, filesystem, subfolders
from stage1_core.data.sources.config import IngestConfig
from stage1_core.data.sources.folder import ingest_folder, is_folder
from stage1_core.data.sources.mapillary import ingest_mapillary, is_mapillary
from stage1_core.data.sources.natix import ingest_natix, ingest_natix_arrow, is_natix, is_natix_arrow
from stage1_core.data.sources.roadwork import ingest_roadwork, is_roadwork

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
# Tried in this order: marker files first, then the globs, the deep scan for arrow files last.
_DETECTORS: tuple[tuple[str, Callable[[AbstractFileSystem, str], bool]], ...] = (
    ("mapillary", is_mapillary),
    ("folder", is_folder),
    ("roadwork", is_roadwork),
    ("natix", is_natix),
    ("natix_arrow", is_natix_arrow),
)
ADAPTERS: dict[str, Callable[[str, IngestConfig], pd.DataFrame]] = {
    "natix": ingest_natix,
    "natix_arrow": ingest_natix_arrow,
    "mapillary": ingest_mapillary,
    "roadwork": ingest_roadwork,
    "folder": ingest_folder,
}


def describe_layouts() -> str:
    """One line per accepted layout, for error messages and the README."""
    return "; ".join(f"{name}: {text}" for name, text in LAYOUTS.items())


def _single_layout(fs: AbstractFileSystem, root: str) -> str | None:
    return next((name for name, detect in _DETECTORS if detect(fs, root)), None)


def detect_layout(path: str | Path) -> str:
    """Name the layout of ``path``, or raise :class:`DataLayoutError` saying what is accepted."""
    fs, root = filesystem(path)
    if not fs.exists(root):
        raise DataLayoutError(f"data path {path} does not exist; accepted layouts: {describe_layouts()}")
    if not fs.isdir(root) or not fs.ls(root):
        raise DataLayoutError(f"data path {path} is empty or not a folder; accepted layouts: {describe_layouts()}")
    layout = _single_layout(fs, root)
    if layout is not None:
        return layout
    found_in = {folder: _single_layout(fs, folder) for folder in subfolders(fs, root)}
    if found_in and all(found_in.values()):
        return "multi"
    unknown = [folder for folder, found in found_in.items() if found is None]
    hint = f" (subfolders in no known layout: {unknown})" if unknown and len(unknown) < len(found_in) else ""
    raise DataLayoutError(f"data path {path} is in no known layout{hint}; accepted layouts: {describe_layouts()}")


def dataset_fingerprint(path: str | Path) -> str:
    """Hash of file names, sizes and modification times: cheap, and changes when the data does.

    Passed to the ingest step as a parameter so that ZenML's step cache is invalidated when
    the files change, without reading every byte on each run.
    """
    fs, root = filesystem(path)
    digest = hashlib.sha256()
    for name, info in sorted(fs.find(root, detail=True).items()):
        stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or ""
        digest.update(f"{name[len(root) :]}:{info.get('size')}:{stamp}\n".encode())
    return digest.hexdigest()


def ingest(config: IngestConfig) -> pd.DataFrame:
    """Detect the layout of ``config.path`` and run its adapter (each subfolder's, for a multi-source folder).

    Raises:
        DataLayoutError: the path is in no known layout, or not in the layout of ``config.source``.
    """
    fs, root = filesystem(config.path)
    layout = detect_layout(config.path)
    paths = (
        {config.path: layout}
        if layout != "multi"
        else {fs.unstrip_protocol(f): _single_layout(fs, f) for f in subfolders(fs, root)}
    )
    if config.source is not None:
        wrong = {path: found for path, found in paths.items() if LAYOUT_SOURCE[found] != config.source}
        if wrong:
            found = ", ".join(f"{path} is in the {name} layout" for path, name in wrong.items())
            raise DataLayoutError(f"expected {config.source} data, but {found}; accepted layouts: {describe_layouts()}")
    frames = [ADAPTERS[found](path, config) for path, found in paths.items()]
    return conform_manifest(pd.concat(frames, ignore_index=True)) if len(frames) > 1 else frames[0]
