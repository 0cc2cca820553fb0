"""Depth maps: normalisation formula, focal plane from a mask, and sidecar files."""
import numpy as np
import pytest
from PIL import Image

from estimators.depth import (
    DepthUnavailableError,
    disparity_from_depth,
    focus_disparity_from_mask,
    focus_distance_from_mask,
    normalize_disparity,
)
from estimators.sidecars import load_depth_sidecar


def test_disparity_from_depth_matches_design_formula():
    z = np.array([[2.0, 4.0], [5.0, 10.0]])
    # d = (1/z - 1/10) / (1/2 - 1/10): 1, (0.25-0.1)/0.4 = 0.375, (0.2-0.1)/0.4 = 0.25, 0
    np.testing.assert_allclose(disparity_from_depth(z), [[1.0, 0.375], [0.25, 0.0]], atol=1e-6)


def test_infinite_depth_is_far_end():
    z = np.array([[1.0, 2.0, np.inf]])
    # 1/z = 1, 0.5, 0 -> d = 1, 0.5, 0
    np.testing.assert_allclose(disparity_from_depth(z), [[1.0, 0.5, 0.0]], atol=1e-6)


def test_normalize_handles_nan_and_flat():
    np.testing.assert_allclose(normalize_disparity(np.array([[2.0, 4.0, np.nan]])), [[0.0, 1.0, 0.0]])
    assert normalize_disparity(np.full((3, 3), 5.0)).max() == 0.0


def test_focus_disparity_is_median_of_nearer_half():
    disp = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9, 0.95])
    mask = np.array([0, 1, 1, 1, 1, 1, 0, 0], bool)  # subject 0.2..0.6: median 0.4, nearer half 0.4..0.6
    assert focus_disparity_from_mask(disp, mask) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        focus_disparity_from_mask(disp, np.zeros(8, bool))


def test_focus_distance_is_median_of_nearer_half():
    z = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 50.0])
    mask = np.array([1, 1, 1, 1, 1, 0], bool)  # 1..5: median 3, nearer half 1,2,3 -> 2
    assert focus_distance_from_mask(z, mask) == pytest.approx(2.0)
    assert focus_distance_from_mask(z, np.zeros(6, bool)) is None


def test_metric_sidecar(tmp_path):
    photo = tmp_path / "scene.jpg"
    Image.new("RGB", (8, 4)).save(photo)
    depth = np.tile(np.linspace(2.0, 10.0, 8, dtype=np.float32), (4, 1))
    np.save(tmp_path / "scene.depth.npy", depth)
    dm = load_depth_sidecar(photo, (8, 4))
    assert dm.is_metric and dm.source == "sidecar-depth"
    assert dm.depth_range_m == pytest.approx((2.0, 10.0))
    assert dm.disparity[0, 0] == pytest.approx(1.0) and dm.disparity[0, -1] == pytest.approx(0.0)


@pytest.mark.parametrize("dtype,top", [(np.uint8, 255), (np.uint16, 65535)])
def test_disparity_png_sidecar_8_and_16_bit_resized(tmp_path, dtype, top):
    photo = tmp_path / "p.png"
    Image.new("RGB", (20, 10)).save(photo)
    disp = np.zeros((5, 10), dtype)
    disp[:, 5:] = top  # right half nearest
    disp[:, :5] = top // 4
    Image.fromarray(disp).save(tmp_path / "p.disparity.png")
    dm = load_depth_sidecar(photo, (20, 10))
    assert dm.disparity.shape == (10, 20) and not dm.is_metric
    assert dm.disparity[:, :8].max() == pytest.approx(0.0) and dm.disparity[:, 12:].min() == pytest.approx(1.0)


def test_missing_and_broken_sidecars(tmp_path):
    photo = tmp_path / "x.jpg"
    Image.new("RGB", (4, 4)).save(photo)
    with pytest.raises(DepthUnavailableError, match="no depth sidecar"):
        load_depth_sidecar(photo, (4, 4))
    (tmp_path / "x.disparity.png").write_bytes(b"not a png")
    with pytest.raises(DepthUnavailableError, match="unusable"):
        load_depth_sidecar(photo, (4, 4))
