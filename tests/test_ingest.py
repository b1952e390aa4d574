import hashlib
import io
import json
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import ValidationError

from stage1_core.common.manifest import MANIFEST_COLUMNS
from stage1_core.data.ingest import LAYOUTS, dataset_fingerprint, detect_layout, ingest
from stage1_core.data.sources.base import DataLayoutError
from stage1_core.data.sources.config import MAPILLARY_ROADWORK_LABELS, IngestConfig, MapillaryConfig
from stage1_core.demo.config import DemoDataConfig
from stage1_core.demo.writers import generate_demo_dataset, generate_fused_demo


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
    broken = table.set_column(
        table.schema.get_field_index("image"), "image", pa.array(images, type=table.schema.field("image").type)
    )
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


SMALL = DemoDataConfig(n_images=16, seed=5, image_width=128, image_height=96, frames_per_sequence=4, rows_per_shard=6)
MAPILLARY_EVIDENCE = {"cone", "barrier", "sign", "arrow_board"}  # demo kinds drawn with a Vistas roadwork label


def _truth(root: Path) -> pd.DataFrame:
    return pq.read_table(root / "demo_truth.parquet").to_pandas()


def _write_arrow(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=5):
            writer.write_batch(batch)


@pytest.mark.parametrize("shape", ["save_to_disk", "cache"])
def test_natix_datasets_arrow_folder_reads_like_the_parquet(
    tmp_path: Path, demo_dataset: Path, demo_manifest, shape: str
) -> None:
    for split in ("train", "test"):
        table = pa.concat_tables(
            pq.read_table(file) for file in sorted((demo_dataset / "data").glob(f"{split}-*.parquet"))
        )
        if shape == "save_to_disk":
            _write_arrow(table, tmp_path / "natix" / split / "data-00000-of-00001.arrow")
            (tmp_path / "natix" / split / "state.json").write_text("{}")
        else:
            _write_arrow(
                table,
                tmp_path
                / "natix"
                / "natix___roadwork"
                / "default"
                / "0.0.0"
                / "f00d"
                / f"roadwork-{split}-00000-of-00001.arrow",
            )
    assert detect_layout(tmp_path / "natix") == "natix_arrow"
    manifest = ingest(
        IngestConfig(path=str(tmp_path / "natix"), image_store=str(tmp_path / "store"), record_batch_size=3)
    )
    columns = ["id", "sha256", "phash", "label", "group_id", "official_split", "width", "height"]
    expected = demo_manifest[columns].sort_values("id").reset_index(drop=True)
    assert manifest[columns].sort_values("id").reset_index(drop=True).equals(expected)


def test_mapillary_labels_come_from_exact_roadwork_label_names(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path / "vistas", SMALL.model_copy(update={"layout": "mapillary"}))
    assert detect_layout(root) == "mapillary"
    manifest = ingest(IngestConfig(path=str(root), image_store=str(tmp_path / "store")))
    truth = _truth(root).set_index("id")
    numbers = manifest["id"].str.extract(r"demo(\d+)$")[0].astype(int)
    drawn = numbers.map(lambda n: bool(set(filter(None, truth.at[n, "object_kinds"].split(","))) & MAPILLARY_EVIDENCE))
    assert (manifest["label"] == drawn.astype(int)).all()
    assert set(manifest["label"]) == {0, 1} and manifest["group_id"].is_unique
    assert set(manifest["official_split"]) == {"training", "validation"}
    labels_seen = set()
    for file in root.glob("*/v2.0/polygons/*.json"):
        labels_seen |= {item["label"] for item in json.loads(file.read_text())["objects"]}
    assert {"construction--flat--road", "construction--barrier--curb"} <= labels_seen, "trap labels are in every image"
    negatives = manifest[manifest["label"] == 0]
    assert negatives["extras"].str.contains('"construction--flat--road"').sum() == 0
    assert (
        negatives["extras"].map(json.loads).map(lambda e: e["roadwork_labels"])
        == pd.Series([[]] * len(negatives), index=negatives.index)
    ).all()


