"""The cluster stacks as code.

The stack: Kubernetes (or Kubeflow) orchestrator, S3-compatible artifact store, MLflow server, registry and
image builder.

Everything comes from one YAML (``stacks/kubernetes.yaml``, ``stacks/kubeflow.yaml``), validated as
:class:`RemoteStackConfig`; ``python -m stacks.kubernetes`` registers it, schedules the retraining and
renders the manifests for review.

GPU steps get their GPU through the orchestrator's pod settings (Kubernetes) or ZenML resource settings plus
the KFP accelerator node selector (Kubeflow: ZenML 0.98 drops ``KubeflowOrchestratorSettings.pod_settings``).
The scheduled pipeline is by default ``pipelines.retrain.retrain_pipeline``, a ZenML dynamic pipeline: its steps
exist only when it runs, so the settings of a run configuration reach only its ``depends_on`` steps (ZenML's
config templates, matched to each invocation of the same step at run time), and its other steps run inline in
the orchestrator pod. GPU steps must therefore be among those templates, and they are given their own pods.
The pipeline is named by its import path in the stack YAML (``schedule.pipeline``) and loaded from there:
this package never imports ``pipelines``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from pathlib import Path
from typing import Any, Literal

from croniter import croniter
from kubernetes.utils import parse_quantity
from pydantic import Field, ValidationError, field_validator, model_validator
from zenml.client import Client
from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
from zenml.config.resource_settings import ResourceSettings
from zenml.config.schedule import Schedule
from zenml.config.step_configurations import StepConfigurationUpdate
from zenml.enums import StackComponentType, StepRuntime, StoreType
from zenml.pipelines.pipeline_definition import Pipeline

from stacks.images import ImageConfig, docker_settings
from stage1_core.common.cli import UsageError
from stage1_core.common.config import ConfigFileError, StrictConfig, describe_config_error, read_yaml_mapping
from stage1_core.data.sources.config import IngestConfig
from stage1_core.modeling.backbone import PRETRAINED_DEMOS, is_url
from stage1_core.modeling.distributed import DeviceConfig
from stage1_core.run.config import RunConfig
from stage1_core.run.settings import ConfigError, load_run_config

logger = logging.getLogger(__name__)

KFP_ACCELERATOR_LABEL = (
    "accelerator"  # the node selector key ZenML's Kubeflow orchestrator turns into a KFP accelerator request
)
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# Kubernetes versions whose API schemas the rendered manifests validate against (kubernetes-validate ships them).
# Before 1.29 the Job schema requires `onPodConditions` in every podFailurePolicy rule, which ZenML 0.98's step Jobs
# leave out of their exit-code rule.
SUPPORTED_KUBERNETES_VERSIONS = tuple(f"1.{minor}" for minor in range(29, 38))
SHM_VOLUME = "dshm"  # the memory-backed emptyDir mounted at /dev/shm in GPU pods


class StackConfigError(UsageError, ValueError):
    """The stack YAML is wrong, a referenced secret is missing, or the store is not a ZenML server.

    One line, what to do.
    """


class ClusterConfig(StrictConfig):
    """Where the pipeline pods run."""

    context: str = Field(description="kubeconfig context of the cluster (`kubectl config get-contexts`)")
    namespace: str = "roadwork"
    service_account: str = Field(
        "zenml-runner",
        description="service account of the orchestrator and step pods (see stacks/README.md for its RBAC)",
    )
    kubernetes_version: str = Field(
        "1.30",
        description=f"server version the manifests are validated against: {', '.join(SUPPORTED_KUBERNETES_VERSIONS)}",
    )

    @field_validator("kubernetes_version")
    @classmethod
    def _supported_version(cls, version: str) -> str:
        minor = ".".join(version.removeprefix("v").split(".")[:2])
        if minor not in SUPPORTED_KUBERNETES_VERSIONS:
            raise ValueError(
                f"cluster.kubernetes_version {version!r} is not supported: the manifests are checked against "
                f"{SUPPORTED_KUBERNETES_VERSIONS[0]} to {SUPPORTED_KUBERNETES_VERSIONS[-1]} "
                "(before 1.29 ZenML's step Jobs fail the Job schema: podFailurePolicy rules need onPodConditions)"
            )
        return minor


class ArtifactStoreConfig(StrictConfig):
    """An S3-compatible bucket (AWS S3, MinIO, Ceph...)."""

    path: str = Field(description="s3://bucket/prefix")
    endpoint_url: str | None = Field(None, description="for MinIO/Ceph; None for AWS S3")
    credentials_secret: str = Field(description="ZenML secret with aws_access_key_id and aws_secret_access_key")

    @field_validator("path")
    @classmethod
    def _s3_path(cls, path: str) -> str:
        if not path.startswith("s3://"):
            raise ValueError(f"artifact_store.path must start with s3:// (got {path!r})")
        return path


class ContainerRegistryConfig(StrictConfig):
    """Where built images are pushed and pulled from."""

    uri: str = Field(description="e.g. registry.example.com/roadwork")
    credentials_secret: str | None = Field(
        None, description="ZenML secret with username and password (pushes from this machine)"
    )
    pull_secret: str | None = Field(
        None,
        description=(
            "Kubernetes secret (type kubernetes.io/dockerconfigjson) in the namespace, for pulls and Kaniko pushes"
        ),
    )


class ImageBuilderConfig(StrictConfig):
    """Kaniko builds inside the cluster (no Docker daemon needed here); `local` builds with this machine's Docker."""

    flavor: Literal["kaniko", "local"] = "kaniko"
    namespace: str = "zenml-kaniko"


