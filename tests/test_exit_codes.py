"""One exit-code contract for every command-line entry point, checked through the real commands.

0 done; 1 the job ran and found a problem; 2 bad usage, path, layout, config or model (one ``error:`` line, no
traceback); 3 an internal error (one line naming the log file that holds the traceback); 128 + N stopped by
signal N. Each command is started as a user starts it: ``python -m <module> ...`` in the repository.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stage1_core.common.cli import (
    EXIT_FINDING,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_SIGNAL_BASE,
    EXIT_USAGE,
    Finding,
    UsageError,
    run_command,
)
from tests.commands import run_module


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image, a one-class folder dataset, and a broken stack config."""
    root = tmp_path_factory.mktemp("exit_codes")
    rng = np.random.default_rng(0)
    (root / "one_class" / "roadwork").mkdir(parents=True)
    (root / "one_class" / "no_roadwork").mkdir()
    for index in range(12):
        image = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
        image.save(root / "one_class" / "roadwork" / f"{index}.jpg")
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "street.jpg")
    return root


def _usage_cases(root: Path) -> dict[str, tuple[list[str], str]]:
    """Per entry point, a mistake a user makes and the words the one error line must hold."""
    nowhere = str(root / "nowhere")
    return {
        "full_run: a config that does not exist": (
            ["pipelines.full_run", "--config", f"{nowhere}.yaml"],
            "does not exist",
        ),
        "data_check: a data path that does not exist": (
            ["pipelines.data_check", "--source", "natix", "--path", nowhere],
            "does not exist; accepted layouts",
        ),
        "data_check: an --out where nothing can be written": (
            ["pipelines.data_check", "--source", "folder", "--path", str(root / "one_class"), "--out", "/proc/m.pq"],
            "--out /proc: cannot write there",
        ),
        "predict: a model bundle folder that does not exist": (
            ["pipelines.predict", str(root / "street.jpg"), "--model", nowhere],
            "no such model bundle folder",
        ),
        "predict: a smallest side of 0": (
            ["pipelines.predict", str(root / "street.jpg"), "--model", nowhere, "--min-side", "0"],
            "invalid options: min_side",
        ),
        "drift_monitor: a batch that does not exist": (
            ["pipelines.drift_monitor", "--batch", nowhere, "--out", str(root / "monitor")],
            nowhere,
        ),
        "retrain: a batch that does not exist": (["pipelines.retrain", "--batch", nowhere], nowhere),
        "stacks.kubernetes: a stack config that does not exist": (
            ["stacks.kubernetes", "render", "--config", f"{nowhere}.yaml"],
            "does not exist",
        ),
        "benchmarks.demo_heldout: a folder that is no bundle": (
            ["benchmarks.demo_heldout", str(root)],
            "not an exported model bundle",
        ),
        "benchmarks.metrics: 0 predictions": (["benchmarks.metrics", "--n", "0"], "argument --n: 0 is below 1"),
        "benchmarks.data: a size of 0": (["benchmarks.data", "--sizes", "0"], "argument --sizes: 0 is below 1"),
        "benchmarks.inference: 0 images": (["benchmarks.inference", "--images", "0"], "0 is below 1"),
        "benchmarks.multiview: a batch of 0": (["benchmarks.multiview", "--batch", "0"], "0 is below 1"),
        "benchmarks.realistic_run: a config that does not exist": (
            ["benchmarks.realistic_run", "--config", f"{nowhere}.yaml"],
            "does not exist",
        ),
        "demo.writers: 0 images": (
            ["stage1_core.demo.writers", str(root / "demo"), "--n-images", "0"],
            "invalid options: n_images",
        ),
        "demo.pretrain: 0 steps": (
            ["stage1_core.demo.pretrain", str(root / "weights"), "--steps", "0"],
            "invalid options: steps",
        ),
    }


CASES = list(_usage_cases(Path("/")))


@pytest.mark.parametrize("case", CASES)
def test_every_entry_point_answers_a_mistake_with_exit_2_and_one_line(case: str, inputs: Path) -> None:
    command, words = _usage_cases(inputs)[case]
    result = run_module(*command)
    assert result.returncode == EXIT_USAGE, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    errors = [
        line for line in result.stderr.splitlines() if line.startswith(("error:", "usage:")) or ": error:" in line
    ]
    assert errors and words in errors[-1], result.stderr[-3000:]


def test_a_finding_is_exit_1_and_a_clean_run_exit_0(inputs: Path) -> None:
    one_class = run_module("pipelines.data_check", "--source", "folder", "--path", str(inputs / "one_class"))
    assert one_class.returncode == EXIT_FINDING, one_class.stderr[-3000:]
    assert "CRITICAL: class balance: the valid rows hold 12 labelled 1 and 0 labelled 0" in one_class.stdout
    registered = run_module("stacks.local")
    assert registered.returncode == EXIT_OK and "active stack: roadwork-local" in registered.stdout


def test_json_output_is_json_alone_on_stdout() -> None:
    result = run_module("benchmarks.metrics", "--json", "--n", "300", "--resamples", "20")
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    assert json.loads(result.stdout)["n"] == 300


def _internal_error() -> int:
    raise KeyError("a bug")


def _stop_myself() -> int:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # never reached: the signal raises StopRequested here
    return EXIT_OK


def test_run_command_maps_every_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    """The runner every command uses: results, findings, mistakes, bugs and signals."""

    def finding() -> int:
        raise Finding("2 rows conflict")

    def mistake() -> int:
        raise UsageError("--path nowhere: does not exist")

    assert run_command("test", lambda: EXIT_OK) == EXIT_OK
    assert run_command("test", finding) == EXIT_FINDING
    assert capsys.readouterr().err == "found: 2 rows conflict\n"
    assert run_command("test", mistake) == EXIT_USAGE
    assert capsys.readouterr().err == "error: --path nowhere: does not exist\n"
    assert run_command("test", _internal_error) == EXIT_INTERNAL
    line = capsys.readouterr().err
    assert line.startswith("internal error: KeyError: 'a bug' (traceback in ") and line.count("\n") == 1
    log = Path(line.split("traceback in ")[1].split(";")[0])
    assert "Traceback" in log.read_text() and "_internal_error" in log.read_text()
    handler = signal.getsignal(signal.SIGTERM)
    assert run_command("test", _stop_myself) == EXIT_SIGNAL_BASE + signal.SIGTERM
    assert capsys.readouterr().err.startswith("stopped: SIGTERM received")
    assert signal.getsignal(signal.SIGTERM) is handler, "the command's signal handlers are restored"
