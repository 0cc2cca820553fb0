"""The estimator against physics: thin-lens scenes rendered with Mitsuba 3 by benchmarks/bench_labels.py.

Each scene in tests/data/physics has the thin-lens render (``<name>.png``), a pinhole (all-in-focus)
render of the same scene (``<name>.pinhole.png``), its metric depth (``<name>.depth.npy``, metres)
and the camera (``<name>.json``). The true K and focus distance are worked here from the camera
alone (docs/design.md §1), not with estimators/lens.py.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from estimators.bokeh_level import estimate_bokeh_level
from estimators.depth import DepthMap, disparity_from_depth
from estimators.exif import ExifInfo
from estimators.mask import DepthMasker

DATA = Path(__file__).parent / "data" / "physics"
SCENES = sorted(p.stem for p in DATA.glob("*.json"))


def load(name):
    camera = json.loads((DATA / f"{name}.json").read_text())
    lens = np.asarray(Image.open(DATA / f"{name}.png").convert("RGB"))
    pinhole = np.asarray(Image.open(DATA / f"{name}.pinhole.png").convert("RGB"))
    depth = np.load(DATA / f"{name}.depth.npy", allow_pickle=False).astype(np.float32)
    return camera, lens, pinhole, depth


def true_k(camera, depth):
    """K = k_metric (1/z_near - 1/z_far) at short side 512, k_metric = f^2 s / (2 N (s - f)) * W / sensor_w."""
    f, n, s = camera["focal_length_mm"] / 1000, camera["f_number"], camera["focus_distance_m"]
    w, h = camera["width"], camera["height"]
    k_metric = f * f * s / (2 * n * (s - f)) * w / (camera["sensor_width_mm"] / 1000)
    return k_metric * (1 / float(depth.min()) - 1 / float(depth.max())) * 512 / min(w, h)


def estimate(image, depth, exif, metric):
    disparity = disparity_from_depth(depth)
    found = DepthMasker()(image, disparity)
    dmap = DepthMap(disparity, depth_m=depth if metric else None, source="sidecar-depth" if metric else "sidecar-disparity")
    return estimate_bokeh_level(image, exif, dmap, found.mask, mask_source=found.source)


def exif_of(camera):
    return ExifInfo(
        f_number=camera["f_number"], focal_length_mm=camera["focal_length_mm"], focal_length_35mm=camera["focal_length_35mm"]
    )


def test_scene_files_are_present_and_small():
    assert len(SCENES) >= 4
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 5_000_000


@pytest.mark.parametrize("name", SCENES)
def test_truth_matches_the_mitsuba_camera(name):
    """The render's geometry (fov from sensor width and image distance v = f s / (s - f), aperture radius
    A = f / 2N) gives k_metric = A W / (2 tan(fov / 2)), the same as the thin-lens formula."""
    camera, _, _, depth = load(name)
    f, s = camera["focal_length_mm"] / 1000, camera["focus_distance_m"]
    v = f * s / (s - f)
    assert math.degrees(2 * math.atan(camera["sensor_width_mm"] / 1000 / (2 * v))) == pytest.approx(camera["fov_deg"], rel=1e-9)
    k_metric = camera["aperture_radius_m"] * camera["width"] / (2 * math.tan(math.radians(camera["fov_deg"]) / 2))
    span = 1 / float(depth.min()) - 1 / float(depth.max())
    assert k_metric * span * 512 / min(camera["width"], camera["height"]) == pytest.approx(true_k(camera, depth), rel=1e-6)
    assert camera["bokeh_level"] == pytest.approx(true_k(camera, depth), rel=2e-3)  # float16 depth on disk


@pytest.mark.parametrize("name", SCENES)
def test_exif_and_metric_depth_read_k_and_focus(name):
    camera, lens, _, depth = load(name)
    rec = estimate(lens, depth, exif_of(camera), metric=True)
    k = true_k(camera, depth)
    assert rec.provenance == "exif+depth"
    assert rec.bokeh_level == pytest.approx(k, rel=0.05)
    if k > 2:  # defocus to read the focal plane from, foreground objects or not
        assert rec.focus_source == "sharpness"
        assert rec.focus_distance_m == pytest.approx(camera["focus_distance_m"], rel=0.15)


@pytest.mark.parametrize("name", SCENES)
def test_image_alone_reads_k(name):
    """Relative depth, no EXIF: K within 1.25x of the thin-lens truth from K = 2 up."""
    camera, lens, _, depth = load(name)
    rec = estimate(lens, depth, ExifInfo(), metric=False)
    k = true_k(camera, depth)
    assert rec.provenance == "image-only"
    if k >= 2:
        assert 1 / 1.25 <= rec.bokeh_level / k <= 1.25
        assert rec.confidence > 0
    else:
        assert rec.bokeh_level < 2


@pytest.mark.parametrize("name", SCENES)
def test_exif_with_relative_depth_uses_the_measured_blur(name):
    """Focal length and f-number but no focus distance: the image's blur gives K and, by the lens math,
    the focus distance."""
    camera, lens, _, depth = load(name)
    rec = estimate(lens, depth, exif_of(camera), metric=False)
    k = true_k(camera, depth)
    assert rec.provenance == "exif+image"
    if k >= 2:
        assert 1 / 1.25 <= rec.bokeh_level / k <= 1.25
        assert rec.focus_distance_source == "lens+image-blur"
        # The lens math takes the farthest layer at infinity, so it reads 1/s - 1/z_far for 1/s.
        z_far = float(depth.max())
        s_at_infinity = 1 / (1 / camera["focus_distance_m"] - 1 / z_far)
        assert rec.focus_distance_m == pytest.approx(s_at_infinity, rel=0.3)


@pytest.mark.parametrize("name", SCENES)
def test_pinhole_render_reads_all_in_focus(name):
    camera, _, pinhole, depth = load(name)
    rec = estimate(pinhole, depth, ExifInfo(), metric=False)
    assert rec.is_all_in_focus is True and rec.bokeh_level <= 1.0
    assert rec.focus_source == "subject"
