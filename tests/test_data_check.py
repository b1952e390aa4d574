"""The data_check command: ingest + validate + split of one source, printed and written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.data_check import main, quarantine_path
from stage1_core.common.manifest import MANIFEST_COLUMNS, SPLITS
from stage1_core.demo.config import DemoDataConfig
from stage1_core.demo.writers import generate_demo_dataset

SMALL = DemoDataConfig(n_images=40, seed=6, image_width=128, image_height=96, frames_per_sequence=2)


@pytest.mark.parametrize("source", ["natix", "mapillary", "roadwork", "folder"])
def test_writes_a_split_manifest_and_prints_its_counts(
    source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = generate_demo_dataset(tmp_path / source, SMALL.model_copy(update={"layout": source}))
    out = tmp_path / "out" / "manifest.parquet"
    assert (
        main(["--source", source, "--path", str(root), "--out", str(out), "--image-store", str(tmp_path / "store")])
        == 0
    )
    manifest = pd.read_parquet(out)
    assert list(manifest.columns)[: len(MANIFEST_COLUMNS)] == list(MANIFEST_COLUMNS)
    assert len(manifest) == SMALL.n_images and set(manifest["split"]) <= set(SPLITS) and manifest["split"].notna().all()
    assert (manifest.groupby("split_group")["split"].nunique() == 1).all()
    printed = capsys.readouterr().out
    assert f"ingested {SMALL.n_images} = valid {SMALL.n_images} + quarantined 0" in printed
    assert source in printed and "train" in printed and "val_select" in printed
    sizes = manifest["split_group"].value_counts().value_counts().sort_index()
    assert f"split groups (rows per group -> groups): {dict(sizes.items())}" in printed
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
