"""How a demo frame becomes pixels, and what the generator knows it drew in it.

Painting (sky, road, buildings, sprites far to near), then lighting, fog, glow, rain or snow and sensor noise
as 8-bit PIL passes; each frame also returns its truth (visible roadwork, object boxes, ground regions).
:func:`render_frames` is the one frame loop: the layout writers save what it yields, and :func:`draw_frames`
hands the same frames to the demo pre-training in memory.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw
from tqdm import tqdm

from stage1_core.demo.config import ROADWORK_KINDS, DemoDataConfig
from stage1_core.demo.scenes import (
    Building,
    Scene,
    SequencePlan,
    Sprite,
    View,
    build_scene,
    plan_sequences,
    stream_seed,
)
from stage1_core.demo.sprites import SPRITES, WHITE, Box, Canvas, Point, mix, scale


@dataclass(frozen=True)
class FrameTruth:
    """What a frame shows: its visible roadwork (kinds, count, largest side), every object's box, the ground."""

    kinds: tuple[str, ...]
    n_objects: int
    max_px: int
    objects: tuple[tuple[str, Box], ...]  # every visible sprite: kind, box clipped to the image
    regions: tuple[tuple[str, tuple[Point, ...]], ...]  # ground surfaces and edges: region name, polygon


def _base_images(scene: Scene, view: View, want_depth: bool) -> tuple[Image.Image, Image.Image | None]:
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


def _paint_backdrop(cv: Canvas, scene: Scene, view: View) -> None:
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


def _paint_road(cv: Canvas, scene: Scene, view: View) -> None:
    near, far = view.cam_z + 0.6, view.cam_z + 400
    left, right = scene.road.left, scene.road.right
    cv.at(3.0)
    if scene.walk > 0:
        cv.polygon(view.quad(left - scene.walk, left, near, far), scene.sidewalk)
        cv.polygon(view.quad(right, right + scene.walk, near, far), scene.sidewalk)
    cv.polygon(view.quad(left, right, near, far), scene.asphalt)
    if scene.plan.environment in ("urban", "suburban"):
        curb = mix(scene.sidewalk, (240, 240, 240), 0.3)
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


def _paint_building(cv: Canvas, b: Building, view: View) -> None:
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
            scale(b.colour, 0.8),
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
            glow=scale(colour, 0.7) if cv.lights else None,
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
                    WHITE,
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


def _finish(cv: Canvas, scene: Scene, rng: np.random.Generator) -> Image.Image:
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


def _precipitation(img: Image.Image, plan: SequencePlan, rng: np.random.Generator) -> Image.Image:
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
    scene: Scene, t: int, width: int, height: int, rng: np.random.Generator
) -> tuple[Image.Image, FrameTruth]:
    plan = scene.plan
    view = View(
        width,
        height,
        scene.horizon + float(rng.normal(0, 0.004 * height)),
        scene.vanish_x,
        scene.cam_dx * t,
        scene.cam_dz * t,
    )
    base, depth = _base_images(scene, view, plan.weather == "fog")
    cv = Canvas(base, depth, lights=plan.daytime != "day", headlight_reach=1.8 if plan.daytime == "night" else 0.8)
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
    boxes: list[tuple[Sprite, Box]] = []
    lamp_light = 0.1 if plan.environment == "rural" else 0.25  # street lamps light everything a little
    for rel, z, sprite in sorted(placed, key=lambda item: -item[0]):
        x, y = view.point(sprite.x, z)
        k = view.ppm(z)
        if x < -10 * k - width or x > 2 * width + 10 * k:
            continue
        cv.at(rel, light=lamp_light + _beam_light(sprite.x - view.cam_x, rel))
        boxes.append((sprite, SPRITES[sprite.kind](cv, x, y, k, rel, sprite.params)))
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
    truth = FrameTruth(
        tuple(sorted(kinds)), len(sizes), round(max(sizes, default=0.0)), tuple(objects), _regions(scene, view)
    )
    return image, truth


def _regions(scene: Scene, view: View) -> tuple[tuple[str, tuple[Point, ...]], ...]:
    """Ground polygons of one frame: road, sidewalks or shoulders, curbs, and the environment's roadside barrier."""
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


# EXIF orientations a camera writes (upside down, turned left, turned right) and the transpose that stores an
# upright frame so that the tag turns it upright again (the inverse of PIL.ImageOps.exif_transpose's).
_STORED_TURNED: dict[int, Image.Transpose] = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}
_EXIF_ORIENTATION_TAG = 0x0112


def encode_jpeg(image: Image.Image, config: DemoDataConfig, image_id: int) -> bytes:
    """The frame as a JPEG file: baseline, or progressive for ``config.progressive_share`` of the frames, and
    stored turned with an EXIF Orientation tag for ``config.exif_orientation_share`` of them (as phone cameras
    write photos); which frames is a pure function of the seed and the image id."""
    draw = np.random.default_rng(stream_seed(config, 3, image_id)).random(3)
    options: dict[str, object] = {}
    if draw[0] < config.progressive_share:
        options["progressive"] = True
    if draw[1] < config.exif_orientation_share:
        orientation = list(_STORED_TURNED)[int(draw[2] * len(_STORED_TURNED))]
        image = image.transpose(_STORED_TURNED[orientation])
        exif = Image.Exif()
        exif[_EXIF_ORIENTATION_TAG] = orientation
        options["exif"] = exif
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=config.jpeg_quality, **options)
    return buffer.getvalue()


@dataclass(frozen=True)
class RenderedFrame:
    """One frame as the layout writers save it, with its place in the dataset and its truth."""

    split: str  # "train" or "test"
    scene: Scene
    t: int
    image_id: int
    jpeg: bytes
    truth: FrameTruth


def render_frames(
    config: DemoDataConfig, by_split: dict[str, list[SequencePlan]], progress_bar: bool = True
) -> Iterator[RenderedFrame]:
    """Render every planned frame, split by split, sequence by sequence (one image in memory at a time)."""
    width, height = config.image_width, config.image_height
    with tqdm(
        total=config.n_images, desc=f"demo images ({config.layout})", unit="img", disable=not progress_bar
    ) as progress:
        for split, plans in by_split.items():
            for plan in plans:
                rng = np.random.default_rng(stream_seed(config, 1, plan.seq_id))
                scene = build_scene(plan, width, height, rng)
                for t in range(plan.n_frames):
                    image, truth = _render_frame(scene, t, width, height, rng)
                    image_id = plan.first_id + t
                    yield RenderedFrame(split, scene, t, image_id, encode_jpeg(image, config, image_id), truth)
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

    Same frames and bytes as :func:`~stage1_core.demo.writers.generate_demo_dataset` writes; nothing is written
    to disk.
    """
    by_split = {"all": sorted(plan_sequences(config), key=lambda p: p.seq_id)}
    for frame in render_frames(config, by_split, progress_bar=False):
        plan = frame.scene.plan
        boxes = tuple((kind, box) for kind, box in frame.truth.objects if kind in ROADWORK_KINDS)
        yield DrawnFrame(
            frame.jpeg, plan.label, boxes, plan.daytime, plan.weather, plan.environment, plan.hard_negative
        )
