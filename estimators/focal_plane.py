"""Edge blur per depth layer, and the photo's focal plane from it (DESIGN.md §1).

A photo with defocus is focused where it is sharpest, which is often not its nearest salient region
(a portrait through leaves, foreground grass). Edge blur (Zhuo & Sim) is grouped by normalised
disparity into layers; the layer whose edges are sharpest holds the focal plane. An edge on a depth
discontinuity belongs to the nearer surface (its outline; see :func:`edge_owner_disparity`).

Zhuo & Sim's re-blur ratio resolves blurs of a few pixels only: a wide blur reads too narrow (its
gradients barely change under the re-blur, so noise and neighbouring edges dominate), a narrow one
vanishes into the in-focus edge width. Each layer is therefore measured on a pyramid (short sides
<= 512, halving, never below MIN_PYRAMID_SIDE) and keeps its widest reading among the levels where it
is neither saturated nor an artefact of the coarse pixels (see :func:`layer_blurs`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import cv2
import numpy as np

from .depth import normalize_disparity
from .sharpness import INTRINSIC_EDGE_SIGMA, defocus_at_edges, downscale_to_reference

#: Width of a depth layer in normalised disparity.
LAYER_WIDTH = 1.0 / 12.0
#: A layer needs this many measured edges (at a pyramid level) to count there.
MIN_LAYER_EDGES = 20
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
#: A coarser level's reading replaces a finer one when it is this many times wider.
WIDER = 1.5
#: The photo has readable defocus when the fitted blur (:func:`fit_blur_slope`) of its layer farthest
#: from the sharpest one reaches this radius (px at short side 512); K <= 1 blurs a layer one disparity
#: unit away by at most 1 px.
MIN_FOCUS_CONTRAST = 1.0
#: Edges whose neighbourhood (this fraction of the short side, at least 2 px) spans more than
#: DISCONTINUITY in normalised disparity lie on a depth discontinuity.
DISCONTINUITY_REACH = 0.015
DISCONTINUITY = 0.05
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
    """Where the photo is sharpest: its normalised disparity and region (None when nothing is readable)."""

    disparity: Optional[float]
    region: Optional[np.ndarray]
    contrast: float
    layers: list[LayerBlur] = field(default_factory=list)


def edge_owner_disparity(disparity: np.ndarray, reach_px: int) -> np.ndarray:
    """The disparity an edge pixel's blur belongs to: its own, or on a depth discontinuity (range within
    ``reach_px`` above DISCONTINUITY) the nearest surface's there, since the visible edge is that
    surface's outline: a blurred foreground spreads over what lies behind, a sharp one stays sharp."""
    size = 2 * max(2, int(reach_px)) + 1
    kernel = np.ones((size, size), np.uint8)
    disp = disparity.astype(np.float32)
    nearest = cv2.dilate(disp, kernel)
    return np.where(nearest - cv2.erode(disp, kernel) < DISCONTINUITY, disp, nearest)


def _level_layers(gray: np.ndarray, disp: np.ndarray) -> dict[int, tuple[float, float, int]]:
    """One pyramid level: layer index -> (median disparity, percentile edge sigma in level px, edge count)."""
    edges = defocus_at_edges(gray)
    owner = edge_owner_disparity(disp, round(DISCONTINUITY_REACH * min(gray.shape)))
    sigma, d = edges.sigma[edges.edges], owner[edges.edges]
    last = int(round(1.0 / LAYER_WIDTH)) - 1
    index = np.minimum((d / LAYER_WIDTH).astype(int), last)
    out = {}
    for i in np.unique(index):
        inside = index == i
        if inside.sum() >= MIN_LAYER_EDGES:
            out[int(i)] = (float(np.median(d[inside])), float(np.percentile(sigma[inside], LAYER_PERCENTILE)), int(inside.sum()))
    return out


def radius_from_sigma(sigma: float, floor: float) -> float:
    """Lens blur radius (px) of a layer whose edges read ``sigma`` where in-focus edges read ``floor``."""
    return RADIUS_PER_SIGMA * math.sqrt(max(sigma * sigma - floor * floor, 0.0))


