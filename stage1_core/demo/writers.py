"""The demo data written in each source layout, plus ``demo_truth.parquet``; the ``python -m`` command.

One writer per layout (NATIX parquet shards, Mapillary Vistas v2.0, ROADWork COCO), each drawing its files
with the layout constants of :mod:`stage1_core.data.sources`, so what the demo writes is what ingest reads.
``demo_truth.parquet`` records what was drawn, so evaluation can slice by object size and hard-negative kind
without changing the source layouts.

``python -m stage1_core.demo.writers OUT_DIR [--n-images N] [--seed S] [--shift night_fog_city] [--layout L]``
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import pyarrow as pa
import pyarrow.parquet as pq

from stage1_core.common.cli import EXIT_OK, configure_logging, run_command
from stage1_core.common.config import config_from_options
from stage1_core.data.sources.config import (
    MAPILLARY_CONCRETE_BLOCK,
    MAPILLARY_CURB,
    MAPILLARY_FENCE,
    MAPILLARY_GUARD_RAIL,
    MAPILLARY_LABELLED_SPLITS,
    MAPILLARY_POTHOLE,
    MAPILLARY_TEMPORARY_BARRIER,
    MAPILLARY_TEMPORARY_SIGN_BACK,
    MAPILLARY_TEMPORARY_SIGN_FRONT,
    MAPILLARY_TRAFFIC_CONE,
)
from stage1_core.data.sources.mapillary import MAPILLARY_CONFIG_FILE, MAPILLARY_IMAGES, MAPILLARY_POLYGONS
from stage1_core.data.sources.natix import NATIX_DATA_DIR, NATIX_SCHEMA, NATIX_SHARD_NAME
from stage1_core.data.sources.roadwork import (
    ROADWORK_ANNOTATION_FILE,
    ROADWORK_ANNOTATIONS,
    ROADWORK_IMAGES,
    ROADWORK_SCENE,
    ROADWORK_SPLITS,
    roadwork_file_name,
)
from stage1_core.demo.config import DemoDataConfig, size_class_of
from stage1_core.demo.render import RenderedFrame, render_frames
from stage1_core.demo.scenes import Scene, SequencePlan, plan_sequences
from stage1_core.demo.sprites import Box

logger = logging.getLogger(__name__)

TRUTH_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("split", pa.string()),
        pa.field("seq_id", pa.int64()),
        pa.field("label", pa.int64()),
        pa.field("object_kinds", pa.string()),  # visible roadwork kinds, sorted, comma-separated; "" if none
        pa.field("n_roadwork_objects", pa.int64()),  # visible roadwork objects
        pa.field("max_object_px", pa.int64()),  # largest visible roadwork object (bbox side), original pixels
        pa.field("max_object_px_224", pa.float64()),  # the same after resizing the short side to 224
        pa.field("size_class", pa.string()),  # large / medium / small / tiny; "none" on negatives
        pa.field("hard_negative_kind", pa.string()),  # orange look-alike drawn in the scene; "none" if none
    ]
)


def _shard_names(split: str, n_rows: int, rows_per_shard: int) -> list[str]:
    n = math.ceil(n_rows / rows_per_shard)
    return [NATIX_SHARD_NAME.format(split=split, index=i, count=n) for i in range(n)]


def _check_no_stale_files(folder: Path, pattern: str, planned: set[str]) -> None:
    stale = sorted(p.name for p in folder.glob(pattern) if p.name not in planned)
    if stale:
        raise FileExistsError(
            f"{folder} already holds files this run would not overwrite: {stale[:5]} ({len(stale)} in all); readers "
            "that list the folder would mix them with the new data. Remove them or choose another output directory."
        )


def generate_demo_dataset(out_dir: Path, config: DemoDataConfig) -> Path:
    """Draw the demo dataset into ``out_dir`` in ``config.layout``, plus ``demo_truth.parquet``.

    Same config -> byte-identical files. Rows are sorted by label within a split, like the real data;
    whole sequences stay in one split, and a split without rows (``test_fraction=0``) gets no files.
    NATIX: parquet shards; Mapillary v2.0: images, polygons (with the trap labels of road surfaces and
    permanent structures) and ``config_v2.0.json``; ROADWork: images and COCO annotations.

    Raises:
        FileExistsError: ``out_dir`` holds other data files that would mix with this run's.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_sequences(config)
    by_split = {
        split: sorted((p for p in plans if p.split == split), key=lambda p: (p.label, p.seq_id))
        for split in ("train", "test")
    }
    by_split = {split: seqs for split, seqs in by_split.items() if seqs}
    writer = {"natix": _write_natix, "mapillary": _write_mapillary, "roadwork": _write_roadwork}[config.layout]
    start = time.perf_counter()
    truth_rows = writer(out_dir, config, by_split)
    _write(truth_rows, out_dir / "demo_truth.parquet", TRUTH_SCHEMA)
    elapsed = time.perf_counter() - start
    logger.info(
        "demo dataset (%s layout): %d images in %.1f s (%.1f images/s) -> %s",
        config.layout,
        config.n_images,
        elapsed,
        config.n_images / elapsed,
        out_dir,
    )
    return out_dir


