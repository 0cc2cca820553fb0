"""Edge blur per depth layer, and the photo's focal plane from it (docs/design.md §1).

A photo with defocus is focused where it is sharpest, which is often not its nearest salient region
(a portrait through leaves, foreground grass). Edge blur (Zhuo & Sim) is grouped by normalised
disparity into layers; the layer whose edges are sharpest holds the focal plane. A surface's own
texture can be soft (shading, fabric) where its outline against what lies behind it is as sharp as
the focus lets it be, so whether a photo has defocus at all is judged on the lesser of a layer's
interior and outline blur (see :func:`_level_layers`). The outline reading mixes in what lies
behind a blurred foreground, so the amount of blur (K) is read from the interiors. Defocus also has
to follow depth (see :func:`find_focal_plane`): blur that does not grow with the distance from the
focal plane, or that the layers disagree about, is the surfaces' own softness.

Zhuo & Sim's re-blur ratio resolves blurs of a few pixels only: a wide blur reads too narrow (its
gradients barely change under the re-blur, so noise and neighbouring edges dominate), a narrow one
vanishes into the in-focus edge width. Each layer is therefore measured on a pyramid (short sides
<= 512, halving, never below MIN_PYRAMID_SIDE) and keeps the reading of the level that resolves it:
neither saturated nor an artefact of the coarse pixels (see :func:`layer_blurs`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple, Optional, TypeVar

import cv2
import numpy as np

from .depth import normalize_disparity
from .lens import REFERENCE_SHORT_SIDE
from .sharpness import INTRINSIC_EDGE_SIGMA, defocus_at_edges, downscale_to_reference

T = TypeVar("T")

#: Width of a depth layer in normalised disparity.
LAYER_WIDTH = 1.0 / 12.0
#: A layer needs this many measured edges (at a pyramid level) to count there.
MIN_LAYER_EDGES = 20
#: The in-focus reference (edge-width floor, focal plane) is a layer with at least this many edges: a
#: sliver of a layer says little about the photo's sharpness.
MIN_REFERENCE_EDGES = 100
#: Percentile of a layer's edge sigmas taken as its blur: the lower ones are noise and edges that
#: crowd each other (both read sharper than the blur that made them).
LAYER_PERCENTILE = 75
#: Lens (disc) blur radius per Zhuo & Sim sigma, in px, at the LAYER_PERCENTILE of the edges of a
#: textured surface, after the in-focus edge width is removed in quadrature. Calibrated on the
#: thin-lens renders of benchmarks/bench_labels.py (docs/estimate.md); textures of natural-image
#: statistics crowd their edges, so this is larger than the isolated step edge's ratio.
RADIUS_PER_SIGMA = 2.15
#: Above this sigma (px of its level) a layer's reading is saturated and the level is not used for it.
SATURATED_SIGMA = 1.6
#: A layer's weight in the blur-over-depth fit grows with its edge count up to this many edges.
WEIGHT_EDGES = 200
#: A coarser level's reading replaces a finer one when it is this many times wider.
WIDER = 1.5
#: The photo has readable defocus when its defocus over depth (``contrast``, :func:`find_focal_plane`)
#: reaches this radius (px at short side 512); K <= 1 blurs a layer one disparity unit away by at most 1 px.
MIN_FOCUS_CONTRAST = 1.0
#: Spread of in-focus edge widths, as a lens blur radius (px at the finest pyramid level): a pixel-sharp
#: edge oblique to the pixel grid reads sigma 0.95-0.98 at the LAYER_PERCENTILE, an axis-aligned one
#: 0.83-0.84, which is RADIUS_PER_SIGMA * sqrt(0.98^2 - 0.835^2) = 1.1 px of blur. A single layer's blur is
#: defocus only beyond it (removed in quadrature); layers on a line through the focal plane confirm
#: each other.
ONE_LAYER_RESOLUTION = 1.1
#: Edges whose neighbourhood (this fraction of the short side, at least 2 px) spans more than
#: DISCONTINUITY in normalised disparity lie on a depth discontinuity.
DISCONTINUITY_REACH = 0.015
DISCONTINUITY = 0.05
#: Edges this close (px of their level) to a depth discontinuity are the nearer surface's outline.
OUTLINE_PX = 2
#: Pyramid scales of the image at short side <= 512, and the smallest short side measured.
PYRAMID_SCALES = (1.0, 0.5, 0.25, 0.125)
MIN_PYRAMID_SIDE = 32


@dataclass
class LayerBlur:
    """Lens blur of one depth layer: median disparity, disc radius (px at short side 512), edge count."""

    disparity: float
    radius: float
    count: int


@dataclass
class FocalPlane:
    """Where the photo is sharpest: its normalised disparity and region (None when nothing is readable),
    and the defocus read over depth (``contrast``, px at short side 512; see :func:`find_focal_plane`)."""

    disparity: Optional[float]
    region: Optional[np.ndarray]
    contrast: float
    layers: list[LayerBlur] = field(default_factory=list)


def _disparity_range(disp: np.ndarray, reach_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest disparity (the nearest surface) and disparity range within ``reach_px`` of each pixel."""
    kernel = np.ones((2 * reach_px + 1,) * 2, np.uint8)
    nearest = cv2.dilate(disp, kernel)
    return nearest, nearest - cv2.erode(disp, kernel)


