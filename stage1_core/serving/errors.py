"""The errors serving raises: one base, :class:`PredictionError`, that a miner catches around every call.

``predict_base64_jpeg`` returns a float in [0, 1] or raises a :class:`PredictionError`, whatever it is given:
:class:`BadImageError` when this input cannot be scored (the next one may be), :class:`ModelLoadError` when the
bundle cannot be served at all (nothing can be scored until it is fixed). Each message names the input or the
file and what to do.
"""

from __future__ import annotations

from stage1_core.common.cli import UsageError


class PredictionError(Exception):
    """Nothing was scored: the message says which input or which bundle file, and why."""


class BadImageError(PredictionError, ValueError):
    """An input that cannot be scored: not base64, not an image, corrupt, or outside the size bounds."""


class ModelLoadError(PredictionError, UsageError, RuntimeError):
    """The model cannot be loaded; the message names the file (or registry) and what to do."""
