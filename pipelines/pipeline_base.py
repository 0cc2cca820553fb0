"""What every Bokeh Diffusion sampling pipeline shares: the K list, unbounded vs grounded batches, the denoising
loop, the final colour transfer and diffusers' pipeline conventions (generator, latents, output_type,
return_dict, callback_on_step_end, num_images_per_prompt, prompt lists, ``.to()``, offloading, progress bars).
Backbone-specific work (text encoding, noise, timesteps, the guided prediction, decoding) lives in the subclasses."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from PIL import Image

from estimators.lens import MAX_BOKEH_LEVEL
from estimators.model_loading import ModelUnavailableError
from pipelines.colour_transfer import lab_mean_transfer

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class BokehPipelineOutput(BaseOutput):
    """``images``: one per (prompt, image of that prompt, K), K varying fastest, as PIL images, an ``np`` array
    ``[N, H, W, 3]`` or a ``pt`` tensor ``[N, 3, H, W]`` in [0, 1], or latents; ``bokeh``: the K of each image."""

    images: Union[list[Image.Image], np.ndarray, torch.Tensor]
    bokeh: list[float]


def checked_levels(bokeh: Sequence[float] | float, pivot: Optional[float]) -> list[float]:
    """``bokeh`` as a list of floats, with one clear error for a value no model takes."""
    levels = [float(bokeh)] if isinstance(bokeh, (int, float)) else [float(k) for k in bokeh]
    if not levels:
        raise ValueError("bokeh needs at least one level K")
    for k in levels:
        if not math.isfinite(k) or k > MAX_BOKEH_LEVEL:
            raise ValueError(
                f"bokeh level K must be in 0..{MAX_BOKEH_LEVEL:g} (or negative for no condition), got {k:g}")
    if pivot is not None and not (math.isfinite(pivot) and 0 <= pivot <= MAX_BOKEH_LEVEL):
        raise ValueError(f"pivot K must be in 0..{MAX_BOKEH_LEVEL:g}, got {pivot:g}")
    return levels


def noise_generator(seed: Optional[int], generator: Optional[torch.Generator], default_seed: int) -> torch.Generator:
    """The CPU generator the sweeps' noise is drawn from: ``generator``, else one seeded with ``seed``."""
    if generator is not None and seed is not None:
        raise ValueError("give seed or generator, not both")
    if isinstance(generator, (list, tuple)):
        raise ValueError("one generator: every sweep's noise is drawn from it in turn")
    return generator or torch.Generator("cpu").manual_seed(default_seed if seed is None else int(seed))


def adapter_source(base: str, adapter: Union[str, Path, None]) -> str:
    """The adapter to load: the one named, else the ``adapter/`` folder of a saved pipeline."""
    if adapter is not None:
        return str(adapter)
    saved = Path(base).expanduser() / "adapter"
    if not saved.is_dir():
        raise ModelUnavailableError(f"{base} holds no adapter/ (a base model): pass adapter=FOLDER|HUB_ID")
    return str(saved)


