"""The evaluation harness: a fake pipeline that renders a real photo physically scores LVCorr near 1
and calibration ratio 1; a noise painter fools LVCorr but not calibration; dataset bins and scenes
from a hand-built dataset; summaries, targets, the report, CLI errors and an end-to-end tiny model."""
from __future__ import annotations

import argparse
import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import DEMO_PHOTOS
from dataset_tools.schema import IMAGE_STRUCT
from estimators.cli_util import UserError
from pipelines import eval_cli
from pipelines.eval_report import json_ready, write_evaluation
from pipelines.eval_sources import DatasetSource, Scene, fit_to, level_bins, reference_photo
from pipelines.evaluate import EvalSettings, Evaluator, render_sweep, summarize, targets

LEVELS = [0, 10, 20, 30]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def street():
    """street_8 fitted to 64x64 with its sidecar disparity and a depth mask."""
    return reference_photo(DEMO_PHOTOS / "street_8.jpg", (64, 64))


class RenderPipeline:
    """Renders one fixed photo at each K (K < 0: the photo itself), whatever the prompt; records calls."""

    def __init__(self, image: Image.Image, scene: Scene) -> None:
        self.image, self.scene, self.calls, self.cache = image, scene, [], {}

    def __call__(self, prompt, bokeh, pivot=None, grounding_steps=24, seed=0, **kwargs):
        self.calls.append(dict(prompt=prompt, bokeh=list(bokeh), pivot=pivot, grounding_steps=grounding_steps, seed=seed, **kwargs))
        for k in bokeh:
            if max(k, 0.0) not in self.cache:
                self.cache[max(k, 0.0)] = render_sweep([max(k, 0.0)], self.image, self.scene, "cpu")[0]
        return [self.cache[max(k, 0.0)] for k in bokeh]


class NoisePainter:
    """A flat scene whose painted noise weakens as K rises: the background 'sharpness' falls with K
    like real blur, but at a rate no lens gives."""

    def __call__(self, prompt, bokeh, seed=0, **kwargs):
        rng = np.random.default_rng(seed)
        noise = rng.normal(0.0, 1.0, (64, 64, 3))
        return [Image.fromarray(np.clip(128 + (30 * (1 - k / 30) + 1) * noise, 0, 255).astype(np.uint8)) for k in bokeh]


def test_a_physical_render_scores_lvcorr_near_one_and_calibration_one(street):
    image, scene = street
    pipe = RenderPipeline(image, scene)
    ticks = []
    settings = EvalSettings(LEVELS, [0, 1], grounded=True, pivot=12, grounding_steps=5, colour_transfer=False, steps=3,
                            bokeh_guidance=4.0, shared_steps=2)
    evaluator = Evaluator(pipe, settings, lambda prompt, im: scene, "render", device="cpu", progress=lambda: ticks.append(1))
    result = evaluator.run(["a street"]).scores
    assert len(ticks) == evaluator.calls(["a street"]) == 2 * 3
    # the pipeline contract: unbounded without pivot, grounded with pivot and steps, baseline with K = -1
    modes = {(c["pivot"], c["bokeh"][0]) for c in pipe.calls}
    assert modes == {(None, 0.0), (12, 0.0), (None, -1.0)}
    assert all(c["num_inference_steps"] == 3 and c["guidance_scale"] is None for c in pipe.calls)
    assert [c["grounding_steps"] for c in pipe.calls if c["pivot"] == 12] == [5, 5]
    assert [c.get("colour_transfer") for c in pipe.calls if c["pivot"] == 12] == [False, False]
    assert [c.get("shared_steps") for c in pipe.calls] == [None, 2, None] * 2  # grounded sweeps only
    assert result["settings"]["shared_steps"] == 2
    # K guidance for the model's modes; the baseline has no K to guide (no wasted pass)
    assert {(c["bokeh"][0], c["bokeh_guidance"]) for c in pipe.calls} == {(0.0, 4.0), (-1.0, None)}
    unbounded = result["overall"]["unbounded"]
    assert unbounded["runs"] == 2 and unbounded["lvcorr_background"] > 0.95
    assert unbounded["calibration_max"] == pytest.approx(0.0, abs=1e-12)  # exactly the render reference
    assert unbounded["ssim_whole"][0] is None and unbounded["ssim_whole"][-1] < unbounded["ssim_whole"][1] < 1
    assert unbounded["ssim_subject"][-1] > unbounded["ssim_whole"][-1]  # focused on the subject: it stays sharp
    baseline = result["overall"]["baseline"]
    assert baseline["lvcorr_background"] == 0.0 and baseline["lvcorr_whole"] == 0.0  # K ignored: the floor
    assert baseline["ssim_whole"][1:] == [1.0] * 3 and baseline["psnr_whole"][-1] == math.inf
    assert baseline["calibration_log_ratio"][-1] > math.log(2)  # far sharper than a render at K = 30
    status = {t["name"]: t["status"] for t in result["targets"]}
    assert status["LVCorr >= 0.9 (unbounded)"] == "pass"
    assert status["blur within x2 of the reference at every K (grounded)"] == "pass"
    assert status["grounded more consistent than unbounded"] == "fail"  # the fake ignores grounding: equal
    assert set(result["per_prompt"]["a street"]) == {"unbounded", "grounded", "baseline"}


