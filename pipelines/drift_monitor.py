"""Drift monitor: compare a new batch of images with the training reference; write the report and the verdict.

``python -m pipelines.drift_monitor --batch PATH [--reference RUN] [--out DIR] [--config YAML]``

The reference is, by default, that of the model version in production (the data the served model
was trained on), else that of the latest run that built one; ``--reference`` names a pipeline run.
It writes ``drift.html`` (Evidently) and ``drift_verdict.json`` (dataset drift, drifted columns,
whether retraining is warranted and why) to ``--out``, and exits 0 without dataset drift, 1 with it; a user error
(missing batch, batch in no known layout or with the wrong schema, no reference yet, bad config) exits 2 with one
line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.drift_reference import find_reference
from pipelines.launch import CONFIGS
from stage1_core.common.cli import EXIT_FINDING, EXIT_OK, configure_logging, run_command, writable_folder
from stage1_core.monitoring.batch import REPORT_FILE, ingest_batch, read_batch, write_verdict
from stage1_core.monitoring.drift import batch_drift
from stage1_core.run.settings import load_run_config


def main(argv: list[str] | None = None) -> int:
    """Command line; exit 0 (no drift) or 1 (dataset drift) with the verdict written, 2 on a user error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batch",
        required=True,
        help="folder of new images in an ingest layout (NATIX parquet, folder, Mapillary, ROADWork)",
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="pipeline run (name or id) whose drift reference to use; default: the production model's",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("drift_monitor"), help="folder for drift.html and drift_verdict.json"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=CONFIGS / "default.yaml",
        help="run config whose drift settings and image store to use (default: pipelines/configs/default.yaml)",
    )
    args = parser.parse_args(argv)
    configure_logging()

    def run() -> int:
        writable_folder(args.out, "--out")
        settings = load_run_config(args.config)
        manifest = ingest_batch(read_batch(args.batch, settings.config.data.image_store))
        reference = find_reference(run=args.reference)
        report = batch_drift(
            manifest,
            reference.reference.load(),
            reference.projection.load(),
            reference.classifier.load(),
            settings.config.drift,
        )
        path = write_verdict(report, args.out, args.batch, reference.origin)
        retraining = "warranted" if report.retrain_recommended else "not warranted"
        print(
            f"drift: {len(report.drifted_columns)} of {len(report.columns)} columns drifted "
            f"({report.drift_share:.0%}) {report.drifted_columns}; "
            f"dataset drift {report.dataset_drift}; retraining {retraining} ({report.retrain_reason})\n"
            f"reference: {reference.origin}\nreport: {args.out / REPORT_FILE}\nverdict: {path}"
        )
        return EXIT_FINDING if report.dataset_drift else EXIT_OK

    return run_command("drift_monitor", run)


if __name__ == "__main__":
    sys.exit(main())