class BokehPipeline(DiffusionPipeline):
    """Text + K list -> one image per K from the same initial noise (see ``__call__``)."""

    default_steps = 30
    default_guidance = 3.0
    default_seed = 0
    default_negative_prompt = ""
    #: The adapter runs inside the base model's attention layers (they carry its processors) and its embedding
    #: is small: it stays on the execution device while the large models are offloaded.
    _exclude_from_cpu_offload = ["adapter"]

    def _install_adapter(self) -> None:
        """Put the adapter's processors on the base model (a no-op when they are there already)."""
        if isinstance(self.adapter, torch.nn.Module):
            self.adapter.install(self.base_model)

    @property
    def base_model(self) -> torch.nn.Module:
        """The network the adapter is installed on (UNet or transformer)."""
        raise NotImplementedError

    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> None:
        """diffusers' pipeline folder (model_index.json + one folder per component, ``adapter/`` in the released
        layout), the base model saved with its own attention processors (the adapter's weights only in ``adapter/``)."""
        self.adapter.uninstall(self.base_model)
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            self.adapter.install(self.base_model)

    def _tokens_with_offsets(self, text: str) -> Optional[dict[str, list]]:
        """``text`` through the pipeline's first tokenizer, without special tokens or the library's length warning:
        its ``input_ids`` and each token's character span (``offset_mapping``); None for a tokenizer without spans."""
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is None or not getattr(tokenizer, "is_fast", False):
            return None
        return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        """The words of ``texts`` (not punctuation) that the pipeline's first tokenizer reads as its unknown token, each
        once (as first spelled), in order; [] for a tokenizer without one or without offsets (byte-level BPE knows
        every word)."""
        unk = getattr(getattr(self, "tokenizer", None), "unk_token_id", None)
        if unk is None:
            return []
        words: dict[str, str] = {}
        for text in texts:
            encoded = self._tokens_with_offsets(text)
            if encoded is None:
                return []
            for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
                word = text[start:end]
                if token == unk and any(c.isalnum() for c in word):
                    words.setdefault(word.lower(), word)
        return list(words.values())

    def truncated_text(self, text: str) -> str:
        """The end of ``text`` that the pipeline's first tokenizer cuts off at its ``model_max_length`` (its special
        tokens counted); "" when the whole text fits or the tokenizer gives no offsets."""
        encoded = self._tokens_with_offsets(text)
        if encoded is None:
            return ""
        room = self.tokenizer.model_max_length - self.tokenizer.num_special_tokens_to_add()
        offsets = encoded["offset_mapping"]
        return text[offsets[room][0]:].strip() if len(offsets) > room else ""

    # ---------------------------------------------------------------- backbone-specific steps
    @property
    def default_resolution(self) -> int:
        """The image side the model was trained at (used when height / width are not given)."""
        raise NotImplementedError

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this."""
        raise NotImplementedError

    def encode(self, prompt: str, negative_prompt: str, rows: int, with_negative: bool) -> dict[str, Any]:
        """Text conditioning for ``rows`` copies of ``prompt`` (and of the negative prompt when ``with_negative``)."""
        raise NotImplementedError

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        """The shape of one image's initial noise ``[C, h, w]`` as drawn (``latents`` takes it too; FLUX packs it after)."""
        raise NotImplementedError

    @property
    def noise_dtype(self) -> torch.dtype:
        """The dtype the initial noise is drawn in."""
        raise NotImplementedError

    def initial_latents(self, noise: torch.Tensor, rows: int, height: int, width: int) -> torch.Tensor:
        """One sweep's starting latents: ``noise`` (one image's) repeated for every row and scaled as the
        scheduler wants."""
        raise NotImplementedError

    def set_timesteps(self, steps: int, latents: torch.Tensor) -> torch.Tensor:
        """Configure ``self.scheduler`` for ``steps`` steps; returns its timesteps."""
        raise NotImplementedError

    def predict(self, latents: torch.Tensor, t: torch.Tensor, text: dict[str, Any], levels: list[float],
                pivot_ids: Optional[list[int]], guidance_scale: float, true_cfg: float,
                bokeh_guidance: Optional[float]) -> torch.Tensor:
        """The (guided, see ``bokeh_models.guidance.guided``) model output for the batch at timestep ``t``."""
        raise NotImplementedError

    def step(self, prediction: torch.Tensor, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """One scheduler step."""
        return self.scheduler.step(prediction, t, latents, return_dict=False)[0]

    def decode_tensor(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The batch as images ``[N, 3, H, W]`` in [-1, 1]."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
        """The batch as PIL images."""
        return self.image_processor.postprocess(self.decode_tensor(latents, height, width).float(), output_type="pil")

    def uses_guidance_pass(self, guidance_scale: float, true_cfg: float) -> bool:
        """Whether a negative (unconditional) pass runs at each step."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the algorithm
    def _size(self, height: Optional[int], width: Optional[int]) -> tuple[int, int]:
        height = height or self.default_resolution
        width = width or self.default_resolution
        m = self.size_multiple
        if height % m or width % m or height < m or width < m:
            raise ValueError(f"height and width must be positive multiples of {m} for this model, got {height}x{width}")
        return height, width

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, list[str]],
        bokeh: Sequence[float] | float,
        pivot: Optional[float] = None,
        grounding_steps: int = 24,
        seed: Optional[int] = None,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        negative_prompt: Optional[str] = None,
        true_cfg: float = 1.0,
        height: Optional[int] = None,
        width: Optional[int] = None,
        bokeh_guidance: Optional[float] = None,
        colour_transfer: bool = True,
        shared_steps: int = 0,
        num_images_per_prompt: int = 1,
        generator: Optional[torch.Generator] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[..., dict[str, Any]]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Union[BokehPipelineOutput, tuple]:
        """One image per K in ``bokeh`` (K < 0: no bokeh condition) for each prompt and each of its
        ``num_images_per_prompt`` noise draws (a sweep: all K from one noise).

        Noise: drawn on the CPU from ``generator``, else from a generator seeded with ``seed`` (default the
        pipeline's ``default_seed``), one draw per sweep in turn; or ``latents`` (one per sweep, shape
        ``latent_shape``). Unbounded mode (``pivot`` None or ``grounding_steps`` 0): the K rows denoise
        independently. Grounded mode: a pivot row at K = ``pivot`` joins the batch; for the first
        ``grounding_steps`` steps every row attends with the pivot's queries (grounded self-attention), and at the
        end each image takes the pivot's LAB colour means (as the released code does; ``colour_transfer=False``
        keeps each image's own: defocus in linear light brightens a blurred background, and the shift that undoes
        it moves the subject's colours too). The transfer works on 8-bit images, so it rounds "np" / "pt" output
        to 1/255; "latent" output skips it and decoding.

        ``shared_steps`` S (needs ``pivot``; default 0, as released): the first S steps denoise every row at the
        pivot's K, so all rows follow one trajectory while the layout forms at high noise, and each takes its own
        K for the rest, where blur forms. A scene that would otherwise change with K (another subject, pose or
        place) is held. The rows being one image then, those S steps run the model and the scheduler on one row
        and copy it to all (one trajectory, also with a scheduler that adds noise at each step).

        ``bokeh_guidance`` guides K on its own (one more model pass per step, see
        ``bokeh_models.guidance.guided``). None: K is guided with the prompt, by the classifier-free scale when
        a negative pass runs, else not at all; that same value as ``bokeh_guidance`` changes nothing,
        larger values strengthen the blur K asks for. The no-K rows are grounded on their own pivot.

        ``callback_on_step_end(pipe, i, t, kwargs)`` after each step, with the tensors named in
        ``callback_on_step_end_tensor_inputs`` (``latents``: the sweep's batch); a ``latents`` it returns
        replaces them.
        """
        levels = checked_levels(bokeh, pivot)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")
        steps = self.default_steps if num_inference_steps is None else int(num_inference_steps)
        if steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
        if grounding_steps < 0:
            raise ValueError(f"grounding_steps must be >= 0, got {grounding_steps}")
        if shared_steps < 0 or (shared_steps and pivot is None):
            raise ValueError(f"shared_steps must be >= 0 and needs a pivot (its K is shared), got {shared_steps} with pivot {pivot}")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        unknown = sorted(set(callback_on_step_end_tensor_inputs) - {"latents"})
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs can name only 'latents', got {unknown}")
        guidance_scale = self.default_guidance if guidance_scale is None else float(guidance_scale)
        negative_prompt = self.default_negative_prompt if negative_prompt is None else negative_prompt
        if bokeh_guidance is not None and not (math.isfinite(bokeh_guidance) and bokeh_guidance >= 0):
            raise ValueError(f"bokeh_guidance must be >= 0, got {bokeh_guidance:g}")
        height, width = self._size(height, width)
        unknown = self.unknown_words([*prompts, negative_prompt])
        if unknown:
            warnings.warn(f"words outside the text encoder's vocabulary: {', '.join(repr(w) for w in unknown)}; each reads "
                          "as the unknown token, which means nothing to the model (a model trained from scratch knows only "
                          "the words of its training captions)", stacklevel=3)  # the caller's line (past torch.no_grad)
        for text in dict.fromkeys([*prompts, negative_prompt]):
            cut = self.truncated_text(text)
            if cut:
                warnings.warn(f"the prompt is longer than the text encoder's {self.tokenizer.model_max_length} tokens; "
                              f"this end of it is cut off and not seen by the model: {cut!r}", stacklevel=3)
        sweeps = len(prompts) * num_images_per_prompt
        shape = self.latent_shape(height, width)
        if latents is not None and tuple(latents.shape) != (sweeps, *shape):
            raise ValueError(f"latents must have shape {(sweeps, *shape)} (one noise per sweep), got {tuple(latents.shape)}")
        draw = None if latents is not None else noise_generator(seed, generator, self.default_seed)

        outputs: list = []
        for j in range(sweeps):
            if latents is not None:
                noise = latents[j:j + 1]
            else:
                noise = torch.randn((1, *shape), generator=draw, dtype=self.noise_dtype)
            outputs += self._sweep(prompts[j // num_images_per_prompt], noise, levels, pivot, grounding_steps, steps,
                                   guidance_scale, negative_prompt, true_cfg, height, width, bokeh_guidance,
                                   colour_transfer, shared_steps, output_type, j,
                                   callback_on_step_end, callback_on_step_end_tensor_inputs)
        self.maybe_free_model_hooks()
        images = self._format(outputs, output_type)
        bokeh_out = levels * sweeps
        return BokehPipelineOutput(images=images, bokeh=bokeh_out) if return_dict else (images, bokeh_out)

    def _sweep(self, prompt, noise, levels, pivot, grounding_steps, steps, guidance_scale, negative_prompt, true_cfg,
               height, width, bokeh_guidance, colour_transfer, shared_steps, output_type, sweep, callback,
               callback_inputs) -> list:
        """One prompt's images at every K from one noise (see ``__call__``)."""
        grounded = pivot is not None and grounding_steps > 0
        batch_levels = levels + [float(pivot)] if grounded else levels
        rows = len(batch_levels)
        pivot_ids = [rows - 1] * rows if grounded else None

        negative_pass = self.uses_guidance_pass(guidance_scale, true_cfg)
        text = self.encode(prompt, negative_prompt, rows, negative_pass)
        one_row_text = self.encode(prompt, negative_prompt, 1, negative_pass) if shared_steps else None
        latents = self.initial_latents(noise, rows, height, width)
        timesteps = self.set_timesteps(steps, latents)
        with self.progress_bar(total=len(timesteps)) as bar:
            for i, t in enumerate(timesteps):
                if i < shared_steps:
                    # The rows are one image (same noise, the pivot's K; grounding on an identical row is plain
                    # attention): step one row and copy it, so they stay one even where the scheduler adds noise.
                    one_row = latents[:1]
                    prediction = self.predict(one_row, t, one_row_text, [float(pivot)], None, guidance_scale, true_cfg,
                                              bokeh_guidance)
                    latents = self.step(prediction, t, one_row).expand_as(latents).contiguous()
                else:
                    grounding = pivot_ids if i < grounding_steps else None
                    prediction = self.predict(latents, t, text, batch_levels, grounding, guidance_scale, true_cfg,
                                              bokeh_guidance)
                    latents = self.step(prediction, t, latents)
                if callback is not None:
                    named = {"latents": latents}
                    returned = callback(self, sweep * len(timesteps) + i, t, {k: named[k] for k in callback_inputs}) or {}
                    latents = returned.get("latents", latents)
                bar.update()
        if output_type == "latent":
            return list(latents[:len(levels)])
        images = self.decode(latents, height, width)
        if grounded:
            pivot_image = images.pop()
            if colour_transfer:
                images = [lab_mean_transfer(pivot_image, image) for image in images]
        return images

    @staticmethod
    def _format(outputs: list, output_type: str) -> Union[list[Image.Image], np.ndarray, torch.Tensor]:
        if output_type == "pil":
            return outputs
        if output_type == "latent":
            return torch.stack(outputs)
        array = np.stack([np.asarray(image, dtype=np.float32) / 255.0 for image in outputs])
        return array if output_type == "np" else torch.from_numpy(array).permute(0, 3, 1, 2)
