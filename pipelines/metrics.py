"""Image metrics of a K sweep (docs/design.md §4): LVCorr, blur calibration, SSIM and PSNR.

numpy + OpenCV only. Images are PIL images or HxWx3 uint8 arrays (0..255); masks are HxW bool with
True = subject. Sharpness is the variance of the 3x3 Laplacian of the Rec. 601 luma, measured at the
image's own size (compare images of one size only: blur in px scales with the short side).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import cv2
import numpy as np
from PIL import Image

from estimators.image_io import as_rgb_array, to_gray
from estimators.sharpness import laplacian_variance

ImageLike = Union[Image.Image, np.ndarray]

#: Added to every sharpness before its log, so that a flat image (variance 0) has a finite log; far
#: below the variance of any textured 8-bit image (a single grey step of 1 gives about 0.1).
SHARPNESS_FLOOR = 1e-3
#: A sweep whose blur measure (``blur_trend``) spans less than this, i.e. whose sharpness varies by under
#: 0.1 %, has no trend: one image computed at another batch position differs by rounding in a few 8-bit
#: pixels, which moves its sharpness by ~1e-4 and would give a spurious correlation of any size.
MIN_TREND_SPAN = 1e-3
#: The subject is grown by this fraction of the short side (at least 1 px) before its complement is
#: taken as background: the 3x3 Laplacian of a pixel next to the subject sees the subject's sharp
#: edge, and estimated masks are a few px off.
MASK_MARGIN_FRACTION = 0.01
#: SSIM constants of Wang et al. (2004) on 0..255 luma: Gaussian window sigma and size, K1, K2.
SSIM_SIGMA, SSIM_WINDOW, SSIM_K1, SSIM_K2 = 1.5, 11, 0.01, 0.03
_PEAK = 255.0


def _luma(image: ImageLike) -> np.ndarray:
    return to_gray(as_rgb_array(image)).astype(np.float64)


def _checked_mask(mask: Optional[np.ndarray], shape: tuple[int, int]) -> Optional[np.ndarray]:
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match the image's {shape}")
    return mask


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of two equal-length sequences; 0.0 when either has no spread (no trend)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"pearson needs two 1-D sequences of one length >= 2, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("pearson needs finite values")
    da, db = a - a.mean(), b - b.mean()
    tiny = 1e-12
    if np.sqrt(np.mean(da * da)) <= tiny * max(1.0, np.abs(a).max()) or np.sqrt(np.mean(db * db)) <= tiny * max(1.0, np.abs(b).max()):
        return 0.0
    return float(np.clip(np.sum(da * db) / np.sqrt(np.sum(da * da) * np.sum(db * db)), -1.0, 1.0))


def background_region(mask: np.ndarray) -> np.ndarray:
    """The background of a subject mask: its complement, minus a margin around the subject."""
    mask = np.asarray(mask, dtype=bool)
    margin = max(1, round(MASK_MARGIN_FRACTION * min(mask.shape)))
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return grown == 0


def background_sharpness(image: ImageLike, mask: Optional[np.ndarray] = None) -> Optional[float]:
    """Variance of the Laplacian off the subject (``mask`` True = subject; None = whole image);
    None when fewer than 16 background pixels remain."""
    gray = _luma(image)
    mask = _checked_mask(mask, gray.shape)
    return laplacian_variance(gray, None if mask is None else background_region(mask))


def blur_trend(sharpness: float) -> float:
    """The blur measure LVCorr correlates with K: ``-log(sharpness + SHARPNESS_FLOOR)``."""
    return -math.log(float(sharpness) + SHARPNESS_FLOOR)


def lvcorr(levels: Sequence[float], images: Sequence[ImageLike], mask: Optional[np.ndarray] = None) -> Optional[float]:
    """Pearson correlation between K and the negative log background sharpness of a sweep (1 = blur
    follows K); 0 when the sharpness varies by under 0.1 % (``MIN_TREND_SPAN``: no trend); None when some
    image has no measurable background."""
    if len(levels) != len(images):
        raise ValueError(f"{len(levels)} levels but {len(images)} images")
    values = [background_sharpness(image, mask) for image in images]
    return lvcorr_from_sharpness(levels, values)


def lvcorr_from_sharpness(levels: Sequence[float], sharpness: Sequence[Optional[float]]) -> Optional[float]:
    """:func:`lvcorr` from sharpness values already measured (None where unmeasurable)."""
    if any(s is None for s in sharpness):
        return None
    trend = [blur_trend(s) for s in sharpness]
    if max(trend) - min(trend) < MIN_TREND_SPAN:
        return 0.0
    return pearson(levels, trend)


def log_ratio(generated: Optional[float], reference: Optional[float]) -> Optional[float]:
    """``|log(generated / reference)|`` of two sharpness values (floored like LVCorr); None if either is missing."""
    if generated is None or reference is None:
        return None
    return abs(math.log((float(generated) + SHARPNESS_FLOOR) / (float(reference) + SHARPNESS_FLOOR)))


def calibration(generated: Sequence[Optional[float]], reference: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Per-K ``|log ratio|`` of generated to reference background sharpness (log 2 = a factor of 2)."""
    if len(generated) != len(reference):
        raise ValueError(f"{len(generated)} generated but {len(reference)} reference sharpness values")
    return [log_ratio(g, r) for g, r in zip(generated, reference)]


def _pair(a: ImageLike, b: ImageLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_rgb_array(a), as_rgb_array(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {x.shape[1]}x{x.shape[0]} and {y.shape[1]}x{y.shape[0]}")
    return x, y


def _region(mask: Optional[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    region = np.ones(shape, dtype=bool) if mask is None else _checked_mask(mask, shape)
    if not region.any():
        raise ValueError("the mask selects no pixel")
    return region


def ssim_map(a: ImageLike, b: ImageLike) -> np.ndarray:
    """Per-pixel SSIM of two images' 0..255 luma (Wang et al. 2004: 11x11 Gaussian window with sigma 1.5,
    K1 = 0.01, K2 = 0.03); windows reaching past the border see the image mirrored (reflect-101)."""
    x, y = _pair(a, b)
    gx, gy = to_gray(x).astype(np.float64), to_gray(y).astype(np.float64)

    def window_mean(v: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(v, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT_101)

    c1, c2 = (SSIM_K1 * _PEAK) ** 2, (SSIM_K2 * _PEAK) ** 2
    mx, my = window_mean(gx), window_mean(gy)
    vx = window_mean(gx * gx) - mx * mx
    vy = window_mean(gy * gy) - my * my
    cxy = window_mean(gx * gy) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(a: ImageLike, b: ImageLike, mask: Optional[np.ndarray] = None) -> float:
    """Mean SSIM of two images over ``mask`` (True = counted; None = whole image); 1 = identical."""
    values = ssim_map(a, b)
    return float(values[_region(mask, values.shape)].mean())


def psnr(a: ImageLike, b: ImageLike, mask: Optional[np.ndarray] = None) -> float:
    """PSNR in dB of two 8-bit RGB images over ``mask`` (all three channels); inf when identical there."""
    x, y = _pair(a, b)
    region = _region(mask, x.shape[:2])
    diff = x[region].astype(np.float64) - y[region].astype(np.float64)
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0 else 10.0 * math.log10(_PEAK * _PEAK / mse)
