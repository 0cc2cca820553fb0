"""The `bokeh` commands agree: one list syntax, one default per setting (CLI = Python API), one set of depth flags
with one sidecar policy, and a missing input said in words."""
import argparse
import dataclasses
import inspect
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from build_helpers import demo_scenes
from conftest import DEMO_PHOTOS, TEST_PHOTOS
from bokeh_cli import build_parser, main
from estimators.backends import DEFAULT_DEPTH_BACKEND, DEPTH_BACKENDS
from estimators.cli_util import ListAction

#: The least each command needs to parse (its required arguments), so that every other flag keeps its default.
MINIMAL = {
    "estimate": ["p.jpg"],
    "render": ["p.jpg", "--bokeh", "5", "-o", "o.png"],
    "build": ["in", "-o", "out"],
    "sample": ["--prompt", "x", "--bokeh", "5", "-o", "o"],
    "eval": ["--prompts", "p.txt", "-o", "o"],
    "edit": ["p.jpg", "--bokeh", "5", "-o", "o"],
}
#: List flags that take file paths (a path may hold a comma): they split on spaces only.
PATH_LISTS = {"--reference-photos"}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def option(command: str, flag: str) -> argparse.Action:
    return next(a for a in subparsers()[command]._actions if flag in a.option_strings)


def parse(command: str, *argv: str) -> argparse.Namespace:
    return build_parser().parse_args([command, *MINIMAL[command], *argv])


def parse_error(capsys, command: str, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        parse(command, *argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- 1. one list syntax
LIST_FLAGS = [("sample", "--bokeh"), ("render", "--sweep"), ("eval", "--levels"), ("eval", "--seeds"),
              ("build", "--levels"), ("edit", "--bokeh")]


def test_every_list_of_levels_or_seeds_uses_the_one_list_flag():
    found = {(name, flag) for name, p in subparsers().items() for a in p._actions if isinstance(a, ListAction)
             for flag in a.option_strings if flag.startswith("--")}
    assert found == set(LIST_FLAGS)
    others = {flag for p in subparsers().values() for a in p._actions if a.option_strings and a.nargs in ("+", "*")
              and not isinstance(a, ListAction) for flag in a.option_strings}
    assert others <= PATH_LISTS


@pytest.mark.parametrize("command,flag", LIST_FLAGS)
@pytest.mark.parametrize("values", [["5", "10", "20"], ["5,10,20"], ["5,", "10", "20"], ["5", ",10,20"],
                                    ["5, 10", "20"], ["5 , 10 ,20"]])
def test_spaces_commas_and_mixes_give_the_same_list(command, flag, values):
    if command == "render":  # --sweep replaces the required --bokeh
        args = build_parser().parse_args(["render", "p.jpg", "-o", "o", flag, *values])
    else:
        args = parse(command, flag, *values)
    assert getattr(args, option(command, flag).dest) == [5, 10, 20]


@pytest.mark.parametrize("command,flag", LIST_FLAGS)
def test_bad_list_items_are_one_line_naming_the_flag_and_the_item(capsys, command, flag):
    argv = ["render", "p.jpg", "-o", "o"] if command == "render" else [command, *MINIMAL[command]]
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, flag, "5", "1x"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}: not a" in err and "'1x'" in err
    assert "put the other arguments before it" in err  # "1x" came after a good value: a positional, perhaps
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, flag, ",", " ,"])
    assert f"argument {flag}: give at least one value, e.g. " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, flag, "5,,10"])
    assert f"argument {flag}: an empty value between commas in '5,,10'" in capsys.readouterr().err


@pytest.mark.parametrize("command,flag,bad,message", [
    ("sample", "--bokeh", "31", "bokeh level K must be in 0..30, got 31"),
    ("eval", "--levels", "-6", "must be a finite number >= 0, got -6"),
    ("eval", "--seeds", "1.5", "not an integer: '1.5'"),
    ("build", "--levels", "0", "a render level must be in (0, 30], got 0"),
])
def test_range_errors_name_the_flag(capsys, command, flag, bad, message):
    assert parse_error(capsys, command, flag, "5", bad).endswith(f"argument {flag}: {message}")


@pytest.mark.parametrize("command,flag", LIST_FLAGS)
def test_help_shows_one_list_form(command, flag):
    text = subparsers()[command].format_help()
    metavar = option(command, flag).metavar
    assert f"{flag} {metavar} [{metavar} ...]" in text
    assert "K,K" not in text and "K1,K2" not in text and "S,S" not in text
    assert " ".join(text.split()).count("separate values by spaces or commas") == sum(
        1 for c, _ in LIST_FLAGS if c == command)


