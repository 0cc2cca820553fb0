"""Keeping a photo's in-focus subject through a bokeh edit: its pixels blended back over the regenerated image."""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

#: The subject is shrunk by, then feathered over, this fraction of the image's short side (at least 1 px): a
#: photo's subject edge carries its blurred background, which the edit redraws at its own K. A subject thinner than
#: that is shrunk by at most half its own half-width, so that its core is still blended.
FEATHER_FRACTION = 0.02


def feather_width(mask: np.ndarray) -> int:
    """The erosion and feather radius in pixels for the uint8 ``mask`` at the image's size: ``FEATHER_FRACTION`` of
    the short side, capped at half the largest distance from a subject pixel to the background, at least 1."""
    height, width = mask.shape
    # The image's frame is not background here, as it is not for the erosion (a subject cut by the frame).
    half_width = float(cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE).max())
    return max(1, min(round(FEATHER_FRACTION * min(width, height)), int(half_width / 2)))


def subject_weight(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``size`` (width, height) weight in [0, 1]: 1 well inside the subject ``mask`` (True = subject, any size),
    falling to 0 over a feather at its edge and 0 outside."""
    mask = np.asarray(mask, dtype=np.uint8)
    if mask.ndim != 2:
        raise ValueError(f"the subject mask must be a 2-D array, got shape {mask.shape}")
    width, height = size
    mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    if not mask.any():
        raise ValueError(f"the subject mask selects no pixel at {width}x{height}")
    feather = feather_width(mask)
    inner = cv2.erode(mask, np.ones((2 * feather + 1, 2 * feather + 1), np.uint8))
    weight = cv2.GaussianBlur(inner.astype(np.float32), (0, 0), feather / 2) if inner.any() else inner.astype(np.float32)
    return np.clip(weight, 0.0, 1.0)


def keep_subject(edit: Image.Image, photo: Image.Image, mask: np.ndarray) -> Image.Image:
    """``edit`` with the subject of ``photo`` (same size) blended back in where ``subject_weight`` says."""
    if edit.size != photo.size:
        raise ValueError(f"the edit ({edit.width}x{edit.height}) and the photo ({photo.width}x{photo.height}) differ in size")
    weight = subject_weight(mask, edit.size)[..., None]
    out = weight * np.asarray(photo.convert("RGB"), np.float32) + (1 - weight) * np.asarray(edit.convert("RGB"), np.float32)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
