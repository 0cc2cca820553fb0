"""Bokeh Diffusion sampling on FLUX.1 with the released adapter, following the released inference
code step for step: one CPU noise draw per sweep shared by all rows, sigmas ``linspace(1, 1/N, N)``
with the resolution-dependent shift ``mu``, distilled guidance embedded in the transformer, and optional
true classifier-free guidance against a negative prompt with no K (guidance 1, not grounded). Our
addition: ``bokeh_guidance`` (a pass with the prompt and no K, see ``bokeh_models.guidance.guided``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from bokeh_models.components import load_flux_components, resolve_dtype, vae_factor
from bokeh_models.flux_adapter import BokehFluxAdapter
from bokeh_models.flux_latents import latent_image_ids, pack_latents, unpack_latents
from bokeh_models.guidance import guided
from pipelines.pipeline_base import BokehPipeline, adapter_source

#: The released code's defaults (inference_flux.py).
RELEASED_SEED = 65578
RELEASED_NEGATIVE_PROMPT = "bad quality, low resolution"
#: The FLUX.1 components the pipeline runs (a FluxPipeline folder may hold more, e.g. an image encoder).
FLUX_PARTS = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")


def resolution_shift(tokens: int, config: Any) -> float:
    """FLUX's timestep shift ``mu`` for ``tokens`` image tokens: linear from ``base_shift`` at
    ``base_image_seq_len`` tokens to ``max_shift`` at ``max_image_seq_len`` (the scheduler config's values)."""
    low, high = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (top - base) / (high - low)
    return tokens * slope + base - slope * low


class BokehFluxPipeline(BokehPipeline):
    """``pipe(prompt, bokeh=[0, 8, 16, 24], pivot=None|15, ...)`` on FLUX.1's components with a
    ``BokehFluxAdapter`` (see ``BokehPipeline.__call__``). Defaults: 512 px, 30 steps, guidance 3.0,
    seed 65578, true_cfg 1 (off)."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"
    default_steps = 30
    default_guidance = 3.0
    default_seed = RELEASED_SEED
    default_negative_prompt = RELEASED_NEGATIVE_PROMPT
    default_resolution = 512
    max_sequence_length = 512

    def __init__(self, scheduler: Any, vae: Any, text_encoder: Any, tokenizer: Any, text_encoder_2: Any,
                 tokenizer_2: Any, transformer: Any, adapter: BokehFluxAdapter) -> None:
        super().__init__()
        from diffusers.image_processor import VaeImageProcessor

        self.register_modules(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
                              adapter=adapter)
        self.vae_scale_factor = vae_factor(vae)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor * 2)
        self._install_adapter()

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Union[str, Path],
        adapter: Union[str, Path, BokehFluxAdapter, None] = None,
        *,
        torch_dtype: Optional[Union[str, torch.dtype]] = None,
        device: Optional[Union[str, torch.device]] = None,
        **kwargs: Any,
    ) -> "BokehFluxPipeline":
        """A FLUX.1 folder or hub id (a base, or a saved ``BokehFluxPipeline`` with its ``adapter/``) with the adapter
        (folder, hub id such as ``atfortes/BokehDiffusion``, or a loaded one; default the folder's ``adapter/``),
        both in ``torch_dtype`` (the released code runs both in bfloat16, the default), moved to ``device`` when
        given. Unavailable or unfit models raise ModelUnavailableError (one line)."""
        dtype = resolve_dtype(torch_dtype, torch.bfloat16)
        base = str(pretrained_model_name_or_path)
        parts = {k: v for k, v in load_flux_components(base, dtype).items() if k in FLUX_PARTS}
        if not isinstance(adapter, BokehFluxAdapter):
            adapter = BokehFluxAdapter.from_pretrained(adapter_source(base, adapter), parts["transformer"], dtype=dtype,
                                                       **kwargs)
        pipe = cls(**parts, adapter=adapter.eval())
        return pipe.to(device) if device is not None else pipe

    # ---------------------------------------------------------------- backbone-specific steps
    @property
    def base_model(self) -> torch.nn.Module:
        return self.transformer

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * 2

    @property
    def noise_dtype(self) -> torch.dtype:
        return self.vae.dtype

    def uses_guidance_pass(self, guidance_scale: float, true_cfg: float) -> bool:
        return true_cfg > 1.0

    def _clip_pooled(self, text: str, device: torch.device) -> torch.Tensor:
        ids = self.tokenizer([text], padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids
        return self.text_encoder(ids.to(device), output_hidden_states=False).pooler_output.to(self.text_encoder.dtype)

    def _t5_embeds(self, text: str, device: torch.device) -> torch.Tensor:
        ids = self.tokenizer_2([text], padding="max_length", max_length=self.max_sequence_length, truncation=True,
                               return_tensors="pt").input_ids
        return self.text_encoder_2(ids.to(device), output_hidden_states=False)[0].to(self.text_encoder_2.dtype)

    def encode(self, prompt: str, negative_prompt: str, rows: int, with_negative: bool) -> dict[str, Any]:
        """CLIP's pooled output and T5's token embeddings (as FluxPipeline.encode_prompt makes them), ``rows`` times."""
        device = self._execution_device

        def embed(text: str) -> tuple[torch.Tensor, torch.Tensor]:
            return self._t5_embeds(text, device).repeat(rows, 1, 1), self._clip_pooled(text, device).repeat(rows, 1)

        embeds, pooled = embed(prompt)
        text = {"embeds": embeds, "pooled": pooled,
                "text_ids": torch.zeros(embeds.shape[1], 3, device=device, dtype=self.text_encoder.dtype)}
        if with_negative:
            text["negative_embeds"], text["negative_pooled"] = embed(negative_prompt)
        return text

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        f = self.vae_scale_factor
        return self.transformer.config.in_channels // 4, 2 * (height // (f * 2)), 2 * (width // (f * 2))

    def initial_latents(self, noise: torch.Tensor, rows: int, height: int, width: int) -> torch.Tensor:
        noise = noise.to(self._execution_device, self.vae.dtype)
        self._image_ids = latent_image_ids(noise).to(self.transformer.dtype)
        return pack_latents(noise.expand(rows, -1, -1, -1))

    def set_timesteps(self, steps: int, latents: torch.Tensor) -> torch.Tensor:
        sigmas = np.linspace(1.0, 1 / steps, steps)
        mu = resolution_shift(latents.shape[1], self.scheduler.config)
        self.scheduler.set_timesteps(sigmas=sigmas, device=self._execution_device, mu=mu)
        return self.scheduler.timesteps

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
            guidance = torch.full([1], guidance_scale, device=latents.device, dtype=torch.float32).expand(rows)
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

    def decode_tensor(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        h, w = self.latent_shape(height, width)[1:]
        latents = unpack_latents(latents, h, w)
        latents = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]

