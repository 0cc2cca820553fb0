"""Procedural demo scenes: exact depth and occlusion, masks, captions, texture, variety, sidecar files and CLI."""
import argparse
import time

import numpy as np
import pytest
from PIL import Image

from dataset_tools import cli as dataset_cli
from dataset_tools.demo_scenes import (
    BACKGROUND_DEPTH_M,
    SUBJECT_DEPTH_M,
    caption_sidecar_path,
    generate_scene,
    scene_seed,
    write_demo_data,
)
from estimators.cli_util import UserError
from estimators.sidecars import load_depth_sidecar
from estimators.sharpness import laplacian_variance

SEEDS = range(40)


@pytest.fixture(scope="module")
def scenes():
    """The 40 scenes most tests look at, generated once (about 1 s)."""
    return [generate_scene(s) for s in SEEDS]


def _gray(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma, computed here rather than through the code under test."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _outer_ring(mask: np.ndarray) -> np.ndarray:
    """Pixels outside ``mask`` that touch it (8-neighbourhood), by explicit shifts."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    grown = np.zeros_like(mask)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            grown |= padded[dy : dy + h, dx : dx + w]
    return grown & ~mask


def _second_object(scene) -> np.ndarray:
    second = scene.meta["second_object"]
    if not second:
        return np.zeros(scene.mask.shape, bool)
    return scene.depth_m == np.float32(second["depth_m"])


def test_shapes_and_dtypes_follow_the_requested_size():
    scene = generate_scene(3, width=96, height=64)
    assert scene.image.shape == (64, 96, 3) and scene.image.dtype == np.uint8
    assert scene.depth_m.shape == (64, 96) and scene.depth_m.dtype == np.float32
    assert scene.mask.shape == (64, 96) and scene.mask.dtype == bool and scene.mask.any()
    assert isinstance(scene.caption, str) and scene.caption
    assert scene.meta["seed"] == 3 and (scene.meta["width"], scene.meta["height"]) == (96, 64)


def test_same_seed_same_bytes_different_seed_different_scene():
    a, b, c = generate_scene(11), generate_scene(11), generate_scene(12)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.depth_m.tobytes() == b.depth_m.tobytes()
    assert np.array_equal(a.mask, b.mask) and a.caption == b.caption and a.meta == b.meta
    assert a.image.tobytes() != c.image.tobytes()
    assert a.depth_m.tobytes() != c.depth_m.tobytes()


def test_depth_is_metric_positive_and_in_the_promised_ranges(scenes):
    for scene in scenes:
        depth, meta = scene.depth_m, scene.meta
        assert np.isfinite(depth).all() and (depth > 0).all()
        assert SUBJECT_DEPTH_M[0] <= meta["subject_depth_m"] <= SUBJECT_DEPTH_M[1]
        rest = ~scene.mask & ~_second_object(scene)
        if meta["second_object"]:  # a mid-ground object between the subject and everything behind
            assert meta["subject_depth_m"] < meta["second_object"]["depth_m"] < depth[rest].min()
        assert depth[rest].min() >= BACKGROUND_DEPTH_M[0] and depth[rest].max() <= BACKGROUND_DEPTH_M[1]


def test_mask_is_exactly_the_pixels_at_the_subject_depth(scenes):
    for scene in scenes:
        assert np.array_equal(scene.mask, scene.depth_m == np.float32(scene.meta["subject_depth_m"]))


def test_subject_is_nearer_than_everything_around_its_outline(scenes):
    for scene in scenes:
        ring = _outer_ring(scene.mask)
        assert ring.any()
        assert (scene.depth_m[ring] > scene.meta["subject_depth_m"]).all()


def test_floor_depth_follows_the_ground_plane_formula(scenes):
    """Below the horizon, uncovered floor pixels have z = z_near (H - y_h) / (y + 0.5 - y_h) (level camera)."""
    floors = [s for s in scenes if s.meta["floor"]]
    assert len(floors) >= 5
    for scene in floors:
        h = scene.meta["height"]
        y_h, z_near = scene.meta["horizon_y"], scene.meta["floor_near_m"]
        rows = np.arange(h, dtype=np.float64)[:, None]
        with np.errstate(divide="ignore"):
            expected = np.where(rows > y_h, z_near * (h - y_h) / (rows + 0.5 - y_h), np.inf)
        floor = (scene.depth_m < scene.meta["background_depth_m"]) & ~scene.mask & ~_second_object(scene)
        floor &= np.broadcast_to(rows > y_h, floor.shape)
        assert floor[-1].sum() > 0.3 * scene.meta["width"]  # the bottom row is mostly floor
        np.testing.assert_allclose(scene.depth_m[floor], np.broadcast_to(expected, floor.shape)[floor], rtol=1e-5)
        # and every uncovered bottom-row pixel sits at the near end, a hand-worked number
        assert scene.depth_m[-1][floor[-1]] == pytest.approx(z_near * (h - y_h) / (h - 0.5 - y_h), rel=1e-5)


def test_caption_names_the_subject_colour_and_kind(scenes):
    for scene in scenes:
        words = scene.caption.replace(",", "").split()
        assert scene.meta["subject_colour"] in words[:3], scene.caption
        assert scene.meta["subject"] in words[:4], scene.caption
        assert words[0] in ("a", "an")
        if scene.meta["second_object"]:
            assert scene.meta["second_object"]["colour"] in words and "further back" in scene.caption


def test_backgrounds_are_strongly_textured(scenes):
    """Variance of the Laplacian over the background, far above that of a smooth gradient.

    A 0-255 ramp across 512 px, rounded to 8 bits, scores about 1 (rounding noise only); we ask for
    100 times that. Sharp photos of textured surfaces score in the hundreds to thousands.
    """
    ramp = np.round(np.tile(np.linspace(0, 255, 512), (512, 1)))
    smooth = laplacian_variance(ramp)
    assert smooth < 2.0
    threshold = 100 * max(smooth, 1.0)
    for scene in scenes:
        background = ~(_outer_ring(scene.mask) | scene.mask)
        score = laplacian_variance(_gray(scene.image.astype(np.float32)), background)
        assert score > threshold, (scene.caption, score)


def test_demo_data_scenes_read_as_all_in_focus():
    """The scenes are pinhole renders (K = 0). The first 40 that ``bokeh demo-data`` writes, with their exact
    depth and mask, must read K <= 1 to the image-only estimator, or the build gives them no renders and
    labels them blurred."""
    from estimators.bokeh_level import estimate_bokeh_level
    from estimators.depth import DepthMap, disparity_from_depth
    from estimators.exif import ExifInfo

    kinds = set()
    for index in range(40):
        scene = generate_scene(scene_seed(0, index))
        depth = DepthMap(disparity_from_depth(scene.depth_m), depth_m=scene.depth_m)
        rec = estimate_bokeh_level(scene.image, ExifInfo(), depth, scene.mask)
        assert rec.bokeh_level is not None and rec.bokeh_level <= 1.0, (index, scene.caption, rec.bokeh_level)
        kinds.update(kind for kind in ("hedge", "striped wall", "trees") if kind in scene.caption)
    assert kinds == {"hedge", "striped wall", "trees"}


def test_subjects_are_shaded_not_flat(scenes):
    """Brightness inside the subject spreads (5th to 95th percentile) by over 15 % of its mean; a flat cut-out: 0."""
    for scene in scenes:
        inside = _gray(scene.image.astype(np.float32))[scene.mask]
        low, high = np.percentile(inside, [5, 95])
        assert (high - low) / inside.mean() > 0.15, scene.caption


def test_forty_seeds_give_varied_scenes(scenes):
    kinds = {s.meta["subject"] for s in scenes}
    backgrounds = {s.meta["background"] for s in scenes}
    assert len(kinds) >= 5, kinds
    assert len(backgrounds) >= 4, backgrounds
    assert any(s.meta["floor"] for s in scenes) and any(not s.meta["floor"] for s in scenes)
    assert any(s.meta["second_object"] for s in scenes)
    assert len({s.meta["subject_colour"] for s in scenes}) >= 5
    assert len({s.caption for s in scenes}) == len(scenes)


def test_bad_arguments_raise_one_line_errors():
    with pytest.raises(ValueError, match="seed"):
        generate_scene(-1)
    with pytest.raises(ValueError, match="width"):
        generate_scene(0, width=8)
    with pytest.raises(ValueError, match="count"):
        write_demo_data("/nonexistent-never-created", 0)


def test_scene_seeds_are_distinct_across_runs_and_indices():
    seeds = {scene_seed(run, i) for run in range(3) for i in range(50)}
    assert len(seeds) == 150
    assert scene_seed(4, 7) == scene_seed(4, 7)


def test_written_sidecars_load_through_the_estimators_and_match(tmp_path):
    from estimators.sidecars import load_mask_sidecar

    paths = write_demo_data(tmp_path / "demo", 3, seed=5, width=80, height=64, progress=False)
    assert [p.name for p in paths] == ["scene_00000.png", "scene_00001.png", "scene_00002.png"]
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == sorted(
        f"scene_0000{i}{ext}" for i in range(3) for ext in (".png", ".depth.npy", ".mask.png", ".txt")
    )
    for index, photo in enumerate(paths):
        scene = generate_scene(scene_seed(5, index), 80, 64)
        with Image.open(photo) as img:
            assert img.mode == "RGB" and np.array_equal(np.asarray(img), scene.image)  # lossless
        depth = load_depth_sidecar(photo, (80, 64))
        assert depth.is_metric and depth.source == "sidecar-depth"
        np.testing.assert_array_equal(depth.depth_m, scene.depth_m)
        with Image.open(photo.with_name(photo.stem + ".mask.png")) as img:
            raw = np.asarray(img)
        assert raw.dtype == np.uint8 and set(np.unique(raw)) <= {0, 255}
        assert np.array_equal(raw == 255, scene.mask)
        assert np.array_equal(load_mask_sidecar(photo, (80, 64)).mask, scene.mask)
        assert caption_sidecar_path(photo).read_text(encoding="utf-8").strip() == scene.caption


def test_a_512_scene_takes_under_50_ms():
    """Median over 8 scenes of the best of 3 runs each (best-of ignores other processes' bursts)."""
    generate_scene(0)  # warm-up (first calls into numpy/cv2)
    times = sorted(min(_timed(seed) for _ in range(3)) for seed in range(8))
    median = (times[3] + times[4]) / 2
    assert median < 0.05, f"median {median * 1000:.1f} ms, slowest {times[-1] * 1000:.1f} ms"


def _timed(seed: int) -> float:
    start = time.perf_counter()
    generate_scene(seed)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bokeh")
    dataset_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_writes_scenes_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "scenes"
    args = _parser().parse_args(["demo-data", "-o", str(out), "--count", "2", "--seed", "7", "--size", "64x48"])
    assert args.func(args) == 0
    assert "wrote 2 demo scenes (64x48, seed 7)" in capsys.readouterr().out
    with Image.open(out / "scene_00001.png") as img:
        assert img.size == (64, 48)
    expected = generate_scene(scene_seed(7, 1), 64, 48).caption
    assert (out / "scene_00001.txt").read_text(encoding="utf-8").strip() == expected


def test_cli_refuses_a_non_empty_directory_unless_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    args = _parser().parse_args(["demo-data", "-o", str(tmp_path), "--count", "1", "--size", "48"])
    with pytest.raises(UserError, match="not empty.*--overwrite"):
        args.func(args)
    args = _parser().parse_args(["demo-data", "-o", str(tmp_path), "--count", "1", "--size", "48", "--overwrite"])
    assert args.func(args) == 0
    assert (tmp_path / "scene_00000.depth.npy").is_file() and (tmp_path / "notes.txt").read_text() == "keep me"


def test_cli_defaults_help_and_bad_values(capsys):
    args = _parser().parse_args(["demo-data", "-o", "x"])
    assert (args.count, args.seed, args.size, args.overwrite) == (16, 0, (512, 512), False)
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["demo-data"]
    for action in sub._actions:
        assert action.help, action.dest
    for bad in (["--size", "10"], ["--size", "64x"], ["--count", "0"], ["--seed", "-1"]):
        with pytest.raises(SystemExit) as exc:
            _parser().parse_args(["demo-data", "-o", "x", *bad])
        assert exc.value.code == 2
    assert "W[xH]" in capsys.readouterr().err
