"""Metric monocular depth and the focal length from Apple's Depth Pro, as :class:`DepthMap` objects."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from estimators.backends import DEFAULT_DEPTH_MODELS
from estimators.depth import DepthMap, disparity_from_depth, normalize_disparity
from estimators.depth_anything import DEPTH_MODEL_LOADING, require_pil_images, resize_prediction, runtime_settings
from estimators.model_loading import ModelUnavailableError, load_pretrained

DEFAULT_DEPTH_PRO_MODEL = DEFAULT_DEPTH_MODELS["depth-pro"]

#: Metric inverse depth (1/m) is clamped to this range before inverting, as Depth Pro's own
#: post-processing does, so depth_m lies in [1e-4, 1e4] m (the far end is sky).
INVERSE_DEPTH_RANGE = (1e-4, 1e4)

#: DepthProImageProcessor's class defaults, for the keys a checkpoint's preprocessor_config.json leaves out
#: (the class itself needs torchvision, which the project does not depend on).
_PROCESSOR_DEFAULTS = {
    "size": {"height": 1536, "width": 1536},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
}
#: PIL resampling codes of the processor config, as torch interpolation modes.
_INTERPOLATION = {0: "nearest", 2: "bilinear", 3: "bicubic"}


@dataclass
class DepthProMap(DepthMap):
    """A depth map plus the focal length in px (along the photo's width) that set its metric scale.

    ``focal_length_source`` is "depth-pro" when the model's field-of-view head predicted it, "given"
    when the caller passed it; both are None when there was none (then the map is relative).
    """

    focal_length_px: Optional[float] = None
    focal_length_source: Optional[str] = None


@dataclass(frozen=True)
class InputSpec:
    """How the checkpoint's image processor turns a photo into the network input: resize to
    (height, width), then ``(pixel * rescale - mean) / std`` per channel."""

    height: int
    width: int
    rescale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str

    @classmethod
    def from_processor_config(cls, config: dict[str, Any]) -> "InputSpec":
        """The spec of a DepthProImageProcessor config dict (preprocessor_config.json)."""
        merged = {**_PROCESSOR_DEFAULTS, **config}
        size = merged["size"]
        if not isinstance(size, dict) or not {"height", "width"} <= set(size):
            raise ValueError(f"the processor's size must give height and width, got {size!r}")
        if merged["resample"] not in _INTERPOLATION:
            raise ValueError(f"unsupported processor resample {merged['resample']!r}")
        normalize = bool(merged["do_normalize"])
        return cls(
            height=int(size["height"]),
            width=int(size["width"]),
            rescale=float(merged["rescale_factor"]) if merged["do_rescale"] else 1.0,
            mean=tuple(float(v) for v in merged["image_mean"]) if normalize else (0.0, 0.0, 0.0),
            std=tuple(float(v) for v in merged["image_std"]) if normalize else (1.0, 1.0, 1.0),
            interpolation=_INTERPOLATION[merged["resample"]],
        )


def read_input_spec(model: str) -> InputSpec:
    """The :class:`InputSpec` of a checkpoint (hub id or local directory)."""
    from transformers import ImageProcessingMixin

    config, _ = ImageProcessingMixin.get_image_processor_dict(model)
    return InputSpec.from_processor_config(config)


def focal_length_from_fov(fov_deg: Optional[float], width: int) -> Optional[float]:
    """Focal length in px of an image ``width`` px wide whose horizontal field of view is ``fov_deg``;
    None when the angle is missing or outside (0, 180) degrees."""
    if fov_deg is None or not math.isfinite(fov_deg) or not 0.0 < fov_deg < 180.0:
        return None
    return 0.5 * width / math.tan(math.radians(0.5 * fov_deg))


class DepthProEstimator:
    """Batched metric depth with a Depth Pro checkpoint (hub id or local directory).

    The network predicts canonical inverse depth at its fixed input size and the horizontal field of
    view; metric inverse depth is canonical * W / f_px, with f_px from that field of view (or given by
    the caller, e.g. from EXIF). A checkpoint without the field-of-view head, given no focal length,
    yields relative depth: normalised disparity does not depend on the unknown scale.
    """

    def __init__(
        self,
        model: str = DEFAULT_DEPTH_PRO_MODEL,
        device: Optional[str | torch.device] = None,
        batch_size: int = 4,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        from transformers import AutoConfig, DepthProForDepthEstimation

        self.model_name, self.batch_size, self.device, self.dtype = runtime_settings(model, device, batch_size, dtype)
        config = load_pretrained(AutoConfig.from_pretrained, self.model_name, **DEPTH_MODEL_LOADING)
        if config.model_type != "depth_pro":
            raise ModelUnavailableError(
                f"depth model '{self.model_name}' is a {config.model_type} model, not Depth Pro; "
                "pass a Depth Pro checkpoint or choose the --depth backend of that model"
            )
        self.input_spec = load_pretrained(read_input_spec, self.model_name, **DEPTH_MODEL_LOADING)
        network = load_pretrained(
            DepthProForDepthEstimation.from_pretrained, self.model_name, config=config, **DEPTH_MODEL_LOADING
        )
        self.model = network.to(device=self.device, dtype=self.dtype).eval()
        self.source = f"depth-pro:{self.model_name}"

    def __call__(self, image: Image.Image, focal_length_px: Optional[float] = None) -> DepthProMap:
        """Depth of one image, at the image's size; ``focal_length_px`` overrides the predicted one."""
        return self.predict([image], None if focal_length_px is None else [focal_length_px])[0]

    def predict(
        self, images: Sequence[Image.Image], focal_lengths_px: Optional[Sequence[Optional[float]]] = None
    ) -> list[DepthProMap]:
        """Depth of each image, each at its own size, ``batch_size`` at a time.

        ``focal_lengths_px`` (one per image, None where unknown) replaces the predicted focal length.
        """
        require_pil_images(images)
        if focal_lengths_px is None:
            focal_lengths_px = [None] * len(images)
        if len(focal_lengths_px) != len(images):
            raise ValueError(f"{len(focal_lengths_px)} focal lengths for {len(images)} images")
        for i, focal in enumerate(focal_lengths_px):
            if focal is not None and not (math.isfinite(focal) and focal > 0):
                raise ValueError(f"focal length {i} must be a positive number of pixels, got {focal}")
        results: list[DepthProMap] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.cat([self._pixel_values(image) for image in chunk]).to(dtype=self.dtype)
            with torch.inference_mode():
                output = self.model(pixel_values=batch)
            for row, image in enumerate(chunk):
                fov = None if output.field_of_view is None else float(output.field_of_view[row])
                results.append(self._depth_map(output.predicted_depth[row], fov, focal_lengths_px[start + row], image.size))
        return results

    def _pixel_values(self, image: Image.Image) -> torch.Tensor:
        """The 1x3xHxW network input of one image. Resizing before the per-channel affine normalisation
        gives the processor's result (normalise, then resize): interpolation weights sum to one."""
        spec = self.input_spec
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).to(self.device)
        pixels = pixels.permute(2, 0, 1)[None].float()
        corners = {} if spec.interpolation == "nearest" else {"align_corners": False}
        pixels = torch.nn.functional.interpolate(pixels, size=(spec.height, spec.width), mode=spec.interpolation, **corners)
        mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1)
        return (pixels * spec.rescale - mean) / std

    def _depth_map(
        self, canonical: torch.Tensor, fov_deg: Optional[float], focal_px: Optional[float], size: tuple[int, int]
    ) -> DepthProMap:
        width, height = size
        source = "given" if focal_px is not None else "depth-pro"
        if focal_px is None:
            focal_px = focal_length_from_fov(fov_deg, width)
        if focal_px is None:
            disparity = normalize_disparity(resize_prediction(canonical, height, width))
            return DepthProMap(disparity, depth_m=None, source=self.source)
        inverse = resize_prediction(canonical.float() * (width / focal_px), height, width).astype(np.float64)
        depth_m = (1.0 / np.clip(inverse, *INVERSE_DEPTH_RANGE)).astype(np.float32)
        return DepthProMap(
            disparity_from_depth(depth_m),
            depth_m=depth_m,
            source=self.source,
            focal_length_px=float(focal_px),
            focal_length_source=source,
        )
