"""pipelines.metrics against independent references: hand-worked values, a slow per-pixel SSIM and
renderer sweeps of a real photo (LVCorr of a physical render near 1, of a constant sweep 0)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DEMO_PHOTOS
from estimators.depth import focus_disparity_from_mask
from estimators.sidecars import load_depth_sidecar
from estimators.image_io import load_image, to_array
from estimators.mask import DepthMasker
from pipelines import metrics
from synth_blur.renderer import render

C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def grey(value: int, shape=(24, 20)) -> np.ndarray:
    return np.full((*shape, 3), value, dtype=np.uint8)


# ---------------------------------------------------------------- pearson


def test_pearson_matches_a_hand_worked_example():
    # x mean 2.5, y mean 5: sum dx*dy = 11, sum dx^2 = 5, sum dy^2 = 26 -> r = 11 / sqrt(130)
    assert metrics.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130), abs=1e-12)
    assert metrics.pearson([0, 1, 2], [5, 3, 1]) == pytest.approx(-1.0)


def test_pearson_is_zero_without_spread_and_rejects_bad_input():
    assert metrics.pearson([0, 6, 12], [4.2, 4.2, 4.2]) == 0.0
    assert metrics.pearson([3, 3, 3], [1, 2, 3]) == 0.0
    with pytest.raises(ValueError):
        metrics.pearson([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        metrics.pearson([1, 2], [1, float("nan")])


# ---------------------------------------------------------------- sharpness


def checkerboard(amplitude: int, shape=(40, 40)) -> np.ndarray:
    """128 +- amplitude in a 1 px checkerboard: the 5-point Laplacian is +-8 amplitude at every pixel
    (mirrored borders keep the pattern), so its variance is 64 amplitude^2."""
    yy, xx = np.indices(shape)
    values = np.where((yy + xx) % 2 == 0, 128 + amplitude, 128 - amplitude).astype(np.uint8)
    return np.repeat(values[..., None], 3, axis=2)


def test_background_sharpness_of_a_checkerboard_is_worked_by_hand():
    image = checkerboard(10)
    assert metrics.background_sharpness(image) == pytest.approx(64 * 10**2)
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True  # the subject; its surround is the same pattern, so the value is unchanged
    assert metrics.background_sharpness(image, mask) == pytest.approx(6400)
    flat_subject = image.copy()
    flat_subject[10:20, 10:20] = 128  # a flat subject changes only pixels within 1 px of it
    assert metrics.background_sharpness(flat_subject, mask) == pytest.approx(6400)


def test_background_excludes_the_subject_and_a_margin():
    mask = np.zeros((40, 40), bool)
    mask[10:14, 10:14] = True
    background = metrics.background_region(mask)
    assert background.sum() == 40 * 40 - 6 * 6  # the 4x4 subject grown by 1 px on each side
    full = np.ones((40, 40), bool)
    assert metrics.background_sharpness(checkerboard(5), full) is None  # no background pixel left


def test_calibration_is_the_absolute_log_ratio():
    ratios = metrics.calibration([100.0, 50.0, None], [100.0, 200.0, 7.0])
    assert ratios[0] == pytest.approx(0.0)
    assert ratios[1] == pytest.approx(math.log(4), abs=1e-4)
    assert ratios[2] is None
    with pytest.raises(ValueError):
        metrics.calibration([1.0], [1.0, 2.0])


# ---------------------------------------------------------------- SSIM and PSNR


def slow_ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Wang et al. (2004) SSIM, one pixel at a time: 11x11 Gaussian weights (sigma 1.5, normalised),
    mirrored borders (numpy 'reflect' = OpenCV reflect-101), on Rec. 601 luma 0..255."""
    def luma(x):
        x = x.astype(np.float64)
        return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]

    offsets = np.arange(-5, 6)
    g = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    w = g / g.sum()
    x, y = np.pad(luma(a), 5, mode="reflect"), np.pad(luma(b), 5, mode="reflect")
    out = np.zeros(a.shape[:2])
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            out[i, j] = (2 * mx * my + C1) * (2 * cxy + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
    return out


def test_ssim_of_constant_images_is_the_luminance_term():
    expected = (2 * 100 * 120 + C1) / (100**2 + 120**2 + C1)  # variances 0: contrast-structure term is C2 / C2
    assert metrics.ssim(grey(100), grey(120)) == pytest.approx(expected, rel=1e-5)
    assert metrics.ssim(grey(100), grey(100)) == pytest.approx(1.0)


def test_ssim_matches_a_per_pixel_loop():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (18, 23, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    reference = slow_ssim_map(a, b)
    np.testing.assert_allclose(metrics.ssim_map(a, b), reference, atol=1e-6)  # luma is float32 (estimators.image_io.to_gray)
    mask = np.zeros(a.shape[:2], bool)
    mask[3:11, 5:19] = True
    assert metrics.ssim(a, b, mask) == pytest.approx(reference[mask].mean(), abs=1e-6)
    assert metrics.ssim(Image.fromarray(a), Image.fromarray(b)) == pytest.approx(reference.mean(), abs=1e-6)


def test_psnr_worked_by_hand():
    a, b = grey(0), grey(10)
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))  # MSE 100
    c = a.copy()
    c[:12] = 20  # top half differs by 20 (MSE 400 there), bottom half equal
    mask = np.zeros(a.shape[:2], bool)
    mask[:12] = True
    assert metrics.psnr(a, c, mask) == pytest.approx(10 * math.log10(255**2 / 400))
    assert metrics.psnr(a, c) == pytest.approx(10 * math.log10(255**2 / 200))
    assert metrics.psnr(a, c, ~mask) == math.inf


