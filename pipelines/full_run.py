"""The main pipeline: ingest -> validate -> split -> ExPLoRA -> train -> calibrate -> evaluate -> export -> drift reference -> promote.

Run it with ``python -m pipelines.full_run`` (the demo default) or point it at your data and weights:
``python -m pipelines.full_run --data /data/natix --backbone /weights/dinov2-small``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from zenml import Model, pipeline
from zenml.config import CachePolicy

from pipelines.run_config import RunSettings, load_run_config
from stage1_core.ablation import AblationConfig, AblationTable, recipe_name, slug
from stage1_core.calibration import CalibrationConfig
from stage1_core.code_version import library_fingerprint
from stage1_core.drift import DriftConfig
from stage1_core.evaluation import EvaluationConfig
from stage1_core.explora import ExploraConfig
from stage1_core.export import ExportConfig
from stage1_core.ingest import IngestConfig
from stage1_core.model import ClassifierConfig
from stage1_core.promotion import PromotionConfig
from stage1_core.splits import SplitConfig
from stage1_core.training import TrainConfig
from stage1_core.validation import ValidationConfig
from steps.adapt_backbone import adapt_backbone
from steps.build_drift_reference import build_drift_reference
from steps.calibrate_model import calibrate_model
from steps.evaluate_model import evaluate_model
from steps.export_model import export_model
from steps.ingest_data import ingest_data
from steps.load_pretrained_backbone import load_pretrained_backbone
from steps.promote_model import promote_model
from steps.score_ablation import score_ablation
from steps.split_data import split_data
from steps.train_model import train_model
from steps.validate_data import validate_data

MODEL_NAME = "roadwork-classifier"
# Every step's cache key also covers the library code it calls: an edited or upgraded stage1_core re-runs the steps.
LIBRARY_AWARE_CACHE = CachePolicy(cache_func=library_fingerprint)
# An ablation's training logs to an MLflow run of its own, nested under the pipeline run's, so its params
# and curves do not collide with the main model's (MLflow refuses to change a logged param).
NESTED_TRACKING = {"experiment_tracker": {"nested": True}}


def train_and_gate(
    raw_manifest: Any,
    validation: ValidationConfig,
    split: SplitConfig,
    backbone: str,
    backbone_fingerprint: str,
    seed: int,
    explora_enabled: bool,
    explora: ExploraConfig,
    classifier: ClassifierConfig,
    train: TrainConfig,
    calibration: CalibrationConfig,
    evaluation: EvaluationConfig,
    export: ExportConfig,
    drift: DriftConfig,
    promotion: PromotionConfig,
    ablation: AblationConfig,
) -> None:
    """Wire validate -> ... -> promote on an ingested manifest; shared by ``full_run`` and ``pipelines.retrain``.

    Each step reads only its own section of the run config. The ablations (``ablation``) train their
    variants next to the main model and reach the evaluation report as one table.
    """
    valid_manifest, _, validation_report = validate_data(raw_manifest, validation)
    split_manifest = split_data(valid_manifest, validation_report, split)
    if explora_enabled:
        adapted_backbone, _ = adapt_backbone(split_manifest, backbone, backbone_fingerprint, explora, classifier.multiview.canvas_size)
    else:
        adapted_backbone = load_pretrained_backbone(backbone, backbone_fingerprint, seed)
    trained_classifier, _ = train_model(split_manifest, adapted_backbone, classifier, train)
    policy = calibrate_model(split_manifest, trained_classifier, calibration)
    table = score_ablation(split_manifest, trained_classifier, policy, f"main: {recipe_name(explora_enabled, train.adapter.method)}", evaluation, export.adaptive)
    if ablation.without_explora and explora_enabled:
        plain_backbone = load_pretrained_backbone(backbone, backbone_fingerprint, seed, id="load_backbone_without_explora")
        table = train_ablation(split_manifest, plain_backbone, classifier, train, calibration, evaluation, export, table, recipe_name(False, train.adapter.method))
    if ablation.doran_head and train.adapter.method != "doran":
        doran = train.model_copy(update={"adapter": train.adapter.model_copy(update={"method": "doran"})})
        table = train_ablation(split_manifest, adapted_backbone, classifier, doran, calibration, evaluation, export, table, recipe_name(explora_enabled, "doran"))
    evaluation_report = evaluate_model(split_manifest, trained_classifier, policy, evaluation, table)
    exported_model = export_model(split_manifest, trained_classifier, policy, export)
    build_drift_reference(split_manifest, trained_classifier, drift)
    promote_model(evaluation_report, exported_model, validation_report, split_manifest, promotion)


def train_ablation(
    split_manifest: Any,
    backbone: Any,
    classifier: ClassifierConfig,
    train: TrainConfig,
    calibration: CalibrationConfig,
    evaluation: EvaluationConfig,
    export: ExportConfig,
    table: AblationTable,
    name: str,
) -> Any:
    """Train, calibrate and score one ablation exactly like the main model; return the table with its rows added."""
    ablated_classifier, _ = train_model.with_options(settings=NESTED_TRACKING)(split_manifest, backbone, classifier, train, id=f"train_model_{slug(name)}")
    ablated_policy = calibrate_model(split_manifest, ablated_classifier, calibration, id=f"calibrate_model_{slug(name)}")
    return score_ablation(split_manifest, ablated_classifier, ablated_policy, name, evaluation, export.adaptive, table, id=f"score_ablation_{slug(name)}")


@pipeline(model=Model(name=MODEL_NAME, description="P(roadwork) from a street-level photo"), cache_policy=LIBRARY_AWARE_CACHE)
def full_run(
    data: IngestConfig,
    data_fingerprint: str,
    validation: ValidationConfig,
    split: SplitConfig,
    backbone: str,
    backbone_fingerprint: str,
    seed: int,
    explora_enabled: bool,
    explora: ExploraConfig,
    classifier: ClassifierConfig,
    train: TrainConfig,
    calibration: CalibrationConfig,
    evaluation: EvaluationConfig,
    export: ExportConfig,
    drift: DriftConfig,
    promotion: PromotionConfig,
    ablation: AblationConfig,
) -> None:
    """Ingest the configured data, then train, evaluate, export and gate (:func:`train_and_gate`)."""
    train_and_gate(
        ingest_data(data, data_fingerprint), validation, split, backbone, backbone_fingerprint, seed, explora_enabled,
        explora, classifier, train, calibration, evaluation, export, drift, promotion, ablation,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: validate the config and the data path first, then run the pipeline and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="ZenML YAML run config (default: pipelines/configs/default.yaml)")
    parser.add_argument("--data", default=None, help="dataset folder (NATIX parquet layout); default: the generated demo dataset")
    parser.add_argument("--backbone", default=None, help="demo name, local weights directory or hub id (e.g. facebook/dinov2-small)")
    parser.add_argument("--no-cache", action="store_true", help="re-run every step instead of reusing cached outputs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from pipelines.run_config import ConfigError, exclusive_run, prepare_run, print_summary

    try:
        settings: RunSettings = load_run_config(args.config, data=args.data, backbone=args.backbone, no_cache=args.no_cache)
        with exclusive_run(settings):
            run_kwargs = prepare_run(settings)
            print_summary(full_run.with_options(**settings.zenml_options)(**run_kwargs))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
