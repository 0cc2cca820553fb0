"""Loading Hugging Face models by id or local path, with one clear error when a model is not there."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

if TYPE_CHECKING:  # torch is imported where a device is resolved, so the CLI starts fast
    import torch

T = TypeVar("T")


class ModelUnavailableError(RuntimeError):
    """A model could not be loaded (offline, bad id, broken files); the message says what to do."""


def resolve_device(device: Optional[str | "torch.device"] = None) -> "torch.device":
    """The requested device, or CUDA when present, else Apple MPS, else CPU."""
    import torch

    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_pretrained(
    loader: Callable[..., T],
    model: str,
    *,
    what: str,
    avoid: str,
    **kwargs: Any,
) -> T:
    """Call ``loader(model, **kwargs)`` (a ``from_pretrained``), turning any failure into one message.

    ``what`` names the model's role (e.g. "depth model"), ``avoid`` the command-line flag that does
    without it. The message names the model, that flag, and how to pass a local path instead.
    """
    try:
        return loader(model, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub, OS and config errors all mean "not available"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailableError(
            f"cannot load {what} '{model}' ({first[:200]}); download it on a connected machine "
            f"(hf download {model} --local-dir DIR) and pass DIR instead of the id, "
            f"or avoid it with {avoid}"
        ) from exc
