"""The main pipeline: ingest, validate, split, ExPLoRA, train, calibrate, evaluate, export, drift reference, promote.

Run it with ``python -m pipelines.full_run`` (the demo default) or point it at your data and weights:
``python -m pipelines.full_run --data /data/natix --backbone /weights/dinov2-small``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zenml import Model, pipeline

from pipelines.launch import CONFIGS, EXECUTION_MODE, exclusive_run, prepare_run, print_summary
from pipelines.train_and_gate import LIBRARY_AWARE_CACHE, MODEL_DESCRIPTION, MODEL_NAME, train_and_gate
from stage1_core.common.cli import EXIT_OK, configure_logging, run_command
from stage1_core.run.config import RunConfig
from stage1_core.run.settings import load_run_config
from steps.ingest_data import ingest_data


@pipeline(
    model=Model(name=MODEL_NAME, description=MODEL_DESCRIPTION),
    cache_policy=LIBRARY_AWARE_CACHE,
    execution_mode=EXECUTION_MODE,
)
def full_run(config: RunConfig, data_fingerprint: str, backbone_fingerprint: str) -> None:
    """Ingest the configured data, then train, evaluate, export and gate (:func:`train_and_gate`)."""
    train_and_gate(ingest_data(config.data, data_fingerprint), config, backbone_fingerprint)


def main(argv: list[str] | None = None) -> int:
    """Command line: validate the config and the data path first, then run the pipeline and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        type=Path,
        default=CONFIGS / "default.yaml",
        help="ZenML YAML run config (default: pipelines/configs/default.yaml)",
    )
    parser.add_argument(
        "--data", default=None, help="dataset folder (NATIX parquet layout); default: the generated demo dataset"
    )
    parser.add_argument(
        "--backbone", default=None, help="demo name, local weights directory or hub id (e.g. facebook/dinov2-small)"
    )
    parser.add_argument("--no-cache", action="store_true", help="re-run every step instead of reusing cached outputs")
    args = parser.parse_args(argv)
    configure_logging()

    def run() -> int:
        settings = load_run_config(args.config, data=args.data, backbone=args.backbone, no_cache=args.no_cache)
        with exclusive_run(settings):
            print_summary(full_run.with_options(**settings.zenml_options)(**prepare_run(settings)))
        return EXIT_OK

    return run_command("full_run", run)


if __name__ == "__main__":
    sys.exit(main())