class MlflowConfig(StrictConfig):
    """The MLflow tracking server, also the model registry."""

    tracking_uri: str = Field(description="https://mlflow.example.com")
    credentials_secret: str | None = Field(None, description="ZenML secret with username and password (basic auth)")


class PodResources(StrictConfig):
    """Requests and limits of a pod (Kubernetes quantity strings)."""

    cpu: str = "2"
    memory: str = "8Gi"


class GpuConfig(StrictConfig):
    """GPU steps: the GPU request, and where such pods may land.

    ``shm_size``: PyTorch's DataLoader workers hand every batch to the training process through ``/dev/shm``, and
    NCCL's transport between the GPUs of one pod keeps its buffers there; a container gets 64 MiB. With
    ``pipelines/configs/cluster.yaml``'s recipe a batch is 32 x 3 x 604 x 604 float32 = 140 MB, and a 16-core node
    holds up to 15 workers x 4 prefetched batches (one process) or 2 x 7 x 4 (two processes): ~8.4 GB in flight.
    12Gi leaves room for NCCL and ExPLoRA's crops while staying well inside the 24Gi the pod may use.
    """

    steps: list[str] = Field(
        default_factory=lambda: ["adapt_backbone", "train_model"],
        description=(
            "step names that need a GPU, each with every invocation (the ablations' train_model ones too); "
            "in a dynamic pipeline (retrain_pipeline) they must be among its `depends_on` steps"
        ),
    )
    count: int = Field(
        1,
        ge=1,
        description=(
            "GPUs of a GPU step other than the trainings: train_model and adapt_backbone ask for their run config's "
            "train.devices and explora.devices (one process per GPU)"
        ),
    )
    resource: str = Field("nvidia.com/gpu", description="extended resource of the NVIDIA device plugin")
    cpu: str = "4"
    memory: str = "24Gi"
    shm_size: str = Field(
        "12Gi",
        description=(
            "size limit of the pod's /dev/shm (a memory-backed emptyDir, counted in `memory`); the container "
            "default of 64 MiB is too small for DataLoader workers and NCCL"
        ),
    )
    node_selector: dict[str, str] = Field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )

    @model_validator(mode="after")
    def _shm_within_memory(self) -> GpuConfig:
        if parse_quantity(self.shm_size) >= parse_quantity(self.memory):
            raise ValueError(
                f"gpu.shm_size {self.shm_size} must be below gpu.memory {self.memory}: "
                "what the pod writes to /dev/shm counts in its memory limit"
            )
        return self


