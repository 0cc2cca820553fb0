"""Procedural all-in-focus demo scenes with exact metric depth, a subject mask and a caption.

They feed the dataset builder and the tiny CPU-trained model: a simple, nameable, shaded subject
(0.8-3 m) in front of a strongly textured background (4-60 m, or a floor receding to the horizon)
whose blur has to follow K. Every layer is a plane at a known depth, composited with a z-buffer, so
depth and occlusion are exact; the same seed gives the same bytes. Colour planes are kept
channel-first (3, H, W) while drawing: numpy works on contiguous planes faster than on HxWx3.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import cv2
import numpy as np

SUBJECT_KINDS = ("ball", "box", "cylinder", "star", "triangle", "ring", "figure")
BACKGROUND_KINDS = ("striped wall", "checkered wall", "brick wall", "polka-dot wall", "hedge", "city lights", "trees")
FLOOR_KINDS = ("checkered floor", "tiled floor", "wooden floor", "grassy field")
SUBJECT_DEPTH_M = (0.8, 3.0)
#: Backdrops (walls, hedges, trees, city) stand this far away; sky sits at the far end.
BACKGROUND_DEPTH_M = (4.0, 60.0)
#: Depth of a floor at the bottom edge of the image; it recedes to the backdrop from there.
FLOOR_NEAR_M = (4.0, 6.0)
#: Smallest accepted image side in pixels (textures and shapes are sized from the short side).
MIN_SIDE = 32
#: ``<stem>.txt`` next to ``<stem>.png`` holds the caption.
CAPTION_SIDECAR_SUFFIX = ".txt"

#: Named colours (sRGB 0-255) used for subjects, walls and captions.
COLOURS = {
    "red": (200, 35, 35), "orange": (235, 120, 25), "yellow": (240, 200, 30), "green": (45, 150, 55),
    "teal": (20, 140, 140), "blue": (35, 80, 200), "purple": (120, 50, 170), "pink": (235, 110, 165),
    "white": (236, 236, 230), "black": (32, 32, 36), "grey": (128, 128, 128), "brown": (120, 75, 40),
    "cream": (240, 228, 196),
}
SUBJECT_COLOURS = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "white", "black")
WALL_COLOURS = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "grey", "brown")
_BRICKS = {"red": (150, 60, 45), "brown": (112, 78, 52), "grey": (125, 122, 118), "white": (212, 206, 196)}
_NOUNS = {"figure": "toy figure"}
#: A subject's colour must be at least this far (Euclidean, 0-255 RGB) from the colours behind it.
_MIN_COLOUR_DISTANCE = 100.0
#: Wall colours at least this bright (Rec. 601 luma, 0-255) get a dark partner colour, the others a pale one.
_LIGHT_LUMA = 140.0
#: A second object the subject would hide more than this fraction of is left out (the caption would name it).
_MAX_HIDDEN = 0.4
#: PNG zlib level: 3 writes faster than the default 6 for slightly larger files (still lossless).
_PNG_LEVEL = 3
_SKY_BLUE = (95, 155, 225)
_WARM_LIGHTS = ((255, 236, 190), (255, 205, 130), (255, 170, 90), (255, 245, 230), (250, 120, 90))


@dataclass
class DemoScene:
    """An all-in-focus image with its exact depth in metres, the subject mask, a caption and how it was made."""

    image: np.ndarray  # HxWx3 uint8, all in focus
    depth_m: np.ndarray  # HxW float32 metres (finite, > 0)
    mask: np.ndarray  # HxW bool, the subject
    caption: str
    meta: dict


class _Grid(NamedTuple):
    """Pixel-centre coordinates broadcastable to HxW, and the texture scale (short side / 512)."""

    x: np.ndarray  # (1, W)
    y: np.ndarray  # (H, 1)
    width: int
    height: int
    scale: float


class _Backdrop(NamedTuple):
    rgb: np.ndarray  # (3, H, W) float32 in [0, 1]
    sky: Optional[np.ndarray]  # HxW bool: pixels at the far limit instead of the backdrop depth
    phrase: str  # e.g. "a blue striped wall"
    colours: list  # (3, 1, 1) colours the subject's colour must stand out from
    light: float  # scene brightness (night < 1), applied to the floor


# ----------------------------------------------------------------------------- small helpers
def _rgb(name_or_rgb) -> np.ndarray:
    """A named or 0-255 colour as a (3, 1, 1) float32 array in [0, 1], broadcastable over planes."""
    value = COLOURS[name_or_rgb] if isinstance(name_or_rgb, str) else name_or_rgb
    return (np.asarray(value, dtype=np.float32) / 255.0).reshape(3, 1, 1)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A new blend ``a + t (b - a)`` of two (3, 1, 1) colours by per-pixel weights ``t`` (HxW)."""
    out = t * (b - a)
    out += a
    return out


