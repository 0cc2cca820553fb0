"""Aperture kernels: the pixel coverage of a disc or a regular n-blade polygon of a given blur radius.

A point source at blur radius ``r`` spreads its light evenly over the aperture's image: a disc of
radius ``r`` or a regular polygon whose vertices lie on that circle (one vertex pointing up). Each
kernel tap is the area of the pixel square covered by that shape, measured by supersampling.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Union

import numpy as np

#: ``"disc"`` or a number of diaphragm blades (>= 3).
Aperture = Union[str, int]

#: Sub-samples per pixel side used to measure coverage (area error < 1/SUPERSAMPLE of a pixel per edge pixel).
SUPERSAMPLE = 16


def blade_count(aperture: Aperture) -> int:
    """0 for a disc, else the number of blades; raises ValueError for anything else."""
    if isinstance(aperture, str):
        text = aperture.strip().lower()
        if text == "disc":
            return 0
        if not text.isdigit():
            raise ValueError(f"aperture must be 'disc' or a number of blades >= 3, got {aperture!r}")
        aperture = int(text)
    if isinstance(aperture, bool) or not isinstance(aperture, (int, np.integer)) or aperture < 3:
        raise ValueError(f"aperture must be 'disc' or a number of blades >= 3, got {aperture!r}")
    return int(aperture)


def kernel_half_width(radius: float) -> int:
    """Half width in pixels of the smallest square holding a shape of circumradius ``radius``."""
    return max(0, math.ceil(radius + 0.5) - 1)


def aperture_area(radius: float, aperture: Aperture = "disc") -> float:
    """Exact area (px^2) of the aperture shape: pi r^2, or (n/2) r^2 sin(2 pi / n) for n blades."""
    blades = blade_count(aperture)
    if blades == 0:
        return math.pi * radius * radius
    return 0.5 * blades * radius * radius * math.sin(2.0 * math.pi / blades)


def _inside(x: np.ndarray, y: np.ndarray, radius: float, blades: int) -> np.ndarray:
    """Whether points (x right, y down, pixels) lie inside the aperture shape centred at 0."""
    if blades == 0:
        return x * x + y * y <= radius * radius
    apothem = radius * math.cos(math.pi / blades)
    inside = np.ones(x.shape, dtype=bool)
    for k in range(blades):
        # Edge normals sit between vertices; the first vertex points up (-y).
        angle = -0.5 * math.pi + math.pi / blades + 2.0 * math.pi * k / blades
        inside &= x * math.cos(angle) + y * math.sin(angle) <= apothem
    return inside


@lru_cache(maxsize=512)
def _coverage_cached(radius: float, blades: int) -> np.ndarray:
    half = kernel_half_width(radius)
    n = 2 * half + 1
    offsets = (np.arange(n * SUPERSAMPLE) + 0.5) / SUPERSAMPLE - half - 0.5
    y, x = np.meshgrid(offsets, offsets, indexing="ij")
    hits = _inside(x, y, radius, blades).reshape(n, SUPERSAMPLE, n, SUPERSAMPLE)
    coverage = hits.mean(axis=(1, 3))
    coverage.setflags(write=False)
    return coverage


def aperture_coverage(radius: float, aperture: Aperture = "disc") -> np.ndarray:
    """(2h+1)^2 array: the fraction of each pixel covered by the shape (its sum is the shape's area)."""
    if not (math.isfinite(radius) and radius >= 0):
        raise ValueError(f"blur radius must be a finite number >= 0, got {radius}")
    return _coverage_cached(round(float(radius), 4), blade_count(aperture))


def aperture_kernel(radius: float, aperture: Aperture = "disc") -> np.ndarray:
    """The blur kernel of a point at ``radius`` px: coverage normalised to sum 1.

    A shape that fits inside one pixel (radius <= 0.5) gives the identity kernel [[1]].
    """
    coverage = aperture_coverage(radius, aperture)
    if coverage.shape[0] == 1:
        return np.ones((1, 1))
    return coverage / coverage.sum()