def generate_fused_demo(
    out_dir: Path, config: DemoDataConfig, images_per_layout: Mapping[str, int] | None = None
) -> Path:
    """One demo dataset per layout in ``out_dir/<layout>/``: the multi-source layout that ingest fuses.

    ``images_per_layout`` (layout -> number of images) sets the sources and their sizes; by default
    each of the three layouts gets ``config.n_images``. Each layout draws its own scenes from ``config.seed``.
    """
    counts = images_per_layout or {layout: config.n_images for layout in ("natix", "mapillary", "roadwork")}
    for layout, n_images in counts.items():
        generate_demo_dataset(
            Path(out_dir) / layout, config.model_copy(update={"layout": layout, "n_images": n_images})
        )
    return Path(out_dir)


def _write_natix(
    out_dir: Path, config: DemoDataConfig, by_split: dict[str, list[SequencePlan]]
) -> list[dict[str, Any]]:
    data_dir = out_dir / NATIX_DATA_DIR
    data_dir.mkdir(exist_ok=True)
    shards = {
        split: _shard_names(split, sum(p.n_frames for p in seqs), config.rows_per_shard)
        for split, seqs in by_split.items()
    }
    _check_no_stale_files(data_dir, "*.parquet", {name for names in shards.values() for name in names})
    remaining = {split: sum(p.n_frames for p in seqs) for split, seqs in by_split.items()}
    shard = dict.fromkeys(by_split, 0)
    truth_rows: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for frame in render_frames(config, by_split):
        rows.append(
            _natix_row(frame.scene, frame.t, frame.image_id, frame.jpeg, config.image_width, config.image_height)
        )
        truth_rows.append(_truth_row(frame, config))
        remaining[frame.split] -= 1
        if len(rows) == config.rows_per_shard or remaining[frame.split] == 0:
            _write(rows, data_dir / shards[frame.split][shard[frame.split]], NATIX_SCHEMA)
            rows, shard[frame.split] = [], shard[frame.split] + 1
    return truth_rows


# Demo sprite kind -> Mapillary Vistas v2.0 label. Vistas has no worker label, so a frame whose only
# visible roadwork is workers reads as a negative, as it would in the real data.
_MAPILLARY_OBJECT_LABELS: dict[str, str] = {
    "cone": MAPILLARY_TRAFFIC_CONE,
    "barrier": MAPILLARY_TEMPORARY_BARRIER,
    "sign": MAPILLARY_TEMPORARY_SIGN_FRONT,
    "arrow_board": MAPILLARY_TEMPORARY_SIGN_FRONT,
    "worker": "human--person--individual",
    "person": "human--person--individual",
    "car": "object--vehicle--car",
    "tree": "nature--vegetation",
    "lamp": "object--street-light",
    "traffic_sign": "object--traffic-sign--front",
    "roadside_sign": "object--sign--advertisement",
}
_MAPILLARY_REGION_LABELS: dict[str, str] = {
    "road": "construction--flat--road",
    "sidewalk": "construction--flat--sidewalk",
    "curb": MAPILLARY_CURB,
    "guard_rail": MAPILLARY_GUARD_RAIL,
    "fence": MAPILLARY_FENCE,
}
# Labels no demo polygon carries that config_v2.0.json still defines, as the real one does: the sky, and the
# ones the ingest config may name (the default hard negative, the opt-in jersey barrier, a temporary sign's back).
_MAPILLARY_EXTRA_LABELS = (
    "nature--sky",
    MAPILLARY_POTHOLE,
    MAPILLARY_CONCRETE_BLOCK,
    MAPILLARY_TEMPORARY_SIGN_BACK,
)
# The demo's train and test splits go to Vistas' labelled split folders.
_MAPILLARY_SPLITS = dict(zip(("train", "test"), MAPILLARY_LABELLED_SPLITS, strict=True))


