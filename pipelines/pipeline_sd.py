"""Bokeh Diffusion sampling on a UNet backbone: Stable Diffusion 1.5 style models (latent, with a VAE)
and the tiny pixel-space model, with classifier-free guidance against the negative prompt and no K."""
from __future__ import annotations

from typing import Any, Optional

import torch
from PIL import Image

from pipelines.pipeline_base import BokehPipeline
from trainer.backbones import UNetBackbone
from bokeh_models.guidance import guided

#: Guidance for pixel-space (tiny) models, trained with low guidance; latent models use diffusers' 7.5.
PIXEL_GUIDANCE = 2.0


def sampling_scheduler(scheduler: Any) -> Any:
    """The base's scheduler, except a DDPM training scheduler, which is swapped for DDIM (eta 0) on
    the same noise schedule: DDPM needs hundreds of steps, DDIM samples well in 25-50."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if type(scheduler) is DDPMScheduler:
        return DDIMScheduler.from_config(scheduler.config)
    return scheduler


class BokehStableDiffusionPipeline(BokehPipeline):
    """``pipe(prompt, bokeh=[0, 8, 16, 24], pivot=None|15, ...)`` on a UNet2DConditionModel with a
    ``BokehUNetAdapter`` (see ``BokehPipeline.__call__``)."""

    default_negative_prompt = ""

    def __init__(self, backbone: UNetBackbone, adapter: torch.nn.Module, scheduler: Optional[Any] = None) -> None:
        super().__init__(adapter, next(backbone.unet.parameters()).device)
        self.backbone = backbone
        self.unet = backbone.unet
        self.scheduler = sampling_scheduler(scheduler or backbone.scheduler)
        self.default_guidance = 7.5 if backbone.vae is not None else PIXEL_GUIDANCE
        from diffusers.image_processor import VaeImageProcessor

        self.image_processor = VaeImageProcessor(vae_scale_factor=self.backbone.latent_factor)

    @classmethod
    def _load(cls, base: str, adapter: str, device: torch.device, dtype: torch.dtype) -> "BokehStableDiffusionPipeline":
        """A Stable Diffusion folder or hub id (a folder without vae/ is a pixel-space model) and a
        ``BokehUNetAdapter`` folder or id."""
        from bokeh_models.unet_adapter import BokehUNetAdapter

        backbone = UNetBackbone.load(base, dtype)
        for module in backbone.modules().values():
            module.to(device).eval()
        loaded = BokehUNetAdapter.from_pretrained(adapter, backbone.unet, device=device, dtype=dtype)
        return cls(backbone, loaded.eval())

    @property
    def default_resolution(self) -> int:
        size = self.unet.config.sample_size
        return int(size if isinstance(size, int) else size[0]) * self.backbone.latent_factor

    @property
    def size_multiple(self) -> int:
        return self.backbone.latent_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def uses_guidance_pass(self, guidance_scale: float, true_cfg: float) -> bool:
        if true_cfg != 1.0:
            raise ValueError("true_cfg is a FLUX option; UNet models take guidance_scale (classifier-free guidance)")
        return guidance_scale > 1.0

    def encode(self, prompt: str, negative_prompt: str, rows: int, with_negative: bool) -> dict[str, Any]:
        text = {"embeds": self.backbone.encode_text([prompt], self.device)["encoder_hidden_states"].expand(rows, -1, -1)}
        if with_negative:
            text["negative"] = self.backbone.encode_text([negative_prompt], self.device)["encoder_hidden_states"].expand(rows, -1, -1)
        return text

    def initial_latents(self, seed: int, rows: int, height: int, width: int) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        f = self.backbone.latent_factor
        shape = (1, self.unet.config.in_channels, height // f, width // f)
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
        return (noise * self.scheduler.init_noise_sigma).expand(rows, -1, -1, -1).contiguous()

    def set_timesteps(self, steps: int, latents: torch.Tensor) -> torch.Tensor:
        self.scheduler.set_timesteps(steps, device=self.device)
        return self.scheduler.timesteps

    def predict(self, latents, t, text, levels, pivot_ids, guidance_scale, true_cfg, bokeh_guidance) -> torch.Tensor:
        # one UNet pass over up to three chunks of the batch: prompt + K, prompt without K (for
        # bokeh_guidance), negative prompt without K (not grounded); grounded rows use their chunk's pivot
        rows = latents.shape[0]
        no_k = [-1.0] * rows
        chunks = [(text["embeds"], levels, pivot_ids)]
        if bokeh_guidance is not None:
            chunks.append((text["embeds"], no_k, pivot_ids))
        if "negative" in text:
            chunks.append((text["negative"], no_k, None))
        embeds, bokeh, pivots = [], [], []
        for i, (chunk_embeds, chunk_levels, chunk_pivots) in enumerate(chunks):
            embeds.append(chunk_embeds)
            bokeh += chunk_levels
            for r in range(rows):  # a chunk's pivot ids are its own row numbers; -1 / None: not grounded
                p = None if chunk_pivots is None else chunk_pivots[r]
                pivots.append(-1 if p is None or p < 0 else i * rows + p)
        n = len(chunks)
        model_in = self.scheduler.scale_model_input(latents.repeat(n, 1, 1, 1), t)
        out = self.adapter(self.unet, model_in, t, torch.cat(embeds), bokeh=bokeh,
                           pivot_ids=None if pivot_ids is None else pivots).chunk(n)
        negative = out[-1] if "negative" in text else None
        no_bokeh = out[1] if bokeh_guidance is not None else None
        return guided(out[0], negative, guidance_scale, no_bokeh, bokeh_guidance)

    def decode(self, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
        images = self.backbone.decode(latents)
        return self.image_processor.postprocess(images.float(), output_type="pil")
