"""Validation grids: each row under a band naming its prompt, mode and seed; the rows in the PNG's text metadata."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
from PIL import Image

from trainer.validation import MARGIN, GridRow, grid_rows, layout_grid, save_grid, text_band


def _config(prompts, levels=(0, 30), seed=7, steps=25):
    return SimpleNamespace(validation=SimpleNamespace(prompts=list(prompts), levels=list(levels), seed=seed, steps=steps))


def _dark(image: Image.Image) -> np.ndarray:
    """Where the image has ink (any channel below mid-grey)."""
    return np.asarray(image.convert("L")) < 128


def test_rows_per_prompt_unbounded_then_grounded_halfway():
    rows = grid_rows(_config(["a red star", "a blue box"], levels=(0, 10, 20, 30), steps=25))
    assert [(r.prompt, r.mode, r.seed) for r in rows] == [
        ("a red star", "unbounded", 7), ("a red star", "grounded on K = 15", 7),
        ("a blue box", "unbounded", 8), ("a blue box", "grounded on K = 15", 8)]
    assert rows[0].sampling == {} and rows[1].sampling == {"pivot": 15.0, "grounding_steps": 20}  # 4/5 of 25 steps
    assert rows[1].title() == "a red star  (grounded on K = 15, seed 7)"


def test_a_band_draws_its_text_inside_its_margins_and_wraps():
    blank = text_band("", 300, 12)
    assert not _dark(blank).any()  # no text, no ink
    short = text_band("a red star", 300, 12)
    ink = _dark(short)
    assert ink.any() and short.size == blank.size
    cols = np.flatnonzero(ink.any(axis=0))
    assert cols[0] >= MARGIN - 1 and cols[-1] < 300 / 2  # left-aligned; ten characters of 12 px type
    assert not np.array_equal(ink, _dark(text_band("a blue box", 300, 12)))  # another prompt, other ink
    words = " ".join(["leafy"] * 30)
    long = text_band(words, 300, 12)
    line = blank.height - MARGIN
    assert (long.height - MARGIN) % line == 0 and (long.height - MARGIN) // line >= 3  # wrapped onto several lines
    assert not _dark(long)[:, 300 - MARGIN + 2:].any()  # nothing past the right margin


def test_grid_puts_each_band_above_its_row(tmp_path):
    rows = [GridRow("a red star", "unbounded", 0), GridRow("a red star", "grounded on K = 15", 0)]
    sheets = [Image.new("RGB", (200, 90), (90, 160, 90)), Image.new("RGB", (180, 90), (160, 90, 90))]
    grid = layout_grid(rows, sheets)
    bands = [text_band(row.title(), 200, 12) for row in rows]  # the widest row's width; type max(12, 90 // 14)
    assert grid.width == 200 and grid.height == sum(b.height for b in bands) + 2 * 90
    pixels = np.asarray(grid)
    y = 0
    for band, sheet in zip(bands, sheets):
        assert np.array_equal(pixels[y:y + band.height], np.asarray(band))
        assert _dark(band).any()  # the band is labelled, not blank
        y += band.height
        assert (pixels[y:y + 90, :sheet.width] == sheet.getpixel((0, 0))).all()
        assert (pixels[y:y + 90, sheet.width:] == 255).all()  # a narrower row on white
        y += 90


def test_saved_grid_carries_its_rows_as_png_text(tmp_path):
    config = _config(["a red star in front of a hedge", "a blue box"], levels=(0, 30), seed=3)
    grid = Image.new("RGB", (40, 30), "white")
    save_grid(grid, tmp_path / "step-0000010.png", config, 10)
    saved = Image.open(tmp_path / "step-0000010.png")
    assert saved.text["step"] == "10"
    assert json.loads(saved.text["rows"]) == [
        {"prompt": "a red star in front of a hedge", "mode": "unbounded", "seed": 3, "K": [0.0, 30.0]},
        {"prompt": "a red star in front of a hedge", "mode": "grounded on K = 15", "seed": 3, "K": [0.0, 30.0]},
        {"prompt": "a blue box", "mode": "unbounded", "seed": 4, "K": [0.0, 30.0]},
        {"prompt": "a blue box", "mode": "grounded on K = 15", "seed": 4, "K": [0.0, 30.0]},
    ]
    assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(grid))
