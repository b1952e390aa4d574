"""Running the project's command-line entry points as a user does: ``python -m <module> ...`` in the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_module(module: str, *arguments: str, env: dict[str, str] | None = None, timeout: float = 300):
    """``python -m module arguments...`` from the repository root; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
