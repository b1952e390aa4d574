"""The cluster stacks offline: registration, the pipeline image, the scheduled run's CronJob and step Jobs, and their
Kubernetes schemas.

The manifests are built by ZenML's own orchestrator code and manifest builders from the scheduled pipeline compiled
by ZenML's Compiler on the stack of the YAML (the dynamic retrain_pipeline of stacks/kubernetes.yaml, and the static
full_run), then validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict). The image builds are
ZenML's own image builder code with the cluster's image builder (Kaniko) replaced by a recorder of what it would be
sent. No cluster, registry or Docker daemon is contacted.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pydantic import ValidationError
from zenml.client import Client
from zenml.config.resource_settings import ResourceSettings
from zenml.enums import StackComponentType, StepRuntime
from zenml.execution.pipeline.dynamic.compilation import get_config_template
from zenml.integrations.kubeflow.flavors.kubeflow_orchestrator_flavor import KubeflowOrchestratorSettings

from pipelines import full_run, train_and_gate
from pipelines.retrain import retrain_pipeline
from stacks.kubernetes import main
from stacks.manifests import ManifestError, compiled_schedule, render_manifests, validate_manifest
from stacks.remote import (
    SUPPORTED_KUBERNETES_VERSIONS,
    RemoteStackConfig,
    ScheduleConfig,
    StackConfigError,
    load_stack_config,
    prepared_scheduled_pipeline,
    register_stack,
    scheduled_run_kwargs,
    step_gpus,
)
from stage1_core.data.sources.config import IngestConfig
from stage1_core.run.settings import load_run_config

REPO = Path(__file__).resolve().parents[1]
ABLATIONS = ("no_explora_linear_head", "explora_doran_adapter")
SECRETS = {
    "roadwork-s3": {"aws_access_key_id": "test", "aws_secret_access_key": "test"},
    "roadwork-registry": {"username": "test", "password": "test"},
    "roadwork-mlflow": {"username": "test", "password": "test"},
}


def _pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest["spec"]["jobTemplate"]["spec"] if manifest["kind"] == "CronJob" else manifest["spec"]
    return spec["template"]["spec"]


def _with_pipeline(config: RemoteStackConfig, pipeline: str, run_config: Path | None = None) -> RemoteStackConfig:
    assert config.schedule is not None
    update: dict[str, Any] = {"pipeline": pipeline} | ({"run_config": run_config} if run_config else {})
    return config.model_copy(update={"schedule": config.schedule.model_copy(update=update)})


def _render(config: RemoteStackConfig, out: Path) -> dict[str, dict[str, Any]]:
    """The rendered (and validated) manifests read back from their YAML files: "cron" and one per step name."""
    paths = render_manifests(config, Client(), out)
    documents = [yaml.safe_load(path.read_text()) for path in paths if path.parent == out]
    return {
        ("cron" if document["kind"] == "CronJob" else document["metadata"]["labels"]["step_name"]): document
        for document in documents
    }


def _images(out: Path) -> list[dict[str, str]]:
    """The rendered image builds read back from their folders, in build order: file name -> content."""
    return [{path.name: path.read_text() for path in folder.iterdir()} for folder in sorted((out / "images").iterdir())]


def _assert_gpu_pod(pod: dict[str, Any], gpus: str = "1") -> None:
    container = pod["containers"][0]
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == gpus and resources["requests"] == {"cpu": "4", "memory": "24Gi"}
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "12Gi"}}]
    assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == "zenml-runner" and pod["imagePullSecrets"] == [{"name": "roadwork-regcred"}]


def _assert_cpu_pod(pod: dict[str, Any], cpu: str, memory: str) -> None:
    resources = pod["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in resources.get("limits", {}) and "tolerations" not in pod and "volumes" not in pod
    assert resources["requests"] == {"cpu": cpu, "memory": memory}
    assert pod["serviceAccountName"] == "zenml-runner" and pod["imagePullSecrets"] == [{"name": "roadwork-regcred"}]


def _cluster_run_config(path: Path, devices: int = 1) -> Path:
    """tiny.yaml with the data and image store in a bucket, as a cluster run needs, written to ``path``; with
    ``devices`` processes (DDP) for the train step and ExPLoRA."""
    document = yaml.safe_load((REPO / "pipelines/configs/tiny.yaml").read_text())
    parameters = document["parameters"]
    parameters |= {
        "data": {"path": "s3://roadwork-data/natix", "image_store": "s3://roadwork-data/images"},
        "demo": None,
        "ablation": {"without_explora": True, "doran_head": True},
    }
    for section in ("train", "explora"):
        parameters[section] |= {"devices": devices, "strategy": "ddp" if devices > 1 else "auto"}
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def cluster_run_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cluster run config of the scheduled retrain_pipeline: one process per training."""
    return _cluster_run_config(tmp_path_factory.mktemp("cluster") / "cluster.yaml")


