"""The base of every config model: unknown keys are errors, and a validation error reads as one line.

A typo in a run config (``train: {max_epoch: 40}``) silently dropped would run the default (8 epochs) while the
user believes 40 ran. Every config model derives from :class:`StrictConfig`, so such a key fails at start, and
:func:`describe_config_error` names its full key path and the nearest valid key.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from stage1_core.common.cli import UsageError


class ConfigFileError(UsageError, ValueError):
    """A config file is missing, is not YAML, or does not hold a mapping at its top level."""


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file is an empty mapping).

    Raises:
        ConfigFileError: the file is missing, unreadable, not YAML (naming the line), or not a mapping.
    """
    try:
        document = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigFileError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigFileError(f"config file {path} cannot be read ({error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigFileError(f"{path}: not valid YAML{where}: {problem}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigFileError(f"{path}: the top level must be a mapping of keys, not a {type(document).__name__}")
    return document


class OptionsError(UsageError, ValueError):
    """Command-line options that make an invalid config (a negative size, an unknown choice...)."""


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def config_from_options(model: type[ConfigT], **values: Any) -> ConfigT:
    """A config built from a command's options; an invalid value is a usage error (exit 2) naming the field.

    Raises:
        OptionsError: one line with every problem (see :func:`describe_config_error`).
    """
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise OptionsError(f"invalid options: {describe_config_error(error, model)}") from None


class StrictConfig(BaseModel):
    """A config section: unknown keys are refused (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold: itself, an ``X | None``'s X, a ``dict``'s or ``list``'s values."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple, dict, typing.Annotated):
        values = arguments[1:] if origin is dict else arguments
        return [model for argument in values for model in _models_in(argument)]
    return []


def _model_at(model: type[BaseModel], path: Sequence[int | str]) -> type[BaseModel] | None:
    """The config model that holds the key at the end of ``path`` (None when the path leaves the models)."""
    current: type[BaseModel] | None = model
    for part in path:
        if current is None:
            return None
        if isinstance(part, int) or part not in current.model_fields:
            continue  # a list index or a dict key: the value's model is the one already found
        candidates = _models_in(current.model_fields[part].annotation)
        current = candidates[0] if candidates else None
    return current


def nearest_key(model: type[BaseModel], key: str) -> str | None:
    """The valid key of ``model`` closest to ``key`` (difflib's ratio >= 0.6), or None."""
    return next(iter(difflib.get_close_matches(key, list(model.model_fields), n=1)), None)


def _describe(problem: dict[str, Any], model: type[BaseModel], prefix: str) -> str:
    location = list(problem["loc"])
    path = ".".join(str(part) for part in ([prefix] if prefix else []) + location)
    if problem["type"] != "extra_forbidden":
        return f"{path}: {problem['msg']}"
    holder = _model_at(model, location[:-1])
    if holder is None:
        return f"{path}: unknown key; remove it"
    suggestion = nearest_key(holder, str(location[-1]))
    hint = f"did you mean {suggestion!r}?" if suggestion else f"valid keys here: {', '.join(holder.model_fields)}"
    return f"{path}: unknown key; {hint}"


def describe_config_error(error: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """Every problem of ``error`` on one line: its full key path, what is wrong, and for an unknown key the
    nearest valid one (or the valid keys there).

    Args:
        model: the model that was validated (its field tree finds the nearest key of an unknown one).
        prefix: the key path of ``model`` in the document, e.g. ``parameters``.
    """
    return " | ".join(_describe(problem, model, prefix) for problem in error.errors())
