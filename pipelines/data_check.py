"""Check a new dataset before training: ingest + validate + split, no ZenML run.

``python -m pipelines.data_check --source {natix,mapillary,roadwork,folder} --path DIR [--out manifest.parquet]``
prints the counts per split, label and source, and the quarantine reasons; with ``--out`` it writes the
manifest with its ``split`` column, and the quarantined rows with their reasons beside it
(``<out>.quarantine.parquet``). Exit status: 0 fine, 1 validation failed critically, 2 bad path or layout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import get_args

import pandas as pd
from pydantic import BaseModel

from stage1_core.ingest import DataLayoutError, IngestConfig, Source, ingest
from stage1_core.atomic_io import atomic_file
from stage1_core.splits import SplitConfig, assign_splits, check_groups_within_one_split
from stage1_core.validation import DataValidationError, ValidationConfig, ValidationResult, validate_manifest



class DataCheckResult(BaseModel):
    """Counts of one data check; ``ingested == valid + quarantined`` always holds."""

    ingested: int
    valid: int
    quarantined: int
    critical_reasons: list[str]
    reason_counts: dict[str, int]
    counts: dict[str, int]  # "split/label/source" -> images


def quarantine_path(out: Path) -> Path:
    """Where the quarantined rows of ``out`` are written."""
    return out.with_name(f"{out.stem}.quarantine.parquet")


def count_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per split, label and source (a long table, for printing and for the result)."""
    return manifest.groupby(["split", "label", "source"]).size().rename("images").reset_index()


def run_data_check(
    ingest_config: IngestConfig,
    validation: ValidationConfig,
    split: SplitConfig,
    out: Path | None = None,
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
    split_manifest = assign_splits(result.valid, split) if len(result.valid) else result.valid.assign(split=pd.Series(dtype="string"))
    check_groups_within_one_split(split_manifest)
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
        critical_reasons=report.critical_reasons,
        reason_counts=report.reason_counts,
        counts={f"{row.split}/{row.label}/{row.source}": int(row.images) for row in counts.itertuples()},
    )


def _print(result: DataCheckResult) -> None:
    print(f"ingested {result.ingested} = valid {result.valid} + quarantined {result.quarantined}")
    if result.counts:
        table = pd.Series(result.counts).rename_axis("key").reset_index(name="images")
        table[["split", "label", "source"]] = table["key"].str.split("/", expand=True)
        pivot = table.pivot_table(index=["split", "label"], columns="source", values="images", aggfunc="sum", fill_value=0, margins=True, margins_name="all")
        print(pivot.to_string())
    for reason, count in result.reason_counts.items():
        print(f"quarantined for {reason}: {count}")
    for reason in result.critical_reasons:
        print(f"CRITICAL: {reason}")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, choices=get_args(Source), help="the source the data comes from")
    parser.add_argument("--path", required=True, help="dataset folder (local or an fsspec URL such as s3://bucket/natix)")
    parser.add_argument("--out", type=Path, default=None, help="write the manifest with its split column here (parquet)")
    parser.add_argument("--image-store", default=IngestConfig().image_store, help="where NATIX's embedded images are written")
    parser.add_argument("--seed", type=int, default=SplitConfig().seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    ingest_config = IngestConfig(path=args.path, source=args.source, image_store=args.image_store)
    try:
        result = run_data_check(ingest_config, ValidationConfig(), SplitConfig(seed=args.seed), args.out)
    except DataLayoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print(result)
    if args.out is not None:
        print(f"manifest written to {args.out}" + (f"; quarantine to {quarantine_path(args.out)}" if result.quarantined else ""))
    return 1 if result.critical_reasons else 0


if __name__ == "__main__":
    sys.exit(main())
