"""Starting a pipeline run on this machine's ZenML store, and the summary printed after it.

Shared by the commands that run pipelines (``full_run``, ``retrain``): one run at a time per store, the
resource check, the demo data drawn when asked, the data layout checked and the local stack registered,
all before ZenML starts anything.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zenml.enums import ExecutionMode, ExecutionStatus
from zenml.models import PipelineRunResponse
from zenml.pipelines.pipeline_definition import Pipeline
from zenml.utils.io_utils import get_global_config_directory

from pipelines.settle import settle_killed_run, settle_runs
from stacks.local import ensure_local_stack, mlflow_tracking_uri
from stage1_core.common.atomic_io import atomic_directory, remove_partials
from stage1_core.common.cli import StopRequested
from stage1_core.data.ingest import dataset_fingerprint, detect_layout
from stage1_core.data.sources.base import DataLayoutError
from stage1_core.demo.writers import generate_demo_dataset, generate_fused_demo
from stage1_core.modeling.backbone import BackboneLoadError, resolve_backbone
from stage1_core.run.reliability import (
    InsufficientResourcesError,
    RunLockTimeout,
    check_resources,
    estimate_run_needs,
    run_lock,
)
from stage1_core.run.settings import ConfigError, RunSettings

CONFIGS = Path(__file__).parent / "configs"
LOCK_NAME = "roadwork-run.lock"
# One failed or interrupted step ends the run at once and its own exception reaches the command, which maps it onto
# the exit-code contract. ZenML's default goes on with every step that does not depend on the failed one (an
# ablation's training after the main training was stopped) and raises a bare RuntimeError at the end.
EXECUTION_MODE = ExecutionMode.FAIL_FAST
# The ZenML loggers that print a failed step's traceback (static pipelines; dynamic ones such as retrain).
STEP_FAILURE_LOGGERS = ("zenml.orchestrators.local.local_orchestrator", "zenml.execution.pipeline.dynamic.runner")


def zenml_store_directory() -> Path:
    """Where the local ZenML store, artifact store and MLflow store live (the ZenML global config folder)."""
    return Path(get_global_config_directory())


def check_zenml_options(settings: RunSettings) -> None:
    """The run config's top-level keys other than ``parameters`` and ``reliability`` must be ZenML run options.

    ZenML takes them as keyword arguments: a typo (``enable_cahce``) would otherwise end in a TypeError traceback.

    Raises:
        ConfigError: naming the unknown key and the nearest valid one.
    """
    valid = {
        name
        for method in (Pipeline.with_options, Pipeline.configure)
        for name, parameter in inspect.signature(method).parameters.items()
        if name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD
    } | {"parameters", "reliability"}
    for key in settings.zenml_options:
        if key not in valid:
            nearest = difflib.get_close_matches(key, sorted(valid), n=1)
            hint = f"did you mean {nearest[0]!r}?" if nearest else f"valid top-level keys: {', '.join(sorted(valid))}"
            raise ConfigError(f"{settings.source}: {key}: unknown top-level key; {hint}")


@contextmanager
def exclusive_run(settings: RunSettings) -> Iterator[None]:
    """One run at a time per ZenML store, stopped cleanly by one signal: hold the run lock around prepare + run +
    summary.

    A second run started meanwhile logs "waiting for run started by pid N at ..." and starts when the first
    ends (its cached steps then reuse the first one's outputs); after ``reliability.lock_timeout_s`` it stops with a
    :class:`ConfigError` naming the other run. The kernel drops the lock of a killed run, so none is ever stale, and
    the next run settles what the killed one left (:func:`settle_killed_run`). The command's ``run_command`` turns the
    first SIGTERM or SIGINT into :class:`StopRequested` where the run is; a run that does not complete, stopped or
    failed, is settled here (:func:`settle_runs`): final status in ZenML and MLflow, no model version left behind.
    """
    check_zenml_options(settings)
    started = datetime.now(UTC)
    try:
        with (
            quiet_step_tracebacks(),
            run_lock(
                zenml_store_directory() / LOCK_NAME,
                settings.reliability.lock_timeout_s,
                on_dead_owner=settle_killed_run,
            ),
        ):
            try:
                yield
            except StopRequested as stop:
                settle_runs(started, ExecutionStatus.STOPPED, str(stop))
                raise
            except Exception as error:
                settle_runs(started, ExecutionStatus.FAILED, f"{type(error).__name__}: {error}")
                raise
    except RunLockTimeout as error:
        raise ConfigError(str(error)) from None


class _NoTraceback(logging.Filter):
    """Drops the traceback of a log record, keeping its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


@contextmanager
def quiet_step_tracebacks() -> Iterator[None]:
    """ZenML's local orchestrator prints a failed step's traceback; the command reports the failure on one line.

    The traceback is not lost: ZenML keeps it with the step run (its exception info, in the dashboard), and an
    internal error's goes to the command's crash log (:func:`stage1_core.common.cli.run_command`).
    """
    loggers = [logging.getLogger(name) for name in STEP_FAILURE_LOGGERS]
    quiet = _NoTraceback()
    for step_logger in loggers:
        step_logger.addFilter(quiet)
    try:
        yield
    finally:
        for step_logger in loggers:
            step_logger.removeFilter(quiet)


def prepare_run(settings: RunSettings) -> dict[str, Any]:
    """Get everything ready for a pipeline run; return the pipeline's arguments.

    Checks resources, generates the demo data if asked, checks the data layout and registers the local stack.
    Call it inside :func:`exclusive_run`. The demo data is drawn into a hidden staging folder renamed into place
    when complete, so a generation killed halfway leaves no data folder that the next run would take as complete
    (the next run removes the staging leftover and draws again).
    """
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
    try:
        backbone_path = Path(resolve_backbone(config.backbone)).expanduser()  # a URL's weights: fetched into the cache
    except BackboneLoadError as error:
        raise ConfigError(str(error)) from None
    backbone_fingerprint = dataset_fingerprint(backbone_path) if backbone_path.is_dir() else config.backbone
    return {
        "config": config,
        "data_fingerprint": dataset_fingerprint(data_path),
        "backbone_fingerprint": backbone_fingerprint,
    }


def print_summary(run: PipelineRunResponse) -> None:
    """The key val_test metrics, the promotion decision and where to look next."""
    report = run.steps["evaluate_model"].outputs["evaluation_report"][0].load()
    decision = run.steps["promote_model"].outputs["promotion_decision"][0].load()
    exported = run.steps["export_model"].outputs["exported_model"][0]
    lines = [
        f"\nRun {run.name}: {run.status.value}",
        report.summary_text(),
        f"Promotion: {decision.registered_model_name} v{decision.version} -> "
        f"{decision.alias or 'no alias (failed the bars)'}",
    ]
    lines += [f"  - {reason}" for reason in decision.reasons]
    lines += [
        "Where to look:",
        "  ZenML dashboard:  zenml login --local   (then open http://127.0.0.1:8237)",
        f"  MLflow UI:        mlflow ui --backend-store-uri {mlflow_tracking_uri()}",
        f"  Exported model:   {exported.uri}/model.onnx",
    ]
    print("\n".join(lines))
