"""Procedural street scenes in the exact NATIX roadwork parquet layout, for demos and tests.

Why: the real NATIX data (about 10 GB) cannot be fetched on the project's machines, yet every pipeline
(ingest -> validate -> split -> train -> evaluate -> drift) must run end to end offline. The scenes keep
the task visual: a positive is marked only by drawn roadwork objects (down to a few pixels after a 224 px
resize), negatives carry orange look-alikes (hard negatives), and daytime and weather are rendered, not
only tagged. ``demo_truth.parquet`` records what was drawn, so evaluation can slice by object size and
hard-negative kind without changing the NATIX layout.

Geometry: a pinhole camera 1.5 m above a flat ground plane. Depth ``z`` is measured in units of the
distance at which the ground meets the bottom image row (about 5 m), so a ground point at depth ``z``
appears at ``horizon + (H - horizon) / z`` and an object there is drawn at ``(H - horizon) / (1.5 z)``
pixels per metre. Objects are flat "billboards" drawn far to near (painter's algorithm).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageChops, ImageDraw
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]
Point = tuple[float, float]

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

_IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
_NATIX_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("image", _IMAGE_TYPE),
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
)


def _hf_features() -> dict[str, Any]:
    """The ``huggingface`` schema metadata, so ``datasets`` decodes ``image`` as an Image feature."""
    features: dict[str, Any] = {"image": {"_type": "Image"}}
    for name, dtype in _NATIX_FIELDS[1:]:
        features[name] = {"dtype": str(dtype).replace("double", "float64"), "_type": "Value"}
    return {"info": {"features": features}}


NATIX_SCHEMA: pa.Schema = pa.schema(
    [pa.field(name, dtype) for name, dtype in _NATIX_FIELDS],
    metadata={"huggingface": json.dumps(_hf_features())},
)
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

_CAM_HEIGHT_M = 1.5
_EPOCH_2024 = 1_704_067_200  # 2024-01-01T00:00:00Z


class DemoDataConfig(BaseModel):
    """How much demo data to draw, at which size, and from which distribution."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    n_images: int = Field(default=800, ge=1)
    image_width: int = Field(default=640, ge=96)
    image_height: int = Field(default=480, ge=96)
    frames_per_sequence: int = Field(default=4, ge=1)
    positive_rate: float = Field(default=0.6, ge=0.0, le=1.0)
    test_fraction: float = Field(default=0.25, ge=0.0, lt=1.0)
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    rows_per_shard: int = Field(default=400, ge=1, description="parquet rows per shard file")
    # "night_fog_city": mostly night and fog, in a city style absent from the unshifted data (drift demos).
    shift: Literal["none", "night_fog_city"] = "none"
    # "mapillary": single images (frames_per_sequence is not used) with v2.0 polygons; "roadwork": positives
    # only (positive_rate is not used), in ROADWork's COCO layout. Each layout draws its own scenes.
    layout: Literal["natix", "mapillary", "roadwork"] = "natix"


def size_class_of(px_224: float) -> str:
    """Size class of an object whose largest side is ``px_224`` pixels after a 224 px short-side resize."""
    for name in SIZE_CLASSES:
        if px_224 >= SIZE_RANGES_224[name][0]:
            return name
    return "tiny"


# ----------------------------------------------------------------------------------------------------
# Styles and distributions
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CityStyle:
    lat: float
    lon: float
    facades: tuple[RGB, ...]
    windows: RGB
    floors: tuple[int, int]
    roofs: tuple[RGB, ...]
    sidewalk: RGB
    asphalt: RGB
    terrain: RGB
    foliage: tuple[RGB, ...]
    tree: Literal["broadleaf", "palm", "pine"]
    signs: tuple[RGB, ...]  # everyday shop-sign colours (never orange: orange ones are hard negatives)
    lanes: tuple[int, int]


_CITIES: dict[str, _CityStyle] = {
    "Berlin": _CityStyle(
        52.520,
        13.405,
        ((222, 212, 192), (196, 192, 184), (184, 166, 146), (232, 224, 204), (168, 164, 160)),
        (60, 70, 80),
        (4, 6),
        ((90, 90, 95), (120, 80, 70)),
        (165, 160, 155),
        (86, 86, 90),
        (96, 124, 72),
        ((62, 102, 52), (84, 122, 60), (48, 86, 44)),
        "broadleaf",
        ((40, 80, 160), (30, 120, 80), (235, 235, 235)),
        (2, 4),
    ),
    "Lisbon": _CityStyle(
        38.722,
        -9.139,
        ((238, 216, 140), (232, 182, 172), (160, 188, 214), (244, 238, 228), (200, 220, 190)),
        (70, 60, 55),
        (3, 5),
        ((150, 90, 70), (120, 70, 60)),
        (216, 210, 194),
        (78, 75, 72),
        (140, 138, 82),
        ((92, 122, 58), (70, 104, 50), (120, 140, 70)),
        "broadleaf",
        ((30, 60, 130), (240, 240, 230), (90, 40, 120)),
        (2, 3),
    ),
    "Tokyo": _CityStyle(
        35.681,
        139.692,
        ((212, 212, 206), (182, 186, 192), (150, 152, 158), (230, 228, 220), (120, 126, 134)),
        (110, 140, 170),
        (5, 10),
        ((100, 100, 105), (130, 130, 135)),
        (150, 150, 150),
        (96, 96, 102),
        (90, 118, 70),
        ((70, 110, 60), (56, 96, 52), (90, 130, 70)),
        "broadleaf",
        ((30, 90, 190), (20, 140, 90), (245, 245, 245), (120, 60, 160)),
        (2, 4),
    ),
    "Phoenix": _CityStyle(
        33.448,
        -112.074,
        ((216, 190, 150), (200, 170, 132), (230, 216, 186), (186, 160, 126)),
        (60, 80, 100),
        (1, 2),
        ((170, 150, 120), (140, 120, 100)),
        (200, 190, 170),
        (72, 72, 74),
        (202, 176, 136),
        ((80, 120, 60), (100, 130, 70)),
        "palm",
        ((30, 80, 150), (240, 240, 240), (30, 110, 100)),
        (3, 5),
    ),
    "Oslo": _CityStyle(
        59.913,
        10.752,
        ((240, 236, 222), (92, 112, 94), (214, 184, 96), (64, 74, 94), (190, 196, 200)),
        (50, 60, 70),
        (3, 5),
        ((60, 60, 66), (90, 96, 100)),
        (140, 140, 142),
        (82, 84, 88),
        (82, 110, 72),
        ((34, 72, 44), (46, 86, 52)),
        "pine",
        ((20, 70, 140), (230, 230, 230), (30, 100, 70)),
        (2, 3),
    ),
    # Only in the shifted batch: warm ochre/terracotta walls the unshifted data never shows.
    "Marrakesh": _CityStyle(
        31.629,
        -7.981,
        ((192, 98, 62), (206, 124, 82), (176, 88, 58), (214, 150, 104)),
        (50, 40, 36),
        (2, 4),
        ((160, 80, 52), (140, 70, 50)),
        (194, 152, 112),
        (96, 86, 80),
        (192, 142, 100),
        ((90, 120, 60), (70, 100, 50)),
        "palm",
        ((30, 80, 140), (240, 230, 210), (40, 110, 90)),
        (2, 3),
    ),
}


@dataclass(frozen=True)
class _Profile:
    cities: tuple[str, ...]
    daytime: dict[str, float]
    weather: dict[str, float]


_PROFILES: dict[str, _Profile] = {
    "none": _Profile(
        ("Berlin", "Lisbon", "Tokyo", "Phoenix", "Oslo"),
        {"day": 0.6, "dusk": 0.2, "night": 0.2},
        {"clear": 0.55, "rain": 0.18, "fog": 0.12, "snow": 0.15},
    ),
    "night_fog_city": _Profile(
        ("Marrakesh",),
        {"day": 0.1, "dusk": 0.2, "night": 0.7},
        {"clear": 0.15, "rain": 0.15, "fog": 0.6, "snow": 0.1},
    ),
}
_SHIFT_CODES = {"none": 0, "night_fog_city": 1}
_LAYOUT_CODES = {"mapillary": 1, "roadwork": 2}
_ENVIRONMENT_P = {"urban": 0.4, "suburban": 0.25, "highway": 0.2, "rural": 0.15}
_SIZE_CLASS_P = {"large": 0.3, "medium": 0.3, "small": 0.2, "tiny": 0.2}
_KIND_P = {"cone": 0.32, "barrier": 0.2, "sign": 0.16, "worker": 0.16, "arrow_board": 0.16}
_KIND_NAMES = {
    "cone": "traffic cones",
    "barrier": "a striped temporary barrier",
    "sign": "a temporary roadwork sign",
    "worker": "workers in hi-vis vests",
    "arrow_board": "an arrow board",
}
# Largest side (m) of each roadwork object's bounding box: the anchor of a cluster is the largest kind.
_RW_SIZE_M = {"cone": 0.75, "barrier": 2.0, "sign": 2.35, "worker": 1.85, "arrow_board": 3.0}
_HARD_NEGATIVE_RATE = {0: 0.8, 1: 0.3}

_ORANGE_LOOKALIKES: tuple[RGB, ...] = ((240, 110, 20), (226, 62, 30), (250, 140, 30), (206, 46, 36), (255, 124, 0))
_AUTUMN: tuple[RGB, ...] = ((214, 104, 30), (232, 150, 40), (182, 62, 32), (226, 120, 24), (200, 160, 50))
_CONE_ORANGE: tuple[RGB, ...] = ((245, 100, 20), (255, 120, 0), (232, 82, 30), (250, 138, 32), (220, 110, 60))
_CAR_COLOURS: tuple[RGB, ...] = (
    (230, 230, 228),
    (170, 172, 178),
    (30, 30, 34),
    (30, 50, 100),
    (110, 112, 118),
    (120, 26, 32),
    (40, 90, 170),
    (40, 90, 60),
    (200, 190, 160),
)
_CLOTHES: tuple[RGB, ...] = (
    (40, 40, 46),
    (60, 70, 120),
    (150, 150, 156),
    (230, 230, 225),
    (90, 60, 40),
    (50, 90, 60),
    (120, 30, 40),
    (200, 180, 150),
    (30, 40, 70),
)
_SKIN: tuple[RGB, ...] = ((234, 192, 160), (200, 150, 110), (140, 96, 66), (90, 60, 44))
_HIVIS: tuple[RGB, ...] = ((255, 112, 0), (214, 255, 40), (250, 140, 20))
_HELMETS: tuple[RGB, ...] = ((245, 245, 240), (250, 210, 20), (250, 120, 10))
_GREY_POLE: RGB = (96, 100, 104)
_WHITE: RGB = (236, 236, 232)
_BLACK: RGB = (22, 22, 24)


