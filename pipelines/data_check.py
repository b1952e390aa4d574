"""Check a new dataset before training: ingest + validate + split, no ZenML run.

``python -m pipelines.data_check --source {natix,mapillary,roadwork,folder} --path DIR [--out manifest.parquet]``
prints the counts per split, label and source, and the quarantine reasons; with ``--out`` it writes the
manifest with its ``split`` column, and the quarantined rows with their reasons beside it
(``<out>.quarantine.parquet``). Exit status: 0 fine, 1 validation failed critically, 2 bad path or layout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_args

import pandas as pd

from stage1_core.common.cli import EXIT_FINDING, EXIT_OK, configure_logging, run_command, writable_folder
from stage1_core.common.config import config_from_options
from stage1_core.data.check import DataCheckResult, quarantine_path, run_data_check
from stage1_core.data.sources.config import IngestConfig, Source
from stage1_core.data.splits import SplitConfig
from stage1_core.data.validation import ValidationConfig


def print_result(result: DataCheckResult) -> None:
    """The counts as a table per split and label (sources as columns), then the quarantine reasons."""
    print(f"ingested {result.ingested} = valid {result.valid} + quarantined {result.quarantined}")
    if result.counts:
        table = pd.Series(result.counts).rename_axis("key").reset_index(name="images")
        table[["split", "label", "source"]] = table["key"].str.split("/", expand=True)
        pivot = table.pivot_table(
            index=["split", "label"],
            columns="source",
            values="images",
            aggfunc="sum",
            fill_value=0,
            margins=True,
            margins_name="all",
        )
        print(pivot.to_string())
    for reason, count in result.reason_counts.items():
        print(f"quarantined for {reason}: {count}")
    for row_id, reason in result.reason_examples.items():
        print(f"  e.g. {row_id}: {reason}")
    for reason in result.critical_reasons:
        print(f"CRITICAL: {reason}")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, choices=get_args(Source), help="the source the data comes from")
    parser.add_argument(
        "--path", required=True, help="dataset folder (local or an fsspec URL such as s3://bucket/natix)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="write the manifest with its split column here (parquet)"
    )
    parser.add_argument(
        "--image-store", default=IngestConfig().image_store, help="where NATIX's embedded images are written"
    )
    parser.add_argument("--seed", type=int, default=SplitConfig().seed)
    args = parser.parse_args(argv)
    configure_logging()

    def run() -> int:
        if args.out is not None:
            writable_folder(args.out.parent, "--out")
        ingest_config = config_from_options(
            IngestConfig, path=args.path, source=args.source, image_store=args.image_store
        )
        split_config = config_from_options(SplitConfig, seed=args.seed)
        result = run_data_check(ingest_config, ValidationConfig(), split_config, args.out)
        print_result(result)
        if args.out is not None:
            print(
                f"manifest written to {args.out}"
                + (f"; quarantine to {quarantine_path(args.out)}" if result.quarantined else "")
            )
        return EXIT_FINDING if result.critical_reasons else EXIT_OK

    return run_command("data_check", run)


if __name__ == "__main__":
    sys.exit(main())
