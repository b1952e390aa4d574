"""The Kubernetes manifests the orchestrator submits for the scheduled run, and the image they run, built offline.

They are checked against the API schemas. The CronJob of the orchestrator pod is assembled as
``KubernetesOrchestrator._submit_orchestrator_job`` does (its own ``_prepare_job_manifest``, then
``build_cron_job_manifest``). Step Jobs follow the pipeline's kind. A static pipeline's orchestrator pod creates one
Job per step as the in-cluster entrypoint does (``apply_default_resource_requests``, ``build_pod_manifest``,
``build_job_manifest``). A dynamic pipeline's orchestrator pod runs the body and its inline steps itself and creates
a Job only for an isolated step, as ``submit_isolated_step_with_allocation`` does; those are its ``depends_on``
templates that ZenML's ``get_step_runtime`` sends to their own pod. Settings come from a pipeline compiled by
ZenML's ``Compiler`` on the stack the YAML describes, built in memory (:func:`stack_from_config`: nothing is
registered, no secret is read, no ZenML server is needed), so the GPU request is the one a run would get after
ZenML's own settings merge. The image is the one ZenML's image builder code names for the pipeline
(:mod:`stacks.images` records its build instead of running it). Nothing here contacts a cluster; the image digest,
snapshot id, step run id and environment (the ZenML server URL and token) are only known at submission and are
placeholders here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, cast
from uuid import UUID, uuid4

import kubernetes_validate
import yaml
from kubernetes.client import ApiClient
from zenml.client import Client
from zenml.config.compiler import Compiler
from zenml.entrypoints.step_entrypoint_configuration import StepEntrypointConfiguration
from zenml.enums import StackComponentType, StepRuntime
from zenml.execution.pipeline.dynamic.compilation import get_step_runtime
from zenml.integrations.kubernetes import kube_utils
from zenml.integrations.kubernetes.constants import ORCHESTRATOR_ANNOTATION_KEY, STEP_NAME_ANNOTATION_KEY
from zenml.integrations.kubernetes.flavors.kubernetes_orchestrator_flavor import KubernetesOrchestratorSettings
from zenml.integrations.kubernetes.manifest_utils import (
    build_cron_job_manifest,
    build_job_manifest,
    build_pod_manifest,
    job_template_manifest_from_job,
    pod_template_manifest_from_pod,
)
from zenml.integrations.kubernetes.orchestrators.kubernetes_orchestrator import KubernetesOrchestrator
from zenml.integrations.kubernetes.orchestrators.kubernetes_orchestrator_entrypoint_configuration import (
    KubernetesOrchestratorEntrypointConfiguration,
)
from zenml.models import PipelineSnapshotBase
from zenml.orchestrators.utils import get_step_entrypoint_command
from zenml.pipelines.dynamic.entrypoint_configuration import DynamicPipelineEntrypointConfiguration
from zenml.stack import Flavor, Stack, StackComponent
from zenml.step_operators.step_operator_entrypoint_configuration import StepOperatorEntrypointConfiguration
from zenml.utils.secret_utils import is_secret_reference

from stacks.images import RecordedBuild, render_image_builds
from stacks.remote import RemoteStackConfig, StackConfigError, component_configurations, prepared_scheduled_pipeline


class ManifestError(ValueError):
    """A manifest the API server would reject: names the object, the field path and the schema's complaint."""


def to_api_dict(obj: Any) -> dict[str, Any]:
    """The JSON body the kubernetes client sends (camelCase keys, no nulls); ``to_dict()`` would give snake_case."""
    return cast(dict[str, Any], ApiClient().sanitize_for_serialization(obj))


