"""Contrastive groups: one all-in-focus pivot and its re-renders at several bokeh levels, sharing a group id.

docs/design.md §2: the pivot is the AIF photo (K = 0); the renders use K ~ U(1, 30) unless levels are
given, all focused on the subject (median disparity of its nearer half) unless a focus is given.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from estimators.depth import focus_disparity_from_mask as focus_from_mask
from estimators.lens import RENDER_LEVEL_RANGE

from .aperture import Aperture, blade_count
from .renderer import ArrayLike, render_levels

#: Renders per group when levels are drawn.
DEFAULT_GROUP_SIZE = 4

__all__ = ["GroupRender", "RenderGroup", "focus_from_mask", "make_group"]


@dataclass
class GroupRender:
    """One member of a group: its image, its bokeh level K and every parameter it was rendered with."""

    image: ArrayLike
    bokeh_level: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RenderGroup:
    """A pivot (the all-in-focus input, K = 0) and its renders; every member carries ``group_id``."""

    group_id: str
    focus_disparity: float
    pivot: GroupRender
    renders: list[GroupRender]

    @property
    def members(self) -> list[GroupRender]:
        """The pivot first, then the renders."""
        return [self.pivot, *self.renders]


def _as_numpy(array: ArrayLike) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def group_id_for(image: ArrayLike, disparity: ArrayLike, seed: int) -> str:
    """A stable 16-hex-digit id from the pixels, the disparity and the seed."""
    digest = hashlib.sha256()
    for array in (image, disparity):
        data = np.ascontiguousarray(_as_numpy(array))
        digest.update(str((data.shape, data.dtype.str)).encode())
        digest.update(data.tobytes())
    digest.update(str(int(seed)).encode())
    return digest.hexdigest()[:16]


def draw_levels(seed: int, count: int = DEFAULT_GROUP_SIZE, low: float = RENDER_LEVEL_RANGE[0], high: float = RENDER_LEVEL_RANGE[1]) -> list[float]:
    """``count`` bokeh levels from U(low, high), rounded to 0.01 and sorted, reproducible from ``seed``."""
    if count < 1:
        raise ValueError(f"a group needs at least one render, got count={count}")
    rng = np.random.default_rng(int(seed))
    return sorted(round(float(k), 2) for k in rng.uniform(low, high, size=count))


def make_group(
    image: ArrayLike,
    disparity: ArrayLike,
    mask: Optional[ArrayLike],
    levels: Optional[Sequence[float]] = None,
    seed: int = 0,
    *,
    count: int = DEFAULT_GROUP_SIZE,
    focus_disparity: Optional[float] = None,
    gamma: float = 2.2,
    highlight_boost: float = 0.0,
    aperture: Aperture = "disc",
    device: Optional[str | torch.device] = None,
    group_id: Optional[str] = None,
) -> RenderGroup:
    """Render one contrastive group of an AIF image: the pivot plus one render per bokeh level.

    ``levels`` None draws ``count`` levels from U(1, 30) with ``seed``. The focal plane comes from
    ``mask`` (the subject, HxW bool) unless ``focus_disparity`` is given. Deterministic for a seed.
    """
    if focus_disparity is None:
        if mask is None:
            raise ValueError("make_group needs a subject mask or an explicit focus_disparity")
        mask_np = _as_numpy(mask).astype(bool)
        disp_np = _as_numpy(disparity)
        if mask_np.shape != disp_np.shape:
            raise ValueError(f"mask shape {mask_np.shape} does not match the disparity's {disp_np.shape}")
        focus_disparity = focus_from_mask(disp_np, mask_np)
    focus = float(focus_disparity)
    chosen = draw_levels(seed, count) if levels is None else [float(k) for k in levels]
    if not chosen:
        raise ValueError("levels is empty: a group needs at least one render")
    gid = group_id or group_id_for(image, disparity, seed)
    common = {
        "group_id": gid,
        "focus_disparity": focus,
        "gamma": float(gamma),
        "highlight_boost": float(highlight_boost),
        "aperture": "disc" if blade_count(aperture) == 0 else blade_count(aperture),
        "seed": int(seed),
        "levels_drawn": levels is None,
    }
    images = render_levels(image, disparity, chosen, focus, gamma=gamma, highlight_boost=highlight_boost,
                           aperture=aperture, device=device)
    renders = [GroupRender(rendered, k, {**common, "bokeh_level": k, "pivot": False}) for rendered, k in zip(images, chosen)]
    pivot_image = image.clone() if isinstance(image, torch.Tensor) else np.array(image, copy=True)
    pivot = GroupRender(pivot_image, 0.0, {**common, "bokeh_level": 0.0, "pivot": True})
    return RenderGroup(gid, focus, pivot, renders)
