"""The cluster stacks offline: registration, the scheduled run's CronJob and step Jobs, and their Kubernetes schemas.

The manifests are built by ZenML's own orchestrator code and manifest builders from a ``full_run`` compiled by
ZenML's Compiler on the registered stack, then validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict). No cluster is contacted.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from zenml.client import Client
from zenml.config.resource_settings import ResourceSettings
from zenml.enums import StackComponentType
from zenml.integrations.kubeflow.flavors.kubeflow_orchestrator_flavor import KubeflowOrchestratorSettings

from pipelines.run_config import load_run_config
from stacks.kubernetes import (
    RemoteStackConfig,
    ScheduleConfig,
    StackConfigError,
    load_stack_config,
    main,
    prepared_scheduled_pipeline,
    register_stack,
    schedule_run_configuration,
    scheduled_run_kwargs,
)
from stacks.manifests import ManifestError, render_manifests, validate_manifest

REPO = Path(__file__).resolve().parents[1]
SECRETS = {
    "roadwork-s3": {"aws_access_key_id": "test", "aws_secret_access_key": "test"},
    "roadwork-registry": {"username": "test", "password": "test"},
    "roadwork-mlflow": {"username": "test", "password": "test"},
}


def _pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest["spec"]["jobTemplate"]["spec"] if manifest["kind"] == "CronJob" else manifest["spec"]
    return spec["template"]["spec"]


@pytest.fixture(scope="module")
def cluster_run_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.yaml with the data and image store in a bucket, as a cluster run needs."""
    document = yaml.safe_load((REPO / "pipelines/configs/tiny.yaml").read_text())
    document["parameters"] |= {"data": {"path": "s3://roadwork-data/natix", "image_store": "s3://roadwork-data/images"}, "demo": None}
    path = tmp_path_factory.mktemp("cluster") / "cluster.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def k8s_config(cluster_run_config: Path) -> RemoteStackConfig:
    """The shipped stacks/kubernetes.yaml, scheduling full_run with the cluster run config, registered in the test store."""
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
def manifests(k8s_config: RemoteStackConfig, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The rendered (and validated) manifests read back from their YAML files: "cron" and one per step name."""
    paths = render_manifests(k8s_config, Client(), tmp_path_factory.mktemp("manifests"))
    documents = [yaml.safe_load(path.read_text()) for path in paths]
    return {("cron" if document["kind"] == "CronJob" else document["metadata"]["labels"]["step_name"]): document for document in documents}


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
    assert artifact_store.configuration["path"] == k8s_config.artifact_store.path and artifact_store.configuration["authentication_secret"] == "roadwork-s3"
    ids_before = {components[0].id for components in stack.components.values()}

    changed = k8s_config.model_copy(update={"step_resources": k8s_config.step_resources.model_copy(update={"memory": "6Gi"})})
    register_stack(changed, client)
    stack_after = client.get_stack(k8s_config.name)
    assert stack_after.id == stack.id and {components[0].id for components in stack_after.components.values()} == ids_before
    orchestrator = stack_after.components[StackComponentType.ORCHESTRATOR][0]
    assert orchestrator.configuration["pod_settings"]["resources"]["requests"]["memory"] == "6Gi"
    register_stack(k8s_config, client)


def test_kubeflow_variant_registers() -> None:
    config = load_stack_config(REPO / "stacks/kubeflow.yaml")
    register_stack(config, Client())
    orchestrator = Client().get_stack(config.name).components[StackComponentType.ORCHESTRATOR][0]
    assert orchestrator.flavor_name == "kubeflow" and orchestrator.configuration["user_namespace"] == "roadwork"


def test_missing_secret_stops_registration_before_anything_is_created(k8s_config: RemoteStackConfig) -> None:
    config = k8s_config.model_copy(update={"name": "roadwork-missing-secret", "mlflow": k8s_config.mlflow.model_copy(update={"credentials_secret": "no-such-secret"})})
    with pytest.raises(StackConfigError, match="no-such-secret.*zenml secret create"):
        register_stack(config, Client())
    with pytest.raises(KeyError):
        Client().get_stack_component(StackComponentType.ORCHESTRATOR, config.component_name(StackComponentType.ORCHESTRATOR), allow_name_prefix_match=False)


def test_cron_job_carries_the_schedule(manifests: dict[str, dict[str, Any]], k8s_config: RemoteStackConfig) -> None:
    cron = manifests["cron"]
    assert (cron["apiVersion"], cron["kind"]) == ("batch/v1", "CronJob")
    assert cron["spec"]["schedule"] == k8s_config.schedule.cron == "0 3 * * 1"  # type: ignore[union-attr]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["startingDeadlineSeconds"] == 3600
    pod = _pod_spec(cron)
    assert pod["serviceAccountName"] == "zenml-runner" and pod["imagePullSecrets"] == [{"name": "roadwork-regcred"}]
    assert pod["containers"][0]["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"].get("limits", {})
    validate_manifest(cron, k8s_config.cluster.kubernetes_version)


def test_gpu_steps_request_the_gpu_and_land_on_gpu_nodes(manifests: dict[str, dict[str, Any]], k8s_config: RemoteStackConfig) -> None:
    steps = {name: _pod_spec(manifest) for name, manifest in manifests.items() if name != "cron"}
    assert {"ingest_data", "train_model", "adapt_backbone", "promote_model"} <= set(steps)
    for name, pod in steps.items():
        resources = pod["containers"][0]["resources"]
        assert pod["serviceAccountName"] == "zenml-runner" and pod["imagePullSecrets"] == [{"name": "roadwork-regcred"}], name
        if name in k8s_config.gpu.steps:
            assert resources["limits"]["nvidia.com/gpu"] == "1" and resources["requests"] == {"cpu": "4", "memory": "24Gi"}
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        else:
            assert "nvidia.com/gpu" not in resources.get("limits", {}) and "tolerations" not in pod, name
            assert resources["requests"] == {"cpu": "2", "memory": "8Gi"}, name


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
def test_broken_manifests_are_rejected(manifests: dict[str, dict[str, Any]], k8s_config: RemoteStackConfig, break_it: Any, path: str) -> None:
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
    run_configuration = schedule_run_configuration(config, ["train_model"])
    assert run_configuration.schedule is not None and run_configuration.schedule.cron_expression == "0 0 3 * * 1"
    settings = run_configuration.steps["train_model"].settings  # type: ignore[index]
    resources = ResourceSettings.model_validate(dict(settings["resources"]))
    assert resources.gpu_count == 1 and resources.cpu_count == 4.0 and resources.get_memory("GiB") == 24
    kubeflow = KubeflowOrchestratorSettings.model_validate(dict(settings["orchestrator"]))
    assert kubeflow.pod_settings is not None and kubeflow.pod_settings.node_selectors == {"accelerator": "nvidia.com/gpu"}
    # Why not pod_settings: ZenML 0.98 replaces a given pod_settings with one built from the legacy fields.
    dropped = KubeflowOrchestratorSettings.model_validate({"pod_settings": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}})
    assert dropped.pod_settings is not None and dropped.pod_settings.resources == {}


def test_misspelt_gpu_step_is_an_error(k8s_config: RemoteStackConfig) -> None:
    config = k8s_config.model_copy(update={"gpu": k8s_config.gpu.model_copy(update={"steps": ["train_modle"]})})
    with pytest.raises(StackConfigError, match="train_modle.*not steps of full_run"):
        prepared_scheduled_pipeline(config)


def test_local_data_paths_are_refused_for_the_cluster(k8s_config: RemoteStackConfig) -> None:
    from pipelines.full_run import full_run

    run_config = load_run_config(REPO / "pipelines/configs/tiny.yaml").config
    with pytest.raises(StackConfigError, match="data.path='data/tiny'.*s3://"):
        scheduled_run_kwargs(full_run, run_config)


def test_cli_refuses_a_local_store(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["register", "--config", str(REPO / "stacks/kubernetes.yaml")]) == 2
    assert "zenml login https://zenml.example.com" in capsys.readouterr().err
