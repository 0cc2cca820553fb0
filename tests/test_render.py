"""synth_blur.render against an exact, slow per-pixel scatter reference written here.

The reference: every source pixel spreads its linear-light colour over the pixels its aperture
covers (exact disc area per pixel, from a 1-D integral), into an accumulator of its own depth;
depths are then composited front to back, each hiding what is behind it in proportion to its
coverage, and the sum is divided by the total coverage (occlusion rule). The frame is mirrored
so that the borders see a continuing scene. Fine for 64-128 px scenes.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synth_blur import render
from synth_blur.aperture import aperture_kernel

DATA = Path(__file__).parent / "data" / "photos" / "depth"
GAMMA = 2.2


@pytest.fixture(autouse=True)
def one_thread():
    """Many small torch ops: one thread is fastest and immune to other processes on the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- reference


def disc_area_kernel(radius: float, samples: int = 2000) -> np.ndarray:
    """Area of each pixel square inside a circle of ``radius`` centred on the middle pixel, normalised.

    Computed column by column: the covered height of a pixel at abscissa x is the overlap of
    [y0, y1] with the chord [-sqrt(r^2 - x^2), sqrt(r^2 - x^2)], integrated over x (midpoint rule).
    """
    half = max(0, math.ceil(radius + 0.5) - 1)
    if half == 0:
        return np.ones((1, 1))
    size = 2 * half + 1
    kernel = np.zeros((size, size))
    for j in range(size):
        x0 = j - half - 0.5
        xs = x0 + (np.arange(samples) + 0.5) / samples
        chord = np.sqrt(np.clip(radius * radius - xs * xs, 0.0, None))
        for i in range(size):
            y0, y1 = i - half - 0.5, i - half + 0.5
            kernel[i, j] = np.clip(np.minimum(y1, chord) - np.maximum(y0, -chord), 0.0, None).mean()
    return kernel / kernel.sum()


def mirror(array: np.ndarray, pad: int) -> np.ndarray:
    """Pad the first two axes by reflecting about the frame's edges (pixel 0 next to pixel -1)."""
    widths = [(pad, pad), (pad, pad)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="symmetric")


def scatter_reference(image: np.ndarray, disparity: np.ndarray, level: float, focus: float) -> np.ndarray:
    """Exact layered scatter render of a float image in [0, 1] (gamma 2.2) whose disparity takes few values."""
    height, width = disparity.shape
    signed = level * (disparity.astype(np.float64) - focus) * min(height, width) / 512.0
    pad = int(math.ceil(np.abs(signed).max())) + 1
    colour = mirror(image.astype(np.float64) ** GAMMA, pad)
    radius = mirror(signed, pad)
    depths = np.unique(radius)[::-1]  # nearest first
    out = np.zeros(colour.shape)
    coverage = np.zeros(radius.shape)
    transmitted = np.ones(radius.shape)
    for depth in depths:
        kernel = disc_area_kernel(abs(depth))
        half = kernel.shape[0] // 2
        acc_c = np.zeros((radius.shape[0] + 2 * half, radius.shape[1] + 2 * half, 3))
        acc_a = np.zeros(acc_c.shape[:2])
        for y, x in zip(*np.nonzero(radius == depth)):  # each source pixel spreads over its disc
            acc_c[y : y + 2 * half + 1, x : x + 2 * half + 1] += kernel[..., None] * colour[y, x]
            acc_a[y : y + 2 * half + 1, x : x + 2 * half + 1] += kernel
        acc_c = acc_c[half : half + radius.shape[0], half : half + radius.shape[1]]
        acc_a = acc_a[half : half + radius.shape[0], half : half + radius.shape[1]]
        out += transmitted[..., None] * acc_c
        coverage += transmitted * acc_a
        transmitted *= 1.0 - np.minimum(acc_a, 1.0)
    result = out / coverage[..., None]
    return result[pad : pad + height, pad : pad + width] ** (1.0 / GAMMA)


