"""The steps every training pipeline shares, from data validation to the promotion gate.

validate -> split -> ExPLoRA -> train -> calibrate -> evaluate -> export -> drift reference -> promote.

``full_run`` feeds it the ingested data, ``retrain`` the data fused with a new batch. Each step reads only
its own section of the one :class:`RunConfig`, so a section's cache key is its own settings.
"""

from __future__ import annotations

from typing import Any

from zenml.config import CachePolicy

from stage1_core.evaluation.ablation import (
    AblationTable,
    distillation_ablation,
    distillation_recipe,
    recipe_name,
    slug,
)
from stage1_core.run.code_version import library_fingerprint
from stage1_core.run.config import RunConfig
from steps.adapt_backbone import adapt_backbone
from steps.build_drift_reference import build_drift_reference
from steps.calibrate_model import calibrate_model
from steps.evaluate_model import evaluate_model
from steps.export_model import export_model
from steps.load_pretrained_backbone import load_pretrained_backbone
from steps.promote_model import promote_model
from steps.score_ablation import score_ablation
from steps.split_data import split_data
from steps.train_model import train_model
from steps.validate_data import validate_data
from steps.variants import ablation_variant

MODEL_NAME = "roadwork-classifier"
MODEL_DESCRIPTION = "P(roadwork) from a street-level photo"
# Every step's cache key also covers the library code it calls: an edited or upgraded stage1_core re-runs the steps.
LIBRARY_AWARE_CACHE = CachePolicy(cache_func=library_fingerprint)
# An ablation's training logs to an MLflow run of its own, nested under the pipeline run's, so its params
# and curves do not collide with the main model's (MLflow refuses to change a logged param).
NESTED_TRACKING = {"experiment_tracker": {"nested": True}}


def train_and_gate(raw_manifest: Any, config: RunConfig, backbone_fingerprint: str) -> None:
    """Wire validate -> ... -> promote on an ingested manifest.

    The ablations (``config.ablation``) reach the evaluation report as one table.
    """
    valid_manifest, _, validation_report = validate_data(raw_manifest, config.validation)
    split_manifest = split_data(valid_manifest, validation_report, config.split)
    if config.explora_enabled:
        adapted_backbone, _ = adapt_backbone(
            split_manifest,
            config.backbone,
            backbone_fingerprint,
            config.explora,
            config.classifier.multiview.canvas_size,
        )
    else:
        adapted_backbone = load_pretrained_backbone(config.backbone, backbone_fingerprint, config.seed)
    trained_classifier, _ = train_model(split_manifest, adapted_backbone, config.classifier, config.train)
    policy = calibrate_model(split_manifest, trained_classifier, config.calibration)
    main_recipe = f"main: {recipe_name(config.explora_enabled, config.train.adapter.method)}"
    table = score_ablation(
        split_manifest, trained_classifier, policy, main_recipe, config.evaluation, config.export.adaptive
    )
    if config.ablation.without_explora and config.explora_enabled:
        plain_backbone = load_pretrained_backbone(
            config.backbone, backbone_fingerprint, config.seed, id="load_backbone_without_explora"
        )
        table = train_ablation(
            split_manifest, plain_backbone, config, table, recipe_name(False, config.train.adapter.method)
        )
    if config.ablation.doran_head and config.train.adapter.method != "doran":
        doran = config.model_copy(
            update={
                "train": config.train.model_copy(
                    update={"adapter": config.train.adapter.model_copy(update={"method": "doran"})}
                )
            }
        )
        table = train_ablation(
            split_manifest, adapted_backbone, doran, table, recipe_name(config.explora_enabled, "doran")
        )
    ablated = distillation_ablation(config.train, config.classifier.multiview, config.ablation.distillation)
    if ablated is not None:
        name = distillation_recipe(
            recipe_name(config.explora_enabled, config.train.adapter.method), ablated.distillation
        )
        table = train_ablation(
            split_manifest, adapted_backbone, config.model_copy(update={"train": ablated}), table, name
        )
    evaluation_report = evaluate_model(split_manifest, trained_classifier, policy, config.evaluation, table)
    exported_model = export_model(split_manifest, trained_classifier, policy, config.export)
    build_drift_reference(split_manifest, trained_classifier, config.drift)
    promote_model(evaluation_report, exported_model, validation_report, split_manifest, config.promotion)


def train_ablation(split_manifest: Any, backbone: Any, config: RunConfig, table: AblationTable, name: str) -> Any:
    """Train, calibrate and score one ablation exactly like the main model; return the table with its rows added.

    Its classifier, training summary and calibration policy are named after it (``classifier_<ablation>``...).
    """
    variant = ablation_variant(slug(name))
    ablated_classifier, _ = train_model.with_options(settings=NESTED_TRACKING, substitutions=variant)(
        split_manifest, backbone, config.classifier, config.train, id=f"train_model_{slug(name)}"
    )
    ablated_policy = calibrate_model.with_options(substitutions=variant)(
        split_manifest, ablated_classifier, config.calibration, id=f"calibrate_model_{slug(name)}"
    )
    return score_ablation(
        split_manifest,
        ablated_classifier,
        ablated_policy,
        name,
        config.evaluation,
        config.export.adaptive,
        table,
        id=f"score_ablation_{slug(name)}",
    )
