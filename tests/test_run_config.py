"""One definition of the run config: every section reaches the steps that read it, through one pipeline parameter."""

from __future__ import annotations

import inspect

from pipelines.full_run import full_run
from pipelines.retrain import retrain_pipeline
from stage1_core.run.config import RunConfig

# Read before the run starts (the demo data is drawn by pipelines.launch) or by the wiring itself (which steps exist).
NOT_STEP_INPUTS = {"demo", "demo_sources", "ablation", "explora_enabled"}


def test_both_training_pipelines_take_the_one_run_config() -> None:
    for pipeline in (full_run, retrain_pipeline):
        parameters = inspect.signature(pipeline.entrypoint).parameters
        assert parameters["config"].annotation in (RunConfig, "RunConfig"), pipeline.name
        assert not any(name in RunConfig.model_fields for name in parameters), f"{pipeline.name} spells a section out"


def test_every_other_run_config_field_reaches_a_step_of_full_run() -> None:
    config = RunConfig()
    full_run.prepare(config=config, data_fingerprint="data", backbone_fingerprint="weights")
    step_inputs = [value for invocation in full_run.invocations.values() for value in invocation.parameters.values()]
    fields = RunConfig.model_fields.keys() - NOT_STEP_INPUTS
    unread = [name for name in fields if getattr(config, name) not in step_inputs]
    assert not unread, f"run config fields no step receives: {unread}"
