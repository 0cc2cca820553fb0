"""Bokeh Diffusion sampling on a UNet backbone: Stable Diffusion 1.5 style models (latent, with a VAE)
and the tiny pixel-space model, with classifier-free guidance against the negative prompt and no K."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch

from bokeh_models.components import check_pixel_unet, load_unet_components, resolve_dtype, vae_factor
from bokeh_models.guidance import guided
from bokeh_models.unet_adapter import BokehUNetAdapter
from estimators.model_loading import ModelUnavailableError
from pipelines.pipeline_base import BokehPipeline, adapter_source

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
    ``BokehUNetAdapter`` (see ``BokehPipeline.__call__``); without a VAE the UNet denoises pixels in [-1, 1],
    as p x p patches when it takes 3 p^2 channels (the tiny model)."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae"]
    default_negative_prompt = ""

    def __init__(self, unet: Any, text_encoder: Any, tokenizer: Any, scheduler: Any, adapter: BokehUNetAdapter,
                 vae: Optional[Any] = None) -> None:
        super().__init__()
        from diffusers.image_processor import VaeImageProcessor

        self.patch = 1 if vae is not None else check_pixel_unet(unet)
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=sampling_scheduler(scheduler), adapter=adapter, vae=vae)
        self.default_guidance = 7.5 if vae is not None else PIXEL_GUIDANCE
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.latent_factor)
        self._install_adapter()

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Union[str, Path],
        adapter: Union[str, Path, BokehUNetAdapter, None] = None,
        *,
        torch_dtype: Optional[Union[str, torch.dtype]] = None,
        device: Optional[Union[str, torch.device]] = None,
        **kwargs: Any,
    ) -> "BokehStableDiffusionPipeline":
        """A Stable Diffusion folder or hub id (a folder without vae/ is a pixel-space model; a saved pipeline
        brings its ``adapter/``) with a ``BokehUNetAdapter`` (folder, hub id or loaded; default the folder's
        ``adapter/``), in ``torch_dtype`` (default float32), moved to ``device`` when given. Unavailable or unfit
        models raise ModelUnavailableError (one line)."""
        dtype = resolve_dtype(torch_dtype, torch.float32)
        base = str(pretrained_model_name_or_path)
        parts = load_unet_components(base, dtype)
        if not isinstance(adapter, BokehUNetAdapter):
            adapter = BokehUNetAdapter.from_pretrained(adapter_source(base, adapter), parts["unet"], dtype=dtype, **kwargs)
        try:
            pipe = cls(**parts, adapter=adapter.eval())
        except ValueError as exc:
            raise ModelUnavailableError(f"base model {base}: {exc}") from None
        return pipe.to(device) if device is not None else pipe

    @property
    def base_model(self) -> torch.nn.Module:
        return self.unet

    @property
    def latent_factor(self) -> int:
        """Image pixels per latent position along a side: the VAE's downsampling or the pixel patch size."""
        return self.patch if self.vae is None else vae_factor(self.vae)

    @property
    def default_resolution(self) -> int:
        size = self.unet.config.sample_size
        return int(size if isinstance(size, int) else size[0]) * self.latent_factor

    @property
    def size_multiple(self) -> int:
        return self.latent_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def noise_dtype(self) -> torch.dtype:
        return self.unet.dtype

    def uses_guidance_pass(self, guidance_scale: float, true_cfg: float) -> bool:
        if true_cfg != 1.0:
            raise ValueError("true_cfg is a FLUX option; UNet models take guidance_scale (classifier-free guidance)")
        return guidance_scale > 1.0

    def _text(self, text: str, device: torch.device) -> torch.Tensor:
        ids = self.tokenizer([text], padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids.to(device)
        return self.text_encoder(ids)[0]

    def encode(self, prompt: str, negative_prompt: str, rows: int, with_negative: bool) -> dict[str, Any]:
        device = self._execution_device
        text = {"embeds": self._text(prompt, device).expand(rows, -1, -1)}
        if with_negative:
            text["negative"] = self._text(negative_prompt, device).expand(rows, -1, -1)
        return text

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        f = self.latent_factor
        return self.unet.config.in_channels, height // f, width // f

    def initial_latents(self, noise: torch.Tensor, rows: int, height: int, width: int) -> torch.Tensor:
        noise = noise.to(self._execution_device, self.unet.dtype)
        return (noise * self.scheduler.init_noise_sigma).expand(rows, -1, -1, -1).contiguous()

    def set_timesteps(self, steps: int, latents: torch.Tensor) -> torch.Tensor:
        self.scheduler.set_timesteps(steps, device=self._execution_device)
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

    def decode_tensor(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if self.vae is None:
            return torch.nn.functional.pixel_shuffle(latents, self.patch)
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
