"""Bokeh Diffusion model pieces and trainer: bokeh adapters for diffusers UNets and FLUX transformers.

``BokehUNetAdapter`` and ``BokehFluxAdapter`` are imported on first use, so that a ``trainer.cli``
module can be registered with the ``bokeh`` command without importing torch or diffusers.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "BokehUNetAdapter": "trainer.unet_adapter",
    "BokehFluxAdapter": "trainer.flux_adapter",
    "BokehEmbedding": "trainer.bokeh_embedding",
    "bokeh_condition": "trainer.bokeh_embedding",
    "pivot_index": "trainer.attention_processors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