def test_eval_list_defaults_are_shown_and_used():
    args = parse("eval")
    assert args.levels == [0, 6, 12, 18, 24, 30] and args.seeds == [0, 1, 2]
    help_text = " ".join(subparsers()["eval"].format_help().split())
    assert "default: 0 6 12 18 24 30" in help_text and "default: 0 1 2" in help_text


# ----------------------------------------------------------------------------- 2. one default per setting
def flag_defaults(command: str, names: set[str]) -> dict[str, object]:
    """dest -> parser default of every flag of ``command`` whose dest is in ``names`` (derived from the parser)."""
    return {a.dest: a.default for a in subparsers()[command]._actions if a.option_strings and a.dest in names}


def dataclass_defaults(cls: type) -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def signature_defaults(function) -> dict[str, object]:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def assert_same_defaults(parser_defaults: dict, api_defaults: dict, least: set[str]) -> None:
    """A parser default is the API's, or None: "not given", which the command leaves to the API."""
    assert least <= set(parser_defaults), f"flags not found: {least - set(parser_defaults)}"
    for name, value in parser_defaults.items():
        assert value is None or value == api_defaults[name], f"{name}: CLI {value!r}, API {api_defaults[name]!r}"


def test_build_flags_default_to_the_build_config():
    from dataset_tools.build_cli import config_from_args
    from dataset_tools.build_config import BuildConfig

    api = dataclass_defaults(BuildConfig)
    cli = flag_defaults("build", set(api))
    assert_same_defaults(cli, api, {"depth", "mask", "resolution", "shard_size", "min_sharpness", "seed", "levels",
                                    "synthetic_levels", "balance", "image_column", "caption_column"})
    assert cli["depth"] == BuildConfig().depth == DEFAULT_DEPTH_BACKEND == "depth-pro"
    assert config_from_args(parse("build")) == BuildConfig()  # flags left out: every field the dataclass's


def test_eval_flags_default_to_the_eval_settings():
    from pipelines.eval_cli import DEFAULT_LEVELS, DEFAULT_SEEDS
    from pipelines.evaluate import EvalSettings
    from estimators.cli_util import dataclass_from_args

    api = dataclass_defaults(EvalSettings)
    cli = flag_defaults("eval", set(api))
    assert_same_defaults(cli, api, {"grounded", "pivot", "grounding_steps", "colour_transfer", "shared_steps", "steps",
                                    "guidance", "bokeh_guidance", "baseline"})
    assert dataclass_from_args(EvalSettings, parse("eval")) == EvalSettings(DEFAULT_LEVELS, DEFAULT_SEEDS)


def test_estimate_flags_default_to_the_photo_estimator():
    from estimators.photo_estimator import PhotoEstimator

    api = signature_defaults(PhotoEstimator.__init__)
    assert_same_defaults(flag_defaults("estimate", set(api)), api, {"depth", "mask", "depth_model", "sam_model", "device"})


def test_render_flags_default_to_the_renderer():
    from synth_blur.renderer import render

    api = signature_defaults(render)
    assert_same_defaults(flag_defaults("render", set(api)), api, {"gamma", "highlight_boost", "aperture", "device"})


def test_sample_flags_default_to_the_pipeline_call():
    from pipelines.model_args import sampling_kwargs
    from pipelines.pipeline_base import BokehPipeline

    api = signature_defaults(BokehPipeline.__call__)
    given = sampling_kwargs(parse("sample"))
    assert {"pivot", "grounding_steps", "true_cfg", "colour_transfer", "shared_steps"} <= set(given)
    for name, value in given.items():
        assert value == api[name], f"{name}: CLI {value!r}, pipeline {api[name]!r}"


# ----------------------------------------------------------------------------- 3. one depth interface
@pytest.mark.parametrize("command,backends", [
    ("estimate", DEPTH_BACKENDS),
    ("render", tuple(b for b in DEPTH_BACKENDS if b != "none")),
    ("build", tuple(b for b in DEPTH_BACKENDS if b != "none")),
    ("edit", DEPTH_BACKENDS),
])
def test_depth_flags_are_the_same_everywhere(capsys, command, backends):
    depth = option(command, "--depth")
    assert tuple(depth.choices) == backends and depth.default == DEFAULT_DEPTH_BACKEND and depth.metavar == "BACKEND"
    assert option(command, "--disparity").metavar == "FILE" and option(command, "--depth-model").default is None
    assert "not allowed with argument --depth" in parse_error(capsys, command, "--depth", "sidecar", "--disparity", "d.png")
    assert option("render", "--depth").help == depth.help.replace("; none: no depth", "")


