"""Tiled FFT blur of layers: each layer is blurred only on the tiles where it has pixels.

An image (full resolution or a reduced grid) is cut into TILE x TILE tiles; a tile's patch adds a
HALO-pixel border, enough for any kernel used (radius < FULL_RES_LIMIT on every grid). A patch's
circular FFT convolution is exact on the tile itself, so the work grows with the number of
(layer, tile) pairs, not with layers x image size, and not with the blur radius.
Accumulators are kept in tile layout [tiles, 4, TILE, TILE] while layers are composited into them.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from .aperture import Aperture, aperture_kernel, kernel_half_width
from .layers import FULL_RES_LIMIT

TILE = 32
HALO = kernel_half_width(FULL_RES_LIMIT)
PATCH = TILE + 2 * HALO
assert TILE % HALO == 0, "tile presence is pooled over HALO x HALO blocks"
#: (layer, tile) pairs blurred per FFT batch (about 15 MB of patches and spectra: stays in cache).
PAIRS_PER_BATCH = 256

#: Fetches the patches [N, 4, PATCH, PATCH] of pairs given (slot, tile row, tile col).
PatchFetcher = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class TileGrid:
    """Tile layout of a ``height`` x ``width`` image, padded up to whole tiles."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.rows, self.cols = math.ceil(height / TILE), math.ceil(width / TILE)
        self.padded_height, self.padded_width = self.rows * TILE, self.cols * TILE

    def with_halo(self, image: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """``image`` [..., height, width] placed in a ``fill`` array covering the padded grid plus a HALO border."""
        shape = (*image.shape[:-2], self.padded_height + 2 * HALO, self.padded_width + 2 * HALO)
        out = torch.full(shape, fill, dtype=image.dtype, device=image.device)
        out[..., HALO : HALO + self.height, HALO : HALO + self.width] = image
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

    def patches(self, padded: torch.Tensor) -> torch.Tensor:
        """Overlapping patch view [..., rows, cols, PATCH, PATCH] of an array made by ``with_halo``."""
        return padded.unfold(-2, PATCH, TILE).unfold(-2, PATCH, TILE)

    def to_tiles(self, image: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """[tiles, 4, TILE, TILE] copy of a premultiplied image [4, height, width] (zeros when None)."""
        padded = like.new_zeros((4, self.padded_height, self.padded_width))
        if image is not None:
            padded[:, : self.height, : self.width] = image
        return padded.view(4, self.rows, TILE, self.cols, TILE).permute(1, 3, 0, 2, 4).reshape(-1, 4, TILE, TILE)

    def from_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """The image [4, height, width] of a tile-layout array."""
        image = tiles.view(self.rows, self.cols, 4, TILE, TILE).permute(2, 0, 3, 1, 4)
        return image.reshape(4, self.padded_height, self.padded_width)[:, : self.height, : self.width]


def tile_presence(coverage: torch.Tensor) -> torch.Tensor:
    """[L, rows, cols] bool: whether each layer has coverage > 0 inside each tile's patch.

    ``coverage`` is [L, H + 2 HALO, W + 2 HALO] (tile-padded, with halo), any non-negative dtype.
    Pooled first over HALO x HALO blocks, then over the PATCH / HALO blocks of each patch.
    """
    return presence_from_blocks(F.max_pool2d(coverage[:, None].float(), HALO, stride=HALO)[:, 0] > 0)


def presence_from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """[L, rows, cols] tile presence from [L, (H + 2 HALO) / HALO, (W + 2 HALO) / HALO] block presence."""
    return F.max_pool2d(blocks[:, None].float(), PATCH // HALO, stride=TILE // HALO)[:, 0] > 0


def kernel_spectra(radii: list[float], aperture: Aperture, like: torch.Tensor) -> torch.Tensor:
    """rfft2 of each radius's aperture kernel, centred at (0, 0) of a PATCH x PATCH array."""
    spectra = []
    for radius in radii:
        kernel = torch.as_tensor(aperture_kernel(radius, aperture), dtype=like.dtype, device=like.device)
        half = kernel.shape[0] // 2
        if half > HALO:
            raise ValueError(f"kernel radius {radius:.2f} px exceeds the tile halo of {HALO} px")
        placed = like.new_zeros((PATCH, PATCH))
        placed[: 2 * half + 1, : 2 * half + 1] = kernel
        spectra.append(torch.fft.rfft2(torch.roll(placed, (-half, -half), (0, 1))))
    return torch.stack(spectra)


def _pair_batches(presence: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(slot, row, col) index tensors of the present (layer, tile) pairs, in slot order, in batches."""
    slot, row, col = presence.nonzero(as_tuple=True)
    for start in range(0, slot.numel(), PAIRS_PER_BATCH):
        end = start + PAIRS_PER_BATCH
        yield slot[start:end], row[start:end], col[start:end]


def _blur(patches: torch.Tensor, spectra: torch.Tensor) -> torch.Tensor:
    """Tiles [N, 4, TILE, TILE] of patches blurred with per-patch spectra; round-off clipped.

    The 2-D transforms run one axis at a time so that the inverse's last pass only computes the
    tile's rows (about twice as fast as rfft2 / irfft2 here).
    """
    spectrum = torch.fft.fft(torch.fft.rfft(patches, dim=-1), dim=-2) * spectra[:, None]
    rows = torch.fft.ifft(spectrum, dim=-2)[:, :, HALO : HALO + TILE]
    core = torch.fft.irfft(rows, n=PATCH, dim=-1)[..., HALO : HALO + TILE].clamp_min(0.0)
    core[:, 3].clamp_(max=1.0)
    return core


def blur_and_composite(
    back: torch.Tensor,
    front: torch.Tensor,
    grid: TileGrid,
    presence: torch.Tensor,
    fetch: PatchFetcher,
    spectra: torch.Tensor,
    in_front: list[bool],
    identity: list[bool],
) -> None:
    """Blur every present (slot, tile) pair and composite it into a stack, slot after slot.

    ``back`` and ``front`` are tile-layout premultiplied stacks on ``grid``. A slot with
    ``in_front[i]`` False goes over ``back`` (slots come far to near), True under ``front`` (near
    to far). ``identity[i]`` marks the in-focus slot, copied without blur.
    """
    slot_identity = torch.tensor(identity, device=presence.device)
    for slot, row, col in _pair_batches(presence):
        patches = fetch(slot, row, col)
        sharp = slot_identity[slot]
        if bool(sharp.any()):
            tiles = patches[:, :, HALO : HALO + TILE, HALO : HALO + TILE].clone()
            blurry = (~sharp).nonzero().flatten()
            if blurry.numel():
                tiles[blurry] = _blur(patches[blurry], spectra[slot[blurry]])
        else:
            tiles = _blur(patches, spectra[slot])
        tile_index = row * grid.cols + col
        bounds = torch.nonzero(torch.diff(slot, prepend=slot.new_tensor([-1]))).flatten().tolist() + [slot.numel()]
        for start, end in zip(bounds[:-1], bounds[1:]):
            i = int(slot[start])
            index, layer = tile_index[start:end], tiles[start:end]
            if in_front[i]:
                current = front.index_select(0, index)
                front.index_copy_(0, index, current + (1.0 - current[:, 3:4]) * layer)
            else:
                current = back.index_select(0, index)
                back.index_copy_(0, index, layer + (1.0 - layer[:, 3:4]) * current)