#: One layer's reading at one pyramid level: median disparity, percentile edge sigma (level px), edge count.
Reading = tuple[float, float, int]


def _layer_readings(sigma: np.ndarray, d: np.ndarray) -> dict[int, Reading]:
    """Layer index -> (median disparity, LAYER_PERCENTILE sigma, count) of edge sigmas at disparities ``d``."""
    index = np.minimum((d / LAYER_WIDTH).astype(int), int(round(1.0 / LAYER_WIDTH)) - 1)
    out = {}
    for i in np.unique(index):
        inside = index == i
        if inside.sum() >= MIN_LAYER_EDGES:
            out[int(i)] = (float(np.median(d[inside])), float(np.percentile(sigma[inside], LAYER_PERCENTILE)), int(inside.sum()))
    return out


def _level_layers(gray: np.ndarray, disp: np.ndarray) -> tuple[dict[int, Reading], dict[int, Reading]]:
    """One pyramid level: the layers' interior and outline readings, layer index -> (median disparity,
    percentile edge sigma in level px, edge count).

    Interior edges have no depth discontinuity within the reach. Outline edges lie within OUTLINE_PX
    of one and belong to the nearer side, whose outline they are: a blurred foreground spreads over
    what lies behind it, a sharp one stays sharp.
    """
    edges = defocus_at_edges(gray)
    disp = disp.astype(np.float32)
    _, spread = _disparity_range(disp, max(2, round(DISCONTINUITY_REACH * min(gray.shape))))
    nearest, step = _disparity_range(disp, OUTLINE_PX)
    interior = edges.edges & (spread < DISCONTINUITY)
    outline = edges.edges & (step >= DISCONTINUITY)
    outlines = _layer_readings(edges.sigma[outline], nearest[outline])
    return _layer_readings(edges.sigma[interior], disp[interior]), outlines


def _well_measured(items: Iterable[T], count: Callable[[T], int]) -> list[T]:
    """The items (layers) with at least MIN_REFERENCE_EDGES edges, or all when none has that many."""
    items = list(items)
    return [item for item in items if count(item) >= MIN_REFERENCE_EDGES] or items


def radius_from_sigma(sigma: float, floor: float) -> float:
    """Lens blur radius (px) of a layer whose edges read ``sigma`` where in-focus edges read ``floor``."""
    return RADIUS_PER_SIGMA * math.sqrt(max(sigma * sigma - floor * floor, 0.0))


class Level(NamedTuple):
    """One pyramid level's readings: its scale, one of its pixels in px at short side 512, and the layers'
    interior and outline readings (:func:`_level_layers`)."""

    scale: float
    pixel: float
    layers: dict[int, Reading]
    outlines: dict[int, Reading]


def pyramid_levels(gray: np.ndarray, disp: np.ndarray) -> list[Level]:
    """The readings of every pyramid level of a 0-255 gray image and its normalised disparity (same shape),
    finest first, down to the first level that finds no layer: what :func:`layer_blurs` reads, measured once."""
    small, to_512 = downscale_to_reference(np.asarray(gray, dtype=np.float32))
    disp = np.asarray(disp, dtype=np.float32)
    levels = []
    for scale in PYRAMID_SCALES:
        if scale < 1 and min(small.shape) * scale < MIN_PYRAMID_SIDE:
            break
        size = (max(1, round(small.shape[1] * scale)), max(1, round(small.shape[0] * scale)))
        level = cv2.resize(small, size, interpolation=cv2.INTER_AREA) if scale < 1 else small
        layers, outlines = _level_layers(level, cv2.resize(disp, size, interpolation=cv2.INTER_LINEAR))
        if not layers:
            break
        levels.append(Level(scale, to_512 / scale, layers, outlines))
    return levels


