"""From a ZenML YAML run config and command-line overrides to a validated run, and the closing summary.

The YAML's ``parameters`` section is validated as a :class:`RunConfig` (typos fail at start); its optional
top-level ``reliability`` section as a :class:`ReliabilityConfig` (run lock, resource check: how the run
guards itself, not what it computes, so it is no pipeline parameter and no cache key); the rest of the YAML
(``enable_cache``, ``settings``, ``steps``...) is handed to ZenML unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from stage1_core.backbone import resolve_backbone
from stage1_core.config import RunConfig
from stage1_core.demo_data import generate_demo_dataset, generate_fused_demo
from stage1_core.ingest import DataLayoutError, dataset_fingerprint, detect_layout
from stage1_core.atomic_io import atomic_directory, remove_partials
from stage1_core.reliability import (
    InsufficientResourcesError,
    ReliabilityConfig,
    RunLockTimeout,
    check_resources,
    estimate_run_needs,
    run_lock,
)

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"
LOCK_NAME = "roadwork-run.lock"


class ConfigError(ValueError):
    """The run cannot start: bad config, or data in no known layout. One line, no traceback."""


class RunSettings(BaseModel):
    """The validated run config plus the options ZenML takes directly."""

    config: RunConfig
    zenml_options: dict[str, Any]
    reliability: ReliabilityConfig = ReliabilityConfig()


def load_run_config(path: Path | None, *, data: str | None = None, backbone: str | None = None, no_cache: bool = False) -> RunSettings:
    """Read the YAML, apply overrides (``--data`` switches the demo generator off) and validate."""
    path = path or DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"run config {path} does not exist")
    document = yaml.safe_load(path.read_text()) or {}
    parameters = document.pop("parameters", {}) or {}
    reliability = document.pop("reliability", {}) or {}
    if data is not None:
        parameters["data"] = {**parameters.get("data", {}), "path": data}
        parameters["demo"] = None
        parameters["demo_sources"] = None
        slices = parameters.setdefault("evaluation", {}).setdefault("slices", {})
        slices["truth_path"] = None  # object sizes are known only for the generated demo data
    if backbone is not None:
        parameters["backbone"] = backbone
    if no_cache:
        document["enable_cache"] = False
    try:
        config = RunConfig.model_validate(parameters)
        guards = ReliabilityConfig.model_validate(reliability)
    except ValidationError as error:
        first = error.errors()[0]
        section = "parameters" if error.title == RunConfig.__name__ else "reliability"
        raise ConfigError(f"{path}: {section}.{'.'.join(str(part) for part in first['loc'])}: {first['msg']} ({error.error_count()} problem(s))") from None
    return RunSettings(config=config, zenml_options=document, reliability=guards)


def zenml_store_directory() -> Path:
    """Where the local ZenML store, artifact store and MLflow store live (the ZenML global config folder)."""
    from zenml.utils.io_utils import get_global_config_directory

    return Path(get_global_config_directory())


@contextmanager
def exclusive_run(settings: RunSettings) -> Iterator[None]:
    """One run at a time per ZenML store: hold the run lock around prepare + run + summary.

    A second ``full_run`` started meanwhile logs "waiting for run started by pid N at ..." and starts when the first
    ends (its cached steps then reuse the first one's outputs); after ``reliability.lock_timeout_s`` it stops with a
    :class:`ConfigError` naming the other run. The kernel drops the lock of a killed run, so none is ever stale.
    """
    try:
        with run_lock(zenml_store_directory() / LOCK_NAME, settings.reliability.lock_timeout_s):
            yield
    except RunLockTimeout as error:
        raise ConfigError(str(error)) from None


def prepare_run(settings: RunSettings) -> dict[str, Any]:
    """Check resources, generate the demo data if asked, check the data layout, register the local stack; return pipeline kwargs.

    Call it inside :func:`exclusive_run`. The demo data is drawn into a hidden staging folder renamed into place
    when complete, so a generation killed halfway leaves no data folder that the next run would take as complete
    (the next run removes the staging leftover and draws again).
    """
    from stacks.local import ensure_local_stack

    config = settings.config
    data_path = Path(config.data.path).expanduser()
    remove_partials(data_path)
    if settings.reliability.check_resources:
        try:
            check_resources(estimate_run_needs(config, zenml_store_directory()), settings.reliability.safety_factor)
        except InsufficientResourcesError as error:
            raise ConfigError(f"{error} (or set reliability.check_resources: false to run anyway)") from None
    if config.demo is not None and not data_path.exists():
        with atomic_directory(data_path) as staging:
            if config.demo_sources:
                generate_fused_demo(staging, config.demo, config.demo_sources)
            else:
                generate_demo_dataset(staging, config.demo)
    try:
        detect_layout(data_path)
    except DataLayoutError as error:
        raise ConfigError(str(error)) from None
    ensure_local_stack()
    kwargs = {name: getattr(config, name) for name in RunConfig.model_fields if name not in ("demo", "demo_sources")}
    backbone_path = Path(resolve_backbone(config.backbone)).expanduser()
    backbone_fingerprint = dataset_fingerprint(backbone_path) if backbone_path.is_dir() else config.backbone
    return kwargs | {"data_fingerprint": dataset_fingerprint(data_path), "backbone_fingerprint": backbone_fingerprint}


def print_summary(run: Any) -> None:
    """The key val_test metrics, the promotion decision and where to look next."""
    from stacks.local import mlflow_tracking_uri

    report = run.steps["evaluate_model"].outputs["evaluation_report"][0].load()
    decision = run.steps["promote_model"].outputs["promotion_decision"][0].load()
    exported = run.steps["export_model"].outputs["exported_model"][0]
    lines = [f"\nRun {run.name}: {run.status.value}", report.summary_text(), f"Promotion: {decision.registered_model_name} v{decision.version} -> {decision.alias}"]
    lines += [f"  - {reason}" for reason in decision.reasons]
    lines += [
        "Where to look:",
        "  ZenML dashboard:  zenml login --local   (then open http://127.0.0.1:8237)",
        f"  MLflow UI:        mlflow ui --backend-store-uri {mlflow_tracking_uri()}",
        f"  Exported model:   {exported.uri}/model.onnx",
    ]
    print("\n".join(lines))
