"""Tests of the procedural demo dataset: NATIX layout and schema, consistency rules, determinism,
rendered daytime/weather, and that the roadwork objects are the only difference between the classes."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import ValidationError

from stage1_core.demo.config import (
    DAYTIMES,
    ENVIRONMENTS,
    HARD_NEGATIVE_KINDS,
    ROADWORK_KINDS,
    WEATHERS,
    DemoDataConfig,
    size_class_of,
)
from stage1_core.demo.render import _FOG_RGB, _render_frame
from stage1_core.demo.scenes import SequencePlan, build_scene
from stage1_core.demo.writers import generate_demo_dataset, main

WIDTH, HEIGHT = 160, 120
TINY = DemoDataConfig(n_images=24, image_width=WIDTH, image_height=HEIGHT, rows_per_shard=10, seed=11)

# The NATIX dataset card's columns, in order, written out here rather than imported so a drift in the
# generator's schema fails the test.
NATIX_COLUMNS = [
    ("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
    ("id", pa.int64()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("license", pa.int64()),
    ("flickr_url", pa.float64()),
    ("coco_url", pa.float64()),
    ("date_captured", pa.int64()),
    ("gps", pa.string()),
    ("city_name", pa.string()),
    ("scene_description", pa.string()),
    ("video_info.frame_id", pa.string()),
    ("video_info.seq_id", pa.int64()),
    ("video_info.vid_id", pa.string()),
    ("scene_level_tags.daytime", pa.string()),
    ("scene_level_tags.scene_environment", pa.string()),
    ("scene_level_tags.travel_alteration", pa.string()),
    ("scene_level_tags.weather", pa.string()),
    ("label", pa.int64()),
]


def _read_split(root: Path, split: str) -> pd.DataFrame:
    files = sorted((root / "data").glob(f"{split}-*.parquet"))
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"), TINY)


@pytest.fixture(scope="module")
def rows(tiny: Path) -> pd.DataFrame:
    return pd.concat(
        [_read_split(tiny, "train").assign(split="train"), _read_split(tiny, "test").assign(split="test")],
        ignore_index=True,
    )


def test_files_follow_the_natix_shard_layout(tiny: Path) -> None:
    names = sorted(p.name for p in (tiny / "data").iterdir())
    # 6 sequences of 4 frames; 1 positive and 1 negative sequence go to test; 10 rows per shard.
    assert names == ["test-00000-of-00001.parquet", "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert (tiny / "demo_truth.parquet").is_file()


def test_every_shard_has_exactly_the_natix_columns_and_types(tiny: Path) -> None:
    for shard in sorted((tiny / "data").glob("*.parquet")):
        schema = pq.read_schema(shard)
        assert [(f.name, f.type) for f in schema] == NATIX_COLUMNS, shard.name
        assert "video_info" not in schema.names  # dotted names are flat columns, not structs


def test_rows_are_sorted_by_label_within_each_split(tiny: Path) -> None:
    for split in ("train", "test"):
        labels = _read_split(tiny, split)["label"].tolist()
        assert labels == sorted(labels), split
        assert set(labels) == {0, 1}, split


def test_scene_description_is_set_exactly_on_roadwork_rows(rows: pd.DataFrame) -> None:
    described = rows["scene_description"].str.len() > 0
    assert (described == (rows["label"] == 1)).all()
    assert ((rows["scene_level_tags.travel_alteration"] == "none") == (rows["label"] == 0)).all()
    assert rows["flickr_url"].isna().all() and rows["coco_url"].isna().all()


def test_sequences_share_label_split_and_scene_with_ordered_frames(rows: pd.DataFrame) -> None:
    tags = [
        "label",
        "split",
        "city_name",
        "scene_level_tags.daytime",
        "scene_level_tags.weather",
        "scene_level_tags.scene_environment",
        "video_info.vid_id",
    ]
    for seq_id, frames in rows.sort_values("id").groupby("video_info.seq_id"):
        assert (frames[tags].nunique() == 1).all(), f"sequence {seq_id} mixes {frames[tags].nunique().to_dict()}"
        assert frames["video_info.frame_id"].tolist() == [f"{i:06d}" for i in range(len(frames))]
        assert frames["date_captured"].is_monotonic_increasing
    assert rows["video_info.seq_id"].value_counts().eq(TINY.frames_per_sequence).all()
    assert rows["id"].is_unique and len(rows) == TINY.n_images


def test_frames_of_a_sequence_are_near_duplicates_but_not_identical(rows: pd.DataFrame) -> None:
    first_seq = rows.sort_values("id").groupby("video_info.seq_id").head(2).head(2)
    a, b = (np.asarray(Image.open(io.BytesIO(img["bytes"])), dtype=float) for img in first_seq["image"])
    other = rows[rows["video_info.seq_id"] != first_seq["video_info.seq_id"].iloc[0]].iloc[0]
    c = np.asarray(Image.open(io.BytesIO(other["image"]["bytes"])), dtype=float)
    assert 0 < np.abs(a - b).mean() < np.abs(a - c).mean() / 2


def test_tags_take_documented_values(rows: pd.DataFrame) -> None:
    assert set(rows["scene_level_tags.daytime"]) <= set(DAYTIMES)
    assert set(rows["scene_level_tags.weather"]) <= set(WEATHERS)
    assert set(rows["scene_level_tags.scene_environment"]) <= set(ENVIRONMENTS)
    for gps in rows["gps"]:
        lat, lon = (float(v) for v in gps.split(","))
        assert -90 <= lat <= 90 and -180 <= lon <= 180


def test_images_decode_as_jpeg_at_the_configured_size(rows: pd.DataFrame) -> None:
    for _, row in rows.iterrows():
        image = Image.open(io.BytesIO(row["image"]["bytes"]))
        assert image.format == "JPEG"
        assert image.size == (WIDTH, HEIGHT) == (row["width"], row["height"])
        image.load()


def test_truth_matches_what_was_drawn(tiny: Path, rows: pd.DataFrame) -> None:
    truth = pq.read_table(tiny / "demo_truth.parquet").to_pandas()
    merged = rows[["id", "label", "split"]].merge(truth, on="id", suffixes=("", "_truth"))
    assert len(merged) == len(rows) == len(truth)
    assert (merged["label"] == merged["label_truth"]).all() and (merged["split"] == merged["split_truth"]).all()
    positives, negatives = merged[merged["label"] == 1], merged[merged["label"] == 0]
    assert (positives["n_roadwork_objects"] >= 1).all()
    assert (negatives["n_roadwork_objects"] == 0).all() and (negatives["size_class"] == "none").all()
    for _, row in positives.iterrows():
        assert set(row["object_kinds"].split(",")) <= set(ROADWORK_KINDS)
        assert row["max_object_px_224"] == pytest.approx(row["max_object_px"] * 224 / min(WIDTH, HEIGHT))
        assert row["size_class"] == size_class_of(row["max_object_px_224"])
    assert set(truth["hard_negative_kind"]) <= {"none", *HARD_NEGATIVE_KINDS}


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tiny: Path, tmp_path: Path) -> None:
    again = generate_demo_dataset(tmp_path / "again", TINY)
    assert _all_bytes(again) == _all_bytes(tiny)
    other = generate_demo_dataset(tmp_path / "other", TINY.model_copy(update={"seed": TINY.seed + 1}))
    ours, theirs = _read_split(tiny, "train"), _read_split(other, "train")
    assert not set(i["bytes"] for i in ours["image"]) & set(i["bytes"] for i in theirs["image"])


def test_shifted_batch_is_darker_foggier_and_from_an_unseen_city(tmp_path: Path) -> None:
    config = DemoDataConfig(n_images=80, image_width=96, image_height=96, frames_per_sequence=4, seed=5)
    frames = {}
    for shift in ("none", "night_fog_city"):
        root = generate_demo_dataset(tmp_path / shift, config.model_copy(update={"shift": shift}))
        frames[shift] = pd.concat([_read_split(root, "train"), _read_split(root, "test")])
    base, shifted = frames["none"], frames["night_fog_city"]
    for column, value in (("scene_level_tags.daytime", "night"), ("scene_level_tags.weather", "fog")):
        assert (shifted[column] == value).mean() > (base[column] == value).mean() + 0.25, column
    assert not set(shifted["city_name"]) & set(base["city_name"])


def _plan(**changes: object) -> SequencePlan:
    plan = SequencePlan(
        seq_id=0,
        first_id=0,
        n_frames=1,
        label=1,
        split="train",
        city="Berlin",
        environment="urban",
        daytime="day",
        weather="clear",
        size_class="medium",
        hard_negative="none",
    )
    return dataclasses.replace(plan, **changes)


def _render(plan: SequencePlan, seed: int = 3) -> tuple[np.ndarray, int]:
    """Pixels (floats) and horizon row of one 320x240 frame; one seed draws the same street for any plan."""
    rng = np.random.default_rng(seed)
    scene = build_scene(plan, 320, 240, rng)
    image, _ = _render_frame(scene, 0, 320, 240, rng)
    return np.asarray(image, dtype=float), round(scene.horizon)


def test_daytime_and_weather_are_rendered_not_only_tagged() -> None:
    day, dusk, night = (_render(_plan(daytime=d))[0] for d in DAYTIMES)
    assert night.mean() < 0.5 * day.mean()
    warmth = [img[..., 0].mean() / img[..., 2].mean() for img in (day, dusk)]
    assert warmth[1] > warmth[0] + 0.15  # dusk light is warm
    (clear, horizon), (rain, _), (fog, _), (snow, _) = (_render(_plan(weather=w)) for w in WEATHERS)
    distance = (slice(horizon - 15, horizon + 15), slice(107, 213))  # the far middle of the street
    haze = np.array(_FOG_RGB["day"], dtype=float)
    assert np.abs(fog[distance] - haze).mean() < 0.65 * np.abs(clear[distance] - haze).mean()
    white = [(img.min(axis=-1) > 215).mean() for img in (clear, snow)]
    assert white[1] > white[0] + 0.15  # snow on the ground and in the air
    road = (slice(200, 240), slice(120, 200))
    assert rain[road].mean() < clear[road].mean() - 5  # wet, darker asphalt


@pytest.mark.parametrize("environment", ["urban", "highway"])
@pytest.mark.parametrize("size_class", ["large", "tiny"])
def test_roadwork_objects_are_the_only_difference_between_classes(environment: str, size_class: str) -> None:
    """Negatives plan the same (undrawn) cluster and keep it unoccluded, so with one seed the two
    labels render the same street: the drawn roadwork is the whole positive cue."""
    for seed in range(4):
        plan = _plan(size_class=size_class, environment=environment)
        positive, negative = (_render(dataclasses.replace(plan, label=label), seed)[0] for label in (1, 0))
        changed = np.abs(positive - negative).max(axis=-1) > 0
        assert 0 < changed.mean() < (0.25 if size_class == "large" else 0.01), f"seed {seed}: {changed.mean():.3f}"
        _, cols = np.nonzero(changed)
        assert ((cols >= 40) & (cols < 280)).any()  # inside the 240 px centre square of the 320x240 frame


def test_size_classes_follow_pixels_after_a_224_resize() -> None:
    assert [size_class_of(v) for v in (120.0, 40.0, 39.9, 16.0, 8.0, 7.9, 1.0)] == [
        "large",
        "large",
        "medium",
        "medium",
        "small",
        "tiny",
        "tiny",
    ]


def test_refuses_to_mix_with_stale_shards(tmp_path: Path) -> None:
    generate_demo_dataset(tmp_path, TINY.model_copy(update={"n_images": 8, "rows_per_shard": 2}))
    with pytest.raises(FileExistsError, match="train-00000-of-00004.parquet"):
        generate_demo_dataset(tmp_path, TINY.model_copy(update={"n_images": 8}))


def test_cli_writes_the_requested_number_of_images(tmp_path: Path) -> None:
    main([str(tmp_path), "--n-images", "6", "--seed", "2", "--shift", "night_fog_city"])
    truth = pq.read_table(tmp_path / "demo_truth.parquet").to_pandas()
    assert len(truth) == 6 and truth["id"].is_unique
    natix = _read_split(tmp_path, "train")
    assert set(natix["city_name"]) == {"Marrakesh"}
    assert math.isclose(natix["width"].iloc[0] / natix["height"].iloc[0], 640 / 480)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValidationError):
        DemoDataConfig(n_images=0)
    with pytest.raises(ValidationError):
        DemoDataConfig(shift="sunny")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        DemoDataConfig(positive_rate=1.5)


def test_mapillary_layout_has_config_images_and_polygons_with_traps(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path / "vistas", TINY.model_copy(update={"layout": "mapillary"}))
    config = json.loads((root / "config_v2.0.json").read_text())
    names = {label["name"] for label in config["labels"]}
    assert all(set(label) >= {"name", "readable", "color", "instances", "evaluate"} for label in config["labels"])
    assert {
        "object--traffic-cone",
        "construction--flat--road",
        "construction--barrier--curb",
        "object--pothole",
    } <= names
    truth = pq.read_table(root / "demo_truth.parquet").to_pandas().set_index("id")
    images = sorted(root.glob("*/images/*.jpg"))
    assert len(images) == TINY.n_images and truth["seq_id"].is_unique, "Vistas images are single frames"
    for image in images:
        document = json.loads((image.parent.parent / "v2.0" / "polygons" / f"{image.stem}.json").read_text())
        assert (document["width"], document["height"]) == (WIDTH, HEIGHT) == Image.open(image).size
        labels = [item["label"] for item in document["objects"]]
        assert set(labels) <= names and "construction--flat--road" in labels
        for item in document["objects"]:
            xs, ys = zip(*item["polygon"])
            assert len(xs) >= 3 and 0 <= min(xs) <= max(xs) <= WIDTH and 0 <= min(ys) <= max(ys) <= HEIGHT
        kinds = set(filter(None, truth.at[int(image.stem[4:]), "object_kinds"].split(",")))
        assert ("object--traffic-cone" in labels) == ("cone" in kinds)
        assert ("construction--barrier--temporary" in labels) == ("barrier" in kinds)


def test_roadwork_layout_is_coco_positives_named_by_sequence(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path / "roadwork", TINY.model_copy(update={"layout": "roadwork"}))
    truth = pq.read_table(root / "demo_truth.parquet").to_pandas().set_index("id")
    assert (truth["label"] == 1).all()
    documents = {path.name: json.loads(path.read_text()) for path in (root / "scene" / "annotations").glob("*.json")}
    assert sorted(documents) == ["instances_train_gps_split.json", "instances_val_gps_split.json"]
    for document in documents.values():
        categories = {category["id"]: category["name"] for category in document["categories"]}
        for image in document["images"]:
            city, seq, frame = image["file_name"][:-4].split("_")
            assert (
                int(seq) == truth.at[image["id"], "seq_id"]
                and (root / "scene" / "images" / image["file_name"]).is_file()
            )
            assert len(image["gps"]) == 2 and image["scene_description"]
        for annotation in document["annotations"]:
            x, y, w, h = annotation["bbox"]
            assert categories[annotation["category_id"]] in {
                "Cone",
                "Barrier",
                "Temporary Traffic Control Sign",
                "Worker",
                "Arrow Board",
            }
            assert x >= 0 and y >= 0 and w >= 1 and h >= 1 and x + w <= WIDTH + 0.1 and y + h <= HEIGHT + 0.1
        annotated = {annotation["image_id"] for annotation in document["annotations"]}
        visible = {image["id"] for image in document["images"] if truth.at[image["id"], "n_roadwork_objects"] > 0}
        assert annotated == visible


def test_cli_writes_a_fused_dataset(tmp_path: Path) -> None:
    main([str(tmp_path), "--n-images", "4", "--layout", "fused"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mapillary", "natix", "roadwork"]
    assert (tmp_path / "mapillary" / "config_v2.0.json").is_file() and (tmp_path / "roadwork" / "scene").is_dir()
