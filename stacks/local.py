"""The local default stack: local orchestrator and artifact store, MLflow tracking and registry (sqlite, offline).

Get-or-create: the first run registers the components and the stack and activates it; later runs
find them and change nothing. Run it directly with ``python -m stacks.local``.
"""

from __future__ import annotations

import logging
import os
import sys

from mlflow.entities import LifecycleStage, ViewType
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from zenml.client import Client
from zenml.enums import StackComponentType
from zenml.integrations.mlflow.experiment_trackers.mlflow_experiment_tracker import LOCAL_MLFLOW_ARTIFACTS_DIRECTORY

from stage1_core.common.cli import EXIT_OK, configure_logging, run_command

logger = logging.getLogger(__name__)

STACK_NAME = "roadwork-local"
EXPERIMENT_TRACKER = "roadwork-mlflow-tracker"
MODEL_REGISTRY = "roadwork-mlflow-registry"

COMPONENTS: dict[StackComponentType, tuple[str, str]] = {
    StackComponentType.ORCHESTRATOR: ("default", "local"),
    StackComponentType.ARTIFACT_STORE: ("default", "local"),
    StackComponentType.EXPERIMENT_TRACKER: (EXPERIMENT_TRACKER, "mlflow"),
    StackComponentType.MODEL_REGISTRY: (MODEL_REGISTRY, "mlflow"),
}


def _get_or_create_component(client: Client, component_type: StackComponentType, name: str, flavor: str) -> str:
    try:
        return str(client.get_stack_component(component_type, name, allow_name_prefix_match=False).id)
    except KeyError:
        logger.info("registering %s %s (flavor %s)", component_type.value, name, flavor)
        return str(
            client.create_stack_component(name=name, flavor=flavor, component_type=component_type, configuration={}).id
        )


def ensure_local_stack(client: Client | None = None) -> str:
    """Register (if missing) and activate the local stack; returns its name."""
    client = client or Client()
    components = {
        component_type: _get_or_create_component(client, component_type, name, flavor)
        for component_type, (name, flavor) in COMPONENTS.items()
    }
    try:
        client.get_stack(STACK_NAME, allow_name_prefix_match=False)
    except KeyError:
        logger.info("registering stack %s", STACK_NAME)
        client.create_stack(name=STACK_NAME, components=components)
    if client.active_stack_model.name != STACK_NAME:
        client.activate_stack(STACK_NAME)
    prepare_mlflow_store(client)
    return STACK_NAME


def prepare_mlflow_store(client: Client | None = None) -> None:
    """Create the local MLflow store with its artifacts in the artifact store, and drop its empty Default experiment.

    MLflow makes a ``Default`` experiment in every new sqlite store, whose artifact location is ``<cwd>/mlruns``
    unless the store is created with another root: a stray experiment in the UI, and a folder in the working
    directory for anything logged there by mistake. ZenML logs each pipeline to an experiment of its own
    (artifacts under the artifact store's ``mlflow_artifacts``), so the Default experiment is deleted while it
    holds no run (a deleted experiment also refuses runs logged without one).
    """
    client = client or Client()
    tracker = client.active_stack.experiment_tracker
    if tracker is None or tracker.flavor != "mlflow" or tracker.config.tracking_uri:
        return
    artifact_root = os.path.join(client.active_stack.artifact_store.path, LOCAL_MLFLOW_ARTIFACTS_DIRECTORY)
    store = SqlAlchemyStore(tracker.get_tracking_uri(), artifact_root)
    default = store.get_experiment(SqlAlchemyStore.DEFAULT_EXPERIMENT_ID)
    if default.lifecycle_stage == LifecycleStage.ACTIVE and not store.search_runs(
        [default.experiment_id], None, ViewType.ALL, max_results=1
    ):
        store.delete_experiment(default.experiment_id)
        logger.info("deleted MLflow's empty Default experiment (pipeline runs log to experiments of their own)")


def mlflow_tracking_uri(client: Client | None = None) -> str:
    """Tracking URI of the active stack's MLflow experiment tracker (for `mlflow ui`)."""
    tracker = (client or Client()).active_stack.experiment_tracker
    return tracker.get_tracking_uri() if tracker else ""


def main() -> int:
    """Command line: register (if missing) and activate the local stack."""
    configure_logging()

    def register() -> int:
        print(f"active stack: {ensure_local_stack()}")
        return EXIT_OK

    return run_command("stacks.local", register)


if __name__ == "__main__":
    sys.exit(main())
