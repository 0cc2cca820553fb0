"""Editing the bokeh of a photo: invert it at its own K with its caption, then regenerate it at each target K
grounded on the inverted trajectory, so that layout and identity come from the photo (more blur, or less).

``BokehStableDiffusionEditPipeline`` (tiny / SD 1.5: DDIM inversion) and ``BokehFluxEditPipeline`` (FLUX.1:
flow-matching inversion) are the sampling pipelines with an image-to-image ``__call__``; they load like them
(``from_pretrained``) or take a loaded one's components (``edit_pipeline``).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from bokeh_models.flux_latents import unpack_latents
from estimators.lens import MAX_BOKEH_LEVEL
from pipelines.colour_transfer import lab_mean_transfer
from pipelines.edit_blend import keep_subject
from pipelines.inversion import Predict, ddim_inversion, flow_inversion
from pipelines.pipeline_base import OUTPUT_TYPES, BokehPipeline, BokehPipelineOutput, checked_levels
from pipelines.pipeline_flux import BokehFluxPipeline
from pipelines.pipeline_sd import BokehStableDiffusionPipeline

ImageInput = Union[Image.Image, np.ndarray]


def anchored(trajectory: list[torch.Tensor], shared_steps: int, grounded: bool) -> Callable[..., dict[str, Any]]:
    """A step callback that holds the regeneration on the photo's inverted ``trajectory``: after step i every row
    takes the photo's latents of step i + 1 while i < ``shared_steps``, and the pivot row (the batch's last, when
    ``grounded``) always does, so the rows attend with the photo's own queries."""

    def hold(pipe: Any, i: int, t: torch.Tensor, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        latents, photo = tensors["latents"], trajectory[i + 1]
        if i < shared_steps:
            return {"latents": photo.expand_as(latents).contiguous()}
        if grounded:
            latents = latents.clone()
            latents[-1:] = photo
        return {"latents": latents}

    return hold


class BokehEditMixin:
    """The edit algorithm over a ``BokehPipeline``: encode -> invert at the source K -> regenerate grounded ->
    optionally keep the subject. Backbones give ``encode_image``, ``to_batch`` / ``from_batch``, ``invert`` and
    ``inversion_guidance``."""

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[1, 3, H, W]`` pixels in [-1, 1] -> the photo's clean latents ``[1, *latent_shape]``."""
        raise NotImplementedError

    def to_batch(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``[1, *latent_shape]`` latents in the layout the denoising loop steps (FLUX: packed tokens)."""
        raise NotImplementedError

    def from_batch(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The inverse of ``to_batch``."""
        raise NotImplementedError

    def invert(self, predict: Predict, latents: torch.Tensor) -> list[torch.Tensor]:
        """The inverted trajectory of batch-layout ``latents`` (see ``pipelines.inversion``)."""
        raise NotImplementedError

    def inversion_guidance(self, guidance_scale: float) -> float:
        """The guidance the inversion predicts with when the regeneration uses ``guidance_scale``."""
        raise NotImplementedError

    @property
    def edit_guidance(self) -> float:
        """The regeneration's default guidance: the inversion's, so both follow one trajectory field."""
        return self.inversion_guidance(self.default_guidance)

    def photo_pixels(self, image: ImageInput, height: Optional[int], width: Optional[int]) -> tuple[torch.Tensor, Image.Image]:
        """The photo at the edit's size (default its own; sides must fit the model) as ``[1, 3, H, W]`` in [-1, 1]
        on the execution device, and as the RGB image the edits are compared and blended with."""
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"an image array must be HxWx3 uint8, got {image.shape} {image.dtype}")
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise ValueError(f"image must be a PIL image or an HxWx3 uint8 array, got {type(image).__name__}")
        image = image.convert("RGB")
        height, width = self._size(height or image.height, width or image.width)
        if image.size != (width, height):
            image = image.resize((width, height), Image.LANCZOS)
        pixels = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        return pixels.to(self._execution_device), image

    def invert_photo(self, pixels: torch.Tensor, prompt: str, source_bokeh: float, steps: int, guidance_scale: float,
                     height: int, width: int) -> list[torch.Tensor]:
        """The photo's inverted trajectory at K = ``source_bokeh`` under ``prompt`` (sampling order, clean last)."""
        latents = self.to_batch(self.encode_image(pixels), height, width)
        self.set_timesteps(steps, latents)
        guidance = self.inversion_guidance(guidance_scale)
        text = self.encode(prompt, "", 1, self.uses_guidance_pass(guidance, 1.0))

        def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.predict(x, t, text, [float(source_bokeh)], None, guidance, 1.0, None)

        return self.invert(predict, latents)

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        prompt: str = "",
        bokeh: Sequence[float] | float = 0.0,
        source_bokeh: float = 0.0,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        grounding_steps: Optional[int] = None,
        shared_steps: int = 0,
        colour_transfer: bool = True,
        subject_mask: Optional[np.ndarray] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> Union[BokehPipelineOutput, tuple]:
        """``image`` (a photo whose bokeh level is ``source_bokeh``, described by ``prompt``) re-rendered at each K
        in ``bokeh``.

        The photo is encoded and inverted at ``source_bokeh`` (``invert_photo``), and the target rows start from
        its inverted noise with a pivot row at ``source_bokeh`` that follows the inverted trajectory step by step,
        so for ``grounding_steps`` steps (default all) every row attends with the photo's own queries; the first
        ``shared_steps`` steps hold every row on that trajectory (the edit then starts from the photo's latents at
        that noise level: more of the photo kept, less room for the new blur). ``guidance_scale`` defaults to
        ``edit_guidance`` (UNet: 1, no classifier-free pass; FLUX: its distilled 3.0). ``colour_transfer``: each edit takes
        the input photo's LAB means, grounded or not (not for ``output_type="latent"``). ``subject_mask`` (HxW bool,
        True = subject, any size): the photo's subject is blended back over each edit (``pipelines.edit_blend``), as
        the subject stays in focus at every K."""
        if not isinstance(prompt, str):
            raise ValueError("prompt must be one string (the photo's caption, or empty)")
        source_bokeh = float(source_bokeh)
        if not 0 <= source_bokeh <= MAX_BOKEH_LEVEL:  # also refuses NaN
            raise ValueError(f"source_bokeh (the photo's own K) must be in 0..{MAX_BOKEH_LEVEL:g}, got {source_bokeh:g}")
        levels = checked_levels(bokeh, source_bokeh)
        if any(k < 0 for k in levels):
            raise ValueError("an edit needs target levels K >= 0")
        steps = self.default_steps if num_inference_steps is None else int(num_inference_steps)
        if steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
        grounding_steps = steps if grounding_steps is None else int(grounding_steps)
        if not 0 <= shared_steps <= steps:
            raise ValueError(f"shared_steps must be in 0..{steps} (the steps), got {shared_steps}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if subject_mask is not None and output_type == "latent":
            raise ValueError("subject_mask blends images: it needs an output_type other than 'latent'")
        guidance_scale = self.edit_guidance if guidance_scale is None else float(guidance_scale)
        pixels, photo = self.photo_pixels(image, height, width)
        height, width = photo.height, photo.width

        trajectory = self.invert_photo(pixels, prompt, source_bokeh, steps, guidance_scale, height, width)
        grounded = grounding_steps > 0
        colour_transfer = colour_transfer and output_type != "latent"
        # Colour is moved to the input photo's own means here, not to the regenerated pivot's: it then holds
        # whether or not a pivot row is grounded.
        finish = colour_transfer or subject_mask is not None
        images = BokehPipeline.__call__(
            self, prompt, levels, pivot=source_bokeh, grounding_steps=grounding_steps, num_inference_steps=steps,
            guidance_scale=guidance_scale, negative_prompt="", height=height, width=width, colour_transfer=False,
            shared_steps=shared_steps, latents=self.from_batch(trajectory[0], height, width),
            output_type="pil" if finish else output_type,
            callback_on_step_end=anchored(trajectory, shared_steps, grounded),
        ).images
        if colour_transfer:
            images = [lab_mean_transfer(photo, edit) for edit in images]
        if subject_mask is not None:
            images = [keep_subject(edit, photo, subject_mask) for edit in images]
        if finish:
            images = self._format(images, output_type)
        return BokehPipelineOutput(images=images, bokeh=levels) if return_dict else (images, levels)


class BokehStableDiffusionEditPipeline(BokehEditMixin, BokehStableDiffusionPipeline):
    """Bokeh edits on a UNet model (SD 1.5 style or the tiny pixel-space model) by DDIM inversion; its scheduler
    is always DDIM (eta 0) on the base's noise schedule, the sampler that inverts exactly in the step-size limit."""

    def __init__(self, unet: Any, text_encoder: Any, tokenizer: Any, scheduler: Any, adapter: Any,
                 vae: Optional[Any] = None) -> None:
        from diffusers import DDIMScheduler

        if not isinstance(scheduler, DDIMScheduler):
            scheduler = DDIMScheduler.from_config(scheduler.config)
        super().__init__(unet, text_encoder, tokenizer, scheduler, adapter, vae)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return torch.nn.functional.pixel_unshuffle(pixels, self.patch).to(self.unet.dtype)
        moments = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        return (moments.mean * self.vae.config.scaling_factor).to(self.unet.dtype)

    def to_batch(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return latents

    def from_batch(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return latents

    def invert(self, predict: Predict, latents: torch.Tensor) -> list[torch.Tensor]:
        return ddim_inversion(predict, latents, self.scheduler)

    def inversion_guidance(self, guidance_scale: float) -> float:
        """1 (the conditional prediction alone): classifier-free guidance makes DDIM inversion drift."""
        return 1.0


class BokehFluxEditPipeline(BokehEditMixin, BokehFluxPipeline):
    """Bokeh edits on FLUX.1 by flow-matching inversion (Euler steps from the photo's latents up to noise)."""

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        moments = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        return (moments.mean - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def to_batch(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.initial_latents(latents, 1, height, width)

    def from_batch(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        h, w = self.latent_shape(height, width)[1:]
        return unpack_latents(latents, h, w)

    def invert(self, predict: Predict, latents: torch.Tensor) -> list[torch.Tensor]:
        return flow_inversion(predict, latents, self.scheduler)

    def inversion_guidance(self, guidance_scale: float) -> float:
        """The regeneration's own: FLUX.1-dev's guidance is an input of the distilled model, not a second pass."""
        return guidance_scale


EDIT_PIPELINES = {BokehStableDiffusionPipeline: BokehStableDiffusionEditPipeline, BokehFluxPipeline: BokehFluxEditPipeline}


def edit_pipeline(pipe: BokehPipeline) -> BokehEditMixin:
    """The edit pipeline on a loaded sampling pipeline's components (the same modules, nothing copied). Offload hooks
    do not carry over: call ``enable_model_cpu_offload()`` on the pipeline this returns, not before."""
    for base, edit in EDIT_PIPELINES.items():
        if isinstance(pipe, base):
            return pipe if isinstance(pipe, edit) else edit(**pipe.components).to(pipe.device)
    raise ValueError(f"no edit pipeline for {type(pipe).__name__}")
