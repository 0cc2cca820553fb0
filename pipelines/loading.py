"""Build the right sampling pipeline from a base model, an adapter, or a training checkpoint.

Family: a base folder with ``transformer/`` is FLUX, one with ``unet/`` a UNet model (Stable
Diffusion style or the tiny model); for hub ids the adapter's config tells (FLUX adapters have
``attn_hidden_dim``, UNet adapters ``grounded_blocks``), else ``family`` must be given.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

from estimators.cli_util import UserError
from pipelines.pipeline_base import BokehPipeline

FAMILIES = ("auto", "unet", "flux")


def _complete_base(folder: Path) -> bool:
    return (folder / "transformer").is_dir() or ((folder / "unet").is_dir() and (folder / "text_encoder").is_dir())


def checkpoint_paths(checkpoint: Union[str, Path]) -> tuple[Optional[str], str]:
    """(base, adapter) of a ``bokeh train`` checkpoint folder, or of a run folder (its latest checkpoint).

    The base is the checkpoint's own ``model/`` when it holds a whole model (the tiny model, or a base
    trained along), else the run's ``model.base_model``; None when neither is known.
    """
    from bokeh_models.checkpoint_layout import checkpoint_dirs

    path = Path(checkpoint).expanduser()
    if not (path / "adapter").is_dir():
        found = checkpoint_dirs(path)
        if not found:
            raise UserError(f"--checkpoint {checkpoint}: neither a checkpoint (no adapter/) nor a run folder with checkpoints/")
        path = found[-1]
    if _complete_base(path / "model"):
        return str(path / "model"), str(path / "adapter")
    config = path.parent.parent / "config.yaml"
    base = None
    if config.is_file():
        import yaml

        base = (yaml.safe_load(config.read_text()) or {}).get("model", {}).get("base_model")
    return base, str(path / "adapter")


def detect_family(base: str, adapter: str) -> str:
    """"flux" or "unet" from the base folder's layout, else from the adapter's config fields."""
    folder = Path(base).expanduser()
    if (folder / "transformer").is_dir():
        return "flux"
    if (folder / "unet").is_dir():
        return "unet"
    config = Path(adapter).expanduser() / "config.json"
    if config.is_file():
        try:
            fields = json.loads(config.read_text())
        except ValueError as exc:
            raise UserError(f"cannot read adapter config {config}: {exc}") from exc
        if "attn_hidden_dim" in fields:
            return "flux"
        if "grounded_blocks" in fields:
            return "unet"
    raise UserError(f"cannot tell the model family of {base!r}: pass --family flux or --family unet")


def load_pipeline(
    base: Optional[str] = None,
    adapter: Optional[str] = None,
    *,
    checkpoint: Optional[str] = None,
    family: str = "auto",
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[Union[str, torch.dtype]] = None,
) -> BokehPipeline:
    """A ``BokehFluxPipeline`` or ``BokehStableDiffusionPipeline`` from ``base`` + ``adapter`` or a
    training ``checkpoint`` (explicit base / adapter override the checkpoint's). Default dtype:
    bfloat16 for FLUX on CUDA (as released), float32 otherwise."""
    if family not in FAMILIES:
        raise UserError(f"family must be one of {FAMILIES}, got {family!r}")
    if checkpoint is not None:
        found_base, found_adapter = checkpoint_paths(checkpoint)
        base, adapter = base or found_base, adapter or found_adapter
    if not base:
        raise UserError("no base model: pass --base ID|PATH (or a --checkpoint whose run names one)")
    if not adapter:
        raise UserError("no adapter: pass --adapter DIR|ID (or --checkpoint)")
    if family == "auto":
        family = detect_family(base, adapter)
    from estimators.model_loading import resolve_device

    work = resolve_device(device)
    if family == "flux":
        from pipelines.pipeline_flux import BokehFluxPipeline

        default = torch.bfloat16 if work.type == "cuda" else torch.float32
        return BokehFluxPipeline.from_pretrained(base, adapter, device=work, torch_dtype=dtype or default)
    from pipelines.pipeline_sd import BokehStableDiffusionPipeline

    return BokehStableDiffusionPipeline.from_pretrained(base, adapter, device=work, torch_dtype=dtype or torch.float32)
