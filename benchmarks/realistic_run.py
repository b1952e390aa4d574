"""Benchmark of the whole ``full_run`` at real scale here: wall time, peak memory, seconds per stage and per step.

``python -m benchmarks.realistic_run [--json] [--config pipelines/configs/realistic.yaml] [--work DIR]`` runs
``python -m pipelines.full_run --config CONFIG --no-cache`` in a child process, as a user runs it, with a ZenML
store, artifact store and MLflow store of its own (``ZENML_CONFIG_PATH`` = ``DIR/zenml``, emptied first; the
child's log is ``DIR/full_run.log``), and samples the child's resident high-water mark (/proc ``VmHWM``: the
kernel's peak of that process, which, unlike ``ru_maxrss``, does not carry over across ``exec``). Then it reads
the run back from that store: each step's seconds (ZenML's start and end times), seconds per ExPLoRA step and per
training step (``ExploraSummary``, ``TrainSummary``), seconds per val_test image of the evaluation step (its
multi-view pass, the validator views, slices and bootstrap together) and ONNX Runtime's seconds per image of the
exported bundle (one image per call, fixed multi-view, as the export step measures it). The demo photos are drawn
once where the config says (``data/realistic``) and reused by later runs. The load average is printed with the
figures: on a shared machine the seconds say as much about the other processes as about the run.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from benchmarks.command import run_benchmark
from benchmarks.memory import process_rss_mb
from stage1_core.common.cli import configure_logging
from stage1_core.run.config import RunConfig
from stage1_core.run.settings import load_run_config

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "pipelines" / "configs" / "realistic.yaml"
# VmHWM only grows: a sample every half second misses at most the child's last half second of the overall peak;
# the per-step peaks come from VmRSS samples and may miss a spike shorter than that.
POLL_SECONDS = 0.5


class StepSeconds(BaseModel):
    """One step of the run, in the order the steps started."""

    name: str
    started: float  # Unix time
    seconds: float
    peak_rss_mb: float | None = None  # the run's resident memory at its highest while this step ran (sampled)


class RunFigures(BaseModel):
    """What the run's own ZenML store says about it (``benchmarks.run_figures``, in a child: this process never
    imports ZenML, which logs to stdout once imported, so that ``--json`` prints the JSON alone)."""

    run_name: str
    status: str
    pipeline_seconds: float
    steps: list[StepSeconds]
    explora_steps: int = 0
    explora_seconds_per_step: float | None = None
    train_steps: int
    seconds_per_train_step: float | None
    val_test_images: int
    evaluation_seconds_per_image: float
    onnx_max_abs_diff: float
    onnx_parity_images: int
    onnx_seconds_per_image: float | None  # ONNX Runtime, fixed multi-view, one image per call (None: not measured)
    promotion: str


class RealisticRunResult(RunFigures):
    """The run's figures and what the parent measured around it."""

    config: str
    wall_seconds: float  # the child process, start to exit: interpreter, demo drawing (first run only), run, summary
    peak_rss_mb: float
    cpu_cores: int
    load_average_start: float  # 1-minute load average: on a shared machine, how busy it was
    load_average_end: float
    explora_batch_size: int
    train_batch_size: int
    views_per_image: int


def _step_peaks(steps: list[StepSeconds], samples: list[tuple[float, float]]) -> list[StepSeconds]:
    """Each step with the highest resident memory sampled while it ran."""
    return [
        step.model_copy(
            update={
                "peak_rss_mb": max(
                    (rss for moment, rss in samples if step.started <= moment <= step.started + step.seconds),
                    default=None,
                )
            }
        )
        for step in steps
    ]


