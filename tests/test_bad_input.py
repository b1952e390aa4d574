"""Bad input end to end: every case is ingested, then ends in quarantine with its reason (or in a clear
error), and the counts add up: ingested = valid + quarantined."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from stage1_core.common.manifest import MANIFEST_COLUMNS
from stage1_core.data.ingest import ingest
from stage1_core.data.sources.base import DataLayoutError
from stage1_core.data.sources.config import IngestConfig
from stage1_core.data.validation import DataValidationError, ValidationConfig, validate_manifest
from stage1_core.demo.config import DemoDataConfig
from stage1_core.demo.writers import generate_demo_dataset

LENIENT = ValidationConfig(max_failure_rate=1.0, min_positive_rate=0.0, max_positive_rate=1.0)


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _scene(size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A small image with structure (a flat colour would make every pHash alike)."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    image.paste((220, 90, 30), (20, 30, 60, 90))
    return image


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` in its header but holds no pixel data: opening it is cheap,
    decoding it is not possible."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def _ingest_and_validate(path: Path, tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    manifest = ingest(IngestConfig(path=str(path), image_store=str(tmp_path / "store")))
    result = validate_manifest(manifest, LENIENT)
    assert len(manifest) == len(result.valid) + len(result.quarantine) == result.report.n_ingested
    assert sorted(result.valid["uri"].tolist() + result.quarantine["uri"].tolist()) == sorted(manifest["uri"])
    return manifest, result.valid, result.quarantine.set_index("id")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A plain-folder dataset with one file per bad-image case, and good images around them."""
    root = tmp_path / "data"
    (root / "roadwork").mkdir(parents=True)
    (root / "no_roadwork").mkdir()
    jpeg = _encode(_scene(), "JPEG")
    huffman = jpeg.index(b"\xff\xc4")
    rotated = _scene((200, 100))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": the upright image is 100 wide, 200 high
    files = {
        "roadwork/good.jpg": jpeg,
        "no_roadwork/good.png": _encode(_scene((150, 110)).transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"),
        "roadwork/corrupt.jpg": jpeg[: huffman + 4] + b"\xff" * 40 + jpeg[huffman + 44 :],
        "roadwork/truncated.jpg": jpeg[: len(jpeg) // 2],
        "roadwork/empty.jpg": b"",
        "no_roadwork/grey.png": _encode(_scene((140, 100)).convert("L"), "PNG"),
        "no_roadwork/cmyk.jpg": _encode(_scene((130, 100)).rotate(90, expand=True).convert("CMYK"), "JPEG"),
        "no_roadwork/rgba.png": _encode(_scene((120, 100)).rotate(180).convert("RGBA"), "PNG"),
        "no_roadwork/deep.png": _encode(Image.linear_gradient("L").resize((120, 90)).convert("I;16"), "PNG"),
        "roadwork/rotated.jpg": _encode(rotated, "JPEG", exif=exif),
        "roadwork/huge.png": _png_header_only(10_000, 6_000),
        "roadwork/.DS_Store": b"finder junk",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def test_bad_image_files_are_quarantined_with_their_reason(folder: Path, tmp_path: Path) -> None:
    manifest, valid, quarantine = _ingest_and_validate(folder, tmp_path)
    assert len(manifest) == 11, "every visible file is a row; the hidden .DS_Store is not an image of the dataset"
    reasons = quarantine["reason"].to_dict()
    assert "image not decodable: not an image Pillow can read" in reasons["folder:roadwork/corrupt.jpg"]
    assert "truncated" in reasons["folder:roadwork/truncated.jpg"].lower()
    assert "image not decodable: empty file (0 bytes)" in reasons["folder:roadwork/empty.jpg"]
    assert "60.0 megapixels, above the 50 limit: not decoded" in reasons["folder:roadwork/huge.png"]
    assert "image larger than 50 megapixels" in reasons["folder:roadwork/huge.png"]
    assert quarantine.loc["folder:roadwork/huge.png", ["width", "height"]].tolist() == [10_000, 6_000], (
        "size from the header"
    )
    assert sorted(quarantine.index) == sorted(
        f"folder:{name}"
        for name in [
            "roadwork/corrupt.jpg",
            "roadwork/truncated.jpg",
            "roadwork/empty.jpg",
            "roadwork/huge.png",
        ]
    )


def test_grey_16_bit_cmyk_and_rgba_are_accepted_and_converted_by_rule(folder: Path, tmp_path: Path) -> None:
    _, valid, _ = _ingest_and_validate(folder, tmp_path)
    modes = valid.set_index("id")["extras"].map(lambda extras: json.loads(extras)["mode"])
    assert modes["folder:no_roadwork/grey.png"] == "L"
    assert modes["folder:no_roadwork/deep.png"] == "I;16", "16-bit grey is scaled to 8 bits by the one decoder"
    assert modes["folder:no_roadwork/cmyk.jpg"] == "CMYK"
    assert modes["folder:no_roadwork/rgba.png"] == "RGBA"
    assert (valid["phash"].str.len() == 16).all() and valid["phash"].is_unique


def test_exif_orientation_is_applied_to_width_and_height(folder: Path, tmp_path: Path) -> None:
    _, valid, _ = _ingest_and_validate(folder, tmp_path)
    rotated = valid.set_index("id").loc["folder:roadwork/rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (100, 200)
    with Image.open(rotated["uri"]) as image:
        assert image.size == (200, 100), "the stored file keeps its bytes; orientation is applied when it is read"


def _natix_table(demo: Path) -> pa.Table:
    return pq.read_table(sorted((demo / "data").glob("train-*.parquet"))[0])


@pytest.fixture(scope="module")
def small_natix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = DemoDataConfig(
        n_images=8, seed=4, image_width=128, image_height=96, frames_per_sequence=2, test_fraction=0.0
    )
    return generate_demo_dataset(tmp_path_factory.mktemp("natix"), config)


def _write_natix(table: pa.Table, root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    pq.write_table(table, root / "data" / "train-00000-of-00001.parquet")
    return root


def test_label_outside_0_1_and_duplicate_ids_are_quarantined(small_natix: Path, tmp_path: Path) -> None:
    table = _natix_table(small_natix)
    labels = table.column("label").to_pylist()
    labels[0] = 2
    ids = table.column("id").to_pylist()
    ids[3] = ids[2]
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.int64()))
    table = table.set_column(table.schema.get_field_index("id"), "id", pa.array(ids, pa.int64()))
    manifest, valid, quarantine = _ingest_and_validate(_write_natix(table, tmp_path / "natix"), tmp_path)
    assert len(manifest) == table.num_rows
    first_id, dup_id = f"natix:train:{ids[0]}", f"natix:train:{ids[2]}"
    assert "label not in {0, 1}" in quarantine.loc[first_id, "reason"]
    assert "duplicate id; the first row with it (row 2) is kept" in quarantine.loc[dup_id, "reason"]
    assert (valid["id"] == dup_id).sum() == 1, "the first row of a duplicated id is kept"


def test_missing_natix_column_is_a_clear_error(small_natix: Path, tmp_path: Path) -> None:
    table = _natix_table(small_natix).drop_columns(["label"])
    root = _write_natix(table, tmp_path / "natix")
    with pytest.raises(DataLayoutError, match=r"train-00000-of-00001.parquet: NATIX columns \['label'\] are missing"):
        ingest(IngestConfig(path=str(root), image_store=str(tmp_path / "store")))


def test_missing_manifest_columns_quarantine_every_row_and_stop(small_natix: Path, tmp_path: Path) -> None:
    manifest = ingest(IngestConfig(path=str(small_natix), image_store=str(tmp_path / "store")))
    with pytest.raises(DataValidationError, match=r"missing columns \['gps', 'weather'\]") as error:
        validate_manifest(manifest.drop(columns=["gps", "weather"]), LENIENT)
    result = error.value.result
    assert len(result.quarantine) == len(manifest) and len(result.valid) == 0
    assert set(MANIFEST_COLUMNS) - set(result.quarantine.columns) == {"gps", "weather"}


def test_mapillary_image_without_polygons_is_quarantined(tmp_path: Path) -> None:
    root = generate_demo_dataset(
        tmp_path / "vistas",
        DemoDataConfig(layout="mapillary", n_images=6, seed=1, image_width=128, image_height=96, test_fraction=0.0),
    )
    polygons = sorted((root / "training" / "v2.0" / "polygons").glob("*.json"))
    polygons[0].unlink()
    polygons[1].write_text("{not json")
    manifest, valid, quarantine = _ingest_and_validate(root, tmp_path)
    assert len(manifest) == 6 and len(valid) == 4
    missing, unreadable = (f"mapillary:training:{path.stem}" for path in polygons[:2])
    assert (
        f"source adapter reported a problem: polygons file {polygons[0]} is missing"
        in quarantine.loc[missing, "reason"]
    )
    assert "is unreadable (JSONDecodeError" in quarantine.loc[unreadable, "reason"]
    assert quarantine.loc[missing, "label"] == -1


def test_a_wholly_bad_source_stops_the_run_with_counts(folder: Path, tmp_path: Path) -> None:
    shutil.rmtree(folder / "no_roadwork")
    (folder / "no_roadwork").mkdir()
    (folder / "no_roadwork" / "x.jpg").write_bytes(b"")
    manifest = ingest(IngestConfig(path=str(folder), image_store=str(tmp_path / "store")))
    with pytest.raises(DataValidationError, match=r"rows quarantined \(rate .*bound 20%\)") as error:
        validate_manifest(manifest, ValidationConfig())
    report = error.value.result.report
    assert report.n_ingested == len(manifest) == report.n_valid + report.n_quarantined
