"""A new batch of images for the drift check: found, read into manifest rows, and its verdict written.

Shared by ``drift_monitor`` (on demand) and ``retrain`` (before deciding to train).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from stage1_core.common.atomic_io import write_atomic
from stage1_core.common.cli import UsageError
from stage1_core.data.ingest import detect_layout, ingest
from stage1_core.data.sources.base import DataLayoutError
from stage1_core.data.sources.config import IngestConfig
from stage1_core.monitoring.drift import DriftReport

REPORT_FILE = "drift.html"
VERDICT_FILE = "drift_verdict.json"


class BatchError(UsageError, ValueError):
    """The batch cannot be read or is in the wrong schema; one line naming the path."""


def read_batch(path: str, image_store: str) -> IngestConfig:
    """The ingest config of a batch folder, after checking it exists and is in a known layout.

    Raises:
        BatchError: naming the path and the accepted layouts.
    """
    if not Path(path).expanduser().exists() and "://" not in path:
        raise BatchError(f"batch path {path} does not exist: pass a folder of new images in one of the ingest layouts")
    try:
        detect_layout(path)
    except DataLayoutError as error:
        raise BatchError(f"batch {path}: {error}") from None
    return IngestConfig(path=path, image_store=image_store)


def ingest_batch(batch: IngestConfig) -> pd.DataFrame:
    """The batch's manifest rows.

    Raises:
        BatchError: the batch's files are in the wrong schema (e.g. NATIX parquet without its columns)
            or hold no images.
    """
    try:
        manifest = ingest(batch)
    except DataLayoutError as error:
        raise BatchError(f"batch {batch.path}: {error}") from None
    if manifest.empty:
        raise BatchError(f"batch {batch.path} holds no images")
    return manifest


def write_verdict(report: DriftReport, out: Path, batch: str, origin: str) -> Path:
    """``drift.html`` and ``drift_verdict.json`` under ``out``; returns the verdict's path."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / REPORT_FILE, report.html)
    verdict = report.model_dump(mode="json", exclude={"html"}) | {
        "batch": batch,
        "reference": origin,
        "report": str(out / REPORT_FILE),
    }
    path = out / VERDICT_FILE
    write_atomic(path, json.dumps(verdict, indent=2))
    return path
