"""Tiny random-weight diffusers models and batches for offline tests, plus the full-size configs of
Stable Diffusion 1.5's UNet and FLUX.1-dev's transformer for shape checks on the meta device."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

# UNet2DConditionModel of Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5, unet/config.json).
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)

# FluxTransformer2DModel of FLUX.1-dev (black-forest-labs/FLUX.1-dev, transformer/config.json).
FLUX_DEV_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)

TINY_UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(16, 32),
    layers_per_block=1,
    cross_attention_dim=24,
    attention_head_dim=8,
    norm_num_groups=8,
)

TINY_FLUX_CONFIG = dict(
    patch_size=1,
    in_channels=4,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=True,
    axes_dims_rope=(4, 4, 8),
)


def meta_unet(config: dict = SD15_UNET_CONFIG):
    """A UNet2DConditionModel with no weights (meta device), for shape and count checks."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel(**config)


def meta_flux(config: dict = FLUX_DEV_CONFIG):
    """A FluxTransformer2DModel with no weights (meta device), for shape and count checks."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    with init_empty_weights():
        return FluxTransformer2DModel(**config)


def tiny_unet(seed: int = 0):
    """A random UNet2DConditionModel (2 levels, 16/32 channels, cross-attention 24) in eval mode."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET_CONFIG).eval()


def tiny_flux(seed: int = 0):
    """A random FluxTransformer2DModel (1 double + 1 single block, 2 heads x 16) in eval mode."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(**TINY_FLUX_CONFIG).eval()


def unet_batch(batch: int = 2, seed: int = 1, text_len: int = 5) -> dict:
    """Inputs for ``tiny_unet``: sample, timestep, encoder_hidden_states."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(batch, 4, 8, 8, generator=g),
        timestep=torch.tensor([10, 500][:batch] + [250] * max(0, batch - 2)),
        encoder_hidden_states=torch.randn(batch, text_len, TINY_UNET_CONFIG["cross_attention_dim"], generator=g),
    )


def flux_batch(batch: int = 2, seed: int = 1, height: int = 4, width: int = 4, text_len: int = 5) -> dict:
    """Inputs for ``tiny_flux``: packed latents, sigma timesteps, guidance, text and position ids."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
    return dict(
        hidden_states=torch.randn(batch, height * width, TINY_FLUX_CONFIG["in_channels"], generator=g),
        timestep=torch.rand(batch, generator=g),
        guidance=torch.full((batch,), 3.0),
        pooled_projections=torch.randn(batch, TINY_FLUX_CONFIG["pooled_projection_dim"], generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, TINY_FLUX_CONFIG["joint_attention_dim"], generator=g),
        txt_ids=torch.zeros(text_len, 3),
        img_ids=img_ids,
    )


#: Small adapter dimensions for the tiny bases (the tests' default).
TINY_ADAPTER = dict(bokeh_hidden_dim=8, bokeh_context_dim=12, lora_rank=4)


def randomize(module: torch.nn.Module, std: float = 0.3, seed: int = 3) -> None:
    """Non-zero weights everywhere, from a fixed seed (a fresh adapter's up projections are zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


@contextmanager
def single_thread():
    """Run torch on one thread: tiny models gain nothing from more, and on a busy 2-core machine
    OpenMP threads waiting on each other make each small op many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def assert_same_floats(a: list[float], b: list[float]) -> None:
    """Exactly equal on CPUs; on CUDA within 1e-5 relative: GPU kernels that add in no fixed order change the last
    digits of a resumed run's losses."""
    if torch.cuda.is_available():
        assert a == pytest.approx(b, rel=1e-5)
    else:
        assert a == b


def assert_same_tensors(a: dict, b: dict) -> None:
    """Same keys, and values exactly equal on CPUs, within 1e-5 relative on CUDA (see :func:`assert_same_floats`)."""
    assert a.keys() == b.keys()
    for k in a:
        if torch.cuda.is_available():
            assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
        else:
            assert torch.equal(a[k], b[k]), k