def _mapillary_config() -> dict[str, Any]:
    names = sorted({*_MAPILLARY_OBJECT_LABELS.values(), *_MAPILLARY_REGION_LABELS.values(), *_MAPILLARY_EXTRA_LABELS})
    labels = []
    for index, name in enumerate(names):
        colour = [(index * 67) % 256, (index * 131) % 256, (index * 199) % 256]
        labels.append(
            {
                "name": name,
                "readable": name.rsplit("--", 1)[-1].replace("-", " ").title(),
                "color": colour,
                "instances": name.startswith(("object--", "human--")),
                "evaluate": True,
            }
        )
    return {
        "labels": labels,
        "version": "2.0",
        "mapping": "public",
        "folder_structure": "{split}/{content}/{key:.{22}}.{ext}",
    }


def _box_polygon(box: Box) -> list[list[float]]:
    x0, y0, x1, y1 = (round(value, 1) for value in box)
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _write_mapillary(
    out_dir: Path, config: DemoDataConfig, by_split: dict[str, list[SequencePlan]]
) -> list[dict[str, Any]]:
    folders = {
        split: (
            out_dir / _MAPILLARY_SPLITS[split] / MAPILLARY_IMAGES,
            out_dir / _MAPILLARY_SPLITS[split] / MAPILLARY_POLYGONS,
        )
        for split in by_split
    }
    for split, (images, polygons) in folders.items():
        images.mkdir(parents=True, exist_ok=True)
        polygons.mkdir(parents=True, exist_ok=True)
        ids = [f"demo{plan.first_id + t:07d}" for plan in by_split[split] for t in range(plan.n_frames)]
        _check_no_stale_files(images, "*.jpg", {f"{key}.jpg" for key in ids})
        _check_no_stale_files(polygons, "*.json", {f"{key}.json" for key in ids})
    (out_dir / MAPILLARY_CONFIG_FILE).write_text(json.dumps(_mapillary_config(), indent=1))
    truth_rows = []
    for frame in render_frames(config, by_split):
        images, polygons = folders[frame.split]
        key = f"demo{frame.image_id:07d}"
        (images / f"{key}.jpg").write_bytes(frame.jpeg)
        objects = [
            {"label": _MAPILLARY_REGION_LABELS[name], "polygon": [list(point) for point in polygon]}
            for name, polygon in frame.truth.regions
        ]
        objects += [
            {"label": _MAPILLARY_OBJECT_LABELS[kind], "polygon": _box_polygon(box)} for kind, box in frame.truth.objects
        ]
        document = {
            "width": config.image_width,
            "height": config.image_height,
            "objects": [{"id": index, **item} for index, item in enumerate(objects)],
        }
        (polygons / f"{key}.json").write_text(json.dumps(document))
        truth_rows.append(_truth_row(frame, config))
    return truth_rows


# Demo roadwork kinds -> ROADWork COCO category names (a subset of its 19 classes).
ROADWORK_CATEGORIES: dict[str, str] = {
    "cone": "Cone",
    "barrier": "Barrier",
    "sign": "Temporary Traffic Control Sign",
    "worker": "Worker",
    "arrow_board": "Arrow Board",
}
# The demo's train and test splits go to ROADWork's train and val annotation files.
_ROADWORK_SPLITS = dict(zip(("train", "test"), ROADWORK_SPLITS, strict=True))


def _write_roadwork(
    out_dir: Path, config: DemoDataConfig, by_split: dict[str, list[SequencePlan]]
) -> list[dict[str, Any]]:
    images_dir, annotations_dir = (
        out_dir / ROADWORK_SCENE / ROADWORK_IMAGES,
        out_dir / ROADWORK_SCENE / ROADWORK_ANNOTATIONS,
    )
    images_dir.mkdir(parents=True, exist_ok=True)
    annotations_dir.mkdir(parents=True, exist_ok=True)
    planned = {
        roadwork_file_name(plan.city, plan.seq_id, t)
        for plans in by_split.values()
        for plan in plans
        for t in range(plan.n_frames)
    }
    _check_no_stale_files(images_dir, "*.jpg", planned)
    _check_no_stale_files(
        annotations_dir,
        "*.json",
        {ROADWORK_ANNOTATION_FILE.format(split=_ROADWORK_SPLITS[split]) for split in by_split},
    )
    categories = [
        {"id": index + 1, "name": name, "supercategory": "roadwork"}
        for index, name in enumerate(ROADWORK_CATEGORIES.values())
    ]
    category_ids = {category["name"]: category["id"] for category in categories}
    documents = {split: {"images": [], "annotations": [], "categories": categories} for split in by_split}
    truth_rows = []
    for frame in render_frames(config, by_split):
        name = roadwork_file_name(frame.scene.plan.city, frame.scene.plan.seq_id, frame.t)
        (images_dir / name).write_bytes(frame.jpeg)
        lat, lon = frame.scene.gps
        document = documents[frame.split]
        document["images"].append(
            {
                "id": frame.image_id,
                "file_name": name,
                "width": config.image_width,
                "height": config.image_height,
                "gps": [round(lat, 6), round(lon, 6)],
                "scene_description": frame.scene.description,
            }
        )
        for kind, (x0, y0, x1, y1) in frame.truth.objects:
            if kind in ROADWORK_CATEGORIES:
                document["annotations"].append(
                    {
                        "id": len(document["annotations"]) + 1,
                        "image_id": frame.image_id,
                        "category_id": category_ids[ROADWORK_CATEGORIES[kind]],
                        "bbox": [round(x0, 1), round(y0, 1), round(x1 - x0, 1), round(y1 - y0, 1)],
                        "area": round((x1 - x0) * (y1 - y0), 1),
                        "iscrowd": 0,
                        "attributes": {},
                    }
                )
        truth_rows.append(_truth_row(frame, config))
    for split, document in documents.items():
        (annotations_dir / ROADWORK_ANNOTATION_FILE.format(split=_ROADWORK_SPLITS[split])).write_text(
            json.dumps(document)
        )
    return truth_rows


