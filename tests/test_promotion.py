"""The promotion gate: bars, the paired comparison with a real registered champion (ONNX), all-or-nothing
registry changes with the real MLflow sqlite store and the real ZenML store, and registry errors."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
from mlflow import MlflowClient
from onnx import TensorProto, helper
from PIL import Image

from stage1_core.common.logit_map import LogitMap
from stage1_core.export.exporter import INPUT_NAME, ExportedModel, ExportMetadata
from stage1_core.registry.champion import log_exported_model
from stage1_core.registry.promotion import (
    PromotionConfig,
    PromotionError,
    RegistryUnavailableError,
    ValTestEvidence,
    compare_with_champion,
    decide,
    register_and_promote,
)
from stage1_core.registry.tracking import log_lineage

GOOD = {"mcc": 0.8, "auroc": 0.9, "ece": 0.05}
CONFIG = PromotionConfig(min_mcc=0.5, min_auroc=0.7, max_ece=0.1, n_bootstrap=300, min_compared_images=10)


def test_bars_decide_a_first_run() -> None:
    promoted, bars, reasons = decide(GOOD, None, CONFIG, [])
    assert promoted and bars and "no champion yet (first run)" in reasons[-1]
    promoted, _, reasons = decide({**GOOD, "ece": 0.2}, None, CONFIG, [])
    assert not promoted and any("ece 0.2000 above the bar 0.1" in reason for reason in reasons)
    assert "no champion after this run" in reasons[-1]
    promoted, _, reasons = decide({**GOOD, "auroc": None}, None, CONFIG, [])
    assert not promoted and any("auroc is undefined" in reason for reason in reasons)
    promoted, _, reasons = decide(GOOD, None, CONFIG, ["data validation failed critically: schema"])
    assert not promoted and reasons[0].startswith("data validation failed")


def _evidence(labels: np.ndarray, probabilities: np.ndarray) -> ValTestEvidence:
    return ValTestEvidence(
        sha256=[f"h{i}" for i in range(len(labels))],
        uris=[f"u{i}" for i in range(len(labels))],
        labels=labels.tolist(),
        probabilities=probabilities.tolist(),
    )


def test_paired_comparison_not_worse_rule_and_unseen_images() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    right = np.where(labels == 1, 0.8, 0.2)
    coin = rng.uniform(0, 1, 60)
    worse = compare_with_champion("1", _evidence(labels, coin), right, set(), CONFIG)
    assert (
        not worse.not_worse
        and worse.ci_high < 0
        and worse.champion_value == pytest.approx(1.0)
        and worse.n_compared == 60
    )
    equal = compare_with_champion("1", _evidence(labels, right), right, set(), CONFIG)
    assert equal.not_worse and equal.difference == pytest.approx(0.0) and "not worse than champion v1" in equal.reason
    # images the champion trained on are left out; the comparison runs on the rest
    seen = {f"h{i}" for i in range(45)}
    partial = compare_with_champion("1", _evidence(labels, coin), right, seen, CONFIG)
    assert (partial.n_excluded_seen_by_champion, partial.n_compared) == (45, 15)
    too_few = compare_with_champion("1", _evidence(labels, right), right, {f"h{i}" for i in range(55)}, CONFIG)
    assert not too_few.not_worse and "only 5 val_test images unseen" in too_few.reason
    unknown = compare_with_champion("1", _evidence(labels, right), right, None, CONFIG)
    assert unknown.not_worse and "split membership is not logged" in unknown.reason
    unscored = compare_with_champion("1", _evidence(labels, right), None, None, CONFIG, failure="files gone")
    assert not unscored.not_worse and "could not be scored: files gone" in unscored.reason
    promoted, bars, reasons = decide(GOOD, worse, CONFIG, [])
    assert bars and not promoted and reasons[-1] == worse.reason


@pytest.mark.parametrize("metric", ["mcc", "auroc", "ece", "brier", "nll", "aurc", "augrc"])
def test_not_worse_follows_the_metrics_direction(metric: str) -> None:
    """A model that is worse on the metric fails the gate against a better champion, and passes in the other role.

    The good model is the true P(y = 1 | x); the worse one is over-confident with a coin flip on 40% of the
    images, so it is worse on scores (lower MCC, AUROC) and on errors (higher ECE, Brier, NLL, AURC, AUGRC) alike.
    """
    rng = np.random.default_rng(5)
    z = rng.normal(0.0, 3.0, 400)
    good = 1.0 / (1.0 + np.exp(-z))
    labels = (rng.random(400) < good).astype(int)
    bad = np.where(rng.random(400) < 0.4, rng.uniform(0.0, 1.0, 400), 1.0 / (1.0 + np.exp(-4.0 * z)))
    config = CONFIG.model_copy(update={"comparison_metric": metric})
    worse = compare_with_champion("1", _evidence(labels, bad), good, set(), config)
    better = compare_with_champion("1", _evidence(labels, good), bad, set(), config)
    assert not worse.not_worse and "worse than champion v1" in worse.reason, (metric, worse.reason)
    assert better.not_worse and "not worse than champion v1" in better.reason, (metric, better.reason)
    direction = "higher is better" if metric in ("mcc", "auroc") else "lower is better"
    assert direction in worse.reason


def test_paired_comparison_resamples_sequences_whole() -> None:
    """Four copies of each frame in one group give the interval of the frames alone; without groups it is narrower."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    challenger, champion = (
        np.clip(0.25 + 0.5 * labels + rng.normal(0.0, 0.25, 60), 0, 1),
        np.where(labels == 1, 0.7, 0.3),
    )
    alone = compare_with_champion("1", _evidence(labels, challenger), champion, set(), CONFIG)
    copies = _evidence(np.repeat(labels, 4), np.repeat(challenger, 4))
    grouped = compare_with_champion(
        "1",
        copies.model_copy(update={"groups": [f"seq{i // 4:03d}" for i in range(240)]}),
        np.repeat(champion, 4),
        set(),
        CONFIG,
    )
    one_by_one = compare_with_champion("1", copies, np.repeat(champion, 4), set(), CONFIG)
    assert (grouped.ci_low, grouped.ci_high) == pytest.approx((alone.ci_low, alone.ci_high))
    assert one_by_one.ci_high - one_by_one.ci_low < 0.75 * (grouped.ci_high - grouped.ci_low)
    assert "on 240 images (resampled as 60 split groups)" in grouped.reason


