"""Manifest validation: every bad row ends in quarantine with its reason, and the counts add up."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stage1_core.common.manifest import MANIFEST_COLUMNS, conform_manifest
from stage1_core.data.ingest import ingest
from stage1_core.data.sources.base import describe_image
from stage1_core.data.sources.config import IngestConfig
from stage1_core.data.validation import (
    DataValidationError,
    ValidationConfig,
    raise_on_critical_failure,
    validate_manifest,
)
from stage1_core.demo.writers import generate_fused_demo
from stage1_core.run.settings import load_run_config

LENIENT = ValidationConfig(max_failure_rate=1.0)
DEFAULT_RUN = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "default.yaml"


def _image_bytes(path: Path, size: tuple[int, int], colour: tuple[int, int, int], fmt: str) -> bytes:
    """A noisy image tinted ``colour``: distinct images get distinct perceptual hashes (flat ones all hash alike)."""
    noise = np.random.default_rng(list(colour)).integers(0, 96, (size[1], size[0], 3))
    Image.fromarray((noise + np.array(colour) * 0.6).clip(0, 255).astype(np.uint8)).save(path, format=fmt)
    return path.read_bytes()


def _row(
    row_id: str, path: Path, data: bytes, label: int, source: str = "natix", description: str | None = None
) -> dict:
    facts = describe_image(data)
    width, height, phash, decode_error = facts.width, facts.height, facts.phash, facts.decode_error
    if description is None:
        description = "cones on the right lane" if label == 1 else ""
    return {
        "id": row_id,
        "source": source,
        "uri": str(path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "phash": phash,
        "label": label,
        "width": width,
        "height": height,
        "daytime": "day",
        "weather": "clear",
        "scene_environment": "urban",
        "city": "Berlin",
        "gps": "",
        "group_id": row_id,
        "official_split": "train",
        "scene_description": description,
        "decode_error": decode_error,
        "extras": "{}",
    }


@pytest.fixture
def manifest(tmp_path: Path) -> pd.DataFrame:
    """Eight good rows (natix and folder, JPEG and PNG) and one row per failure mode."""
    rows = []
    for index in range(8):
        fmt = "JPEG" if index % 2 else "PNG"
        path = tmp_path / f"good{index}.{fmt.lower()}"
        data = _image_bytes(path, (96 + index, 80), (30 * index, 100, 200 - 20 * index), fmt)
        source = "natix" if index < 6 else "folder"
        rows.append(_row(f"good{index}", path, data, label=index % 2, source=source))

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 this is not a jpeg")
    rows.append(_row("corrupt", corrupt, corrupt.read_bytes(), label=1))

    path = tmp_path / "label2.png"
    rows.append(_row("label2", path, _image_bytes(path, (90, 90), (1, 2, 3), "PNG"), label=2, source="folder"))

    good0 = rows[0]
    rows.append({**good0, "id": "dup_sha", "group_id": "dup_sha"})

    path = tmp_path / "huge.png"
    huge = _row("huge", path, _image_bytes(path, (70, 70), (9, 9, 9), "PNG"), label=0)
    rows.append({**huge, "width": 10_000, "height": 8_000})

    path = tmp_path / "natix_pos.png"
    rows.append(_row("natix_pos_empty", path, _image_bytes(path, (90, 91), (4, 5, 6), "PNG"), label=1, description=""))

    path = tmp_path / "natix_neg.png"
    rows.append(
        _row("natix_neg_described", path, _image_bytes(path, (90, 92), (7, 8, 9), "PNG"), label=0, description="a cone")
    )

    path = tmp_path / "small.png"
    rows.append(_row("small", path, _image_bytes(path, (20, 100), (10, 11, 12), "PNG"), label=0, source="folder"))
    return conform_manifest(pd.DataFrame(rows))


EXPECTED_REASONS = {
    "corrupt": "image not decodable: ",
    "label2": "label not in {0, 1}",
    "dup_sha": "duplicate image bytes (sha256) of kept id good0",
    "huge": "image larger than 50 megapixels",
    "natix_pos_empty": "natix: label 1 but scene_description empty",
    "natix_neg_described": "natix: label 0 but scene_description set",
    "small": "width below 64 px",
}


def test_each_bad_row_is_quarantined_with_its_reason(manifest: pd.DataFrame) -> None:
    result = validate_manifest(manifest, LENIENT)

    reasons = dict(zip(result.quarantine["id"], result.quarantine["reason"], strict=True))
    assert set(reasons) == set(EXPECTED_REASONS)
    for row_id, expected in EXPECTED_REASONS.items():
        assert expected in reasons[row_id], (row_id, reasons[row_id])
    assert sorted(result.valid["id"]) == [f"good{index}" for index in range(8)]
    assert list(result.quarantine.columns) == [*MANIFEST_COLUMNS, "reason"]
    assert list(result.valid.columns) == list(MANIFEST_COLUMNS)

    report = result.report
    assert report.n_ingested == len(manifest) == report.n_valid + report.n_quarantined
    assert (report.n_valid, report.n_quarantined) == (len(result.valid), len(result.quarantine)) == (8, 7)
    assert report.failure_rate == pytest.approx(7 / 15)
    assert report.critical_failure is False
    outcomes = {outcome.name: outcome for outcome in report.expectations}
    assert outcomes["label_in_set"].unexpected_count == 1 and not outcomes["label_in_set"].success
    assert outcomes["sha256_unique"].unexpected_count == 2  # GE flags both; only the later one is quarantined
    assert outcomes["schema"].success and outcomes["class_balance"].success
    assert report.reason_counts["decodable"] == 1 and report.reason_counts["sha256_unique"] == 1
    assert report.metadata()["n_quarantined"] == 7 and report.visualizations() == {"validation.html": report.html}
    raise_on_critical_failure(report)  # not critical: returns


def test_corrupt_image_reason_carries_the_decoder_message(manifest: pd.DataFrame) -> None:
    result = validate_manifest(manifest, LENIENT)

    reason = result.quarantine.set_index("id").at["corrupt", "reason"]
    decode_error = manifest.set_index("id").at["corrupt", "decode_error"]
    assert decode_error and decode_error in reason
    assert "width below 64 px" in reason  # an undecodable image has no size either: several reasons, all kept


def test_several_reasons_are_joined(manifest: pd.DataFrame) -> None:
    bad = manifest.copy()
    bad.loc[bad["id"] == "small", "label"] = 7

    result = validate_manifest(bad, LENIENT)

    reason = result.quarantine.set_index("id").at["small", "reason"]
    assert reason.split("; ") == ["label not in {0, 1}", "width below 64 px"]


def test_duplicate_id_keeps_the_first_row(manifest: pd.DataFrame) -> None:
    clean = manifest[manifest["id"].str.startswith("good")].reset_index(drop=True)
    clean.loc[5, "id"] = "good1"

    result = validate_manifest(clean, LENIENT)

    assert list(result.quarantine.index) == [0]
    assert result.quarantine.at[0, "reason"] == "duplicate id; the first row with it (row 1) is kept"
    assert result.quarantine.at[0, "sha256"] == manifest.at[5, "sha256"]
    assert result.valid["id"].tolist().count("good1") == 1


def test_null_values_are_quarantined_not_ignored(manifest: pd.DataFrame) -> None:
    clean = manifest[manifest["id"].str.startswith("good")].reset_index(drop=True)
    clean.loc[2, "decode_error"] = pd.NA

    result = validate_manifest(clean, LENIENT)

    assert result.quarantine["id"].tolist() == ["good2"]
    assert result.quarantine.at[0, "reason"] == "decode_error is null"


def test_natix_rule_can_be_switched_off(manifest: pd.DataFrame) -> None:
    result = validate_manifest(manifest, ValidationConfig(max_failure_rate=1.0, natix_consistency=False))

    quarantined = set(result.quarantine["id"])
    assert quarantined == set(EXPECTED_REASONS) - {"natix_pos_empty", "natix_neg_described"}
    assert "natix_positive_described" not in {outcome.name for outcome in result.report.expectations}


def test_size_bounds_follow_the_config(manifest: pd.DataFrame) -> None:
    result = validate_manifest(manifest, ValidationConfig(max_failure_rate=1.0, min_side=10, max_megapixels=100))

    assert {"small", "huge"}.isdisjoint(result.quarantine["id"])


def test_critical_failure_raises_with_the_result_attached(manifest: pd.DataFrame) -> None:
    with pytest.raises(DataValidationError) as raised:
        validate_manifest(manifest, ValidationConfig())

    result = raised.value.result
    assert result.report.critical_failure
    assert len(result.valid) + len(result.quarantine) == len(manifest)
    assert set(result.quarantine["id"]) == set(EXPECTED_REASONS)
    message = str(raised.value)
    assert "7 of 15 rows quarantined" in message and "46.67%" in message and "20%" in message
    assert "decodable: 1" in message
    with pytest.raises(DataValidationError, match="7 of 15 rows quarantined"):
        raise_on_critical_failure(result.report)


def test_missing_columns_are_named(manifest: pd.DataFrame) -> None:
    with pytest.raises(DataValidationError, match=r"missing columns \['label', 'sha256'\]") as raised:
        validate_manifest(manifest.drop(columns=["sha256", "label"]), LENIENT)

    result = raised.value.result
    assert result.report.missing_columns == ["label", "sha256"]
    assert len(result.quarantine) == len(manifest) and result.valid.empty
    assert not next(outcome for outcome in result.report.expectations if outcome.name == "schema").success


def test_one_class_is_critical_and_names_the_counts(manifest: pd.DataFrame) -> None:
    """A one-class dataset used to pass with a warning, train for minutes and fail in calibration."""
    positives = manifest[manifest["id"].isin(["good1", "good3", "good5"])]

    with pytest.raises(DataValidationError, match=r"the valid rows hold 3 labelled 1 and 0 labelled 0") as raised:
        validate_manifest(positives, LENIENT)

    report = raised.value.result.report
    balance = next(outcome for outcome in report.expectations if outcome.name == "class_balance")
    assert not balance.success and not balance.row_level
    assert float(balance.observed_value) == 1.0
    assert raised.value.result.quarantine.empty and report.critical_failure
    assert any("ValidationConfig.min_positive_rate" in reason for reason in report.critical_reasons)


def test_class_balance_floor_is_configurable(manifest: pd.DataFrame) -> None:
    skewed = manifest[manifest["id"].isin(["good0", "good1", "good3", "good5", "good7"])]  # 4 of 5 positive
    with pytest.raises(DataValidationError, match="positive rate 80.0%"):
        validate_manifest(skewed, LENIENT.model_copy(update={"max_positive_rate": 0.75}))
    assert validate_manifest(skewed, LENIENT).report.critical_failure is False


def test_near_duplicates_with_conflicting_labels_are_quarantined_with_their_group(
    manifest: pd.DataFrame, tmp_path: Path
) -> None:
    good = manifest[manifest["id"].str.startswith("good")]
    original = good[good["id"] == "good2"].iloc[0]  # labelled 0
    with Image.open(original["uri"]) as image:
        copy = tmp_path / "copy.jpg"
        image.convert("RGB").resize((120, 100)).save(copy, quality=80)  # a re-encoded, resized copy
    data = copy.read_bytes()
    facts = describe_image(data)
    relabelled = {
        **original.to_dict(),
        "id": "copy_of_good2",
        "uri": str(copy),
        "sha256": hashlib.sha256(data).hexdigest(),
        "phash": facts.phash,
        "width": facts.width,
        "height": facts.height,
        "group_id": "copy_of_good2",
        "label": 1,
        "scene_description": "cones",
    }
    conflicting = conform_manifest(pd.concat([good, pd.DataFrame([relabelled])], ignore_index=True))

    result = validate_manifest(conflicting, LENIENT.model_copy(update={"max_label_conflict_rate": 0.5}))
    reasons = result.quarantine.set_index("id")["reason"]
    assert sorted(reasons.index) == ["copy_of_good2", "good2"], "both copies: which label is right is unknown"
    assert "near-duplicate images with conflicting labels: 2 copies of copy_of_good2" in reasons["good2"]
    assert "(ids copy_of_good2, good2; labels 0 and 1)" in reasons["copy_of_good2"]
    assert result.report.reason_counts["label_conflict"] == 2 and not result.report.critical_failure
    assert len(result.valid) + len(result.quarantine) == len(conflicting)

    with pytest.raises(DataValidationError, match=r"22.22% of the rows are near-duplicates with conflicting labels"):
        validate_manifest(conflicting, LENIENT)
    unchecked = validate_manifest(conflicting, LENIENT.model_copy(update={"label_conflict_max_distance": None}))
    assert unchecked.quarantine.empty


def test_empty_manifest_is_critical(manifest: pd.DataFrame) -> None:
    with pytest.raises(DataValidationError, match="manifest is empty"):
        validate_manifest(manifest.iloc[:0], LENIENT)


def test_html_shows_outcomes_and_quarantined_rows(manifest: pd.DataFrame) -> None:
    html = validate_manifest(manifest, LENIENT).report.html

    assert html.startswith("<!DOCTYPE html>") and "http" not in html.split("<body>")[0]
    for text in ("label_in_set", "FAIL", "natix_pos_empty", "duplicate image bytes (sha256) of kept id good0"):
        assert text in html
    assert "label not in {0, 1}" in html


@pytest.mark.slow
def test_the_default_runs_demo_data_holds_no_label_conflicts(tmp_path: Path) -> None:
    """``make run``'s fused demo sources pass validation: look-alike scenes with different labels (4-6 pHash bits
    apart) are no copies of one photo. With the split's near-duplicate bound (6) as the copy bound, 37 of its
    1,100 rows were quarantined as conflicts and the run stopped before training."""
    config = load_run_config(DEFAULT_RUN).config
    root = generate_fused_demo(tmp_path / "sources", config.demo, config.demo_sources)
    manifest = ingest(IngestConfig(path=str(root), image_store=str(tmp_path / "store")))
    result = validate_manifest(manifest, config.validation)
    assert result.report.reason_counts.get("label_conflict", 0) == 0
    assert not result.report.critical_failure
