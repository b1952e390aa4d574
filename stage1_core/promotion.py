"""The promotion gate: register a model version in MLflow and decide whether it becomes champion.

A challenger becomes ``champion`` only when it clears the configured absolute bars and is not
worse than the current champion on val_test; otherwise it is tagged ``challenger``. Every reason
is kept, so the decision can be read, not just trusted.
"""

from __future__ import annotations

import html
import logging

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from stage1_core.reports import Report

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


class PromotionConfig(BaseModel):
    """Registry name and the absolute bars a model must clear to become champion."""

    registered_model_name: str = "roadwork-classifier"
    min_mcc: float = 0.3
    max_ece: float = 0.15
    min_auroc: float = 0.7
    comparison_metric: str = "mcc"


class PromotionDecision(Report):
    """Outcome of the gate for one model version, with every reason."""

    registered_model_name: str
    version: str
    promoted: bool
    alias: str
    reasons: list[str]
    metrics: dict[str, float | None]
    champion_version: str | None
    champion_metric: float | None

    def visualizations(self) -> dict[str, str]:
        """A small HTML page for the dashboard."""
        verdict = "PROMOTED to champion" if self.promoted else "kept as challenger"
        rows = "".join(f"<li>{html.escape(reason)}</li>" for reason in self.reasons)
        metrics = "".join(f"<tr><td>{html.escape(name)}</td><td>{'undefined' if value is None else f'{value:.4f}'}</td></tr>" for name, value in self.metrics.items())
        champion = f"previous champion: version {self.champion_version} ({self.champion_metric})" if self.champion_version else "no previous champion"
        page = (
            f"<html><body style='font-family:sans-serif'><h2>{html.escape(self.registered_model_name)} v{self.version}: {verdict}</h2>"
            f"<p>{html.escape(champion)}</p><h3>Reasons</h3><ul>{rows}</ul><h3>Metrics (val_test)</h3><table border=1 cellpadding=4>{metrics}</table></body></html>"
        )
        return {"promotion_decision.html": page}

    def metadata(self) -> dict[str, float | int | str | bool]:
        return {"promoted": self.promoted, "alias": self.alias, "version": self.version}


def current_champion(client: MlflowClient, name: str) -> tuple[str, float | None] | None:
    """(version, metric logged on its run) of the current champion, or None on a first run."""
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    run_metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    return str(version.version), run_metrics.get("val_test_mcc")


def decide(metrics: dict[str, float | None], champion: tuple[str, float | None] | None, config: PromotionConfig, blocking_issues: list[str]) -> tuple[bool, list[str]]:
    """Apply the bars; returns (promote, reasons). Pure, so the rules are testable without a registry."""
    reasons: list[str] = list(blocking_issues)
    bars = [("mcc", config.min_mcc, "min"), ("auroc", config.min_auroc, "min"), ("ece", config.max_ece, "max")]
    for name, bar, kind in bars:
        value = metrics.get(name)
        if value is None:
            reasons.append(f"{name} is undefined on val_test: cannot clear the bar {bar}")
        elif (kind == "min" and value < bar) or (kind == "max" and value > bar):
            reasons.append(f"{name} {value:.4f} {'below' if kind == 'min' else 'above'} the bar {bar}")
    passed_bars = not reasons
    if passed_bars:
        reasons.append(f"clears the bars: mcc >= {config.min_mcc}, auroc >= {config.min_auroc}, ece <= {config.max_ece}")
    challenger_value = metrics.get(config.comparison_metric)
    if champion is None:
        reasons.append("no champion yet: first model that clears the bars becomes champion")
        return passed_bars, reasons
    version, champion_value = champion
    if champion_value is not None and (challenger_value is None or challenger_value < champion_value):
        reasons.append(f"{config.comparison_metric} {challenger_value} is worse than champion v{version} ({champion_value:.4f})")
        return False, reasons
    reasons.append(f"{config.comparison_metric} not worse than champion v{version} ({champion_value})")
    return passed_bars, reasons


def register_and_promote(client: MlflowClient, model_uri: str, run_id: str, metrics: dict[str, float | None], config: PromotionConfig, blocking_issues: list[str]) -> PromotionDecision:
    """Register ``model_uri`` as a new version and set the ``champion`` or ``challenger`` alias."""
    name = config.registered_model_name
    champion = current_champion(client, name)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="P(roadwork) classifier: calibrated multi-view DINOv2/DINOv3 (ONNX)")
    version = client.create_model_version(name, source=model_uri, run_id=run_id)
    promoted, reasons = decide(metrics, champion, config, blocking_issues)
    alias = CHAMPION if promoted else CHALLENGER
    client.set_registered_model_alias(name, alias, version.version)
    logger.info("%s v%s -> %s (%s)", name, version.version, alias, "; ".join(reasons))
    return PromotionDecision(
        registered_model_name=name,
        version=str(version.version),
        promoted=promoted,
        alias=alias,
        reasons=reasons,
        metrics=metrics,
        champion_version=champion[0] if champion else None,
        champion_metric=champion[1] if champion else None,
    )
