"""Bokeh Diffusion models: bokeh adapters for diffusers UNets and FLUX transformers, their attention
processors, the bokeh embedding, guidance arithmetic and the tiny model (below pipelines and trainer).

The adapters are imported on first use, so that importing this package does not import torch or diffusers.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "BokehUNetAdapter": "bokeh_models.unet_adapter",
    "BokehFluxAdapter": "bokeh_models.flux_adapter",
    "BokehEmbedding": "bokeh_models.bokeh_embedding",
    "bokeh_condition": "bokeh_models.bokeh_embedding",
    "pivot_index": "bokeh_models.attention_processors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bokeh_models' has no attribute {name!r}")
