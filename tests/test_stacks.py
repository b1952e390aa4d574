from zenml.client import Client
from zenml.enums import StackComponentType

from stacks.local import EXPERIMENT_TRACKER, MODEL_REGISTRY, STACK_NAME, ensure_local_stack


def test_local_stack_setup_is_idempotent() -> None:
    client = Client()
    assert ensure_local_stack(client) == STACK_NAME
    first = client.get_stack(STACK_NAME)
    components_before = {
        c.id for t in StackComponentType for c in client.list_stack_components(type=t.value, size=100).items
    }
    assert ensure_local_stack(client) == STACK_NAME
    components_after = {
        c.id for t in StackComponentType for c in client.list_stack_components(type=t.value, size=100).items
    }
    assert client.get_stack(STACK_NAME).id == first.id and components_after == components_before
    assert client.active_stack_model.name == STACK_NAME
    stack = client.active_stack
    assert stack.experiment_tracker.name == EXPERIMENT_TRACKER and stack.experiment_tracker.flavor == "mlflow"
    assert stack.model_registry.name == MODEL_REGISTRY and stack.model_registry.flavor == "mlflow"
    assert stack.experiment_tracker.get_tracking_uri().startswith("sqlite:///")