def test_build_refuses_a_per_photo_disparity(capsys, tmp_path):
    assert "not taken here" in option("build", "--disparity").help
    assert main(["build", str(tmp_path), "-o", str(tmp_path / "out"), "--disparity", "d.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("bokeh build: error: --disparity names one photo's map")
    assert not (tmp_path / "out").exists()


def test_estimate_takes_a_disparity_file_for_one_photo_only(capsys, tmp_path):
    photo = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(photo)
    assert main(["estimate", str(photo), str(photo), "--disparity", "d.npy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--disparity names one photo's map, but 2 photos were given" in err


def square_scene(width=128, height=96, side=48):
    """A grey textured background with a red square (the near subject) and its disparity (1 on it, 0 off it)."""
    rng = np.random.default_rng(1)
    image = np.full((height, width, 3), 90, np.uint8) + rng.integers(0, 30, (height, width, 1), dtype=np.uint8)
    y0, x0 = (height - side) // 2, (width - side) // 2
    image[y0:y0 + side, x0:x0 + side] = (220, 30, 30)
    disparity = np.zeros((height, width), np.float32)
    disparity[y0:y0 + side, x0:x0 + side] = 1.0
    return image, disparity, side * side / (width * height)


def test_estimate_reads_the_named_disparity_file(capsys, tmp_path):
    image, disparity, fraction = square_scene()
    Image.fromarray(image).save(tmp_path / "p.png")
    np.save(tmp_path / "d.npy", disparity * 7.0 + 3.0)  # any range: min-max normalised to 0 / 1
    assert main(["estimate", str(tmp_path / "p.png"), "--disparity", str(tmp_path / "d.npy"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["depth_source"] == "file d.npy" and record["mask_source"] == "depth-grabcut"
    # The subject is the 48 x 48 square of the 128 x 96 photo: 2304 / 12288 = 0.1875 of it.
    assert record["subject_fraction"] == pytest.approx(fraction, abs=0.01)


@pytest.mark.parametrize("content", [None, b"not a map"])
def test_a_named_disparity_file_that_cannot_be_read_fails_the_photo(capsys, tmp_path, content):
    image, _, _ = square_scene()
    Image.fromarray(image).save(tmp_path / "p.png")
    named = tmp_path / "d.npz"
    if content is not None:
        named.write_bytes(content)
    assert main(["estimate", str(tmp_path / "p.png"), "--disparity", str(named)]) == 1
    out = capsys.readouterr().out.strip()
    # the photo fails on its named map: no estimate made without the depth the user asked for
    assert out.count("\n") == 0 and out.startswith(f"{tmp_path / 'p.png'}: ERROR ") and "d.npz" in out


def test_sidecar_order_depth_then_disparity_npy_then_png(tmp_path):
    from estimators.sidecars import depth_sidecar_paths, load_depth_sidecar

    photo = tmp_path / "p.png"
    Image.new("RGB", (2, 2)).save(photo)
    assert [p.name for p in depth_sidecar_paths(photo)] == ["p.depth.npy", "p.disparity.npy", "p.disparity.png"]
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).save(tmp_path / "p.disparity.png")
    assert load_depth_sidecar(photo, (2, 2)).disparity.tolist() == [[0, 1], [1, 0]]
    np.save(tmp_path / "p.disparity.npy", np.array([[0.0, 10.0], [20.0, 40.0]]))
    npy = load_depth_sidecar(photo, (2, 2))  # (v - 0) / (40 - 0)
    assert npy.source == "sidecar-disparity" and npy.depth_m is None
    assert npy.disparity.tolist() == [[0, 0.25], [0.5, 1]]
    np.save(tmp_path / "p.depth.npy", np.array([[1.0, 2.0], [4.0, 1.0]], np.float32))
    metric = load_depth_sidecar(photo, (2, 2))  # 1/z = 1, 0.5, 0.25 -> (1/z - 0.25) / 0.75
    assert metric.source == "sidecar-depth" and metric.depth_range_m == (1.0, 4.0)
    assert metric.disparity == pytest.approx(np.array([[1, 1 / 3], [0, 1]]), abs=1e-6)


def test_render_reads_a_disparity_npy_sidecar_and_a_mask_sidecar(capsys, tmp_path):
    image, disparity, _ = square_scene()
    Image.fromarray(image).save(tmp_path / "p.png")
    np.save(tmp_path / "p.disparity.npy", disparity)
    out = tmp_path / "o.png"
    assert main(["render", str(tmp_path / "p.png"), "--bokeh", "10", "--depth", "sidecar", "-o", str(out)]) == 0
    # The depth masker finds the square, where the disparity is 1: the focal plane is there.
    assert ("focus disparity 1.000 from the subject the depth masker found (no p.mask.png), depth sidecar-disparity"
            in capsys.readouterr().out)
    Image.fromarray(((disparity == 0) * 255).astype(np.uint8)).save(tmp_path / "p.mask.png")  # the background
    assert main(["render", str(tmp_path / "p.png"), "--bokeh", "10", "--depth", "sidecar", "-o", str(out)]) == 0
    assert "focus disparity 0.000 from the subject of p.mask.png" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 4. a missing input in words
def human(capsys, *argv) -> list[str]:
    assert main(["estimate", *map(str, argv)]) == 0
    return capsys.readouterr().out.splitlines()


def test_estimate_says_what_it_went_without_and_what_that_means(capsys, tmp_path):
    photo = tmp_path / "p.jpg"
    shutil.copy(TEST_PHOTOS / "exif" / "exiforg_canon-ixus.jpg", photo)
    first, depth, mask = human(capsys, photo, "--depth", "sidecar", "--mask", "depth")
    assert "=-" not in first and "[-]" not in first and " - " not in first
    assert first.startswith(f"{photo}: K=") and "focus 3.75 m (exif:SubjectDistance)" in first
    assert depth.startswith("  without depth (no depth sidecar for p.jpg (expected p.depth.npy, p.disparity.npy or "
                            "p.disparity.png)): ")
    assert "focus distance can only come from EXIF" in depth and "whole image taken as one layer" in depth
    assert depth.endswith("the EXIF K takes the background at infinity (K = k_metric / focus distance)")
    assert mask.startswith("  without a subject mask (the subject masker needs depth, and there is none): ")

    lines = human(capsys, photo, "--depth", "none", "--mask", "none")
    assert lines[1].startswith("  without depth (--depth none): ")
    assert lines[2].startswith("  without a subject mask (--mask none): ")

    np.save(tmp_path / "p.disparity.npy", np.tile(np.linspace(0, 1, 640, dtype=np.float32), (480, 1)))
    first, relative = human(capsys, photo, "--depth", "sidecar", "--mask", "depth")
    # EXIF K with relative depth is k_metric / s at short side 512, as with no depth at all (10.8125 mm, f/4, 3.75 m,
    # 640 x 480 px); k_metric = f^2 s / (2 N (s - f)) * W / sensor_w.
    assert main(["estimate", str(photo), "--depth", "none", "--mask", "none", "--json"]) == 0
    sensor_m = json.loads(capsys.readouterr().out)["sensor_width_mm"] / 1000
    f, n, s = 0.0108125, 4.0, 3.75
    k = f * f * s / (2 * n * (s - f)) * 640 / sensor_m / s * 512 / 480
    assert f"K={k:.3g} (exif-only" in first and f"K={k:.3g} (exif-only" in lines[0]
    assert relative.startswith("  without metric depth (sidecar-disparity is relative): the EXIF K takes the background "
                               "at infinity")


def test_estimate_without_exif_says_k_is_the_image_measure(capsys):
    first, *notes = human(capsys, DEMO_PHOTOS / "street_8.jpg", "--depth", "sidecar", "--mask", "depth")
    assert "focus distance unknown" in first and "image-only" in first
    assert notes == ["  without EXIF lens data (missing focal length, f-number, focus distance, sensor size): "
                     "K is the image-K, measured from the photo's blur"]


def test_build_summary_says_which_photos_lacked_depth(capsys, tmp_path):
    from dataset_tools.build_cli import missing_input_lines

    assert missing_input_lines({"no-depth": 2, "no-mask": 1, "duplicate": 4}, "E") == [
        "2 photos had no depth sidecar (<stem>.depth.npy, <stem>.disparity.npy or <stem>.disparity.png) and so no "
        "depth: they are not in the dataset; add the sidecars or choose a depth model with --depth (listed in E)",
        "1 photo had no usable subject mask (no <stem>.mask.png, or an empty mask): they are not in the dataset; add "
        "the masks or use --mask depth or sam (listed in E)",
    ]
    scenes = demo_scenes(tmp_path / "in", 2, size=96)
    scenes[1].with_suffix(".depth.npy").unlink()
    out = tmp_path / "out"
    assert main(["build", str(tmp_path / "in"), "-o", str(out), "--workers", "0", "--depth", "sidecar",
                 "--synthetic-levels", "0", "--resolution", "96", "--min-sharpness", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("1 photo had no depth sidecar (")
    assert printed[-1].endswith(f"(listed in {out / 'errors.jsonl'})")
