"""Validation grids of ``bokeh train``: per prompt, its K sweep sampled unbounded and grounded by the pipeline users
run, each row under a band that names its prompt, mode and seed, each image labelled with its K underneath. The
PNG's text metadata holds the same rows as JSON (``rows``) and the step (``step``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo
from torch import nn

#: Margin (px) around a band's text, as the gap between a contact sheet's images.
MARGIN = 8


@dataclass
class GridRow:
    """One row of the grid: what it samples (the pipeline's keyword arguments besides the prompt and K)."""

    prompt: str
    mode: str
    seed: int
    sampling: dict[str, Any] = field(default_factory=dict)

    def title(self) -> str:
        """The row's band text."""
        return f"{self.prompt}  ({self.mode}, seed {self.seed})"


def grid_rows(config: Any) -> list[GridRow]:
    """The rows of ``config.validation``: per prompt the sweep unbounded, then grounded (pivot halfway between the
    lowest and highest K, the first 4/5 of the steps grounded, as the released sweeps are: 24 of 30), both from the
    seed ``validation.seed`` + the prompt's index."""
    val = config.validation
    pivot = (min(val.levels) + max(val.levels)) / 2
    rows = []
    for i, prompt in enumerate(val.prompts):
        rows.append(GridRow(prompt, "unbounded", val.seed + i))
        rows.append(GridRow(prompt, f"grounded on K = {pivot:g}", val.seed + i,
                            dict(pivot=pivot, grounding_steps=round(0.8 * val.steps))))
    return rows


def validation_pipeline(backbone: Any, adapter: nn.Module) -> Any:
    """The sampling pipeline users run, built on the training modules in memory (the trained adapter installed;
    a copy of the scheduler, whose timesteps sampling sets)."""
    from pipelines.pipeline_flux import BokehFluxPipeline
    from pipelines.pipeline_sd import BokehStableDiffusionPipeline

    if backbone.family == "flux":
        parts = backbone.pipe.components
        scheduler = parts["scheduler"]
        pipe = BokehFluxPipeline(
            scheduler=type(scheduler).from_config(scheduler.config), vae=parts["vae"], text_encoder=parts["text_encoder"],
            tokenizer=parts["tokenizer"], text_encoder_2=parts["text_encoder_2"], tokenizer_2=parts["tokenizer_2"],
            transformer=parts["transformer"], adapter=adapter)
    else:
        scheduler = type(backbone.scheduler).from_config(backbone.scheduler.config)
        pipe = BokehStableDiffusionPipeline(unet=backbone.unet, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer,
                                            scheduler=scheduler, adapter=adapter, vae=backbone.vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _wrapped(text: str, width: float, draw: ImageDraw.ImageDraw, font: Any) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` (a longer single word keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def text_band(text: str, width: int, font_size: int) -> Image.Image:
    """A white band ``width`` px wide with ``text`` in black, wrapped to the width, left-aligned."""
    font = ImageFont.load_default(size=font_size)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = _wrapped(text, width - 2 * MARGIN, draw, font)
    line_height = font.getbbox("Kg0")[3] + 2
    band = Image.new("RGB", (width, MARGIN + line_height * len(lines)), "white")
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((MARGIN, MARGIN + i * line_height), line, fill="black", font=font)
    return band


def layout_grid(rows: list[GridRow], sheets: list[Image.Image]) -> Image.Image:
    """The rows' contact ``sheets`` stacked, each under the band of its row's title."""
    width = max(s.width for s in sheets)
    font_size = max(12, min(s.height for s in sheets) // 14)
    parts = []
    for row, sheet in zip(rows, sheets, strict=True):
        parts += [text_band(row.title(), width, font_size), sheet]
    grid = Image.new("RGB", (width, sum(p.height for p in parts)), "white")
    y = 0
    for part in parts:
        grid.paste(part, (0, y))
        y += part.height
    return grid


def validation_grid(backbone: Any, adapter: nn.Module, config: Any) -> Image.Image:
    """A PIL image of :func:`grid_rows`, sampled by the pipeline users run, each image labelled with its K."""
    from synth_blur.contact_sheet import contact_sheet

    val = config.validation
    resolution = val.resolution or config.data.resolution
    pipe = validation_pipeline(backbone, adapter)
    rows = grid_rows(config)
    sheets = []
    for row in rows:
        images = pipe(row.prompt, val.levels, seed=row.seed, num_inference_steps=val.steps,
                      guidance_scale=val.guidance_scale, height=resolution, width=resolution, **row.sampling).images
        sheets.append(contact_sheet(images, [f"K={k:g}" for k in val.levels], height=max(64, resolution)))
    return layout_grid(rows, sheets)


def save_grid(grid: Image.Image, path: Path, config: Any, step: int) -> None:
    """Write ``grid`` as a PNG at ``path`` with its rows (prompt, mode, seed, K) and ``step`` as text metadata."""
    info = PngInfo()
    levels = [float(k) for k in config.validation.levels]
    info.add_text("rows", json.dumps([{"prompt": r.prompt, "mode": r.mode, "seed": r.seed, "K": levels}
                                      for r in grid_rows(config)]))
    info.add_text("step", str(step))
    grid.save(path, pnginfo=info)
