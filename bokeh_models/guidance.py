"""Classifier-free guidance arithmetic of the sampling pipelines (K guided with the prompt or on its own)."""
from __future__ import annotations

from typing import Optional

import torch


def guided(positive: torch.Tensor, negative: Optional[torch.Tensor], scale: float,
           no_bokeh: Optional[torch.Tensor] = None, bokeh_scale: Optional[float] = None) -> torch.Tensor:
    """Classifier-free guidance, optionally with its own scale for K (as InstructPix2Pix separates its
    two conditions): ``negative + scale * (no_bokeh - negative) + bokeh_scale * (positive - no_bokeh)``,
    where ``positive`` has the prompt and K, ``no_bokeh`` the prompt and no K, ``negative`` neither.
    Without ``no_bokeh`` K is guided like the prompt: ``negative + scale * (positive - negative)``;
    without ``negative`` the prompt is not guided."""
    if (no_bokeh is None) != (bokeh_scale is None):
        raise ValueError("no_bokeh and bokeh_scale go together: give both or neither")
    conditioned = positive if no_bokeh is None else no_bokeh
    out = conditioned if negative is None else negative + scale * (conditioned - negative)
    if no_bokeh is not None:
        out = out + bokeh_scale * (positive - no_bokeh)
    return out
