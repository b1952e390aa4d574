"""What is in a demo sequence: its plan (label, split, city, conditions, object size) and the street built from it.

A sequence's plan is drawn from the config's seed; its scene (road, buildings, the roadwork cluster, cars,
people, trees, look-alikes) stays put between frames while the camera moves. Negatives plan a roadwork
cluster too but never draw it, and nothing may hide that spot on either class, so "nothing ahead" is no cue.

Geometry: a pinhole camera 1.5 m above a flat ground plane. Depth ``z`` is measured in units of the
distance at which the ground meets the bottom image row (about 5 m), so a ground point at depth ``z``
appears at ``horizon + (H - horizon) / z`` and an object there is drawn at ``(H - horizon) / (1.5 z)``
pixels per metre. Objects are flat "billboards" drawn far to near (painter's algorithm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from stage1_core.demo.config import HARD_NEGATIVE_KINDS, ROADWORK_KINDS, SIZE_RANGES_224, DemoDataConfig
from stage1_core.demo.sprites import (
    BLACK,
    ORANGE_LOOKALIKES,
    RGB,
    Box,
    Point,
    car_params,
    jitter,
    mix,
    person_params,
    pick,
    scale,
)

_CAM_HEIGHT_M = 1.5
_EPOCH_2024 = 1_704_067_200  # 2024-01-01T00:00:00Z


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
_LAYOUT_CODES = {"mapillary": 1, "roadwork": 2, "folder": 3}
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


def _pick_key(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    return keys[int(rng.choice(len(keys), p=np.array(list(weights.values())) / sum(weights.values())))]


# ----------------------------------------------------------------------------------------------------
# Sequence plan
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequencePlan:
    """One sequence's settings, drawn before any pixel: label, split, city, conditions, roadwork size."""

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


def stream_seed(config: DemoDataConfig, *parts: int) -> list[int]:
    """RNG seed of one stream; NATIX keeps its historical seeds, other layouts draw other scenes."""
    layout = [] if config.layout == "natix" else [_LAYOUT_CODES[config.layout]]
    return [config.seed, _SHIFT_CODES[config.shift], *parts, *layout]


