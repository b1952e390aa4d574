"""From a ZenML YAML run config and command-line overrides to validated run settings.

The YAML's ``parameters`` section is validated as a :class:`RunConfig` (typos fail at start); its optional
top-level ``reliability`` section as a :class:`ReliabilityConfig` (run lock, resource check: how the run
guards itself, not what it computes, so it is no pipeline parameter and no cache key); the rest of the YAML
(``enable_cache``, ``settings``, ``steps``...) is handed to ZenML unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from stage1_core.common.cli import UsageError
from stage1_core.run.config import RunConfig
from stage1_core.run.reliability import ReliabilityConfig


class ConfigError(UsageError, ValueError):
    """The run cannot start: bad config, or data in no known layout. One line, no traceback."""


class RunSettings(BaseModel):
    """The validated run config plus the options ZenML takes directly."""

    config: RunConfig
    zenml_options: dict[str, Any]
    reliability: ReliabilityConfig = ReliabilityConfig()


def load_run_config(
    path: Path, *, data: str | None = None, backbone: str | None = None, no_cache: bool = False
) -> RunSettings:
    """Read the YAML, apply overrides (``--data`` switches the demo generator off) and validate.

    Raises:
        ConfigError: the file is missing, or a field is unknown or invalid (named with its full key path).
    """
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
        location = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}: {section}.{location}: {first['msg']} ({error.error_count()} problem(s))") from None
    return RunSettings(config=config, zenml_options=document, reliability=guards)