def convolve_linear(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Reference blur (true convolution) of a float image in linear light, normalised by coverage at the frame."""
    half = kernel.shape[0] // 2
    linear = image.astype(np.float64) ** GAMMA
    height, width = linear.shape[:2]
    padded = np.pad(linear, ((half, half), (half, half), (0, 0)))
    inside = np.pad(np.ones((height, width)), half)
    out = np.zeros_like(linear)
    weight = np.zeros((height, width))
    for dy in range(-half, half + 1):
        for dx in range(-half, half + 1):
            k = kernel[dy + half, dx + half]
            if k:  # out(y, x) += k(dy, dx) * in(y - dy, x - dx)
                out += k * padded[half - dy : half - dy + height, half - dx : half - dx + width]
                weight += k * inside[half - dy : half - dy + height, half - dx : half - dx + width]
    return (out / weight[..., None]) ** (1.0 / GAMMA)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


# ----------------------------------------------------------------------------- scenes


def photo(size: int, offset: tuple[int, int] = (120, 230)) -> np.ndarray:
    """A float crop of the motorcycle photo: real texture."""
    with Image.open(DATA / "motorcycle_left.png") as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    y, x = offset
    return np.ascontiguousarray(rgb[y : y + size, x : x + size])


def disc_mask(size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy + 0.5 - centre[0]) ** 2 + (xx + 0.5 - centre[1]) ** 2 <= radius**2


def ring(mask: np.ndarray, inner: float, outer: float) -> np.ndarray:
    """Pixels whose distance to ``mask`` (outside it) lies in (inner, outer]."""
    import cv2

    dist = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
    return (dist > inner) & (dist <= outer)


def inner_band(mask: np.ndarray, depth: float) -> np.ndarray:
    """Pixels of ``mask`` within ``depth`` of its edge."""
    import cv2

    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    return mask & (dist <= depth)


def motorcycle(scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The motorcycle photo (uint8) and its ground-truth disparity, normalised (no ground truth = far)."""
    import cv2

    from estimators.depth import normalize_disparity

    with Image.open(DATA / "motorcycle_left.png") as img:
        rgb = np.asarray(img.convert("RGB"))
    with np.load(DATA / "motorcycle_disp.npz") as archive:
        disparity = normalize_disparity(archive["arr_0"])
    if scale != 1.0:
        size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        disparity = cv2.resize(disparity, size, interpolation=cv2.INTER_NEAREST)
    return rgb, disparity


# ----------------------------------------------------------------------------- the reference itself


def test_reference_kernel_is_the_exact_disc_area():
    # Unit circle: the centre pixel is covered; the right neighbour [0.5, 1.5] x [-0.5, 0.5] holds
    # (sqrt(3)/2 - 1/2) x 1 plus the cap beyond x = sqrt(3)/2, 2 * integral sqrt(1 - x^2) = pi/6 - sqrt(3)/4;
    # the two corners share the rest of the segment beyond x = 1/2, acos(1/2) - sqrt(3)/4.
    kernel = disc_area_kernel(1.0) * math.pi
    edge = math.sqrt(3) / 4 - 0.5 + math.pi / 6
    corner = (math.acos(0.5) - math.sqrt(3) / 4 - edge) / 2
    assert kernel[1, 1] == pytest.approx(1.0, abs=1e-4)
    assert kernel[1, 2] == pytest.approx(edge, abs=1e-4)
    assert kernel[0, 0] == pytest.approx(corner, abs=1e-4)
    assert disc_area_kernel(0.5).shape == (1, 1)


def test_reference_scatter_of_one_point_is_its_disc():
    image = np.zeros((21, 21, 3), np.float32)
    image[10, 10] = 1.0
    disparity = np.full((21, 21), 1.0, np.float32)
    level = 4.0 * 512 / 21  # radius 4 px
    out = scatter_reference(image, disparity, level, 0.0) ** GAMMA
    expected = disc_area_kernel(4.0)
    np.testing.assert_allclose(out[6:15, 6:15, 0], expected, atol=1e-9)


# ----------------------------------------------------------------------------- planes


@pytest.mark.parametrize(
    "level, plane, focus",
    [(6, 0.5, 0.0), (20, 0.3, 0.7), (30, 0.6, 0.0), (30, 0.0, 0.6), (30, 1.0, 0.0), (30, 0.0, 1.0)],
)
def test_fronto_parallel_plane_is_a_disc_convolution(level, plane, focus):
    image = photo(192)
    radius = level * abs(plane - focus) * 192 / 512  # 1.1 (full resolution) to 11.3 px (grid / 4)
    out = render(image, np.full((192, 192), plane, np.float32), level, focus)
    expected = convolve_linear(image, disc_area_kernel(radius))
    margin = math.ceil(radius) + 2
    inner = (slice(margin, -margin), slice(margin, -margin))
    assert psnr(out[inner], expected[inner]) >= 38.0


@pytest.mark.parametrize("level, blades", [(12, 5), (30, 5), (30, 6)])
def test_bladed_plane_is_a_convolution_with_its_polygon(level, blades):
    image = photo(160)
    radius = level * 160 / 512
    out = render(image, np.zeros((160, 160), np.float32), level, 1.0, aperture=blades)
    expected = convolve_linear(image, aperture_kernel(radius, blades))
    margin = math.ceil(radius) + 2
    inner = (slice(margin, -margin), slice(margin, -margin))
    assert psnr(out[inner], expected[inner]) >= 38.0


@pytest.mark.parametrize("blades", ["disc", 5])
def test_point_spread_is_the_aperture(blades):
    # A point light renders as the aperture kernel itself, the right way up (a true convolution).
    image = np.zeros((96, 96, 3), np.float32)
    image[48, 48] = 1.0
    level = 3.5 * 512 / 96  # radius 3.5 px: blurred at full resolution
    out = render(image, np.zeros((96, 96), np.float32), level, 1.0, aperture=blades).astype(np.float64) ** GAMMA
    kernel = aperture_kernel(3.5, blades)
    half = kernel.shape[0] // 2
    np.testing.assert_allclose(out[48 - half : 49 + half, 48 - half : 49 + half, 0], kernel, atol=1e-6)
    assert out[..., 0].sum() == pytest.approx(1.0, rel=1e-5)
    # On a reduced grid (radius 9.4 px, grid / 4) the light is conserved up to the clipped undershoot
    # of the bicubic upsampling (a few % for an isolated point) and centred on the point's grid cell
    # (fine pixels 48-51), at most (4 - 1) / 2 px away.
    wide = render(image, np.zeros((96, 96), np.float32), 50, 1.0, aperture=blades).astype(np.float64) ** GAMMA
    light = wide[..., 0]
    assert light.sum() == pytest.approx(1.0, rel=0.05)
    yy, xx = np.mgrid[:96, :96]
    centre = ((light * yy).sum() / light.sum(), (light * xx).sum() / light.sum())
    assert centre == pytest.approx((49.5, 49.5), abs=0.05)


# ----------------------------------------------------------------------------- occlusion


SCENE = 128
SUBJECT = disc_mask(SCENE, (60.0, 66.0), 30.0)
SCENE_DISPARITY = np.where(SUBJECT, 0.95, 0.05).astype(np.float32)


@pytest.mark.parametrize("level", [12, 30])
def test_sharp_subject_over_blurred_background(level):
    image = photo(SCENE)
    out = render(image, SCENE_DISPARITY, level, 0.95)
    # The in-focus subject, edge pixels included, is unchanged: no blurred background over it.
    assert psnr(out[SUBJECT], image[SUBJECT]) >= 45.0
    assert psnr(out, scatter_reference(image, SCENE_DISPARITY, level, 0.95)) >= 38.0


@pytest.mark.parametrize("level", [12, 30])
def test_blurred_foreground_spreads_over_sharp_background(level):
    image = photo(SCENE)
    out = render(image, SCENE_DISPARITY, level, 0.05)
    expected = scatter_reference(image, SCENE_DISPARITY, level, 0.05)
    radius = level * 0.9 * SCENE / 512
    # Inside the subject within one radius of its edge the hidden background is unknown: the
    # renderer extends it from the surroundings, the reference leaves it out; compare elsewhere.
    known = ~inner_band(SUBJECT, radius + 1)
    assert psnr(out[known], expected[known]) >= 38.0
    spill = ring(SUBJECT, 0, radius / 2)
    assert np.abs(out[spill] - image[spill]).mean() > 0.02  # the subject's blur covers the background
    far = ~SUBJECT & ~ring(SUBJECT, 0, radius + 1)
    assert psnr(out[far], image[far]) >= 45.0  # the sharp background elsewhere is untouched


def test_blurred_edge_fades_smoothly_without_halo():
    inside_colour, outside_colour = np.array([0.9, 0.3, 0.2]), np.array([0.1, 0.3, 0.8])
    image = np.where(SUBJECT[..., None], inside_colour, outside_colour).astype(np.float32)
    out = render(image, SCENE_DISPARITY, 30, 0.05).astype(np.float64) ** GAMMA
    a, b = inside_colour**GAMMA, outside_colour**GAMMA
    t = (out[..., 0] - b[0]) / (a[0] - b[0])  # 1 = subject colour, 0 = background colour
    profile = t[60, 66:]  # from the subject's centre outwards
    assert profile.min() >= -1e-4 and profile.max() <= 1 + 1e-4  # no dark or bright seam
    assert np.all(np.diff(profile) <= 1e-4)  # monotone fade
    assert np.abs(np.diff(profile)).max() < 0.2  # no half-sharp edge inside the blur


def test_constant_colour_stays_constant_whatever_the_depth():
    rng = np.random.default_rng(3)
    blocks = rng.uniform(0, 1, size=(8, 8)).astype(np.float32)
    disparity = np.kron(blocks, np.ones((16, 16), np.float32))
    colour = np.array([0.35, 0.6, 0.8], np.float32)
    for aperture in ("disc", 6):
        out = render(np.broadcast_to(colour, (128, 128, 3)).copy(), disparity, 30, 0.5, aperture=aperture)
        np.testing.assert_allclose(out, np.broadcast_to(colour, out.shape), atol=2e-4)
    grey = np.full((128, 128, 3), 140, np.uint8)
    np.testing.assert_array_equal(render(grey, disparity, 30, 0.5), grey)


# ----------------------------------------------------------------------------- real scene


def test_background_sharpness_falls_monotonically_with_k():
    from estimators.image_io import to_gray
    from estimators.sharpness import laplacian_variance

    rgb, disparity = motorcycle()
    focus = float(np.percentile(disparity, 90))
    background = disparity < focus - 0.5  # radius >= 0.49 K px
    assert background.mean() > 0.2
    levels = [0, 1, 2, 3, 5, 7.5, 10, 15, 20, 25, 30]
    sharpness = [laplacian_variance(to_gray(render(rgb, disparity, k, focus)), background) for k in levels]
    assert all(later < earlier for earlier, later in zip(sharpness, sharpness[1:])), sharpness
    assert sharpness[-1] < 0.1 * sharpness[0]


# ----------------------------------------------------------------------------- highlights


def test_highlight_boost_brightens_out_of_focus_highlights_only():
    image = np.full((96, 96, 3), 0.1, np.float32)
    image[30, 30] = 1.0  # a highlight in the blurred background
    image[70, 70] = 1.0  # a highlight on the in-focus subject
    disparity = np.zeros((96, 96), np.float32)
    disparity[60:80, 60:80] = 1.0
    plain = render(image, disparity, 30, 1.0).astype(np.float64) ** GAMMA
    boosted = render(image, disparity, 30, 1.0, highlight_boost=2.0).astype(np.float64) ** GAMMA
    floor = 0.1**GAMMA
    window = (slice(18, 43), slice(18, 43))
    energy_plain = (plain[window] - floor).sum()
    energy_boosted = (boosted[window] - floor).sum()
    assert energy_boosted == pytest.approx(3.0 * energy_plain, rel=0.02)  # 1 + boost times the light
    np.testing.assert_array_equal(boosted[60:80, 60:80], plain[60:80, 60:80])


# ----------------------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    rgb, disparity = motorcycle(0.5)
    cpu = render(rgb.astype(np.float32) / 255, disparity, 25, 0.8, device="cpu")
    gpu = render(rgb.astype(np.float32) / 255, disparity, 25, 0.8, device="cuda")
    assert psnr(cpu, gpu) >= 60.0
