"""What the demo data is drawn from: its config, and the object kinds, conditions and size classes it names.

Why procedural data: the real NATIX data (about 10 GB) cannot be fetched on the project's machines, yet every
pipeline (ingest -> validate -> split -> train -> evaluate -> drift) must run end to end offline. The scenes
keep the task visual: a positive is marked only by drawn roadwork objects (down to a few pixels after a 224 px
resize), negatives carry orange look-alikes (hard negatives), and daytime and weather are rendered, not only
tagged. The names here are what the tests, the slices and the demo pre-training refer to.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from stage1_core.common.config import StrictConfig

ROADWORK_KINDS: tuple[str, ...] = ("cone", "barrier", "sign", "worker", "arrow_board")
HARD_NEGATIVE_KINDS: tuple[str, ...] = ("orange_car", "autumn_tree", "orange_clothes", "shop_sign")
DAYTIMES: tuple[str, ...] = ("day", "dusk", "night")
WEATHERS: tuple[str, ...] = ("clear", "rain", "fog", "snow")
ENVIRONMENTS: tuple[str, ...] = ("urban", "suburban", "highway", "rural")
SIZE_CLASSES: tuple[str, ...] = ("large", "medium", "small", "tiny")
# Largest roadwork object, in pixels after the short image side is resized to 224 (the validator's L0
# preprocessing). "tiny" objects are only a few pixels there: a whole-image 224 px model loses them.
SIZE_RANGES_224: dict[str, tuple[float, float]] = {
    "large": (40.0, 110.0),
    "medium": (16.0, 40.0),
    "small": (8.0, 16.0),
    "tiny": (3.0, 8.0),
}


class DemoDataConfig(StrictConfig):
    """How much demo data to draw, at which size, and from which distribution."""

    model_config = ConfigDict(frozen=True)

    seed: int = 0
    n_images: int = Field(default=800, ge=1)
    image_width: int = Field(default=640, ge=96)
    image_height: int = Field(default=480, ge=96)
    frames_per_sequence: int = Field(default=4, ge=1)
    positive_rate: float = Field(default=0.6, ge=0.0, le=1.0)
    test_fraction: float = Field(default=0.25, ge=0.0, lt=1.0)
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    progressive_share: float = Field(
        default=0.0, ge=0.0, le=1.0, description="share of the frames saved as progressive JPEGs (the rest baseline)"
    )
    exif_orientation_share: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="share of the frames stored turned, with the EXIF Orientation tag (3, 6 or 8) that turns them "
        "upright again, as phone cameras save photos; sizes, boxes and polygons stay those of the upright image",
    )
    rows_per_shard: int = Field(default=400, ge=1, description="parquet rows per shard file")
    row_group_rows: int = Field(
        default=100,
        ge=1,
        description="parquet rows per row group, the unit a reader decompresses at once: ingest's memory bound "
        "(datasets wrote image datasets with 100, its PARQUET_ROW_GROUP_SIZE_FOR_IMAGE_DATASETS)",
    )
    # "night_fog_city": mostly night and fog, in a city style absent from the unshifted data (drift demos).
    shift: Literal["none", "night_fog_city"] = "none"
    # "mapillary": single images (frames_per_sequence is not used) with v2.0 polygons; "roadwork": positives
    # only (positive_rate is not used), in ROADWork's COCO layout; "folder": roadwork/ and no_roadwork/ image
    # files (no split, no sequence ids). Each layout draws its own scenes.
    layout: Literal["natix", "mapillary", "roadwork", "folder"] = "natix"


def size_class_of(px_224: float) -> str:
    """Size class of an object whose largest side is ``px_224`` pixels after a 224 px short-side resize."""
    for name in SIZE_CLASSES:
        if px_224 >= SIZE_RANGES_224[name][0]:
            return name
    return "tiny"


def camera_photos(n_images: int, size: str, **settings: Any) -> DemoDataConfig:
    """Demo photos as phone cameras write them: ``size`` (WIDTHxHEIGHT, e.g. 4032x3024), half of them progressive
    JPEGs and half stored turned with an EXIF Orientation tag; the benchmarks' real-resolution data."""
    width, height = (int(side) for side in size.split("x"))
    return DemoDataConfig(
        n_images=n_images,
        seed=0,
        image_width=width,
        image_height=height,
        progressive_share=0.5,
        exif_orientation_share=0.5,
        **settings,
    )