def _brightness_model() -> ExportedModel:
    """A real ONNX graph with the serving interface: P(roadwork) = mean pixel value / 255."""
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=0),
        helper.make_node("Div", ["mean", "scale"], ["p_roadwork"]),
    ]
    graph = helper.make_graph(
        nodes,
        "brightness",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("p_roadwork", TensorProto.FLOAT, ["batch"])],
        [
            helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
            helper.make_tensor("scale", TensorProto.FLOAT, [], [255.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    metadata = ExportMetadata(
        opset=18,
        input_spec="uint8 [B, 3, H, W]",
        output_spec="P(roadwork) [B]",
        canvas_size=28,
        views_per_image=1,
        calibration=LogitMap.from_temperature(1.0),
        decision_threshold=0.5,
        parity=[],
        tensorrt="skipped",
        torch_version="-",
        onnxruntime_version="-",
    )
    return ExportedModel(model.SerializeToString(), metadata)


@pytest.fixture()
def val_test(tmp_path: Path) -> pd.DataFrame:
    """24 images: roadwork ones bright, others dark, so the brightness model is right on all of them."""
    rng = np.random.default_rng(1)
    rows = []
    for index in range(24):
        label = index % 2
        image = Image.new("RGB", (40, 30), (200, 200, 200) if label else (40, 40, 40))
        path = tmp_path / f"{index}.png"
        image.save(path)
        rows.append(
            {
                "id": f"t{index}",
                "source": "demo",
                "sha256": f"{rng.integers(1 << 60):x}",
                "uri": str(path),
                "label": label,
                "split": "val_test",
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def mlflow_client(tmp_path_factory):
    """One real sqlite store for the module (creating one takes seconds); each test registers its own model name."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    artifacts = (tmp_path_factory.mktemp("mlflow-artifacts")).as_uri()  # not MLflow's default, <cwd>/mlruns
    os.environ["MLFLOW_EXPERIMENT_ID"] = client.create_experiment("promotion-test", artifact_location=artifacts)
    yield client
    del os.environ["MLFLOW_EXPERIMENT_ID"]
    mlflow.set_tracking_uri(None)


@pytest.fixture()
def config(request: pytest.FixtureRequest) -> PromotionConfig:
    return CONFIG.model_copy(update={"registered_model_name": f"roadwork-{request.node.name}"})


def _log_brightness_run(manifest: pd.DataFrame) -> tuple[str, str]:
    with mlflow.start_run(experiment_id=os.environ["MLFLOW_EXPERIMENT_ID"]) as run:
        log_lineage(manifest)
        info = log_exported_model(_brightness_model())
    return info.model_uri, run.info.run_id


def _evidence_of(val_test: pd.DataFrame, probabilities: np.ndarray) -> ValTestEvidence:
    return ValTestEvidence(
        sha256=val_test["sha256"].tolist(),
        uris=val_test["uri"].tolist(),
        labels=val_test["label"].tolist(),
        probabilities=probabilities.tolist(),
    )


def test_challenger_is_compared_with_the_registered_champion_on_the_same_images(
    mlflow_client, config: PromotionConfig, val_test: pd.DataFrame
) -> None:
    name = config.registered_model_name
    first = register_and_promote(mlflow_client, *_log_brightness_run(val_test), GOOD, config, [])
    assert first.promoted and first.alias == "champion" and first.comparison is None and first.champion_version is None
    # champion scored from its registered ONNX model: right on every image; a coin-flip challenger is worse
    coin = np.random.default_rng(2).uniform(0, 1, len(val_test))
    worse = register_and_promote(
        mlflow_client, *_log_brightness_run(val_test), GOOD, config, [], evidence=_evidence_of(val_test, coin)
    )
    assert not worse.promoted and worse.alias == "challenger" and worse.bars_passed
    assert (
        worse.comparison.champion_value == pytest.approx(1.0)
        and worse.comparison.ci_high < 0
        and worse.comparison.n_compared == 24
    )
    assert str(mlflow_client.get_model_version_by_alias(name, "champion").version) == first.version
    assert str(mlflow_client.get_model_version_by_alias(name, "challenger").version) == worse.version
    equal = register_and_promote(
        mlflow_client,
        *_log_brightness_run(val_test),
        GOOD,
        config,
        [],
        evidence=_evidence_of(val_test, val_test["label"].to_numpy() * 0.6 + 0.2),
    )
    assert (
        equal.promoted and equal.comparison.difference == pytest.approx(0.0) and equal.champion_version == first.version
    )
    assert str(mlflow_client.get_model_version_by_alias(name, "champion").version) == equal.version
    html = equal.visualizations()["promotion_decision.html"]
    assert "PROMOTED to champion" in html and f"champion v{first.version}" in html


def test_champion_training_images_are_left_out_of_the_comparison(
    mlflow_client, config: PromotionConfig, val_test: pd.DataFrame
) -> None:
    trained = val_test.assign(split=["train"] * 12 + ["val_test"] * 12)  # the champion trained on the first 12
    register_and_promote(mlflow_client, *_log_brightness_run(trained), GOOD, config, [])
    decision = register_and_promote(
        mlflow_client,
        *_log_brightness_run(val_test),
        GOOD,
        config,
        [],
        evidence=_evidence_of(val_test, np.full(24, 0.7)),
    )
    assert (decision.comparison.n_excluded_seen_by_champion, decision.comparison.n_compared) == (12, 12)


def test_champion_without_evidence_stays(mlflow_client, config: PromotionConfig, val_test: pd.DataFrame) -> None:
    first = register_and_promote(mlflow_client, *_log_brightness_run(val_test), GOOD, config, [])
    second = register_and_promote(mlflow_client, *_log_brightness_run(val_test), GOOD, config, [])
    assert not second.promoted and "no val_test predictions" in second.reasons[-1]
    assert (
        str(mlflow_client.get_model_version_by_alias(config.registered_model_name, "champion").version) == first.version
    )


def test_unreachable_registry_is_one_clear_line_and_changes_nothing(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    client = MlflowClient(tracking_uri="http://127.0.0.1:9", registry_uri="http://127.0.0.1:9")
    with pytest.raises(RegistryUnavailableError) as error:
        register_and_promote(client, "runs:/x/model", "x", GOOD, config, [])
    message = str(error.value)
    assert message.startswith("cannot reach the MLflow registry at http://127.0.0.1:9") and "\n" not in message


class _FailingStage:
    """ZenML's real stage transition, followed by an injected failure (e.g. the store going away midway)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def apply(self, promoted: bool) -> None:
        self.inner.apply(promoted)
        raise ConnectionError("ZenML store went away")

    def undo(self) -> None:
        self.inner.undo()


def test_failure_midway_leaves_mlflow_and_zenml_as_they_were(
    mlflow_client, config: PromotionConfig, val_test: pd.DataFrame
) -> None:
    from zenml.client import Client
    from zenml.enums import ModelStages

    from steps.promote_model import ZenMLStageTransition

    zenml = Client()
    model = zenml.create_model(name=f"gate-test-{os.getpid()}-{np.random.default_rng().integers(1 << 30)}")
    old, new = (zenml.create_model_version(model.id, name=f"v{number}") for number in (1, 2))
    first = register_and_promote(
        mlflow_client,
        *_log_brightness_run(val_test),
        GOOD,
        config,
        [],
        stage=ZenMLStageTransition(zenml, model.name, old.id),
    )
    assert first.stage == "production" and zenml.get_model_version(model.name, old.id).stage == ModelStages.PRODUCTION
    name = config.registered_model_name
    versions_before = {str(v.version) for v in mlflow_client.search_model_versions(f"name='{name}'")}

    with pytest.raises(PromotionError, match="ZenML store went away.*undone: model stage, alias champion, version 2$"):
        register_and_promote(
            mlflow_client,
            *_log_brightness_run(val_test),
            GOOD,
            config,
            [],
            evidence=_evidence_of(val_test, val_test["label"].to_numpy() * 0.6 + 0.2),
            stage=_FailingStage(ZenMLStageTransition(zenml, model.name, new.id)),
        )

    assert str(mlflow_client.get_model_version_by_alias(name, "champion").version) == first.version
    assert {str(v.version) for v in mlflow_client.search_model_versions(f"name='{name}'")} == versions_before
    assert zenml.get_model_version(model.name, old.id).stage == ModelStages.PRODUCTION
    assert zenml.get_model_version(model.name, new.id).stage in (None, ModelStages.NONE)
    # the same change without the failure goes through: new version champion and production, the old one archived
    done = register_and_promote(
        mlflow_client,
        *_log_brightness_run(val_test),
        GOOD,
        config,
        [],
        evidence=_evidence_of(val_test, val_test["label"].to_numpy() * 0.6 + 0.2),
        stage=ZenMLStageTransition(zenml, model.name, new.id),
    )
    assert done.promoted and str(mlflow_client.get_model_version_by_alias(name, "champion").version) == done.version
    assert zenml.get_model_version(model.name, new.id).stage == ModelStages.PRODUCTION
    assert zenml.get_model_version(model.name, old.id).stage == ModelStages.ARCHIVED


def test_lineage_hash_follows_the_data_not_the_row_order(val_test: pd.DataFrame) -> None:
    from stage1_core.registry.tracking import data_lineage

    lineage = data_lineage(val_test)
    assert data_lineage(val_test.iloc[::-1]).manifest_sha256 == lineage.manifest_sha256
    moved = val_test.assign(split=["train"] + ["val_test"] * 23)
    assert data_lineage(moved).manifest_sha256 != lineage.manifest_sha256
    assert lineage.rows_per_source == {"demo": 24} and lineage.split_sizes == {"val_test": {"0": 12, "1": 12}}
    assert lineage.metrics()["lineage.split.val_test.label_1"] == 12.0
    with pytest.raises(ValueError, match=r"missing \['split'\]"):
        data_lineage(val_test.drop(columns="split"))
