"""Promotion step: log to MLflow, register the exported model, gate it to champion or challenger."""

from typing import Annotated

import mlflow
from mlflow import MlflowClient
from zenml import get_step_context, log_metadata, step

from stage1_core.evaluation import EvaluationReport
from stage1_core.export import ExportedModel
from stage1_core.promotion import PromotionConfig, PromotionDecision, register_and_promote
from stage1_core.validation import ValidationReport


@step(experiment_tracker=True)
def promote_model(evaluation_report: EvaluationReport, exported_model: ExportedModel, validation_report: ValidationReport, config: PromotionConfig) -> Annotated[PromotionDecision, "promotion_decision"]:
    """Register the ONNX model in MLflow and set its alias; the ZenML model stage follows the alias."""
    model_info = exported_model.log_to_mlflow()
    blocking = [f"data validation failed critically: {reason}" for reason in validation_report.critical_reasons]
    decision = register_and_promote(MlflowClient(), model_info.model_uri, mlflow.active_run().info.run_id, evaluation_report.gate_metrics(), config, blocking)
    get_step_context().model.set_stage("production" if decision.promoted else "staging", force=True)
    log_metadata({"promoted": decision.promoted, "registered_version": decision.version, "alias": decision.alias})
    return decision