@pytest.fixture(scope="module")
def k8s_config(cluster_run_config: Path) -> RemoteStackConfig:
    """The shipped stacks/kubernetes.yaml with the cluster run config, registered in the test store.

    It schedules retrain_pipeline on its cron.
    """
    client = Client()
    for name, values in SECRETS.items():
        try:
            client.get_secret(name, allow_partial_name_match=False)
        except KeyError:
            client.create_secret(name, values=values)
    config = load_stack_config(REPO / "stacks/kubernetes.yaml")
    assert config.schedule is not None
    config.schedule.run_config = cluster_run_config
    register_stack(config, client)
    return config


@pytest.fixture(scope="module")
def rendered(k8s_config: RemoteStackConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the scheduled retrain_pipeline's manifests and image builds are rendered to."""
    return tmp_path_factory.mktemp("manifests")


@pytest.fixture(scope="module")
def manifests(k8s_config: RemoteStackConfig, rendered: Path) -> dict[str, dict[str, Any]]:
    """The scheduled retrain_pipeline's manifests."""
    return _render(k8s_config, rendered)


def test_registration_is_idempotent_and_follows_the_yaml(k8s_config: RemoteStackConfig) -> None:
    client = Client()
    stack = client.get_stack(k8s_config.name)
    flavors = {component_type: components[0].flavor_name for component_type, components in stack.components.items()}
    assert flavors == {
        StackComponentType.ORCHESTRATOR: "kubernetes",
        StackComponentType.ARTIFACT_STORE: "s3",
        StackComponentType.CONTAINER_REGISTRY: "default",
        StackComponentType.IMAGE_BUILDER: "kaniko",
        StackComponentType.EXPERIMENT_TRACKER: "mlflow",
        StackComponentType.MODEL_REGISTRY: "mlflow",
    }
    artifact_store = stack.components[StackComponentType.ARTIFACT_STORE][0]
    assert (
        artifact_store.configuration["path"] == k8s_config.artifact_store.path
        and artifact_store.configuration["authentication_secret"] == "roadwork-s3"
    )
    ids_before = {components[0].id for components in stack.components.values()}

    changed = k8s_config.model_copy(
        update={"step_resources": k8s_config.step_resources.model_copy(update={"memory": "6Gi"})}
    )
    register_stack(changed, client)
    stack_after = client.get_stack(k8s_config.name)
    assert (
        stack_after.id == stack.id
        and {components[0].id for components in stack_after.components.values()} == ids_before
    )
    orchestrator = stack_after.components[StackComponentType.ORCHESTRATOR][0]
    assert orchestrator.configuration["pod_settings"]["resources"]["requests"]["memory"] == "6Gi"
    register_stack(k8s_config, client)


def test_kubeflow_variant_registers() -> None:
    config = load_stack_config(REPO / "stacks/kubeflow.yaml")
    register_stack(config, Client())
    orchestrator = Client().get_stack(config.name).components[StackComponentType.ORCHESTRATOR][0]
    assert orchestrator.flavor_name == "kubeflow" and orchestrator.configuration["user_namespace"] == "roadwork"


def test_missing_secret_stops_registration_before_anything_is_created(k8s_config: RemoteStackConfig) -> None:
    config = k8s_config.model_copy(
        update={
            "name": "roadwork-missing-secret",
            "mlflow": k8s_config.mlflow.model_copy(update={"credentials_secret": "no-such-secret"}),
        }
    )
    with pytest.raises(StackConfigError, match="no-such-secret.*zenml secret create"):
        register_stack(config, Client())
    with pytest.raises(KeyError):
        Client().get_stack_component(
            StackComponentType.ORCHESTRATOR,
            config.component_name(StackComponentType.ORCHESTRATOR),
            allow_name_prefix_match=False,
        )


def test_cron_job_carries_the_schedule(manifests: dict[str, dict[str, Any]], k8s_config: RemoteStackConfig) -> None:
    cron = manifests["cron"]
    assert (cron["apiVersion"], cron["kind"]) == ("batch/v1", "CronJob")
    assert cron["spec"]["schedule"] == k8s_config.schedule.cron == "0 3 * * 1"  # type: ignore[union-attr]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["startingDeadlineSeconds"] == 3600
    assert cron["spec"]["jobTemplate"]["metadata"]["labels"]["pipeline"] == "retrain_pipeline"
    container = _pod_spec(cron)["containers"][0]
    assert (
        "zenml.pipelines.dynamic.entrypoint_configuration.DynamicPipelineEntrypointConfiguration" in container["args"]
    )
    # the orchestrator pod of the dynamic pipeline runs its non-GPU steps inline: it gets step_resources
    _assert_cpu_pod(_pod_spec(cron), "2", "8Gi")
    validate_manifest(cron, k8s_config.cluster.kubernetes_version)


def test_gpu_steps_of_the_retrain_pipeline_get_gpu_pods(
    manifests: dict[str, dict[str, Any]], k8s_config: RemoteStackConfig
) -> None:
    assert set(manifests) == {"cron", *k8s_config.gpu.steps} == {"cron", "adapt_backbone", "train_model"}
    for name in k8s_config.gpu.steps:
        job = manifests[name]
        assert (
            job["metadata"]["labels"]["pipeline"] == "retrain_pipeline"
            and job["metadata"]["annotations"]["zenml.io/step-name"] == name
        )
        assert "--step_run_id" in _pod_spec(job)["containers"][0]["args"]
        _assert_gpu_pod(_pod_spec(job))


def test_train_and_gate_steps_pick_up_the_gpu_templates_at_run_time(k8s_config: RemoteStackConfig) -> None:
    """ZenML matches a step invoked in the body to a template by the step object: the ones train_and_gate calls."""
    schedule = compiled_schedule(k8s_config, Client())
    snapshot = schedule.snapshot
    template = get_config_template(snapshot, train_and_gate.train_model, retrain_pipeline)  # type: ignore[arg-type]
    assert template is not None and template.config.runtime == StepRuntime.ISOLATED
    pod_settings = schedule.orchestrator.get_settings(template).pod_settings  # type: ignore[attr-defined]
    assert pod_settings.resources["limits"]["nvidia.com/gpu"] == "1" and pod_settings.node_selectors == {
        "nvidia.com/gpu.present": "true"
    }
    assert get_config_template(snapshot, train_and_gate.evaluate_model, retrain_pipeline) is None  # type: ignore[arg-type]


def test_static_pipeline_gets_a_pod_per_step_and_every_training_its_gpus(
    k8s_config: RemoteStackConfig, tmp_path: Path
) -> None:
    """With ``train.devices: 2`` and ``explora.devices: 2`` (DDP) every training pod asks for 2 GPUs and gets a
    /dev/shm for its processes; the ablations' trainings are invocations of train_model with ids of their own:
    they get them too. Every other pod asks for none."""
    run_config = _cluster_run_config(tmp_path / "ddp.yaml", devices=2)
    manifests = _render(_with_pipeline(k8s_config, "pipelines.full_run.full_run", run_config), tmp_path / "out")
    trainings = {"adapt_backbone", "train_model"} | {f"train_model_{name}" for name in ABLATIONS}
    assert trainings | {"cron", "ingest_data", "evaluate_model", "promote_model"} <= set(manifests)
    _assert_cpu_pod(_pod_spec(manifests.pop("cron")), "500m", "1Gi")
    for name, manifest in manifests.items():
        if name in trainings:
            _assert_gpu_pod(_pod_spec(manifest), gpus="2")
        else:
            _assert_cpu_pod(_pod_spec(manifest), "2", "8Gi")


def test_a_training_asks_for_its_own_sections_devices(k8s_config: RemoteStackConfig) -> None:
    """train_model gets train.devices, adapt_backbone explora.devices, any other GPU step gpu.count; a training
    set to the CPU in a GPU pod is refused."""
    tiny = load_run_config(REPO / "pipelines/configs/tiny.yaml").config
    run_config = tiny.model_copy(
        update={
            "train": tiny.train.model_copy(update={"devices": 2}),
            "explora": tiny.explora.model_copy(update={"devices": 3}),
        }
    )
    gpus = {name: step_gpus(k8s_config, run_config, name) for name in ("train_model", "adapt_backbone", "other")}
    assert gpus == {"train_model": 2, "adapt_backbone": 3, "other": k8s_config.gpu.count}
    on_cpu = run_config.model_copy(update={"train": run_config.train.model_copy(update={"accelerator": "cpu"})})
    with pytest.raises(StackConfigError, match="train.accelerator is cpu.*train_model is in gpu.steps"):
        step_gpus(k8s_config, on_cpu, "train_model")
    with pytest.raises(ValidationError, match="gpu.shm_size 24Gi must be below gpu.memory 24Gi"):
        k8s_config.gpu.model_validate(k8s_config.gpu.model_dump() | {"shm_size": "24Gi"})


@pytest.mark.parametrize(
    ("break_it", "path"),
    [
        (lambda m: m["spec"].update(schedule=5), "spec.schedule"),
        (lambda m: _pod_spec(m).update(nodeSelecter={"gpu": "true"}), "nodeSelecter"),
        (lambda m: _pod_spec(m)["containers"][0].pop("name"), "containers.0"),
        (lambda m: _pod_spec(m).update(tolerations={"key": "nvidia.com/gpu"}), "tolerations"),
    ],
    ids=["schedule-not-a-string", "misspelt-field", "container-without-name", "tolerations-not-a-list"],
)
def test_broken_manifests_are_rejected(
    manifests: dict[str, dict[str, Any]], k8s_config: RemoteStackConfig, break_it: Any, path: str
) -> None:
    broken = copy.deepcopy(manifests["cron"])
    break_it(broken)
    with pytest.raises(ManifestError, match=path):
        validate_manifest(broken, k8s_config.cluster.kubernetes_version)


@pytest.mark.parametrize("cron", ["0 3 * *", "61 3 * * *", "0 0 3 * * 1", "every monday"])
def test_invalid_cron_is_rejected(cron: str) -> None:
    with pytest.raises(ValueError, match="cron"):
        ScheduleConfig(cron=cron)


def test_cron_dialects() -> None:
    assert ScheduleConfig(cron="*/15  * * * *").cron_for("kubernetes") == "*/15 * * * *"
    assert ScheduleConfig(cron="0 3 * * 1").cron_for("kubeflow") == "0 0 3 * * 1"
    assert ScheduleConfig(cron="@weekly").cron_for("kubeflow") == "@weekly"


def test_kubeflow_gpu_request_survives_zenml_settings_validation() -> None:
    config = load_stack_config(REPO / "stacks/kubeflow.yaml")
    assert config.schedule is not None
    config.schedule.run_config = REPO / config.schedule.run_config
    _, run_configuration, _ = prepared_scheduled_pipeline(config)
    assert run_configuration.schedule is not None and run_configuration.schedule.cron_expression == "0 0 3 * * 1"
    settings = run_configuration.steps["train_model"].settings  # type: ignore[index]
    resources = ResourceSettings.model_validate(dict(settings["resources"]))
    assert resources.gpu_count == 1 and resources.cpu_count == 4.0 and resources.get_memory("GiB") == 24
    kubeflow = KubeflowOrchestratorSettings.model_validate(dict(settings["orchestrator"]))
    assert kubeflow.pod_settings is not None and kubeflow.pod_settings.node_selectors == {
        "accelerator": "nvidia.com/gpu"
    }
    # Why not pod_settings: ZenML 0.98 replaces a given pod_settings with one built from the legacy fields.
    dropped = KubeflowOrchestratorSettings.model_validate(
        {"pod_settings": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}
    )
    assert dropped.pod_settings is not None and dropped.pod_settings.resources == {}


def test_kubeflow_refuses_the_dynamic_retrain_pipeline(k8s_config: RemoteStackConfig) -> None:
    kubeflow = load_stack_config(REPO / "stacks/kubeflow.yaml").model_copy(update={"schedule": k8s_config.schedule})
    with pytest.raises(StackConfigError, match="retrain_pipeline is a dynamic pipeline.*Kubeflow"):
        prepared_scheduled_pipeline(kubeflow)


@pytest.mark.parametrize(
    ("pipeline", "step", "why"),
    [
        ("pipelines.retrain.retrain_pipeline", "train_modle", "depends_on"),
        (
            "pipelines.retrain.retrain_pipeline",
            "evaluate_model",
            "depends_on",
        ),  # a step of its body, but no template: no settings reach it
        ("pipelines.full_run.full_run", "train_modle", "steps of full_run"),
    ],
)
def test_gpu_step_that_cannot_get_the_gpu_is_an_error(
    k8s_config: RemoteStackConfig, pipeline: str, step: str, why: str
) -> None:
    config = _with_pipeline(k8s_config, pipeline).model_copy(
        update={"gpu": k8s_config.gpu.model_copy(update={"steps": [step]})}
    )
    with pytest.raises(StackConfigError, match=f"{step}.*{why}"):
        prepared_scheduled_pipeline(config)


def test_retrain_schedule_passes_the_landing_batch(k8s_config: RemoteStackConfig) -> None:
    assert k8s_config.schedule is not None and k8s_config.schedule.batch is not None
    _, _, kwargs = prepared_scheduled_pipeline(k8s_config)
    assert kwargs["batch"] == k8s_config.schedule.batch and kwargs["batch"].path == "s3://roadwork/landing/incoming"
    assert (kwargs["batch_name"], kwargs["force"]) == ("landing", False)
    assert kwargs["data_fingerprint"] == kwargs["backbone_fingerprint"] == "scheduled"


def test_local_data_paths_are_refused_for_the_cluster(k8s_config: RemoteStackConfig) -> None:
    assert k8s_config.schedule is not None
    tiny = load_run_config(REPO / "pipelines/configs/tiny.yaml").config
    with pytest.raises(StackConfigError, match="data.path='data/tiny'.*s3://"):
        scheduled_run_kwargs(full_run.full_run, tiny, k8s_config.schedule)
    cluster = load_run_config(k8s_config.schedule.run_config).config
    local_batch = k8s_config.schedule.model_copy(
        update={"batch": IngestConfig(path="incoming", image_store="s3://roadwork/image_store")}
    )
    with pytest.raises(StackConfigError, match=r"batch.path='incoming' \(schedule.batch\).*s3://"):
        scheduled_run_kwargs(retrain_pipeline, cluster, local_batch)
    with pytest.raises(StackConfigError, match="set schedule.batch"):
        scheduled_run_kwargs(retrain_pipeline, cluster, k8s_config.schedule.model_copy(update={"batch": None}))


def test_cli_refuses_a_local_store(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["register", "--config", str(REPO / "stacks/kubernetes.yaml")]) == 2
    assert "zenml login https://zenml.example.com" in capsys.readouterr().err


def test_pipeline_image_is_the_project_on_the_cuda_base(
    manifests: dict[str, dict[str, Any]], rendered: Path, k8s_config: RemoteStackConfig
) -> None:
    """What ZenML would send to Kaniko: the parent from stacks/Dockerfile.cuda, then the project's requirements and
    the project itself; every pod runs that image."""
    parent, pipeline_image = _images(rendered)
    parent_build, build = yaml.safe_load(parent["build.yaml"]), yaml.safe_load(pipeline_image["build.yaml"])
    assert parent["Dockerfile"] == (REPO / "stacks/Dockerfile.cuda").read_text()
    assert "FROM ${CUDA_IMAGE}" in parent["Dockerfile"]
    assert parent_build["build_args"] == {"CUDA_IMAGE": k8s_config.image.cuda_image, "PYTHON_VERSION": "3.11"}
    assert f"cuda:{torch.version.cuda}." in k8s_config.image.cuda_image, "the base image's CUDA is the torch wheel's"

    dockerfile = pipeline_image["Dockerfile"].splitlines()
    assert dockerfile[0] == f"FROM {parent_build['image']}"
    requirements = pipeline_image[".zenml_user_requirements"].splitlines()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert requirements == pyproject["dependencies"] + pyproject["optional-dependencies"]["k8s"]
    assert "torch==2.14.1" in requirements and "kubernetes" in pipeline_image[".zenml_stack_integration_requirements"]
    install = dockerfile.index("COPY . .")
    assert any(line.endswith("-r .zenml_user_requirements") for line in dockerfile[:install])
    assert any(line.startswith("RUN pip install --no-cache-dir --no-deps . && ") for line in dockerfile[install:])
    assert "ENV HF_HUB_OFFLINE='1'" in dockerfile

    context = set(pipeline_image["context_files.txt"].splitlines())
    assert {"pyproject.toml", "stage1_core/__init__.py", "stage1_core/demo/weights/dinov2-demo/model.safetensors"} <= (
        context
    )
    assert ".git" not in context and not any(
        path.startswith((".venv/", "data/", ".git/", "mlruns/")) for path in context
    )

    images = {_pod_spec(manifest)["containers"][0]["image"] for manifest in manifests.values()}
    assert images == {build["image"]} and build["image"].startswith(k8s_config.container_registry.uri)


def test_manifests_validate_on_every_supported_kubernetes_version(
    manifests: dict[str, dict[str, Any]], k8s_config: RemoteStackConfig
) -> None:
    assert SUPPORTED_KUBERNETES_VERSIONS == tuple(f"1.{minor}" for minor in range(29, 38))
    for version in SUPPORTED_KUBERNETES_VERSIONS:
        for manifest in manifests.values():
            validate_manifest(manifest, version)
    with pytest.raises(ManifestError, match="onPodConditions"):
        validate_manifest(manifests["train_model"], "1.28")
    with pytest.raises(ValidationError, match="1.28.*not supported.*1.29 to 1.37"):
        k8s_config.cluster.model_validate(k8s_config.cluster.model_dump() | {"kubernetes_version": "1.28"})


def test_render_needs_no_server_cluster_or_secrets(tmp_path: Path) -> None:
    """The CLI on the shipped YAML and run config, in a fresh ZenML config: a local store, no server, no secrets."""
    result = subprocess.run(
        [sys.executable, "-m", "stacks.kubernetes", "render", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env=os.environ | {"ZENML_CONFIG_PATH": str(tmp_path / "zenml")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = [Path(line) for line in result.stdout.split()]
    assert sum(path.parent == tmp_path / "out" and path.suffix == ".yaml" for path in written) == 3
    assert {"Dockerfile", ".zenml_user_requirements"} <= {path.name for path in written}


def test_cluster_backbone_comes_from_the_bucket_or_the_image(k8s_config: RemoteStackConfig) -> None:
    assert k8s_config.schedule is not None
    shipped = load_run_config(REPO / "pipelines/configs/cluster.yaml").config
    assert shipped.backbone.startswith("s3://")
    scheduled_run_kwargs(retrain_pipeline, shipped, k8s_config.schedule)
    for backbone in ("facebook/dinov2-small", "/weights/dinov2-small"):
        with pytest.raises(StackConfigError, match=f"backbone '{backbone}'.*never from a hub"):
            scheduled_run_kwargs(
                retrain_pipeline, shipped.model_copy(update={"backbone": backbone}), k8s_config.schedule
            )
