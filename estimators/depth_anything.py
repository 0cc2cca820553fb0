"""Monocular depth from Depth Anything (V1/V2, relative or metric) as :class:`DepthMap` objects."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from estimators.backends import DEFAULT_DEPTH_MODELS
from estimators.depth import DepthMap, disparity_from_depth, normalize_disparity
from estimators.model_loading import load_pretrained, resolve_device

#: Relative (inverse-depth) model; metric ones such as
#: "depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf" are recognised from their config.
DEFAULT_DEPTH_MODEL = DEFAULT_DEPTH_MODELS["depth-anything"]

#: Metric outputs are clamped to at least this depth (metres) so that 1/z stays finite.
MIN_METRIC_DEPTH_M = 1e-3


def load_image_processor(model: str) -> Any:
    """``AutoImageProcessor.from_pretrained(model)``; where it refuses for want of torchvision
    (transformers 5.4-5.17 did, even for processors with a PIL backend), the config's processor class
    with the PIL backend (``<type>Pil``) instead."""
    import transformers
    from transformers import AutoImageProcessor, ImageProcessingMixin

    try:
        return AutoImageProcessor.from_pretrained(model)
    except ImportError:
        config, _ = ImageProcessingMixin.get_image_processor_dict(model)
        pil_class = getattr(transformers, f"{config.get('image_processor_type')}Pil", None)
        if pil_class is None:
            raise
        return pil_class.from_pretrained(model)


class DepthAnythingEstimator:
    """Batched depth estimation with a Depth Anything checkpoint (hub id or local directory).

    A relative model's output (inverse depth, larger = nearer) becomes normalised disparity with no
    metric depth; a metric model's output is depth in metres, from which disparity is derived.
    Which one a checkpoint is comes from its config (``depth_estimation_type``) unless ``metric`` is given.
    """

    def __init__(
        self,
        model: str = DEFAULT_DEPTH_MODEL,
        device: Optional[str | torch.device] = None,
        batch_size: int = 4,
        dtype: Optional[torch.dtype] = None,
        metric: Optional[bool] = None,
    ) -> None:
        from transformers import AutoModelForDepthEstimation

        self.model_name, self.batch_size, self.device, self.dtype = runtime_settings(model, device, batch_size, dtype)
        self.processor = load_pretrained(load_image_processor, self.model_name, **DEPTH_MODEL_LOADING)
        network = load_pretrained(AutoModelForDepthEstimation.from_pretrained, self.model_name, **DEPTH_MODEL_LOADING)
        self.model = network.to(device=self.device, dtype=self.dtype).eval()
        config_metric = getattr(self.model.config, "depth_estimation_type", "relative") == "metric"
        self.metric = config_metric if metric is None else bool(metric)
        self.source = f"depth-anything:{self.model_name}"

    def __call__(self, image: Image.Image) -> DepthMap:
        """Depth of one image, at the image's size."""
        return self.predict([image])[0]

    def predict(self, images: Sequence[Image.Image]) -> list[DepthMap]:
        """Depth of each image, each at its own size; images are run ``batch_size`` at a time.

        The processor keeps each image's aspect ratio, so within a chunk the images whose input
        tensors differ in shape run as separate sub-batches.
        """
        require_pil_images(images)
        results: list[DepthMap] = []
        for start in range(0, len(images), self.batch_size):
            results.extend(self._predict_chunk(images[start : start + self.batch_size]))
        return results

    def _predict_chunk(self, images: Sequence[Image.Image]) -> list[DepthMap]:
        pixels = [self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"] for image in images]
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, tensor in enumerate(pixels):
            by_shape[tuple(tensor.shape)].append(index)
        results: dict[int, DepthMap] = {}
        with torch.inference_mode():
            for indices in by_shape.values():
                batch = torch.cat([pixels[i] for i in indices]).to(device=self.device, dtype=self.dtype)
                predicted = self.model(pixel_values=batch).predicted_depth
                for row, index in enumerate(indices):
                    width, height = images[index].size
                    results[index] = self._depth_map(resize_prediction(predicted[row], height, width))
        return [results[i] for i in range(len(images))]

    def _depth_map(self, output: np.ndarray) -> DepthMap:
        if self.metric:
            depth_m = np.maximum(output, MIN_METRIC_DEPTH_M).astype(np.float32)
            return DepthMap(disparity_from_depth(depth_m), depth_m=depth_m, source=self.source)
        return DepthMap(normalize_disparity(output), depth_m=None, source=self.source)


#: How a depth backend loads its weights: what it is, the flag that avoids it, a fast offline check of a hub id.
DEPTH_MODEL_LOADING = dict(what="depth model", avoid="--depth sidecar", check_hub=True)


def runtime_settings(
    model: str, device: Optional[str | torch.device], batch_size: int, dtype: Optional[torch.dtype]
) -> tuple[str, int, torch.device, torch.dtype]:
    """A depth backend's checked settings: model name, batch size (at least 1), device, dtype (float32 by default)."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return str(model), int(batch_size), resolve_device(device), dtype if dtype is not None else torch.float32


def require_pil_images(images: Sequence[Any]) -> None:
    """Raise TypeError naming the first item of ``images`` that is not a PIL image."""
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"image {i} is a {type(image).__name__}, expected a PIL image")


def resize_prediction(prediction: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Bilinear resize of one HxW prediction to (height, width), as float32 numpy (no overshoot)."""
    resized = torch.nn.functional.interpolate(
        prediction.float()[None, None], size=(height, width), mode="bilinear", align_corners=False
    )
    return resized[0, 0].cpu().numpy()
