"""One definition of the run config: every section reaches the steps that read it, through one pipeline parameter;
every config model refuses unknown keys, and a typo names its key path and the nearest valid key. The shipped run
configs validate, and the GPU and cluster runs share one recipe, not the demo's."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

import stacks
import stage1_core
from pipelines.full_run import full_run
from pipelines.launch import check_zenml_options
from pipelines.retrain import retrain_pipeline
from stage1_core.evaluation.ablation import distillation_ablation
from stage1_core.run.config import RunConfig
from stage1_core.run.settings import ConfigError, load_run_config
from tests.commands import run_module

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
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


def _config_models() -> list[type[BaseModel]]:
    """Every pydantic model named ``*Config`` in the library and the stack definitions, plus their nested models."""
    for package in (stage1_core, stacks):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            importlib.import_module(module.name)
    found: set[type[BaseModel]] = set()
    pending = [model for model in _subclasses(BaseModel) if model.__name__.endswith("Config")]
    pending = [model for model in pending if model.__module__.startswith(("stage1_core.", "stacks."))]
    while pending:
        model = pending.pop()
        if model in found:
            continue
        found.add(model)
        for field in model.model_fields.values():
            pending += [nested for nested in _nested_models(field.annotation) if nested.__module__.startswith("stage1")]
    return sorted(found, key=lambda model: f"{model.__module__}.{model.__name__}")


def _subclasses(model: type) -> set[type]:
    direct = set(model.__subclasses__())
    return direct.union(*(_subclasses(child) for child in direct))


def _nested_models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in typing.get_args(annotation) for model in _nested_models(argument)]


def test_every_config_model_forbids_unknown_keys() -> None:
    models = _config_models()
    assert len(models) >= 30, [model.__name__ for model in models]
    lenient = [
        f"{model.__module__}.{model.__name__}" for model in models if model.model_config.get("extra") != "forbid"
    ]
    assert not lenient, f"config models that drop unknown keys silently: {lenient}"


def test_a_config_typo_stops_full_run_with_the_key_path_and_the_nearest_key(tmp_path: Path) -> None:
    """The issue's case: ``train: {max_epoch: 40}`` was dropped silently and 8 epochs ran."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"parameters": {"train": {"max_epoch": 40}}}))
    result = run_module("pipelines.full_run", "--config", str(config))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == f"error: {config}: parameters.train.max_epoch: unknown key; did you mean 'max_epochs'?\n"


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        (
            {"export": {"adaptive": {"max_mcc_dropp": 0.1}}},
            "parameters.export.adaptive.max_mcc_dropp: unknown key; did you mean 'max_mcc_drop'?",
        ),
        ({"trian": {}}, "parameters.trian: unknown key; did you mean 'train'?"),
        ({"demo": {"zzz": 1}}, "parameters.demo.zzz: unknown key; valid keys here: "),
        (
            {"demo": {"n_image": 4}, "split": {"seeds": 1}},
            "parameters.demo.n_image: unknown key; did you mean 'n_images'? | "
            "parameters.split.seeds: unknown key; did you mean 'seed'?",
        ),
    ],
)
def test_every_typo_is_named_with_its_full_key_path(tmp_path: Path, parameters: dict, expected: str) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"parameters": parameters}))
    with pytest.raises(ConfigError, match=re.escape(f"{config}: {expected}")):
        load_run_config(config)


def test_a_typo_in_zenml_options_or_a_broken_yaml_is_one_line(tmp_path: Path) -> None:
    cases = {
        "enable_cahce: false\n": "enable_cahce: unknown top-level key; did you mean 'enable_cache'?",
        "parameters:\n  train: [1\n": "not valid YAML at line 3",
        "- a list\n": "the top level must be a mapping of keys, not a list",
        "parameters: 3\n": "parameters must be a mapping of keys, not a int",
    }
    for text, expected in cases.items():
        config = tmp_path / "run.yaml"
        config.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(expected)):
            check_zenml_options(load_run_config(config))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_run_config_validates(path: Path) -> None:
    assert load_run_config(path).config is not None


def test_gpu_and_cluster_runs_share_the_published_recipe() -> None:
    gpu, cluster, demo = (
        load_run_config(CONFIGS / name).config for name in ("gpu.yaml", "cluster.yaml", "default.yaml")
    )
    assert gpu.explora == cluster.explora and gpu.train == cluster.train, "configs/gpu.yaml and cluster.yaml drifted"
    assert gpu.classifier == cluster.classifier
    assert (gpu.explora.lora_rank, gpu.explora.head_out_dim, gpu.explora.n_local_crops) == (64, 65536, 8)
    assert gpu.explora.max_steps >= 100 * demo.explora.max_steps, "no demo budget in a real run"
    assert gpu.classifier.multiview.view_size == 224 and gpu.classifier.multiview.canvas_size == 604


def test_shipped_configs_train_without_distillation_and_only_the_full_study_trains_it_as_an_ablation() -> None:
    """Distillation cost MCC and skip rate on the demo data: no shipped config turns it on for the model it ships."""
    studied = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        config = load_run_config(path).config
        assert config.train.distillation.weight == 0.0, path.name
        ablated = distillation_ablation(config.train, config.classifier.multiview, config.ablation.distillation)
        studied[path.name] = ablated is not None and ablated.distillation.weight > 0
    assert {name for name, ablated in studied.items() if ablated} == {"default.yaml"}


def test_the_realistic_run_is_real_scale_with_gpu_recipe_and_budgets_cut_only() -> None:
    """``benchmarks.realistic_run``'s config: the real-size path end to end on a CPU, not a smaller model or image."""
    realistic, gpu = (load_run_config(CONFIGS / name).config for name in ("realistic.yaml", "gpu.yaml"))
    assert realistic.backbone == "dinov2-vits14-random", "ViT-S/14 at the released size, random init (offline)"
    assert realistic.classifier == gpu.classifier, "224 px views on the 604 px canvas, as the GPU run"
    demo = realistic.demo
    assert demo is not None and realistic.demo_sources is None and 48 <= demo.n_images <= 96
    assert (demo.image_width, demo.image_height) == (1920, 1080), "photos at camera resolution"
    assert demo.progressive_share > 0 and demo.exif_orientation_share > 0, "as cameras write them"
    assert realistic.explora_enabled and realistic.explora.max_steps >= 2 and realistic.train.max_epochs == 1
    budget = {"explora": {"max_steps", "batch_size", "lr", "log_every_steps"}, "train": {"max_epochs", "batch_size"}}
    for section, cut in budget.items():
        ours, theirs = (getattr(config, section).model_dump(exclude=cut) for config in (realistic, gpu))
        assert ours == theirs, f"{section}: only the budget ({sorted(cut)}) may differ from gpu.yaml's recipe"
    assert realistic.evaluation.slices.truth_path == f"{realistic.data.path}/demo_truth.parquet"
