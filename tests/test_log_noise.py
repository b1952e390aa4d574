"""Third-party chatter stays out of the commands' logs by default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_importing_the_pipelines_logs_no_great_expectations_registry_lines() -> None:
    """Importing a command imports ZenML (root logger at INFO, its default) and then great_expectations.

    A step pod does the same when it loads a step.
    """
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.full_run", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env=os.environ | {"ZENML_LOGGING_VERBOSITY": "INFO"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "Skipping registering function" not in output
    assert "usage:" in result.stdout