def plan_sequences(config: DemoDataConfig) -> list[SequencePlan]:
    """Labels, splits and scene settings of every sequence; whole sequences go to one split."""
    rng = np.random.default_rng(stream_seed(config, 0))
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
            hard_negative = pick(rng, HARD_NEGATIVE_KINDS)
        plans.append(
            SequencePlan(
                seq_id=seq,
                first_id=seq * fps,
                n_frames=min(fps, config.n_images - seq * fps),
                label=label,
                split=splits[seq],
                city=pick(rng, profile.cities),
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
class Sprite:
    """An object standing in the scene; ``roadwork`` marks the objects that make a frame positive."""

    kind: str
    x: float  # lateral position, metres (positive = right)
    z: float  # depth of the ground contact, in bottom-row-distance units
    params: dict[str, Any]
    vz: float = 0.0  # depth change per frame (moving cars)
    roadwork: bool = False


@dataclass
class Building:
    """A facade along the road, with its windows, shop signs and (houses) a gable."""

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
class Road:
    """The carriageway: its edges, lanes and painted lines, in metres across."""

    left: float  # road edges, metres; the camera starts at x = 0 in the middle of its lane
    right: float
    lane_w: float
    oncoming: int  # lanes (counted from the left) whose traffic comes towards the camera
    lines: tuple[tuple[float, bool], ...]  # painted lines: (x, dashed)

    @property
    def lane_centres(self) -> list[float]:
        return [self.left + self.lane_w * (i + 0.5) for i in range(round((self.right - self.left) / self.lane_w))]


@dataclass
class Scene:
    """Everything of a sequence that stays put between its frames (see :func:`build_scene`)."""

    plan: SequencePlan
    horizon: float  # pixels from the top
    vanish_x: float
    cam_dx: float  # camera lateral motion per frame, metres
    cam_dz: float  # camera forward motion per frame, depth units
    road: Road
    walk: float  # sidewalk (or shoulder) width beyond each road edge
    sky: tuple[RGB, RGB]
    terrain: RGB
    asphalt: RGB
    sidewalk: RGB
    marking: RGB
    backdrop: list[tuple[float, float, float, RGB]]  # (x0, x1, height) as image fractions, colour
    hills: tuple[RGB, np.ndarray] | None  # colour, harmonic amplitudes/phases
    buildings: list[Building]
    sprites: list[Sprite]
    hard_negative: str  # the planned hard-negative kind, or "none" when none could be placed
    travel_alteration: str
    description: str
    gps: tuple[float, float]
    captured: int


@dataclass(frozen=True)
class View:
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


# ----------------------------------------------------------------------------------------------------
# Scene construction
# ----------------------------------------------------------------------------------------------------


def _road_layout(env: str, style: _CityStyle, rng: np.random.Generator) -> Road:
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
    return Road(left, left + n_lanes * lane_w, lane_w, oncoming, tuple(lines))


def _make_buildings(
    env: str, style: _CityStyle, rng: np.random.Generator, road: Road, walk: float, orange_signs: int
) -> list[Building]:
    if env not in ("urban", "suburban"):
        return []
    houses = env == "suburban"
    buildings: list[Building] = []
    for side, edge in ((-1, road.left), (1, road.right)):
        line = edge + side * (walk + (rng.uniform(4.0, 8.0) if houses else 0.0))
        z = float(rng.uniform(0.2, 1.2))
        while z < 45:
            length = float(rng.uniform(1.2, 2.4) if houses else rng.uniform(1.5, 4.0))
            floors = int(rng.integers(1, 3) if houses else rng.integers(style.floors[0], style.floors[1] + 1))
            floor_h = float(rng.uniform(2.9, 3.4))
            building = Building(
                side=side,
                x=float(line),
                z0=z,
                z1=z + length,
                height=floors * floor_h + (0.0 if houses else 1.2),
                colour=jitter(rng, pick(rng, style.facades), 10),
                window=jitter(rng, style.windows, 8),
                floor_h=floor_h,
                pattern=int(rng.integers(1 << 16)),
                gable=jitter(rng, pick(rng, style.roofs), 8) if houses else None,
            )
            if not houses and rng.random() < 0.45:
                s0 = z + float(rng.uniform(0.1, 0.4)) * length
                building.signs.append(
                    (
                        s0,
                        min(z + length - 0.1, s0 + float(rng.uniform(0.4, 1.2))),
                        jitter(rng, pick(rng, style.signs), 10),
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
                    jitter(rng, pick(rng, ORANGE_LOOKALIKES), 10),
                    True,
                )
            ]
    return buildings


def _roadwork_cluster(
    plan: SequencePlan, rng: np.random.Generator, road: Road, ppm1: float, width: int, height: int, vanish_x: float
) -> tuple[list[Sprite], str, str]:
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
    x0, in_lane = pick(rng, feasible) if feasible else (float(np.clip(centre, road.left + 0.4, road.right - 0.4)), True)
    towards_edge = road.right if x0 > (road.left + road.right) / 2 else road.left
    slope = float(rng.choice([0.0, 0.5])) * (1 if towards_edge > x0 else -1)
    spacing = float(rng.uniform(0.25, 0.55)) * max(1.0, z0 / 4)

    def along(dz: float) -> float:
        return float(np.clip(x0 + slope * dz, road.left - 1.0, road.right + 1.0))

    sprites: list[Sprite] = []

    def add(kind: str, x: float, z: float, params: dict[str, Any]) -> None:
        sprites.append(Sprite(kind, x, z, params, roadwork=True))

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
                        "colour": jitter(rng, pick(rng, _CONE_ORANGE), 8),
                        "base": pick(rng, (BLACK, (60, 60, 60), (230, 90, 20))),
                    },
                )
        elif kind == "barrier":
            colour = pick(rng, ((210, 30, 30), (245, 110, 10)))
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
            add("sign", x, start, {"colour": jitter(rng, (250, 130, 10), 8), "pole": bool(rng.random() < 0.6)})
        elif kind == "worker":
            for i in range(int(rng.integers(1, 3))):
                z = start + i * spacing * 0.7
                offset = 0.0 if anchor_first and i == 0 else float(rng.uniform(-0.9, 0.9))
                add("worker", along(z - z0) + offset, z, person_params(rng, worker=True, orange=False))
        else:
            add(
                "arrow_board",
                along(start - z0),
                start,
                {
                    "trailer": pick(rng, ((235, 180, 10), (230, 230, 226), (240, 120, 20))),
                    "direction": 1 if towards_edge < x0 else -1,
                },
            )
    travel = "lane_closure" if in_lane else "shoulder_work"
    names = [_KIND_NAMES[k] for k in ROADWORK_KINDS if k in kinds]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    where = "Lane closure ahead" if in_lane else "Roadwork at the road edge"
    return sprites, travel, f"{where} with {listed}."