def validate_manifest(manifest: dict[str, Any], kubernetes_version: str) -> None:
    """Check against the Kubernetes OpenAPI schema of that version (strict: unknown fields are errors, as typos)."""
    name = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(manifest, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        raise ManifestError(
            f"{name}: {path or '(root)'}: {error.message} (Kubernetes {error.version} schema)"
        ) from None
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as error:
        raise ManifestError(f"{name}: {error.message}") from None


def stack_from_config(config: RemoteStackConfig, client: Client) -> Stack:
    """The stack the YAML describes, as ZenML objects in memory: the components of :func:`register_stack`.

    Flavors come from the connected store (the local one will do): rendering needs neither the deployed server
    nor the secrets. Settings that reference a ZenML secret (``{{secret.key}}``: MLflow's credentials) become
    placeholders, since ZenML would resolve them here; they change neither the manifests nor the image.
    """
    now = datetime.now(UTC)
    components: dict[StackComponentType, list[StackComponent]] = {}
    for component_type, (flavor_name, configuration) in component_configurations(config).items():
        flavor = Flavor.from_model(client.get_flavor_by_name_and_type(flavor_name, component_type))
        without_secrets = {
            key: f"<secret {value.strip('{} ')}>" if is_secret_reference(value) else value
            for key, value in configuration.items()
        }
        components[component_type] = [
            flavor.implementation_class(
                name=config.component_name(component_type),
                id=uuid4(),
                config=flavor.config_class(**without_secrets),
                flavor=flavor_name,
                type=component_type,
                user=None,
                created=now,
                updated=now,
            )
        ]
    return Stack.from_components_v2(id=uuid4(), name=config.name, components=components)


def cron_job_manifest(
    orchestrator: KubernetesOrchestrator,
    snapshot: PipelineSnapshotBase,
    cron_expression: str,
    image: str,
    snapshot_id: UUID,
) -> dict[str, Any]:
    """The CronJob that starts the orchestrator pod on each firing.

    That pod then runs the pipeline (see the module doc).
    """
    settings = cast(KubernetesOrchestratorSettings, orchestrator.get_settings(snapshot))
    pipeline_name = snapshot.pipeline_configuration.name
    labels = {
        "project_id": kube_utils.sanitize_label_value(str(Client().active_project.id)),
        "pipeline": kube_utils.sanitize_label_value(pipeline_name),
    }
    entrypoint = (
        DynamicPipelineEntrypointConfiguration if snapshot.is_dynamic else KubernetesOrchestratorEntrypointConfiguration
    )
    job = orchestrator._prepare_job_manifest(
        name=orchestrator._get_job_name(settings, pipeline_name=pipeline_name),
        command=entrypoint.get_entrypoint_command(),
        args=entrypoint.get_entrypoint_arguments(snapshot_id=snapshot_id),
        image=image,
        environment={},
        labels=labels,
        annotations={ORCHESTRATOR_ANNOTATION_KEY: str(orchestrator.id)},
        settings=settings,
        pod_settings=settings.orchestrator_pod_settings,
        backoff_limit=settings.orchestrator_job_backoff_limit,
    )
    cron_job = build_cron_job_manifest(
        job_template=job_template_manifest_from_job(job),
        cron_expression=cron_expression,
        successful_jobs_history_limit=settings.successful_jobs_history_limit,
        failed_jobs_history_limit=settings.failed_jobs_history_limit,
        concurrency_policy=settings.concurrency_policy,
        starting_deadline_seconds=settings.starting_deadline_seconds,
    )
    return to_api_dict(cron_job)


def step_job_manifest(
    orchestrator: KubernetesOrchestrator, snapshot: PipelineSnapshotBase, step_name: str, image: str, snapshot_id: UUID
) -> dict[str, Any]:
    """The Job the orchestrator pod of a static pipeline creates for one step (the GPU request lands here)."""
    step = snapshot.step_configurations[step_name]
    settings = cast(KubernetesOrchestratorSettings, orchestrator.get_settings(step))
    labels = {
        "pipeline": kube_utils.sanitize_label_value(snapshot.pipeline_configuration.name),
        "step_name": kube_utils.sanitize_label_value(step_name),
    }
    pod = build_pod_manifest(
        pod_name=None,
        image_name=image,
        command=StepEntrypointConfiguration.get_entrypoint_command(),
        args=StepEntrypointConfiguration.get_entrypoint_arguments(step_name=step_name, snapshot_id=snapshot_id),
        privileged=settings.privileged,
        pod_settings=kube_utils.apply_default_resource_requests(memory="400Mi", pod_settings=settings.pod_settings),
        service_account_name=settings.step_pod_service_account_name or settings.service_account_name,
        termination_grace_period_seconds=settings.pod_stop_grace_period,
        labels=labels,
    )
    retry = step.config.retry
    job = build_job_manifest(
        job_name=kube_utils.sanitize_label(
            f"{settings.job_name_prefix or ''}-{step_name}-{snapshot.pipeline_configuration.name}"
        ),
        pod_template=pod_template_manifest_from_pod(pod),
        backoff_limit=(retry.max_retries if retry else 0) + settings.backoff_limit_margin,
        ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
        active_deadline_seconds=settings.active_deadline_seconds,
        pod_failure_policy=settings.pod_failure_policy,
        labels=labels,
        annotations={STEP_NAME_ANNOTATION_KEY: step_name},
    )
    return to_api_dict(job) | {"apiVersion": "batch/v1", "kind": "Job"}


def isolated_step_job_manifest(
    orchestrator: KubernetesOrchestrator, snapshot: PipelineSnapshotBase, step_name: str, image: str, snapshot_id: UUID
) -> dict[str, Any]:
    """The Job the orchestrator pod of a dynamic pipeline creates for an isolated step (no resource pool allocation)."""
    step = snapshot.step_configurations[step_name]
    settings = cast(KubernetesOrchestratorSettings, orchestrator.get_settings(step))
    pipeline_name = snapshot.pipeline_configuration.name
    command, args = get_step_entrypoint_command(
        invocation_id=step_name,
        config=step.config,
        entrypoint_config_class=StepOperatorEntrypointConfiguration,
        snapshot_id=snapshot_id,
        step_run_id=str(uuid4()),
    )
    job = orchestrator._prepare_job_manifest(
        name=orchestrator._get_job_name(settings, pipeline_name=pipeline_name, step_name=step_name),
        command=command,
        args=args,
        image=image,
        environment={},
        labels={
            "pipeline": kube_utils.sanitize_label_value(pipeline_name),
            "step_name": kube_utils.sanitize_label_value(step_name),
        },
        annotations={STEP_NAME_ANNOTATION_KEY: step_name},
        settings=settings,
        pod_settings=settings.pod_settings,
        backoff_limit=settings.backoff_limit_margin,
    )
    return to_api_dict(job) | {"apiVersion": "batch/v1", "kind": "Job"}


def step_pods(orchestrator: KubernetesOrchestrator, snapshot: PipelineSnapshotBase) -> list[str]:
    """The steps that get a pod of their own.

    All steps of a static pipeline; of a dynamic one, the templates ZenML isolates.
    """
    if not snapshot.is_dynamic:
        return list(snapshot.step_configurations)
    docker = snapshot.pipeline_configuration.docker_settings
    return [
        name
        for name, step in snapshot.step_configurations.items()
        if get_step_runtime(step.config, docker, orchestrator)[0] == StepRuntime.ISOLATED
    ]


class CompiledSchedule(NamedTuple):
    """The scheduled pipeline compiled by ZenML on the stack of the YAML, and its cron."""

    stack: Stack
    orchestrator: KubernetesOrchestrator
    snapshot: PipelineSnapshotBase
    cron_expression: str


def compiled_schedule(config: RemoteStackConfig, client: Client) -> CompiledSchedule:
    """The stack of the YAML (:func:`stack_from_config`) and the scheduled pipeline compiled by ZenML on it."""
    if config.orchestrator != "kubernetes":
        raise StackConfigError(
            "manifests are rendered for the kubernetes orchestrator; Kubeflow compiles its own KFP YAML at submission"
        )
    stack = stack_from_config(config, client)
    pipeline, run_configuration, _ = prepared_scheduled_pipeline(config)
    assert run_configuration.schedule is not None and run_configuration.schedule.cron_expression is not None
    snapshot = Compiler().compile(pipeline=pipeline, stack=stack, run_configuration=run_configuration)
    orchestrator = cast(KubernetesOrchestrator, stack.orchestrator)
    return CompiledSchedule(stack, orchestrator, snapshot, run_configuration.schedule.cron_expression)


class RenderedSchedule(NamedTuple):
    """What ``schedule`` would build and submit: the image builds and the validated manifests."""

    builds: list[RecordedBuild]
    manifests: list[dict[str, Any]]


def scheduled_manifests(config: RemoteStackConfig, client: Client) -> RenderedSchedule:
    """The image builds, then the scheduled pipeline's CronJob and the Jobs of :func:`step_pods`, each validated.

    Every pod runs the pipeline image, the last build.
    """
    stack, orchestrator, snapshot, cron_expression = compiled_schedule(config, client)
    builds = render_image_builds(stack, snapshot)
    image = builds[-1].image
    snapshot_id = uuid4()
    manifests = [cron_job_manifest(orchestrator, snapshot, cron_expression, image, snapshot_id)]
    step_job = isolated_step_job_manifest if snapshot.is_dynamic else step_job_manifest
    manifests += [
        step_job(orchestrator, snapshot, step_name, image, snapshot_id)
        for step_name in step_pods(orchestrator, snapshot)
    ]
    for manifest in manifests:
        validate_manifest(manifest, config.cluster.kubernetes_version)
    return RenderedSchedule(builds, manifests)


def render_manifests(config: RemoteStackConfig, client: Client, out: Path) -> list[Path]:
    """Write the validated manifests as YAML and the image builds' Dockerfiles and generated files, for review.

    Manifests go to ``out`` (``kubectl apply --dry-run=server -f out``), each image build to ``out/images/NN-name/``
    (its Dockerfile, build arguments, requirement files and the list of project files in its context).
    Returns the files written.
    """
    out.mkdir(parents=True, exist_ok=True)
    rendered = scheduled_manifests(config, client)
    paths = []
    for index, manifest in enumerate(rendered.manifests):
        path = out / f"{index:02d}-{manifest['kind'].lower()}-{manifest['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        paths.append(path)
    for index, build in enumerate(rendered.builds):
        folder = out / "images" / f"{index:02d}-{build.image.rsplit(':', 1)[-1]}"
        folder.mkdir(parents=True, exist_ok=True)
        files = build.generated_files | {
            "Dockerfile": build.dockerfile,
            "build.yaml": yaml.safe_dump({"image": build.image, "build_args": build.build_args}, sort_keys=False),
            "context_files.txt": "\n".join(build.project_files) + "\n",
        }
        for name, content in files.items():
            (folder / name).write_text(content)
            paths.append(folder / name)
    return paths
