"""Which drift reference a new batch is compared with.

That of the production model version, a named run's, or the latest. A lookup in the ZenML store,
shared by ``drift_monitor`` (on demand) and ``retrain`` (in the scheduled run's body).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from zenml.client import Client
from zenml.enums import ModelStages
from zenml.models import ArtifactVersionResponse, PipelineRunResponse

from pipelines.train_and_gate import MODEL_NAME
from stage1_core.common.cli import UsageError

REFERENCE_STEP = "build_drift_reference"
TRAIN_STEP = "train_model"


class ReferenceNotFoundError(UsageError, LookupError):
    """No drift reference to compare with; the message says how to make one."""


class DriftReference(BaseModel):
    """The three artifacts of one run a batch is compared with, and where they come from."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reference: ArtifactVersionResponse
    projection: ArtifactVersionResponse
    classifier: ArtifactVersionResponse
    origin: str


def _from_run(run: PipelineRunResponse, why: str) -> DriftReference:
    if REFERENCE_STEP not in run.steps or TRAIN_STEP not in run.steps:
        raise ReferenceNotFoundError(
            f"pipeline run {run.name} has no {REFERENCE_STEP} / {TRAIN_STEP} step: "
            "pass a full_run or retrain run that trained a model"
        )
    outputs = run.steps[REFERENCE_STEP].outputs
    if "embedding_projection" not in outputs:
        raise ReferenceNotFoundError(
            f"pipeline run {run.name} built its drift reference without backbone embeddings (older code): "
            "run full_run again"
        )
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
            raise ReferenceNotFoundError(
                f"no pipeline run named {run!r}: list runs with `zenml pipeline runs list`"
            ) from None
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
            raise ReferenceNotFoundError(
                "no drift reference yet: run `python -m pipelines.full_run` first (it builds one), "
                "or pass --reference RUN"
            ) from None
        why = "latest reference (no model version in production yet)"
    return _from_run(client.get_pipeline_run(artifact.producer_pipeline_run_id), why)
