"""Complete tiny random-weight model folders for the sampling pipelines: a latent Stable Diffusion
(UNet + VAE + CLIP text encoder) and a FLUX.1 (transformer + VAE + CLIP + T5), each with word-level
tokenizers built offline, saved as diffusers pipelines; plus fresh or randomised bokeh adapters."""
from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny_diffusion import TINY_FLUX_CONFIG, TINY_UNET_CONFIG
from bokeh_models.tiny_model import build_tokenizer

CAPTIONS = ["a red ball in front of a green hedge", "a white box on a wooden floor", "bad quality, low resolution"]


def _clip(width: int, vocab: int, max_tokens: int = 77):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=max_tokens, pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )).eval()


def build_tiny_sd(path: str | Path, seed: int = 0) -> Path:
    """A latent Stable Diffusion folder (16 px images: 8 px latents, VAE factor 2) with a DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(CAPTIONS, 77)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
            norm_num_groups=8, sample_size=16,
        ).eval(),
        text_encoder=_clip(TINY_UNET_CONFIG["cross_attention_dim"], len(tokenizer)),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**TINY_UNET_CONFIG).eval(),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return Path(path)


def build_tiny_flux(path: str | Path, seed: int = 0) -> Path:
    """A FLUX.1-style folder (guidance-distilled transformer, 1-channel VAE with factor 1) for 16 px images."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(CAPTIONS, 77)
    tokenizer_2 = build_tokenizer(CAPTIONS, 512)
    width = TINY_FLUX_CONFIG["joint_attention_dim"]
    pipe = FluxPipeline(
        transformer=FluxTransformer2DModel(**TINY_FLUX_CONFIG).eval(),
        vae=AutoencoderKL(
            sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
            latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
            shift_factor=0.0609, scaling_factor=1.5035,
        ).eval(),
        text_encoder=_clip(TINY_FLUX_CONFIG["pooled_projection_dim"], len(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=T5EncoderModel(T5Config(
            vocab_size=len(tokenizer_2), d_model=width, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
            pad_token_id=0, eos_token_id=3, decoder_start_token_id=0,
        )).eval(),
        tokenizer_2=tokenizer_2,
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
    )
    pipe.save_pretrained(path)
    return Path(path)


def randomise(adapter: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Give every adapter weight random values (a fresh adapter is zero at its outputs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return adapter
