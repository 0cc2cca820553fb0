"""DepthProEstimator and the metric-depth default on tiny random-weight Depth Pro checkpoints (no network)."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, TEST_PHOTOS
from estimators.backends import make_depth_model
from estimators.depth_pro import INVERSE_DEPTH_RANGE, DepthProEstimator, InputSpec, focal_length_from_fov
from estimators.image_io import load_image
from estimators.model_loading import ModelUnavailableError

#: The network's input side: with 8 px ViT patches of 16 px crops (out size 2) and 4 fusion blocks the
#: head's output is 2**5 * 2 = 64 px, the input size, as the released model's 1536 px in and out.
SIDE = 64
#: A hub address where nothing listens (the discard port of this machine): a connection is refused at once.
UNREACHABLE_HUB = "http://127.0.0.1:9"
#: A photo with focal length, f-number and sensor size (focal-plane resolution) in its EXIF, 640x480.
EXIF_PHOTO = TEST_PHOTOS / "exif" / "exiforg_canon-ixus.jpg"


def _build_tiny_depth_pro(path, fov_head: bool = True):
    """A Depth Pro with tiny Dinov2 encoders (hidden 16, 2 layers, 8 px patches) and the processor config
    of the released checkpoint at 64 px, saved to ``path``."""
    from transformers import DepthProConfig, DepthProForDepthEstimation

    def dinov2():
        return {"model_type": "dinov2", "num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2,
                "intermediate_size": 32, "patch_size": 8}

    config = DepthProConfig(
        patch_size=16, fusion_hidden_size=16, intermediate_hook_ids=[1, 0], intermediate_feature_dims=[8, 8],
        scaled_images_ratios=[0.5, 1.0], scaled_images_overlap_ratios=[0.0, 0.25], scaled_images_feature_dims=[12, 12],
        use_fov_model=fov_head, image_model_config=dinov2(), patch_model_config=dinov2(), fov_model_config=dinov2(),
    )
    torch.manual_seed(0)
    model = DepthProForDepthEstimation(config).eval()
    with torch.no_grad():
        # Canonical inverse depth spread around 1.5 (depths from a fraction of a metre to several metres) and
        # mostly above the head's final ReLU, as a trained model's; a field of view near 50 degrees, as a
        # normal lens's.
        model.head.layers[4].weight.mul_(0.01)
        model.head.layers[4].bias.fill_(1.5)
        if fov_head:
            model.fov_model.head.layers[-1].bias.fill_(50.0)
    model.save_pretrained(path)
    processor = {"image_processor_type": "DepthProImageProcessorFast", "do_resize": True, "do_rescale": True,
                 "do_normalize": True, "rescale_factor": 1 / 255, "image_mean": [0.5, 0.5, 0.5],
                 "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": {"height": SIDE, "width": SIDE}}
    (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return path


@pytest.fixture(scope="module")
def pro_dir(tmp_path_factory):
    return _build_tiny_depth_pro(tmp_path_factory.mktemp("depth_pro"))


@pytest.fixture(scope="module")
def pro_no_fov_dir(tmp_path_factory):
    return _build_tiny_depth_pro(tmp_path_factory.mktemp("depth_pro_no_fov"), fov_head=False)


@pytest.fixture(scope="module")
def estimator(pro_dir):
    return DepthProEstimator(str(pro_dir), device="cpu", batch_size=2)


def _image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((width, height), Image.BILINEAR)


def _raw_network(path, image: Image.Image):
    """Canonical inverse depth and field of view of a 64x64 image, run through transformers directly on
    the processor's input worked by hand: (pixel / 255 - 0.5) / 0.5, no resizing at the model's size."""
    from transformers import DepthProForDepthEstimation

    assert image.size == (SIDE, SIDE)
    pixels = (np.asarray(image, dtype=np.float64) / 255.0 - 0.5) / 0.5
    batch = torch.from_numpy(pixels.transpose(2, 0, 1)[None].astype(np.float32))
    network = DepthProForDepthEstimation.from_pretrained(path).eval()
    with torch.no_grad():
        output = network(pixel_values=batch)
    fov = None if output.field_of_view is None else float(output.field_of_view[0])
    return output.predicted_depth[0].double().numpy(), fov


def test_focal_length_from_field_of_view_by_hand():
    assert focal_length_from_fov(90.0, 640) == pytest.approx(320.0)  # tan 45 deg = 1
    assert focal_length_from_fov(60.0, 640) == pytest.approx(320.0 * math.sqrt(3))  # tan 30 deg = 1/sqrt 3
    for bad in (None, 0.0, 180.0, -5.0, float("nan"), float("inf")):
        assert focal_length_from_fov(bad, 640) is None


def test_input_spec_of_the_released_processor_config():
    released = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                "image_processor_type": "DepthProImageProcessorFast", "image_std": [0.5, 0.5, 0.5], "resample": 2,
                "rescale_factor": 0.00392156862745098, "size": {"height": 1536, "width": 1536}}
    spec = InputSpec.from_processor_config(released)
    assert (spec.height, spec.width, spec.interpolation) == (1536, 1536, "bilinear")
    assert spec.rescale == pytest.approx(1 / 255) and spec.mean == (0.5,) * 3 and spec.std == (0.5,) * 3
    assert InputSpec.from_processor_config({}) == spec  # the processor class's defaults are the same
    plain = InputSpec.from_processor_config({"do_rescale": False, "do_normalize": False, "resample": 3})
    assert (plain.rescale, plain.mean, plain.std, plain.interpolation) == (1.0, (0.0,) * 3, (1.0,) * 3, "bicubic")
    with pytest.raises(ValueError, match="height and width"):
        InputSpec.from_processor_config({"size": {"shortest_edge": 512}})


def test_metric_depth_at_the_model_size_matches_the_raw_network(pro_dir, estimator):
    """A 64x64 photo needs no resizing: depth must be 1 / (canonical * W / f_px) with f_px from the
    predicted field of view, f_px = W / (2 tan(fov / 2)) (Depth Pro's pinhole convention)."""
    image = _image(SIDE, SIDE, 1)
    canonical, fov = _raw_network(pro_dir, image)
    assert 0 < fov < 180
    f_px = 0.5 * SIDE / math.tan(math.radians(fov) / 2)
    expected = 1.0 / np.clip(canonical * SIDE / f_px, *INVERSE_DEPTH_RANGE)
    got = estimator(image)
    assert got.is_metric and got.focal_length_source == "depth-pro"
    assert got.focal_length_px == pytest.approx(f_px, rel=1e-5)
    np.testing.assert_allclose(got.depth_m, expected, rtol=1e-4)


def test_wide_photo_scale_and_resize_back(pro_dir, estimator):
    """A 128x64 photo whose columns come in equal pairs is a 64x64 image stretched: the bilinear resize to the
    model's 64x64 input (pixel centres at 2i + 0.5) gives the 64x64 image back exactly. Metric inverse depth is
    canonical * W / f_px = canonical * 2 tan(fov / 2), upsampled to 128 columns by bilinear interpolation (worked
    here with np.interp, source column (j + 0.5) / 2 - 0.5), then inverted."""
    small = _image(SIDE, SIDE, 2)
    wide = Image.fromarray(np.repeat(np.asarray(small), 2, axis=1))
    canonical, fov = _raw_network(pro_dir, small)
    inverse = canonical * 2.0 * math.tan(math.radians(fov) / 2)
    columns = np.clip((np.arange(2 * SIDE) + 0.5) / 2 - 0.5, 0, SIDE - 1)
    upsampled = np.stack([np.interp(columns, np.arange(SIDE), row) for row in inverse])
    got = estimator(wide)
    assert got.depth_m.shape == (SIDE, 2 * SIDE)
    assert got.focal_length_px == pytest.approx(0.5 * 2 * SIDE / math.tan(math.radians(fov) / 2), rel=1e-5)
    np.testing.assert_allclose(got.depth_m, 1.0 / np.clip(upsampled, *INVERSE_DEPTH_RANGE), rtol=1e-4)


def test_real_photo_contract(estimator, pro_dir):
    image = load_image(EXIF_PHOTO)
    width, height = image.size
    depth = estimator(image)
    assert depth.depth_m.shape == depth.disparity.shape == (height, width) == (480, 640)
    assert depth.is_metric and depth.source == f"depth-pro:{pro_dir}"
    assert np.isfinite(depth.depth_m).all() and (depth.depth_m > 0).all()
    assert depth.depth_m.min() >= 1 / INVERSE_DEPTH_RANGE[1] and depth.depth_m.max() <= 1 / INVERSE_DEPTH_RANGE[0]
    assert depth.depth_m.std() > 0
    # docs/design.md §1: d = (1/z - 1/z_far) / (1/z_near - 1/z_far), worked in float64 here.
    z = depth.depth_m.astype(np.float64)
    expected = (1.0 / z - 1.0 / z.max()) / (1.0 / z.min() - 1.0 / z.max())
    np.testing.assert_allclose(depth.disparity, expected, atol=1e-5)
    # nearer is larger: sorted by depth, disparity never rises
    order = np.argsort(z, axis=None, kind="stable")
    assert (np.diff(depth.disparity.ravel()[order].astype(np.float64)) <= 1e-6).all()
    assert depth.disparity.ravel()[order[0]] == pytest.approx(1.0) and depth.disparity.ravel()[order[-1]] == pytest.approx(0.0)
    # the predicted focal length of a ~50 degree field of view over 640 px
    assert 0.5 * width / math.tan(math.radians(60) / 2) < depth.focal_length_px < 0.5 * width / math.tan(math.radians(40) / 2)


def test_given_focal_length_scales_depth(estimator):
    """Depth Pro's metric inverse depth is canonical * W / f_px: at a fixed image, depth is proportional to
    the focal length (away from the clamp)."""
    image = load_image(EXIF_PHOTO)
    predicted = estimator(image)
    given = estimator(image, focal_length_px=2.0 * predicted.focal_length_px)
    assert given.focal_length_source == "given" and given.focal_length_px == pytest.approx(2.0 * predicted.focal_length_px)
    inside = predicted.depth_m < 1 / INVERSE_DEPTH_RANGE[0] / 2
    assert inside.mean() > 0.9
    np.testing.assert_allclose(given.depth_m[inside], 2.0 * predicted.depth_m[inside], rtol=1e-4)
    np.testing.assert_allclose(given.disparity, predicted.disparity, atol=1e-4)


def test_batched_equals_one_at_a_time(estimator):
    images = [_image(70, 40, 3), _image(33, 90, 4), _image(70, 40, 5)]
    batched = estimator.predict(images)
    for image, depth in zip(images, batched):
        single = estimator(image)
        assert depth.depth_m.shape == (image.height, image.width)
        np.testing.assert_allclose(depth.depth_m, single.depth_m, rtol=1e-4)
        assert depth.focal_length_px == pytest.approx(single.focal_length_px, rel=1e-5)


def test_without_field_of_view_head_depth_is_relative(pro_no_fov_dir):
    """No predicted and no given focal length: no metric scale, and the disparity is the min-max normalised
    canonical inverse depth (scale-free); given a focal length the same checkpoint is metric."""
    image = _image(SIDE, SIDE, 6)
    canonical, fov = _raw_network(pro_no_fov_dir, image)
    assert fov is None
    estimator = DepthProEstimator(str(pro_no_fov_dir), device="cpu")
    depth = estimator(image)
    assert depth.depth_m is None and depth.focal_length_px is None and depth.focal_length_source is None
    expected = (canonical - canonical.min()) / (canonical.max() - canonical.min())
    np.testing.assert_allclose(depth.disparity, expected, atol=1e-5)
    metric = estimator(image, focal_length_px=80.0)
    np.testing.assert_allclose(metric.depth_m, 1.0 / np.clip(canonical * SIDE / 80.0, *INVERSE_DEPTH_RANGE), rtol=1e-4)


def test_bad_inputs(estimator, pro_dir):
    with pytest.raises(ValueError, match="batch_size"):
        DepthProEstimator(str(pro_dir), device="cpu", batch_size=0)
    with pytest.raises(TypeError, match="image 1"):
        estimator.predict([_image(20, 20, 0), np.zeros((20, 20, 3), np.uint8)])
    with pytest.raises(ValueError, match="focal length 0"):
        estimator(_image(20, 20, 0), focal_length_px=-3.0)
    with pytest.raises(ValueError, match="2 focal lengths for 1 images"):
        estimator.predict([_image(20, 20, 0)], [100.0, 100.0])
    assert estimator.predict([]) == []


def test_wrong_checkpoints_are_one_line(relative_dir, tmp_path):
    with pytest.raises(ModelUnavailableError, match="not Depth Pro") as info:
        DepthProEstimator(str(relative_dir), device="cpu")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelUnavailableError) as info:
        make_depth_model("depth-pro", str(tmp_path / "missing"), "cpu")
    assert "\n" not in str(info.value) and "--depth sidecar" in str(info.value)