def test_noise_that_follows_k_fools_lvcorr_but_not_calibration(street):
    _, scene = street
    result = Evaluator(NoisePainter(), EvalSettings(LEVELS, [0], baseline=False), lambda p, im: scene, "render").run(["noise"])
    lines = {t["name"]: t for t in result.scores["targets"]}
    assert lines["LVCorr >= 0.9 (unbounded)"]["status"] == "pass"
    calibration = lines["blur within x2 of the reference at every K (unbounded)"]
    assert calibration["status"] == "fail" and calibration["value"] > 2


def test_reference_photos_are_scored_as_the_ceiling(street):
    image, scene = street
    evaluator = Evaluator(RenderPipeline(image, scene), EvalSettings(LEVELS, [0], baseline=False), lambda p, im: scene, "none")
    result = evaluator.run(["p"], [DEMO_PHOTOS / "new_11.jpg"])
    photo = [r for r in result.scores["runs"] if r["mode"] == "reference"]
    assert len(photo) == 1 and photo[0]["prompt"] == "new_11.jpg" and photo[0]["lvcorr_background"] > 0.95
    assert result.images[photo[0]["id"]].images[0].size == (64, 64)
    lines = {t["name"]: t for t in result.scores["targets"]}
    assert lines["blur within x2 of the reference at every K (unbounded)"]["status"] == "n/a"


def test_settings_and_evaluator_reject_bad_input(street):
    for levels in ([0], [0, 40], [10, 5], [0, 0]):
        with pytest.raises(ValueError):
            EvalSettings(levels, [0])
    with pytest.raises(ValueError):
        EvalSettings(LEVELS, [])
    for bad in (dict(shared_steps=2), dict(grounded=True, shared_steps=-1)):
        with pytest.raises(ValueError, match="shared steps"):
            EvalSettings(LEVELS, [0], **bad)
    with pytest.raises(ValueError, match="lowest level must be 0"):
        Evaluator(None, EvalSettings([5, 10], [0]), lambda p, im: street[1], "render")
    with pytest.raises(ValueError, match="needs subject masks"):
        Evaluator(None, EvalSettings(LEVELS, [0]), None, "render")
    bad = Evaluator(lambda *a, **k: [street[0]], EvalSettings(LEVELS, [0]), None, "none")
    with pytest.raises(ValueError, match="returned 1 images"):
        bad.run(["p"])


# ---------------------------------------------------------------- summaries and targets


def run(lv, ratios, ssim_subject, mode="unbounded"):
    return {"mode": mode, "lvcorr_background": lv, "lvcorr_whole": lv, "calibration_log_ratio": ratios,
            "calibration_mean": None if ratios is None else float(np.mean(ratios)),
            "calibration_max": None if ratios is None else max(ratios), "ssim_subject": ssim_subject,
            "ssim_whole": ssim_subject, "psnr_subject": None, "psnr_whole": [None, 30.0, 20.0]}


def test_summaries_average_per_k_and_count_missing_values():
    s = summarize([run(0.8, [0.0, 0.2, 0.4], [None, 0.9, 0.7]), run(1.0, [0.0, 0.4, 1.0], [None, 0.7, 0.5]), run(None, None, None)])
    assert s["runs"] == 3 and s["lvcorr_background"] == pytest.approx(0.9)
    assert s["calibration_log_ratio"] == pytest.approx([0.0, 0.3, 0.7])
    assert s["ssim_subject"][0] is None and s["ssim_subject"][1:] == pytest.approx([0.8, 0.6])
    assert s["ssim_subject_mean"] == pytest.approx(0.7)
    assert s["missing"] == {"lvcorr_background": 1, "lvcorr_whole": 1, "calibration_mean": 1, "calibration_max": 1,
                            "calibration_log_ratio": 1, "ssim_subject": 1, "ssim_whole": 1, "psnr_subject": 3}


