"""Bokeh Diffusion sampling on FLUX.1 with the released adapter, following the released inference
code step for step: one CPU noise draw from the seed shared by all rows, sigmas ``linspace(1, 1/N, N)``
with the resolution-dependent shift ``mu``, distilled guidance embedded in the transformer, and optional
true classifier-free guidance against a negative prompt with no K (guidance 1, not grounded). Our
addition: ``bokeh_guidance`` (a pass with the prompt and no K, see ``bokeh_models.guidance.guided``)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from pipelines.pipeline_base import BokehPipeline
from trainer.backbones import FluxBackbone
from bokeh_models.guidance import guided

#: The released code's defaults (inference_flux.py).
RELEASED_SEED = 65578
RELEASED_NEGATIVE_PROMPT = "bad quality, low resolution"


class BokehFluxPipeline(BokehPipeline):
    """``pipe(prompt, bokeh=[0, 8, 16, 24], pivot=None|15, ...)`` on a FluxPipeline's components with a
    ``BokehFluxAdapter`` (see ``BokehPipeline.__call__``). Defaults: 512 px, 30 steps, guidance 3.0,
    seed 65578, true_cfg 1 (off)."""

    default_steps = 30
    default_guidance = 3.0
    default_seed = RELEASED_SEED
    default_negative_prompt = RELEASED_NEGATIVE_PROMPT
    default_resolution = 512
    default_dtype = torch.bfloat16
    max_sequence_length = 512

    def __init__(self, flux: Any, adapter: torch.nn.Module) -> None:
        super().__init__(adapter, flux.transformer.device)
        self.flux = flux
        self.transformer = flux.transformer
        self.scheduler = flux.scheduler

    @classmethod
    def _load(cls, base: str, adapter: str, device: torch.device, dtype: torch.dtype) -> "BokehFluxPipeline":
        """A FLUX.1 folder or hub id and a ``BokehFluxAdapter`` folder or id (e.g. ``atfortes/BokehDiffusion``),
        in one dtype (the released code runs both in bfloat16)."""
        from bokeh_models.flux_adapter import BokehFluxAdapter

        flux = FluxBackbone.load(base, dtype).pipe.to(device)
        loaded = BokehFluxAdapter.from_pretrained(adapter, flux.transformer, device=device, dtype=dtype)
        return cls(flux, loaded.eval())

    @property
    def size_multiple(self) -> int:
        return self.flux.vae_scale_factor * 2

    def uses_guidance_pass(self, guidance_scale: float, true_cfg: float) -> bool:
        return true_cfg > 1.0

    def encode(self, prompt: str, negative_prompt: str, rows: int, with_negative: bool) -> dict[str, Any]:
        def embed(text: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return self.flux.encode_prompt(
                prompt=[text], prompt_2=None, device=self.device, num_images_per_prompt=rows,
                max_sequence_length=self.max_sequence_length,
            )

        embeds, pooled, text_ids = embed(prompt)
        text = {"embeds": embeds, "pooled": pooled, "text_ids": text_ids}
        if with_negative:
            text["negative_embeds"], text["negative_pooled"], _ = embed(negative_prompt)
        return text

    def initial_latents(self, seed: int, rows: int, height: int, width: int) -> torch.Tensor:
        from diffusers import FluxPipeline
        from diffusers.utils.torch_utils import randn_tensor

        channels = self.transformer.config.in_channels // 4
        f = self.flux.vae_scale_factor
        h, w = 2 * (height // (f * 2)), 2 * (width // (f * 2))
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = randn_tensor((1, channels, h, w), generator=generator, device=self.device, dtype=self.flux.vae.dtype)
        latents = FluxPipeline._pack_latents(noise.expand(rows, -1, -1, -1), rows, channels, h, w)
        self._image_ids = FluxPipeline._prepare_latent_image_ids(rows, h // 2, w // 2, self.device, self.transformer.dtype)
        return latents

    def set_timesteps(self, steps: int, latents: torch.Tensor) -> torch.Tensor:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        config = self.scheduler.config
        mu = calculate_shift(
            latents.shape[1], config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5), config.get("max_shift", 1.15),
        )
        sigmas = np.linspace(1.0, 1 / steps, steps)
        timesteps, _ = retrieve_timesteps(self.scheduler, steps, self.device, sigmas=sigmas, mu=mu)
        return timesteps

    def _transformer(self, latents, t, embeds, pooled, text_ids, levels, pivot_ids, guidance) -> torch.Tensor:
        rows = latents.shape[0]
        return self.adapter(
            self.transformer, levels, pivot_ids,
            hidden_states=latents, timestep=t.expand(rows).to(latents.dtype) / 1000, guidance=guidance,
            pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=self._image_ids,
        )

    def predict(self, latents, t, text, levels, pivot_ids, guidance_scale, true_cfg, bokeh_guidance) -> torch.Tensor:
        rows = latents.shape[0]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full([1], guidance_scale, device=self.device, dtype=torch.float32).expand(rows)
        out = self._transformer(latents, t, text["embeds"], text["pooled"], text["text_ids"], levels, pivot_ids, guidance)
        no_bokeh = None
        if bokeh_guidance is not None:
            no_bokeh = self._transformer(latents, t, text["embeds"], text["pooled"], text["text_ids"], [-1.0] * rows, pivot_ids, guidance)
        negative = None
        if true_cfg > 1.0:
            negative = self._transformer(
                latents, t, text["negative_embeds"], text["negative_pooled"], text["text_ids"], [-1.0] * rows, None,
                None if guidance is None else torch.ones_like(guidance),
            )
        return guided(out, negative, true_cfg, no_bokeh, bokeh_guidance)

    def decode(self, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
        from diffusers import FluxPipeline

        vae = self.flux.vae
        latents = FluxPipeline._unpack_latents(latents, height, width, self.flux.vae_scale_factor)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return self.flux.image_processor.postprocess(images, output_type="pil")