class ScheduleConfig(StrictConfig):
    """The retraining cron.

    The Kubernetes orchestrator turns it into a batch/v1 CronJob, Kubeflow into a recurring run.
    """

    cron: str = Field(
        description=(
            "five-field cron (minute hour day month weekday) or a macro such as @weekly; in the cluster's time zone"
        )
    )
    name: str = "roadwork-retrain"
    pipeline: str = Field("pipelines.retrain.retrain_pipeline", description="import path of the pipeline to schedule")
    run_config: Path = Field(
        Path("pipelines/configs/cluster.yaml"),
        description="its run config (data paths must be s3:// URIs the pods can read)",
    )
    batch: IngestConfig | None = Field(
        None,
        description=(
            "retrain_pipeline: the landing location of new labelled images, drift-checked at each firing (s3:// URIs)"
        ),
    )
    batch_name: str = Field("batch", description="retrain_pipeline: source name of the batch in the fused manifest")
    force: bool = Field(
        False, description="retrain_pipeline: retrain at each firing even when the drift check does not warrant it"
    )
    concurrency_policy: Literal["Forbid", "Allow", "Replace"] = Field(
        "Forbid", description="Forbid: a retrain never overlaps the previous one"
    )
    starting_deadline_seconds: int = Field(3600, ge=0)
    successful_jobs_history_limit: int = Field(3, ge=0)
    failed_jobs_history_limit: int = Field(3, ge=0)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str) -> str:
        cron = " ".join(cron.split())
        if cron in CRON_MACROS:
            return cron
        if len(cron.split()) != 5 or not croniter.is_valid(cron):
            raise ValueError(
                f"schedule.cron {cron!r} is not a five-field cron expression "
                f"(minute hour day-of-month month day-of-week) or one of {', '.join(CRON_MACROS)}"
            )
        return cron

    def cron_for(self, orchestrator: Literal["kubernetes", "kubeflow"]) -> str:
        """The expression in the orchestrator's dialect: KFP recurring runs take a leading seconds field."""
        if orchestrator == "kubeflow" and not self.cron.startswith("@"):
            return f"0 {self.cron}"
        return self.cron


class KubeflowConfig(StrictConfig):
    """Where Kubeflow Pipelines runs (the Kubeflow variant)."""

    host: str | None = Field(
        None, description="KFP API URL for multi-tenant deployments; None: through the kube context"
    )
    namespace: str = Field("kubeflow", description="namespace of the KFP deployment")
    user_namespace: str | None = Field(
        None, description="profile namespace of runs and experiments (multi-user Kubeflow)"
    )


class RemoteStackConfig(StrictConfig):
    """One cluster stack, as written in stacks/kubernetes.yaml or stacks/kubeflow.yaml."""

    name: str = "roadwork-k8s"
    orchestrator: Literal["kubernetes", "kubeflow"] = "kubernetes"
    zenml_server_url: str = Field(description="the deployed ZenML server this stack is registered in")
    cluster: ClusterConfig
    artifact_store: ArtifactStoreConfig
    container_registry: ContainerRegistryConfig
    image_builder: ImageBuilderConfig = ImageBuilderConfig()
    mlflow: MlflowConfig
    image: ImageConfig = ImageConfig()
    step_resources: PodResources = PodResources()
    orchestrator_pod_resources: PodResources = PodResources(cpu="500m", memory="1Gi")
    gpu: GpuConfig = GpuConfig()
    schedule: ScheduleConfig | None = None
    kubeflow: KubeflowConfig | None = None

    @model_validator(mode="after")
    def _kubeflow_section(self) -> RemoteStackConfig:
        if self.orchestrator == "kubeflow" and self.kubeflow is None:
            raise ValueError("orchestrator is kubeflow: add a `kubeflow:` section (host, namespace, user_namespace)")
        return self

    def component_name(self, component_type: StackComponentType) -> str:
        """Components are named after the stack, so two clusters' stacks never share a component by accident."""
        return f"{self.name}-{component_type.value.replace('_', '-')}"


def load_stack_config(path: Path) -> RemoteStackConfig:
    """Read and validate the stack YAML; errors name the file and the field."""
    if not path.is_file():
        raise StackConfigError(f"stack config {path} does not exist (start from stacks/kubernetes.yaml)")
    try:
        return RemoteStackConfig.model_validate(read_yaml_mapping(path))
    except ConfigFileError as error:
        raise StackConfigError(str(error)) from None
    except ValidationError as error:
        raise StackConfigError(f"{path}: {describe_config_error(error, RemoteStackConfig)}") from None


