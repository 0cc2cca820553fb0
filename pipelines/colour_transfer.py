"""LAB colour-mean transfer: the last step of grounded sampling (docs/design.md §3).

Each target image's LAB channel means are shifted to the pivot's, so images of one scene at
different K share its colour balance. Done in OpenCV's 8-bit LAB encoding (L scaled to 0..255, a and
b offset by 128): means by ``cv2.meanStdDev``, the shift applied channel by channel (subtract the
target's mean, add the pivot's), clipped to 0..255 and truncated to integers, as the released
inference code does, so that grounded samples match it pixel for pixel.
"""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def _lab(image: Image.Image) -> np.ndarray:
    return cv2.cvtColor(np.asarray(image.convert("RGB"), dtype=np.uint8), cv2.COLOR_RGB2LAB).astype(np.float32)


def lab_means(image: Image.Image) -> np.ndarray:
    """The mean of each channel of ``image`` in OpenCV's 8-bit LAB encoding, as float64 ``[3]``."""
    return cv2.meanStdDev(_lab(image))[0][:, 0]


def lab_mean_transfer(pivot: Image.Image, target: Image.Image) -> Image.Image:
    """``target`` with its LAB channel means moved to those of ``pivot`` (spreads unchanged)."""
    lab = _lab(target)
    own, wanted = cv2.meanStdDev(lab)[0][:, 0], lab_means(pivot)
    for c in range(3):
        channel = lab[..., c]
        channel -= own[c]
        channel += wanted[c]
    return Image.fromarray(cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB))
