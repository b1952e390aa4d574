"""Ablations on the same val_test: which parts of the recipe earn their cost.

Every model (the main one and each training ablation) is scored three ways at inference: the
global view alone, fixed multi-view (all views, aggregated), and adaptive multi-view (tiles only
when the global view is unsure; the bounds fitted on val_select, as the exported model does). The
global view's logit goes through the model's calibration policy like the aggregated one, exactly as
adaptive serving does. Training ablations change one thing against the main recipe and are
trained and calibrated exactly like it: without ExPLoRA (the same initial backbone, not adapted),
with a DoRAN adapter instead of the configured one, and with the global-view distillation the main recipe
leaves off (its effect shows in the adaptive row: the views per image spent at the same MCC budget).
"""

from __future__ import annotations

import html
import re
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from stage1_core.common.config import StrictConfig
from stage1_core.common.logit_map import VALIDATOR_THRESHOLD
from stage1_core.common.metrics import MetricsConfig, MetricValue, compute_metrics
from stage1_core.common.reports import Report, metric_cell
from stage1_core.data.splits import bootstrap_groups
from stage1_core.evaluation.calibration import CalibrationPolicy
from stage1_core.modeling.inference import predict_global_and_full_logits
from stage1_core.modeling.model import MultiViewConfig, RoadworkClassifier
from stage1_core.modeling.training import DistillationConfig, TrainConfig, distillation_weight
from stage1_core.serving.adaptive import AdaptiveConfig, evaluate_adaptive, fit_adaptive_policy, skip_tiles

InferenceMode = Literal["global view", "multi-view", "adaptive"]
ABLATION_METRICS = ("mcc", "accuracy", "auroc", "ece")


class AblationConfig(StrictConfig):
    """Which training ablations the run adds next to the main model (each costs one more training)."""

    without_explora: bool = Field(
        True,
        description="train from the initial backbone without the ExPLoRA step (skipped when the run has no ExPLoRA)",
    )
    doran_head: bool = Field(
        True,
        description="train with a DoRAN adapter instead of the configured one (skipped when that is DoRAN already)",
    )
    distillation: DistillationConfig | None = Field(
        DistillationConfig(weight=1.0),
        description="train the main recipe with this global-view loss instead of the configured one (the default: "
        "distillation from the aggregate at weight 1, which the main recipe leaves off); skipped where it would "
        "train the same model (a global-view-only training); None: no such ablation",
    )


class AblationRow(BaseModel):
    """One model under one inference mode on val_test (calibrated probabilities at the validator's 0.5)."""

    model: str
    inference: InferenceMode
    views_per_image: float
    metrics: dict[str, MetricValue]


class AblationTable(Report):
    """The rows of every scored model; the visualization is the table the evaluation report shows."""

    split: str = "val_test"
    n_images: int
    rows: list[AblationRow] = []

    def with_rows(self, rows: list[AblationRow]) -> AblationTable:
        return self.model_copy(update={"rows": [*self.rows, *rows]})

    def flat_metrics(self) -> dict[str, float]:
        """``ablation_<model>_<mode>_<metric>`` -> value, for metric logs (undefined metrics left out)."""
        flat = {}
        for row in self.rows:
            key = f"ablation_{slug(row.model)}_{slug(row.inference)}"
            flat[f"{key}_views_per_image"] = row.views_per_image
            flat |= {f"{key}_{name}": metric.value for name, metric in row.metrics.items() if metric.value is not None}
        return flat

    def html(self) -> str:
        header = "".join(f"<th>{name}</th>" for name in ABLATION_METRICS)
        body = []
        for row in self.rows:
            cells = "".join(metric_cell(row.metrics[name], digits=3) for name in ABLATION_METRICS)
            body.append(
                f"<tr><td>{html.escape(row.model)}</td><td>{row.inference}</td><td>{row.views_per_image:.2f}</td>{cells}</tr>"
            )
        return (
            "<html><body style='font-family:sans-serif'>"
            f"<h2>Ablations on {self.split} ({self.n_images} images, calibrated, threshold 0.5)</h2>"
            "<p>Each model scored by its global view alone, by all views aggregated, and adaptively "
            "(tiles only when the global view is unsure; bound fitted on val_select). "
            "Values with 95% bootstrap CI.</p>"
            "<table border=1 cellpadding=4><tr><th>model</th><th>inference</th><th>views / image</th>"
            f"{header}</tr>{''.join(body)}</table></body></html>"
        )

    def visualizations(self) -> dict[str, str | bytes]:
        return {"ablations.html": self.html()}


