"""The latest run of the active ZenML store as one JSON line: step seconds and the figures of its summaries.

``python -m benchmarks.run_figures`` is what ``benchmarks.realistic_run`` starts, with the run's own
``ZENML_CONFIG_PATH``, once ``full_run`` has ended: ZenML is imported here only, in that child, so the benchmark's
own stdout carries its ``--json`` alone (ZenML logs to stdout once imported).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from zenml.client import Client

from benchmarks.realistic_run import RunFigures, StepSeconds
from stage1_core.common.cli import EXIT_OK, configure_logging, run_printing_command
from stage1_core.modeling.explora import ExploraSummary
from stage1_core.modeling.training import TrainSummary


def read_run_figures() -> RunFigures:
    """The latest run of the active ZenML store: step seconds, the summaries' timings, the export's figures."""
    run = Client().list_pipeline_runs(sort_by="desc:created", size=1).items[0]
    steps = sorted(run.steps.values(), key=lambda step: step.start_time)
    explora = (
        run.steps["adapt_backbone"].outputs["explora_summary"][0].load() if "adapt_backbone" in run.steps else None
    )
    train: TrainSummary = run.steps["train_model"].outputs["train_summary"][0].load()
    evaluation, export = run.steps["evaluate_model"], run.steps["export_model"].run_metadata
    val_test_images = int(evaluation.run_metadata["n"])
    fixed_speed = export.get("images_per_s_fixed")
    return RunFigures(
        run_name=run.name,
        status=run.status.value,
        pipeline_seconds=(run.end_time - run.start_time).total_seconds(),
        steps=[StepSeconds(name=step.name, started=_unix(step.start_time), seconds=_seconds(step)) for step in steps],
        **_explora_figures(explora),
        train_steps=train.train_steps,
        seconds_per_train_step=train.seconds_per_train_step,
        val_test_images=val_test_images,
        evaluation_seconds_per_image=_seconds(evaluation) / val_test_images,
        onnx_max_abs_diff=float(export["onnx_max_abs_diff"]),
        onnx_parity_images=int(export["onnx_parity_images"]),
        onnx_seconds_per_image=1.0 / float(fixed_speed) if fixed_speed else None,
        promotion=str(run.steps["promote_model"].outputs["promotion_decision"][0].load().alias or "no alias"),
    )


def _seconds(step) -> float:  # noqa: ANN001 - ZenML's StepRunResponse
    return (step.end_time - step.start_time).total_seconds()


def _unix(moment: datetime) -> float:
    """ZenML's times are UTC, without a time zone."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _explora_figures(summary: ExploraSummary | None) -> dict[str, int | float]:
    if summary is None:
        return {}
    return {"explora_steps": summary.steps, "explora_seconds_per_step": summary.seconds / summary.steps}


def main() -> int:
    """Command line: the figures of the latest run, one JSON object on stdout."""
    configure_logging(logging.WARNING)
    return run_printing_command("benchmarks.run_figures", _print_figures, json_output=True)


def _print_figures(out: TextIO) -> int:
    print(read_run_figures().model_dump_json(), file=out)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
