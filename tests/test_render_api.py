"""synth_blur's public surface: types in and out, K = 0, input checks, aperture kernels, groups, contact sheets, CLI."""
from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
from PIL import Image

from estimators.cli_util import UserError
from estimators.depth import focus_disparity_from_mask
from synth_blur import cli as render_cli
from synth_blur import focus_from_mask, make_group, render
from synth_blur.aperture import aperture_area, aperture_coverage, aperture_kernel
from synth_blur.contact_sheet import contact_sheet


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scene(height: int = 48, width: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random uint8 image with a near square on a receding ground."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    disparity = np.tile(np.linspace(0.0, 0.6, height, dtype=np.float32)[:, None], (1, width))
    disparity[10:30, 20:40] = 0.9
    return image, disparity


# ----------------------------------------------------------------------------- types, K = 0, checks


@pytest.mark.parametrize("as_torch", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_output_has_the_input_type_and_dtype(as_torch, dtype):
    image, disparity = scene()
    data = image if dtype == "uint8" else image.astype(np.float32) / 255
    if as_torch:
        data, disparity = torch.from_numpy(data), torch.from_numpy(disparity)
    for level in (0, 12):
        out = render(data, disparity, level, 0.9)
        assert type(out) is type(data) and out.dtype == data.dtype and tuple(out.shape) == tuple(data.shape)
        assert out is not data
    zero = render(data, disparity, 0, 0.9)
    assert (torch.equal(zero, data) if as_torch else np.array_equal(zero, data))  # bit-exact copy


def test_uint8_and_float_inputs_agree():
    image, disparity = scene()
    as_uint8 = render(image, disparity, 20, 0.9).astype(np.float64) / 255
    as_float = render(image.astype(np.float32) / 255, disparity, 20, 0.9)
    assert np.abs(as_uint8 - as_float).max() <= 0.5 / 255 + 1e-6


def test_render_is_deterministic():
    image, disparity = scene()
    first = render(image, disparity, 25, 0.3, aperture=7, highlight_boost=1.0)
    assert np.array_equal(first, render(image, disparity, 25, 0.3, aperture=7, highlight_boost=1.0))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(image=np.zeros((8, 8), np.uint8)), "HxWx3"),
        (dict(image=np.zeros((8, 8, 3), np.int32)), "uint8 or float"),
        (dict(image=np.full((8, 8, 3), 1.5, np.float32)), r"\[0, 1\]"),
        (dict(disparity=np.zeros((8, 9), np.float32)), "does not match"),
        (dict(disparity=np.full((8, 8), np.nan, np.float32)), "finite"),
        (dict(disparity=np.full((8, 8), 2.0, np.float32)), r"\[0, 1\]"),
        (dict(bokeh_level=-1), "bokeh_level"),
        (dict(bokeh_level=float("inf")), "bokeh_level"),
        (dict(focus_disparity=1.5), "focus_disparity"),
        (dict(aperture=2), "blades"),
        (dict(aperture="hexagon"), "blades"),
        (dict(gamma=0), "gamma"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(change, message):
    args = dict(image=np.zeros((8, 8, 3), np.uint8), disparity=np.zeros((8, 8), np.float32), bokeh_level=5.0,
                focus_disparity=0.5)
    args.update(change)
    options = {k: args.pop(k) for k in ("aperture", "gamma") if k in args}
    with pytest.raises(ValueError, match=message):
        render(args["image"], args["disparity"], args["bokeh_level"], args["focus_disparity"], **options)


# ----------------------------------------------------------------------------- aperture kernels


@pytest.mark.parametrize("blades", [0, 3, 5, 6, 8])
@pytest.mark.parametrize("radius", [4.0, 10.5])
def test_aperture_kernel_has_the_shape_area(blades, radius):
    aperture = "disc" if blades == 0 else blades
    coverage = aperture_coverage(radius, aperture)
    expected_area = math.pi * radius**2 if blades == 0 else 0.5 * blades * radius**2 * math.sin(2 * math.pi / blades)
    assert aperture_area(radius, aperture) == pytest.approx(expected_area, rel=1e-12)
    assert coverage.sum() == pytest.approx(expected_area, rel=0.01)
    assert aperture_kernel(radius, aperture).sum() == pytest.approx(1.0, rel=1e-12)
    half = coverage.shape[0] // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    distance = np.hypot(yy, xx)
    apothem = radius if blades == 0 else radius * math.cos(math.pi / blades)
    assert np.all(coverage[distance + math.sqrt(0.5) < apothem] == 1.0)  # pixels wholly inside
    assert np.all(coverage[distance - math.sqrt(0.5) > radius] == 0.0)  # pixels wholly outside


@pytest.mark.parametrize("blades", [3, 5, 7])
def test_odd_blade_polygon_has_a_vertex_up(blades):
    radius = 10.0
    coverage = aperture_coverage(radius, blades)
    half = coverage.shape[0] // 2
    reach = 0.5 * (radius + radius * math.cos(math.pi / blades))  # between apothem and circumradius
    up, down = coverage[half - round(reach), half], coverage[half + round(reach), half]
    assert up > 0.2 and down == 0.0  # a vertex points up (-y), a flat edge faces down


def test_a_shape_inside_one_pixel_is_the_identity():
    assert np.array_equal(aperture_kernel(0.5), np.ones((1, 1)))
    assert np.array_equal(aperture_kernel(0.0, 6), np.ones((1, 1)))


# ----------------------------------------------------------------------------- groups


def test_focus_from_mask_is_the_shared_estimator():
    assert focus_from_mask is focus_disparity_from_mask


def test_make_group_is_deterministic_for_a_seed():
    image, disparity = scene()
    mask = disparity > 0.8
    first, again = make_group(image, disparity, mask, seed=7), make_group(image, disparity, mask, seed=7)
    levels = [r.bokeh_level for r in first.renders]
    assert levels == [r.bokeh_level for r in again.renders] and len(levels) == 4
    assert all(1.0 <= k <= 30.0 for k in levels) and levels == sorted(levels)
    assert first.group_id == again.group_id
    for a, b in zip(first.renders, again.renders):
        assert np.array_equal(a.image, b.image)
    other = make_group(image, disparity, mask, seed=8)
    assert [r.bokeh_level for r in other.renders] != levels and other.group_id != first.group_id


def test_make_group_shares_its_id_and_records_parameters():
    image, disparity = scene()
    mask = disparity > 0.8
    group = make_group(image, disparity, mask, levels=[3, 12.5, 30], seed=1, aperture=6, highlight_boost=0.5)
    focus = focus_disparity_from_mask(disparity, mask)
    assert group.focus_disparity == pytest.approx(focus)
    assert [m.bokeh_level for m in group.members] == [0.0, 3.0, 12.5, 30.0]
    assert np.array_equal(group.pivot.image, image) and group.pivot.params["pivot"] is True
    for member in group.members:
        params = member.params
        assert params["group_id"] == group.group_id
        assert params["bokeh_level"] == member.bokeh_level
        assert params["focus_disparity"] == pytest.approx(focus)
        assert (params["aperture"], params["highlight_boost"], params["gamma"], params["seed"]) == (6, 0.5, 2.2, 1)
    for member in group.renders:  # each render is the renderer's output for its recorded parameters
        expected = render(image, disparity, member.bokeh_level, focus, aperture=6, highlight_boost=0.5)
        assert np.array_equal(member.image, expected)


def test_make_group_needs_a_focus():
    image, disparity = scene()
    with pytest.raises(ValueError, match="mask"):
        make_group(image, disparity, None)
    with pytest.raises(ValueError, match="does not match"):
        make_group(image, disparity, np.ones((3, 3), bool))
    group = make_group(image, disparity, None, levels=[5], focus_disparity=0.25)
    assert group.focus_disparity == 0.25 and group.renders[0].params["levels_drawn"] is False


# ----------------------------------------------------------------------------- contact sheet


def test_contact_sheet_lays_images_side_by_side_with_labels():
    images = [np.full((40, 60, 3), v, np.uint8) for v in (0, 128, 255)]
    sheet = contact_sheet(images, ["K = 0", "K = 5", "K = 30"], height=80, gap=8)
    assert sheet.height > 80 and sheet.width == 3 * 120 + 4 * 8
    pixels = np.asarray(sheet)
    assert (pixels[8:88, 8:128] == 0).all()  # first image, scaled to 80 px high
    label_strip = pixels[88:, 8:128]
    assert (label_strip < 128).any()  # its label is drawn in dark ink below it
    with pytest.raises(ValueError):
        contact_sheet(images, ["one label"])


# ----------------------------------------------------------------------------- CLI


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="bokeh")
    render_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["render", *argv])
    return args.func(args)


