"""Names of the depth and mask backends, and the factories that build their models (lazily imported)."""
from __future__ import annotations

from typing import Any, Optional

DEPTH_BACKENDS = ("sidecar", "depth-anything", "none")
MASK_BACKENDS = ("depth", "sam", "sidecar", "none")


def make_depth_model(backend: str, model: Optional[str] = None, device: Optional[str] = None) -> Any:
    """The depth model object for a model-based backend, None for sidecar/none."""
    if backend not in DEPTH_BACKENDS:
        raise ValueError(f"unknown depth backend {backend!r}; choose from {', '.join(DEPTH_BACKENDS)}")
    if backend != "depth-anything":
        return None
    from .depth_anything import DEFAULT_DEPTH_MODEL, DepthAnythingEstimator

    return DepthAnythingEstimator(model or DEFAULT_DEPTH_MODEL, device=device)


def make_masker(backend: str, model: Optional[str] = None, device: Optional[str] = None) -> Any:
    """A callable ``(image, disparity) -> SubjectMask`` for depth/sam, None for sidecar/none."""
    if backend not in MASK_BACKENDS:
        raise ValueError(f"unknown mask backend {backend!r}; choose from {', '.join(MASK_BACKENDS)}")
    if backend == "sam":
        from .mask import DEFAULT_SAM_MODEL, SamMasker

        return SamMasker(model or DEFAULT_SAM_MODEL, device=device)
    if backend == "depth":
        from .mask import DepthMasker

        return DepthMasker()
    return None
