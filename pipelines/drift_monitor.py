"""Drift monitor: compare a new batch of images with the training reference; write the report and the verdict.

``python -m pipelines.drift_monitor --batch PATH [--reference RUN] [--out DIR] [--config YAML]``

The reference is, by default, that of the model version in production (the data the served model
was trained on), else that of the latest run that built one; ``--reference`` names a pipeline run.
It writes ``drift.html`` (Evidently) and ``drift_verdict.json`` (dataset drift, drifted columns,
whether retraining is warranted and why) to ``--out``, and exits 0; a user error (missing batch,
batch in no known layout or with the wrong schema, no reference yet, bad config) exits 2 with one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict
from zenml.client import Client
from zenml.enums import ModelStages
from zenml.models import ArtifactVersionResponse, PipelineRunResponse

from pipelines.full_run import MODEL_NAME
from stage1_core.drift import DriftConfig, DriftReport, batch_drift
from stage1_core.ingest import DataLayoutError, IngestConfig, detect_layout, ingest
from stage1_core.atomic_io import write_atomic

REFERENCE_STEP = "build_drift_reference"
TRAIN_STEP = "train_model"


class ReferenceNotFoundError(LookupError):
    """No drift reference to compare with; the message says how to make one."""


class BatchError(ValueError):
    """The batch cannot be read or is in the wrong schema; one line naming the path."""


class DriftReference(BaseModel):
    """The three artifacts of one run a batch is compared with, and where they come from."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reference: ArtifactVersionResponse
    projection: ArtifactVersionResponse
    classifier: ArtifactVersionResponse
    origin: str


def _from_run(run: PipelineRunResponse, why: str) -> DriftReference:
    if REFERENCE_STEP not in run.steps or TRAIN_STEP not in run.steps:
        raise ReferenceNotFoundError(f"pipeline run {run.name} has no {REFERENCE_STEP} / {TRAIN_STEP} step: pass a full_run or retrain run that trained a model")
    outputs = run.steps[REFERENCE_STEP].outputs
    if "embedding_projection" not in outputs:
        raise ReferenceNotFoundError(f"pipeline run {run.name} built its drift reference without backbone embeddings (older code): run full_run again")
    return DriftReference(
        reference=outputs["drift_reference"][0],
        projection=outputs["embedding_projection"][0],
        classifier=run.steps[TRAIN_STEP].outputs["classifier"][0],
        origin=f"{why}: pipeline run {run.name}",
    )


def find_reference(client: Client | None = None, run: str | None = None) -> DriftReference:
    """The drift reference of ``run`` (name or id), else of the production model version, else the latest one built.

    Raises:
        ReferenceNotFoundError: the run does not exist or has no reference, or no reference was ever built.
    """
    client = client or Client()
    if run is not None:
        try:
            return _from_run(client.get_pipeline_run(run), "requested")
        except KeyError:
            raise ReferenceNotFoundError(f"no pipeline run named {run!r}: list runs with `zenml pipeline runs list`") from None
    try:
        production = client.get_model_version(MODEL_NAME, ModelStages.PRODUCTION)
        artifact = production.get_artifact("drift_reference")
        why = f"{MODEL_NAME} version {production.number} in production"
    except KeyError:
        artifact, why = None, ""
    if artifact is None:
        try:
            artifact = client.get_artifact_version("drift_reference")
        except KeyError:
            raise ReferenceNotFoundError("no drift reference yet: run `python -m pipelines.full_run` first (it builds one), or pass --reference RUN") from None
        why = "latest reference (no model version in production yet)"
    return _from_run(client.get_pipeline_run(artifact.producer_pipeline_run_id), why)


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
        BatchError: the batch's files are in the wrong schema (e.g. NATIX parquet without its columns) or hold no images.
    """
    try:
        manifest = ingest(batch)
    except DataLayoutError as error:
        raise BatchError(f"batch {batch.path}: {error}") from None
    if manifest.empty:
        raise BatchError(f"batch {batch.path} holds no images")
    return manifest


def check_batch(manifest: pd.DataFrame, reference: DriftReference, config: DriftConfig) -> DriftReport:
    """Compare the batch's rows with the reference (image features and backbone embeddings)."""
    return batch_drift(manifest, reference.reference.load(), reference.projection.load(), reference.classifier.load(), config)


def write_outputs(report: DriftReport, out: Path, batch: str, origin: str) -> Path:
    """``drift.html`` and ``drift_verdict.json`` under ``out``; returns the verdict's path."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "drift.html", report.html)
    verdict = report.model_dump(mode="json", exclude={"html"}) | {"batch": batch, "reference": origin, "report": str(out / "drift.html")}
    path = out / "drift_verdict.json"
    write_atomic(path, json.dumps(verdict, indent=2))
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line; exit 0 with the verdict written, 2 on a user error (one line on stderr)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", required=True, help="folder of new images in an ingest layout (NATIX parquet, folder, Mapillary, ROADWork)")
    parser.add_argument("--reference", default=None, help="pipeline run (name or id) whose drift reference to use; default: the production model's")
    parser.add_argument("--out", type=Path, default=Path("drift_monitor"), help="folder for drift.html and drift_verdict.json")
    parser.add_argument("--config", type=Path, default=None, help="run config whose drift settings and image store to use (default: pipelines/configs/default.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pipelines.run_config import ConfigError, load_run_config

    try:
        settings = load_run_config(args.config)
        manifest = ingest_batch(read_batch(args.batch, settings.config.data.image_store))
        reference = find_reference(run=args.reference)
        report = check_batch(manifest, reference, settings.config.drift)
    except (ConfigError, BatchError, ReferenceNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    path = write_outputs(report, args.out, args.batch, reference.origin)
    print(
        f"drift: {len(report.drifted_columns)} of {len(report.columns)} columns drifted ({report.drift_share:.0%}) {report.drifted_columns}; "
        f"dataset drift {report.dataset_drift}; retraining {'warranted' if report.retrain_recommended else 'not warranted'} ({report.retrain_reason})\n"
        f"reference: {reference.origin}\nreport: {args.out / 'drift.html'}\nverdict: {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
