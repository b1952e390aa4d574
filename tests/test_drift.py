"""Drift: a night-time batch is flagged, an i.i.d. batch is not, and image features measure what they claim."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stage1_core.monitoring.drift import DriftConfig, DriftReport, drift_report, image_features
from tests.html_text import image_sources, visible_text

SIZES = np.array([(1920, 1080), (1280, 720), (4032, 3024)])


def _features(seed: int, n: int = 200, night: bool = False, embedding_shift: float = 0.0) -> pd.DataFrame:
    """Synthetic per-image features: night images are darker, flatter, less saturated and have fewer edges."""
    rng = np.random.default_rng(seed)
    sizes = SIZES[rng.integers(0, len(SIZES), n)]
    frame = pd.DataFrame(
        {
            "brightness": rng.normal(0.2 if night else 0.5, 0.07, n),
            "contrast": rng.normal(0.14 if night else 0.22, 0.04, n),
            "saturation": rng.normal(0.2 if night else 0.35, 0.07, n),
            "orange_fraction": rng.beta(1, 30, n),
            "edge_density": rng.normal(0.07 if night else 0.12, 0.03, n),
            "width": sizes[:, 0],
            "height": sizes[:, 1],
            "aspect": sizes[:, 0] / sizes[:, 1],
            "daytime": ["night"] * n if night else rng.choice(["day", "dusk", "night"], n, p=[0.7, 0.15, 0.15]),
            "weather": rng.choice(["clear", "rain", "fog"], n, p=[0.6, 0.3, 0.1]),
        }
    )
    for index in range(3):
        frame[f"emb_{index}"] = rng.normal(embedding_shift, 1.0, n)
    return frame


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    """Several times larger than a batch, as a training reference is (see DriftConfig on chi-square)."""
    return _features(seed=0, n=800)


@pytest.fixture(scope="module")
def night_report(reference: pd.DataFrame) -> DriftReport:
    return drift_report(reference, _features(seed=1, night=True, embedding_shift=1.0), DriftConfig())


@pytest.fixture(scope="module")
def iid_report(reference: pd.DataFrame) -> DriftReport:
    return drift_report(reference, _features(seed=2), DriftConfig())


def test_night_batch_is_flagged(night_report: DriftReport) -> None:
    expected = {"brightness", "contrast", "saturation", "edge_density", "daytime", "emb_0", "emb_1", "emb_2"}
    assert expected <= set(night_report.drifted_columns)
    assert {"width", "weather"}.isdisjoint(night_report.drifted_columns)
    assert night_report.dataset_drift and night_report.retrain_recommended
    assert night_report.drift_share == pytest.approx(len(night_report.drifted_columns) / len(night_report.columns))
    brightness = next(column for column in night_report.columns if column.column == "brightness")
    assert brightness.method == "K-S p_value" and brightness.score < 1e-10 and brightness.kind == "numerical"


def test_iid_batch_is_not_flagged(iid_report: DriftReport) -> None:
    assert not iid_report.dataset_drift and not iid_report.retrain_recommended
    assert iid_report.drift_share < 0.3


def test_every_column_gets_a_verdict(iid_report: DriftReport, reference: pd.DataFrame) -> None:
    assert [column.column for column in iid_report.columns] == [
        *(name for name in reference.columns if name not in ("daytime", "weather")),
        "daytime",
        "weather",
    ]
    kinds = {column.column: column.kind for column in iid_report.columns}
    assert kinds["daytime"] == kinds["weather"] == "categorical" and kinds["emb_2"] == "numerical"
    for column in iid_report.columns:
        assert "p_value" in column.method  # Evidently's defaults for small samples are tests, not distances
        assert column.drifted == (column.score < column.threshold)
    assert iid_report.html.lstrip().startswith("<!DOCTYPE html>") and "emb_2" in iid_report.html


def test_extra_embedding_columns_are_compared(reference: pd.DataFrame) -> None:
    config = DriftConfig(columns=["brightness", "emb_0", "emb_1", "emb_2"])

    report = drift_report(reference, _features(seed=3, embedding_shift=1.0), config)

    assert report.drifted_columns == ["emb_0", "emb_1", "emb_2"]
    assert report.drift_share == 0.75


def test_chosen_columns_and_methods_are_used(reference: pd.DataFrame) -> None:
    config = DriftConfig(columns=["brightness", "daytime"], num_method="wasserstein", threshold=0.1)

    report = drift_report(reference, _features(seed=4, night=True), config)

    assert [column.column for column in report.columns] == ["brightness", "daytime"]
    brightness = report.columns[0]
    assert brightness.method == "wasserstein" and brightness.threshold == 0.1
    assert brightness.drifted and brightness.score > 1  # distance in reference standard deviations


def test_small_batch_gets_no_retrain_advice(reference: pd.DataFrame) -> None:
    config = DriftConfig(columns=["brightness", "daytime"])

    report = drift_report(reference, _features(seed=5, n=60, night=True), config)

    assert report.dataset_drift and not report.retrain_recommended
    assert "retrain_min_rows=100" in report.retrain_reason


def test_missing_current_columns_are_named(reference: pd.DataFrame) -> None:
    current = _features(seed=6).drop(columns=["emb_1", "contrast"])

    with pytest.raises(ValueError, match=r"lacks reference columns \['contrast', 'emb_1'\]"):
        drift_report(reference, current, DriftConfig())


def test_empty_current_batch_is_an_error(reference: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="current batch is empty"):
        drift_report(reference, reference.iloc[:0], DriftConfig())


def test_undeclared_text_column_is_an_error(reference: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"\['city'\] are neither numeric nor listed"):
        drift_report(reference.assign(city="Berlin"), reference.assign(city="Paris"), DriftConfig())


def test_image_features_measure_the_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stripes = np.zeros((40, 60, 3), dtype=np.uint8)
    stripes[:, ::4] = 255
    images = {
        "dark": Image.new("RGB", (64, 48), (20, 20, 20)),
        "bright": Image.new("RGB", (64, 48), (230, 230, 230)),
        "orange": Image.new("RGB", (30, 90), (255, 140, 0)),
        "red": Image.new("RGB", (30, 90), (220, 0, 0)),
        "stripes": Image.fromarray(stripes),
    }
    rows = []
    for name, image in images.items():
        path = tmp_path / f"{name}.png"
        image.save(path)
        rows.append({"id": name, "uri": str(path), "daytime": "day", "weather": "clear"})
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    rows.append({"id": "broken", "uri": str(broken), "daytime": "night", "weather": "rain"})

    with caplog.at_level(logging.WARNING, logger="stage1_core.monitoring.drift"):
        features = image_features(pd.DataFrame(rows))

    assert list(features.index) == [*images, "broken"]
    assert features.at["dark", "brightness"] < 0.1 < 0.85 < features.at["bright", "brightness"]
    assert features.at["dark", "contrast"] == pytest.approx(0.0, abs=1e-6)
    assert features.at["orange", "orange_fraction"] == 1.0 and features.at["red", "orange_fraction"] == 0.0
    assert features.at["orange", "saturation"] == pytest.approx(1.0, abs=0.01)
    # 1-px lines every 4 px: both neighbours of a line have a central-difference gradient of 0.5, the line itself 0
    assert features.at["stripes", "edge_density"] == pytest.approx(0.5) and features.at["bright", "edge_density"] == 0.0
    assert (features.at["orange", "width"], features.at["orange", "height"]) == (30, 90)
    assert features.at["orange", "aspect"] == pytest.approx(1 / 3)
    assert features.loc["broken", "brightness":"aspect"].isna().all()
    assert features.at["broken", "daytime"] == "night" and features.at["broken", "weather"] == "rain"
    assert "1 of 6 images could not be read" in caplog.text and "broken.jpg" in caplog.text


def test_summary_is_readable_without_javascript(night_report: DriftReport) -> None:
    """The dashboard runs no scripts: the first visualization states the verdict and shows the distributions."""
    pages = night_report.visualizations()
    assert list(pages) == ["drift_summary.html", "drift.html"] and pages["drift.html"] == night_report.html
    summary = pages["drift_summary.html"]
    text = visible_text(summary)
    assert "<script" not in summary
    assert f"{len(night_report.drifted_columns)} of {len(night_report.columns)} columns drifted" in text
    assert all(column.column in text for column in night_report.columns)
    assert "retraining recommended" in text
    [image] = image_sources(summary)
    assert image.startswith("data:image/png;base64,")
    assert base64.b64decode(image.split(",", 1)[1]).startswith(b"\x89PNG")
    assert len(visible_text(night_report.html)) < 200, "Evidently's own report shows (almost) nothing without scripts"


def test_distributions_count_every_row_on_shared_bins(reference: pd.DataFrame, night_report: DriftReport) -> None:
    by_column = {distribution.column: distribution for distribution in night_report.distributions}
    assert set(by_column) == {column.column for column in night_report.columns}
    brightness = by_column["brightness"]
    assert sum(brightness.reference) == len(reference) and sum(brightness.current) == night_report.n_current
    assert len(brightness.edges) == len(brightness.reference) + 1 and not brightness.categories
    daytime = by_column["daytime"]
    assert not daytime.edges and set(daytime.categories) == {"day", "dusk", "night"}
    assert daytime.current[daytime.categories.index("night")] == night_report.n_current
