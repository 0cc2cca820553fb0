"""synth_blur's internal paths against independent references: small kernels summed directly and large ones by
FFT both equal a true convolution (OpenCV's), renders of one image at several K equal separate renders, and the
buffer a thread keeps between renders leaves no trace in the next one."""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
import torch

from synth_blur import render
from synth_blur.aperture import aperture_kernel
from synth_blur.renderer import render_levels
from synth_blur.tiles import DIRECT_HALF_WIDTH, HALO, PATCH, TILE, _blur, _blur_direct, slot_kernels

from test_render_api import one_thread, scene  # noqa: F401 - one_thread: an autouse fixture (one torch thread)

GAMMA = 2.2


def true_convolution(patch: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The TILE x TILE core of ``patch`` (PATCH x PATCH) convolved with ``kernel``: OpenCV's correlation with the
    kernel turned by 180 degrees."""
    full = cv2.filter2D(patch.astype(np.float64), -1, cv2.flip(kernel, -1), borderType=cv2.BORDER_CONSTANT)
    return full[HALO : HALO + TILE, HALO : HALO + TILE]


@pytest.mark.parametrize("aperture", ["disc", 5])
@pytest.mark.parametrize("radius", [0.3, 0.9, 1.6, 2.4, 3.6])
def test_each_kernel_path_is_a_true_convolution(radius, aperture):
    # A 5-blade polygon is not symmetric about its centre: a kernel applied the wrong way round fails here.
    patches = torch.rand(3, 4, PATCH, PATCH, generator=torch.Generator().manual_seed(1))
    gain = 0.25
    kernels = slot_kernels([radius], aperture, patches, gain)
    kernel = aperture_kernel(radius, aperture) * gain
    direct = kernel.shape[0] // 2 <= DIRECT_HALF_WIDTH
    assert (kernels.taps[0] is not None) == direct
    tiles = _blur_direct(patches, kernels.taps[0]) if direct else _blur(patches, kernels.spectra[[0, 0, 0]])
    for n in range(3):
        for c in range(4):
            expected = true_convolution(patches[n, c].numpy(), kernel)
            if c == 3:
                expected = np.minimum(expected, 1.0)
            np.testing.assert_allclose(tiles[n, c].numpy(), expected, atol=2e-6)


@pytest.mark.parametrize("blades", ["disc", 5])
@pytest.mark.parametrize("radius", [0.9, 1.6, 2.4])
def test_point_spread_of_a_small_kernel_is_the_aperture(radius, blades):
    image = np.zeros((64, 64, 3), np.float32)
    image[32, 32] = 1.0
    out = render(image, np.zeros((64, 64), np.float32), radius * 512 / 64, 1.0, aperture=blades)
    out = out.astype(np.float64) ** GAMMA
    kernel = aperture_kernel(radius, blades)
    half = kernel.shape[0] // 2
    np.testing.assert_allclose(out[32 - half : 33 + half, 32 - half : 33 + half, 0], kernel, atol=1e-6)
    assert out[..., 0].sum() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("boost", [0.0, 1.5])
def test_render_levels_equal_separate_renders(dtype, boost):
    image, disparity = scene(56, 72, seed=3)
    data = image if dtype == "uint8" else image.astype(np.float32) / 255
    levels = [0.0, 4.0, 17.5, 30.0]
    together = render_levels(data, disparity, levels, 0.5, highlight_boost=boost, aperture=6)
    assert np.array_equal(together[0], data) and together[0] is not data
    for level, out in zip(levels[1:], together[1:]):
        assert np.array_equal(out, render(data, disparity, level, 0.5, highlight_boost=boost, aperture=6))


def in_new_thread(fn):
    """``fn()`` run in a thread of its own (one that has kept no buffer yet)."""
    results = []
    thread = threading.Thread(target=lambda: results.append(fn()))
    thread.start()
    thread.join()
    return results[0]


def test_a_kept_buffer_leaves_no_trace_in_the_next_render():
    large, large_disparity = scene(200, 180, seed=4)
    small, small_disparity = scene(48, 64, seed=5)
    fresh_large = in_new_thread(lambda: render(large, large_disparity, 30, 0.9))
    fresh_small = in_new_thread(lambda: render(small, small_disparity, 30, 0.0))
    assert np.array_equal(render(large, large_disparity, 30, 0.9), fresh_large)
    assert np.array_equal(render(small, small_disparity, 30, 0.0), fresh_small)  # in what the large one used
    assert np.array_equal(render(large, large_disparity, 30, 0.9), fresh_large)
