"""Benchmark of ingest + validate + split on real-resolution photos: images per second, peak memory, split groups.

``python -m benchmarks.data [--json] [--sizes 1000 5000 20000] [--size 1920x1080]`` draws a NATIX-layout demo
set per dataset size (photos of ``--size``, half progressive, half stored EXIF-turned; cached under ``--work``;
rendering costs about 0.25 s per 2 MP photo and 1.1 s per 12 MP photo on one core), then measures each size in a
fresh process so the peak resident memory of one run is not hidden by another's. Streaming ingest keeps images
out of memory (one parquet row group at a time, pixels decoded at 1/8 scale for the hash): the peak should be
flat in the number of images, growing with the manifest only (a few hundred bytes per row), not with the pixels;
the figures are printed side by side to show it, with the distribution of split-group sizes (rows per group ->
number of groups), which near-duplicate grouping must not turn into one giant group.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from pydantic import BaseModel

from benchmarks.memory import process_rss_mb, reset_peak_rss
from stage1_core.common.cli import EXIT_OK, configure_logging, positive_int, run_printing_command
from stage1_core.data.ingest import ingest
from stage1_core.data.sources.config import IngestConfig
from stage1_core.data.splits import SPLIT_GROUP_COLUMN, SplitConfig, assign_splits, group_size_distribution
from stage1_core.data.validation import ValidationConfig, validate_manifest
from stage1_core.demo.config import camera_photos
from stage1_core.demo.writers import generate_demo_dataset

# Each size runs twice: with the default allocators, and with Arrow's system allocator and a fixed glibc mmap
# threshold (freed image-sized buffers go back to the OS at once instead of staying in mimalloc's or glibc's
# heaps): the second is what an ingest container should set; the first shows what the allocators keep.
ALLOCATORS: dict[str, dict[str, str]] = {
    "default": {},
    "tuned": {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_MMAP_THRESHOLD_": "65536"},
}


class DataBenchmarkRun(BaseModel):
    """One size: throughput and memory of ingest + validate + split."""

    images: int
    image_bytes_mb: float
    seconds: float
    images_per_second: float
    ingest_seconds: float
    validate_seconds: float
    split_seconds: float
    baseline_rss_mb: float  # after imports, before any data
    peak_rss_mb: float
    manifest_mb: float  # the manifest in memory (deep size)
    group_sizes: dict[int, int]  # rows per split group -> number of groups
    allocator: str = "default"


def measure(data: Path, store: Path) -> DataBenchmarkRun:
    """Ingest, validate and split ``data`` once in this process and report the figures."""
    reset_peak_rss()  # the high-water mark of this child only, from here (ru_maxrss would carry the parent's)
    baseline = process_rss_mb("VmRSS") or 0.0
    start = time.perf_counter()
    manifest = ingest(IngestConfig(path=str(data), image_store=str(store)))
    ingested = time.perf_counter()
    valid = validate_manifest(manifest, ValidationConfig()).valid
    validated = time.perf_counter()
    split = assign_splits(valid, SplitConfig())
    end = time.perf_counter()
    return DataBenchmarkRun(
        images=len(manifest),
        image_bytes_mb=sum(path.stat().st_size for path in (data / "data").glob("*.parquet")) / 2**20,
        seconds=end - start,
        images_per_second=len(manifest) / (end - start),
        ingest_seconds=ingested - start,
        validate_seconds=validated - ingested,
        split_seconds=end - validated,
        baseline_rss_mb=baseline,
        peak_rss_mb=process_rss_mb("VmHWM") or 0.0,
        manifest_mb=manifest.memory_usage(deep=True).sum() / 2**20,
        group_sizes=group_size_distribution(split[SPLIT_GROUP_COLUMN]),
    )


def _dataset(work: Path, n_images: int, photo_size: str) -> Path:
    root = work / f"natix_{photo_size}_{n_images}"
    if not (root / "demo_truth.parquet").exists():
        generate_demo_dataset(root, camera_photos(n_images, photo_size))
    return root


def main(argv: list[str] | None = None) -> int:
    """Command line: print one line per size (or one JSON object with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[1000, 5000], help="images per dataset")
    parser.add_argument("--size", default="1920x1080", help="photo size WIDTHxHEIGHT, e.g. 4032x3024")
    parser.add_argument(
        "--work", type=Path, default=Path("data/benchmark"), help="where the demo sets and image stores go"
    )
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)  # child process: one measurement
    args = parser.parse_args(argv)
    configure_logging(logging.WARNING)
    return run_printing_command("benchmarks.data", lambda out: _benchmark(args, out), args.json or bool(args.measure))


def _benchmark(args: argparse.Namespace, out: TextIO) -> int:
    if args.measure is not None:
        print(measure(args.measure, args.work / f"store_{args.measure.name}").model_dump_json(), file=out)
        return EXIT_OK
    runs = []
    for size in args.sizes:
        data = _dataset(args.work, size, args.size)
        for allocator, settings in ALLOCATORS.items():
            shutil.rmtree(args.work / f"store_{data.name}", ignore_errors=True)  # every run writes its whole store
            child = subprocess.run(
                [sys.executable, "-m", "benchmarks.data", "--work", str(args.work), "--measure", str(data)],
                check=True,
                capture_output=True,
                text=True,
                env=os.environ | settings,
            )
            run = DataBenchmarkRun.model_validate_json(child.stdout.strip().splitlines()[-1])
            runs.append(run.model_copy(update={"allocator": allocator}))
    if args.json:
        print(json.dumps({"runs": [run.model_dump() for run in runs]}), file=out)
        return EXIT_OK
    print(
        f"{'images':>7} {'allocator':>9} {'image MB':>9} {'s':>7} {'img/s':>7} {'ingest s':>9} {'validate s':>10} "
        f"{'split s':>8} {'base RSS MB':>11} {'peak RSS MB':>11} {'peak-base':>9} {'manifest MB':>11}"
    )
    for run in runs:
        print(
            f"{run.images:>7} {run.allocator:>9} {run.image_bytes_mb:>9.1f} {run.seconds:>7.1f} "
            f"{run.images_per_second:>7.1f} "
            f"{run.ingest_seconds:>9.1f} {run.validate_seconds:>10.1f} {run.split_seconds:>8.2f} "
            f"{run.baseline_rss_mb:>11.0f} "
            f"{run.peak_rss_mb:>11.0f} {run.peak_rss_mb - run.baseline_rss_mb:>9.0f} {run.manifest_mb:>11.1f}"
        )
    print(f"\nsplit groups ({args.size} photos): rows per group -> number of groups", file=out)
    for run in runs[:: len(ALLOCATORS)]:
        print(f"{run.images:>7}: {run.group_sizes} (largest {max(run.group_sizes)} rows)", file=out)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
