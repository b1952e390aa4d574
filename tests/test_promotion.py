import os

import mlflow
import pytest
from mlflow import MlflowClient

from stage1_core.promotion import PromotionConfig, decide, register_and_promote

GOOD = {"mcc": 0.8, "auroc": 0.9, "ece": 0.05}


def test_bars_and_champion_comparison() -> None:
    config = PromotionConfig(min_mcc=0.5, min_auroc=0.7, max_ece=0.1)
    assert decide(GOOD, None, config, [])[0]
    promoted, reasons = decide({**GOOD, "ece": 0.2}, None, config, [])
    assert not promoted and any("ece 0.2000 above the bar 0.1" in reason for reason in reasons)
    promoted, reasons = decide({**GOOD, "auroc": None}, None, config, [])
    assert not promoted and any("auroc is undefined" in reason for reason in reasons)
    assert not decide(GOOD, ("3", 0.9), config, [])[0]
    assert decide(GOOD, ("3", 0.7), config, [])[0]
    promoted, reasons = decide(GOOD, None, config, ["data validation failed critically: schema"])
    assert not promoted and reasons[0].startswith("data validation failed")


@pytest.fixture()
def mlflow_client(tmp_path, monkeypatch):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", client.create_experiment("promotion-test"))
    yield client
    mlflow.set_tracking_uri(None)


def _run_with_metric(mcc: float) -> tuple[str, str]:
    with mlflow.start_run(experiment_id=os.environ["MLFLOW_EXPERIMENT_ID"]) as run:
        mlflow.log_metric("val_test_mcc", mcc)
        mlflow.log_text("model", "model/placeholder.txt")
    return f"runs:/{run.info.run_id}/model", run.info.run_id


def test_first_model_becomes_champion_then_a_worse_one_stays_challenger(mlflow_client) -> None:
    config = PromotionConfig(min_mcc=0.5, min_auroc=0.7, max_ece=0.1)
    first = register_and_promote(mlflow_client, *_run_with_metric(0.8), metrics=GOOD, config=config, blocking_issues=[])
    assert first.promoted and first.alias == "champion" and first.champion_version is None
    worse = register_and_promote(mlflow_client, *_run_with_metric(0.6), metrics={**GOOD, "mcc": 0.6}, config=config, blocking_issues=[])
    assert not worse.promoted and worse.alias == "challenger" and worse.champion_version == first.version
    assert str(mlflow_client.get_model_version_by_alias(config.registered_model_name, "champion").version) == first.version
    assert str(mlflow_client.get_model_version_by_alias(config.registered_model_name, "challenger").version) == worse.version
    better = register_and_promote(mlflow_client, *_run_with_metric(0.9), metrics={**GOOD, "mcc": 0.9}, config=config, blocking_issues=[])
    assert better.promoted
    assert str(mlflow_client.get_model_version_by_alias(config.registered_model_name, "champion").version) == better.version