def _pick(rng: np.random.Generator, items: Sequence[Any], p: Sequence[float] | None = None) -> Any:
    """One item of ``items`` (numpy's choice would turn tuples into arrays)."""
    return items[int(rng.choice(len(items), p=p))]


def _pick_key(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    return keys[int(rng.choice(len(keys), p=np.array(list(weights.values())) / sum(weights.values())))]


def _jitter(rng: np.random.Generator, colour: RGB, amount: int = 12) -> RGB:
    r, g, b = (np.clip(np.array(colour) + rng.integers(-amount, amount + 1, 3), 0, 255)).tolist()
    return (r, g, b)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def _scale(colour: RGB, f: float) -> RGB:
    return (min(255, round(colour[0] * f)), min(255, round(colour[1] * f)), min(255, round(colour[2] * f)))


# ----------------------------------------------------------------------------------------------------
# Sequence plan
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SequencePlan:
    seq_id: int
    first_id: int
    n_frames: int
    label: int
    split: str
    city: str
    environment: str
    daytime: str
    weather: str
    size_class: str  # target size of the roadwork cluster in the first frame (an undrawn phantom on negatives)
    hard_negative: str


def _seed(config: DemoDataConfig, *parts: int) -> list[int]:
    """RNG seed of one stream; NATIX keeps its historical seeds, other layouts draw other scenes."""
    layout = [] if config.layout == "natix" else [_LAYOUT_CODES[config.layout]]
    return [config.seed, _SHIFT_CODES[config.shift], *parts, *layout]


def _plan_sequences(config: DemoDataConfig) -> list[_SequencePlan]:
    """Labels, splits and scene settings of every sequence; whole sequences go to one split."""
    rng = np.random.default_rng(_seed(config, 0))
    profile = _PROFILES[config.shift]
    fps = 1 if config.layout == "mapillary" else config.frames_per_sequence
    n_seq = math.ceil(config.n_images / fps)
    n_pos = n_seq if config.layout == "roadwork" else round(n_seq * config.positive_rate)
    labels = rng.permutation(np.array([1] * n_pos + [0] * (n_seq - n_pos)))
    splits = ["train"] * n_seq
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(len(members) * config.test_fraction)
        if config.test_fraction > 0 and len(members) >= 2:
            n_test = max(1, n_test)
        for index in members[:n_test]:
            splits[int(index)] = "test"
    plans = []
    for seq in range(n_seq):
        label = int(labels[seq])
        environment = _pick_key(rng, _ENVIRONMENT_P)
        hard_negative = "none"
        if rng.random() < _HARD_NEGATIVE_RATE[label]:
            hard_negative = _pick(rng, HARD_NEGATIVE_KINDS)
        plans.append(
            _SequencePlan(
                seq_id=seq,
                first_id=seq * fps,
                n_frames=min(fps, config.n_images - seq * fps),
                label=label,
                split=splits[seq],
                city=_pick(rng, profile.cities),
                environment=environment,
                daytime=_pick_key(rng, profile.daytime),
                weather=_pick_key(rng, profile.weather),
                size_class=_pick_key(rng, _SIZE_CLASS_P),
                hard_negative=hard_negative,
            )
        )
    return plans


# ----------------------------------------------------------------------------------------------------
# Scene model
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Sprite:
    kind: str
    x: float  # lateral position, metres (positive = right)
    z: float  # depth of the ground contact, in bottom-row-distance units
    params: dict[str, Any]
    vz: float = 0.0  # depth change per frame (moving cars)
    roadwork: bool = False


@dataclass
class _Building:
    side: int  # -1 left of the road, +1 right
    x: float  # facade line, metres
    z0: float
    z1: float
    height: float
    colour: RGB
    window: RGB
    floor_h: float
    pattern: int  # seeds which windows are lit at night (same in every frame)
    gable: RGB | None  # roof colour of a house gable; None for flat city roofs
    signs: list[tuple[float, float, RGB, bool]] = field(default_factory=list)  # shop signs: z0, z1, colour, look-alike


@dataclass(frozen=True)
class _Road:
    left: float  # road edges, metres; the camera starts at x = 0 in the middle of its lane
    right: float
    lane_w: float
    oncoming: int  # lanes (counted from the left) whose traffic comes towards the camera
    lines: tuple[tuple[float, bool], ...]  # painted lines: (x, dashed)

    @property
    def lane_centres(self) -> list[float]:
        return [self.left + self.lane_w * (i + 0.5) for i in range(round((self.right - self.left) / self.lane_w))]


@dataclass
class _Scene:
    plan: _SequencePlan
    horizon: float  # pixels from the top
    vanish_x: float
    cam_dx: float  # camera lateral motion per frame, metres
    cam_dz: float  # camera forward motion per frame, depth units
    road: _Road
    walk: float  # sidewalk (or shoulder) width beyond each road edge
    sky: tuple[RGB, RGB]
    terrain: RGB
    asphalt: RGB
    sidewalk: RGB
    marking: RGB
    backdrop: list[tuple[float, float, float, RGB]]  # (x0, x1, height) as image fractions, colour
    hills: tuple[RGB, np.ndarray] | None  # colour, harmonic amplitudes/phases
    buildings: list[_Building]
    sprites: list[_Sprite]
    hard_negative: str  # the planned hard-negative kind, or "none" when none could be placed
    travel_alteration: str
    description: str
    gps: tuple[float, float]
    captured: int


@dataclass(frozen=True)
class _View:
    """Pinhole camera of one frame: world (x metres, z depth units, up metres) -> pixels."""

    width: int
    height: int
    horizon: float
    vanish_x: float
    cam_x: float
    cam_z: float

    def ppm(self, z: float) -> float:
        return (self.height - self.horizon) / (_CAM_HEIGHT_M * (z - self.cam_z))

    def ground_y(self, z: float) -> float:
        return self.horizon + (self.height - self.horizon) / (z - self.cam_z)

    def point(self, x: float, z: float, up: float = 0.0) -> Point:
        k = self.ppm(z)
        return (self.vanish_x + (x - self.cam_x) * k, self.ground_y(z) - up * k)

    def quad(self, x0: float, x1: float, z0: float, z1: float) -> list[Point]:
        """Ground quad between two lateral lines and two depths."""
        return [self.point(x0, z0), self.point(x1, z0), self.point(x1, z1), self.point(x0, z1)]


class _Canvas:
    """The image plus the buffers the lighting and weather passes need, drawn in one go.

    ``depth`` (1/z, for fog), ``glow`` (emitted light: lamps, lit windows, retro-reflectors) and
    ``light`` (how much light falls on a surface at night) are only kept when the frame needs them.
    Every primitive is drawn into all kept buffers, so near objects hide far lights and far depth.
    """

    def __init__(self, base: Image.Image, depth: Image.Image | None, lights: bool, headlight_reach: float) -> None:
        self.img = base
        self.depth = depth
        self.glow = Image.new("RGB", base.size) if lights else None
        self.light = Image.new("L", base.size) if lights else None
        self._paint = ImageDraw.Draw(base)
        self._targets: list[tuple[ImageDraw.ImageDraw, str]] = []
        if depth is not None:
            self._targets.append((ImageDraw.Draw(depth), "depth"))
        if self.glow is not None and self.light is not None:
            self._targets += [(ImageDraw.Draw(self.glow), "glow"), (ImageDraw.Draw(self.light), "light")]
        self._depth_value = 0
        self._light_value = 0
        self.headlight_reach = headlight_reach  # depth up to which the camera car's beam lights retro-reflectors

    @property
    def lights(self) -> bool:
        return self.glow is not None

    def at(self, z: float, light: float = 0.0) -> None:
        """Depth and received light (0..1) of what is drawn next."""
        self._depth_value = min(255, round(255.0 / max(z, 1e-3)))
        self._light_value = round(255 * min(1.0, light))

    def retro(self, colour: RGB, z: float) -> RGB | None:
        """Glow of a retro-reflective surface at depth ``z``: bright when the headlights reach it."""
        if not self.lights:
            return None
        return _scale(colour, 0.25 + 0.65 * min(1.0, self.headlight_reach / max(z, 0.5)))

    def _buffers(self, glow: RGB | None) -> list[tuple[ImageDraw.ImageDraw, Any]]:
        values = {"depth": self._depth_value, "glow": glow or (0, 0, 0), "light": self._light_value}
        return [(draw, values[name]) for draw, name in self._targets]

    def polygon(self, points: Sequence[Point], fill: RGB, glow: RGB | None = None) -> None:
        self._paint.polygon(points, fill=fill)
        for draw, value in self._buffers(glow):
            draw.polygon(points, fill=value)

    def box(self, box: Box, fill: RGB, glow: RGB | None = None) -> None:
        x0, y0, x1, y1 = box
        xy = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        self._paint.rectangle(xy, fill=fill)
        for draw, value in self._buffers(glow):
            draw.rectangle(xy, fill=value)

    def disc(self, box: Box, fill: RGB, glow: RGB | None = None) -> None:
        x0, y0, x1, y1 = box
        xy = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        self._paint.ellipse(xy, fill=fill)
        for draw, value in self._buffers(glow):
            draw.ellipse(xy, fill=value)

    def line(self, points: Sequence[Point], fill: RGB, width: float) -> None:
        w = max(1, round(width))
        self._paint.line(points, fill=fill, width=w)
        for draw, value in self._buffers(None):
            draw.line(points, fill=value, width=w)

    def pool(self, points: Sequence[Point], value: int) -> None:
        """Light falling on the ground (street-lamp pools, headlight beam): light buffer only."""
        if self.light is not None:
            ImageDraw.Draw(self.light).polygon(points, fill=value)


# ----------------------------------------------------------------------------------------------------
# Sprites: each draws itself standing at pixel (x, y) with k pixels per metre and returns its box
# ----------------------------------------------------------------------------------------------------


def _clip_x(points: Sequence[Point], lo: float, hi: float) -> list[Point]:
    """Clip a convex polygon to lo <= x <= hi (Sutherland-Hodgman against two vertical lines)."""
    out = list(points)
    for bound, sign in ((lo, 1.0), (hi, -1.0)):
        src, out = out, []
        for i, cur in enumerate(src):
            prev = src[i - 1]
            cur_in, prev_in = sign * (cur[0] - bound) >= 0, sign * (prev[0] - bound) >= 0
            if cur_in != prev_in:
                t = (bound - prev[0]) / (cur[0] - prev[0])
                out.append((bound, prev[1] + t * (cur[1] - prev[1])))
            if cur_in:
                out.append(cur)
    return out


def _draw_cone(cv: _Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    h, base_h = 0.75 * k, max(1.0, 0.05 * k)
    wb, wt = 0.36 * k, 0.07 * k

    def width_at(f: float) -> float:
        return wb + (wt - wb) * f

    top = y - h
    cv.box((x - 0.26 * k, y - base_h, x + 0.26 * k, y), p["base"])
    cv.polygon(
        [(x - wb / 2, y - base_h), (x + wb / 2, y - base_h), (x + wt / 2, top), (x - wt / 2, top)],
        p["colour"],
        glow=cv.retro(_scale(p["colour"], 0.5), z),
    )
    for f0, f1 in ((0.32, 0.45), (0.58, 0.68)):
        a, b = width_at(f0) / 2, width_at(f1) / 2
        ya, yb = y - base_h - f0 * (h - base_h), y - base_h - f1 * (h - base_h)
        cv.polygon([(x - a, ya), (x + a, ya), (x + b, yb), (x - b, yb)], _WHITE, glow=cv.retro(_WHITE, z))
    return (x - 0.26 * k, top, x + 0.26 * k, y)


def _draw_barrier(cv: _Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    w = p["width"] * k
    x0, x1 = x - w / 2, x + w / 2
    post = max(1.0, 0.07 * k)
    for px in (x0 + 0.1 * k, x1 - 0.1 * k - post):
        cv.box((px, y - 1.0 * k, px + post, y), _WHITE)
        cv.box((px - 0.15 * k, y - max(1.0, 0.08 * k), px + post + 0.15 * k, y), _BLACK)
    boards = ((0.72, 1.0),) if p["boards"] == 1 else ((0.72, 1.0), (0.3, 0.52))
    period, stripe = 0.36 * k, 0.18 * k
    for lo, hi in boards:
        yb, yt = y - lo * k, y - hi * k
        cv.box((x0, yt, x1, yb), _WHITE, glow=cv.retro(_WHITE, z))
        bh = yb - yt
        if stripe < 1.0:
            cv.box((x0, yt + bh / 3, x1, yb - bh / 3), p["colour"])
            continue
        u = x0 - bh
        while u < x1:
            band = [(u, yb), (u + stripe, yb), (u + stripe + bh, yt), (u + bh, yt)]
            clipped = _clip_x(band, x0, x1)
            if len(clipped) >= 3:
                cv.polygon(clipped, p["colour"], glow=cv.retro(_scale(p["colour"], 0.6), z))
            u += period
    if p["lamp"]:
        r = max(1.0, 0.08 * k)
        cv.disc(
            (x0 + 0.1 * k - r, y - 1.0 * k - 2 * r, x0 + 0.1 * k + r, y - 1.0 * k), (250, 190, 40), glow=(255, 190, 60)
        )
    return (x0 - 0.05 * k, y - 1.0 * k - (0.16 * k if p["lamp"] else 0.0), x1 + 0.05 * k, y)


def _draw_temp_sign(cv: _Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    d = 1.06 * k  # diagonal of a 0.75 m diamond
    bottom = 1.3 * k if p["pole"] else 0.5 * k
    cy = y - bottom - d / 2
    if p["pole"]:
        cv.box((x - 0.04 * k, y - bottom, x + 0.04 * k, y), _GREY_POLE)
    else:
        cv.line([(x - 0.4 * k, y), (x, y - bottom - 0.1 * k), (x + 0.4 * k, y)], _GREY_POLE, 0.05 * k)
    cv.polygon([(x, cy - d / 2), (x + d / 2, cy), (x, cy + d / 2), (x - d / 2, cy)], _BLACK)
    inner = d / 2 - max(1.0, 0.05 * k)
    cv.polygon(
        [(x, cy - inner), (x + inner, cy), (x, cy + inner), (x - inner, cy)], p["colour"], glow=cv.retro(p["colour"], z)
    )
    if d > 12:
        s = d / 10
        cv.disc((x - 1.6 * s, cy - 2.6 * s, x - 0.6 * s, cy - 1.6 * s), _BLACK)
        cv.line([(x - 1.0 * s, cy - 1.5 * s), (x - 0.2 * s, cy + 1.2 * s)], _BLACK, 0.5 * s)
        cv.line([(x - 0.6 * s, cy), (x + 1.2 * s, cy + 0.8 * s)], _BLACK, 0.35 * s)
        cv.polygon([(x + 0.6 * s, cy + 2.2 * s), (x + 1.4 * s, cy + 1.0 * s), (x + 2.2 * s, cy + 2.2 * s)], _BLACK)
    return (x - d / 2, cy - d / 2, x + d / 2, y)


def _draw_person(cv: _Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    """A standing person; with ``vest`` set, a worker in a hi-vis vest and a hard hat."""
    k = k * p["height"] / 1.75
    leg, gap = 0.13 * k, 0.05 * k
    hip, shoulder = y - 0.86 * k, y - 1.44 * k
    stride = p["stride"] * k
    cv.box((x - gap / 2 - leg - stride, hip, x - gap / 2 - stride, y), p["legs"])
    cv.box((x + gap / 2 + stride, hip, x + gap / 2 + leg + stride, y), p["legs"])
    cv.polygon(
        [
            (x - 0.22 * k, shoulder),
            (x + 0.22 * k, shoulder),
            (x + 0.18 * k, hip + 0.04 * k),
            (x - 0.18 * k, hip + 0.04 * k),
        ],
        p["top"],
    )
    for side in (-1, 1):
        cv.box((x + side * 0.22 * k, shoulder + 0.02 * k, x + side * 0.31 * k, hip), p["top"])
    if p["vest"] is not None:
        cv.polygon(
            [
                (x - 0.21 * k, shoulder + 0.04 * k),
                (x + 0.21 * k, shoulder + 0.04 * k),
                (x + 0.19 * k, hip + 0.02 * k),
                (x - 0.19 * k, hip + 0.02 * k),
            ],
            p["vest"],
            glow=cv.retro(_scale(p["vest"], 0.5), z),
        )
        for level in (0.16, 0.34):
            yy = hip - level * k
            cv.box((x - 0.2 * k, yy - max(1.0, 0.04 * k), x + 0.2 * k, yy), (215, 218, 220), glow=cv.retro(_WHITE, z))
    cv.disc((x - 0.1 * k, y - 1.73 * k, x + 0.1 * k, y - 1.47 * k), p["skin"])
    if p["vest"] is not None:
        cv.disc((x - 0.13 * k, y - 1.80 * k, x + 0.13 * k, y - 1.58 * k), p["hat"])
        cv.box((x - 0.15 * k, y - 1.66 * k, x + 0.15 * k, y - 1.63 * k), p["hat"])
        top = y - 1.80 * k
    else:
        cv.disc((x - 0.105 * k, y - 1.76 * k, x + 0.105 * k, y - 1.6 * k), p["hair"])
        top = y - 1.76 * k
    return (x - 0.31 * k - stride, top, x + 0.31 * k + stride, y)


def _draw_arrow_board(cv: _Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    w, bottom, top = 2.3 * k, 1.7 * k, 3.0 * k
    for side in (-1, 1):
        cv.box((x + side * 0.7 * k - 0.14 * k, y - 0.42 * k, x + side * 0.7 * k + 0.14 * k, y), _BLACK)
    cv.box((x - 1.0 * k, y - 0.75 * k, x + 1.0 * k, y - 0.35 * k), p["trailer"])
    cv.box((x - 0.08 * k, y - bottom, x + 0.08 * k, y - 0.75 * k), _GREY_POLE)
    cv.box((x - w / 2, y - top, x + w / 2, y - bottom), (18, 18, 20))
    r = 0.075 * k
    cols, rows = 7, 5
    dx, dy = w / (cols + 1), (top - bottom) / (rows + 1)
    head = p["direction"]
    lamps = {(2, c) for c in range(cols)} | {(1, 4), (3, 4), (0, 3), (4, 3)}
    for row, col in lamps:
        cx = x - w / 2 + dx * (col + 1 if head > 0 else cols - col)
        cy = y - top + dy * (row + 1)
        cv.disc((cx - r, cy - r, cx + r, cy + r), (255, 200, 60), glow=(255, 190, 50))
    return (x - w / 2, y - top, x + w / 2, y)


def _draw_car(cv: _Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    w, h = p["width"] * k, p["height"] * k
    body = p["colour"]
    for side in (-1, 1):
        cv.box((x + side * (w / 2 - 0.06 * k), y - 0.34 * k, x + side * (w / 2 - 0.3 * k), y), _BLACK)
    belt = y - min(0.95 * k, h * 0.62)
    cv.box((x - w / 2, belt, x + w / 2, y - 0.24 * k), body)
    cv.polygon([(x - 0.47 * w, belt), (x + 0.47 * w, belt), (x + 0.36 * w, y - h), (x - 0.36 * w, y - h)], body)
    inset = 0.06 * k
    cv.polygon(
        [
            (x - 0.44 * w, belt - inset),
            (x + 0.44 * w, belt - inset),
            (x + 0.34 * w, y - h + inset),
            (x - 0.34 * w, y - h + inset),
        ],
        (44, 54, 64),
    )
    cv.box((x - w / 2, y - 0.38 * k, x + w / 2, y - 0.24 * k), (40, 40, 44))
    cv.box((x - 0.25 * k, y - 0.56 * k, x + 0.25 * k, y - 0.44 * k), (226, 226, 220))
    lamp = ((170, 20, 22), (255, 40, 30)) if p["rear"] else ((226, 226, 210), (255, 250, 225))
    for side in (-1, 1):
        xa, xb = x + side * (w / 2 - 0.04 * k), x + side * (w / 2 - 0.32 * k)
        cv.box((xa, belt + 0.06 * k, xb, belt + 0.18 * k), lamp[0], glow=lamp[1] if p["lit"] else None)
    return (x - w / 2, y - h, x + w / 2, y)


def _draw_tree(cv: _Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    k = k * p["scale"]
    crown = p["crown"]
    if p["kind"] == "palm":
        top = y - 7.0 * k
        cv.polygon([(x - 0.18 * k, y), (x + 0.18 * k, y), (x + 0.1 * k, top), (x - 0.1 * k, top)], (120, 100, 76))
        for i in range(8):
            a = math.pi * (0.1 + 0.8 * i / 7)
            tip = (x + 2.4 * k * math.cos(a), top - 0.2 * k + 1.4 * k * (1 - math.sin(a)) - 0.5 * k)
            cv.polygon([(x, top), tip, (tip[0], tip[1] + 0.35 * k)], crown[i % len(crown)])
        return (x - 2.4 * k, top - 0.7 * k, x + 2.4 * k, y)
    if p["kind"] == "pine":
        cv.box((x - 0.15 * k, y - 1.4 * k, x + 0.15 * k, y), (92, 70, 50))
        for i, (half, lo, hi) in enumerate(((1.7, 1.0, 4.2), (1.3, 2.8, 5.8), (0.9, 4.4, 7.2))):
            cv.polygon([(x - half * k, y - lo * k), (x + half * k, y - lo * k), (x, y - hi * k)], crown[i % len(crown)])
        return (x - 1.7 * k, y - 7.2 * k, x + 1.7 * k, y)
    cv.box((x - 0.16 * k, y - 2.6 * k, x + 0.16 * k, y), (96, 74, 52))
    for i, (dx, cy, rx, ry) in enumerate(((-0.8, 3.5, 1.3, 1.1), (0.8, 3.6, 1.3, 1.1), (0.0, 4.4, 1.8, 1.6))):
        cv.disc((x + (dx - rx) * k, y - (cy + ry) * k, x + (dx + rx) * k, y - (cy - ry) * k), crown[i % len(crown)])
    return (x - 2.1 * k, y - 6.0 * k, x + 2.1 * k, y)


def _draw_lamp(cv: _Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    arm = p["arm"] * 1.6 * k
    cv.box((x - 0.07 * k, y - 7.0 * k, x + 0.07 * k, y), _GREY_POLE)
    cv.line([(x, y - 7.0 * k), (x + arm, y - 7.1 * k)], _GREY_POLE, 0.08 * k)
    cv.box(
        (x + arm - 0.3 * k, y - 7.15 * k, x + arm + 0.3 * k, y - 7.0 * k),
        (210, 210, 196),
        glow=p["glow"] if cv.lights else None,
    )
    return (min(x, x + arm) - 0.3 * k, y - 7.15 * k, max(x, x + arm) + 0.3 * k, y)


def _draw_traffic_sign(cv: _Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    r = 0.33 * k
    cy = y - 2.3 * k
    cv.box((x - 0.035 * k, cy, x + 0.035 * k, y), _GREY_POLE)
    shape = p["shape"]
    if shape == "triangle":
        cv.polygon([(x - 1.1 * r, cy + 0.8 * r), (x + 1.1 * r, cy + 0.8 * r), (x, cy - 1.1 * r)], (200, 30, 34))
        cv.polygon(
            [(x - 0.75 * r, cy + 0.6 * r), (x + 0.75 * r, cy + 0.6 * r), (x, cy - 0.7 * r)],
            _WHITE,
            glow=cv.retro(_WHITE, z),
        )
        cv.box((x - 0.06 * r, cy - 0.3 * r, x + 0.06 * r, cy + 0.3 * r), _BLACK)
    else:
        ring = (200, 30, 34) if shape == "round_red" else (30, 80, 170)
        cv.disc((x - r, cy - r, x + r, cy + r), ring)
        inner = _WHITE if shape == "round_red" else (36, 90, 180)
        cv.disc((x - 0.75 * r, cy - 0.75 * r, x + 0.75 * r, cy + 0.75 * r), inner, glow=cv.retro(inner, z))
        mark = _BLACK if shape == "round_red" else _WHITE
        cv.box((x - 0.35 * r, cy - 0.15 * r, x + 0.35 * r, cy + 0.15 * r), mark)
    return (x - 1.1 * r, cy - 1.1 * r, x + 1.1 * r, y)


def _draw_roadside_sign(cv: _Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    """A shop sign on two posts (petrol station, farm shop): orange/red ones are hard negatives."""
    w, bottom, top = p["width"] * k, 1.8 * k, 3.1 * k
    for side in (-1, 1):
        cv.box((x + side * 0.35 * w - 0.05 * k, y - bottom, x + side * 0.35 * w + 0.05 * k, y), _GREY_POLE)
    cv.box(
        (x - w / 2, y - top, x + w / 2, y - bottom), p["colour"], glow=_scale(p["colour"], 0.7) if cv.lights else None
    )
    if k > 6:
        for row in range(2):
            yy = y - top + (0.3 + 0.45 * row) * k
            cv.box((x - 0.35 * w, yy, x + (0.3 - 0.2 * row) * w, yy + 0.18 * k), _WHITE)
    return (x - w / 2, y - top, x + w / 2, y)


_SPRITES: dict[str, Callable[[_Canvas, float, float, float, float, dict[str, Any]], Box]] = {
    "cone": _draw_cone,
    "barrier": _draw_barrier,
    "sign": _draw_temp_sign,
    "worker": _draw_person,
    "person": _draw_person,
    "arrow_board": _draw_arrow_board,
    "car": _draw_car,
    "tree": _draw_tree,
    "lamp": _draw_lamp,
    "traffic_sign": _draw_traffic_sign,
    "roadside_sign": _draw_roadside_sign,
}


def _person_params(rng: np.random.Generator, *, worker: bool, orange: bool) -> dict[str, Any]:
    top = _jitter(rng, _pick(rng, _ORANGE_LOOKALIKES)) if orange else _jitter(rng, _pick(rng, _CLOTHES))
    return {
        "height": float(rng.uniform(1.6, 1.9)),
        "stride": float(rng.uniform(0.0, 0.12)),
        "legs": _jitter(rng, _pick(rng, ((40, 44, 60), (30, 30, 34), (70, 70, 76), (60, 50, 40)))),
        "top": _jitter(rng, _pick(rng, ((60, 66, 80), (220, 220, 214), (40, 60, 100)))) if worker else top,
        "skin": _pick(rng, _SKIN),
        "hair": _pick(rng, ((30, 24, 20), (80, 60, 40), (150, 120, 80), (200, 200, 200))),
        "vest": _pick(rng, _HIVIS) if worker else None,
        "hat": _pick(rng, _HELMETS),
    }


def _car_params(rng: np.random.Generator, colour: RGB, rear: bool, lit: bool) -> dict[str, Any]:
    van = rng.random() < 0.2
    return {
        "colour": _jitter(rng, colour, 10),
        "width": float(rng.uniform(1.75, 1.95)),
        "height": float(rng.uniform(1.9, 2.3) if van else rng.uniform(1.4, 1.55)),
        "rear": rear,
        "lit": lit,
    }


# ----------------------------------------------------------------------------------------------------
# Scene construction
# ----------------------------------------------------------------------------------------------------


def _road_layout(env: str, style: _CityStyle, rng: np.random.Generator) -> _Road:
    lane_w = {"urban": 3.2, "suburban": 3.0, "highway": 3.6, "rural": 2.9}[env] * float(rng.uniform(0.95, 1.05))
    if env == "urban":
        n_lanes = int(rng.integers(style.lanes[0], style.lanes[1] + 1))
    elif env == "highway":
        n_lanes = int(rng.integers(3, 5))
    else:
        n_lanes = 2
    oncoming = 0 if env == "highway" else n_lanes // 2
    ego = int(rng.integers(oncoming, n_lanes))
    left = -(ego + 0.5) * lane_w
    lines = [(left + i * lane_w, not (i == oncoming and oncoming > 0)) for i in range(1, n_lanes)]
    if env in ("highway", "rural"):
        lines += [(left + 0.2, False), (left + n_lanes * lane_w - 0.2, False)]
    return _Road(left, left + n_lanes * lane_w, lane_w, oncoming, tuple(lines))


def _make_buildings(
    env: str, style: _CityStyle, rng: np.random.Generator, road: _Road, walk: float, orange_signs: int
) -> list[_Building]:
    if env not in ("urban", "suburban"):
        return []
    houses = env == "suburban"
    buildings: list[_Building] = []
    for side, edge in ((-1, road.left), (1, road.right)):
        line = edge + side * (walk + (rng.uniform(4.0, 8.0) if houses else 0.0))
        z = float(rng.uniform(0.2, 1.2))
        while z < 45:
            length = float(rng.uniform(1.2, 2.4) if houses else rng.uniform(1.5, 4.0))
            floors = int(rng.integers(1, 3) if houses else rng.integers(style.floors[0], style.floors[1] + 1))
            floor_h = float(rng.uniform(2.9, 3.4))
            building = _Building(
                side=side,
                x=float(line),
                z0=z,
                z1=z + length,
                height=floors * floor_h + (0.0 if houses else 1.2),
                colour=_jitter(rng, _pick(rng, style.facades), 10),
                window=_jitter(rng, style.windows, 8),
                floor_h=floor_h,
                pattern=int(rng.integers(1 << 16)),
                gable=_jitter(rng, _pick(rng, style.roofs), 8) if houses else None,
            )
            if not houses and rng.random() < 0.45:
                s0 = z + float(rng.uniform(0.1, 0.4)) * length
                building.signs.append(
                    (
                        s0,
                        min(z + length - 0.1, s0 + float(rng.uniform(0.4, 1.2))),
                        _jitter(rng, _pick(rng, style.signs), 10),
                        False,
                    )
                )
            buildings.append(building)
            z += length + float(rng.uniform(1.0, 2.5) if houses else rng.uniform(0.0, 0.6))
    if orange_signs and not houses:
        near = [b for b in buildings if b.z0 < 20]
        for building in [near[int(i)] for i in rng.choice(len(near), size=min(orange_signs, len(near)), replace=False)]:
            length = building.z1 - building.z0
            s0 = building.z0 + float(rng.uniform(0.05, 0.4)) * length
            building.signs = [
                (
                    s0,
                    min(building.z1 - 0.05, s0 + float(rng.uniform(0.5, 1.4))),
                    _jitter(rng, _pick(rng, _ORANGE_LOOKALIKES), 10),
                    True,
                )
            ]
    return buildings


def _roadwork_cluster(
    plan: _SequencePlan, rng: np.random.Generator, road: _Road, ppm1: float, width: int, height: int, vanish_x: float
) -> tuple[list[_Sprite], str, str]:
    """The roadwork objects of a sequence, placed so the largest one has the planned size class.

    Negatives plan a cluster too but never draw it (see ``_Street``). The anchor (the largest kind)
    sits at the depth that gives it the target size and inside the centre square crop, so the label
    survives the validator's centre-crop preprocessing; the rest of the cluster lies farther along a
    line (parallel to the road or tapering to its edge).
    """
    n_kinds = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.25, 0.1]))
    probs = np.array(list(_KIND_P.values()))
    kinds = [ROADWORK_KINDS[int(i)] for i in rng.choice(len(ROADWORK_KINDS), size=n_kinds, replace=False, p=probs)]
    anchor = max(kinds, key=lambda kind: _RW_SIZE_M[kind])
    lo, hi = SIZE_RANGES_224[plan.size_class]
    target_px = float(rng.uniform(lo, hi)) * min(width, height) / 224.0
    z0 = float(np.clip(ppm1 * _RW_SIZE_M[anchor] / target_px, 1.5, 90.0))
    half = 0.36 * min(width, height) / (ppm1 / z0)
    centre = (width / 2 - vanish_x) / (ppm1 / z0)
    candidates = [(x, True) for x, _ in road.lines if road.left < x < road.right]
    candidates += [(x, True) for x in road.lane_centres]
    candidates += [(road.left + 0.4, False), (road.right - 0.4, False)]
    feasible = [c for c in candidates if abs(c[0] - centre) <= half]
    x0, in_lane = (
        _pick(rng, feasible) if feasible else (float(np.clip(centre, road.left + 0.4, road.right - 0.4)), True)
    )
    towards_edge = road.right if x0 > (road.left + road.right) / 2 else road.left
    slope = float(rng.choice([0.0, 0.5])) * (1 if towards_edge > x0 else -1)
    spacing = float(rng.uniform(0.25, 0.55)) * max(1.0, z0 / 4)

    def along(dz: float) -> float:
        return float(np.clip(x0 + slope * dz, road.left - 1.0, road.right + 1.0))

    sprites: list[_Sprite] = []

    def add(kind: str, x: float, z: float, params: dict[str, Any]) -> None:
        sprites.append(_Sprite(kind, x, z, params, roadwork=True))

    for index, kind in enumerate([anchor] + [k for k in kinds if k != anchor]):
        anchor_first = index == 0  # the anchor's first object stands exactly at (x0, z0)
        start = z0 if anchor_first else z0 + spacing * float(rng.uniform(0.5, 3.0))
        if kind == "cone":
            for i in range(int(rng.integers(2 if plan.size_class == "tiny" else 3, 10))):
                z = start + i * spacing
                add(
                    "cone",
                    along(z - z0),
                    z,
                    {
                        "colour": _jitter(rng, _pick(rng, _CONE_ORANGE), 8),
                        "base": _pick(rng, (_BLACK, (60, 60, 60), (230, 90, 20))),
                    },
                )
        elif kind == "barrier":
            colour = _pick(rng, ((210, 30, 30), (245, 110, 10)))
            for i in range(int(rng.integers(1, 3))):
                z = start + i * spacing * 1.5
                add(
                    "barrier",
                    along(z - z0) + i * float(rng.uniform(-0.8, 0.8)),
                    z,
                    {
                        "width": float(rng.uniform(1.4, 2.0)),
                        "boards": int(rng.integers(1, 3)),
                        "colour": colour,
                        "lamp": bool(rng.random() < 0.5),
                    },
                )
        elif kind == "sign":
            x = x0 if anchor_first else towards_edge + (0.3 if towards_edge > x0 else -0.3)
            add("sign", x, start, {"colour": _jitter(rng, (250, 130, 10), 8), "pole": bool(rng.random() < 0.6)})
        elif kind == "worker":
            for i in range(int(rng.integers(1, 3))):
                z = start + i * spacing * 0.7
                offset = 0.0 if anchor_first and i == 0 else float(rng.uniform(-0.9, 0.9))
                add("worker", along(z - z0) + offset, z, _person_params(rng, worker=True, orange=False))
        else:
            add(
                "arrow_board",
                along(start - z0),
                start,
                {
                    "trailer": _pick(rng, ((235, 180, 10), (230, 230, 226), (240, 120, 20))),
                    "direction": 1 if towards_edge < x0 else -1,
                },
            )
    travel = "lane_closure" if in_lane else "shoulder_work"
    names = [_KIND_NAMES[k] for k in ROADWORK_KINDS if k in kinds]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    where = "Lane closure ahead" if in_lane else "Roadwork at the road edge"
    return sprites, travel, f"{where} with {listed}."


def _lateral_spot(env: str, rng: np.random.Generator, road: _Road, walk: float) -> float:
    """Where a pedestrian, tree or post can stand beside the road."""
    sign = -1 if rng.random() < 0.5 else 1
    side = road.left if sign < 0 else road.right
    if env in ("urban", "suburban"):
        return side + sign * float(rng.uniform(0.4, max(0.6, walk - 0.3)))
    return side + sign * float(rng.uniform(1.0, 6.0))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Depths spread evenly in log space, so near and far objects are equally common."""
    return float(np.exp(rng.uniform(math.log(lo), math.log(hi))))


def _extent_m(sprite: _Sprite) -> tuple[float, float]:
    """Approximate width and height (metres) of a sprite's box, for occlusion checks while placing."""
    p = sprite.params
    if sprite.kind == "tree":
        w, h = {"palm": (4.8, 7.7), "pine": (3.4, 7.2), "broadleaf": (4.2, 6.0)}[p["kind"]]
        return w * p["scale"], h * p["scale"]
    if sprite.kind in ("barrier", "roadside_sign"):
        return p["width"], 3.1 if sprite.kind == "roadside_sign" else 1.2
    return {
        "car": (2.0, 2.3),
        "person": (0.7, 1.9),
        "worker": (0.7, 1.85),
        "lamp": (2.2, 7.2),
        "traffic_sign": (0.8, 2.7),
        "cone": (0.52, 0.75),
        "sign": (1.06, 2.35),
        "arrow_board": (2.3, 3.0),
    }[sprite.kind]


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _screen_box(view: _View, sprite: _Sprite, t: int) -> Box | None:
    z = sprite.z + sprite.vz * t
    if z - view.cam_z < 0.7:
        return None
    w, h = _extent_m(sprite)
    x, y = view.point(sprite.x, z)
    k = view.ppm(z)
    return (x - w * k / 2, y - h * k, x + w * k / 2, y)


@dataclass
class _Street:
    """Places everyday street content (and hard negatives) around the roadwork cluster.

    ``guarded`` is the roadwork cluster: drawn on positives, an undrawn phantom on negatives. Nothing
    may stand in front of it in any frame, on both classes alike, so "no car right ahead" is no cue.
    """

    env: str
    style: _CityStyle
    road: _Road
    walk: float
    lights_on: bool  # cars drive with lights on (dusk, night)
    rng: np.random.Generator
    views: list[_View]  # the camera of every frame
    guarded: list[_Sprite]
    sprites: list[_Sprite]
    hard_negatives_drawn: int = 0

    def place(self, sprite: _Sprite) -> bool:
        """Add ``sprite`` unless it crowds a car, person or roadwork spot or hides roadwork in some frame."""
        if sprite.kind in ("car", "person") and any(
            abs(sprite.x - s.x) < 2.2 and abs(sprite.z - s.z) < 0.8
            for s in self.sprites + self.guarded
            if s.kind in ("car", "person") or s.roadwork
        ):
            return False
        for t, view in enumerate(self.views):
            box = _screen_box(view, sprite, t)
            if box is None:
                continue
            for other in self.guarded:
                behind = _screen_box(view, other, t)
                if behind is not None and other.z > sprite.z + sprite.vz * t and _overlap(box, behind):
                    return False
        self.sprites.append(sprite)
        return True

    def car(self, colour: RGB) -> bool:
        rng, centres = self.rng, self.road.lane_centres
        for _ in range(8):
            lane = int(rng.integers(len(centres)))
            z, x = _log_uniform(rng, 1.6, 35.0), centres[lane] + float(rng.uniform(-0.3, 0.3))
            rear = lane >= self.road.oncoming
            vz = float(rng.uniform(-0.05, 0.08)) if rear else float(rng.uniform(-0.5, -0.25))
            if self.place(_Sprite("car", x, z, _car_params(rng, colour, rear, self.lights_on), vz=vz)):
                return True
        return False

    def person(self, orange: bool, crossing: bool) -> bool:
        rng = self.rng
        z = _log_uniform(rng, 1.6, 25.0)
        x = (
            float(rng.uniform(self.road.left + 0.5, self.road.right - 0.5))
            if crossing
            else _lateral_spot(self.env, rng, self.road, self.walk)
        )
        return self.place(_Sprite("person", x, z, _person_params(rng, worker=False, orange=orange)))

    def tree(self, autumn: bool, z: float) -> bool:
        rng, road = self.rng, self.road
        palette = _AUTUMN if autumn else self.style.foliage
        crown = [_jitter(rng, _pick(rng, palette), 14) for _ in range(3)]
        if self.env in ("urban", "suburban"):
            x = _lateral_spot(self.env, rng, road, self.walk)
        elif rng.random() < 0.5:
            x = road.left - self.walk - float(rng.uniform(3.0, 14.0))
        else:
            x = road.right + self.walk + float(rng.uniform(3.0, 14.0))
        kind = "broadleaf" if autumn else self.style.tree
        return self.place(_Sprite("tree", x, z, {"kind": kind, "scale": float(rng.uniform(0.8, 1.3)), "crown": crown}))

    def roadside_sign(self, colour: RGB, z: float) -> bool:
        x = _lateral_spot(self.env, self.rng, self.road, self.walk)
        return self.place(
            _Sprite("roadside_sign", x, z, {"colour": colour, "width": float(self.rng.uniform(2.0, 3.2))})
        )

    def populate(self) -> None:
        """Cars, people, trees, lamps and traffic signs in the amounts typical of the environment."""
        rng, env = self.rng, self.env
        for _ in range(int(rng.integers(0, {"urban": 6, "suburban": 4, "highway": 6, "rural": 3}[env]))):
            self.car(_pick(rng, _CAR_COLOURS))
        for _ in range(int(rng.integers(0, {"urban": 7, "suburban": 3, "highway": 1, "rural": 2}[env]))):
            self.person(orange=False, crossing=env == "urban" and rng.random() < 0.15)
        for _ in range(
            int(rng.integers(*{"urban": (0, 8), "suburban": (6, 14), "highway": (3, 12), "rural": (4, 14)}[env]))
        ):
            self.tree(autumn=False, z=_log_uniform(rng, 1.2, 40.0))
        if env != "rural":
            x = self.road.right + (self.walk if env == "highway" else 0.4)
            glow = _pick(rng, ((255, 200, 130), (255, 160, 70), (230, 236, 255)))
            z = float(rng.uniform(1.0, 3.0))
            while z < 45:
                self.place(_Sprite("lamp", x, z, {"arm": -1, "glow": glow}))
                z += float(rng.uniform(4.0, 6.0))
        for _ in range(int(rng.integers(0, 3))):
            self.place(
                _Sprite(
                    "traffic_sign",
                    self.road.right + float(rng.uniform(0.3, 1.2)),
                    float(rng.uniform(1.5, 25.0)),
                    {"shape": _pick(rng, ("triangle", "round_red", "round_blue"))},
                )
            )
        if env in ("highway", "rural") and rng.random() < 0.3:
            self.roadside_sign(_jitter(rng, _pick(rng, self.style.signs)), float(rng.uniform(2.0, 20.0)))

    def hard_negative(self, kind: str) -> None:
        """Orange/red look-alikes of roadwork equipment; counts what was drawn (facade signs are counted
        by the caller, who drew them with the buildings)."""
        rng = self.rng
        if kind == "orange_car":
            drawn = [self.car(_pick(rng, _ORANGE_LOOKALIKES)) for _ in range(int(rng.integers(1, 4)))]
        elif kind == "autumn_tree":
            drawn = [self.tree(autumn=True, z=_log_uniform(rng, 1.3, 25.0)) for _ in range(int(rng.integers(2, 7)))]
        elif kind == "orange_clothes":
            drawn = [self.person(orange=True, crossing=rng.random() < 0.4) for _ in range(int(rng.integers(1, 4)))]
        elif kind == "shop_sign" and self.env != "urban":
            drawn = [
                self.roadside_sign(_jitter(rng, _pick(rng, _ORANGE_LOOKALIKES)), _log_uniform(rng, 1.6, 20.0))
                for _ in range(int(rng.integers(1, 3)))
            ]
        else:
            drawn = []
        self.hard_negatives_drawn += sum(drawn)


_HOURS = {"day": (9, 17), "dusk": (17, 20), "night": (21, 28)}


def _build_scene(plan: _SequencePlan, width: int, height: int, rng: np.random.Generator) -> _Scene:
    """Everything of a sequence that stays put between its frames."""
    style = _CITIES[plan.city]
    env, snow = plan.environment, plan.weather == "snow"
    horizon = height * float(rng.uniform(0.36, 0.48))
    vanish_x = width * float(rng.uniform(0.44, 0.56))
    road = _road_layout(env, style, rng)
    walk = {
        "urban": float(rng.uniform(3.0, 5.0)),
        "suburban": float(rng.uniform(1.8, 2.6)),
        "highway": float(rng.uniform(2.5, 3.5)),
        "rural": 0.0,
    }[env]
    overcast = plan.weather != "clear"
    sky = {
        "day": ((136, 142, 150), (186, 190, 194)) if overcast else ((70, 128, 210), (178, 206, 236)),
        "dusk": ((86, 80, 96), (176, 136, 116)) if overcast else ((58, 62, 120), (246, 150, 86)),
        "night": ((40, 44, 70), (96, 96, 116)),
    }[plan.daytime]
    # Draw every colour before weather overrides it, so one seed gives the same street in any weather.
    asphalt, sidewalk, terrain = (_jitter(rng, c, 6) for c in (style.asphalt, style.sidewalk, style.terrain))
    if plan.weather == "rain":
        asphalt = _scale(asphalt, 0.72)
    elif snow:
        asphalt, sidewalk, terrain = _mix(asphalt, (200, 204, 210), 0.35), (222, 226, 232), (230, 233, 238)
    backdrop: list[tuple[float, float, float, RGB]] = []
    hills = None
    if env == "urban":
        x = 0.0
        while x < 1.0:
            w = float(rng.uniform(0.03, 0.1))
            backdrop.append((x, x + w, float(rng.uniform(0.02, 0.12)), _mix(_pick(rng, style.facades), sky[1], 0.6)))
            x += w * float(rng.uniform(0.7, 1.1))
    else:
        base = _mix(_pick(rng, style.foliage), sky[1], 0.45)
        hills = ((236, 238, 242) if snow else base, rng.uniform([0.005, 0.0], [0.03, 2 * math.pi], size=(5, 2)))
    orange_signs = int(rng.integers(1, 3)) if plan.hard_negative == "shop_sign" else 0
    buildings = _make_buildings(env, style, rng, road, walk, orange_signs)
    cam_dx, cam_dz = float(rng.uniform(-0.06, 0.06)), float(rng.uniform(0.02, 0.06))
    views = [_View(width, height, horizon, vanish_x, cam_dx * t, cam_dz * t) for t in range(plan.n_frames)]
    ppm1 = (height - horizon) / _CAM_HEIGHT_M
    cluster, travel, description = _roadwork_cluster(plan, rng, road, ppm1, width, height, vanish_x)
    if plan.label == 0:
        travel, description = "none", ""
    street = _Street(
        env, style, road, walk, plan.daytime != "day", rng, views, cluster, list(cluster) if plan.label == 1 else []
    )
    street.populate()
    street.hard_negative(plan.hard_negative)
    facade_signs = sum(lookalike for b in buildings for *_, lookalike in b.signs)
    drawn = street.hard_negatives_drawn + (facade_signs if plan.hard_negative == "shop_sign" else 0)
    hour = int(rng.integers(*_HOURS[plan.daytime])) % 24
    captured = _EPOCH_2024 + int(rng.integers(0, 365)) * 86400 + hour * 3600 + int(rng.integers(0, 3600))
    return _Scene(
        plan=plan,
        horizon=horizon,
        vanish_x=vanish_x,
        cam_dx=cam_dx,
        cam_dz=cam_dz,
        hard_negative=plan.hard_negative if drawn else "none",
        road=road,
        walk=walk,
        sky=sky,
        terrain=terrain,
        asphalt=asphalt,
        sidewalk=asphalt if env == "highway" else sidewalk,
        marking=(214, 216, 220) if snow else (238, 238, 232),
        backdrop=backdrop,
        hills=hills,
        buildings=buildings,
        sprites=street.sprites,
        travel_alteration=travel,
        description=description,
        gps=(style.lat + float(rng.normal(0, 0.03)), style.lon + float(rng.normal(0, 0.03))),
        captured=captured,
    )


# ----------------------------------------------------------------------------------------------------
# Frame rendering
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FrameTruth:
    kinds: tuple[str, ...]
    n_objects: int
    max_px: int
    objects: tuple[tuple[str, Box], ...]  # every visible sprite: kind, box clipped to the image
    regions: tuple[tuple[str, tuple[Point, ...]], ...]  # ground surfaces and edges: region name, polygon


def _base_images(scene: _Scene, view: _View, want_depth: bool) -> tuple[Image.Image, Image.Image | None]:
    """Sky gradient above the horizon, terrain (hazier towards the horizon) below; depth = 1/z."""
    h, w, hz = view.height, view.width, view.horizon
    rows = np.arange(h, dtype=np.float32)[:, None]
    top, low = np.array(scene.sky[0], np.float32), np.array(scene.sky[1], np.float32)
    sky = top + (low - top) * np.clip(rows / max(hz, 1.0), 0, 1)
    haze = 0.55 * np.exp(-np.maximum(rows - hz, 0) / (0.06 * h))
    ground = np.array(scene.terrain, np.float32) * (1 - haze) + low * haze
    column = np.where(rows < hz, sky, ground).astype(np.uint8)[:, None, :]
    base = Image.fromarray(column).resize((w, h), Image.Resampling.NEAREST)
    depth = None
    if want_depth:
        inv_z = (np.clip((rows - hz) / (h - hz), 0, 1) * 255).astype(np.uint8)
        depth = Image.fromarray(inv_z).resize((w, h), Image.Resampling.NEAREST)
    return base, depth


def _paint_backdrop(cv: _Canvas, scene: _Scene, view: _View) -> None:
    cv.at(1e4)
    hz, w, h = view.horizon, view.width, view.height
    for x0, x1, height, colour in scene.backdrop:
        cv.box((x0 * w, hz - height * h, x1 * w, hz + 1), colour)
    if scene.hills is not None:
        colour, harmonics = scene.hills
        xs = np.linspace(0, w, 33)
        ys = (
            hz
            + 1
            - h * sum(a * (1 + np.sin((i + 1) * 2.1 * xs / w * math.pi + ph)) for i, (a, ph) in enumerate(harmonics))
        )
        cv.polygon([(0.0, hz + 1)] + list(zip(xs.tolist(), ys.tolist(), strict=True)) + [(float(w), hz + 1)], colour)


# The camera car's low beam: light (0..255) in depth bands, bright close by and fading with distance.
_BEAM_EDGES = (0.5, 1.0, 1.6, 2.4, 3.5, 5.0, 7.0)
_BEAM_LIGHT = (160, 135, 110, 85, 55, 25)


def _beam_half_width(z: float) -> float:
    return 1.5 + 0.8 * z


def _beam_light(dx: float, z: float) -> float:
    """Beam light (0..1) on an upright object ``dx`` metres beside the camera at relative depth ``z``."""
    if abs(dx) > _beam_half_width(z) or not _BEAM_EDGES[0] <= z < _BEAM_EDGES[-1]:
        return 0.0
    band = max(i for i, edge in enumerate(_BEAM_EDGES[:-1]) if edge <= z)
    return min(1.0, 1.3 * _BEAM_LIGHT[band] / 255)  # faces turned to the camera catch more than the road


def _paint_road(cv: _Canvas, scene: _Scene, view: _View) -> None:
    near, far = view.cam_z + 0.6, view.cam_z + 400
    left, right = scene.road.left, scene.road.right
    cv.at(3.0)
    if scene.walk > 0:
        cv.polygon(view.quad(left - scene.walk, left, near, far), scene.sidewalk)
        cv.polygon(view.quad(right, right + scene.walk, near, far), scene.sidewalk)
    cv.polygon(view.quad(left, right, near, far), scene.asphalt)
    if scene.plan.environment in ("urban", "suburban"):
        curb = _mix(scene.sidewalk, (240, 240, 240), 0.3)
        cv.polygon(view.quad(left - 0.15, left, near, far), curb)
        cv.polygon(view.quad(right, right + 0.15, near, far), curb)
    if scene.plan.weather == "snow":
        cv.polygon(view.quad(left, left + 0.7, near, far), (226, 229, 234))
        cv.polygon(view.quad(right - 0.7, right, near, far), (226, 229, 234))
    start = math.floor(view.cam_z / 2.0) * 2.0
    for x, dashed in scene.road.lines:
        if not dashed:
            cv.polygon(view.quad(x - 0.07, x + 0.07, near, far), scene.marking)
            continue
        z = start
        while z < view.cam_z + 60:
            z0, z1 = max(z, near), z + 0.7
            if z1 > near:
                cv.polygon(view.quad(x - 0.06, x + 0.06, z0, z1), scene.marking)
            z += 2.0
    if scene.plan.environment == "highway":
        for edge, out in ((left, -1), (right, 1)):
            x = edge + out * (scene.walk - 0.3)
            pts = [
                view.point(x, near, 0.45),
                view.point(x, far, 0.45),
                view.point(x, far, 0.8),
                view.point(x, near, 0.8),
            ]
            cv.polygon(pts, (176, 180, 184))
    if cv.lights:  # the camera car's low beam on the road
        for z0, z1, value in zip(_BEAM_EDGES[:-1], _BEAM_EDGES[1:], _BEAM_LIGHT, strict=True):
            a0, a1 = _beam_half_width(z0), _beam_half_width(z1)
            cv.pool(
                [
                    view.point(view.cam_x - a0, view.cam_z + z0),
                    view.point(view.cam_x + a0, view.cam_z + z0),
                    view.point(view.cam_x + a1, view.cam_z + z1),
                    view.point(view.cam_x - a1, view.cam_z + z1),
                ],
                value,
            )


def _paint_building(cv: _Canvas, b: _Building, view: _View) -> None:
    z0 = max(b.z0, view.cam_z + 0.25)
    if b.z1 <= z0:
        return
    outward = b.x + b.side * 14.0
    cv.at((z0 + b.z1) / 2)
    cv.polygon(
        [view.point(b.x, z0), view.point(b.x, b.z1), view.point(b.x, b.z1, b.height), view.point(b.x, z0, b.height)],
        b.colour,
    )
    if b.z0 > view.cam_z + 0.25:
        cv.at(b.z0)
        cv.polygon(
            [
                view.point(b.x, b.z0),
                view.point(outward, b.z0),
                view.point(outward, b.z0, b.height),
                view.point(b.x, b.z0, b.height),
            ],
            _scale(b.colour, 0.8),
        )
        if b.gable is not None:
            mid = (b.x + outward) / 2
            cv.polygon(
                [
                    view.point(b.x, b.z0, b.height),
                    view.point(outward, b.z0, b.height),
                    view.point(mid, b.z0, b.height + 3.0),
                ],
                b.gable,
            )
    floors = max(1, round(b.height / b.floor_h))
    step = 0.55
    cols = max(1, int((b.z1 - z0) / step))
    for col in range(cols):
        za = z0 + col * step + 0.12
        zb = za + 0.3
        if view.ppm(zb) * 1.2 < 1.5:
            break
        cv.at(za)
        for floor in range(0 if b.gable is not None else 1, floors):
            lit = cv.lights and (b.pattern + floor * 131 + col * 31) % 7 < 3
            ha = floor * b.floor_h + 0.9
            cv.polygon(
                [
                    view.point(b.x, za, ha),
                    view.point(b.x, zb, ha),
                    view.point(b.x, zb, ha + 1.3),
                    view.point(b.x, za, ha + 1.3),
                ],
                (236, 200, 130) if lit else b.window,
                glow=(210, 170, 100) if lit else None,
            )
    for s0, s1, colour, _ in b.signs:
        if s1 <= view.cam_z + 0.25:
            continue
        sa = max(s0, view.cam_z + 0.25)
        cv.at((sa + s1) / 2)
        cv.polygon(
            [view.point(b.x, sa, 2.7), view.point(b.x, s1, 2.7), view.point(b.x, s1, 3.6), view.point(b.x, sa, 3.6)],
            colour,
            glow=_scale(colour, 0.7) if cv.lights else None,
        )
        if view.ppm(s1) > 8:
            for i in range(3):
                ta = sa + (s1 - sa) * (0.15 + 0.25 * i)
                cv.polygon(
                    [
                        view.point(b.x, ta, 3.0),
                        view.point(b.x, ta + (s1 - sa) * 0.15, 3.0),
                        view.point(b.x, ta + (s1 - sa) * 0.15, 3.3),
                        view.point(b.x, ta, 3.3),
                    ],
                    _WHITE,
                )


_CIRCLE = tuple(2 * math.pi * i / 16 for i in range(16))


def _blur(img: Image.Image, factor: int) -> Image.Image:
    """Cheap wide blur: shrink (area filter) and enlarge again."""
    w, h = img.size
    small = img.resize((max(1, w // factor), max(1, h // factor)), Image.Resampling.BILINEAR)
    return small.resize((w, h), Image.Resampling.BILINEAR)


@lru_cache(maxsize=64)
def _affine(gain: float, offset: float = 0.0, bands: int = 3) -> list[int]:
    """Lookup table of v -> gain * v + offset (clipped to 0..255) for ``Image.point``."""
    return [min(255, max(0, round(v * gain + offset))) for v in range(256)] * bands


@lru_cache(maxsize=8)
def _noise_bank(width: int, height: int, sigma: float) -> Image.Image:
    """Gaussian sensor noise around 128, a little larger than the frame: frames take shifted crops.

    Drawing fresh noise per frame costs more than everything else together; a fixed bank cropped at
    random offsets looks the same to the eye and keeps the output a pure function of the seed.
    """
    noise = np.random.default_rng(1234).standard_normal((height + _NOISE_PAD, width + _NOISE_PAD, 3), dtype=np.float32)
    return Image.fromarray(np.clip(128 + sigma * noise, 0, 255).astype(np.uint8))


_NOISE_PAD = 32
_FOG_RGB = {"day": (206, 208, 212), "dusk": (150, 130, 122), "night": (34, 35, 42)}
_NOISE_SIGMA = {"day": 2.0, "dusk": 3.0, "night": 4.5}
_PRECIPITATION_TONE = {"rain": {"day": 215, "dusk": 170, "night": 90}, "snow": {"day": 245, "dusk": 200, "night": 120}}


def _finish(cv: _Canvas, scene: _Scene, rng: np.random.Generator) -> Image.Image:
    """Lighting (dusk, night), fog, glow halos, rain, snow and sensor noise over the painted frame.

    All passes are 8-bit PIL operations (multiply, composite, add): float numpy passes over a
    full frame were several times slower than all the drawing.
    """
    plan = scene.plan
    img = cv.img
    size = img.size
    if cv.light is not None:
        light = _blur(cv.light, 4)
        if plan.daytime == "night":
            ambient, gain = (0.15, 0.16, 0.22), (0.95, 0.88, 0.72)
        else:
            ambient, gain = (0.86, 0.70, 0.58), (0.25, 0.25, 0.25)
        factor = Image.merge("RGB", [light.point(_affine(g, 255 * a, 1)) for a, g in zip(ambient, gain, strict=True)])
        img = ImageChops.multiply(img, factor)
    if cv.depth is not None:
        density = float(rng.uniform(0.06, 0.11))  # per unit of depth
        lut = [round(255 * min(0.92, 1.0 - math.exp(-density * 255 / max(v, 0.25)))) for v in range(256)]
        img = Image.composite(Image.new("RGB", size, _FOG_RGB[plan.daytime]), img, cv.depth.point(lut))
    if cv.glow is not None:
        strength = 1.0 if plan.daytime == "night" else 0.5
        fog = plan.weather == "fog"
        halo = _blur(cv.glow, 16 if fog else 8).point(_affine(strength * (2.5 if fog else 1.2)))
        img = ImageChops.add(ImageChops.add(img, cv.glow.point(_affine(0.8 * strength))), halo)
    if plan.weather in ("rain", "snow"):
        img = _precipitation(img, plan, rng)
    sigma = _NOISE_SIGMA[plan.daytime]
    dx, dy = (int(v) for v in rng.integers(0, _NOISE_PAD, 2))
    noise = _noise_bank(size[0], size[1], sigma).crop((dx, dy, dx + size[0], dy + size[1]))
    return ImageChops.add(img, noise, scale=1.0, offset=-128)


def _precipitation(img: Image.Image, plan: _SequencePlan, rng: np.random.Generator) -> Image.Image:
    """Rain streaks (and a slightly darker, flatter picture) or snow flakes, drawn fresh every frame."""
    w, h = img.size
    mask = Image.new("L", (w, h))
    draw = ImageDraw.Draw(mask)
    rain = plan.weather == "rain"
    count = int((500 if rain else 700) * w * h / (640 * 480))
    xs, ys = rng.uniform(0, w, count).tolist(), rng.uniform(0, h, count).tolist()
    sizes = (rng.uniform(0.4, 1.0, count) ** 2 * (h / 480.0)).tolist()
    if rain:
        slant = float(rng.uniform(-0.3, 0.3))
        for x, y, s in zip(xs, ys, sizes, strict=True):
            length = 8 + 22 * s
            draw.line([(x, y), (x + slant * length, y + length)], fill=round(50 + 45 * s), width=1)
        img = img.point(_affine(0.9, 8))
    else:
        for x, y, s in zip(xs, ys, sizes, strict=True):
            r = 0.6 + 2.6 * s
            draw.ellipse((x - r, y - r, x + r, y + r), fill=round(130 + 90 * s))
    tone = _PRECIPITATION_TONE[plan.weather][plan.daytime]
    return Image.composite(Image.new("RGB", (w, h), (tone, tone, tone)), img, mask)


def _render_frame(
    scene: _Scene, t: int, width: int, height: int, rng: np.random.Generator
) -> tuple[Image.Image, _FrameTruth]:
    plan = scene.plan
    view = _View(
        width,
        height,
        scene.horizon + float(rng.normal(0, 0.004 * height)),
        scene.vanish_x,
        scene.cam_dx * t,
        scene.cam_dz * t,
    )
    base, depth = _base_images(scene, view, plan.weather == "fog")
    cv = _Canvas(base, depth, lights=plan.daytime != "day", headlight_reach=1.8 if plan.daytime == "night" else 0.8)
    _paint_backdrop(cv, scene, view)
    _paint_road(cv, scene, view)
    for building in sorted(scene.buildings, key=lambda b: -b.z0):
        _paint_building(cv, building, view)
    placed = []
    for sprite in scene.sprites:
        z = sprite.z + sprite.vz * t
        rel = z - view.cam_z
        if 0.7 < rel < 150:
            placed.append((rel, z, sprite))
    if cv.lights:
        for rel, z, sprite in placed:
            if sprite.kind == "lamp" and rel > 0.9:  # a 4 m disc of light on the ground under the lamp head
                cv.pool([view.point(sprite.x - 1.6 + 4.0 * math.cos(a), z + 0.8 * math.sin(a)) for a in _CIRCLE], 80)
    boxes: list[tuple[_Sprite, Box]] = []
    lamp_light = 0.1 if plan.environment == "rural" else 0.25  # street lamps light everything a little
    for rel, z, sprite in sorted(placed, key=lambda item: -item[0]):
        x, y = view.point(sprite.x, z)
        k = view.ppm(z)
        if x < -10 * k - width or x > 2 * width + 10 * k:
            continue
        cv.at(rel, light=lamp_light + _beam_light(sprite.x - view.cam_x, rel))
        boxes.append((sprite, _SPRITES[sprite.kind](cv, x, y, k, rel, sprite.params)))
    image = _finish(cv, scene, rng)
    sizes, kinds, objects = [], set(), []
    for sprite, (x0, y0, x1, y1) in boxes:
        clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height))
        cw, ch = clipped[2] - clipped[0], clipped[3] - clipped[1]
        if cw < 1 or ch < 1:
            continue
        objects.append((sprite.kind, clipped))
        if sprite.roadwork:
            sizes.append(max(cw, ch))
            kinds.add(sprite.kind)
    truth = _FrameTruth(
        tuple(sorted(kinds)), len(sizes), round(max(sizes, default=0.0)), tuple(objects), _regions(scene, view)
    )
    return image, truth


def _regions(scene: _Scene, view: _View) -> tuple[tuple[str, tuple[Point, ...]], ...]:
    """Ground polygons of one frame: road, sidewalks or shoulders, curbs, and the roadside barrier of the environment."""
    road, near, far = scene.road, view.cam_z + 0.8, view.cam_z + 150.0
    regions = [
        ("road", view.quad(road.left, road.right, near, far)),
        ("sidewalk", view.quad(road.left - scene.walk, road.left - 0.15, near, far)),
        ("sidewalk", view.quad(road.right + 0.15, road.right + scene.walk, near, far)),
        ("curb", view.quad(road.left - 0.15, road.left, near, far)),
        ("curb", view.quad(road.right, road.right + 0.15, near, far)),
    ]
    edge = {"highway": "guard_rail", "rural": "fence"}.get(scene.plan.environment)
    if edge:
        x = road.right + scene.walk
        regions.append(
            (
                edge,
                (view.point(x, near, 0.0), view.point(x, far, 0.0), view.point(x, far, 1.0), view.point(x, near, 1.0)),
            )
        )

    def clamp(px: float, py: float) -> Point:  # Vistas polygons lie inside the image
        return (round(min(max(px, 0.0), view.width), 1), round(min(max(py, 0.0), view.height), 1))

    return tuple((name, tuple(clamp(px, py) for px, py in polygon)) for name, polygon in regions)


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------


def _shard_names(split: str, n_rows: int, rows_per_shard: int) -> list[str]:
    n = math.ceil(n_rows / rows_per_shard)
    return [f"{split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]


def _check_no_stale_files(folder: Path, pattern: str, planned: set[str]) -> None:
    stale = sorted(p.name for p in folder.glob(pattern) if p.name not in planned)
    if stale:
        raise FileExistsError(
            f"{folder} already holds files this run would not overwrite: {stale[:5]} ({len(stale)} in all); readers "
            "that list the folder would mix them with the new data. Remove them or choose another output directory."
        )


@dataclass(frozen=True)
class _Frame:
    split: str  # "train" or "test"
    scene: _Scene
    t: int
    image_id: int
    jpeg: bytes
    truth: _FrameTruth


def _frames(
    config: DemoDataConfig, by_split: dict[str, list[_SequencePlan]], progress_bar: bool = True
) -> Iterator[_Frame]:
    """Render every planned frame, split by split, sequence by sequence (one image in memory at a time)."""
    width, height = config.image_width, config.image_height
    with tqdm(
        total=config.n_images, desc=f"demo images ({config.layout})", unit="img", disable=not progress_bar
    ) as progress:
        for split, plans in by_split.items():
            for plan in plans:
                rng = np.random.default_rng(_seed(config, 1, plan.seq_id))
                scene = _build_scene(plan, width, height, rng)
                for t in range(plan.n_frames):
                    image, truth = _render_frame(scene, t, width, height, rng)
                    buffer = io.BytesIO()
                    image.save(buffer, format="JPEG", quality=config.jpeg_quality)
                    yield _Frame(split, scene, t, plan.first_id + t, buffer.getvalue(), truth)
                    progress.update(1)


@dataclass(frozen=True)
class DrawnFrame:
    """One rendered frame with what the generator knows it drew: the truth that pre-training learns from."""

    jpeg: bytes
    label: int
    roadwork_boxes: tuple[
        tuple[str, Box], ...
    ]  # (roadwork kind, (x0, y0, x1, y1) in image pixels), clipped to the image
    daytime: str
    weather: str
    environment: str
    hard_negative: str


def draw_frames(config: DemoDataConfig) -> Iterator[DrawnFrame]:
    """Every frame ``config`` plans (both splits), in memory, one at a time, with its per-object truth.

    Same frames and bytes as :func:`generate_demo_dataset` writes; nothing is written to disk.
    """
    by_split = {"all": sorted(_plan_sequences(config), key=lambda p: p.seq_id)}
    for frame in _frames(config, by_split, progress_bar=False):
        plan = frame.scene.plan
        boxes = tuple((kind, box) for kind, box in frame.truth.objects if kind in ROADWORK_KINDS)
        yield DrawnFrame(
            frame.jpeg, plan.label, boxes, plan.daytime, plan.weather, plan.environment, plan.hard_negative
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
    plans = _plan_sequences(config)
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
    out_dir: Path, config: DemoDataConfig, by_split: dict[str, list[_SequencePlan]]
) -> list[dict[str, Any]]:
    data_dir = out_dir / "data"
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
    for frame in _frames(config, by_split):
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
    "cone": "object--traffic-cone",
    "barrier": "construction--barrier--temporary",
    "sign": "object--traffic-sign--temporary-front",
    "arrow_board": "object--traffic-sign--temporary-front",
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
    "curb": "construction--barrier--curb",
    "guard_rail": "construction--barrier--guard-rail",
    "fence": "construction--barrier--fence",
}
_MAPILLARY_EXTRA_LABELS = (
    "nature--sky",
    "object--pothole",
    "construction--barrier--concrete-block",
    "object--traffic-sign--temporary-back",
)
MAPILLARY_SPLITS = {"train": "training", "test": "validation"}


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
    out_dir: Path, config: DemoDataConfig, by_split: dict[str, list[_SequencePlan]]
) -> list[dict[str, Any]]:
    folders = {
        split: (out_dir / MAPILLARY_SPLITS[split] / "images", out_dir / MAPILLARY_SPLITS[split] / "v2.0" / "polygons")
        for split in by_split
    }
    for split, (images, polygons) in folders.items():
        images.mkdir(parents=True, exist_ok=True)
        polygons.mkdir(parents=True, exist_ok=True)
        ids = [f"demo{plan.first_id + t:07d}" for plan in by_split[split] for t in range(plan.n_frames)]
        _check_no_stale_files(images, "*.jpg", {f"{key}.jpg" for key in ids})
        _check_no_stale_files(polygons, "*.json", {f"{key}.json" for key in ids})
    (out_dir / "config_v2.0.json").write_text(json.dumps(_mapillary_config(), indent=1))
    truth_rows = []
    for frame in _frames(config, by_split):
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
ROADWORK_SPLITS = {"train": "train", "test": "val"}


def roadwork_file_name(city: str, seq_id: int, t: int) -> str:
    """ROADWork's ``<city>_<seq>_<frame>.jpg`` naming: the sequence is in the name."""
    return f"{city.lower()}_{seq_id:04d}_{t:06d}.jpg"


def _write_roadwork(
    out_dir: Path, config: DemoDataConfig, by_split: dict[str, list[_SequencePlan]]
) -> list[dict[str, Any]]:
    images_dir, annotations_dir = out_dir / "scene" / "images", out_dir / "scene" / "annotations"
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
        annotations_dir, "*.json", {f"instances_{ROADWORK_SPLITS[split]}_gps_split.json" for split in by_split}
    )
    categories = [
        {"id": index + 1, "name": name, "supercategory": "roadwork"}
        for index, name in enumerate(ROADWORK_CATEGORIES.values())
    ]
    category_ids = {category["name"]: category["id"] for category in categories}
    documents = {split: {"images": [], "annotations": [], "categories": categories} for split in by_split}
    truth_rows = []
    for frame in _frames(config, by_split):
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
        (annotations_dir / f"instances_{ROADWORK_SPLITS[split]}_gps_split.json").write_text(json.dumps(document))
    return truth_rows


def _natix_row(scene: _Scene, t: int, image_id: int, jpeg: bytes, width: int, height: int) -> dict[str, Any]:
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


def _truth_row(frame: _Frame, config: DemoDataConfig) -> dict[str, Any]:
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


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``python -m stage1_core.demo.data OUT_DIR [--n-images N] [--seed S] [--shift night_fog_city] [--layout L]``."""
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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = DemoDataConfig(seed=args.seed, n_images=args.n_images, shift=args.shift)
    if args.layout == "fused":
        generate_fused_demo(args.out_dir, config)
    else:
        generate_demo_dataset(args.out_dir, config.model_copy(update={"layout": args.layout}))


if __name__ == "__main__":
    main()
