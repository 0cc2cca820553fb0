"""Synthetic defocus: re-render all-in-focus photos at any bokeh level K, occlusion-aware, in linear light.

``render`` (one image), ``make_group`` (a contrastive group) and ``focus_from_mask`` (focal plane from a
subject mask) are imported on first use, so that ``synth_blur.cli`` can be registered without torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "render": "synth_blur.renderer",
    "make_group": "synth_blur.group",
    "focus_from_mask": "synth_blur.group",
    "RenderGroup": "synth_blur.group",
    "GroupRender": "synth_blur.group",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'synth_blur' has no attribute {name!r}")