def test_pair_metrics_reject_mismatches():
    with pytest.raises(ValueError, match="differ in size"):
        metrics.ssim(grey(1), grey(1, (10, 10)))
    with pytest.raises(ValueError, match="mask shape"):
        metrics.psnr(grey(1), grey(2), np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="no pixel"):
        metrics.psnr(grey(1), grey(2), np.zeros((24, 20), bool))


# ---------------------------------------------------------------- LVCorr


@pytest.fixture(scope="module")
def photo_sweep():
    """street_8 at 96x64 with its disparity sidecar and depth mask, rendered at K = 0, 6 .. 30."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    path = DEMO_PHOTOS / "street_8.jpg"
    image = load_image(path).resize((96, 64), Image.Resampling.LANCZOS)
    disparity = load_depth_sidecar(path, image.size).disparity
    mask = DepthMasker()(image, disparity).mask
    focus = focus_disparity_from_mask(disparity, mask)
    levels = [0, 6, 12, 18, 24, 30]
    images = [render(to_array(image), disparity, k, focus, device="cpu") for k in levels]
    torch.set_num_threads(threads)
    return levels, images, mask


def test_lvcorr_of_a_physical_render_sweep_is_near_one(photo_sweep):
    levels, images, mask = photo_sweep
    assert 0.02 < mask.mean() < 0.5
    assert metrics.lvcorr(levels, images, mask) > 0.95
    assert metrics.lvcorr(levels, images) > 0.9
    assert metrics.lvcorr(levels[::-1], images, mask) < -0.95  # K listed backwards: the trend inverts


def test_lvcorr_without_a_trend_is_zero(photo_sweep):
    levels, images, mask = photo_sweep
    assert metrics.lvcorr(levels, [grey(90, (64, 96))] * len(levels), mask) == 0.0
    assert metrics.lvcorr(levels, [images[0]] * len(levels), mask) == 0.0  # K ignored: one image repeated
    # One image with a grey level of rounding in one background pixel of the later copies (as the same sample
    # computed at another batch position has): no trend, where Pearson on the raw values says -0.83.
    copies = [np.array(images[0]) for _ in levels]
    row, col = np.argwhere(~mask)[0]
    for copy in copies[4:]:
        copy[row, col] = np.where(copy[row, col] < 255, copy[row, col] + 1, copy[row, col] - 1)
    sharpness = [metrics.background_sharpness(c, mask) for c in copies]
    assert sharpness[0] != sharpness[-1] and abs(sharpness[-1] / sharpness[0] - 1) < 1e-3
    assert abs(metrics.pearson(levels, [metrics.blur_trend(v) for v in sharpness])) > 0.5
    assert metrics.lvcorr(levels, copies, mask) == 0.0
    rng = np.random.default_rng(0)
    many = list(range(31))
    noise = [np.clip(128 + rng.normal(0, 20, (64, 96, 3)), 0, 255).astype(np.uint8) for _ in many]
    assert abs(metrics.lvcorr(many, noise)) < 0.4  # noise of one strength at every K


def test_lvcorr_is_none_without_a_background():
    with pytest.raises(ValueError):
        metrics.lvcorr([0, 1], [grey(1)])
    assert metrics.lvcorr([0, 30], [grey(1), grey(2)], np.ones((24, 20), bool)) is None