def recipe_name(explora: bool, adapter: str) -> str:
    """How a training recipe reads in the table, e.g. ``ExPLoRA + linear head``."""
    head = {"none": "linear head", "lora": "LoRA adapter", "dora": "DoRA adapter", "doran": "DoRAN adapter"}[adapter]
    return f"{'ExPLoRA' if explora else 'no ExPLoRA'} + {head}"


def distillation_ablation(
    config: TrainConfig, multiview: MultiViewConfig, alternative: DistillationConfig | None
) -> TrainConfig | None:
    """The main training with the ablation's global-view loss, or None where that would train the same model."""
    if alternative is None or alternative == config.distillation:
        return None
    ablated = config.model_copy(update={"distillation": alternative})
    return None if distillation_weight(multiview, ablated) == distillation_weight(multiview, config) == 0 else ablated


def distillation_recipe(recipe: str, distillation: DistillationConfig) -> str:
    """How the distillation ablation reads, e.g. ``ExPLoRA + linear head, with distillation (weight 1)``."""
    if distillation.weight == 0:
        return f"{recipe}, no distillation"
    temperature = f", T {distillation.temperature:g}" if distillation.temperature != 1 else ""
    if distillation.teacher == "aggregate":
        return f"{recipe}, with distillation (weight {distillation.weight:g}{temperature})"
    return f"{recipe}, global view taught by the label (weight {distillation.weight:g})"


def slug(text: str) -> str:
    """``main: ExPLoRA + linear head`` -> ``main_explora_linear_head``: metric keys and step ids."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def score_inference_modes(
    model_name: str,
    classifier: RoadworkClassifier,
    policy: CalibrationPolicy,
    val_select: pd.DataFrame,
    val_test: pd.DataFrame,
    evaluation: MetricsConfig,
    adaptive: AdaptiveConfig,
) -> list[AblationRow]:
    """Rows for ``classifier`` under the three inference modes on ``val_test``.

    The adaptive bound is fitted on ``val_select``.

    Raises:
        ValueError: val_select or val_test lack one of the classes (the adaptive bound and MCC need both).
    """
    select_global, select_full = (
        policy.probabilities(z)
        for z in predict_global_and_full_logits(classifier, val_select, desc=f"{model_name}: val_select")
    )
    test_global, test_full = (
        policy.probabilities(z)
        for z in predict_global_and_full_logits(classifier, val_test, desc=f"{model_name}: val_test")
    )
    y_select, y_test = val_select["label"].to_numpy(), val_test["label"].to_numpy()
    test_groups = bootstrap_groups(val_test)
    n_views = classifier.config.multiview.views_per_image
    bound = fit_adaptive_policy(select_global, select_full, y_select, n_views, adaptive, bootstrap_groups(val_select))
    outcome = evaluate_adaptive(test_global, test_full, y_test, bound)
    adaptive_probs = np.where(skip_tiles(test_global, bound), test_global, test_full)
    modes: list[tuple[InferenceMode, np.ndarray, float]] = [
        ("global view", test_global, 1.0),
        ("multi-view", test_full, float(n_views)),
        ("adaptive", adaptive_probs, outcome.views_per_image),
    ]
    rows = []
    for mode, probs, views in modes:
        report = compute_metrics(
            y_test,
            probs,
            threshold=VALIDATOR_THRESHOLD,
            n_bootstrap=evaluation.n_bootstrap,
            groups=test_groups,
            confidence=evaluation.confidence,
            seed=evaluation.seed,
            n_bins=evaluation.n_bins,
        )
        rows.append(
            AblationRow(
                model=model_name,
                inference=mode,
                views_per_image=views,
                metrics={name: report.metric(name) for name in ABLATION_METRICS},
            )
        )
    return rows