def measure(config_path: Path, work: Path) -> RealisticRunResult:
    """Run ``full_run`` with ``config_path`` in a child process on a fresh store under ``work``; read it back."""
    config: RunConfig = load_run_config(config_path).config  # a bad config stops here (exit 2), before any work
    store = work / "zenml"
    shutil.rmtree(store, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    env = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
    env |= {"ZENML_CONFIG_PATH": str(store.resolve()), "ZENML_ANALYTICS_OPT_IN": "false"}
    log = work / "full_run.log"
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    with log.open("w") as output:
        child = subprocess.Popen(
            [sys.executable, "-m", "pipelines.full_run", "--config", str(config_path.resolve()), "--no-cache"],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        peak, samples = 0.0, []
        while child.poll() is None:
            peak = max(peak, process_rss_mb("VmHWM", child.pid) or 0.0)
            samples.append((time.time(), process_rss_mb("VmRSS", child.pid) or 0.0))
            time.sleep(POLL_SECONDS)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:]
        raise RuntimeError(f"full_run exited {child.returncode}: {' '.join(tail)} (whole log: {log})")
    reader = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_figures"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    figures = RunFigures.model_validate_json(reader.stdout.strip().splitlines()[-1])
    return RealisticRunResult(
        **figures.model_dump(exclude={"steps"}),
        steps=_step_peaks(figures.steps, samples),
        config=str(config_path),
        wall_seconds=wall,
        peak_rss_mb=peak,
        cpu_cores=os.cpu_count() or 1,
        load_average_start=load_start,
        load_average_end=os.getloadavg()[0],
        explora_batch_size=config.explora.batch_size if config.explora_enabled else 0,
        train_batch_size=config.train.batch_size,
        views_per_image=config.classifier.multiview.views_per_image,
    )


def print_table(result: RealisticRunResult) -> None:
    """The figures for a person: totals, then each step's seconds, then the per-step and per-image costs."""
    print(
        f"{result.config}: run {result.run_name} {result.status}; {result.wall_seconds:.0f} s wall "
        f"({result.pipeline_seconds:.0f} s in the pipeline), peak resident memory {result.peak_rss_mb:,.0f} MB; "
        f"{result.cpu_cores} cores, load average {result.load_average_start:.1f} at start, "
        f"{result.load_average_end:.1f} at end"
    )
    print(f"\n{'step':<28} {'s':>8} {'share':>6} {'peak RSS MB':>12}")
    for step in result.steps:
        peak = f"{step.peak_rss_mb:>12,.0f}" if step.peak_rss_mb is not None else f"{'-':>12}"
        print(f"{step.name:<28} {step.seconds:>8.1f} {step.seconds / result.pipeline_seconds:>6.0%} {peak}")
    print()
    if result.explora_seconds_per_step is not None:
        print(
            f"ExPLoRA:    {result.explora_seconds_per_step:6.1f} s/step  ({result.explora_steps} steps of "
            f"{result.explora_batch_size} images)"
        )
    if result.seconds_per_train_step is not None:
        print(
            f"training:   {result.seconds_per_train_step:6.1f} s/step  ({result.train_steps} steps of "
            f"{result.train_batch_size} images x {result.views_per_image} views; forward, backward, update)"
        )
    print(
        f"evaluation: {result.evaluation_seconds_per_image:6.1f} s/image ({result.val_test_images} val_test images; "
        "the step's multi-view pass, validator views, slices and bootstrap together)"
    )
    onnx_speed = f"{result.onnx_seconds_per_image:6.2f} s/image" if result.onnx_seconds_per_image else "not measured"
    print(
        f"export:     {onnx_speed} (ONNX Runtime, fixed multi-view, one image per call); parity max |diff| "
        f"{result.onnx_max_abs_diff:.1e} on {result.onnx_parity_images} images"
    )
    print(f"promotion:  {result.promotion}")


def main(argv: list[str] | None = None) -> int:
    """Command line: one run, then a table (or one JSON object with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="run config (default: realistic.yaml)")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("data/benchmark/realistic_run"),
        help="where the run's own ZenML/MLflow store (emptied first) and its log go",
    )
    args = parser.parse_args(argv)
    configure_logging(logging.WARNING)
    return run_benchmark(
        "benchmarks.realistic_run", lambda: measure(args.config, args.work.resolve()), print_table, args.json
    )


if __name__ == "__main__":
    sys.exit(main())
