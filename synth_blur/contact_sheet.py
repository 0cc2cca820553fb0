"""Contact sheets: images side by side at one height, each labelled underneath, as one PIL image."""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SheetImage = Union[Image.Image, np.ndarray]


def _to_pil(image: SheetImage) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array.astype(np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def contact_sheet(
    images: Sequence[SheetImage], labels: Sequence[str], *, height: int = 320, gap: int = 8
) -> Image.Image:
    """One row of ``images`` scaled to ``height`` px, ``gap`` px apart on white, each with its label below."""
    if not images:
        raise ValueError("a contact sheet needs at least one image")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if height < 16 or gap < 0:
        raise ValueError(f"height must be >= 16 and gap >= 0, got {height} and {gap}")
    tiles = []
    for image in images:
        pil = _to_pil(image)
        width = max(1, round(pil.width * height / pil.height))
        tiles.append(pil.resize((width, height), Image.Resampling.LANCZOS))
    font = ImageFont.load_default(size=max(12, height // 14))
    text_height = font.getbbox("Kg0")[3] + gap
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) + 1), height + text_height + 2 * gap), "white")
    draw = ImageDraw.Draw(sheet)
    x = gap
    for tile, label in zip(tiles, labels):
        sheet.paste(tile, (x, gap))
        text_width = draw.textlength(label, font=font)
        draw.text((x + (tile.width - text_width) / 2, height + gap + gap // 2), label, fill="black", font=font)
        x += tile.width + gap
    return sheet
