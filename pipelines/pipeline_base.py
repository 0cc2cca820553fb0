"""What every Bokeh Diffusion sampling pipeline shares: the K list, unbounded vs grounded batches,
the denoising loop and the final colour transfer. Backbone-specific work (text encoding, noise,
timesteps, the guided prediction, decoding) lives in the subclasses."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from PIL import Image

from estimators.lens import MAX_BOKEH_LEVEL
from pipelines.colour_transfer import lab_mean_transfer


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


class BokehPipeline(ABC):
    """Text + K list -> one image per K from the same initial noise (see ``__call__``)."""

    default_steps = 30
    default_guidance = 3.0
    default_seed = 0
    default_negative_prompt = ""

    #: Weights dtype when ``from_pretrained`` is not given one.
    default_dtype = torch.float32

    @classmethod
    def from_pretrained(
        cls,
        base: Union[str, Path],
        adapter: Union[str, Path],
        *,
        device: Optional[Union[str, torch.device]] = None,
        torch_dtype: Optional[Union[str, torch.dtype]] = None,
    ) -> "BokehPipeline":
        """The base model (folder or hub id) with the adapter (folder or hub id) installed, both in
        ``torch_dtype`` (name or dtype; default ``default_dtype``) on ``device`` (CUDA when present).
        Unavailable or unfit models raise ModelUnavailableError (one line)."""
        from estimators.model_loading import resolve_device
        from trainer.backbones import DTYPES

        if isinstance(torch_dtype, str) and torch_dtype not in DTYPES:
            raise ValueError(f"torch_dtype must be one of {sorted(DTYPES)}, got {torch_dtype!r}")
        dtype = DTYPES[torch_dtype] if isinstance(torch_dtype, str) else (torch_dtype or cls.default_dtype)
        return cls._load(str(base), str(adapter), resolve_device(device), dtype)

    @classmethod
    @abstractmethod
    def _load(cls, base: str, adapter: str, device: torch.device, dtype: torch.dtype) -> "BokehPipeline":
        """Build the pipeline from checked arguments."""

    def __init__(self, adapter: torch.nn.Module, device: torch.device) -> None:
        self.adapter = adapter
        self.device = torch.device(device)
        self.progress = True

    # ---------------------------------------------------------------- backbone-specific steps
    @property
    @abstractmethod
    def default_resolution(self) -> int:
        """The image side the model was trained at (used when height / width are not given)."""

    @property
    @abstractmethod
    def size_multiple(self) -> int:
        """Image sides must be multiples of this."""

    @abstractmethod
    def encode(self, prompt: str, negative_prompt: str, rows: int, with_negative: bool) -> dict[str, Any]:
        """Text conditioning for ``rows`` copies of ``prompt`` (and of the negative prompt when ``with_negative``)."""

    @abstractmethod
    def initial_latents(self, seed: int, rows: int, height: int, width: int) -> torch.Tensor:
        """One noise draw from ``seed``, repeated for every row."""

    @abstractmethod
    def set_timesteps(self, steps: int, latents: torch.Tensor) -> torch.Tensor:
        """Configure ``self.scheduler`` for ``steps`` steps; returns its timesteps."""

    @abstractmethod
    def predict(self, latents: torch.Tensor, t: torch.Tensor, text: dict[str, Any], levels: list[float],
                pivot_ids: Optional[list[int]], guidance_scale: float, true_cfg: float,
                bokeh_guidance: Optional[float]) -> torch.Tensor:
        """The (guided, see ``bokeh_models.guidance.guided``) model output for the batch at timestep ``t``."""

    def step(self, prediction: torch.Tensor, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """One scheduler step (every backbone keeps its diffusers scheduler in ``self.scheduler``)."""
        return self.scheduler.step(prediction, t, latents, return_dict=False)[0]

    @abstractmethod
    def decode(self, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
        """The batch as PIL images."""

    @abstractmethod
    def uses_guidance_pass(self, guidance_scale: float, true_cfg: float) -> bool:
        """Whether a negative (unconditional) pass runs at each step."""

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
        prompt: str,
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
    ) -> list[Image.Image]:
        """One image per K in ``bokeh`` (K < 0: no bokeh condition), all from the noise of ``seed``.

        Unbounded mode (``pivot`` None or ``grounding_steps`` 0): the K rows denoise independently.
        Grounded mode: a pivot row at K = ``pivot`` joins the batch; for the first ``grounding_steps``
        steps every row attends with the pivot's queries (grounded self-attention), and at the end each
        image takes the pivot's LAB colour means (as the released code does; ``colour_transfer=False`` keeps
        each image's own: defocus in linear light brightens a blurred background, and the shift that undoes
        it moves the subject's colours too).

        ``shared_steps`` S (needs ``pivot``; default 0, as released): the first S steps denoise every row at the
        pivot's K, so all rows follow one trajectory while the layout forms at high noise, and each takes its own
        K for the rest, where blur forms. A scene that would otherwise change with K (another subject, pose or
        place) is held. The rows being one image then, those S steps run the model and the scheduler on one row
        and copy it to all (one trajectory, also with a scheduler that adds noise at each step).

        ``bokeh_guidance`` guides K on its own (one more model pass per step, see
        ``bokeh_models.guidance.guided``). None: K is guided with the prompt, by the classifier-free scale when
        a negative pass runs, else not at all; that same value as ``bokeh_guidance`` changes nothing,
        larger values strengthen the blur K asks for. The no-K rows are grounded on their own pivot.
        """
        levels = checked_levels(bokeh, pivot)
        steps = self.default_steps if num_inference_steps is None else int(num_inference_steps)
        if steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
        if grounding_steps < 0:
            raise ValueError(f"grounding_steps must be >= 0, got {grounding_steps}")
        if shared_steps < 0 or (shared_steps and pivot is None):
            raise ValueError(f"shared_steps must be >= 0 and needs a pivot (its K is shared), got {shared_steps} with pivot {pivot}")
        guidance_scale = self.default_guidance if guidance_scale is None else float(guidance_scale)
        negative_prompt = self.default_negative_prompt if negative_prompt is None else negative_prompt
        seed = self.default_seed if seed is None else int(seed)
        if bokeh_guidance is not None and not (math.isfinite(bokeh_guidance) and bokeh_guidance >= 0):
            raise ValueError(f"bokeh_guidance must be >= 0, got {bokeh_guidance:g}")
        height, width = self._size(height, width)

        grounded = pivot is not None and grounding_steps > 0
        batch_levels = levels + [float(pivot)] if grounded else levels
        rows = len(batch_levels)
        pivot_ids = [rows - 1] * rows if grounded else None

        negative_pass = self.uses_guidance_pass(guidance_scale, true_cfg)
        text = self.encode(prompt, negative_prompt, rows, negative_pass)
        one_row_text = self.encode(prompt, negative_prompt, 1, negative_pass) if shared_steps else None
        latents = self.initial_latents(seed, rows, height, width)
        timesteps = self.set_timesteps(steps, latents)
        from tqdm.auto import tqdm

        for i, t in enumerate(tqdm(timesteps, desc="sample", leave=False, disable=not self.progress)):
            if i < shared_steps:
                # The rows are one image (same noise, the pivot's K; grounding on an identical row is plain
                # attention): step one row and copy it, so they stay one even where the scheduler adds noise.
                one_row = latents[:1]
                prediction = self.predict(one_row, t, one_row_text, [float(pivot)], None, guidance_scale, true_cfg,
                                          bokeh_guidance)
                latents = self.step(prediction, t, one_row).expand_as(latents).contiguous()
            else:
                grounding = pivot_ids if i < grounding_steps else None
                prediction = self.predict(latents, t, text, batch_levels, grounding, guidance_scale, true_cfg, bokeh_guidance)
                latents = self.step(prediction, t, latents)
        images = self.decode(latents, height, width)
        if grounded:
            pivot_image = images.pop()
            if colour_transfer:
                images = [lab_mean_transfer(pivot_image, image) for image in images]
        return images