def layer_blurs(
    gray: np.ndarray, disparity: np.ndarray, outline_cap: bool = False, levels: Optional[list[Level]] = None
) -> list[LayerBlur]:
    """Lens blur per depth layer of a 0-255 gray image and its disparity (same shape, larger = nearer);
    with ``outline_cap`` a layer's reading is the lesser of its interior's and its outline's, the outline
    measured against an isolated step's in-focus width (at least INTRINSIC_EDGE_SIGMA), and a layer with
    an outline but too few interior edges (a smoothly shaded object) is read from its outline.

    The layer sharpest at the finest level holds the photo's in-focus edge width (lens, resizing,
    compression); its sigma at each level is removed from every layer's there (a single layer keeps the
    estimator's own floor; a level that lost the reference layer uses its sharpest). Going from fine to
    coarse, a level's reading of a layer counts when it is not saturated and, below full size, spans
    more than one of the level's pixels while the next finer level, where the same blur spans twice the
    pixels, read at least half that or found no edges of the layer at all (a sharp texture finer than
    the coarse pixels averages away into a few wide-looking edges). The first counted reading is kept
    unless a coarser one exceeds it WIDER times (the finer level under-read a wide blur) or follows a
    saturated level; the first coarser reading that does neither settles the layer. A layer with no
    counted reading keeps its finest saturated one (a lower bound; coarser ones may be averaged-away
    texture), or is left out. ``levels``: :func:`pyramid_levels` of the same image, when already measured.
    """
    best: dict[int, LayerBlur] = {}
    finer: dict[int, float] = {}
    under_read: set[int] = set()  # layers whose reading so far is known to fall short (a coarser level saturated)
    settled: set[int] = set()
    saturated: dict[int, LayerBlur] = {}  # finest saturated reading: a lower bound, used when nothing else counted
    reference: Optional[int] = None  # the sharpest layer at the finest level: the in-focus edge width
    if levels is None:
        levels = pyramid_levels(gray, normalize_disparity(disparity))
    for scale, pixel, layers, outlines in levels:
        if reference is None and len(layers) > 1:
            reference = min(_well_measured(layers, lambda i: layers[i][2]), key=lambda i: layers[i][1])
        if reference is not None and reference in layers:
            floor = layers[reference][1]
        else:
            floor = min(s for _, s, _ in layers.values()) if len(layers) > 1 else INTRINSIC_EDGE_SIGMA
        for i in sorted(layers.keys() | outlines.keys() if outline_cap else layers.keys()):
            d, sigma, count = layers.get(i, outlines.get(i))
            radius = radius_from_sigma(sigma, floor) * pixel if i in layers else math.inf
            if outline_cap and i in outlines:
                # An outline is an isolated step edge: in focus it reads the estimator's own step width.
                outline = radius_from_sigma(outlines[i][1], max(floor, INTRINSIC_EDGE_SIGMA)) * pixel
                if outline < radius:
                    sigma, radius = outlines[i][1], outline
            if i in settled:
                continue
            if sigma > SATURATED_SIGMA:
                under_read.add(i)
                finer[i] = radius
                saturated.setdefault(i, LayerBlur(d, radius, count))
                continue
            if scale < 1 and not (radius > pixel and finer.get(i, math.inf) >= pixel / 2):
                continue  # a rejected reading says nothing to the next level
            finer[i] = radius
            if i not in best or i in under_read or radius > WIDER * best[i].radius:
                best[i] = LayerBlur(d, radius, count)
                under_read.discard(i)
            else:
                settled.add(i)
    for i, reading in saturated.items():
        best.setdefault(i, reading)
    return [best[i] for i in sorted(best)]


class BlurFit(NamedTuple):
    """Lens blur over depth: ``radius = offset + slope * |d - focus|`` (px at short side 512), fitted to layers."""

    slope: float
    offset: float
    spread: float
    layers: int
    edges: int


