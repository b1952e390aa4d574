"""What a registered model version says about itself, the same in ZenML's Model Control Plane and in MLflow.

A model version is looked up months later by someone who did not run the pipeline: its metadata (ZenML) and its
description (MLflow) carry the val_test figures with their intervals, the data it was trained and evaluated on
(the split manifest's hash), the run config and the promotion decision, so nobody has to find the run first.
"""

from __future__ import annotations

from typing import Any

from stage1_core.common.reports import format_number
from stage1_core.evaluation.report import HEADLINE, EvaluationReport
from stage1_core.registry.tracking import DataLineage
from stage1_core.serving.bundle import INPUT_NAME, OUTPUT_NAME

SERVING_INTERFACE = (
    f"ONNX: uint8 {INPUT_NAME} [batch, 3, height, width] -> {OUTPUT_NAME} [batch], calibrated P(roadwork)"
)


def headline_metrics(report: EvaluationReport) -> dict[str, Any]:
    """The headline val_test metrics (calibrated, at the validator's threshold) with their bootstrap intervals."""
    calibrated = report.calibrated
    metrics: dict[str, Any] = {
        name: {
            "value": calibrated.metric(name).value,
            "ci_low": calibrated.metric(name).ci_low,
            "ci_high": calibrated.metric(name).ci_high,
        }
        for name in HEADLINE
    }
    return metrics | {
        "n_images": calibrated.n,
        "confidence": calibrated.confidence,
        "bootstrap_resamples": calibrated.n_bootstrap,
        "resampled_groups": calibrated.n_groups,
    }


def model_version_metadata(
    report: EvaluationReport, lineage: DataLineage, config: dict[str, Any], decision: dict[str, Any]
) -> dict[str, Any]:
    """ZenML model version metadata: ``val_test`` metrics with CIs, ``data`` hash and sizes, ``config``, ``promotion``.

    Args:
        config: the run config as JSON values (every setting in force, defaults included).
        decision: the promotion decision as JSON values.
    """
    return {
        "val_test": headline_metrics(report),
        "data": {
            "manifest_sha256": lineage.manifest_sha256,
            "rows": lineage.n_rows,
            "rows_per_source": lineage.rows_per_source,
            "split_sizes": lineage.split_sizes,
        },
        "config": config,
        "promotion": decision,
    }


def version_description(report: EvaluationReport, lineage: DataLineage, origin: str) -> str:
    """The MLflow model version's description: what the model is, how good, on what data, from which run.

    The promotion gate adds its verdict (see ``promotion.register_and_promote``).
    """
    calibrated = report.calibrated
    figures = ", ".join(
        f"{name} {format_number(calibrated.metric(name).value)} "
        f"[{format_number(calibrated.metric(name).ci_low)}, {format_number(calibrated.metric(name).ci_high)}]"
        for name in ("mcc", "auroc", "ece")
    )
    return (
        f"Calibrated multi-view roadwork classifier ({SERVING_INTERFACE}). "
        f"val_test, {calibrated.n} images, {calibrated.confidence:.0%} bootstrap CIs: {figures}. "
        f"Data: split manifest sha256 {lineage.manifest_sha256[:16]}, {lineage.n_rows} images. {origin}."
    )
