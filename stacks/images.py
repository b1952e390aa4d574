"""The pipeline image every cluster pod runs, defined by the project, and its build rendered offline for review.

ZenML builds it in two stages (``DockerSettings``): the parent from ``stacks/Dockerfile.cuda`` (NVIDIA's CUDA runtime
and Python 3.11), then ZenML's own Dockerfile on top: the stack integrations' requirements, the project's pinned
requirements (read from ``pyproject.toml``: torch, Lightning, transformers, Great Expectations, Evidently, ONNX
Runtime... and the ``k8s`` extra) in a layer of their own, the project's files, and ``pip install --no-deps .``
followed by a check that the installed torch is built for the base image's CUDA. Weights come from the artifact store
(``s3://`` backbones, fetched into a cache) or from the image (the demo weights ship with the code), never from a hub:
the image runs with the Hugging Face hub offline.

:func:`render_image_builds` runs ZenML's image builder code on a stack whose image builder records each build
context (the Dockerfile and the files ZenML would send to Kaniko) instead of building: what can be checked without a
Docker daemon or a cluster.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from zenml.config.docker_settings import DockerBuildConfig, DockerBuildOptions, DockerSettings
from zenml.constants import ENV_ZENML_SKIP_STACK_VALIDATION
from zenml.container_engines import ContainerEngine
from zenml.container_registries import BaseContainerRegistry
from zenml.image_builders import BaseImageBuilder, BuildContext
from zenml.models import PipelineSnapshotBase
from zenml.pipelines.build_utils import prune_snapshot_before_build
from zenml.stack import Stack
from zenml.utils.pipeline_docker_image_builder import PipelineDockerImageBuilder

from stage1_core.common.config import StrictConfig

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
DOCKERFILE = Path(__file__).with_name("Dockerfile.cuda")
DEFAULT_CUDA_IMAGE = "nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04"  # CUDA 13.0: the pinned torch wheel's
PYTHON_VERSION = "3.11"  # pyproject.toml: requires-python >=3.11,<3.12
# Fails the image build when the installed torch is built for another CUDA than the base image's (CUDA_VERSION is set
# by NVIDIA's images), rather than the first GPU step at run time.
CUDA_CHECK = (
    "python -c \"import os, torch; cuda = os.environ.get('CUDA_VERSION', ''); "
    "assert cuda.startswith(torch.version.cuda + '.'), "
    "f'torch {torch.__version__} is built for CUDA {torch.version.cuda}, the base image has CUDA {cuda or None}: "
    "set image.cuda_image in the stack YAML to a CUDA {torch.version.cuda} image'\""
)
# The pods never reach the Hugging Face hub: weights come from the artifact store or the image.
RUNTIME_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


class ImageConfig(StrictConfig):
    """The pipeline image: its CUDA base (the parent image's build argument) and the project extras installed."""

    cuda_image: str = Field(
        DEFAULT_CUDA_IMAGE,
        description="NVIDIA CUDA runtime image (Ubuntu 24.04); its CUDA must be the torch wheel's (the build checks)",
    )
    extras: list[str] = Field(
        default_factory=lambda: ["k8s"],
        description="extras of the project installed with it (pyproject.toml [project.optional-dependencies])",
    )


def project_requirements(extras: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    """The project's pinned dependencies and those of its ``extras``, as pip requirement lines.

    Raises:
        ValueError: an extra that pyproject.toml does not define.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise ValueError(f"image.extras {unknown} are not extras of the project: choose from {sorted(optional)}")
    return list(project["dependencies"]) + [requirement for extra in extras for requirement in optional[extra]]


def docker_settings(image: ImageConfig) -> DockerSettings:
    """ZenML's Docker settings of the pipeline image (the build described in the module doc)."""
    return DockerSettings(
        dockerfile=str(DOCKERFILE),
        parent_image_build_config=DockerBuildConfig(
            build_options=DockerBuildOptions(
                build_args={"CUDA_IMAGE": image.cuda_image, "PYTHON_VERSION": PYTHON_VERSION}
            )
        ),
        requirements=project_requirements(image.extras),
        disable_automatic_requirements_detection=True,
        install_stack_requirements=True,
        local_project_install_command=f"pip install --no-cache-dir --no-deps . && {CUDA_CHECK}",
        runtime_environment=RUNTIME_ENVIRONMENT,
    )


class RecordedBuild(BaseModel):
    """One image build as ZenML would send it to the image builder."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    image: str
    dockerfile: str
    build_args: dict[str, Any]
    generated_files: dict[str, str]  # file name in the build context -> content (requirement files)
    project_files: list[str]  # files copied from the source root, as paths in the build context


class RecordingImageBuilder(BaseImageBuilder):
    """Stands in for the stack's image builder (Kaniko, in the cluster): records each build instead of building.

    It takes the real builder's build-context class and locality, so ZenML prepares the same context.
    """

    def __init__(self, builder: BaseImageBuilder) -> None:
        now = datetime.now(UTC)
        super().__init__(
            name=builder.name,
            id=builder.id,
            config=builder.config,
            flavor=builder.flavor,
            type=builder.type,
            user=None,
            created=now,
            updated=now,
        )
        self._builder = builder
        self.builds: list[RecordedBuild] = []

    @property
    def build_context_class(self) -> type[BuildContext]:
        return self._builder.build_context_class

    @property
    def is_building_locally(self) -> bool:
        return self._builder.is_building_locally

    def build(
        self,
        image_name: str,
        build_context: BuildContext,
        docker_build_options: DockerBuildOptions | None = None,
        container_registry: BaseContainerRegistry | None = None,
    ) -> str:
        extra = dict(build_context.get_extra_files())
        dockerfile = extra.pop("Dockerfile")
        if os.path.isfile(dockerfile):  # the project's Dockerfile is added by path, ZenML's own by content
            dockerfile = Path(dockerfile).read_text()
        self.builds.append(
            RecordedBuild(
                image=image_name,
                dockerfile=dockerfile,
                build_args=dict((docker_build_options.build_args if docker_build_options else None) or {}),
                generated_files=extra,
                project_files=sorted(build_context.get_files()),
            )
        )
        return image_name


@contextmanager
def _without_local_stack_checks() -> Iterator[None]:
    """ZenML validates the stack against this machine before a build (the kube context must be in its kubeconfig).

    Rendering needs no cluster access, so that check is skipped for the render only.
    """
    before = os.environ.get(ENV_ZENML_SKIP_STACK_VALIDATION)
    os.environ[ENV_ZENML_SKIP_STACK_VALIDATION] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ[ENV_ZENML_SKIP_STACK_VALIDATION]
        else:
            os.environ[ENV_ZENML_SKIP_STACK_VALIDATION] = before


def render_image_builds(stack: Stack, snapshot: PipelineSnapshotBase) -> list[RecordedBuild]:
    """The builds ZenML would run for ``snapshot`` on ``stack`` (as ``create_pipeline_build`` does), recorded.

    The parent image from ``stacks/Dockerfile.cuda`` comes first, then the pipeline image built on it.
    """
    assert stack.image_builder is not None, "the stack has no image builder"
    recorder = RecordingImageBuilder(stack.image_builder)
    components = {component.type: [component] for component in stack.all_components} | {recorder.type: [recorder]}
    recording = Stack.from_components_v2(id=stack.id, name=stack.name, components=components)
    built: set[str] = set()
    with _without_local_stack_checks():
        for build in recording.get_docker_builds(snapshot=prune_snapshot_before_build(snapshot)):
            checksum = build.compute_settings_checksum(stack=recording)
            if checksum in built:  # ZenML builds an image once per distinct settings
                continue
            built.add(checksum)
            tag = f"{snapshot.pipeline_configuration.name}{'-' + build.step_name if build.step_name else ''}"
            PipelineDockerImageBuilder().build_docker_image(
                docker_settings=build.settings,
                tag=ContainerEngine.sanitize_tag(f"{tag}-{build.key}"),
                stack=recording,
                include_files=build.should_include_files(code_repository=None),
                entrypoint=build.entrypoint,
                extra_files=build.extra_files,
                extra_requirements_files=build.extra_requirements_files,
            )
    return recorder.builds
