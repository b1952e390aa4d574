"""Benchmark of ingest + validate + split on demo data: images per second and peak memory.

``python -m benchmarks.data [--json] [--sizes 1000 5000]`` draws a NATIX-layout demo set per size
(320x240, cached under ``--work``), then measures each size in a fresh process so the peak resident
memory of one run is not hidden by another's. Streaming ingest keeps images out of memory: the peak
should grow with the manifest (a few hundred bytes per row), not with the image bytes, and the
figures are printed side by side to show it.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from pydantic import BaseModel

from stage1_core.common.cli import EXIT_OK, configure_logging, positive_int, run_printing_command
from stage1_core.data.ingest import ingest
from stage1_core.data.sources.config import IngestConfig
from stage1_core.data.splits import SplitConfig, assign_splits
from stage1_core.data.validation import ValidationConfig, validate_manifest
from stage1_core.demo.config import DemoDataConfig
from stage1_core.demo.writers import generate_demo_dataset


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


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(data: Path, store: Path) -> DataBenchmarkRun:
    """Ingest, validate and split ``data`` once in this process and report the figures."""
    baseline = _rss_mb()
    start = time.perf_counter()
    manifest = ingest(IngestConfig(path=str(data), image_store=str(store)))
    ingested = time.perf_counter()
    valid = validate_manifest(manifest, ValidationConfig()).valid
    validated = time.perf_counter()
    assign_splits(valid, SplitConfig())
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
        peak_rss_mb=_rss_mb(),
        manifest_mb=manifest.memory_usage(deep=True).sum() / 2**20,
    )


def _dataset(work: Path, size: int) -> Path:
    root = work / f"demo_{size}"
    if not (root / "demo_truth.parquet").exists():
        generate_demo_dataset(root, DemoDataConfig(n_images=size, seed=0, image_width=320, image_height=240))
    return root


def main(argv: list[str] | None = None) -> int:
    """Command line: print one line per size (or one JSON object with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[1000, 5000])
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
        data = _dataset(args.work, size)
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks.data", "--work", str(args.work), "--measure", str(data)],
            check=True,
            capture_output=True,
            text=True,
        )
        runs.append(DataBenchmarkRun.model_validate_json(child.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps({"runs": [run.model_dump() for run in runs]}), file=out)
        return EXIT_OK
    print(
        f"{'images':>7} {'image MB':>9} {'s':>7} {'img/s':>7} {'ingest s':>9} {'validate s':>10} {'split s':>8} "
        f"{'base RSS MB':>11} {'peak RSS MB':>11} {'peak-base':>9} {'manifest MB':>11}"
    )
    for run in runs:
        print(
            f"{run.images:>7} {run.image_bytes_mb:>9.1f} {run.seconds:>7.1f} {run.images_per_second:>7.1f} "
            f"{run.ingest_seconds:>9.1f} {run.validate_seconds:>10.1f} {run.split_seconds:>8.2f} "
            f"{run.baseline_rss_mb:>11.0f} "
            f"{run.peak_rss_mb:>11.0f} {run.peak_rss_mb - run.baseline_rss_mb:>9.0f} {run.manifest_mb:>11.1f}"
        )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
