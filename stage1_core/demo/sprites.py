"""What the things in a demo scene look like: their colours, the canvas, and one drawing function per kind.

Each sprite draws itself standing at pixel ``(x, y)`` with ``k`` pixels per metre at depth ``z`` and returns
its box; the canvas paints the image and the buffers the lighting and weather passes need in one go. Where
an object stands is the scenes' business (:mod:`stage1_core.demo.scenes`), so look and placement change apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]
Point = tuple[float, float]

# Orange and red of things that are not roadwork (clothes, cars, shop signs): the hard negatives' colours.
ORANGE_LOOKALIKES: tuple[RGB, ...] = ((240, 110, 20), (226, 62, 30), (250, 140, 30), (206, 46, 36), (255, 124, 0))
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
WHITE: RGB = (236, 236, 232)
BLACK: RGB = (22, 22, 24)


def pick(rng: np.random.Generator, items: Sequence[Any], p: Sequence[float] | None = None) -> Any:
    """One item of ``items`` (numpy's choice would turn tuples into arrays)."""
    return items[int(rng.choice(len(items), p=p))]


def jitter(rng: np.random.Generator, colour: RGB, amount: int = 12) -> RGB:
    """``colour`` with each channel moved by up to ``amount`` (clipped to 0..255)."""
    r, g, b = (np.clip(np.array(colour) + rng.integers(-amount, amount + 1, 3), 0, 255)).tolist()
    return (r, g, b)


def mix(a: RGB, b: RGB, t: float) -> RGB:
    """The colour ``t`` of the way from ``a`` to ``b``."""
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def scale(colour: RGB, f: float) -> RGB:
    """``colour`` times ``f`` (brighter or darker), clipped at 255."""
    return (min(255, round(colour[0] * f)), min(255, round(colour[1] * f)), min(255, round(colour[2] * f)))


class Canvas:
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
        return scale(colour, 0.25 + 0.65 * min(1.0, self.headlight_reach / max(z, 0.5)))

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


def _draw_cone(cv: Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    h, base_h = 0.75 * k, max(1.0, 0.05 * k)
    wb, wt = 0.36 * k, 0.07 * k

    def width_at(f: float) -> float:
        return wb + (wt - wb) * f

    top = y - h
    cv.box((x - 0.26 * k, y - base_h, x + 0.26 * k, y), p["base"])
    cv.polygon(
        [(x - wb / 2, y - base_h), (x + wb / 2, y - base_h), (x + wt / 2, top), (x - wt / 2, top)],
        p["colour"],
        glow=cv.retro(scale(p["colour"], 0.5), z),
    )
    for f0, f1 in ((0.32, 0.45), (0.58, 0.68)):
        a, b = width_at(f0) / 2, width_at(f1) / 2
        ya, yb = y - base_h - f0 * (h - base_h), y - base_h - f1 * (h - base_h)
        cv.polygon([(x - a, ya), (x + a, ya), (x + b, yb), (x - b, yb)], WHITE, glow=cv.retro(WHITE, z))
    return (x - 0.26 * k, top, x + 0.26 * k, y)


def _draw_barrier(cv: Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    w = p["width"] * k
    x0, x1 = x - w / 2, x + w / 2
    post = max(1.0, 0.07 * k)
    for px in (x0 + 0.1 * k, x1 - 0.1 * k - post):
        cv.box((px, y - 1.0 * k, px + post, y), WHITE)
        cv.box((px - 0.15 * k, y - max(1.0, 0.08 * k), px + post + 0.15 * k, y), BLACK)
    boards = ((0.72, 1.0),) if p["boards"] == 1 else ((0.72, 1.0), (0.3, 0.52))
    period, stripe = 0.36 * k, 0.18 * k
    for lo, hi in boards:
        yb, yt = y - lo * k, y - hi * k
        cv.box((x0, yt, x1, yb), WHITE, glow=cv.retro(WHITE, z))
        bh = yb - yt
        if stripe < 1.0:
            cv.box((x0, yt + bh / 3, x1, yb - bh / 3), p["colour"])
            continue
        u = x0 - bh
        while u < x1:
            band = [(u, yb), (u + stripe, yb), (u + stripe + bh, yt), (u + bh, yt)]
            clipped = _clip_x(band, x0, x1)
            if len(clipped) >= 3:
                cv.polygon(clipped, p["colour"], glow=cv.retro(scale(p["colour"], 0.6), z))
            u += period
    if p["lamp"]:
        r = max(1.0, 0.08 * k)
        cv.disc(
            (x0 + 0.1 * k - r, y - 1.0 * k - 2 * r, x0 + 0.1 * k + r, y - 1.0 * k), (250, 190, 40), glow=(255, 190, 60)
        )
    return (x0 - 0.05 * k, y - 1.0 * k - (0.16 * k if p["lamp"] else 0.0), x1 + 0.05 * k, y)


def _draw_temp_sign(cv: Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    d = 1.06 * k  # diagonal of a 0.75 m diamond
    bottom = 1.3 * k if p["pole"] else 0.5 * k
    cy = y - bottom - d / 2
    if p["pole"]:
        cv.box((x - 0.04 * k, y - bottom, x + 0.04 * k, y), _GREY_POLE)
    else:
        cv.line([(x - 0.4 * k, y), (x, y - bottom - 0.1 * k), (x + 0.4 * k, y)], _GREY_POLE, 0.05 * k)
    cv.polygon([(x, cy - d / 2), (x + d / 2, cy), (x, cy + d / 2), (x - d / 2, cy)], BLACK)
    inner = d / 2 - max(1.0, 0.05 * k)
    cv.polygon(
        [(x, cy - inner), (x + inner, cy), (x, cy + inner), (x - inner, cy)], p["colour"], glow=cv.retro(p["colour"], z)
    )
    if d > 12:
        s = d / 10
        cv.disc((x - 1.6 * s, cy - 2.6 * s, x - 0.6 * s, cy - 1.6 * s), BLACK)
        cv.line([(x - 1.0 * s, cy - 1.5 * s), (x - 0.2 * s, cy + 1.2 * s)], BLACK, 0.5 * s)
        cv.line([(x - 0.6 * s, cy), (x + 1.2 * s, cy + 0.8 * s)], BLACK, 0.35 * s)
        cv.polygon([(x + 0.6 * s, cy + 2.2 * s), (x + 1.4 * s, cy + 1.0 * s), (x + 2.2 * s, cy + 2.2 * s)], BLACK)
    return (x - d / 2, cy - d / 2, x + d / 2, y)


def _draw_person(cv: Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
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
            glow=cv.retro(scale(p["vest"], 0.5), z),
        )
        for level in (0.16, 0.34):
            yy = hip - level * k
            cv.box((x - 0.2 * k, yy - max(1.0, 0.04 * k), x + 0.2 * k, yy), (215, 218, 220), glow=cv.retro(WHITE, z))
    cv.disc((x - 0.1 * k, y - 1.73 * k, x + 0.1 * k, y - 1.47 * k), p["skin"])
    if p["vest"] is not None:
        cv.disc((x - 0.13 * k, y - 1.80 * k, x + 0.13 * k, y - 1.58 * k), p["hat"])
        cv.box((x - 0.15 * k, y - 1.66 * k, x + 0.15 * k, y - 1.63 * k), p["hat"])
        top = y - 1.80 * k
    else:
        cv.disc((x - 0.105 * k, y - 1.76 * k, x + 0.105 * k, y - 1.6 * k), p["hair"])
        top = y - 1.76 * k
    return (x - 0.31 * k - stride, top, x + 0.31 * k + stride, y)


def _draw_arrow_board(cv: Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    w, bottom, top = 2.3 * k, 1.7 * k, 3.0 * k
    for side in (-1, 1):
        cv.box((x + side * 0.7 * k - 0.14 * k, y - 0.42 * k, x + side * 0.7 * k + 0.14 * k, y), BLACK)
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


def _draw_car(cv: Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    w, h = p["width"] * k, p["height"] * k
    body = p["colour"]
    for side in (-1, 1):
        cv.box((x + side * (w / 2 - 0.06 * k), y - 0.34 * k, x + side * (w / 2 - 0.3 * k), y), BLACK)
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


def _draw_tree(cv: Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
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


def _draw_lamp(cv: Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    arm = p["arm"] * 1.6 * k
    cv.box((x - 0.07 * k, y - 7.0 * k, x + 0.07 * k, y), _GREY_POLE)
    cv.line([(x, y - 7.0 * k), (x + arm, y - 7.1 * k)], _GREY_POLE, 0.08 * k)
    cv.box(
        (x + arm - 0.3 * k, y - 7.15 * k, x + arm + 0.3 * k, y - 7.0 * k),
        (210, 210, 196),
        glow=p["glow"] if cv.lights else None,
    )
    return (min(x, x + arm) - 0.3 * k, y - 7.15 * k, max(x, x + arm) + 0.3 * k, y)


def _draw_traffic_sign(cv: Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    r = 0.33 * k
    cy = y - 2.3 * k
    cv.box((x - 0.035 * k, cy, x + 0.035 * k, y), _GREY_POLE)
    shape = p["shape"]
    if shape == "triangle":
        cv.polygon([(x - 1.1 * r, cy + 0.8 * r), (x + 1.1 * r, cy + 0.8 * r), (x, cy - 1.1 * r)], (200, 30, 34))
        cv.polygon(
            [(x - 0.75 * r, cy + 0.6 * r), (x + 0.75 * r, cy + 0.6 * r), (x, cy - 0.7 * r)],
            WHITE,
            glow=cv.retro(WHITE, z),
        )
        cv.box((x - 0.06 * r, cy - 0.3 * r, x + 0.06 * r, cy + 0.3 * r), BLACK)
    else:
        ring = (200, 30, 34) if shape == "round_red" else (30, 80, 170)
        cv.disc((x - r, cy - r, x + r, cy + r), ring)
        inner = WHITE if shape == "round_red" else (36, 90, 180)
        cv.disc((x - 0.75 * r, cy - 0.75 * r, x + 0.75 * r, cy + 0.75 * r), inner, glow=cv.retro(inner, z))
        mark = BLACK if shape == "round_red" else WHITE
        cv.box((x - 0.35 * r, cy - 0.15 * r, x + 0.35 * r, cy + 0.15 * r), mark)
    return (x - 1.1 * r, cy - 1.1 * r, x + 1.1 * r, y)


def _draw_roadside_sign(cv: Canvas, x: float, y: float, k: float, z: float, p: dict[str, Any]) -> Box:
    """A shop sign on two posts (petrol station, farm shop): orange/red ones are hard negatives."""
    w, bottom, top = p["width"] * k, 1.8 * k, 3.1 * k
    for side in (-1, 1):
        cv.box((x + side * 0.35 * w - 0.05 * k, y - bottom, x + side * 0.35 * w + 0.05 * k, y), _GREY_POLE)
    cv.box(
        (x - w / 2, y - top, x + w / 2, y - bottom), p["colour"], glow=scale(p["colour"], 0.7) if cv.lights else None
    )
    if k > 6:
        for row in range(2):
            yy = y - top + (0.3 + 0.45 * row) * k
            cv.box((x - 0.35 * w, yy, x + (0.3 - 0.2 * row) * w, yy + 0.18 * k), WHITE)
    return (x - w / 2, y - top, x + w / 2, y)


SPRITES: dict[str, Callable[[Canvas, float, float, float, float, dict[str, Any]], Box]] = {
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


def person_params(rng: np.random.Generator, *, worker: bool, orange: bool) -> dict[str, Any]:
    top = jitter(rng, pick(rng, ORANGE_LOOKALIKES)) if orange else jitter(rng, pick(rng, _CLOTHES))
    return {
        "height": float(rng.uniform(1.6, 1.9)),
        "stride": float(rng.uniform(0.0, 0.12)),
        "legs": jitter(rng, pick(rng, ((40, 44, 60), (30, 30, 34), (70, 70, 76), (60, 50, 40)))),
        "top": jitter(rng, pick(rng, ((60, 66, 80), (220, 220, 214), (40, 60, 100)))) if worker else top,
        "skin": pick(rng, _SKIN),
        "hair": pick(rng, ((30, 24, 20), (80, 60, 40), (150, 120, 80), (200, 200, 200))),
        "vest": pick(rng, _HIVIS) if worker else None,
        "hat": pick(rng, _HELMETS),
    }


def car_params(rng: np.random.Generator, colour: RGB, rear: bool, lit: bool) -> dict[str, Any]:
    van = rng.random() < 0.2
    return {
        "colour": jitter(rng, colour, 10),
        "width": float(rng.uniform(1.75, 1.95)),
        "height": float(rng.uniform(1.9, 2.3) if van else rng.uniform(1.4, 1.55)),
        "rear": rear,
        "lit": lit,
    }
