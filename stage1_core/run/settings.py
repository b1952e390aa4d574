"""From a ZenML YAML run config and command-line overrides to validated run settings.

The YAML's ``parameters`` section is validated as a :class:`RunConfig` (typos fail at start); its optional
top-level ``reliability`` section as a :class:`ReliabilityConfig` (run lock, resource check: how the run
guards itself, not what it computes, so it is no pipeline parameter and no cache key); the rest of the YAML
(``enable_cache``, ``settings``, ``steps``...) is handed to ZenML unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from stage1_core.common.cli import UsageError
from stage1_core.common.config import ConfigFileError, describe_config_error, read_yaml_mapping
from stage1_core.run.config import RunConfig
from stage1_core.run.reliability import ReliabilityConfig


class ConfigError(UsageError, ValueError):
    """The run cannot start: bad config, or data in no known layout. One line, no traceback."""


class RunSettings(BaseModel):
    """The validated run config plus the options ZenML takes directly."""

    source: Path  # the YAML file it was read from
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
    try:
        document = read_yaml_mapping(path)
    except ConfigFileError as error:
        raise ConfigError(str(error)) from None
    parameters = document.pop("parameters", {}) or {}
    reliability = document.pop("reliability", {}) or {}
    for section, value in (("parameters", parameters), ("reliability", reliability)):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {section} must be a mapping of keys, not a {type(value).__name__}")
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
    except ValidationError as error:
        raise ConfigError(f"{path}: {describe_config_error(error, RunConfig, 'parameters')}") from None
    try:
        guards = ReliabilityConfig.model_validate(reliability)
    except ValidationError as error:
        raise ConfigError(f"{path}: {describe_config_error(error, ReliabilityConfig, 'reliability')}") from None
    return RunSettings(source=path, config=config, zenml_options=document, reliability=guards)
