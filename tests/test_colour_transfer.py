"""LAB colour-mean transfer against published CIE values and the formula worked by hand."""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from pipelines.colour_transfer import lab_mean_transfer, lab_means


def flat(rgb, size=(8, 6)) -> Image.Image:
    return Image.new("RGB", size, tuple(rgb))


def test_lab_means_of_srgb_red_match_cie_values():
    # sRGB (255, 0, 0) is CIELAB (53.24, 80.09, 67.20) under D65; OpenCV's 8-bit encoding stores
    # L * 255 / 100 and a + 128, b + 128.
    expected = np.array([53.24 * 255 / 100, 80.09 + 128, 67.20 + 128])
    assert np.abs(lab_means(flat((255, 0, 0))) - expected).max() < 1.0


def test_uniform_target_takes_the_pivot_colour():
    # one colour each: shifting the target's LAB mean onto the pivot's makes it the pivot's colour
    out = np.asarray(lab_mean_transfer(flat((40, 110, 210)), flat((200, 60, 30))), dtype=int)
    assert np.abs(out - np.array([40, 110, 210])).max() <= 3


def test_shift_is_the_difference_of_means_and_keeps_structure():
    rng = np.random.default_rng(0)
    target = Image.fromarray(rng.integers(60, 190, (24, 32, 3), dtype=np.uint8))
    pivot = Image.fromarray(np.clip(np.asarray(target, dtype=int) * 0.8 + np.array([40, 10, -20]), 0, 255).astype(np.uint8))
    out = lab_mean_transfer(pivot, target)
    assert out.size == target.size
    lab_in = cv2.cvtColor(np.asarray(target), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(float)
    lab_out = cv2.cvtColor(np.asarray(out), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(float)
    shift = lab_means(pivot) - lab_in.mean(axis=0)
    # per pixel: the same shift everywhere (up to 8-bit rounding and the LAB -> RGB -> LAB round trip)
    assert np.abs(np.median(lab_out - lab_in, axis=0) - shift).max() <= 1.0
    assert np.abs(lab_out.mean(axis=0) - lab_means(pivot)).max() <= 1.5
    # the spread of each channel is kept
    assert np.abs(lab_out.std(axis=0) - lab_in.std(axis=0)).max() <= 1.5


def test_same_image_is_unchanged():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    out = np.asarray(lab_mean_transfer(image, image), dtype=int)
    # only the RGB -> 8-bit LAB -> RGB round trip remains
    roundtrip = cv2.cvtColor(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2LAB), cv2.COLOR_LAB2RGB).astype(int)
    assert np.abs(out - roundtrip).max() <= 1
