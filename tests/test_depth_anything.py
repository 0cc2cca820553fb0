"""DepthAnythingEstimator on tiny random-weight checkpoints loaded from disk (no network)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from estimators.backends import make_depth_model
from estimators.depth_anything import DepthAnythingEstimator
from estimators.model_loading import ModelUnavailableError


def _image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((width, height), Image.BILINEAR)


def test_relative_sizes_range_and_kind(relative_dir):
    estimator = DepthAnythingEstimator(str(relative_dir), device="cpu", batch_size=2)
    assert estimator.metric is False
    images = [_image(70, 40, 0), _image(33, 90, 1), _image(70, 40, 2)]
    maps = estimator.predict(images)
    assert len(maps) == 3
    for image, depth in zip(images, maps):
        assert depth.disparity.shape == (image.height, image.width)
        assert depth.depth_m is None
        assert depth.source == f"depth-anything:{relative_dir}"
        assert depth.disparity.min() == 0.0 and depth.disparity.max() == 1.0
        assert np.isfinite(depth.disparity).all()


def test_batched_equals_one_at_a_time(relative_dir):
    estimator = DepthAnythingEstimator(str(relative_dir), device="cpu", batch_size=4)
    images = [_image(70, 40, 3), _image(56, 56, 4), _image(70, 40, 5), _image(120, 31, 6)]
    batched = estimator.predict(images)
    single = [estimator(image) for image in images]
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a.disparity, b.disparity, atol=1e-4)


def test_relative_output_is_min_max_of_the_raw_model(relative_dir):
    """At the processor's own size (56x28 stays 56x28) no resizing happens: the disparity must be the
    min-max normalised raw output of the network, run here directly through transformers."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    image = _image(56, 28, 7)
    processor = AutoImageProcessor.from_pretrained(relative_dir)
    network = AutoModelForDepthEstimation.from_pretrained(relative_dir).eval()
    with torch.no_grad():
        raw = network(**processor(images=image, return_tensors="pt")).predicted_depth[0].double().numpy()
    assert raw.shape == (28, 56)
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    got = DepthAnythingEstimator(str(relative_dir), device="cpu")(image).disparity
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_metric_depth_and_disparity_formula(metric_dir):
    estimator = DepthAnythingEstimator(str(metric_dir), device="cpu")
    assert estimator.metric is True
    for image in (_image(64, 48, 8), _image(30, 75, 9)):
        depth = estimator(image)
        assert depth.depth_m.shape == depth.disparity.shape == (image.height, image.width)
        assert (depth.depth_m > 0).all()
        assert depth.depth_m.max() <= 20.0  # sigmoid head times max_depth
        # docs/design.md §1: d = (1/z - 1/z_far) / (1/z_near - 1/z_far), worked in float64 here.
        z = depth.depth_m.astype(np.float64)
        z_near, z_far = z.min(), z.max()
        expected = (1.0 / z - 1.0 / z_far) / (1.0 / z_near - 1.0 / z_far)
        np.testing.assert_allclose(depth.disparity, expected, atol=1e-5)
        # nearer pixels have larger disparity
        assert depth.disparity[np.unravel_index(z.argmin(), z.shape)] == pytest.approx(1.0)


def test_metric_override(metric_dir):
    estimator = DepthAnythingEstimator(str(metric_dir), device="cpu", metric=False)
    depth = estimator(_image(40, 40, 10))
    assert depth.depth_m is None and depth.disparity.max() == 1.0


def test_missing_model_names_path_and_flag(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelUnavailableError) as info:
        DepthAnythingEstimator(str(missing), device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert str(missing) in message and "--depth sidecar" in message


def test_metric_backend_needs_a_metric_checkpoint(relative_dir, metric_dir):
    """--depth depth-anything-metric refuses a relative checkpoint (its output is no depth in metres)."""
    with pytest.raises(ModelUnavailableError, match="relative model.*--depth depth-anything") as info:
        make_depth_model("depth-anything-metric", str(relative_dir), "cpu")
    assert "\n" not in str(info.value)
    assert make_depth_model("depth-anything-metric", str(metric_dir), "cpu").metric is True
    assert make_depth_model("depth-anything", str(metric_dir), "cpu").metric is True


def test_bad_inputs(relative_dir):
    with pytest.raises(ValueError, match="batch_size"):
        DepthAnythingEstimator(str(relative_dir), device="cpu", batch_size=0)
    estimator = DepthAnythingEstimator(str(relative_dir), device="cpu")
    with pytest.raises(TypeError, match="image 1"):
        estimator.predict([_image(20, 20, 0), np.zeros((20, 20, 3), np.uint8)])
    assert estimator.predict([]) == []


@pytest.mark.skipif(not hasattr(__import__("transformers"), "DPTImageProcessorPil"), reason="transformers 4.x: no PIL-backend classes")
def test_processor_without_torchvision_falls_back_to_the_pil_class(relative_dir, monkeypatch):
    """transformers 5.4-5.17 refused AutoImageProcessor without torchvision (an empty ImportError):
    the estimator then loads the config's processor class with the PIL backend. At the processor's own
    size (no resizing, so either backend gives the same input) the depth is the same."""
    import transformers

    image = _image(56, 28, 8)
    expected = DepthAnythingEstimator(str(relative_dir), device="cpu")(image).disparity

    class Refusing:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise ImportError("")

    monkeypatch.setattr(transformers, "AutoImageProcessor", Refusing)
    fallback = DepthAnythingEstimator(str(relative_dir), device="cpu")
    assert type(fallback.processor).__name__ == "DPTImageProcessorPil"
    np.testing.assert_allclose(fallback(image).disparity, expected, atol=1e-5)
