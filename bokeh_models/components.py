"""The base models' parts, loaded from a folder or hub id with one clear error when unavailable: the UNet
family (Stable Diffusion style, or the tiny pixel-space model without a VAE) and FLUX.1. Shared by the
sampling pipelines and the trainer."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from estimators.model_loading import ModelUnavailableError, load_pretrained

AVOID = "a local path in model.base_model (configs/tiny.yaml trains a tiny model offline)"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: Optional[Any], default: torch.dtype) -> torch.dtype:
    """``dtype`` as a torch dtype (a name in DTYPES, a dtype, or None for ``default``); one-line error otherwise."""
    if dtype is None:
        return default
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"torch_dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    return dtype


def pixel_patch_size(channels: int) -> int:
    """The side p of the pixel patches a VAE-less UNet with ``channels`` = 3 p^2 input channels denoises
    (space-to-depth: each p x p RGB patch is one position; p = 1 is plain pixels)."""
    p = math.isqrt(channels // 3)
    if channels != 3 * p * p:
        raise ValueError(f"a pixel-space UNet (no vae/) takes 3 * p^2 input channels (RGB in p x p patches), got {channels}")
    return p


def check_pixel_unet(unet: nn.Module) -> int:
    """The patch size of a VAE-less ``unet`` (it must take and give back 3 p^2 channels)."""
    patch = pixel_patch_size(unet.config.in_channels)
    if unet.config.out_channels != unet.config.in_channels:
        raise ValueError(f"a pixel-space UNet (no vae/) must output its {unet.config.in_channels} input channels, "
                         f"got {unet.config.out_channels}")
    return patch


def vae_factor(vae: nn.Module) -> int:
    """Image pixels per latent position along a side: 2 per VAE downsampling level."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _component(cls: Any, base: str, subfolder: str, what: str, **kwargs: Any) -> Any:
    return load_pretrained(
        lambda name, **kw: cls.from_pretrained(name, subfolder=subfolder, **kw), base, what=f"{what} ({subfolder})",
        avoid=AVOID, **kwargs,
    )


def load_unet_components(base: str, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """unet, text_encoder, tokenizer, scheduler and vae (None for a folder without ``vae/``: a pixel-space
    model) of a Stable Diffusion style folder or hub id; ModelUnavailableError (one line) when unfit."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    what = "base model"
    parts = dict(
        unet=_component(UNet2DConditionModel, base, "unet", what, torch_dtype=dtype),
        text_encoder=_component(CLIPTextModel, base, "text_encoder", what, dtype=dtype),
        tokenizer=_component(AutoTokenizer, base, "tokenizer", what),
        scheduler=_component(DDPMScheduler, base, "scheduler", what),
        vae=None,
    )
    local = Path(base).expanduser()
    if not local.is_dir() or (local / "vae").is_dir():
        parts["vae"] = _component(AutoencoderKL, base, "vae", what, torch_dtype=dtype)
    else:
        try:
            check_pixel_unet(parts["unet"])
        except ValueError as exc:
            raise ModelUnavailableError(f"{what} {base}: {exc}") from None
    return parts


def load_flux_components(base: str, dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """The components of a FLUX.1 folder or hub id (as ``FluxPipeline.from_pretrained`` loads them)."""
    from diffusers import FluxPipeline

    pipe = load_pretrained(FluxPipeline.from_pretrained, base, what="FLUX base model", avoid=AVOID, torch_dtype=dtype)
    return dict(pipe.components)
