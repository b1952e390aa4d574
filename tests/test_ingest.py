from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stage1_core.ingest import DataLayoutError, IngestConfig, dataset_fingerprint, detect_layout, ingest
from stage1_core.manifest import MANIFEST_COLUMNS


def test_natix_parquet_ingests_every_row_into_the_manifest(demo_dataset: Path, demo_manifest) -> None:
    rows = sum(pq.ParquetFile(file).metadata.num_rows for file in (demo_dataset / "data").glob("*.parquet"))
    assert len(demo_manifest) == rows
    assert list(demo_manifest.columns)[: len(MANIFEST_COLUMNS)] == list(MANIFEST_COLUMNS)
    assert demo_manifest["id"].is_unique
    assert set(demo_manifest["official_split"]) == {"train", "test"}
    assert set(demo_manifest["label"]) == {0, 1}
    assert (demo_manifest["decode_error"] == "").all() and (demo_manifest["width"] > 0).all()
    assert all(Path(uri).is_file() for uri in demo_manifest["uri"])
    assert demo_manifest.groupby("group_id")["label"].nunique().max() == 1
    assert (demo_manifest["group_id"].value_counts() > 1).any(), "sequences of frames share a group"


def test_undecodable_image_is_kept_with_its_error(demo_dataset: Path, tmp_path: Path) -> None:
    source = sorted((demo_dataset / "data").glob("train-*.parquet"))[0]
    table = pq.read_table(source).slice(0, 3)
    images = table.column("image").to_pylist()
    images[1] = {"bytes": b"\xff\xd8\xff\xe0 not really a jpeg", "path": "broken.jpg"}
    broken = table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, type=table.schema.field("image").type))
    (tmp_path / "data").mkdir()
    pq.write_table(broken, tmp_path / "data" / "train-00000-of-00001.parquet")
    manifest = ingest(IngestConfig(path=str(tmp_path), image_store=str(tmp_path / "store")))
    assert len(manifest) == 3
    assert manifest.loc[1, "decode_error"] != "" and manifest.loc[1, "width"] == 0
    assert (manifest.loc[[0, 2], "decode_error"] == "").all()
    assert Path(manifest.loc[1, "uri"]).read_bytes().startswith(b"\xff\xd8"), "the bad bytes are kept, not lost"


def test_layout_detection_names_the_path_and_the_accepted_layouts(tmp_path: Path, demo_dataset: Path) -> None:
    assert detect_layout(demo_dataset) == "natix"
    for path, setup in [(tmp_path / "missing", None), (tmp_path / "empty", "mkdir"), (tmp_path / "other", "file")]:
        if setup:
            path.mkdir()
        if setup == "file":
            (path / "x.csv").write_text("a,b")
        with pytest.raises(DataLayoutError, match="accepted layouts") as error:
            detect_layout(path)
        assert str(path) in str(error.value)


def test_fingerprint_changes_when_the_data_changes(tmp_path: Path) -> None:
    (tmp_path / "a.parquet").write_bytes(b"1")
    before = dataset_fingerprint(tmp_path)
    (tmp_path / "b.parquet").write_bytes(b"2")
    assert dataset_fingerprint(tmp_path) != before
