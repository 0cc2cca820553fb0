"""FLUX.1's latent layout: 2 x 2 patches of the VAE latent packed into tokens, and each token's position id."""
from __future__ import annotations

import torch


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, H/2 * W/2, 4C]``: each 2 x 2 patch one token (channel-major within the token)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of ``pack_latents`` for a ``height`` x ``width`` latent grid."""
    b, _, d = packed.shape
    c = d // 4
    return packed.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def latent_image_ids(latents: torch.Tensor) -> torch.Tensor:
    """``[H/2 * W/2, 3]`` position ids (0, row, column) of the tokens of ``[B, C, H, W]`` latents, in their dtype."""
    h, w = latents.shape[-2] // 2, latents.shape[-1] // 2
    ids = torch.zeros(h, w, 3, device=latents.device, dtype=latents.dtype)
    ids[..., 1] = torch.arange(h, device=latents.device, dtype=latents.dtype)[:, None]
    ids[..., 2] = torch.arange(w, device=latents.device, dtype=latents.dtype)[None, :]
    return ids.reshape(h * w, 3)