def _lateral_spot(env: str, rng: np.random.Generator, road: Road, walk: float) -> float:
    """Where a pedestrian, tree or post can stand beside the road."""
    sign = -1 if rng.random() < 0.5 else 1
    side = road.left if sign < 0 else road.right
    if env in ("urban", "suburban"):
        return side + sign * float(rng.uniform(0.4, max(0.6, walk - 0.3)))
    return side + sign * float(rng.uniform(1.0, 6.0))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Depths spread evenly in log space, so near and far objects are equally common."""
    return float(np.exp(rng.uniform(math.log(lo), math.log(hi))))


def _extent_m(sprite: Sprite) -> tuple[float, float]:
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


def _screen_box(view: View, sprite: Sprite, t: int) -> Box | None:
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
    road: Road
    walk: float
    lights_on: bool  # cars drive with lights on (dusk, night)
    rng: np.random.Generator
    views: list[View]  # the camera of every frame
    guarded: list[Sprite]
    sprites: list[Sprite]
    hard_negatives_drawn: int = 0

    def place(self, sprite: Sprite) -> bool:
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
            if self.place(Sprite("car", x, z, car_params(rng, colour, rear, self.lights_on), vz=vz)):
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
        return self.place(Sprite("person", x, z, person_params(rng, worker=False, orange=orange)))

    def tree(self, autumn: bool, z: float) -> bool:
        rng, road = self.rng, self.road
        palette = _AUTUMN if autumn else self.style.foliage
        crown = [jitter(rng, pick(rng, palette), 14) for _ in range(3)]
        if self.env in ("urban", "suburban"):
            x = _lateral_spot(self.env, rng, road, self.walk)
        elif rng.random() < 0.5:
            x = road.left - self.walk - float(rng.uniform(3.0, 14.0))
        else:
            x = road.right + self.walk + float(rng.uniform(3.0, 14.0))
        kind = "broadleaf" if autumn else self.style.tree
        return self.place(Sprite("tree", x, z, {"kind": kind, "scale": float(rng.uniform(0.8, 1.3)), "crown": crown}))

    def roadside_sign(self, colour: RGB, z: float) -> bool:
        x = _lateral_spot(self.env, self.rng, self.road, self.walk)
        return self.place(Sprite("roadside_sign", x, z, {"colour": colour, "width": float(self.rng.uniform(2.0, 3.2))}))

    def populate(self) -> None:
        """Cars, people, trees, lamps and traffic signs in the amounts typical of the environment."""
        rng, env = self.rng, self.env
        for _ in range(int(rng.integers(0, {"urban": 6, "suburban": 4, "highway": 6, "rural": 3}[env]))):
            self.car(pick(rng, _CAR_COLOURS))
        for _ in range(int(rng.integers(0, {"urban": 7, "suburban": 3, "highway": 1, "rural": 2}[env]))):
            self.person(orange=False, crossing=env == "urban" and rng.random() < 0.15)
        for _ in range(
            int(rng.integers(*{"urban": (0, 8), "suburban": (6, 14), "highway": (3, 12), "rural": (4, 14)}[env]))
        ):
            self.tree(autumn=False, z=_log_uniform(rng, 1.2, 40.0))
        if env != "rural":
            x = self.road.right + (self.walk if env == "highway" else 0.4)
            glow = pick(rng, ((255, 200, 130), (255, 160, 70), (230, 236, 255)))
            z = float(rng.uniform(1.0, 3.0))
            while z < 45:
                self.place(Sprite("lamp", x, z, {"arm": -1, "glow": glow}))
                z += float(rng.uniform(4.0, 6.0))
        for _ in range(int(rng.integers(0, 3))):
            self.place(
                Sprite(
                    "traffic_sign",
                    self.road.right + float(rng.uniform(0.3, 1.2)),
                    float(rng.uniform(1.5, 25.0)),
                    {"shape": pick(rng, ("triangle", "round_red", "round_blue"))},
                )
            )
        if env in ("highway", "rural") and rng.random() < 0.3:
            self.roadside_sign(jitter(rng, pick(rng, self.style.signs)), float(rng.uniform(2.0, 20.0)))

    def hard_negative(self, kind: str) -> None:
        """Orange/red look-alikes of roadwork equipment; counts what was drawn (facade signs are counted
        by the caller, who drew them with the buildings)."""
        rng = self.rng
        if kind == "orange_car":
            drawn = [self.car(pick(rng, ORANGE_LOOKALIKES)) for _ in range(int(rng.integers(1, 4)))]
        elif kind == "autumn_tree":
            drawn = [self.tree(autumn=True, z=_log_uniform(rng, 1.3, 25.0)) for _ in range(int(rng.integers(2, 7)))]
        elif kind == "orange_clothes":
            drawn = [self.person(orange=True, crossing=rng.random() < 0.4) for _ in range(int(rng.integers(1, 4)))]
        elif kind == "shop_sign" and self.env != "urban":
            drawn = [
                self.roadside_sign(jitter(rng, pick(rng, ORANGE_LOOKALIKES)), _log_uniform(rng, 1.6, 20.0))
                for _ in range(int(rng.integers(1, 3)))
            ]
        else:
            drawn = []
        self.hard_negatives_drawn += sum(drawn)


_HOURS = {"day": (9, 17), "dusk": (17, 20), "night": (21, 28)}


def build_scene(plan: SequencePlan, width: int, height: int, rng: np.random.Generator) -> Scene:
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
    asphalt, sidewalk, terrain = (jitter(rng, c, 6) for c in (style.asphalt, style.sidewalk, style.terrain))
    if plan.weather == "rain":
        asphalt = scale(asphalt, 0.72)
    elif snow:
        asphalt, sidewalk, terrain = mix(asphalt, (200, 204, 210), 0.35), (222, 226, 232), (230, 233, 238)
    backdrop: list[tuple[float, float, float, RGB]] = []
    hills = None
    if env == "urban":
        x = 0.0
        while x < 1.0:
            w = float(rng.uniform(0.03, 0.1))
            backdrop.append((x, x + w, float(rng.uniform(0.02, 0.12)), mix(pick(rng, style.facades), sky[1], 0.6)))
            x += w * float(rng.uniform(0.7, 1.1))
    else:
        base = mix(pick(rng, style.foliage), sky[1], 0.45)
        hills = ((236, 238, 242) if snow else base, rng.uniform([0.005, 0.0], [0.03, 2 * math.pi], size=(5, 2)))
    orange_signs = int(rng.integers(1, 3)) if plan.hard_negative == "shop_sign" else 0
    buildings = _make_buildings(env, style, rng, road, walk, orange_signs)
    cam_dx, cam_dz = float(rng.uniform(-0.06, 0.06)), float(rng.uniform(0.02, 0.06))
    views = [View(width, height, horizon, vanish_x, cam_dx * t, cam_dz * t) for t in range(plan.n_frames)]
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
    return Scene(
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