def test_targets_pass_and_fail_by_their_thresholds():
    overall = {
        "unbounded": summarize([run(0.95, [0.0, 0.5, 0.6], [None, 0.7, 0.6])]),
        "grounded": summarize([run(0.85, [0.0, 0.5, 0.8], [None, 0.9, 0.81])]),
    }
    lines = {t["name"]: t for t in targets(overall, [0, 15, 30], True)}
    assert lines["LVCorr >= 0.9 (unbounded)"]["status"] == "pass"
    assert lines["LVCorr >= 0.9 (grounded)"]["status"] == "fail"
    factor = lines["blur within x2 of the reference at every K (grounded)"]
    assert factor["status"] == "fail" and factor["value"] == pytest.approx(math.exp(0.8))  # log 2 = 0.693
    assert lines["blur within x2 of the reference at every K (unbounded)"]["status"] == "pass"
    assert lines["subject SSIM at K = 30 >= 0.8 (grounded)"]["status"] == "pass"
    better = lines["grounded more consistent than unbounded"]
    assert better["status"] == "pass" and better["value"] == pytest.approx(0.855 - 0.65)
    only_unbounded = {t["name"]: t["status"] for t in targets({"unbounded": overall["unbounded"]}, [0, 15, 30], False)}
    assert only_unbounded["grounded more consistent than unbounded"] == "n/a"
    assert only_unbounded["subject SSIM at K = 30 >= 0.8 (grounded)"] == "n/a"  # the unbounded sweeps had a subject mask
    assert only_unbounded["blur within x2 of the reference at every K (unbounded)"] == "n/a"


# ---------------------------------------------------------------- dataset source


def checker_png(amplitude: int, flat_subject: bool = True, size: int = 40) -> bytes:
    """A 1 px checkerboard 128 +- amplitude (Laplacian variance 64 amplitude^2) with a flat subject square."""
    yy, xx = np.indices((size, size))
    values = np.where((yy + xx) % 2 == 0, 128 + amplitude, 128 - amplitude).astype(np.uint8)
    if flat_subject:
        values[10:20, 10:20] = 128
    return png(np.repeat(values[..., None], 3, axis=2))


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def subject_png(size: int = 40) -> bytes:
    mask = np.zeros((size, size), np.uint8)
    mask[10:20, 10:20] = 255
    return png(mask)


def depth_png(size: int = 40) -> bytes:
    ramp = np.tile(np.linspace(0, 30000, size).astype(np.uint16)[:, None], (1, size))
    ramp[10:20, 10:20] = 60000
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(folder, groups, size: int = 40):
    """``groups``: (caption, [(kind, K, amplitude)]) with the real row first; real rows carry mask and depth."""
    rows = []
    for g, (caption, members) in enumerate(groups):
        for kind, level, amplitude in members:
            real = kind == "real"
            rows.append(dict(
                id=f"{g}-{level}", group_id=f"g{g}", kind=kind, caption=caption, bokeh_level=float(level),
                image={"bytes": checker_png(amplitude, size=size), "path": None},
                subject_mask={"bytes": subject_png(size), "path": None} if real else None,
                depth={"bytes": depth_png(size), "path": None} if real else None,
            ))
    schema = pa.schema([("id", pa.string()), ("group_id", pa.string()), ("kind", pa.string()), ("caption", pa.string()),
                        ("bokeh_level", pa.float32()), ("image", IMAGE_STRUCT), ("subject_mask", IMAGE_STRUCT), ("depth", IMAGE_STRUCT)])
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "data" / "train-00000.parquet")
    return folder


GROUPS = [
    ("a red ball", [("real", 0, 20), ("synthetic", 5.5, 10), ("synthetic", 6.5, 6), ("synthetic", 30, 2)]),
    ("a white box", [("real", 1, 30), ("synthetic", 12, 4)]),
]


def test_level_bins_are_half_gaps_capped_at_three():
    assert level_bins([0, 6, 12]) == [(-3, 3), (3, 9), (9, 15)]
    assert level_bins([0, 2, 30]) == [(-1, 1), (1, 3), (27, 33)]


