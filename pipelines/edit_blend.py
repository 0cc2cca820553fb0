"""Keeping a photo's in-focus subject through a bokeh edit: its pixels blended back over the regenerated image."""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

#: The subject is shrunk by, then feathered over, this fraction of the image's short side (at least 1 px): a
#: photo's subject edge carries its blurred background, which the edit redraws at its own K.
FEATHER_FRACTION = 0.02


def subject_weight(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``size`` (width, height) weight in [0, 1]: 1 well inside the subject ``mask`` (True = subject, any size),
    falling to 0 over a feather at its edge and 0 outside."""
    mask = np.asarray(mask, dtype=np.uint8)
    if mask.ndim != 2 or not mask.any():
        raise ValueError("the subject mask must be a 2-D array that selects some pixel")
    width, height = size
    mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    feather = max(1, round(FEATHER_FRACTION * min(width, height)))
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