@pytest.fixture()
def photo(tmp_path):
    """A 96x64 photo with a disparity sidecar (near square, far background)."""
    image, disparity = scene(64, 96, seed=3)
    path = tmp_path / "shot.png"
    Image.fromarray(image).save(path)
    Image.fromarray((disparity * 255).round().astype(np.uint8)).save(tmp_path / "shot.disparity.png")
    return path, image


def test_cli_renders_one_level(photo, tmp_path, capsys):
    path, image = photo
    out = tmp_path / "out" / "k20.png"
    assert run_cli(str(path), "--bokeh", "20", "--depth", "sidecar", "--focus-disparity", "0.9", "--aperture", "6",
                   "-o", str(out)) == 0
    rendered = np.asarray(Image.open(out))
    assert rendered.shape == image.shape and not np.array_equal(rendered, image)
    assert "K=20" in capsys.readouterr().out


def test_cli_sweep_writes_each_level_and_a_contact_sheet(photo, tmp_path):
    path, image = photo
    folder = tmp_path / "sweep"
    assert run_cli(str(path), "--sweep", "0,5,30", "--depth", "sidecar", "--focus-point", "30,20", "-o", str(folder)) == 0
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["shot_K0.png", "shot_K30.png", "shot_K5.png", "shot_sweep.png"]
    assert np.array_equal(np.asarray(Image.open(folder / "shot_K0.png")), image)
    sheet = Image.open(folder / "shot_sweep.png")
    assert sheet.width > 3 * image.shape[1] and sheet.height > image.shape[0]


