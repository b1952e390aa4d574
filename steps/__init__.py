"""Thin ZenML steps: each reads its inputs, calls stage1_core, returns named outputs, logs metadata."""

import materializers  # noqa: F401 - registers this project's materializers before any step saves an output
