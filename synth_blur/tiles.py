"""Tiled FFT blur of layers: each layer is blurred only on the tiles where it has pixels.

An image (full resolution or a reduced grid) is cut into TILE x TILE tiles; a tile's patch adds a
HALO-pixel border, enough for any kernel used (radius < FULL_RES_LIMIT on every grid). A patch's
circular FFT convolution is exact on the tile itself, so the work grows with the number of
(layer, tile) pairs, not with layers x image size, and not with the blur radius. Kernels up to
DIRECT_HALF_WIDTH pixels from their centre (and the in-focus identity) are applied directly, as a
sum of shifted copies of the patch: cheaper than two transforms for so few taps.

Patches and tiles are gathered and written back as runs of whole pixel rows with
``index_select`` / ``index_copy_``: an array made by ``with_halo`` is (cols + 1) x TILE wide, so
every patch row starts at a multiple of TILE in memory and the array reads as one overlapping
[runs, PATCH] matrix; a stack [4, padded_height, padded_width] reads as [runs, TILE].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from .aperture import Aperture, aperture_kernel, kernel_half_width
from .layers import FULL_RES_LIMIT

TILE = 32
HALO = kernel_half_width(FULL_RES_LIMIT)
PATCH = TILE + 2 * HALO
assert TILE % HALO == 0, "tile presence is pooled over HALO x HALO blocks"
#: (layer, tile) pairs blurred per FFT batch (a few MB of patches and spectra: stays in cache).
PAIRS_PER_BATCH = 64
#: Kernels this many pixels wide on each side of the centre or less (3 x 3, 5 x 5) are summed directly.
DIRECT_HALF_WIDTH = 2

#: Fetches the patches [N, 4, PATCH, PATCH] of pairs given (slot, tile row, tile col).
PatchFetcher = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class TileGrid:
    """Tile layout of a ``height`` x ``width`` image, padded up to whole tiles."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.rows, self.cols = math.ceil(height / TILE), math.ceil(width / TILE)
        self.padded_height, self.padded_width = self.rows * TILE, self.cols * TILE

    def with_halo(self, image: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """``image`` [..., height, width] placed in a ``fill`` array covering the padded grid plus a HALO
        border, (cols + 1) x TILE wide (the spare width lines patch rows up on TILE; see ``patch_fetcher``)."""
        shape = (*image.shape[:-2], self.padded_height + 2 * HALO, (self.cols + 1) * TILE)
        out = image.new_empty(shape)
        bottom, right = HALO + self.height, HALO + self.width
        out[..., :HALO, :].fill_(fill)
        out[..., bottom:, :].fill_(fill)
        out[..., HALO:bottom, :HALO].fill_(fill)
        out[..., HALO:bottom, right:].fill_(fill)
        out[..., HALO:bottom, HALO:right] = image
        return out

    def mirror_halo(self, padded: torch.Tensor) -> torch.Tensor:
        """Fill the HALO band around the image in an array made by ``with_halo`` with its mirror image.

        The scene is reflected about the frame's edges, so blur near the frame sees mirrored content
        instead of darkness; kernels never reach further out than HALO pixels.
        """
        for axis, size in ((-2, self.height), (-1, self.width)):
            inside = torch.arange(HALO, device=padded.device).clamp(max=size - 1)
            before = HALO + inside  # frame pixels 0, 1, ... mirrored to HALO - 1, HALO - 2, ...
            after = HALO + size - 1 - inside  # last, second-to-last, ... mirrored past the end
            band = padded.index_select(axis, torch.cat([before.flip(0), after]))
            targets = torch.cat([torch.arange(HALO), HALO + size + torch.arange(HALO)]).to(padded.device)
            padded.index_copy_(padded.ndim + axis, targets, band)
        return padded

    def patch_fetcher(self, source: torch.Tensor) -> "PatchFetcher":
        """Gathers patches [N, C, PATCH, PATCH] of (slot, tile row, tile col) from ``source``
        [slots, C, H + 2 HALO, (cols + 1) TILE], arrays made by ``with_halo`` whose slot and channel
        strides are multiples of TILE (any order in memory)."""
        slot_stride, channel_stride, row_stride = (stride // TILE for stride in source.stride()[:3])
        if any(stride % TILE for stride in source.stride()[:3]) or source.stride(3) != 1:
            raise ValueError("patch rows must start on multiples of TILE values")
        stored = source.untyped_storage().nbytes() // source.element_size() - source.storage_offset()
        runs = source.as_strided(((stored - PATCH) // TILE + 1, PATCH), (TILE, 1))
        offsets = (torch.arange(source.shape[1], device=source.device)[:, None] * channel_stride
                   + torch.arange(PATCH, device=source.device) * row_stride).reshape(-1)

        def fetch(slot: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
            first = slot * slot_stride + row * TILE * row_stride + col
            index = (first[:, None] + offsets).reshape(-1)
            return runs.index_select(0, index).view(-1, source.shape[1], PATCH, PATCH)

        return fetch

    def tile_runs(self, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """Indices of the rows of tiles (row, col), channel by channel, in a stack seen as [runs, TILE]."""
        offsets = torch.arange(4 * TILE, device=row.device)  # (channel, pixel row) as one index
        offsets = (offsets // TILE * self.padded_height + offsets % TILE) * self.cols
        return ((row * TILE * self.cols + col)[:, None] + offsets).reshape(-1)


def tile_presence(coverage: torch.Tensor) -> torch.Tensor:
    """[L, rows, cols] bool: whether each layer has coverage > 0 inside each tile's patch.

    ``coverage`` is [L, H + 2 HALO, W + 2 HALO] (tile-padded, with halo), any non-negative dtype.
    Pooled first over HALO x HALO blocks, then over the PATCH / HALO blocks of each patch.
    """
    return presence_from_blocks(F.max_pool2d(coverage[:, None].float(), HALO, stride=HALO)[:, 0] > 0)


def presence_from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """[L, rows, cols] tile presence from [L, (H + 2 HALO) / HALO, (W + 2 HALO) / HALO] block presence."""
    return F.max_pool2d(blocks[:, None].float(), PATCH // HALO, stride=TILE // HALO)[:, 0] > 0


Taps = list[tuple[int, int, float]]


@dataclass
class SlotKernels:
    """The blur of each slot: ``taps`` (row offset, column offset, weight) for a kernel applied directly,
    else None and its rfft2 in ``spectra`` [slots, PATCH, PATCH // 2 + 1] (zeros for direct slots)."""

    spectra: torch.Tensor
    taps: list[Optional[Taps]]


def slot_kernels(radii: list[float], aperture: Aperture, like: torch.Tensor, gain: float = 1.0) -> SlotKernels:
    """Each radius's aperture kernel times ``gain``: as direct taps when it is small, else as the rfft2 of
    the kernel centred at (0, 0) of a PATCH x PATCH array."""
    spectra = like.new_zeros((len(radii), PATCH, PATCH // 2 + 1), dtype=torch.complex64 if like.dtype == torch.float32
                             else torch.complex128)
    taps: list[Optional[Taps]] = []
    for slot, radius in enumerate(radii):
        kernel = aperture_kernel(radius, aperture) * gain
        half = kernel.shape[0] // 2
        if half > HALO:
            raise ValueError(f"kernel radius {radius:.2f} px exceeds the tile halo of {HALO} px")
        if half <= DIRECT_HALF_WIDTH:
            taps.append([(i - half, j - half, float(kernel[i, j])) for i, j in zip(*kernel.nonzero())])
            continue
        taps.append(None)
        placed = like.new_zeros((PATCH, PATCH))
        placed[: 2 * half + 1, : 2 * half + 1] = torch.as_tensor(kernel, dtype=like.dtype, device=like.device)
        spectra[slot] = torch.fft.rfft2(torch.roll(placed, (-half, -half), (0, 1)))
    return SlotKernels(spectra, taps)


def _pair_batches(
    presence: torch.Tensor, direct: list[bool],
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]]:
    """(slot, row, col) index tensors of the present (layer, tile) pairs, in slot order, in batches,
    and whether the batch's slots are direct ones (a batch never mixes them with FFT slots)."""
    slot, row, col = presence.nonzero(as_tuple=True)
    if slot.numel() == 0:
        return
    kind = torch.tensor(direct, device=presence.device)[slot]
    cuts = (torch.nonzero(kind[1:] != kind[:-1]).flatten() + 1).tolist()
    for run_start, run_end in zip([0] + cuts, cuts + [slot.numel()]):
        is_direct = bool(kind[run_start])
        for start in range(run_start, run_end, PAIRS_PER_BATCH):
            end = min(start + PAIRS_PER_BATCH, run_end)
            yield slot[start:end], row[start:end], col[start:end], is_direct


def _clip(tiles: torch.Tensor) -> torch.Tensor:
    """Round-off of blurred premultiplied tiles [N, 4, TILE, TILE] clipped: colour >= 0, alpha in [0, 1]."""
    tiles.clamp_min_(0.0)
    tiles[:, 3].clamp_(max=1.0)
    return tiles


def _blur(patches: torch.Tensor, spectra: torch.Tensor) -> torch.Tensor:
    """Tiles [N, 4, TILE, TILE] of patches blurred with per-patch spectra; round-off clipped.

    The inverse transform runs one axis at a time so that the rows outside the tile are dropped
    before the last (real) transform instead of after it.
    """
    spectrum = torch.fft.rfft2(patches)
    spectrum *= spectra[:, None]
    rows = torch.fft.ifft(spectrum, dim=-2)[..., HALO : HALO + TILE, :]
    return _clip(torch.fft.irfft(rows, n=PATCH, dim=-1)[..., HALO : HALO + TILE])


def _blur_direct(patches: torch.Tensor, taps: Taps) -> torch.Tensor:
    """Tiles [N, 4, TILE, TILE] of patches convolved with a small kernel given by its taps."""
    def shifted(dy: int, dx: int) -> torch.Tensor:
        return patches[..., HALO - dy : HALO - dy + TILE, HALO - dx : HALO - dx + TILE]

    (dy, dx, weight), *rest = taps
    if not rest and weight == 1.0:
        return shifted(dy, dx)  # the identity: the tiles themselves
    tiles = shifted(dy, dx) * weight
    for dy, dx, weight in rest:
        tiles.add_(shifted(dy, dx), alpha=weight)
    return _clip(tiles)


def blur_and_composite(
    back: Optional[torch.Tensor],
    front: Optional[torch.Tensor],
    grid: TileGrid,
    presence: torch.Tensor,
    fetch: PatchFetcher,
    kernels: SlotKernels,
    in_front: list[bool],
) -> None:
    """Blur every present (slot, tile) pair and composite it into a stack, slot after slot.

    ``back`` and ``front`` are premultiplied stacks [4, padded_height, padded_width] on ``grid``,
    None where no slot goes to them. A slot with ``in_front[i]`` False goes over ``back`` (slots
    come far to near), True under ``front`` (near to far).
    """
    back_runs = None if back is None else back.view(-1, TILE)
    front_runs = None if front is None else front.view(-1, TILE)
    for slot, row, col, direct in _pair_batches(presence, [t is not None for t in kernels.taps]):
        patches = fetch(slot, row, col)
        tiles = None if direct else _blur(patches, kernels.spectra[slot])
        bounds = torch.nonzero(torch.diff(slot, prepend=slot.new_tensor([-1]))).flatten().tolist() + [slot.numel()]
        for start, end in zip(bounds[:-1], bounds[1:]):
            index = grid.tile_runs(row[start:end], col[start:end])
            slot_index = int(slot[start])
            layer = _blur_direct(patches[start:end], kernels.taps[slot_index]) if direct else tiles[start:end]
            if in_front[slot_index]:
                current = front_runs.index_select(0, index).view_as(layer)
                front_runs.index_copy_(0, index, torch.addcmul(current, 1.0 - current[:, 3:4], layer).view(-1, TILE))
            else:
                current = back_runs.index_select(0, index).view_as(layer)
                back_runs.index_copy_(0, index, current.mul_(1.0 - layer[:, 3:4]).add_(layer).view(-1, TILE))
