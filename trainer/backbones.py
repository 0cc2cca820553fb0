"""The base models the trainer adapts: loading (folder or hub id, one clear error when unavailable), text and
image encoding and the training loss with the bokeh adapter. Validation grids come from the sampling pipelines."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from bokeh_models.components import check_pixel_unet, load_flux_components, load_unet_components, vae_factor
from estimators.model_loading import ModelUnavailableError
from trainer.objectives import flux_loss, shifted_sigmas, unet_loss

class UNetBackbone:
    """A UNet2DConditionModel with its CLIP text encoder, tokenizer, DDPM training scheduler and (for
    latent models) VAE; without a VAE it denoises pixels in [-1, 1] (the tiny model), as p x p patches
    when its UNet takes 3 p^2 channels."""

    family = "unet"

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, tokenizer: Any, scheduler: Any, vae: Optional[nn.Module] = None) -> None:
        self.unet, self.text_encoder, self.tokenizer, self.scheduler, self.vae = unet, text_encoder, tokenizer, scheduler, vae
        self.patch = 1 if vae is not None else check_pixel_unet(unet)
        #: SNR clamp of the loss weights (``optim.snr_gamma`` / ``optim.snr_floor``); None = no bound
        self.snr_gamma: Optional[float] = None
        self.snr_floor: Optional[float] = None
        #: weight of the tied rows' difference loss (``optim.difference_weight``; objectives.tied_difference_mse)
        self.difference_weight = 0.0
        #: weight of the image-gradient loss (``optim.detail_weight``; objectives.gradient_mse)
        self.detail_weight = 0.0

    @classmethod
    def load(cls, base: str, dtype: torch.dtype = torch.float32) -> "UNetBackbone":
        """Components from a Stable Diffusion style folder or hub id (``vae/`` optional in a folder)."""
        parts = load_unet_components(base, dtype)
        try:
            return cls(**parts)
        except ValueError as exc:
            raise ModelUnavailableError(f"base model {base}: {exc}") from None

    @property
    def model(self) -> nn.Module:
        return self.unet

    def modules(self) -> dict[str, nn.Module]:
        """Every network, by folder name."""
        parts = {"unet": self.unet, "text_encoder": self.text_encoder}
        if self.vae is not None:
            parts["vae"] = self.vae
        return parts

    def make_adapter(self, kwargs: dict) -> nn.Module:
        from bokeh_models.unet_adapter import BokehUNetAdapter

        return BokehUNetAdapter(self.unet, **kwargs)

    def encode_text(self, captions: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(
            list(captions), padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        return {"encoder_hidden_states": self.text_encoder(ids)[0]}

    @property
    def latent_factor(self) -> int:
        """Image pixels per latent position along a side: the VAE's downsampling or the pixel patch size."""
        return self.patch if self.vae is None else vae_factor(self.vae)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return torch.nn.functional.pixel_unshuffle(pixels, self.patch)
        with torch.no_grad():
            pixels = pixels.to(self.vae.dtype)
            return self.vae.encode(pixels).latent_dist.sample() * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return torch.nn.functional.pixel_shuffle(latents, self.patch)
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample

    def timestep_draw(self, u: torch.Tensor) -> torch.Tensor:
        return u

    def loss(self, adapter: nn.Module, latents: torch.Tensor, text: dict, levels: Any, pivot_ids: Any,
             noise: torch.Tensor, u: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The training loss; ``weights`` [B, 1, h, w] weigh the latent positions (None = all alike)."""
        return unet_loss(adapter, self.unet, self.scheduler, latents, text["encoder_hidden_states"], levels, pivot_ids, noise, u,
                         self.snr_gamma, self.snr_floor, weights, self.difference_weight, self.detail_weight, self.patch)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        return self.unet.config.in_channels, resolution // self.latent_factor, resolution // self.latent_factor


class FluxBackbone:
    """FLUX.1: FluxTransformer2DModel with its CLIP and T5 encoders and VAE (as one FluxPipeline)."""

    family = "flux"

    def __init__(self, pipe: Any, guidance: float = 3.5) -> None:
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.guidance = guidance
        self.shift = float(getattr(pipe.scheduler.config, "shift", 1.0) or 1.0)
        #: weight of the tied rows' difference loss (``optim.difference_weight``; objectives.tied_difference_mse)
        self.difference_weight = 0.0

    @classmethod
    def load(cls, base: str, dtype: torch.dtype = torch.bfloat16, guidance: float = 3.5) -> "FluxBackbone":
        from diffusers import FluxPipeline

        return cls(FluxPipeline(**load_flux_components(base, dtype)), guidance)

    @property
    def model(self) -> nn.Module:
        return self.transformer

    def modules(self) -> dict[str, nn.Module]:
        return {"transformer": self.transformer, "text_encoder": self.pipe.text_encoder,
                "text_encoder_2": self.pipe.text_encoder_2, "vae": self.vae}

    def make_adapter(self, kwargs: dict) -> nn.Module:
        from bokeh_models.flux_adapter import BokehFluxAdapter

        return BokehFluxAdapter(self.transformer, **kwargs)

    def encode_text(self, captions: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            embeds, pooled, text_ids = self.pipe.encode_prompt(list(captions), device=device)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "text_ids": text_ids}

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.sample()
        return (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return self.vae.decode(latents.to(self.vae.dtype)).sample

    def timestep_draw(self, u: torch.Tensor) -> torch.Tensor:
        return shifted_sigmas(u, self.shift)

    def loss(self, adapter: nn.Module, latents: torch.Tensor, text: dict, levels: Any, pivot_ids: Any,
             noise: torch.Tensor, u: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The training loss; ``weights`` [B, 1, h, w] weigh the latent positions (None = all alike)."""
        return flux_loss(adapter, self.transformer, latents, text["prompt_embeds"], text["pooled_prompt_embeds"],
                         text["text_ids"], levels, pivot_ids, noise, u, self.guidance, weights,
                         self.difference_weight)

    @property
    def latent_factor(self) -> int:
        """Image pixels per latent position along a side (the VAE's downsampling)."""
        return vae_factor(self.vae)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        return self.vae.config.latent_channels, resolution // self.latent_factor, resolution // self.latent_factor


def load_backbone(family: str, base: str, dtype: torch.dtype, guidance: float = 3.5) -> Any:
    """The backbone for ``family`` ("unet" covers the tiny model's folder too)."""
    if family == "flux":
        return FluxBackbone.load(base, dtype, guidance)
    return UNetBackbone.load(base, dtype)
