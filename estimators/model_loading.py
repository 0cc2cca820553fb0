"""Loading Hugging Face models by id or local path, with one clear error when a model is not there."""
from __future__ import annotations

from pathlib import Path
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
    check_hub: bool = False,
    **kwargs: Any,
) -> T:
    """Call ``loader(model, **kwargs)`` (a ``from_pretrained``), turning any failure into one message.

    ``what`` names the model's role (e.g. "depth model"), ``avoid`` the command-line flag that does
    without it. The message names the model, that flag, and how to pass a local path instead.
    With ``check_hub``, a hub id missing from the cache first gets one request without retries, so that
    an unreachable hub fails at once rather than after the download's retries.
    """
    try:
        if check_hub:
            _check_hub(model, kwargs.get("cache_dir"))
        return loader(model, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub, OS and config errors all mean "not available"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailableError(
            f"cannot load {what} '{model}' ({first[:200]}); download it on a connected machine "
            f"(hf download {model} --local-dir DIR) and pass DIR instead of the id, "
            f"or avoid it with {avoid}"
        ) from exc


def _check_hub(model: str, cache_dir: Optional[str] = None) -> None:
    """Raise OSError at once when ``model`` is a hub id that is not cached and the hub does not answer.

    A download retries a failed connection with backoff for about half a minute, logging each retry; one
    request without retries tells the same at once. Local paths, cached repositories and offline mode
    (which fails at once by itself) are left to the loader, as is any answer of the hub (a missing file,
    a gated repository): the loader reports those.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import repo_folder_name
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if constants.HF_HUB_OFFLINE or Path(model).exists():
        return
    try:
        validate_repo_id(model)
    except HFValidationError:
        return
    snapshots = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=model, repo_type="model") / "snapshots"
    if snapshots.is_dir() and any(snapshots.iterdir()):
        return
    try:
        get_hf_file_metadata(hf_hub_url(model, "config.json"))
    except Exception as exc:  # noqa: BLE001 - only an error without a response means "no answer"
        if getattr(exc, "response", None) is not None:
            return
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(
            f"the hub {constants.ENDPOINT} does not answer ({reason}) and the model is not in the cache"
        ) from exc