def _natix_row(scene: Scene, t: int, image_id: int, jpeg: bytes, width: int, height: int) -> dict[str, Any]:
    plan = scene.plan
    lat, lon = scene.gps
    return {
        "image": {"bytes": jpeg, "path": f"demo_{image_id:06d}.jpg"},
        "id": image_id,
        "width": width,
        "height": height,
        "license": 1,
        "flickr_url": float("nan"),
        "coco_url": float("nan"),
        "date_captured": scene.captured + t,
        "gps": f"{lat + t * 2e-5:.6f},{lon + t * 2e-5:.6f}",
        "city_name": plan.city,
        "scene_description": scene.description,
        "video_info.frame_id": f"{t:06d}",
        "video_info.seq_id": plan.seq_id,
        "video_info.vid_id": f"demo-{plan.seq_id:06d}",
        "scene_level_tags.daytime": plan.daytime,
        "scene_level_tags.scene_environment": plan.environment,
        "scene_level_tags.travel_alteration": scene.travel_alteration,
        "scene_level_tags.weather": plan.weather,
        "label": plan.label,
    }


def _truth_row(frame: RenderedFrame, config: DemoDataConfig) -> dict[str, Any]:
    scene, truth = frame.scene, frame.truth
    px_224 = truth.max_px * 224.0 / min(config.image_width, config.image_height)
    return {
        "id": frame.image_id,
        "split": scene.plan.split,
        "seq_id": scene.plan.seq_id,
        "label": scene.plan.label,
        "object_kinds": ",".join(truth.kinds),
        "n_roadwork_objects": truth.n_objects,
        "max_object_px": truth.max_px,
        "max_object_px_224": px_224,
        "size_class": size_class_of(px_224) if truth.n_objects else "none",
        "hard_negative_kind": scene.hard_negative,
    }


def _write(rows: list[dict[str, Any]], path: Path, schema: pa.Schema) -> None:
    columns = [pa.array([row[f.name] for row in rows], type=f.type) for f in schema]
    pq.write_table(pa.Table.from_arrays(columns, schema=schema), path)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: draw the demo dataset into OUT_DIR, in one layout or fused.

    ``python -m stage1_core.demo.writers OUT_DIR [--n-images N] [--seed S] [--shift night_fog_city] [--layout L]``
    """
    defaults = DemoDataConfig()
    parser = argparse.ArgumentParser(description="Draw the procedural demo dataset in the NATIX parquet layout.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-images", type=int, default=defaults.n_images)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--shift", choices=get_args(DemoDataConfig.model_fields["shift"].annotation), default=defaults.shift
    )
    parser.add_argument(
        "--layout",
        choices=[*get_args(DemoDataConfig.model_fields["layout"].annotation), "fused"],
        default=defaults.layout,
        help="fused: one subfolder per layout (a multi-source dataset)",
    )
    args = parser.parse_args(argv)
    configure_logging()

    def draw() -> int:
        layout = {} if args.layout == "fused" else {"layout": args.layout}
        config = config_from_options(DemoDataConfig, seed=args.seed, n_images=args.n_images, shift=args.shift, **layout)
        if args.layout == "fused":
            generate_fused_demo(args.out_dir, config)
        else:
            generate_demo_dataset(args.out_dir, config)
        return EXIT_OK

    return run_command("demo.writers", draw)


if __name__ == "__main__":
    sys.exit(main())
