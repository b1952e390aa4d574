"""What the MLflow registry says about each version: aliases with one meaning, a description, a gate tag, a signature.

Real sqlite MLflow store and real ZenML store; the registered model is a real (tiny) ONNX graph with the serving
interface.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from stage1_core.registry.champion import REGISTERED_MODEL_DESCRIPTION, log_exported_model
from stage1_core.registry.promotion import register_and_promote
from tests.test_promotion import CONFIG, GOOD, _brightness_model


@pytest.fixture()
def client(tmp_path) -> MlflowClient:
    """A private store whose experiment keeps its artifacts in the test's folder (never ``<cwd>/mlruns``)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("aliases", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield client
    mlflow.set_tracking_uri(None)


def _logged_model() -> tuple[str, str]:
    with mlflow.start_run() as run:
        info = log_exported_model(_brightness_model())
    return info.model_uri, run.info.run_id


def test_a_version_that_fails_the_bars_gets_no_alias_and_says_why(client: MlflowClient) -> None:
    from zenml.client import Client

    from steps.promote_model import ZenMLStageTransition

    zenml = Client()
    model = zenml.create_model(name=f"alias-test-{np.random.default_rng().integers(1 << 30)}")
    champion_version, failing_version = (zenml.create_model_version(model.id, name=f"v{n}") for n in (1, 2))
    config = CONFIG.model_copy(update={"registered_model_name": model.name})
    first = register_and_promote(
        client,
        *_logged_model(),
        GOOD,
        config,
        [],
        stage=ZenMLStageTransition(zenml, model.name, champion_version.id),
        description="A first model.",
    )
    failed = register_and_promote(
        client,
        *_logged_model(),
        {**GOOD, "mcc": 0.1},
        config,
        [],
        stage=ZenMLStageTransition(zenml, model.name, failing_version.id),
        description="A worse model.",
    )

    assert (first.alias, failed.alias, failed.bars_passed, failed.stage) == ("champion", None, False, "none")
    registered = client.get_registered_model(model.name)
    assert registered.aliases == {"champion": int(first.version)}
    assert registered.description == REGISTERED_MODEL_DESCRIPTION
    version = client.get_model_version(model.name, failed.version)
    assert version.aliases == [] and version.tags["gate"] == "failed_bars"
    assert version.description.startswith("A worse model. Promotion gate: failed_bars. mcc 0.1000 below the bar 0.5.")
    assert client.get_model_version(model.name, first.version).tags["gate"] == "champion"
    assert zenml.get_model_version(model.name, failing_version.id).stage is None
    assert "failed the bars" in failed.visualizations()["promotion_decision.html"]
    assert failed.metadata()["alias"] == "none"


def test_registered_onnx_model_has_the_serving_signature(client: MlflowClient) -> None:
    model_uri, _ = _logged_model()
    signature = mlflow.models.get_model_info(model_uri).signature
    assert [(spec.name, spec.type, spec.shape) for spec in signature.inputs.inputs] == [
        ("image", np.dtype("uint8"), (-1, 3, -1, -1))
    ]
    assert [(spec.name, spec.type, spec.shape) for spec in signature.outputs.inputs] == [
        ("p_roadwork", np.dtype("float32"), (-1,))
    ]