def _pod_settings(config: RemoteStackConfig, resources: PodResources, *, gpus: int = 0) -> dict[str, Any]:
    """KubernetesPodSettings as a dict; GPU pods request ``gpus`` devices, are steered to (and tolerate) GPU nodes
    and get a memory-backed ``/dev/shm`` of ``gpu.shm_size`` (see :class:`GpuConfig`)."""
    settings: dict[str, Any] = {
        "resources": {
            "requests": {"cpu": resources.cpu, "memory": resources.memory},
            "limits": {"memory": resources.memory},
        }
    }
    if config.container_registry.pull_secret:
        settings["image_pull_secrets"] = [config.container_registry.pull_secret]
    if gpus:
        settings["resources"]["limits"][config.gpu.resource] = str(gpus)
        settings["node_selectors"] = config.gpu.node_selector
        settings["tolerations"] = config.gpu.tolerations
        settings["volumes"] = [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": config.gpu.shm_size}}]
        settings["volume_mounts"] = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
    return settings


def kubernetes_orchestrator_settings(config: RemoteStackConfig, *, gpus: int = 0) -> dict[str, Any]:
    """KubernetesOrchestratorSettings of every pod (the component's defaults) or, with ``gpus``, of a GPU step.

    A step's settings replace the component's field by field (``StackComponent.get_settings``), so a GPU step
    repeats the service account and pull secret rather than inheriting them.
    """
    settings: dict[str, Any] = {
        "service_account_name": config.cluster.service_account,
        "pod_settings": _pod_settings(
            config,
            PodResources(cpu=config.gpu.cpu, memory=config.gpu.memory) if gpus else config.step_resources,
            gpus=gpus,
        ),
        "orchestrator_pod_settings": _pod_settings(config, config.orchestrator_pod_resources),
    }
    if config.schedule is not None:
        settings |= {
            "concurrency_policy": config.schedule.concurrency_policy,
            "starting_deadline_seconds": config.schedule.starting_deadline_seconds,
            "successful_jobs_history_limit": config.schedule.successful_jobs_history_limit,
            "failed_jobs_history_limit": config.schedule.failed_jobs_history_limit,
        }
    return settings


def component_configurations(config: RemoteStackConfig) -> dict[StackComponentType, tuple[str, dict[str, Any]]]:
    """(flavor, configuration) of each component; ZenML validates each against its flavor's config class."""
    if config.orchestrator == "kubernetes":
        orchestrator = (
            "kubernetes",
            {
                "kubernetes_context": config.cluster.context,
                "kubernetes_namespace": config.cluster.namespace,
                "pass_zenml_token_as_secret": True,
            }
            | kubernetes_orchestrator_settings(config),
        )
    else:
        assert config.kubeflow is not None
        kubeflow = {
            "kubernetes_context": config.cluster.context,
            "kubeflow_namespace": config.kubeflow.namespace,
            "kubeflow_hostname": config.kubeflow.host,
            "user_namespace": config.kubeflow.user_namespace,
        }
        orchestrator = ("kubeflow", {key: value for key, value in kubeflow.items() if value is not None})
    artifact_store: dict[str, Any] = {
        "path": config.artifact_store.path,
        "authentication_secret": config.artifact_store.credentials_secret,
    }
    if config.artifact_store.endpoint_url:
        artifact_store["client_kwargs"] = {"endpoint_url": config.artifact_store.endpoint_url}
    registry: dict[str, Any] = {"uri": config.container_registry.uri}
    if config.container_registry.credentials_secret:
        registry["authentication_secret"] = config.container_registry.credentials_secret
    tracker: dict[str, Any] = {"tracking_uri": config.mlflow.tracking_uri}
    if config.mlflow.credentials_secret:
        secret = config.mlflow.credentials_secret
        tracker |= {
            "tracking_username": f"{{{{{secret}.username}}}}",
            "tracking_password": f"{{{{{secret}.password}}}}",
        }
    if config.image_builder.flavor == "kaniko":
        builder: dict[str, Any] = {
            "kubernetes_context": config.cluster.context,
            "kubernetes_namespace": config.image_builder.namespace,
        }
        if config.container_registry.pull_secret:
            builder["volumes"] = [
                {
                    "name": "docker-config",
                    "secret": {
                        "secretName": config.container_registry.pull_secret,
                        "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                    },
                }
            ]
            builder["volume_mounts"] = [{"name": "docker-config", "mountPath": "/kaniko/.docker"}]
        image_builder = ("kaniko", builder)
    else:
        image_builder = ("local", {})
    return {
        StackComponentType.ORCHESTRATOR: orchestrator,
        StackComponentType.ARTIFACT_STORE: ("s3", artifact_store),
        StackComponentType.CONTAINER_REGISTRY: ("default", registry),
        StackComponentType.IMAGE_BUILDER: image_builder,
        StackComponentType.EXPERIMENT_TRACKER: ("mlflow", tracker),
        StackComponentType.MODEL_REGISTRY: ("mlflow", {}),
    }


def referenced_secrets(config: RemoteStackConfig) -> list[str]:
    """Names of the ZenML secrets the components read at run time."""
    names = [
        config.artifact_store.credentials_secret,
        config.container_registry.credentials_secret,
        config.mlflow.credentials_secret,
    ]
    return [name for name in names if name]


def check_secrets(config: RemoteStackConfig, client: Client) -> None:
    """Fail before registering anything when a referenced ZenML secret does not exist, saying how to create it."""
    missing = []
    for name in referenced_secrets(config):
        try:
            client.get_secret(name, allow_partial_name_match=False)
        except KeyError:
            missing.append(name)
    if missing:
        raise StackConfigError(
            f"ZenML secret(s) {', '.join(missing)} not found; create them first, "
            f"e.g. `zenml secret create {missing[0]} --username=... --password=...` "
            "(S3: --aws_access_key_id=... --aws_secret_access_key=...); see stacks/README.md"
        )


def register_stack(config: RemoteStackConfig, client: Client | None = None) -> str:
    """Get-or-create the components and the stack; returns the stack name.

    A changed YAML updates the existing components.
    """
    client = client or Client()
    check_secrets(config, client)
    component_ids: dict[StackComponentType, str] = {}
    for component_type, (flavor, configuration) in component_configurations(config).items():
        name = config.component_name(component_type)
        try:
            existing = client.get_stack_component(component_type, name, allow_name_prefix_match=False)
        except KeyError:
            logger.info("registering %s %s (flavor %s)", component_type.value, name, flavor)
            component_ids[component_type] = str(
                client.create_stack_component(
                    name=name, flavor=flavor, component_type=component_type, configuration=configuration
                ).id
            )
            continue
        if existing.flavor_name != flavor:
            cli_group = component_type.value.replace("_", "-")
            raise StackConfigError(
                f"{component_type.value} {name} exists with flavor {existing.flavor_name}, "
                f"the config asks for {flavor}: delete it (`zenml {cli_group} delete {name}`) or rename the stack"
            )
        if existing.configuration != configuration:
            logger.info("updating %s %s", component_type.value, name)
            client.update_stack_component(name, component_type, configuration=configuration)
        component_ids[component_type] = str(existing.id)
    try:
        client.get_stack(config.name, allow_name_prefix_match=False)
    except KeyError:
        logger.info("registering stack %s", config.name)
        client.create_stack(name=config.name, components=component_ids)
    return config.name


def schedule_run_configuration(
    config: RemoteStackConfig, pipeline: Pipeline, run_config: RunConfig
) -> PipelineRunConfiguration:
    """ZenML run configuration of the scheduled run of the prepared ``pipeline``: the cron, no cache, GPU steps.

    No cache: each firing reads the data as it then is. Every pod runs the project's image
    (:func:`stacks.images.docker_settings`). GPU steps (checked by :func:`gpu_steps_of`) run
    isolated, in a pod of their own (the default for a dynamic pipeline's step is inline, in the orchestrator
    pod; a static pipeline gives every step a pod anyway), with the GPUs of :func:`step_gpus`. A dynamic
    pipeline's orchestrator pod runs all its other steps, so on Kubernetes it gets ``step_resources`` instead of
    ``orchestrator_pod_resources``.
    """
    if config.schedule is None:
        raise StackConfigError("the stack config has no `schedule:` section (cron, pipeline, run_config)")
    if config.orchestrator == "kubeflow" and pipeline.is_dynamic:
        raise StackConfigError(
            f"schedule.pipeline {config.schedule.pipeline} is a dynamic pipeline, "
            "which ZenML 0.98's Kubeflow orchestrator cannot run "
            "(it implements no submit_dynamic_pipeline): schedule it on the kubernetes orchestrator, "
            "or pipelines.full_run.full_run on Kubeflow"
        )
    schedule = Schedule(name=config.schedule.name, cron_expression=config.schedule.cron_for(config.orchestrator))
    pipeline_settings: dict[str, Any] = {"docker": docker_settings(config.image)}
    if config.orchestrator == "kubernetes" and pipeline.is_dynamic:
        pipeline_settings["orchestrator"] = {"orchestrator_pod_settings": _pod_settings(config, config.step_resources)}
    steps = {
        invocation_id: StepConfigurationUpdate(
            settings=_gpu_step_settings(config, step_gpus(config, run_config, step_name)),
            runtime=StepRuntime.ISOLATED,
        )
        for invocation_id, step_name in gpu_steps_of(config, pipeline).items()
    }
    return PipelineRunConfiguration(schedule=schedule, enable_cache=False, settings=pipeline_settings, steps=steps)


def _gpu_step_settings(config: RemoteStackConfig, gpus: int) -> dict[str, Any]:
    """ZenML settings of a step with ``gpus`` GPUs: pod settings on Kubernetes, resource settings on Kubeflow."""
    if config.orchestrator == "kubernetes":
        return {"orchestrator": kubernetes_orchestrator_settings(config, gpus=gpus)}
    resources = ResourceSettings(
        gpu_count=gpus, cpu_count=float(parse_quantity(config.gpu.cpu)), memory=f"{config.gpu.memory}B"
    )
    return {"resources": resources, "orchestrator": {"node_selectors": {KFP_ACCELERATOR_LABEL: config.gpu.resource}}}


def step_gpus(config: RemoteStackConfig, run_config: RunConfig, step_name: str) -> int:
    """GPUs of a GPU step: the trainings run one process per GPU, as many as their run config section's
    ``devices`` (``train_model``: ``train``, ``adapt_backbone``: ``explora``); another GPU step gets ``gpu.count``.

    Raises:
        StackConfigError: a training set to the CPU (``accelerator: cpu``) in a GPU pod, whose GPUs it would leave idle.
    """
    trainings: dict[str, tuple[str, DeviceConfig]] = {
        "train_model": ("train", run_config.train),
        "adapt_backbone": ("explora", run_config.explora),
    }
    if step_name not in trainings:
        return config.gpu.count
    section, devices = trainings[step_name]
    if devices.accelerator == "cpu":
        raise StackConfigError(
            f"{section}.accelerator is cpu in the run config, but {step_name} is in gpu.steps: its pod would hold "
            f"{devices.devices} idle GPU(s); set {section}.accelerator to auto or gpu, "
            f"or remove {step_name} from gpu.steps"
        )
    return devices.devices


def gpu_steps_of(config: RemoteStackConfig, pipeline: Pipeline) -> dict[str, str]:
    """The invocations of the configured GPU steps in the prepared pipeline (id -> step name); a misspelt step is an
    error.

    ZenML applies a run configuration's step settings to the pipeline's invocations and only warns about the
    others. A static pipeline's invocations of one step carry ids of their own (``train_model`` and the ablations'
    ``train_model_<ablation>``): each gets the GPU. Those of a dynamic pipeline are its ``depends_on`` steps,
    matched at run time to every call of the same step (ablations included); any other step is created at run
    time, from its own code, and could get no settings.
    """
    step_names = {invocation_id: invocation.step.name for invocation_id, invocation in pipeline.invocations.items()}
    unknown = sorted(set(config.gpu.steps) - set(step_names.values()))
    if unknown:
        which = (
            "steps whose settings a run configuration can set "
            "(its `depends_on` steps; add a step there to give it a GPU)"
            if pipeline.is_dynamic
            else "steps"
        )
        raise StackConfigError(
            f"gpu.steps {unknown} are not {which} of {pipeline.name}: "
            f"{', '.join(sorted(set(step_names.values()))) or 'none'}"
        )
    return {invocation_id: name for invocation_id, name in step_names.items() if name in config.gpu.steps}


def import_pipeline(path: str) -> Pipeline:
    """The pipeline object at an import path such as ``pipelines.retrain.retrain_pipeline``."""
    module_name, _, attribute = path.rpartition(".")
    try:
        pipeline = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise StackConfigError(f"schedule.pipeline {path!r} cannot be imported: {error}") from None
    if not isinstance(pipeline, Pipeline):
        raise StackConfigError(f"schedule.pipeline {path!r} is a {type(pipeline).__name__}, not a ZenML pipeline")
    return pipeline


def scheduled_run_kwargs(pipeline: Pipeline, run_config: RunConfig, schedule: ScheduleConfig) -> dict[str, Any]:
    """The pipeline's arguments: the run config, and the schedule's batch where the pipeline takes one.

    The batch goes to a pipeline that drift-checks a batch (``retrain_pipeline``).
    ``*_fingerprint`` parameters key the cache on local data or weights; a scheduled run reads its data when
    it fires, with the cache off, so there is nothing to fingerprint now: they are set to ``"scheduled"``.
    The pods cannot read this machine's disk, so the data, the batch and the image stores must be URIs (s3://...),
    and the backbone a URI too (or demo weights shipped in the image): the pods never download from a hub.
    """
    parameters = inspect.signature(pipeline.entrypoint).parameters
    kwargs: dict[str, Any] = {"config": run_config} | {
        name: "scheduled" for name in parameters if name.endswith("_fingerprint")
    }
    if "batch" in parameters:
        if schedule.batch is None:
            raise StackConfigError(
                f"{pipeline.name} drift-checks a batch at each firing: "
                "set schedule.batch (path and image_store, s3:// URIs of the landing location)"
            )
        kwargs |= {"batch": schedule.batch, "batch_name": schedule.batch_name, "force": schedule.force}
    missing = [
        name
        for name, parameter in parameters.items()
        if name not in kwargs and parameter.default is inspect.Parameter.empty
    ]
    if missing:
        raise StackConfigError(f"{pipeline.name} needs parameters {missing} that the run config does not provide")
    ingest_configs = (
        {"batch": schedule.batch, "data": run_config.data} if "batch" in kwargs else {"data": run_config.data}
    )
    local = [
        f"{name}.{field}={getattr(value, field)!r} ({'schedule.batch' if name == 'batch' else 'the run config'})"
        for name, value in ingest_configs.items()
        if isinstance(value, IngestConfig)
        for field in ("path", "image_store")
        if "://" not in getattr(value, field)
    ]
    if local:
        raise StackConfigError(
            f"{', '.join(local)}: the cluster's pods cannot read local paths; upload the data and set s3:// URIs"
        )
    if not (is_url(run_config.backbone) or run_config.backbone in PRETRAINED_DEMOS):
        raise StackConfigError(
            f"backbone {run_config.backbone!r} (the run config): the pods read weights from the artifact store or "
            "the image, never from a hub or this machine's disk; upload the save_pretrained folder to the bucket "
            f"and set backbone: s3://..., or use a demo weight shipped in the image ({', '.join(PRETRAINED_DEMOS)})"
        )
    return kwargs


def prepared_scheduled_pipeline(config: RemoteStackConfig) -> tuple[Pipeline, PipelineRunConfiguration, dict[str, Any]]:
    """The configured pipeline prepared with its parameters, its schedule run configuration and the parameters."""
    if config.schedule is None:
        raise StackConfigError("the stack config has no `schedule:` section (cron, pipeline, run_config)")
    pipeline = import_pipeline(config.schedule.pipeline)
    try:
        run_settings = load_run_config(config.schedule.run_config)
    except ConfigError as error:
        raise StackConfigError(f"schedule.run_config: {error}") from None
    run_kwargs = scheduled_run_kwargs(pipeline, run_settings.config, config.schedule)
    pipeline.prepare(**run_kwargs)
    return pipeline, schedule_run_configuration(config, pipeline, run_settings.config), run_kwargs


def require_server(config: RemoteStackConfig, client: Client) -> None:
    """The cluster stacks need the deployed ZenML server (the pods report to it); a local sqlite store is refused."""
    store = client.zen_store
    if store.type != StoreType.REST or store.url.rstrip("/") != config.zenml_server_url.rstrip("/"):
        raise StackConfigError(
            f"connected to {store.url} ({store.type.value}), not to the ZenML server {config.zenml_server_url}: "
            f"run `zenml login {config.zenml_server_url}` first"
        )
