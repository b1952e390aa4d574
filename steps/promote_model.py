"""Promotion step: log the run's lineage to MLflow, register the exported model, gate it to champion or challenger."""

from typing import Annotated
from uuid import UUID

import mlflow
import pandas as pd
from mlflow import MlflowClient
from zenml import get_step_context, log_metadata, step
from zenml.client import Client
from zenml.enums import ModelStages

from stage1_core.data.splits import Consumer, take_split
from stage1_core.data.validation import ValidationReport
from stage1_core.evaluation.report import EvaluationReport
from stage1_core.export.exporter import ExportedModel
from stage1_core.registry.champion import log_exported_model
from stage1_core.registry.model_record import model_version_metadata, version_description
from stage1_core.registry.promotion import PromotionConfig, PromotionDecision, register_and_promote, val_test_evidence
from stage1_core.registry.tracking import log_files, log_lineage, log_run_parameters
from stage1_core.run.config import RunConfig


class ZenMLStageTransition:
    """The ZenML model version stage that follows the MLflow alias: production (previous holder archived) or staging.

    ``undo`` puts back the stages ``apply`` found: this version's, then the previous production version's.
    """

    def __init__(self, client: Client, model_name: str, version_id: UUID) -> None:
        self.client = client
        self.model_name = model_name
        self.version_id = version_id
        self._before: list[tuple[UUID, str]] = []

    def apply(self, promoted: bool) -> None:
        """Set production (force: the previous production version is archived) or staging."""
        this = self.client.get_model_version(self.model_name, self.version_id)
        self._before = [(this.id, this.stage or ModelStages.NONE.value)]
        try:
            production = self.client.get_model_version(self.model_name, ModelStages.PRODUCTION)
        except KeyError:  # no production version yet
            production = None
        if production is not None and production.id != this.id:
            self._before.append((production.id, ModelStages.PRODUCTION.value))
        stage = ModelStages.PRODUCTION if promoted else ModelStages.STAGING
        self.client.update_model_version(self.model_name, self.version_id, stage=stage, force=True)

    def undo(self) -> None:
        """Restore the stages found by ``apply``.

        This version first, so the old production one can take its stage back.
        """
        for version_id, stage in self._before:
            self.client.update_model_version(self.model_name, version_id, stage=stage, force=True)


@step(experiment_tracker=True)
def promote_model(
    evaluation_report: EvaluationReport,
    exported_model: ExportedModel,
    validation_report: ValidationReport,
    manifest: pd.DataFrame,
    config: PromotionConfig,
) -> Annotated[PromotionDecision, "promotion_decision"]:
    """Log params, lineage and the ONNX model to the run's MLflow run; register it.

    The registry alias and the ZenML stage move together. The ZenML model version gets the val_test metrics with
    their intervals, the data hash, the run config and the decision as metadata.
    """
    context = get_step_context()
    parameters = dict(context.pipeline_run.config.parameters or {})
    run_config = RunConfig.model_validate(parameters.pop("config", {}))
    log_run_parameters(run_config, parameters, exclude={"demo", "demo_sources"})
    lineage = log_lineage(manifest, source=context.inputs["manifest"][0].uri)
    model_info = log_exported_model(exported_model)
    evidence = val_test_evidence(
        take_split(manifest, "val_test", Consumer.EVALUATION),
        evaluation_report.labels,
        evaluation_report.calibrated_probs().tolist(),
    )
    blocking = [f"data validation failed critically: {reason}" for reason in validation_report.critical_reasons]
    tags = {
        "manifest_sha256": lineage.manifest_sha256,
        "zenml_run": context.pipeline_run.name,
        "zenml_model_version": str(context.model.number),
    }
    decision = register_and_promote(
        MlflowClient(),
        model_info.model_uri,
        mlflow.active_run().info.run_id,
        evaluation_report.gate_metrics(),
        config,
        blocking,
        evidence=evidence,
        stage=ZenMLStageTransition(Client(), context.model.name, context.model.id),
        tags=tags,
        description=version_description(
            evaluation_report,
            lineage,
            f"ZenML: pipeline run {context.pipeline_run.name}, model {context.model.name} v{context.model.number}",
        ),
    )
    log_files(decision.visualizations(), "promotion")
    log_metadata(
        decision.metadata()
        | {
            "manifest_sha256": lineage.manifest_sha256,
            "rows_per_source": lineage.rows_per_source,
            "split_sizes": lineage.split_sizes,
        }
    )
    log_metadata(
        model_version_metadata(
            evaluation_report,
            lineage,
            run_config.model_dump(mode="json"),
            decision.metadata() | {"reasons": decision.reasons},
        ),
        infer_model=True,
    )
    return decision
