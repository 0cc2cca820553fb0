"""The public renderer: an all-in-focus image plus disparity in, the same image with lens defocus out.

Blur radius of a pixel in px: ``bokeh_level * |disparity - focus_disparity| * min(H, W) / 512``
(docs/design.md §1). Work happens in linear light (``gamma`` in, ``1 / gamma`` out) with the layered,
occlusion-aware compositor of :mod:`synth_blur.composite`, in torch, on CPU or CUDA alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from estimators.lens import REFERENCE_SHORT_SIDE
from estimators.model_loading import resolve_device

from .aperture import Aperture, blade_count
from .composite import LinearImage, render_linear
from .layers import FOCUS_RADIUS, plan_layers

ArrayLike = Union[np.ndarray, torch.Tensor]

#: Highlight boost acts on pixels whose brightest encoded channel exceeds this ...
HIGHLIGHT_THRESHOLD = 0.8
#: ... and reaches full strength on pixels blurred by at least this radius (px) beyond FOCUS_RADIUS.
HIGHLIGHT_FULL_RADIUS = 2.0


def blur_radius_scale(height: int, width: int) -> float:
    """Pixels of blur radius per unit of K x |d - d_focus| at this image size."""
    return min(height, width) / REFERENCE_SHORT_SIDE


def _finite_number(name: str, value: float, low: float, high: float = math.inf) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(number) and low <= number <= high):
        bounds = f">= {low}" if math.isinf(high) else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be a finite number {bounds}, got {value!r}")
    return number


def _as_tensor(array: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.detach()
    if isinstance(array, np.ndarray):
        contiguous = np.ascontiguousarray(array)
        return torch.from_numpy(contiguous if contiguous.flags.writeable else contiguous.copy())
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(array).__name__}")


def _check_image(image: torch.Tensor) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be HxWx3, got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return
    if not image.dtype.is_floating_point:
        raise ValueError(f"image must be uint8 or float in [0, 1], got dtype {image.dtype}")
    low, high = (float(v) for v in torch.aminmax(image))
    if not (math.isfinite(low) and math.isfinite(high)) or low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(f"float image values must lie in [0, 1], got range [{low:.4g}, {high:.4g}]")


def _check_disparity(disparity: torch.Tensor, shape: tuple[int, int]) -> None:
    if tuple(disparity.shape) != shape:
        raise ValueError(f"disparity shape {tuple(disparity.shape)} does not match the image's {shape}")
    if not disparity.dtype.is_floating_point:
        raise ValueError(f"disparity must be a float map in [0, 1], got dtype {disparity.dtype}")
    low, high = (float(v) for v in torch.aminmax(disparity))
    if not (math.isfinite(low) and math.isfinite(high)) or low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(f"disparity must be finite and in [0, 1] (larger = nearer), got range [{low:.4g}, {high:.4g}]")


def _boost_highlights(linear: torch.Tensor, encoded: torch.Tensor, radius: torch.Tensor, boost: float) -> None:
    """Multiply bright out-of-focus pixels by up to ``1 + boost`` in linear light (clipped highlights), in place."""
    brightness = ((encoded.amax(0) - HIGHLIGHT_THRESHOLD) / (1.0 - HIGHLIGHT_THRESHOLD)).clamp(0.0, 1.0) ** 2
    defocus = ((radius.abs() - FOCUS_RADIUS) / HIGHLIGHT_FULL_RADIUS).clamp(0.0, 1.0)
    linear.mul_(1.0 + boost * brightness * defocus)


@dataclass
class _Source:
    """What every render of one image shares: the input checked and decoded to linear light once."""

    image: ArrayLike
    dtype: torch.dtype
    linear: LinearImage
    encoded: torch.Tensor  # the input's channels [3, H, W] as given: uint8, or float in [0, 1]
    offset: torch.Tensor  # HxW disparity - focus


def _checked(image: ArrayLike, disparity: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """The image and disparity as tensors, refused with a one-line ValueError when they are not usable."""
    source = _as_tensor(image, "image")
    _check_image(source)
    disp = _as_tensor(disparity, "disparity")
    _check_disparity(disp, tuple(source.shape[:2]))
    return source, disp


def _prepare(image: ArrayLike, source: torch.Tensor, disp: torch.Tensor, focus: float, gamma: float,
             device: Optional[str | torch.device]) -> _Source:
    """Decode a checked image to linear light (alpha 1) on the work device, and its offset from the focal plane."""
    height, width = source.shape[:2]
    work = resolve_device(device)
    channels = source.to(work).permute(2, 0, 1)
    premult = torch.empty((4, height, width), dtype=torch.float32, device=work)
    premult[3].fill_(1.0)
    linear = premult[:3]
    if source.dtype == torch.uint8:
        encoded = channels
        # Decoding through a 256-entry table: one lookup per pixel instead of a power.
        table = (torch.arange(256, dtype=torch.float32, device=work) / 255.0) ** gamma
        torch.index_select(table, 0, channels.reshape(-1).int(), out=linear.view(-1))
    else:
        encoded = channels.to(torch.float32).clamp(0.0, 1.0)
        torch.pow(encoded, gamma, out=linear)
    offset = disp.to(work, torch.float32).clamp(0.0, 1.0).sub_(focus)
    return _Source(image, source.dtype, LinearImage(premult), encoded, offset)


def _render_level(source: _Source, level: float, gamma: float, boost: float, aperture: Aperture) -> ArrayLike:
    """One render of a prepared image at bokeh level ``level`` > 0."""
    _, height, width = source.linear.premult.shape
    radius = source.offset.mul(level).mul_(blur_radius_scale(height, width))
    linear = source.linear
    if boost > 0:
        linear = LinearImage(linear.premult.clone())
        encoded = source.encoded.float() / 255.0 if source.dtype == torch.uint8 else source.encoded
        _boost_highlights(linear.premult[:3], encoded, radius, boost)
    out = render_linear(linear, plan_layers(radius), aperture).clamp_(0.0, 1.0).pow_(1.0 / gamma)
    if source.dtype == torch.uint8:
        out.mul_(255.0).round_()
    out = out.new_empty((height, width, 3), dtype=source.dtype).copy_(out.permute(1, 2, 0))
    if isinstance(source.image, torch.Tensor):
        return out.to(source.image.device)
    return out.cpu().numpy()


def render_levels(
    image: ArrayLike,
    disparity: ArrayLike,
    levels: Sequence[float],
    focus_disparity: float,
    *,
    gamma: float = 2.2,
    highlight_boost: float = 0.0,
    aperture: Aperture = "disc",
    device: Optional[str | torch.device] = None,
) -> list[ArrayLike]:
    """``render`` at each of ``levels``, in order: the image is checked and decoded once for all of them."""
    chosen = [_finite_number("bokeh_level", level, 0.0) for level in levels]
    focus = _finite_number("focus_disparity", focus_disparity, 0.0, 1.0)
    gamma = _finite_number("gamma", gamma, 1e-3)
    boost = _finite_number("highlight_boost", highlight_boost, 0.0)
    blade_count(aperture)
    source, disp = _checked(image, disparity)
    prepared = _prepare(image, source, disp, focus, gamma, device) if any(chosen) else None
    return [
        (image.clone() if isinstance(image, torch.Tensor) else image.copy()) if level == 0.0
        else _render_level(prepared, level, gamma, boost, aperture)
        for level in chosen
    ]


def render(
    image: ArrayLike,
    disparity: ArrayLike,
    bokeh_level: float,
    focus_disparity: float,
    *,
    gamma: float = 2.2,
    highlight_boost: float = 0.0,
    aperture: Aperture = "disc",
    device: Optional[str | torch.device] = None,
) -> ArrayLike:
    """Re-render an all-in-focus image with the defocus of bokeh level K focused at ``focus_disparity``.

    ``image`` is HxWx3 uint8 or float in [0, 1] (numpy or torch); ``disparity`` HxW in [0, 1], larger
    = nearer. Returns the same type and dtype (torch results on the input's device). K = 0 returns
    an unchanged copy. ``highlight_boost`` > 0 brightens clipped highlights out of focus; ``aperture``
    is "disc" or a blade count >= 3. ``device`` None = CUDA when present.
    """
    return render_levels(image, disparity, [bokeh_level], focus_disparity, gamma=gamma,
                         highlight_boost=highlight_boost, aperture=aperture, device=device)[0]
