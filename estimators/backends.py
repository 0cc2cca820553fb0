"""Names of the depth and mask backends, and the factories that build their models (lazily imported)."""
from __future__ import annotations

from typing import Any, Optional

#: Depth backends that run a model, with the model each loads when no ``--depth-model`` is given.
DEFAULT_DEPTH_MODELS = {
    "depth-pro": "apple/DepthPro-hf",
    "depth-anything": "depth-anything/Depth-Anything-V2-Small-hf",
    "depth-anything-metric": "depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf",
}
MODEL_DEPTH_BACKENDS = tuple(DEFAULT_DEPTH_MODELS)
DEPTH_BACKENDS = (*MODEL_DEPTH_BACKENDS, "sidecar", "none")
#: Metric depth gives the scene's depth range, so the unified K (docs/design.md §1) of photos with EXIF.
DEFAULT_DEPTH_BACKEND = "depth-pro"
MASK_BACKENDS = ("depth", "sam", "sidecar", "none")

_DEPTH_BACKEND_HELP = {
    "depth-pro": "Apple Depth Pro, metric depth in metres and the focal length",
    "depth-anything": "Depth Anything V2, relative depth (no metric scale; metric checkpoints are recognised)",
    "depth-anything-metric": "Depth Anything V2 Metric, depth in metres (the outdoor model by default; an Indoor "
    "checkpoint suits rooms)",
    "sidecar": "<stem>.depth.npy (metres), else <stem>.disparity.npy or <stem>.disparity.png (relative) next to the photo",
    "none": "no depth",
}


def depth_backend_help(choices: tuple[str, ...]) -> str:
    """The ``--depth`` help text: what each of ``choices`` is."""
    described = (
        f"{name}: {_DEPTH_BACKEND_HELP[name]}" + (" (default)" if name == DEFAULT_DEPTH_BACKEND else "") for name in choices
    )
    return "depth source: " + "; ".join(described)


def depth_model_help() -> str:
    """The ``--depth-model`` help text: it names the model of the chosen model backend, and the defaults."""
    defaults = ", ".join(f"{name} {model}" for name, model in DEFAULT_DEPTH_MODELS.items())
    return f"hub id or local directory of the --depth backend's model (defaults: {defaults})"


def default_depth_model(backend: str) -> str:
    """The model id a model-based depth backend loads by default."""
    if backend not in DEFAULT_DEPTH_MODELS:
        raise ValueError(f"depth backend {backend!r} runs no model; model backends: {', '.join(MODEL_DEPTH_BACKENDS)}")
    return DEFAULT_DEPTH_MODELS[backend]


def make_depth_model(backend: str, model: Optional[str] = None, device: Optional[str] = None) -> Any:
    """The depth model object for a model-based backend, None for sidecar/none."""
    if backend not in DEPTH_BACKENDS:
        raise ValueError(f"unknown depth backend {backend!r}; choose from {', '.join(DEPTH_BACKENDS)}")
    if backend not in MODEL_DEPTH_BACKENDS:
        return None
    model = model or default_depth_model(backend)
    if backend == "depth-pro":
        from .depth_pro import DepthProEstimator

        return DepthProEstimator(model, device=device)
    from .depth_anything import DepthAnythingEstimator
    from .model_loading import ModelUnavailableError

    estimator = DepthAnythingEstimator(model, device=device)
    if backend == "depth-anything-metric" and not estimator.metric:
        raise ModelUnavailableError(
            f"depth model '{model}' is a relative model (its config's depth_estimation_type is not 'metric'); "
            "use --depth depth-anything for it, or a Depth Anything V2 Metric checkpoint"
        )
    return estimator


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
