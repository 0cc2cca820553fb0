"""Image-based blur measures: variance of the Laplacian and a Zhuo & Sim (2011) defocus estimate."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from .image_io import MAX_ASPECT
from .lens import REFERENCE_SHORT_SIDE

#: Most pixels a resize to the reference size may produce: short side 512 at the widest accepted aspect ratio.
MAX_REFERENCE_PIXELS = int(REFERENCE_SHORT_SIDE * REFERENCE_SHORT_SIDE * MAX_ASPECT)


def resize_to_reference(array: np.ndarray) -> np.ndarray:
    """Resize an image or map so its short side is 512 px, where K and sharpness are comparable; ValueError
    when that would take more than :data:`MAX_REFERENCE_PIXELS` (a strip, which photo decoding refuses)."""
    h, w = array.shape[:2]
    if min(h, w) < 1:
        raise ValueError(f"cannot resize an empty {w}x{h} array")
    scale = REFERENCE_SHORT_SIDE / min(h, w)
    if abs(scale - 1.0) < 1e-9:
        return array
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size[0] * size[1] > MAX_REFERENCE_PIXELS:
        raise ValueError(
            f"a {w}x{h} array would resize to {size[0]}x{size[1]} at short side {REFERENCE_SHORT_SIDE}, over the "
            f"{MAX_REFERENCE_PIXELS:,}-pixel budget (aspect ratio over {MAX_ASPECT:g}:1)"
        )
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def downscale_to_reference(array: np.ndarray) -> tuple[np.ndarray, float]:
    """Shrink to short side 512 when larger (never enlarge: that invents soft edges); also return the
    factor that turns lengths in px of the result into px at short side 512."""
    h, w = array.shape[:2]
    if min(h, w) <= REFERENCE_SHORT_SIDE:
        return array, REFERENCE_SHORT_SIDE / min(h, w)
    return resize_to_reference(array), 1.0


def laplacian_variance(gray: np.ndarray, mask: Optional[np.ndarray] = None) -> Optional[float]:
    """Variance of the 3x3 Laplacian of a 0-255 gray image, over ``mask`` (True = counted) or all.

    The Laplacian is taken on the whole image, so mask borders see real neighbours; None when the
    mask has fewer than 16 pixels.
    """
    lap = cv2.Laplacian(np.asarray(gray, dtype=np.float32), cv2.CV_32F, ksize=1)
    values = lap if mask is None else lap[np.asarray(mask, dtype=bool)]
    if values.size < 16:
        return None
    return float(np.var(values, dtype=np.float64))


def subject_background_sharpness(
    gray: np.ndarray, mask: Optional[np.ndarray]
) -> tuple[Optional[float], Optional[float]]:
    """Variance of the Laplacian on and off the subject, measured at short side 512 so photos of any
    size compare; without a mask, (None, whole image)."""
    gray512 = resize_to_reference(np.asarray(gray, dtype=np.float32))
    if mask is None:
        return None, laplacian_variance(gray512)
    subject = resize_to_reference(np.asarray(mask, dtype=np.float32)) > 0.5
    return laplacian_variance(gray512, subject), laplacian_variance(gray512, ~subject)


@dataclass
class DefocusEdges:
    """Sparse defocus at edge pixels: Gaussian blur sigma (px) and where it was measured."""

    sigma: np.ndarray  # HxW float32, NaN off the edges
    edges: np.ndarray  # HxW bool, edge pixels with a valid estimate


def defocus_at_edges(
    gray: np.ndarray, sigma0: float = 1.0, low_threshold: float = 20.0, high_threshold: float = 60.0, max_sigma: float = 30.0
) -> DefocusEdges:
    """Zhuo & Sim: re-blur with ``sigma0``; at edges ``sigma = sigma0 / sqrt(R^2 - 1)``, R = |grad I| / |grad I_reblur|.

    ``gray`` is 0-255. Edges come from Canny; pixels with R <= 1 (numerical noise) are dropped.
    """
    img = np.asarray(gray, dtype=np.float32)
    reblurred = cv2.GaussianBlur(img, (0, 0), sigma0)

    def grad_mag(a: np.ndarray) -> np.ndarray:
        gx = cv2.Sobel(a, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(a, cv2.CV_32F, 0, 1, ksize=3)
        return np.sqrt(gx * gx + gy * gy)

    g1, g2 = grad_mag(img), grad_mag(reblurred)
    edges = cv2.Canny(np.clip(img, 0, 255).astype(np.uint8), low_threshold, high_threshold) > 0
    ratio = np.divide(g1, g2, out=np.zeros_like(g1), where=g2 > 1e-6)
    valid = edges & (ratio > 1.0 + 1e-3)
    sigma = np.full(img.shape, np.nan, dtype=np.float32)
    sigma[valid] = np.minimum(sigma0 / np.sqrt(ratio[valid] ** 2 - 1.0), max_sigma)
    return DefocusEdges(sigma=sigma, edges=valid)


def defocus_map(edges: DefocusEdges, spread: float = 8.0) -> np.ndarray:
    """Dense defocus map: normalised Gaussian propagation of the edge estimates (no edges nearby -> NaN)."""
    weight = edges.edges.astype(np.float32)
    values = np.where(edges.edges, edges.sigma, 0.0).astype(np.float32)
    num = cv2.GaussianBlur(values, (0, 0), spread)
    den = cv2.GaussianBlur(weight, (0, 0), spread)
    return np.where(den > 1e-3, num / np.maximum(den, 1e-6), np.nan).astype(np.float32)


#: Apparent sigma of a pixel-sharp step edge under this estimator (Sobel + discretisation), measured on
#: a synthetic checkerboard; removed in quadrature so that an unblurred edge reads as radius ~0.
INTRINSIC_EDGE_SIGMA = 0.85
#: A step blurred by a disc of radius r has peak gradient 2/(pi r); by a Gaussian, 1/(sigma sqrt(2 pi)).
#: Equal peaks give r = sigma * 2 sqrt(2 pi) / pi.
DISC_RADIUS_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.pi) / np.pi


def disc_radius_from_sigma(sigma: float | np.ndarray, intrinsic: float = INTRINSIC_EDGE_SIGMA) -> float | np.ndarray:
    """Disc (lens) blur radius in px that explains a Zhuo & Sim edge sigma, once the edge width an
    in-focus edge already has (``intrinsic``, at least the estimator's own floor) is removed in quadrature."""
    sigma = np.asarray(sigma, dtype=np.float64)
    floor = max(float(intrinsic), INTRINSIC_EDGE_SIGMA)
    radius = DISC_RADIUS_PER_SIGMA * np.sqrt(np.maximum(sigma * sigma - floor * floor, 0.0))
    return float(radius) if radius.ndim == 0 else radius