def test_dataset_bins_are_medians_of_the_background_with_the_pivot_mask(tmp_path):
    dataset = DatasetSource(write_dataset(tmp_path / "ds", GROUPS))
    binned = dataset.binned([0, 6, 12, 18], (40, 40))
    # background (off the flat subject + 1 px) is pure checkerboard: 64 a^2, synthetic rows via their pivot's mask
    assert binned.background[:3] == pytest.approx([(64 * 400 + 64 * 900) / 2, (6400 + 64 * 36) / 2, 64 * 16])
    assert binned.background[3] is None and binned.counts == [2, 2, 1, 0]
    assert binned.notes == ["no dataset row with K in [15, 21] for level 18"]
    assert binned.whole[2] < binned.background[2]  # the flat subject lowers the whole-image value


def test_dataset_scene_by_caption(tmp_path):
    dataset = DatasetSource(write_dataset(tmp_path / "ds", GROUPS))
    scene = dataset.scene("a white box", (20, 20))  # half size: the mask and depth are resized
    assert scene.mask.shape == (20, 20) and scene.mask[5:10, 5:10].all() and scene.mask.sum() == 25
    assert scene.disparity.max() == pytest.approx(1.0) and scene.disparity[7, 7] == pytest.approx(1.0)
    assert scene.disparity[0, 0] == pytest.approx(0.0, abs=0.02) and scene.disparity[19, 0] > scene.disparity[0, 0]
    with pytest.raises(UserError, match="matches no caption"):
        dataset.check_captions(["a red ball", "a blue cat"])
    with pytest.raises(UserError, match="no data"):
        DatasetSource(tmp_path)


def test_fit_to_takes_the_centre_crop():
    wide = np.zeros((40, 60, 3), np.uint8)
    wide[:, :10] = (255, 0, 0)
    wide[:, 10:50] = (0, 255, 0)
    wide[:, 50:] = (0, 0, 255)
    fitted = np.asarray(fit_to(Image.fromarray(wide), (20, 20)))
    assert fitted.shape == (20, 20, 3)
    assert (fitted[:, 2:18, 1] == 255).all() and fitted[:, 2:18, [0, 2]].max() == 0


# ---------------------------------------------------------------- report