def layer_blurs(gray: np.ndarray, disparity: np.ndarray) -> list[LayerBlur]:
    """Lens blur per depth layer of a 0-255 gray image and its disparity (same shape, larger = nearer).

    The layer sharpest at the finest level holds the photo's in-focus edge width (lens, resizing,
    compression); its sigma at each level is removed from every layer's there (a single layer keeps the
    estimator's own floor; a level that lost the reference layer uses its sharpest). Going from fine to coarse, a level's reading of a layer counts when it is not saturated
    and, below full size, spans more than one of the level's pixels while the next finer level, where
    the same blur spans twice the pixels, read at least half that or found no edges of the layer at all
    (a sharp texture finer than the coarse pixels averages away into a few wide-looking edges). The first counted reading is kept
    unless a coarser one exceeds it WIDER times (the finer level under-read a wide blur) or follows a
    saturated level; the first coarser reading that does neither settles the layer. A layer with no
    counted reading keeps its finest saturated one (a lower bound; coarser ones may be averaged-away
    texture), or is left out.
    """
    small, to_512 = downscale_to_reference(np.asarray(gray, dtype=np.float32))
    disp = normalize_disparity(disparity)
    best: dict[int, LayerBlur] = {}
    finer: dict[int, float] = {}
    under_read: set[int] = set()  # layers whose reading so far is known to fall short (a coarser level saturated)
    settled: set[int] = set()
    saturated: dict[int, LayerBlur] = {}  # finest saturated reading: a lower bound, used when nothing else counted
    reference: Optional[int] = None  # the sharpest layer at the finest level: the in-focus edge width
    for scale in PYRAMID_SCALES:
        if scale < 1 and min(small.shape) * scale < MIN_PYRAMID_SIDE:
            break
        size = (max(1, round(small.shape[1] * scale)), max(1, round(small.shape[0] * scale)))
        level = cv2.resize(small, size, interpolation=cv2.INTER_AREA) if scale < 1 else small
        layers = _level_layers(level, cv2.resize(disp, size, interpolation=cv2.INTER_LINEAR))
        if not layers:
            break
        pixel = to_512 / scale  # one pixel of this level, in px at short side 512
        if reference is None and len(layers) > 1:
            reference = min(layers, key=lambda i: layers[i][1])
        if reference is not None and reference in layers:
            floor = layers[reference][1]
        else:
            floor = min(s for _, s, _ in layers.values()) if len(layers) > 1 else INTRINSIC_EDGE_SIGMA
        for i, (d, sigma, count) in layers.items():
            radius = radius_from_sigma(sigma, floor) * pixel
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
    """Fit the layers' blur radii against their lever ``|d - focus|`` (DESIGN.md §1: r = K |d - d_focus|).

    Layers at lever >= ``min_lever`` carry the slope, weighted by their edge counts. With layers at
    three or more distinct levers (the focus layer counts) a non-negative offset is fitted too: surfaces
    whose texture is softer than the in-focus layer's read a little blur at every depth, which is no
    defocus. ``spread`` is the weighted deviation of the per-layer ``log(1 + r / lever)`` from
    ``log(1 + slope)`` over the sloped layers. None when no layer is far enough from the focus.
    """
    lever = np.array([abs(layer.disparity - focus) for layer in layers])
    radius = np.array([layer.radius for layer in layers])
    n = np.array([layer.count for layer in layers], dtype=np.float64)
    sloped = lever >= min_lever
    if not sloped.any():
        return None
    slope = float(np.sum(n[sloped] * radius[sloped] * lever[sloped]) / np.sum(n[sloped] * lever[sloped] ** 2))
    offset = 0.0
    if len(np.unique(np.round(lever, 2))) >= 3:
        design = np.stack([np.ones_like(lever), lever], axis=1) * np.sqrt(n)[:, None]
        (a, b), *_ = np.linalg.lstsq(design, radius * np.sqrt(n), rcond=None)
        if a > 0 and b > 0:
            offset, slope = float(a), float(b)
    slope = max(slope, 0.0)
    per_layer = np.log1p(np.maximum(radius[sloped] - offset, 0.0) / lever[sloped]) - np.log1p(slope)
    spread = float(np.sqrt(np.sum(n[sloped] * per_layer**2) / np.sum(n[sloped])))
    return BlurFit(slope, offset, spread, int(sloped.sum()), int(n[sloped].sum()))


def find_focal_plane(gray: np.ndarray, disparity: np.ndarray) -> FocalPlane:
    """The sharpest depth layer of a photo and its pixels (at ``gray``'s size); disparity None when the
    blur fitted over depth stays below MIN_FOCUS_CONTRAST (all in focus, or too few layers to tell)."""
    disp = normalize_disparity(np.asarray(disparity))
    if disp.shape != np.asarray(gray).shape[:2]:
        raise ValueError(f"disparity shape {disp.shape} does not match the image's {np.asarray(gray).shape[:2]}")
    layers = layer_blurs(gray, disp)
    if len(layers) < 2:
        return FocalPlane(None, None, 0.0, layers)
    sharpest = min(layers, key=lambda layer: layer.radius)
    fit = fit_blur_slope(layers, sharpest.disparity, LAYER_WIDTH)
    contrast = 0.0 if fit is None else fit.slope * max(abs(layer.disparity - sharpest.disparity) for layer in layers)
    if contrast < MIN_FOCUS_CONTRAST:
        return FocalPlane(None, None, contrast, layers)
    region = np.abs(disp - sharpest.disparity) <= LAYER_WIDTH / 2
    return FocalPlane(sharpest.disparity, region, contrast, layers)