def _blend(dst: np.ndarray, src, t: np.ndarray) -> np.ndarray:
    """In place ``dst += t (src - dst)``, returning ``dst``.

    Drawing works in place on purpose: fresh multi-megabyte temporaries cost page faults.
    """
    step = np.subtract(src, dst, dtype=np.float32)
    step *= t
    dst += step
    return dst


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _hash01(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """Hash of integer lattice points (|value| < 2**31) to [0, 1): exact integer arithmetic, the same everywhere."""
    def bits(v: np.ndarray) -> np.ndarray:
        return np.asarray(v).astype(np.int32).view(np.uint32)

    x = (bits(i) * np.uint32(0x27D4EB2D)) ^ (bits(j) * np.uint32(0x165667B1)) ^ np.uint32(salt)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x2C1B3C6D)
    x ^= x >> np.uint32(12)
    x *= np.uint32(0x297A2D39)
    x ^= x >> np.uint32(15)
    return (x >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _wrap(t: np.ndarray, period: float) -> np.ndarray:
    """``t`` modulo ``period``, in [0, period): cheaper than np.mod on floats."""
    return t - period * np.floor(t / period)


def _lattice_noise(u: np.ndarray, v: np.ndarray, salt: int) -> np.ndarray:
    """Smooth value noise in [0, 1] at continuous lattice coordinates (world units on floors)."""
    i, j = np.floor(u), np.floor(v)
    fu, fv = u - i, v - j
    su, sv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    h00, h10, h01, h11 = (_hash01(i + di, j + dj, salt) for dj in (0, 1) for di in (0, 1))
    top = h00 + su * (h10 - h00)
    return top + sv * (h01 + su * (h11 - h01) - top)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Image-space value noise (about [0, 1]) with features ``cell`` pixels wide."""
    cell = max(cell, 1.0)
    grid = rng.random((round(height / cell) + 2, round(width / cell) + 2), dtype=np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _fine_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_x: float, sigma_y: float) -> np.ndarray:
    """Blurred white noise scaled to unit standard deviation (blobs about 2 sigma wide)."""
    noise = cv2.GaussianBlur(rng.random(shape, dtype=np.float32) - 0.5, (0, 0), sigmaX=sigma_x, sigmaY=sigma_y)
    return noise / max(float(noise.std()), 1e-6)


def _band_coverage(t: np.ndarray, period: float, duty: float) -> np.ndarray:
    """Anti-aliased coverage of bands ``duty*period`` wide repeating every ``period`` along ``t`` (px)."""
    half = duty * period / 2
    to_centre = np.abs(_wrap(t - half + period / 2, period) - period / 2)  # distance to the nearest band centre
    return np.clip(half - to_centre + 0.5, 0.0, 1.0)


def _pick_colour(rng: np.random.Generator, names, avoid: list) -> str:
    """A colour name from ``names`` far enough from every colour in ``avoid`` (else the farthest one)."""
    behind = [np.ravel(c) * 255.0 for c in avoid]

    def distance(name: str) -> float:
        rgb = np.asarray(COLOURS[name], np.float32)
        return min((float(np.linalg.norm(rgb - c)) for c in behind), default=math.inf)

    ok = [n for n in names if distance(n) >= _MIN_COLOUR_DISTANCE]
    return str(rng.choice(ok)) if ok else max(names, key=distance)


def _disc(rgb: np.ndarray, centre: tuple[int, int], radius: int, colour) -> None:
    """Draw an anti-aliased filled disc of a 0-255 colour into the (3, H, W) planes."""
    for plane, value in zip(rgb, colour):
        cv2.circle(plane, centre, radius, value / 255.0, -1, cv2.LINE_AA)


# ----------------------------------------------------------------------------- backdrops
def _luma(name: str) -> float:
    r, g, b = COLOURS[name]
    return 0.299 * r + 0.587 * g + 0.114 * b


def _partner(rng: np.random.Generator, main: str) -> str:
    """A named colour that contrasts in brightness with ``main``: pale for dark colours, dark for light ones."""
    return str(rng.choice(("white", "cream") if _luma(main) < _LIGHT_LUMA else ("black", "brown")))


def _two_tone(rng: np.random.Generator) -> tuple[str, np.ndarray, Optional[str], np.ndarray]:
    """A wall colour and a contrasting partner: a named one (in the caption) or, for light colours, its own dark shade."""
    main = str(rng.choice(WALL_COLOURS))
    if _luma(main) >= _LIGHT_LUMA and rng.random() < 0.5:
        return main, _rgb(main), None, _rgb(main) * np.float32(rng.uniform(0.3, 0.45))
    other = _partner(rng, main)
    return main, _rgb(main), other, _rgb(other)


def _lit(rgb: np.ndarray, g: _Grid, rng: np.random.Generator) -> np.ndarray:
    """``rgb`` under gentle large-scale illumination (0.8-1.05, in place) so walls do not look flat-lit."""
    rgb *= 0.8 + 0.25 * _smooth_noise(rng, g.height, g.width, 160 * g.scale)
    return rgb


def _fairy_lights(rgb: np.ndarray, g: _Grid, rng: np.random.Generator) -> None:
    """A sagging string of small bright bulbs across the wall: the classic source of bokeh balls."""
    y0, sag = rng.uniform(0.06, 0.4) * g.height, rng.uniform(0.05, 0.25) * g.height
    xs = np.linspace(-0.05, 1.05, 64) * g.width
    ys = y0 + sag * (1 - ((xs / g.width - 0.5) * 2) ** 2)
    wire = np.stack([xs, ys], axis=1).round().astype(np.int32)
    for plane in rgb:
        cv2.polylines(plane, [wire], False, 0.1, max(1, round(g.scale)), cv2.LINE_AA)
    radius = max(1, round(rng.uniform(3.0, 5.0) * g.scale))
    for x, y in wire[:: int(rng.integers(2, 5))]:
        _disc(rgb, (int(x), int(y)), radius, _WARM_LIGHTS[int(rng.integers(len(_WARM_LIGHTS)))])


def _striped(g: _Grid, rng: np.random.Generator, horizon: float) -> _Backdrop:
    name, c1, other, c2 = _two_tone(rng)
    angle = math.radians(float(rng.choice([0, 90, 45, 135])) + rng.uniform(-8, 8))
    t = g.x * math.cos(angle) + g.y * math.sin(angle)
    cover = _band_coverage(t, rng.uniform(8, 24) * g.scale, rng.uniform(0.35, 0.6))
    phrase = f"{_article(name)} {name} and {other} striped wall" if other else f"{_article(name)} {name} striped wall"
    return _Backdrop(_lit(_mix(c1, c2, cover), g, rng), None, phrase, [c1, c2], 1.0)


def _checkered(g: _Grid, rng: np.random.Generator, horizon: float) -> _Backdrop:
    name, c1, other, c2 = _two_tone(rng)
    cell = rng.uniform(10, 26) * g.scale
    angle = math.radians(float(rng.choice([0, 45])) + rng.uniform(-5, 5))
    u = g.x * math.cos(angle) + g.y * math.sin(angle)
    v = g.y * math.cos(angle) - g.x * math.sin(angle)
    a, b = _band_coverage(u, 2 * cell, 0.5), _band_coverage(v, 2 * cell, 0.5)
    cover = a + b - 2 * a * b  # anti-aliased XOR of the two band sets
    phrase = f"{_article(name)} {name} and {other} checkered wall" if other else f"{_article(name)} {name} checkered wall"
    return _Backdrop(_lit(_mix(c1, c2, cover), g, rng), None, phrase, [c1, c2], 1.0)


def _brick(g: _Grid, rng: np.random.Generator, horizon: float) -> _Backdrop:
    name = str(rng.choice(list(_BRICKS)))
    brick = _rgb(_BRICKS[name])
    mortar = _rgb((200, 195, 185) if name != "white" else (110, 108, 104))
    bh = rng.uniform(8, 16) * g.scale
    bw = bh * rng.uniform(2.0, 2.7)
    joint = rng.uniform(0.1, 0.18) * bh
    row = np.floor(g.y / bh)
    shifted = g.x + _wrap(row, 2) * (bw / 2)  # alternate rows offset by half a brick
    tone = 0.8 + 0.4 * _hash01(row, np.floor(shifted / bw), int(rng.integers(1 << 30)))  # each brick its own shade
    grain = 1 + 0.2 * (rng.random((g.height, g.width), dtype=np.float32) - 0.5)
    cover = np.maximum(_band_coverage(g.y, bh, joint / bh), _band_coverage(shifted, bw, joint / bw))
    rgb = _lit(_blend(brick * (tone * grain), mortar, cover), g, rng)
    return _Backdrop(rgb, None, f"{_article(name)} {name} brick wall", [brick], 1.0)


def _polka(g: _Grid, rng: np.random.Generator, horizon: float) -> _Backdrop:
    name = str(rng.choice(WALL_COLOURS))
    dots = _partner(rng, name)
    if rng.random() < 0.4:  # coloured dots on a plain wall
        name, dots = dots, name
    base, dot = _rgb(name), _rgb(dots)
    spacing = rng.uniform(14, 30) * g.scale
    radius = rng.uniform(0.22, 0.36) * spacing
    row = np.floor(g.y / spacing)
    dx = _wrap(g.x + _wrap(row, 2) * (spacing / 2), spacing) - spacing / 2
    dy = _wrap(g.y, spacing) - spacing / 2
    cover = np.clip(radius - np.sqrt(dx * dx + dy * dy) + 0.5, 0, 1)
    phrase = f"{_article(name)} {name} wall with {dots} polka dots"
    return _Backdrop(_lit(_mix(base, dot, cover), g, rng), None, phrase, [base, dot], 1.0)


def _foliage(g: _Grid, rng: np.random.Generator, leaf: float, dark, light, glint: float) -> np.ndarray:
    """Leafy texture: crisp-edged blotches (leaves) over large clumps, dark gaps and sun glints through the
    leaves. The leaves' edges are steepened (tanh): soft blotches read as K ~1 to the edge-blur estimator."""
    fine = _fine_noise(rng, (g.height, g.width), leaf * g.scale, leaf * g.scale)
    clumps = _smooth_noise(rng, g.height, g.width, 45 * g.scale)
    x = 1.5 * np.tanh(3 * fine) + 4.0 * (clumps - 0.5)
    rgb = _mix(_rgb(dark), _rgb(light), 0.5 + 0.5 * x / (1 + np.abs(x)))  # a cheap sigmoid
    rgb *= 1 - 0.65 * (fine < -1.4)  # shadowed gaps between the leaves
    glints = cv2.dilate(((fine > glint) & (clumps > 0.55)).astype(np.uint8), np.ones((2, 2), np.uint8))
    return _blend(rgb, _rgb((255, 248, 215)), glints.astype(np.float32))


def _hedge(g: _Grid, rng: np.random.Generator, horizon: float) -> _Backdrop:
    rgb = _foliage(g, rng, 2.0, (18, 52, 20), (125, 180, 60), 2.2)
    return _Backdrop(rgb, None, "a leafy green hedge", [_rgb((60, 120, 40)), _rgb("green")], 1.0)


def _trees(g: _Grid, rng: np.random.Generator, horizon: float) -> _Backdrop:
    top = float(np.clip(horizon - rng.uniform(0.12, 0.35) * g.height, 0.08 * g.height, 0.6 * g.height))
    line = (top + 0.1 * g.height * (_smooth_noise(rng, 1, g.width, 60 * g.scale) - 0.5)
            + 0.03 * g.height * (_smooth_noise(rng, 1, g.width, 9 * g.scale) - 0.5))
    sky = g.y < line
    sky_rgb = _mix(_rgb(_SKY_BLUE), _rgb((190, 214, 238)), np.clip(g.y / max(top, 1.0), 0, 1) + np.zeros_like(g.x))
    cloud = np.clip((_smooth_noise(rng, g.height, g.width, 90 * g.scale) - 0.55) * 3, 0, 1)
    _blend(sky_rgb, np.float32(0.97), 0.8 * cloud)
    leaves = _foliage(g, rng, 1.5, (14, 40, 24), (90, 140, 70), 2.4)
    rgb = _blend(leaves, sky_rgb, sky.astype(np.float32))
    return _Backdrop(rgb, sky, "trees", [_rgb((60, 110, 50)), _rgb(_SKY_BLUE)], 1.0)


def _city(g: _Grid, rng: np.random.Generator, horizon: float) -> _Backdrop:
    h, w = g.height, g.width
    edges = np.cumsum(rng.uniform(40, 110, size=int(w / (40 * g.scale)) + 2) * g.scale)
    building = np.searchsorted(edges, g.x[0])  # which building each column belongs to
    top = (rng.uniform(0.12, 0.6, size=edges.size + 1) * h)[building]
    along = g.x - np.concatenate([[0.0], edges])[building]  # px from the building's left edge
    wx, wy = rng.uniform(8, 14) * g.scale, rng.uniform(10, 17) * g.scale
    lit = _hash01(np.floor(g.y / wy) * 977 + building, np.floor(along / wx), int(rng.integers(1 << 30)))
    window = ((_wrap(along, wx) < 0.55 * wx) & (along > 0.3 * wx) & (_wrap(g.y, wy) < 0.5 * wy)
              & (g.y > top + 0.5 * wy) & (lit > 0.45))
    rgb = _mix(_rgb((6, 8, 26)), _rgb((38, 28, 62)), g.y / h + np.zeros_like(g.x))
    _blend(rgb, _rgb((16, 16, 28)), (g.y >= top).astype(np.float32))
    warm = _mix(_rgb((255, 200, 110)), _rgb((255, 240, 200)), lit)
    warm *= 0.55 + 0.45 * lit
    _blend(rgb, warm, window.astype(np.float32))
    for _ in range(int(rng.integers(40, 90))):
        centre = (int(rng.uniform(0, w)), int(rng.uniform(0.25, 1.0) * h))
        radius = max(1, round(rng.uniform(1.5, 4.0) * g.scale))
        _disc(rgb, centre, radius, _WARM_LIGHTS[int(rng.integers(len(_WARM_LIGHTS)))])
    return _Backdrop(rgb, None, "city lights at night", [_rgb((10, 10, 30))], 0.45)


_BACKDROPS: dict[str, Callable[[_Grid, np.random.Generator, float], _Backdrop]] = {
    "striped wall": _striped, "checkered wall": _checkered, "brick wall": _brick, "polka-dot wall": _polka,
    "hedge": _hedge, "city lights": _city, "trees": _trees,
}
_WALLS = ("striped wall", "checkered wall", "brick wall", "polka-dot wall")


# ----------------------------------------------------------------------------- receding floors
class _Floor(NamedTuple):
    """World coordinates (metres) of the floor pixels below the horizon: image rows ``first_row``.. ."""

    first_row: int
    x: np.ndarray  # (h, W) metres to the right of the optical axis
    z: np.ndarray  # (h, 1) depth in metres, growing toward the horizon
    footprint: np.ndarray  # (h, 1) metres covered by one pixel (for crude anti-aliasing)


def _floor_geometry(g: _Grid, horizon: float, z_near: float) -> _Floor:
    """A flat floor seen by a level camera: depth ``z = A / (y - horizon)``, ``z_near`` at the bottom edge."""
    first = int(math.floor(horizon)) + 1
    a = z_near * (g.height - horizon)
    z = a / (g.y[first:] - horizon)
    focal = 0.9 * max(g.width, g.height)
    x = (g.x - g.width / 2) * z / focal
    return _Floor(first, x, z, np.maximum(z * z / a, z / focal))


def _detail(size_m: float, footprint: np.ndarray, lo: float = 2.0, span: float = 3.0) -> np.ndarray:
    """Contrast kept for features ``size_m`` wide: 1 from ``lo + span`` px up, 0 below ``lo`` px (no moire)."""
    return np.clip((size_m / footprint - lo) / span, 0.0, 1.0)


def _tri(t: np.ndarray) -> np.ndarray:
    """Triangle wave in [0, 1] with period 1."""
    return np.abs(2 * (t - np.floor(t)) - 1)


def _checkered_floor(f: _Floor, rng: np.random.Generator, salt: int) -> tuple[np.ndarray, str, list]:
    if rng.random() < 0.5:
        n1, n2 = "black", "white"
    else:
        n1, n2 = str(rng.choice(WALL_COLOURS)), str(rng.choice(("white", "cream")))
    tile = rng.uniform(0.25, 0.6)
    parity = _wrap(np.floor(f.x / tile) + np.floor(f.z / tile), 2)
    weight = 0.5 + _detail(tile, f.footprint) * (parity - 0.5)
    return _mix(_rgb(n1), _rgb(n2), weight), f"a {n1} and {n2} checkered floor", [_rgb(n1), _rgb(n2)]


def _tiled_floor(f: _Floor, rng: np.random.Generator, salt: int) -> tuple[np.ndarray, str, list]:
    name = str(rng.choice(("white", "cream", "grey", "teal", "blue", "orange")))
    tile, gap = rng.uniform(0.2, 0.45), 0.06
    u, v = f.x / tile, f.z / tile
    tone = 1 + _detail(tile, f.footprint) * 0.25 * (_hash01(np.floor(u), np.floor(v), salt) - 0.5)
    lines = ((u - np.floor(u)) < gap) | ((v - np.floor(v)) < gap)
    k = _detail(gap * tile, f.footprint, 0.6, 1.4)
    cover = k * lines + (1 - k) * (2 * gap)  # far away the grout averages into the tiles
    grout = _rgb((70, 68, 64)) if name in ("white", "cream") else _rgb((225, 222, 214))
    return _blend(_rgb(name) * tone, grout, cover), f"{_article(name)} {name} tiled floor", [_rgb(name)]


def _wooden_floor(f: _Floor, rng: np.random.Generator, salt: int) -> tuple[np.ndarray, str, list]:
    wood = _rgb([(190, 145, 95), (168, 112, 60), (120, 76, 44)][int(rng.integers(3))])
    width, length = rng.uniform(0.12, 0.22), rng.uniform(1.5, 3.0)
    plank = np.floor(f.x / width)
    along = f.z + _hash01(plank, 0, salt) * length  # staggered plank ends
    piece = np.floor(along / length)
    tone = 0.85 + 0.3 * _hash01(plank, piece, salt + 1)
    grain = _tri(f.x / width * 3 + 2 * _hash01(plank, piece, salt + 2) + 0.25 * _tri(f.z / 0.9))
    shade = tone * (1 + 0.2 * _detail(width / 6, f.footprint) * (grain - 0.5))
    seams = ((f.x / width - plank) < 0.06) | ((along / length - piece) < 0.01)
    seams = seams * _detail(0.06 * width, f.footprint, 0.4, 1.2)
    return wood * (shade * (1 - 0.6 * seams)), "a wooden floor", [wood]


def _grassy_field(f: _Floor, rng: np.random.Generator, salt: int) -> tuple[np.ndarray, str, list]:
    clumps = _lattice_noise(f.x / 0.7, f.z / 0.7, salt)
    tufts = _lattice_noise(f.x / 0.12, f.z / 0.12, salt + 1) - 0.5
    blades = np.clip(_fine_noise(rng, f.x.shape, 0.7, 2.2), -2.5, 2.5)  # short vertical streaks
    tone = np.clip(0.25 + 0.55 * clumps + 0.3 * _detail(0.12, f.footprint) * tufts, 0, 1)
    rgb = _mix(_rgb((38, 92, 28)), _rgb((140, 175, 60)), tone)
    rgb *= 1 + 0.28 * _detail(0.03, f.footprint, 0.3, 1.5) * blades
    phrase = "a grassy field"
    if rng.random() < 0.5:  # small bright flowers: more highlights to blur
        u, v = f.x / 0.3, f.z / 0.3
        centred = (u - np.floor(u) - 0.5) ** 2 + (v - np.floor(v) - 0.5) ** 2 < 0.16**2
        flower = centred & (_hash01(np.floor(u), np.floor(v), salt + 2) > 0.9) & (_detail(0.06, f.footprint, 1.0, 1.0) > 0.5)
        _blend(rgb, _rgb(((250, 250, 245), (250, 225, 60))[int(rng.integers(2))]), flower.astype(np.float32))
        phrase = "a grassy field with flowers"
    return rgb, phrase, [_rgb((70, 130, 45)), _rgb("green")]


_FLOORS = {"checkered floor": _checkered_floor, "tiled floor": _tiled_floor,
           "wooden floor": _wooden_floor, "grassy field": _grassy_field}


# ----------------------------------------------------------------------------- subjects
def _unit(v: np.ndarray) -> np.ndarray:
    """Normalise vectors stored along axis 0."""
    return (v / np.sqrt((v * v).sum(axis=0, keepdims=True))).astype(np.float32)


def _bevel_normals(mask: np.ndarray, bevel: float, rounded: bool) -> np.ndarray:
    """Normals of a cut-out whose edges are bevelled over ``bevel`` px: rounded (pillow) or straight (facets)."""
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    if rounded:
        t = 1 - np.clip(dist / bevel, 0, 1)
        height = bevel * np.sqrt(1 - t * t)
    else:
        height = 0.8 * np.minimum(dist, bevel)
    gy, gx = np.gradient(height)
    return _unit(np.stack([-gx, -gy, np.ones_like(gx)]))


def _polygon_mask(side: int, points) -> np.ndarray:
    mask = np.zeros((side, side), np.uint8)
    cv2.fillPoly(mask, [np.round(np.asarray(points) * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _box(side: int, c: float, r: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A cube seen from slightly above and to one side: front, lid and flank faces with flat normals."""
    a = 2 * r / 1.3  # the front face plus the receding depth o spans the whole size
    o = 0.3 * a
    left = top = c - r
    if rng.random() < 0.5:  # flank on the right
        sign, fx = 1.0, left
        lid = [[fx, top + o], [fx + o, top], [fx + o + a, top], [fx + a, top + o]]
        flank = [[fx + a, top + o], [fx + a + o, top], [fx + a + o, top + a], [fx + a, top + o + a]]
    else:
        sign, fx = -1.0, left + o
        lid = [[fx, top + o], [fx - o, top], [fx - o + a, top], [fx + a, top + o]]
        flank = [[fx, top + o], [fx - o, top], [fx - o, top + a], [fx, top + o + a]]
    front = [[fx, top + o], [fx + a, top + o], [fx + a, top + o + a], [fx, top + o + a]]
    labels = np.zeros((side, side), np.int64)
    for label, face in enumerate((front, lid, flank), start=1):
        labels[_polygon_mask(side, face)] = label
    table = _unit(np.array([[0, 0, 1], [0, 0, 1], [0, -1, 0.3], [sign, 0, 0.3]], np.float32).T)
    return labels > 0, table[:, labels]


def _shape(kind: str, size: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mask (S, S) and unit normals (3, S, S; x right, y down, z to the camera) of an object ``size`` px across."""
    side = int(math.ceil(size)) + 6
    c, r = side / 2, size / 2
    xs = np.arange(side, dtype=np.float32)[None, :] + 0.5 - c
    ys = np.arange(side, dtype=np.float32)[:, None] + 0.5 - c
    if kind == "ball":
        dx, dy = np.broadcast_arrays(xs / r, ys / r)
        rr = dx * dx + dy * dy
        return rr < 1, np.stack([dx, dy, np.sqrt(np.clip(1 - rr, 0, 1))])
    if kind == "ring":  # a torus seen face-on
        inner = r * rng.uniform(0.42, 0.62)
        tube, mid = (r - inner) / 2, (r + inner) / 2
        rho = np.maximum(np.sqrt(xs * xs + ys * ys), 1e-6)
        t = (rho - mid) / tube
        return np.abs(t) < 1, np.stack([t * xs / rho, t * ys / rho, np.sqrt(np.clip(1 - t * t, 0, 1))])
    if kind == "star":
        radii = np.tile([r, r * rng.uniform(0.4, 0.5)], 5)
        angles = -math.pi / 2 + rng.uniform(-0.2, 0.2) + np.arange(10) * math.pi / 5
        inside = _polygon_mask(side, np.stack([c + radii * np.cos(angles), c + radii * np.sin(angles)], axis=1))
        return inside, _bevel_normals(inside, 0.35 * r, rounded=False)
    if kind == "triangle":
        angles = -math.pi / 2 + rng.uniform(-0.15, 0.15) + np.arange(3) * 2 * math.pi / 3
        inside = _polygon_mask(side, np.stack([c + r * np.cos(angles), c + 0.15 * r + r * np.sin(angles)], axis=1))
        return inside, _bevel_normals(inside, 0.3 * r, rounded=False)
    if kind == "figure":  # a head disc on a body with shoulders, like a toy or a pawn
        head = 0.34 * r
        neck = -r + 1.9 * head
        body = [[c - 0.3 * r, c + neck], [c + 0.3 * r, c + neck], [c + 0.55 * r, c + r], [c - 0.55 * r, c + r]]
        inside = ((xs * xs + (ys + r - head) ** 2 < head * head) | _polygon_mask(side, body)
                  | ((xs / (0.42 * r)) ** 2 + ((ys - neck - 0.12 * r) / (0.2 * r)) ** 2 < 1))
        return inside, _bevel_normals(inside, head, rounded=True)
    if kind == "box":
        return _box(side, c, r, rng)
    if kind == "cylinder":  # upright, seen from slightly above: a lit lid ellipse on a shaded body
        rx = 0.58 * r
        ry = 0.25 * rx
        y_top, y_bottom = -r + ry, r - ry
        lid = (xs / rx) ** 2 + ((ys - y_top) / ry) ** 2 < 1
        base = (xs / rx) ** 2 + ((ys - y_bottom) / ry) ** 2 < 1
        inside = ((np.abs(xs) < rx) & (ys >= y_top) & (ys <= y_bottom)) | base | lid
        nx = np.clip(xs / rx, -1, 1) + np.zeros_like(ys)
        body = np.stack([nx, np.zeros_like(nx), np.sqrt(1 - nx * nx)])
        return inside, np.where(lid, _unit(np.array([0, -1, 0.5], np.float32).reshape(3, 1, 1)), body)
    raise ValueError(f"unknown subject kind {kind!r}")


def _shade(colour: np.ndarray, normals: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Ambient + Lambert + a Blinn-Phong highlight, darkening toward the bottom: solid objects, not flat cut-outs."""
    diffuse = np.clip(np.tensordot(light, normals, axes=1), 0, 1)
    half = light + np.array([0, 0, 1], np.float32)
    spec = np.clip(np.tensordot(half / np.linalg.norm(half), normals, axes=1), 0, 1) ** 40
    falloff = np.linspace(1.1, 0.8, normals.shape[1], dtype=np.float32)[:, None]
    return colour * ((0.28 + 0.8 * diffuse) * falloff) + 0.35 * spec


def _place(side: int, g: _Grid, cx: float, cy: float) -> tuple[int, int]:
    """Top-left corner of a ``side`` px canvas centred near (cx, cy), kept inside the image."""
    x0 = int(round(min(max(cx - side / 2, 0), g.width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), g.height - side)))
    return x0, y0


def _full_frame(shape: np.ndarray, x0: int, y0: int, size: tuple[int, int]) -> np.ndarray:
    full = np.zeros(size, bool)
    full[y0 : y0 + shape.shape[0], x0 : x0 + shape.shape[1]] = shape
    return full


def _paste(image: np.ndarray, depth: np.ndarray, shape: np.ndarray, rgb: np.ndarray,
           x0: int, y0: int, z: float) -> np.ndarray:
    """Z-buffer a planar object at depth ``z`` into the scene; returns the full-frame mask of its visible pixels."""
    region = (slice(y0, y0 + shape.shape[0]), slice(x0, x0 + shape.shape[1]))
    visible = shape & (np.float32(z) < depth[region])
    _blend(image[(slice(None), *region)], rgb, visible.astype(np.float32))
    depth[region] = np.where(visible, np.float32(z), depth[region])
    return _full_frame(visible, x0, y0, depth.shape)


# ----------------------------------------------------------------------------- scenes
def _check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < MIN_SIDE:
            raise ValueError(f"scene {name} must be an integer >= {MIN_SIDE}, got {value!r}")


def _check_seed(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _joined(phrase: str, extra: str) -> str:
    """``phrase`` extended by ``extra`` without stacking two "with"s."""
    return f"{phrase} and {extra}" if " with " in phrase else f"{phrase} with {extra}"


def _noun_phrase(colour: str, kind: str) -> str:
    return f"{_article(colour)} {colour} {_NOUNS.get(kind, kind)}"


class _Stage(NamedTuple):
    """Everything behind the subjects: colour planes, depth, the caption's "where" and colours to avoid."""

    image: np.ndarray  # (3, H, W) float32
    depth: np.ndarray  # (H, W) float32 metres
    where: str
    avoid: list
    meta: dict


def _stage(g: _Grid, rng: np.random.Generator) -> _Stage:
    """A backdrop plane (4-60 m, optionally with fairy lights), optionally fronted by a floor receding to it."""
    bg_kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    floor_kind = FLOOR_KINDS[int(rng.integers(len(FLOOR_KINDS)))] if rng.random() < 0.5 else None
    horizon = rng.uniform(0.3, 0.55) * g.height if floor_kind else rng.uniform(0.45, 0.7) * g.height
    z_near = rng.uniform(*FLOOR_NEAR_M)
    z_far = BACKGROUND_DEPTH_M[1]
    z_bg = float(np.float32(_log_uniform(rng, max(10.0, 2 * z_near) if floor_kind else BACKGROUND_DEPTH_M[0], z_far)))

    backdrop = _BACKDROPS[bg_kind](g, rng, horizon)
    image = np.ascontiguousarray(backdrop.rgb, dtype=np.float32)
    depth = np.full((g.height, g.width), z_bg, np.float32)
    if backdrop.sky is not None:
        depth[backdrop.sky] = z_far
    where = f"in front of {backdrop.phrase}"
    fairy = bg_kind in _WALLS and rng.random() < 0.3
    if fairy:
        _fairy_lights(image, g, rng)
        where = _joined(where, "fairy lights")
    avoid = list(backdrop.colours)
    if floor_kind:
        floor = _floor_geometry(g, horizon, z_near)
        rgb, floor_phrase, colours = _FLOORS[floor_kind](floor, rng, int(rng.integers(1 << 30)))
        rows = slice(floor.first_row, g.height)
        rgb *= np.float32(backdrop.light)
        _blend(image[:, rows], rgb, (floor.z < depth[rows]).astype(np.float32))  # z-buffer: the nearer surface wins
        depth[rows] = np.minimum(depth[rows], floor.z)
        outdoors = bg_kind == "trees" and floor_kind == "grassy field"
        where = f"on {_joined(floor_phrase, 'trees')}" if outdoors else f"on {floor_phrase} {where}"
        avoid += colours
    meta = {
        "background": bg_kind, "background_depth_m": z_bg, "background_min_depth_m": float(depth.min()),
        "floor": floor_kind, "floor_near_m": float(z_near) if floor_kind else None,
        "horizon_y": float(horizon) if floor_kind else None, "fairy_lights": fairy,
    }
    return _Stage(image, depth, where, avoid, meta)


def generate_scene(seed: int, width: int = 512, height: int = 512) -> DemoScene:
    """One all-in-focus scene with exact metric depth, the subject mask and a caption.

    The same seed gives the same bytes (with the same numpy and OpenCV builds).
    """
    _check_seed("seed", seed)
    _check_size(width, height)
    rng = np.random.default_rng(seed)
    g = _Grid(np.arange(width, dtype=np.float32)[None, :] + 0.5, np.arange(height, dtype=np.float32)[:, None] + 0.5,
              width, height, min(width, height) / 512.0)
    stage = _stage(g, rng)
    image, depth, where = stage.image, stage.depth, stage.where

    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.9, -0.3), rng.uniform(0.6, 1.0)], np.float32)
    light /= np.linalg.norm(light)
    kind = SUBJECT_KINDS[int(rng.integers(len(SUBJECT_KINDS)))]
    colour = _pick_colour(rng, SUBJECT_COLOURS, stage.avoid)
    z_subject = float(np.float32(rng.uniform(*SUBJECT_DEPTH_M)))
    size = rng.uniform(0.3, 0.52) * min(width, height)
    shape, normals = _shape(kind, size, rng)
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.42, 0.65) * height
    x0, y0 = _place(shape.shape[0], g, cx, cy)
    subject_full = _full_frame(shape, x0, y0, (height, width))

    second = None
    lo, hi = 1.3 * z_subject + 0.3, 0.85 * stage.meta["background_min_depth_m"]
    if rng.random() < 0.4 and lo < hi:  # a second object further back, mostly visible beside the subject
        s_kind = str(rng.choice([k for k in SUBJECT_KINDS if k != kind]))
        s_colour = _pick_colour(rng, SUBJECT_COLOURS, stage.avoid + [_rgb(colour)])
        z_second = float(np.float32(rng.uniform(lo, hi)))
        s_shape, s_normals = _shape(s_kind, size * rng.uniform(0.45, 0.75), rng)
        offset, lift = rng.uniform(0.28, 0.45) * width, rng.uniform(0, 0.1) * height
        best = None
        for side in (1, -1):  # the side where the subject hides less of it
            sx, sy = _place(s_shape.shape[0], g, cx + side * offset, cy - lift)
            hidden = (s_shape & subject_full[sy : sy + s_shape.shape[0], sx : sx + s_shape.shape[1]]).sum() / s_shape.sum()
            if best is None or hidden < best[0]:
                best = (float(hidden), sx, sy)
        if best[0] <= _MAX_HIDDEN:
            _paste(image, depth, s_shape, _shade(_rgb(s_colour), s_normals, light), best[1], best[2], z_second)
            second = {"kind": s_kind, "colour": s_colour, "depth_m": z_second, "hidden_fraction": best[0]}
            where += f", with {_noun_phrase(s_colour, s_kind)} further back"

    mask = _paste(image, depth, shape, _shade(_rgb(colour), normals, light), x0, y0, z_subject)
    np.clip(image, 0.0, 1.0, out=image)
    out = cv2.merge([cv2.convertScaleAbs(plane, alpha=255.0) for plane in image])
    meta = {
        "seed": int(seed), "width": width, "height": height,
        "subject": kind, "subject_colour": colour, "subject_depth_m": z_subject,
        "subject_box": [x0, y0, x0 + shape.shape[1], y0 + shape.shape[0]],
        **stage.meta, "second_object": second,
    }
    return DemoScene(out, depth, mask, f"{_noun_phrase(colour, kind)} {where}", meta)


# ----------------------------------------------------------------------------- files
def scene_seed(seed: int, index: int) -> int:
    """The seed of scene ``index`` of a run started with ``seed``: independent streams, no overlap between runs."""
    _check_seed("seed", seed)
    _check_seed("index", index)
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def caption_sidecar_path(photo: str | Path) -> Path:
    """``<stem>.txt`` next to ``photo``: its caption."""
    return Path(f"{Path(photo).with_suffix('')}{CAPTION_SIDECAR_SUFFIX}")


def write_demo_data(out_dir: str | Path, count: int, seed: int = 0, width: int = 512, height: int = 512,
                    progress: bool = True) -> list[Path]:
    """Write ``count`` scenes as ``scene_NNNNN.png`` with depth (.depth.npy), mask (.mask.png) and caption (.txt) sidecars.

    Scene ``i`` is ``generate_scene(scene_seed(seed, i))``; existing files of the same names are replaced.
    Returns the image paths in order.
    """
    from PIL import Image
    from tqdm import tqdm

    from estimators.sidecars import depth_sidecar_paths
    from estimators.mask import mask_sidecar_path

    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    _check_seed("seed", seed)
    _check_size(width, height)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(count - 1)))
    paths = []
    for index in tqdm(range(count), desc="demo scenes", unit="scene", disable=not progress):
        scene = generate_scene(scene_seed(seed, index), width, height)
        photo = out / f"scene_{index:0{digits}d}.png"
        Image.fromarray(scene.image).save(photo, compress_level=_PNG_LEVEL)
        np.save(depth_sidecar_paths(photo)[0], scene.depth_m)
        Image.fromarray(scene.mask.astype(np.uint8) * 255).save(mask_sidecar_path(photo), compress_level=_PNG_LEVEL)
        caption_sidecar_path(photo).write_text(scene.caption + "\n", encoding="utf-8")
        paths.append(photo)
    return paths
