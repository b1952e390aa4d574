"""The data_check command: ingest + validate + split of one source, printed and written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data_check import main, quarantine_path
from stage1_core.common.manifest import MANIFEST_COLUMNS, SPLITS
from stage1_core.demo.config import DemoDataConfig
from stage1_core.demo.writers import generate_demo_dataset

SMALL = DemoDataConfig(n_images=40, seed=6, image_width=128, image_height=96, frames_per_sequence=2)


@pytest.mark.parametrize(("source", "exit_code"), [("natix", 0), ("mapillary", 0), ("roadwork", 1)])
def test_writes_a_split_manifest_and_prints_its_counts(
    source: str, exit_code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ROADWork alone holds positives only: its manifest is written, and the check says it cannot train alone."""
    root = generate_demo_dataset(tmp_path / source, SMALL.model_copy(update={"layout": source}))
    out = tmp_path / "out" / "manifest.parquet"
    assert (
        main(["--source", source, "--path", str(root), "--out", str(out), "--image-store", str(tmp_path / "store")])
        == exit_code
    )
    manifest = pd.read_parquet(out)
    assert list(manifest.columns)[: len(MANIFEST_COLUMNS)] == list(MANIFEST_COLUMNS)
    assert len(manifest) == SMALL.n_images and set(manifest["split"]) <= set(SPLITS) and manifest["split"].notna().all()
    assert (manifest.groupby("split_group")["split"].nunique() == 1).all()
    printed = capsys.readouterr().out
    assert f"ingested {SMALL.n_images} = valid {SMALL.n_images} + quarantined 0" in printed
    assert source in printed and "train" in printed and "val_select" in printed
    assert not quarantine_path(out).exists()


def test_quarantine_is_written_beside_the_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "folder"
    generated = generate_demo_dataset(
        tmp_path / "vistas", SMALL.model_copy(update={"layout": "mapillary", "test_fraction": 0.0})
    )
    for folder in ("roadwork", "no_roadwork"):
        (root / folder).mkdir(parents=True)
    for index, image in enumerate(sorted((generated / "training" / "images").glob("*.jpg"))):
        (root / ("roadwork" if index % 2 else "no_roadwork") / image.name).write_bytes(image.read_bytes())
    (root / "roadwork" / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    out = tmp_path / "m.parquet"
    assert main(["--source", "folder", "--path", str(root), "--out", str(out)]) == 0
    quarantine = pd.read_parquet(quarantine_path(out))
    assert quarantine["id"].tolist() == ["folder:roadwork/broken.jpg"]
    assert quarantine["reason"].iloc[0].startswith("image not decodable")
    assert len(pd.read_parquet(out)) + len(quarantine) == SMALL.n_images + 1
    assert "quarantined for decodable: 1" in capsys.readouterr().out


def test_a_path_in_another_layout_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = generate_demo_dataset(tmp_path / "roadwork", SMALL.model_copy(update={"layout": "roadwork", "n_images": 4}))
    assert main(["--source", "mapillary", "--path", str(root)]) == 2
    assert f"{root} is in the roadwork layout" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- broken files


@pytest.fixture(scope="module")
def natix_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A NATIX folder of four shards (10 rows each, both classes in every split)."""
    config = DemoDataConfig(n_images=80, seed=4, image_width=128, image_height=96, frames_per_sequence=2)
    return generate_demo_dataset(tmp_path_factory.mktemp("natix"), config.model_copy(update={"rows_per_shard": 20}))


def _damaged(natix_shards: Path, target: Path, damage) -> Path:
    shutil.copytree(natix_shards, target)
    damage(sorted((target / "data").glob("*.parquet")))
    return target


def _rewrite_column(shards: list[Path], name: str, convert) -> None:
    for shard in shards:
        table = pq.read_table(shard)
        index = table.schema.get_field_index(name)
        pq.write_table(table.set_column(index, name, convert(table.column(name).to_pylist())), shard)


def _nan_first_label(labels: list[int]) -> pa.Array:
    return pa.array([float("nan"), *map(float, labels[1:])], pa.float64())


BROKEN_SHARDS = {
    "a shard that is not parquet": (lambda shards: shards[1].write_text("hello, not parquet"), 1, "not a parquet"),
    "a zero-byte shard": (lambda shards: shards[1].write_bytes(b""), 1, "Parquet file size is 0 bytes"),
    "a truncated shard": (
        lambda shards: shards[1].write_bytes(shards[1].read_bytes()[:5000]),
        1,
        "magic bytes not found",
    ),
    "images as plain binary": (
        lambda shards: _rewrite_column(shards, "image", lambda images: pa.array([i["bytes"] for i in images])),
        0,
        None,
    ),
    "labels as text": (
        lambda shards: _rewrite_column(shards, "label", lambda labels: pa.array([str(v) for v in labels])),
        0,
        None,
    ),
    "a NaN label": (lambda shards: _rewrite_column(shards[:1], "label", _nan_first_label), 0, "label is missing"),
}


@pytest.mark.parametrize("case", list(BROKEN_SHARDS))
def test_broken_natix_files_never_crash_and_the_counts_add_up(
    case: str, natix_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken shard is named and quarantined while the good shards are read; variants that carry the data are
    read. The counts always add up: ingested = valid + quarantined."""
    damage, exit_code, reason = BROKEN_SHARDS[case]
    root = _damaged(natix_shards, tmp_path / "natix", damage)
    out = tmp_path / "manifest.parquet"
    arguments = ["--source", "natix", "--path", str(root), "--out", str(out), "--image-store", str(tmp_path / "s")]
    assert main(arguments) == exit_code
    printed = capsys.readouterr().out
    ingested, valid, quarantined = map(
        int, re.search(r"ingested (\d+) = valid (\d+) \+ quarantined (\d+)", printed).groups()
    )
    assert ingested == valid + quarantined
    assert valid == len(pd.read_parquet(out))
    if reason is None:
        assert (ingested, valid) == (80, 80)
        return
    quarantine = pd.read_parquet(quarantine_path(out))
    assert len(quarantine) == quarantined and quarantine["reason"].str.contains(reason).all()
    if exit_code:  # a whole shard unreadable: the other three are read, and the run may not go on silently
        assert valid == 60 and "CRITICAL: 1 source file(s) could not be read" in printed
        assert str(root / "data") in quarantine["uri"].iloc[0]


def test_coco_files_that_cannot_be_used_are_named_and_the_others_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = generate_demo_dataset(
        tmp_path / "roadwork", SMALL.model_copy(update={"layout": "roadwork", "n_images": 8, "test_fraction": 0.0})
    )
    annotations = next((root / "scene" / "annotations").glob("instances_*.json"))
    coco = json.loads(annotations.read_text())
    coco["annotations"].append({"id": 999, "image_id": 12345, "category_id": 1, "bbox": [0, 0, 1, 1]})
    del coco["images"][0]["file_name"]
    annotations.write_text(json.dumps(coco))
    (annotations.parent / "instances_val.json").write_text(json.dumps({"annotations": []}))
    (annotations.parent / "instances_extra.json").write_text('{"images": [')

    assert main(["--source", "roadwork", "--path", str(root)]) == 1
    printed = capsys.readouterr().out
    assert "ingested 10 = valid 7 + quarantined 3" in printed
    assert "instances_val.json: not a COCO file: it has no `images` list" in printed
    assert "CRITICAL: 2 source file(s) could not be read" in printed
    assert "1 annotations point at no image of its `images` list (image ids ['12345'])" in caplog.text
    assert "images[0] has no file_name" in caplog.text or "images[0] has no file_name" in printed