def fit_blur_slope(layers: list[LayerBlur], focus: float, min_lever: float) -> Optional[BlurFit]:
    """Fit the layers' blur radii against their lever ``|d - focus|`` (docs/design.md §1: r = K |d - d_focus|).

    Layers at lever >= ``min_lever`` carry the slope, weighted by their edge counts up to WEIGHT_EDGES
    (beyond that a layer's error is its texture's, which more edges do not average away). With layers at
    three or more distinct levers (the focus layer counts) an offset is fitted too, offset and slope both
    >= 0 (:func:`_non_negative_line`): surfaces whose texture is softer than the in-focus layer's read a
    little blur at every depth, which is no defocus. ``spread`` is the weighted deviation of the per-layer
    ``log(1 + r / lever)`` from ``log(1 + slope)`` over the sloped layers. None when no layer is far
    enough from the focus.
    """
    lever = np.array([abs(layer.disparity - focus) for layer in layers])
    radius = np.array([layer.radius for layer in layers])
    edges = np.array([layer.count for layer in layers])
    n = np.minimum(edges, WEIGHT_EDGES).astype(np.float64)
    sloped = lever >= min_lever
    if not sloped.any():
        return None
    slope = max(float(np.sum(n[sloped] * radius[sloped] * lever[sloped]) / np.sum(n[sloped] * lever[sloped] ** 2)), 0.0)
    offset = 0.0
    if len(np.unique(np.round(lever, 2))) >= 3:
        offset, slope = _non_negative_line(lever, radius, n, slope)
    per_layer = np.log1p(np.maximum(radius[sloped] - offset, 0.0) / lever[sloped]) - np.log1p(slope)
    spread = float(np.sqrt(np.sum(n[sloped] * per_layer**2) / np.sum(n[sloped])))
    return BlurFit(slope, offset, spread, int(sloped.sum()), int(edges[sloped].sum()))


def _non_negative_line(
    lever: np.ndarray, radius: np.ndarray, weight: np.ndarray, through_origin: float
) -> tuple[float, float]:
    """Weighted least-squares ``radius = offset + slope * lever`` with offset and slope both >= 0.

    Without the bounds the best line is the answer; past one, the best line on that boundary: through
    the origin (``through_origin``, its slope) or flat (slope 0, offset the weighted mean), whichever
    fits better. Blur that does not grow with the distance from the focal plane is a flat line: the
    surfaces' own softness, no defocus.
    """
    design = np.stack([np.ones_like(lever), lever], axis=1) * np.sqrt(weight)[:, None]
    (a, b), *_ = np.linalg.lstsq(design, radius * np.sqrt(weight), rcond=None)
    if a >= 0 and b >= 0:
        return float(a), float(b)
    flat = float(np.sum(weight * radius) / np.sum(weight))

    def misfit(offset: float, slope: float) -> float:
        return float(np.sum(weight * (radius - offset - slope * lever) ** 2))

    return min(((0.0, through_origin), (flat, 0.0)), key=lambda line: misfit(*line))


def find_focal_plane(gray: np.ndarray, disparity: np.ndarray) -> FocalPlane:
    """The sharpest depth layer of a photo and its pixels (at ``gray``'s size); disparity None when the
    photo's defocus (``contrast``) stays below MIN_FOCUS_CONTRAST (all in focus, or too few layers to tell).

    The sharpest layer is sought among those with MIN_REFERENCE_EDGES edges; the blur over depth is fitted
    to every measured layer (weighted by its edges), since a sparse layer that reads sharp far from that
    plane is evidence against defocus growing from it. ``contrast`` is the blur fitted over depth
    (:func:`fit_blur_slope`, offset and slope >= 0) at the layer farthest from the sharpest one, divided
    by ``exp(spread)`` (a one-standard-deviation lower bound in log space: layers that disagree about K
    are no defocus) and, when a single layer carries the slope, less ONE_LAYER_RESOLUTION in quadrature.
    """
    disp = normalize_disparity(np.asarray(disparity))
    if disp.shape != np.asarray(gray).shape[:2]:
        raise ValueError(f"disparity shape {disp.shape} does not match the image's {np.asarray(gray).shape[:2]}")
    levels = pyramid_levels(gray, disp)
    layers = layer_blurs(gray, disp, levels=levels)
    if len(layers) < 2:
        return FocalPlane(None, None, 0.0, layers)
    # Where the focus is and whether there is defocus at all ask the outlines too: soft texture inside a
    # sharp outline is not blur.
    outlined = layer_blurs(gray, disp, outline_cap=True, levels=levels)
    sharpest = min(_well_measured(outlined, lambda layer: layer.count), key=lambda layer: layer.radius)
    fit = fit_blur_slope(outlined, sharpest.disparity, LAYER_WIDTH)
    contrast = 0.0
    if fit is not None:
        farthest = max(abs(layer.disparity - sharpest.disparity) for layer in outlined)
        contrast = fit.slope * farthest * math.exp(-fit.spread)
        if fit.layers == 1:
            resolution = ONE_LAYER_RESOLUTION * max(1.0, REFERENCE_SHORT_SIDE / min(disp.shape))
            contrast = math.sqrt(max(contrast * contrast - resolution * resolution, 0.0))
    if contrast < MIN_FOCUS_CONTRAST:
        return FocalPlane(None, None, contrast, layers)
    region = np.abs(disp - sharpest.disparity) <= LAYER_WIDTH / 2
    return FocalPlane(sharpest.disparity, region, contrast, layers)