def test_report_writes_json_html_and_images(street, tmp_path):
    image, scene = street
    result = Evaluator(RenderPipeline(image, scene), EvalSettings([0, 30], [0]), lambda p, im: scene, "render").run(["a <street>"])
    paths = write_evaluation(result, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    baseline = next(r for r in data["runs"] if r["mode"] == "baseline")
    assert baseline["psnr_whole"] == [None, "inf"]  # identical images: written as a string
    listed = [p for r in data["runs"] for p in r["images"]["sweep"] + (r["images"]["reference"] or []) + [r["images"]["mask"]]]
    assert len(listed) == 2 * (2 + 2 + 1) and all((tmp_path / "out" / name).is_file() for name in listed)
    page = paths["html"].read_text()
    assert page.count("<img ") == 2 * 2 + 2 + 2 and "a &lt;street&gt;" in page  # two sweeps and their masks, one render
    assert "LPIPS not used" in page and 'class="pass"' in page and "identical" in page
    assert json_ready({"a": [float("-inf"), float("nan"), 1.5]}) == {"a": ["-inf", "nan", 1.5]}


# ---------------------------------------------------------------- CLI


def parse(*argv):
    parser = argparse.ArgumentParser()
    eval_cli.register(parser.add_subparsers())
    return parser.parse_args(["eval", *argv])


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# captions of the training scenes\n\na red ball\n  a white box  \n")
    return path


def test_prompts_file_skips_comments_and_blank_lines(prompts_file):
    assert eval_cli.read_prompts(prompts_file) == ["a red ball", "a white box"]


@pytest.mark.parametrize("flags, message", [
    (["--prompts", "missing.txt"], "prompts file not found"),
    (["--levels", "0"], "at least two levels"),
    (["--mask", "dataset"], "--mask dataset needs --dataset"),
    (["--mask", "none"], "--reference render needs a subject mask"),
    (["--mask", "none", "--reference", "none", "--reference-photos", "nowhere.jpg"], "reference photo not found"),
])
def test_cli_bad_input_is_one_line_user_error(prompts_file, tmp_path, flags, message):
    argv = ["--prompts", str(prompts_file), "-o", str(tmp_path / "out"), *flags]
    with pytest.raises(UserError, match=message):
        eval_cli.run_eval(parse(*argv))


@pytest.mark.parametrize("flags, message", [
    (["--levels", " , "], "argument --levels: give at least one value, e.g. 0 6 12 18 24 30"),
    (["--levels", "0,x"], "not a number: 'x'"),
    (["--levels", "0,-6"], "must be a finite number >= 0, got -6"),
    (["--seeds", "1.5"], "not an integer: '1.5'"),
])
def test_cli_bad_lists_are_argparse_errors(prompts_file, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        parse("--prompts", str(prompts_file), "-o", str(tmp_path / "out"), *flags)
    assert message in capsys.readouterr().err


def test_cli_checks_the_reference_before_loading_the_model(tmp_path):
    dataset = write_dataset(tmp_path / "ds", GROUPS)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red ball\n")
    argv = ["--prompts", str(prompts), "--dataset", str(dataset), "--reference", "render", "--levels", "6,12",
            "--base", str(tmp_path / "no_such_model"), "-o", str(tmp_path / "o")]
    with pytest.raises(UserError, match="lowest level must be 0"):  # not the missing base model
        eval_cli.run_eval(parse(*argv))


def test_cli_prompt_without_caption_match(tmp_path):
    dataset = write_dataset(tmp_path / "ds", GROUPS)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red ball\na green cat\n")
    with pytest.raises(UserError, match="'a green cat' matches no caption"):
        eval_cli.run_eval(parse("--prompts", str(prompts), "--dataset", str(dataset), "-o", str(tmp_path / "o")))


def test_cli_end_to_end_with_a_tiny_model(tmp_path, capsys):
    from diffusers import UNet2DConditionModel

    from bokeh_models.tiny_model import build_tiny_model
    from bokeh_models.unet_adapter import BokehUNetAdapter

    captions = [caption for caption, _ in GROUPS]
    base = build_tiny_model(tmp_path / "tiny", captions, resolution=32, block_out_channels=[16, 16, 32, 32], text_width=32)
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    BokehUNetAdapter(unet, bokeh_context_dim=32, bokeh_hidden_dim=16, lora_rank=4).save_pretrained(tmp_path / "adapter")
    dataset = write_dataset(tmp_path / "ds", GROUPS, size=32)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red ball\n")
    args = parse("--base", str(base), "--adapter", str(tmp_path / "adapter"), "--prompts", str(prompts), "--levels", "0,15,30",
                 "--seeds", "0", "--grounded", "--grounding-steps", "1", "--steps", "2", "--dataset", str(dataset),
                 "--reference-photos", str(DEMO_PHOTOS / "new_11.jpg"), "--device", "cpu", "-o", str(tmp_path / "out"))
    assert eval_cli.run_eval(args) == 0
    data = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert [r["mode"] for r in data["runs"]] == ["unbounded", "grounded", "baseline", "reference"]
    assert data["settings"]["reference"] == "dataset" and data["runs"][0]["scene_source"] == "dataset:ds"
    assert data["runs"][0]["subject_fraction"] == pytest.approx(100 / 1024)  # the dataset mask, 10x10 of 32x32
    assert all(isinstance(r["lvcorr_whole"], float) for r in data["runs"])
    assert (tmp_path / "out" / "images" / "p0-s0-grounded_K30.png").is_file()
    out = capsys.readouterr().out
    assert "LVCorr >= 0.9 (grounded)" in out and "wrote" in out and "LPIPS not used" in out


def test_reference_photo_sidecar_else_model_and_a_refused_sidecar_is_an_error(tmp_path):
    from estimators.depth import DepthMap

    calls = []

    def ramp_model(image):
        calls.append(image.size)
        return DepthMap(np.tile(np.linspace(0, 1, image.size[0], dtype=np.float32), (image.size[1], 1)), source="ramp")

    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), np.uint8)).save(photo)
    image, scene = reference_photo(photo, (48, 32), ramp_model)  # no sidecar: the model
    assert calls == [(90, 60)] and scene.source.startswith("ramp + ")
    Image.fromarray(np.full((300, 17), 128, np.uint8)).save(tmp_path / "p.disparity.png")
    with pytest.raises(UserError, match=r"unusable depth sidecar .* 17x300 but the photo is 90x60") as info:
        reference_photo(photo, (48, 32), ramp_model)  # there but refused: never replaced by the model
    assert calls == [(90, 60)] and "\n" not in str(info.value)
