"""The per-photo bokeh record: EXIF lens math, metric depth, image-only fallback and confidence."""
import json
import math

import cv2
import numpy as np
import pytest

from estimators.bokeh_level import estimate_bokeh_level, image_bokeh_level, sensor_width
from estimators.depth import DepthMap, disparity_from_depth
from estimators.exif import ExifInfo
from estimators.image_io import to_gray

W, H = 1024, 683


def texture(h, w, cell=24, seed=0):
    """A high-contrast checker with random cell brightness: many step edges of known sharpness."""
    rng = np.random.default_rng(seed)
    levels = rng.uniform(20, 235, size=(h // cell + 1, w // cell + 1))
    yy, xx = np.mgrid[:h, :w]
    gray = levels[yy // cell, xx // cell].astype(np.float32)
    return np.repeat(gray[..., None], 3, axis=2)


def disc_blur(img, r):
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    k = ((yy**2 + xx**2) <= r * r).astype(np.float32)
    return cv2.filter2D(img, -1, k / k.sum(), borderType=cv2.BORDER_REFLECT)


def dead_leaves(h, w, seed=0):
    """Occluding discs of random grey, radii ~ 1/r^3 from 2 px: the scale-invariant statistics of natural
    images, on which the edge-blur estimate is calibrated (tests/test_labels_physics.py)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w), rng.uniform(20, 235), np.float32)
    yy, xx = np.mgrid[:h, :w]
    r_min, r_max = 2.0, min(h, w) / 4
    for _ in range(int(4 * h * w / (2 * np.pi * r_min**2 * np.log(r_max / r_min)))):
        r = 1 / np.sqrt(1 / r_min**2 - rng.uniform() * (1 / r_min**2 - 1 / r_max**2))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        x0, x1, y0, y1 = int(max(0, cx - r)), int(min(w, cx + r + 1)), int(max(0, cy - r)), int(min(h, cy + r + 1))
        disc = (xx[y0:y1, x0:x1] - cx) ** 2 + (yy[y0:y1, x0:x1] - cy) ** 2 <= r * r
        img[y0:y1, x0:x1][disc] = rng.uniform(20, 235)
    return np.repeat(img[..., None], 3, axis=2)


def scene(h, w, background_radius, background=texture):
    """Sharp centred square subject over a disc-blurred textured background, and the subject mask."""
    img = disc_blur(background(h, w), background_radius) if background_radius else background(h, w)
    mask = np.zeros((h, w), bool)
    mask[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = True
    img[mask] = (texture(h, w, cell=10, seed=1) if background is texture else background(h, w, seed=1))[mask]
    return np.clip(img, 0, 255).astype(np.uint8), mask


FF50 = dict(make="Canon", model="Canon EOS 5D Mark IV", f_number=1.8, focal_length_mm=50.0, focal_length_35mm=50.0)


def k_metric_by_hand(f_m, n, s_m, sensor_w_mm, width):
    return f_m * f_m * s_m / (2 * n * (s_m - f_m)) * width / (sensor_w_mm / 1000)


def test_exif_only_worked_example():
    img, _ = scene(H, W, 0)
    rec = estimate_bokeh_level(img, ExifInfo(**FF50, subject_distance_m=2.5))
    assert rec.provenance == "exif-only"
    assert rec.focus_distance_source == "exif:SubjectDistance"
    assert rec.sensor_width_source == "35mm-equivalent"
    assert rec.k_metric == pytest.approx(20.158, abs=0.005)  # docs/design.md: ~20.2
    # Relative/no depth: z_near = s, z_far = inf -> K = k_metric / s at short side 512.
    assert rec.bokeh_level == pytest.approx(20.158 / 2.5 * 512 / 683, abs=0.003)
    assert rec.background_blur_px == pytest.approx(8.063, abs=0.002)
    assert any("z_far = inf" in note for note in rec.notes)
    assert rec.is_all_in_focus is False


def test_exif_with_metric_depth_uses_subject_depth_and_scene_range():
    img, mask = scene(H, W, 0)
    depth = np.where(mask, 2.0, 10.0).astype(np.float32)
    dm = DepthMap(disparity_from_depth(depth), depth_m=depth, source="test")
    rec = estimate_bokeh_level(img, ExifInfo(**FF50, subject_distance_m=5.0), dm, mask)
    assert rec.provenance == "exif+depth"
    assert rec.focus_distance_m == pytest.approx(2.0) and rec.focus_distance_source == "depth+mask"
    sensor = 43.27 * W / math.hypot(W, H)
    k = k_metric_by_hand(0.05, 1.8, 2.0, sensor, W)
    assert rec.k_metric == pytest.approx(k, rel=1e-6)
    assert (rec.z_near_m, rec.z_far_m) == (pytest.approx(2.0), pytest.approx(10.0))
    assert rec.bokeh_level == pytest.approx(k * (1 / 2.0 - 1 / 10.0) * 512 / H, rel=1e-6)
    assert rec.focus_disparity == pytest.approx(1.0)


@pytest.mark.parametrize("radius", [4, 8, 14])
def test_image_only_recovers_background_disc_radius(radius):
    # 512 x 768: radius in px is already at the reference short side. A dead-leaves background: a
    # checker's isolated edges read wider than natural texture, on which the estimate is calibrated.
    img, mask = scene(512, 768, radius, background=dead_leaves)
    rec = estimate_bokeh_level(img, ExifInfo(), None, mask)
    assert rec.provenance == "image-only"
    assert rec.bokeh_level == pytest.approx(radius, rel=0.25)
    # With relative depth (background d = 0, subject d = 1) K = r / |0 - 1| as well.
    dm = DepthMap(np.where(mask, 1.0, 0.0).astype(np.float32), source="test")
    rec = estimate_bokeh_level(img, ExifInfo(), dm, mask)
    assert rec.bokeh_level == pytest.approx(radius, rel=0.25)


def test_image_only_scales_radius_to_short_side_512():
    # Same blur on a 1024 x 1536 image is half the K: radius 16 px at short side 1024 = 8 px at 512.
    img, mask = scene(1024, 1536, 16)
    assert image_bokeh_level(to_gray(img), None, None, ~mask)[0] == pytest.approx(8, rel=0.25)


def test_sharp_photo_is_all_in_focus():
    img, mask = scene(512, 768, 0)
    rec = estimate_bokeh_level(img, ExifInfo(), None, mask)
    assert rec.bokeh_level <= 1.0 and rec.is_all_in_focus is True
    assert rec.sharpness_subject > 100 and rec.sharpness_background > 100


def test_blur_lowers_background_sharpness_only():
    sharp, mask = scene(512, 768, 0)
    blurred, _ = scene(512, 768, 8)
    a = estimate_bokeh_level(sharp, ExifInfo(), None, mask)
    b = estimate_bokeh_level(blurred, ExifInfo(), None, mask)
    assert b.sharpness_background < a.sharpness_background / 10
    assert b.sharpness_subject == pytest.approx(a.sharpness_subject, rel=0.2)


def test_confidence_follows_agreement_and_source():
    blurred, mask = scene(H, W, 6)
    # EXIF says background blur ~6 px (at 683 short side -> K ~4.5 at 512): agrees with the image roughly.
    agree = estimate_bokeh_level(blurred, ExifInfo(**FF50, subject_distance_m=3.4), None, mask)
    far_off = estimate_bokeh_level(blurred, ExifInfo(**{**FF50, "f_number": 22.0}, subject_distance_m=3.4), None, mask)
    assert agree.confidence > far_off.confidence
    maker = estimate_bokeh_level(
        blurred, ExifInfo(**FF50, focus_distance_m=3.4, focus_distance_source="makernote:canon"), None, mask
    )
    assert maker.confidence == pytest.approx(agree.confidence * 0.8, abs=0.002)
    assert 0 < maker.confidence < agree.confidence <= 0.7


def test_no_estimate_on_flat_image_and_missing_fields_are_named():
    flat = np.full((200, 300, 3), 128, np.uint8)
    rec = estimate_bokeh_level(flat, ExifInfo(f_number=2.0))
    assert rec.bokeh_level is None and rec.provenance is None and rec.confidence == 0.0
    assert any("missing focal length, focus distance, sensor size" in n for n in rec.notes)
    json.dumps(rec.to_dict(), allow_nan=False)


def test_sensor_width_sources():
    # Camera table gives the long side (Canon EOS 40D: 22.2 mm); a portrait photo's width is the short side.
    w, src = sensor_width(ExifInfo(make="Canon", model="Canon EOS 40D", focal_length_mm=50.0), 3888, 2592)
    assert src == "camera-table" and w == pytest.approx(22.2)
    w, _ = sensor_width(ExifInfo(make="Canon", model="Canon EOS 40D", focal_length_mm=50.0), 2592, 3888)
    assert w == pytest.approx(22.2 * 2592 / 3888)
    # Focal-plane resolution: 3888 px recorded at 175.1 px/mm -> 22.2 mm.
    w, src = sensor_width(ExifInfo(focal_plane_px_per_mm=3888 / 22.2, exif_image_width=3888), 3888, 2592)
    assert src == "focal-plane-resolution" and w == pytest.approx(22.2)
    assert sensor_width(ExifInfo(), 100, 100) == (None, None)


def test_record_is_strict_json_with_infinite_background():
    img, _ = scene(H, W, 0)
    rec = estimate_bokeh_level(img, ExifInfo(**FF50, subject_distance_m=2.5), source="x.jpg")
    out = json.loads(json.dumps(rec.to_dict(), allow_nan=False))
    assert out["z_far_m"] is None and out["source"] == "x.jpg" and out["exif"]["f_number"] == 1.8


def test_image_only_estimate_tracks_renderer_k_on_a_real_photo():
    """The renderer defines K; the image-only estimate (with the photo's depth and mask) must follow it."""
    from conftest import DEMO_PHOTOS
    from estimators.depth import focus_disparity_from_mask
    from estimators.sidecars import load_depth_sidecar
    from estimators.image_io import load_image, to_array
    from estimators.mask import DepthMasker
    from synth_blur import render

    photo = DEMO_PHOTOS / "street_8.jpg"
    img = load_image(photo)
    img = img.resize((768, 512))
    depth = load_depth_sidecar(photo, img.size)
    mask = DepthMasker()(img, depth.disparity).mask
    focus = focus_disparity_from_mask(depth.disparity, mask)
    estimates = []
    for k in (0, 5, 10, 20):
        rendered = render(to_array(img), depth.disparity, k, focus)
        estimates.append(estimate_bokeh_level(rendered, ExifInfo(), depth, mask).bokeh_level)
    assert estimates[0] <= 1.0
    assert all(b > a for a, b in zip(estimates, estimates[1:]))
    for k, est in zip((5, 10, 20), estimates[1:]):
        assert est == pytest.approx(k, rel=0.35)


def test_small_all_in_focus_scene_is_not_read_as_blurred():
    """Regression: a 256 px procedural scene once read K ~40 from a 32 px pyramid level."""
    from dataset_tools.demo_scenes import generate_scene, scene_seed

    scene = generate_scene(scene_seed(0, 14), 256, 256)
    depth = DepthMap(disparity_from_depth(scene.depth_m), depth_m=scene.depth_m)
    rec = estimate_bokeh_level(scene.image, ExifInfo(), depth, scene.mask)
    assert rec.provenance == "image-only" and rec.bokeh_level <= 1.0


@pytest.mark.parametrize("index, kind, k_band", [(34, "striped wall", (0.65, 1.35)), (35, "striped wall", (1.0, 2.0)),
                                                 (160, "trees", (0.65, 1.35))])
def test_fine_texture_is_not_read_as_blur_at_a_coarse_scale(index, kind, k_band):
    """Regression: sharp demo scenes with fine texture (stripes ~6 px apart, foliage) read K 12-35 from the
    64 px level, where the texture averages away into a few wide edges, while 128 px read 0. Sharp must
    read <= 1; a K = 3 render (the renderer defines K) ~3. The edge-blur scale is calibrated on natural
    (dead-leaves) texture: scene 35's regular stripes fill the wall with isolated parallel edges, which
    read wider, so it is held to reading blurred and below twice K."""
    from dataset_tools.demo_scenes import generate_scene, scene_seed
    from estimators.depth import focus_disparity_from_mask
    from synth_blur import render

    scene = generate_scene(scene_seed(0, index))
    assert kind in scene.caption
    depth = DepthMap(disparity_from_depth(scene.depth_m), depth_m=scene.depth_m)
    assert estimate_bokeh_level(scene.image, ExifInfo(), depth, scene.mask).bokeh_level <= 1.0
    rendered = render(scene.image, depth.disparity, 3.0, focus_disparity_from_mask(depth.disparity, scene.mask))
    low, high = k_band
    assert low * 3.0 <= estimate_bokeh_level(rendered, ExifInfo(), depth, scene.mask).bokeh_level <= high * 3.0


def test_blur_slope_by_hand():
    """r = K |d - d_focus|: layers at levers 0.4 and 0.6 blurred 6 and 9 px, the focus layer sharp -> K = 15,
    the layer at lever 0.05 (below the minimum lever) is left out of the slope and its count; soft texture
    everywhere, r = 2 + 10 |d - d_focus| at three levers, is an offset of 2 and a slope of 10."""
    from estimators.focal_plane import LayerBlur, fit_blur_slope

    layers = [LayerBlur(0.0, 6.0, 300), LayerBlur(0.4, 0.0, 300), LayerBlur(0.45, 0.75, 300), LayerBlur(1.0, 9.0, 300)]
    fit = fit_blur_slope(layers, 0.4, 0.15)
    assert fit.slope == pytest.approx(15.0) and fit.layers == 2 and fit.edges == 600 and fit.spread == pytest.approx(0.0)
    assert fit_blur_slope(layers[1:3], 0.4, 0.15) is None
    soft = [LayerBlur(d, 2.0 + 10.0 * d, 300) for d in (0.2, 0.4, 0.6)]
    fit = fit_blur_slope(soft, 0.0, 0.15)
    assert (fit.offset, fit.slope) == (pytest.approx(2.0), pytest.approx(10.0))


def test_blur_that_does_not_grow_with_depth_is_no_slope():
    """Offset and slope are bounded at 0. Radii 3, 2, 1 at levers 0.2, 0.4, 0.6 fall with depth (the free line
    is 4 - 5 lever): flat at their mean 2 misfits by 2 (x300), through the origin (slope 2 / 0.56) by 6.86, so
    the slope is 0. Radii 0, 2, 4 (free line -2 + 10 lever): through the origin, slope 3.2 / 0.56 = 40 / 7,
    misfits by 1.71, flat by 8."""
    from estimators.focal_plane import LayerBlur, fit_blur_slope

    falling = [LayerBlur(lever, radius, 300) for lever, radius in ((0.2, 3.0), (0.4, 2.0), (0.6, 1.0))]
    fit = fit_blur_slope(falling, 0.0, 0.15)
    assert (fit.offset, fit.slope) == (pytest.approx(2.0), 0.0)
    rising = [LayerBlur(lever, radius, 300) for lever, radius in ((0.2, 0.0), (0.4, 2.0), (0.6, 4.0))]
    fit = fit_blur_slope(rising, 0.0, 0.15)
    assert (fit.offset, fit.slope) == (0.0, pytest.approx(40.0 / 7.0))


def oblique_stripes(h, w, angle, period=16.0):
    """Pixel-sharp anti-aliased stripes (coverage ramp one pixel wide) at ``angle`` degrees, 45 % duty."""
    yy, xx = np.mgrid[:h, :w].astype(np.float64) + 0.5
    t = xx * math.cos(math.radians(angle)) + yy * math.sin(math.radians(angle))
    half = 0.45 * period / 2
    cover = np.clip(half - np.abs(np.mod(t - half + period / 2, period) - period / 2) + 0.5, 0.0, 1.0)
    return np.repeat((60 + 140 * cover)[..., None], 3, axis=2).astype(np.float32)


@pytest.mark.parametrize("angle", [35, 45, 135])
def test_sharp_oblique_edges_behind_a_sharp_subject_read_all_in_focus(angle):
    """A pixel-sharp edge oblique to the pixel grid reads wider than an axis-aligned one (about 1.1 px of blur
    against the subject's checker): one layer that little wider is no defocus. The same stripes blurred by a
    disc of radius 3 px, one disparity unit behind the subject, read K ~ 3 with the focus found by sharpness."""
    h = w = 512
    mask = np.zeros((h, w), bool)
    mask[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = True
    depth = DepthMap(disparity_from_depth(np.where(mask, 1.0, 10.0).astype(np.float32)))
    for radius in (0, 3):
        img = oblique_stripes(h, w, angle)
        img = disc_blur(img, radius) if radius else img
        img[mask] = texture(h, w, cell=10, seed=1)[mask]
        rec = estimate_bokeh_level(np.clip(img, 0, 255).astype(np.uint8), ExifInfo(), depth, mask)
        if radius:
            assert rec.focus_source == "sharpness" and 3 / 1.25 <= rec.bokeh_level <= 3 * 1.25
        else:
            assert rec.focus_source == "subject" and rec.is_all_in_focus and rec.bokeh_level <= 1.0


def test_tiny_pinhole_scene_with_a_sparsely_measured_sharp_subject_reads_all_in_focus():
    """A 96x64 demo scene (a pinhole render: K = 0) whose far checkered wall is the sharpest well-measured
    layer and whose grass just in front of it reads 1.3 px softer. The subject, sharp one disparity unit
    away, has too few edges to be the in-focus reference, yet it is a measurement: defocus growing from the
    wall would blur it most, so the layers do not follow depth and the photo reads all in focus."""
    from dataset_tools.demo_scenes import generate_scene, scene_seed
    from estimators.depth import normalize_disparity
    from estimators.focal_plane import MIN_REFERENCE_EDGES, layer_blurs

    scene = generate_scene(scene_seed(0, 1), 96, 64)
    depth = DepthMap(disparity_from_depth(scene.depth_m), depth_m=scene.depth_m)
    layers = layer_blurs(to_gray(scene.image), normalize_disparity(depth.disparity), outline_cap=True)
    subject = max(layers, key=lambda layer: layer.disparity)
    assert subject.disparity == pytest.approx(1.0) and subject.count < MIN_REFERENCE_EDGES and subject.radius == 0.0
    rec = estimate_bokeh_level(scene.image, ExifInfo(), depth, scene.mask)
    assert rec.focus_source == "subject" and rec.is_all_in_focus and rec.bokeh_level <= 1.0