def test_default_estimate_is_depth_pro_with_exif_plus_depth(capsys, tmp_path, pro_dir):
    """`bokeh estimate` without --depth runs Depth Pro: with complete EXIF the record is exif+depth."""
    from bokeh_cli import main

    photo = tmp_path / "ixus.jpg"
    shutil.copy(EXIF_PHOTO, photo)
    assert main(["estimate", str(photo), "--depth-model", str(pro_dir), "--mask", "depth", "--device", "cpu", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["depth_source"] == f"depth-pro:{pro_dir}"
    assert record["provenance"] == "exif+depth" and record["focus_distance_source"] == "depth+mask"
    assert 1 / INVERSE_DEPTH_RANGE[1] <= record["z_near_m"] < record["z_far_m"] <= 1 / INVERSE_DEPTH_RANGE[0]
    assert record["bokeh_level"] is not None and record["k_metric"] > 0


def test_cli_and_build_config_depth_defaults_agree():
    from dataset_tools.build_config import BuildConfig
    from bokeh_cli import build_parser

    parser = build_parser()
    estimate = parser.parse_args(["estimate", "photo.jpg"])
    build = parser.parse_args(["build", "photos", "-o", "out"])
    assert estimate.depth == build.depth == BuildConfig().depth == "depth-pro"
    assert estimate.depth_model is None and build.depth_model is None


@pytest.mark.parametrize("offline", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": UNREACHABLE_HUB}], ids=["offline-mode", "no-answer"])
def test_offline_hub_id_fails_fast_with_one_line(tmp_path, offline):
    """With an empty cache and no hub (offline mode, or a hub address where nothing answers), the default model
    is one line naming the download command and the flag, without the download's logged retries. The timeout
    only stops a hang; speed is not measured here."""
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(offline, HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "bokeh_cli", "estimate", str(EXIF_PHOTO), "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and proc.stdout == ""
    assert "\n" not in err and err.startswith("bokeh estimate: error: cannot load depth model 'apple/DepthPro-hf'")
    assert "hf download apple/DepthPro-hf" in err and "--depth sidecar" in err


def test_hub_probe_only_for_uncached_hub_ids(tmp_path, monkeypatch):
    """load_pretrained with check_hub asks the hub once, without retries, only for a hub id missing from the
    cache: a cached repository and a local folder go straight to the loader, also when the hub does not answer;
    without check_hub the loader alone decides."""
    from huggingface_hub import constants

    from estimators.model_loading import load_pretrained

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE_HUB)
    cache = tmp_path / "hub"
    (cache / "models--tiny--cached" / "snapshots" / "abc").mkdir(parents=True)
    calls = []

    def loader(model, **kwargs):
        calls.append(model)
        return model

    names = dict(what="depth model", avoid="--depth sidecar", cache_dir=str(cache))
    assert load_pretrained(loader, "tiny/cached", check_hub=True, **names) == "tiny/cached"
    assert load_pretrained(loader, str(tmp_path), check_hub=True, **names) == str(tmp_path)
    with pytest.raises(ModelUnavailableError, match=f"the hub {UNREACHABLE_HUB} does not answer") as info:
        load_pretrained(loader, "tiny/missing", check_hub=True, **names)
    assert "hf download tiny/missing" in str(info.value) and "\n" not in str(info.value)
    assert load_pretrained(loader, "tiny/missing", **names) == "tiny/missing"
    assert calls == ["tiny/cached", str(tmp_path), "tiny/missing"]