def test_cli_reads_a_disparity_file_and_finds_the_subject(photo, tmp_path):
    path, image = photo
    disparity = np.asarray(Image.open(path.with_name("shot.disparity.png")), dtype=np.float32) / 255
    path.with_name("shot.disparity.png").unlink()
    np.save(tmp_path / "d.npy", disparity * 40.0)  # any range: it is min-max normalised
    out = tmp_path / "default_focus.png"
    assert run_cli(str(path), "--bokeh", "15", "--disparity", str(tmp_path / "d.npy"), "-o", str(out)) == 0
    assert np.asarray(Image.open(out)).shape == image.shape


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bokeh", "5", "--depth", "sidecar", "--focus-disparity", "0.5"], "no depth sidecar"),
        (["--bokeh", "5", "--disparity", "missing.npy", "--focus-disparity", "0.5"], "cannot read disparity"),
        (["--bokeh", "5", "--depth", "sidecar", "--focus-point", "500,5"], "outside"),
    ],
)
def test_cli_errors_are_one_line_user_errors(tmp_path, argv, message):
    image, _ = scene(32, 32)
    Image.fromarray(image).save(tmp_path / "bare.png")
    if "--focus-point" in argv:
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "bare.disparity.png")
    with pytest.raises(UserError, match=message):
        run_cli(str(tmp_path / "bare.png"), *argv, "-o", str(tmp_path / "o.png"))


def test_cli_refuses_a_disparity_file_of_another_shape(tmp_path):
    image, _ = scene(32, 32)
    Image.fromarray(image).save(tmp_path / "bare.png")
    np.save(tmp_path / "strip.npy", np.linspace(0, 1, 300 * 17).reshape(300, 17))
    with pytest.raises(UserError, match="strip.npy is 17x300 but the photo is 32x32: another aspect ratio"):
        run_cli(str(tmp_path / "bare.png"), "--bokeh", "5", "--disparity", str(tmp_path / "strip.npy"),
                "--focus-disparity", "0.5", "-o", str(tmp_path / "o.png"))


def test_cli_depth_anything_from_a_local_checkpoint(photo, tmp_path, relative_dir, capsys):
    path, image = photo
    out = tmp_path / "da.png"
    assert run_cli(str(path), "--bokeh", "10", "--depth", "depth-anything", "--depth-model", str(relative_dir),
                   "--focus-disparity", "0.5", "--device", "cpu", "-o", str(out)) == 0
    assert np.asarray(Image.open(out)).shape == image.shape
    assert "depth-anything" in capsys.readouterr().out
