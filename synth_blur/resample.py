"""Bicubic 2x upsampling (Keys a = -0.75, half-pixel centres, edge samples repeated) as blocked matrix products.

The same result as ``F.interpolate(..., scale_factor=2, mode="bicubic", align_corners=False)``,
computed one axis at a time: the axis is cut into blocks of BLOCK samples, and each block with
its 2-sample borders on both sides is multiplied by one fixed (BLOCK + 4) x (2 BLOCK) matrix, so
the work runs in matrix-multiply kernels instead of a per-pixel 16-tap loop. The intermediate
arrays come from two kept scratch buffers (:mod:`synth_blur.workspace`), used in turn.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch

from .workspace import kept_empty

#: Output 2i reads inputs i-2 .. i+1, output 2i + 1 reads i-1 .. i+2 (cubic weights at offsets 0.75 / 0.25).
EVEN_TAPS = (-0.03515625, 0.26171875, 0.87890625, -0.10546875)
ODD_TAPS = (-0.10546875, 0.87890625, 0.26171875, -0.03515625)
#: Input samples per block of one matrix product (small blocks waste few multiplications on zeros).
BLOCK = 16
_SCRATCH = ("upsample scratch a", "upsample scratch b")


@lru_cache(maxsize=None)
def _block_matrix() -> torch.Tensor:
    """[BLOCK + 4, 2 BLOCK]: column 2i + p holds the taps of output 2i + p on the block's padded inputs."""
    matrix = torch.zeros(BLOCK + 4, 2 * BLOCK, dtype=torch.float64)
    for i in range(BLOCK):
        matrix[i : i + 4, 2 * i] = torch.tensor(EVEN_TAPS, dtype=torch.float64)
        matrix[i + 1 : i + 5, 2 * i + 1] = torch.tensor(ODD_TAPS, dtype=torch.float64)
    return matrix


def _row_blocks(image: torch.Tensor, scratch: str) -> tuple[torch.Tensor, int]:
    """The edge-padded rows of ``image`` [C, h, w] cut into overlapping windows of BLOCK + 4 rows, laid out
    one after the other (a contiguous copy [C, windows * (BLOCK + 4), w]), and the number of windows."""
    channels, size, width = image.shape
    count = -(-size // BLOCK)
    starts = torch.arange(count, device=image.device)[:, None] * BLOCK - 2
    index = (starts + torch.arange(BLOCK + 4, device=image.device)).clamp_(0, size - 1).reshape(-1)
    out = kept_empty(scratch, (channels, index.numel(), width), image)
    return torch.index_select(image, 1, index, out=out), count


def _column_blocks(image: torch.Tensor, scratch: tuple[str, str]) -> torch.Tensor:
    """The edge-padded columns of ``image`` [C, h, w] as overlapping windows, copied to [C h windows, BLOCK + 4]
    (the windows of one padded copy: whole rows are copied, not single samples gathered)."""
    channels, rows, size = image.shape
    count = -(-size // BLOCK)
    right = count * BLOCK + 2 - size
    padded = kept_empty(scratch[0], (channels, rows, count * BLOCK + 4), image)
    torch.cat([image[:, :, :1].expand(-1, -1, 2), image, image[:, :, -1:].expand(-1, -1, right)], 2, out=padded)
    windows = kept_empty(scratch[1], (channels, rows, count, BLOCK + 4), image)
    return windows.copy_(padded.unfold(2, BLOCK + 4, BLOCK)).view(-1, BLOCK + 4)


def upsample2(image: torch.Tensor, height: int, width: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bicubic 2x upsampling of ``image`` [C, h, w], cropped to ``height`` x ``width``, into ``out`` when given
    (contiguous [C, height, width]).

    Up to 2 BLOCK ceil(h / BLOCK) x 2 BLOCK ceil(w / BLOCK) may be asked for: outputs past 2h x 2w
    continue the edge, so a grid padded to whole tiles of any divisor of 2 BLOCK fits.
    """
    channels, rows, cols = image.shape
    if height > 2 * BLOCK * -(-rows // BLOCK) or width > 2 * BLOCK * -(-cols // BLOCK):
        raise ValueError(f"cannot upsample {rows}x{cols} to {height}x{width}")
    if out is None:
        out = image.new_empty((channels, height, width))
    matrix = _block_matrix().to(image.device, image.dtype)
    windows = _column_blocks(image, _SCRATCH)
    across = torch.mm(windows, matrix, out=kept_empty(_SCRATCH[0], (windows.shape[0], 2 * BLOCK), image))
    windows, count = _row_blocks(across.view(channels, rows, -1)[:, :, :width], _SCRATCH[1])
    shape = (channels * count, 2 * BLOCK, width)
    whole = count * 2 * BLOCK == height
    down = out.view(shape) if whole else kept_empty(_SCRATCH[0], shape, image)
    torch.bmm(matrix.t().expand(channels * count, -1, -1), windows.view(channels * count, BLOCK + 4, width), out=down)
    if not whole:
        out.copy_(down.view(channels, -1, width)[:, :height])
    return out
