"""Depth maps: normalised disparity (docs/design.md §1) plus metric depth when known; sidecar names and decoding
(reading them under limits: :mod:`estimators.sidecars`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np

from .image_io import MAX_PIXELS, ImageLoadError, open_checked

#: Sidecar file names next to a photo ``<stem>.<ext>``.
DEPTH_SIDECAR_SUFFIX = ".depth.npy"  # metric depth in metres, HxW float
DISPARITY_SIDECAR_SUFFIX = ".disparity.png"  # 8- or 16-bit, larger = nearer


class DepthUnavailableError(ValueError):
    """No depth could be produced for a photo (missing or refused sidecar); one-line reason."""


@dataclass
class DepthMap:
    """Normalised disparity in [0, 1] (1 = nearest) and, when the source is metric, depth in metres."""

    disparity: np.ndarray
    depth_m: Optional[np.ndarray] = None
    source: str = ""

    @property
    def is_metric(self) -> bool:
        return self.depth_m is not None

    @property
    def depth_range_m(self) -> Optional[tuple[float, float]]:
        """(z_near, z_far) in metres over the finite, positive depths; z_far may be inf (sky)."""
        if self.depth_m is None:
            return None
        z = self.depth_m[np.isfinite(self.depth_m) & (self.depth_m > 0)]
        if z.size == 0:
            return None
        far = float(np.inf) if np.isposinf(self.depth_m).any() else float(z.max())
        return float(z.min()), far


def normalize_disparity(disparity: np.ndarray) -> np.ndarray:
    """Min-max normalise a relative disparity map to [0, 1]; NaN/inf become the far end (0)."""
    disp = np.asarray(disparity, dtype=np.float64)
    finite = np.isfinite(disp)
    if not finite.any():
        return np.zeros(disp.shape, dtype=np.float32)
    lo, hi = float(disp[finite].min()), float(disp[finite].max())
    out = np.zeros(disp.shape, dtype=np.float64)
    if hi > lo:
        out[finite] = (disp[finite] - lo) / (hi - lo)
    return out.astype(np.float32)


def disparity_from_depth(depth_m: np.ndarray) -> np.ndarray:
    """``d = (1/z - 1/z_far) / (1/z_near - 1/z_far)`` over the map; inf depth is d = 0 (far end)."""
    z = np.asarray(depth_m, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(z > 0, 1.0 / z, np.nan)
    return normalize_disparity(inv)


def focus_disparity_from_mask(disparity: np.ndarray, mask: np.ndarray) -> float:
    """Disparity of the focal plane: median of the nearer half of the subject (docs/design.md §2)."""
    values = np.asarray(disparity, dtype=np.float64)[np.asarray(mask, dtype=bool)]
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("subject mask is empty: cannot place the focal plane")
    nearer = values[values >= np.median(values)]
    return float(np.median(nearer))


def focus_distance_from_mask(depth_m: np.ndarray, mask: np.ndarray) -> Optional[float]:
    """Metric focus distance: median depth of the nearer half of the subject, or None."""
    values = np.asarray(depth_m, dtype=np.float64)[np.asarray(mask, dtype=bool)]
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return None
    nearer = values[values <= np.median(values)]
    return float(np.median(nearer))


def resize_map(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to ``size`` = (width, height), as float32."""
    if array.shape[1] == size[0] and array.shape[0] == size[1]:
        return array.astype(np.float32)
    import cv2

    return cv2.resize(array.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)


def read_disparity_png(source: str | Path | BinaryIO, name: str = "disparity map") -> np.ndarray:
    """An 8- or 16-bit grayscale disparity PNG as float in [0, 1] (larger = nearer), not renormalised; its
    size is checked against the pixel and aspect limits before any pixel is decoded."""
    try:
        with open_checked(source, MAX_PIXELS, name) as img:
            arr = np.asarray(img)
    except ImageLoadError as exc:
        raise ValueError(str(exc)) from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    top = None
    if arr.dtype == np.uint8:
        top = 255.0
    elif arr.dtype in (np.uint16, np.int32, np.int64, np.uint32):
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
    out = arr.astype(np.float32)
    del arr
    if top is not None:
        out /= np.float32(top)  # in place: one float32 copy of the map at most
    return out
