"""Settling the runs that ended without completing: stopped by a signal, failed, or killed outright.

A run stopped by SIGTERM or Ctrl-C, or failed, must not look alive or successful anywhere: its ZenML run and its
unfinished steps get a final status, its MLflow run is ended with a matching one, and the model version ZenML
created for it at the start (before any step ran) is deleted, so it registers nothing. A run killed outright
(SIGKILL, out of memory) cannot do this itself: the next run finds its owner file beside the run lock and settles
it (see :func:`stage1_core.run.reliability.run_lock`). Shared by the commands that run pipelines.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.entities import Run
from zenml.client import Client
from zenml.constants import STR_FIELD_MAX_LENGTH
from zenml.enums import ExecutionStatus
from zenml.models import PipelineRunResponse
from zenml.orchestrators.publish_utils import publish_pipeline_run_status_update, publish_step_run_status_update

from stacks.local import mlflow_tracking_uri
from stage1_core.run.reliability import LockOwner

logger = logging.getLogger(__name__)

MLFLOW_STATUS = {ExecutionStatus.STOPPED: "KILLED", ExecutionStatus.FAILED: "FAILED"}
RECENT_RUNS = 50  # runs looked at, newest first: one command starts one run, a killed one left a few at most


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def runs_since(since: datetime, client: Client | None = None) -> list[PipelineRunResponse]:
    """The runs of this ZenML store created at or after ``since`` that did not complete, newest first."""
    client = client or Client()
    runs = client.list_pipeline_runs(sort_by="desc:created", size=RECENT_RUNS, hydrate=True)
    return [run for run in runs.items if _utc(run.created) >= _utc(since) and run.status != ExecutionStatus.COMPLETED]


def discard_model_version(run: PipelineRunResponse, client: Client | None = None) -> None:
    """Delete the model version ZenML made for ``run`` when it has no stage and no other run links to it.

    A pipeline-level ``Model`` gets its version when the run is created, before any step decides anything; a run
    that trains nothing (stopped, failed, or a retrain without drift) would otherwise leave an empty version
    behind. A version named in a run config (linked to other runs) or given a stage is kept.
    """
    client = client or Client()
    version = run.model_version
    if version is None or version.stage is not None:
        return
    links = client.list_model_version_pipeline_run_links(model_version_id=version.id)
    if [link.pipeline_run.id for link in links.items] == [run.id]:
        client.delete_model_version(version.id)
        logger.info("deleted the version %s of model %s made for run %s", version.number, version.model.name, run.name)


def mlflow_runs_of(client: MlflowClient, run: PipelineRunResponse) -> tuple[list[Run], list[Run]]:
    """(the MLflow runs ZenML's tracker made for a pipeline run, their nested runs): the tracker names the
    experiment after the pipeline and the run after the pipeline run."""
    experiment = client.get_experiment_by_name(run.pipeline.name if run.pipeline else "")
    if experiment is None:
        return [], []
    ids = [experiment.experiment_id]
    parents = client.search_runs(ids, filter_string=f"tags.mlflow.runName = '{run.name}'")
    children = [
        child
        for parent in parents
        for child in client.search_runs(ids, filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    ]
    return parents, children


def _end_mlflow_runs(run: PipelineRunResponse, status: ExecutionStatus, tracking_uri: str) -> None:
    """End the MLflow run of ``run`` (ZenML's tracker may have left it RUNNING, or FINISHED after the last step
    that completed) and its nested runs still RUNNING."""
    client = MlflowClient(tracking_uri=tracking_uri)
    parents, children = mlflow_runs_of(client, run)
    final = MLFLOW_STATUS[status]
    for mlflow_run in parents + [child for child in children if child.info.status == "RUNNING"]:
        if mlflow_run.info.status != final:
            client.set_terminated(mlflow_run.info.run_id, status=final)


def _status_reason(reason: str) -> str:
    """``reason`` within the length ZenML stores for a run's status reason (longer ones are refused)."""
    return reason if len(reason) <= STR_FIELD_MAX_LENGTH else reason[: STR_FIELD_MAX_LENGTH - 3] + "..."


def settle_runs(since: datetime, status: ExecutionStatus, reason: str) -> list[str]:
    """Give every run created since ``since`` that did not complete its final ``status`` (STOPPED or FAILED).

    The run (with ``reason``) and its unfinished steps in ZenML, its MLflow runs, and its empty model version
    (deleted). Returns the runs settled, each with the status it ended in. Never raises: settling is cleanup on
    the way out of a failure (or into the next run), and its own problem is logged, not put in the place of the
    one being reported.
    """
    settled: list[str] = []
    try:
        client = Client()
        tracking_uri = mlflow_tracking_uri(client)
        for run in runs_since(since, client):
            # A static pipeline's status follows its steps': a step that failed on the signal keeps the run FAILED,
            # with the reason recorded; a run stopped between steps becomes STOPPED.
            publish_pipeline_run_status_update(run.id, status, status_reason=_status_reason(reason))
            for step in client.list_run_steps(pipeline_run_id=run.id, size=1000).items:
                if not step.status.is_finished:
                    publish_step_run_status_update(step.id, status)
            if tracking_uri:
                _end_mlflow_runs(run, status, tracking_uri)
            discard_model_version(run, client)
            settled.append(f"{run.name} ({client.get_pipeline_run(run.id, hydrate=False).status.value})")
    except Exception as error:  # noqa: BLE001 - see the docstring: cleanup must not hide what it cleans up after
        logger.warning("could not settle the runs started since %s: %s: %s", since, type(error).__name__, error)
    if settled:
        logger.warning("settled run(s) %s: %s", ", ".join(settled), reason)
    return settled


def settle_killed_run(owner: LockOwner) -> None:
    """What a run killed outright left (found by the next run): its runs marked FAILED, its empty version deleted."""
    reason = f"killed: its process (pid {owner.pid}, {owner.command}) ended without cleaning up"
    settle_runs(owner.started, ExecutionStatus.FAILED, reason)
