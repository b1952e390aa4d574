"""Check a dataset before any training: ingest, validate and split it, and count what went where.

Nothing is lost: ``ingested == valid + quarantined`` always holds, and the quarantined rows are kept
with their reasons beside the split manifest.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from stage1_core.common.atomic_io import atomic_file
from stage1_core.data.ingest import ingest
from stage1_core.data.sources.config import IngestConfig
from stage1_core.data.splits import (
    SplitClassError,
    SplitConfig,
    assign_splits,
    check_groups_within_one_split,
    check_split_classes,
)
from stage1_core.data.validation import DataValidationError, ValidationConfig, ValidationResult, validate_manifest


class DataCheckResult(BaseModel):
    """Counts of one data check; ``ingested == valid + quarantined`` always holds."""

    ingested: int
    valid: int
    quarantined: int
    critical_reasons: list[str]
    reason_counts: dict[str, int]
    reason_examples: dict[str, str]  # row id -> reason, for the first row of each distinct first reason
    counts: dict[str, int]  # "split/label/source" -> images


def quarantine_path(out: Path) -> Path:
    """Where the quarantined rows of ``out`` are written."""
    return out.with_name(f"{out.stem}.quarantine.parquet")


def reason_examples(quarantine: pd.DataFrame, limit: int = 5) -> dict[str, str]:
    """Up to ``limit`` quarantined rows, one per distinct first reason: row id -> its full reason."""
    if quarantine.empty:
        return {}
    kinds = quarantine["reason"].str.split("; ", n=1).str[0]
    first = quarantine.assign(kind=kinds).drop_duplicates("kind").head(limit)
    return dict(zip(first["id"].astype(str), first["reason"].astype(str), strict=True))


def count_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per split, label and source (a long table, for printing and for the result)."""
    return manifest.groupby(["split", "label", "source"]).size().rename("images").reset_index()


def run_data_check(
    ingest_config: IngestConfig, validation: ValidationConfig, split: SplitConfig, out: Path | None = None
) -> DataCheckResult:
    """Ingest, validate and split one dataset; write the split manifest (and quarantine) when ``out`` is set.

    Raises:
        DataLayoutError: the path is in no known layout or not in the source's layout.
    """
    manifest = ingest(ingest_config)
    try:
        result: ValidationResult = validate_manifest(manifest, validation)
    except DataValidationError as error:
        result = error.result
    report = result.report
    split_manifest = (
        assign_splits(result.valid, split)
        if len(result.valid)
        else result.valid.assign(split=pd.Series(dtype="string"))
    )
    check_groups_within_one_split(split_manifest)
    critical_reasons = list(report.critical_reasons)
    if len(split_manifest):
        try:
            check_split_classes(split_manifest)
        except SplitClassError as error:
            critical_reasons.append(str(error))
    counts = count_table(split_manifest)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(out) as partial:
            split_manifest.to_parquet(partial, index=False)
        if len(result.quarantine):
            with atomic_file(quarantine_path(out)) as partial:
                result.quarantine.to_parquet(partial, index=False)
    return DataCheckResult(
        ingested=report.n_ingested,
        valid=report.n_valid,
        quarantined=report.n_quarantined,
        critical_reasons=critical_reasons,
        reason_counts=report.reason_counts,
        reason_examples=reason_examples(result.quarantine),
        counts={f"{row.split}/{row.label}/{row.source}": int(row.images) for row in counts.itertuples()},
    )
