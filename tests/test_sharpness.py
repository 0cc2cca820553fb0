"""Blur measures against closed-form values and blurs of known size."""
import cv2
import numpy as np
import pytest

from estimators.sharpness import (
    defocus_at_edges,
    defocus_map,
    disc_radius_from_sigma,
    laplacian_variance,
    resize_to_reference,
)


def checkerboard(size=256, cell=32, lo=40.0, hi=200.0):
    yy, xx = np.mgrid[:size, :size]
    return np.where(((yy // cell) + (xx // cell)) % 2 == 0, lo, hi).astype(np.float32)


def disc_kernel(r):
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    k = ((yy**2 + xx**2) <= r * r).astype(np.float32)
    return k / k.sum()


def test_laplacian_variance_of_pixel_checkerboard_is_64_a_squared():
    # Alternating +-a: each pixel's 3x3 Laplacian is -4(+-a) + 4(-+a) = -+8a, so the variance is 64 a^2.
    a = 10.0
    yy, xx = np.mgrid[:64, :64]
    img = np.where((yy + xx) % 2 == 0, 100 + a, 100 - a)
    assert laplacian_variance(img) == pytest.approx(64 * a * a, rel=1e-6)
    assert laplacian_variance(np.full((64, 64), 77.0)) == 0.0


def test_laplacian_variance_respects_mask():
    yy, xx = np.mgrid[:64, :64]
    img = np.where((yy + xx) % 2 == 0, 110.0, 90.0)
    img[:, 32:] = 50.0
    right = np.zeros(img.shape, bool)
    right[:, 34:] = True  # away from the boundary column
    assert laplacian_variance(img, right) == 0.0
    left = np.zeros(img.shape, bool)
    left[:, :30] = True
    assert laplacian_variance(img, left) == pytest.approx(6400.0, rel=1e-6)
    assert laplacian_variance(img, np.zeros(img.shape, bool)) is None


@pytest.mark.parametrize("sigma", [2.0, 4.0, 6.0])
def test_zhuo_sim_recovers_gaussian_sigma(sigma):
    img = cv2.GaussianBlur(checkerboard(), (0, 0), sigma)
    edges = defocus_at_edges(img)
    assert edges.edges.sum() > 500
    assert np.nanmedian(edges.sigma) == pytest.approx(sigma, rel=0.1)


@pytest.mark.parametrize("radius", [4, 8, 12])
def test_disc_radius_from_zhuo_sim_sigma(radius):
    img = cv2.filter2D(checkerboard(cell=48), -1, disc_kernel(radius), borderType=cv2.BORDER_REFLECT)
    sigma = np.nanmedian(defocus_at_edges(img).sigma)
    assert disc_radius_from_sigma(sigma) == pytest.approx(radius, rel=0.15)


def test_sharp_edges_read_as_zero_radius_and_map_is_dense_near_edges():
    edges = defocus_at_edges(checkerboard())
    assert disc_radius_from_sigma(np.nanmedian(edges.sigma)) < 0.5
    dense = defocus_map(edges)
    assert np.isfinite(dense[100:156, 100:156]).all()


def test_resize_to_reference_short_side():
    assert resize_to_reference(np.zeros((1333, 2000), np.float32)).shape == (512, 768)
    assert resize_to_reference(np.zeros((512, 700), np.float32)).shape == (512, 700)


def test_resize_to_reference_has_a_pixel_budget():
    # 20:1 at short side 8 -> 10240 x 512 = 5,242,880 px, exactly the budget (512^2 * MAX_ASPECT).
    assert resize_to_reference(np.zeros((8, 160), np.float32)).shape == (512, 10240)
    with pytest.raises(ValueError, match=r"1x40000 array would resize to 512x20480000 .* over the 5,242,880-pixel budget"):
        resize_to_reference(np.zeros((40000, 1), np.float32))  # 42 GB of float32 if it were allowed