def test_mapillary_traps_never_count_and_potholes_tag_hard_negatives(tmp_path: Path) -> None:
    root = generate_demo_dataset(
        tmp_path / "vistas", SMALL.model_copy(update={"layout": "mapillary", "n_images": 2, "test_fraction": 0.0})
    )
    polygons = sorted((root / "training" / "v2.0" / "polygons").glob("*.json"))
    traps = [
        "construction--flat--road",
        "construction--barrier--curb",
        "construction--barrier--fence",
        "construction--barrier--guard-rail",
        "construction--barrier--concrete-block",
    ]
    polygons[0].write_text(
        json.dumps({"objects": [{"id": i, "label": label, "polygon": []} for i, label in enumerate(traps)]})
    )
    polygons[1].write_text(json.dumps({"objects": [{"id": 0, "label": "object--pothole", "polygon": []}]}))
    config = IngestConfig(path=str(root), image_store=str(tmp_path / "store"), orange_red_min_fraction=0.0)
    manifest = ingest(config).set_index("id")
    trap_row, pothole_row = (manifest.loc[f"mapillary:training:{path.stem}"] for path in polygons[:2])
    assert trap_row["label"] == 0 and json.loads(trap_row["extras"])["hard_negative"] is False
    assert pothole_row["label"] == 0 and json.loads(pothole_row["extras"])["hard_negative_reasons"] == [
        "object--pothole"
    ]
    jersey = config.mapillary.model_copy(
        update={"roadwork_labels": [*MAPILLARY_ROADWORK_LABELS, "construction--barrier--concrete-block"]}
    )
    with_jersey = ingest(config.model_copy(update={"mapillary": jersey})).set_index("id")
    assert with_jersey.loc[f"mapillary:training:{polygons[0].stem}", "label"] == 1, (
        "concrete blocks count only when configured"
    )
    with pytest.raises(ValidationError, match="never roadwork evidence"):
        MapillaryConfig(roadwork_labels=["construction--flat--road"])
    with pytest.raises(
        ValueError, match=r"does not define the configured Mapillary labels \['object--traffic-cones'\]"
    ):
        ingest(config.model_copy(update={"mapillary": MapillaryConfig(roadwork_labels=["object--traffic-cones"])}))


def test_roadwork_coco_is_positives_grouped_by_sequence(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path / "roadwork", SMALL.model_copy(update={"layout": "roadwork"}))
    assert detect_layout(root) == "roadwork"
    manifest = ingest(IngestConfig(path=str(root), image_store=str(tmp_path / "store")))
    truth = _truth(root)
    assert len(manifest) == len(truth) == SMALL.n_images and (manifest["label"] == 1).all()
    assert manifest["group_id"].nunique() == truth["seq_id"].nunique() == SMALL.n_images // SMALL.frames_per_sequence
    assert (manifest.groupby("group_id")["city"].nunique() == 1).all() and (manifest["city"] != "").all()
    assert set(manifest["official_split"]) == {"train", "val"}
    assert (manifest["gps"].str.count(",") == 1).all()
    objects = manifest["extras"].map(lambda extras: json.loads(extras)["objects"])
    assert objects.map(len).gt(0).mean() > 0.5


def test_plain_folder_labels_by_subfolder_and_keeps_fsspec_uris(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    for name, colour in [
        ("roadwork/a.png", (250, 100, 0)),
        ("roadwork/deep/b.png", (240, 120, 10)),
        ("no_roadwork/c.png", (20, 40, 200)),
    ]:
        buffer = io.BytesIO()
        Image.new("RGB", (80, 64), colour).save(buffer, format="PNG")
        fs.pipe(f"/folderdata/{name}", buffer.getvalue())
    assert detect_layout("memory://folderdata") == "folder"
    manifest = ingest(IngestConfig(path="memory://folderdata", image_store=str(tmp_path / "store"))).set_index("id")
    assert manifest["label"].to_dict() == {
        "folder:no_roadwork/c.png": 0,
        "folder:roadwork/a.png": 1,
        "folder:roadwork/deep/b.png": 1,
    }
    assert manifest.loc["folder:roadwork/a.png", "uri"].startswith("memory://"), "the uri keeps its protocol"
    with fsspec.open(manifest.loc["folder:roadwork/a.png", "uri"], "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == manifest.loc["folder:roadwork/a.png", "sha256"]
    fs.rm("/folderdata", recursive=True)


def test_a_folder_of_sources_is_fused_and_a_wrong_source_is_named(tmp_path: Path) -> None:
    root = generate_fused_demo(tmp_path / "fused", SMALL.model_copy(update={"n_images": 8}))
    assert detect_layout(root) == "multi"
    manifest = ingest(IngestConfig(path=str(root), image_store=str(tmp_path / "store")))
    assert manifest.groupby("source").size().to_dict() == {"mapillary": 8, "natix": 8, "roadwork": 8}
    assert manifest["id"].is_unique and manifest["sha256"].is_unique, "each source draws its own scenes"
    with pytest.raises(DataLayoutError, match=r"expected natix data, but .*mapillary is in the mapillary layout"):
        ingest(IngestConfig(path=str(root), source="natix", image_store=str(tmp_path / "store")))


def test_layout_error_lists_every_layout(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.csv").write_text("a,b")
    with pytest.raises(DataLayoutError) as error:
        detect_layout(tmp_path / "other")
    for name in LAYOUTS:
        assert f"{name}: " in str(error.value)
