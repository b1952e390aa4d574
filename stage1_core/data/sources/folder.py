"""A plain folder: ``roadwork/`` (label 1) and ``no_roadwork/`` (label 0), image files at any depth.

The simplest way to bring one's own images: no split, no groups (each file is its own group), the label
is the top folder. Hidden files (a name starting with a dot) are skipped and counted in the log.
"""

from __future__ import annotations

import logging

import pandas as pd
from fsspec import AbstractFileSystem
from tqdm import tqdm

from stage1_core.data.sources.base import file_row, filesystem, is_visible, manifest_frame
from stage1_core.data.sources.config import IngestConfig

logger = logging.getLogger(__name__)

FOLDER_POSITIVE = "roadwork"
FOLDER_NEGATIVE = "no_roadwork"
FOLDER_LABELS: tuple[tuple[str, int], ...] = ((FOLDER_POSITIVE, 1), (FOLDER_NEGATIVE, 0))


def is_folder(fs: AbstractFileSystem, root: str) -> bool:
    """Detector: both class folders at the root."""
    return fs.isdir(f"{root}/{FOLDER_POSITIVE}") and fs.isdir(f"{root}/{FOLDER_NEGATIVE}")


def ingest_folder(path: str, config: IngestConfig) -> pd.DataFrame:
    """``roadwork/`` (label 1) and ``no_roadwork/`` (label 0), at any depth; every visible file is a row."""
    fs, root = filesystem(path)
    rows = []
    for folder, label in FOLDER_LABELS:
        files = sorted(fs.find(f"{root}/{folder}"))
        hidden = [file for file in files if not is_visible(file)]
        if hidden:
            logger.info("folder: %d hidden files under %s/%s not read (e.g. %s)", len(hidden), root, folder, hidden[0])
        for file in tqdm([file for file in files if is_visible(file)], desc=f"ingest folder {folder}", unit="img"):
            relative = file[len(root) + 1 :]
            row_id = f"folder:{relative}"
            rows.append(
                file_row(
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
    return manifest_frame(rows)
