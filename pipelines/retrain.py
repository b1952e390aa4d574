"""Retraining: ingest a new batch, check its drift; if warranted, retrain on the data plus the batch and run the gate.

``python -m pipelines.retrain --batch PATH [--config YAML] [--force] [--batch-name NAME]``

``retrain_pipeline`` is a ZenML dynamic pipeline: its body runs when the run runs, so a scheduled
run reads the reference of the model in production at that time and decides then whether to train.
Without drift (and without ``--force``) the run ends after the drift check, leaving no model version;
otherwise it fuses the batch in as a data source of its own and runs the same steps as ``full_run``
(:func:`train_and_gate`), ending with the promotion gate against the current champion.

Its ``depends_on`` steps are ZenML config templates: a run configuration's ``steps:`` settings (the GPU pods
of a cluster schedule, ``stacks/kubernetes.py``) reach a dynamic pipeline's steps only through them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mlflow import MlflowClient
from zenml import Model, pipeline
from zenml.client import Client
from zenml.execution.pipeline.dynamic.run_context import DynamicPipelineRunContext
from zenml.models import PipelineRunResponse

from pipelines.drift_reference import find_reference
from pipelines.launch import CONFIGS, EXECUTION_MODE, exclusive_run, prepare_run, print_summary
from pipelines.settle import discard_model_version
from pipelines.train_and_gate import LIBRARY_AWARE_CACHE, MODEL_DESCRIPTION, MODEL_NAME, train_and_gate
from stacks.local import mlflow_tracking_uri
from stage1_core.common.cli import EXIT_OK, configure_logging, run_command
from stage1_core.data.ingest import dataset_fingerprint
from stage1_core.data.sources.config import IngestConfig
from stage1_core.monitoring.batch import read_batch
from stage1_core.registry.promotion import check_registry
from stage1_core.run.config import RunConfig
from stage1_core.run.settings import load_run_config
from steps.adapt_backbone import adapt_backbone
from steps.add_batch import add_batch
from steps.check_drift import check_drift
from steps.ingest_data import ingest_data
from steps.train_model import train_model

logger = logging.getLogger(__name__)


def discard_this_model_version() -> None:
    """Delete the model version ZenML made for this run when the run ends without training.

    ZenML 0.98 has no lazy model version (the model is not passed on to step configurations, and a child pipeline
    would lose the run configuration's GPU templates); the run and its drift report stay.
    """
    run_context = DynamicPipelineRunContext.get()
    if run_context is None:
        raise RuntimeError("discard_this_model_version works only in the body of a running dynamic pipeline")
    discard_model_version(Client().get_pipeline_run(run_context.run.id))


@pipeline(
    dynamic=True,
    depends_on=[adapt_backbone, train_model],
    model=Model(name=MODEL_NAME, description=MODEL_DESCRIPTION),
    cache_policy=LIBRARY_AWARE_CACHE,
    execution_mode=EXECUTION_MODE,
)
def retrain_pipeline(
    config: RunConfig,
    data_fingerprint: str,
    backbone_fingerprint: str,
    batch: IngestConfig,
    batch_name: str = "batch",
    force: bool = False,
) -> None:
    """Drift check of ``batch`` against the production reference; retrain and gate when warranted or ``force``d."""
    reference = find_reference()
    batch_manifest = ingest_data(batch, dataset_fingerprint(batch.path), id="ingest_batch")
    report = check_drift(batch_manifest, reference.reference, reference.projection, reference.classifier, config.drift)
    if not (force or report.load().retrain_recommended):
        discard_this_model_version()
        return
    raw_manifest = add_batch(ingest_data(config.data, data_fingerprint), batch_manifest, batch_name)
    train_and_gate(raw_manifest, config, backbone_fingerprint)


def print_outcome(run: PipelineRunResponse) -> None:
    """The drift verdict, and the gate's summary when the run retrained."""
    report = run.steps["check_drift"].outputs["batch_drift_report"][0].load()
    retraining = "warranted" if report.retrain_recommended else "not warranted"
    print(
        f"\nDrift: {report.drift_share:.0%} of columns drifted {report.drifted_columns}; "
        f"retraining {retraining} ({report.retrain_reason})"
    )
    if "promote_model" in run.steps:
        print_summary(run)
    else:
        print(f"Run {run.name}: {run.status.value}; no retraining (pass --force to retrain anyway)")


def main(argv: list[str] | None = None) -> int:
    """Command line: check the batch, the reference and the registry first (exit 2 with one line), then run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", required=True, help="folder of new labelled images in an ingest layout")
    parser.add_argument(
        "--config",
        type=Path,
        default=CONFIGS / "retrain.yaml",
        help="ZenML YAML run config (default: pipelines/configs/retrain.yaml)",
    )
    parser.add_argument("--force", action="store_true", help="retrain even when the drift check does not warrant it")
    parser.add_argument("--batch-name", default="batch", help="source name of the batch in the fused manifest")
    args = parser.parse_args(argv)
    configure_logging()

    def run() -> int:
        settings = load_run_config(args.config)
        with exclusive_run(settings):
            batch = read_batch(args.batch, settings.config.data.image_store)
            run_arguments = prepare_run(settings)
            find_reference()
            uri = mlflow_tracking_uri()
            check_registry(MlflowClient(tracking_uri=uri, registry_uri=uri))
            pipeline_run = retrain_pipeline.with_options(**settings.zenml_options)(
                **run_arguments, batch=batch, batch_name=args.batch_name, force=args.force
            )
        print_outcome(pipeline_run)
        return EXIT_OK

    return run_command("retrain", run)


if __name__ == "__main__":
    sys.exit(main())
