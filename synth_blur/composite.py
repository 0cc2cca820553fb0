"""Layered defocus in linear light: per-layer aperture blur, depth-ordered compositing, seam-free normalisation.

Each pixel belongs to one layer (:mod:`synth_blur.layers`). A layer's premultiplied colour and alpha
are blurred with its aperture kernel, so every pixel spreads its light over its own disc; layers
are then composited with the ``over`` operator in depth order: a sharp foreground (alpha 1) hides
whatever blurred background lands on it, and a blurred foreground's partial alpha lets the
background show through.

The in-focus layer and the layers behind it form the back stack B, built far to near; the layers
in front of it form the front stack F, built near to far (``over`` is associative). Both stacks
are composited on each reduced grid and upsampled once per octave, so the number of
full-resolution passes does not depend on K; full-resolution layers (|r| < FULL_RES_LIMIT) join
their stack last. The result is ``F + (1 - alpha_F) * normalise(B)``: B's colour divided by its
coverage (the light of pixels hidden by nearer layers is replaced by the visible pixels' average,
so there are no dark seams), and where B has nothing at all (behind the foreground) B is extended
from its surroundings by a push-pull pyramid, so a blurred foreground's edge fades smoothly into
the background on both sides of its outline. The frame is mirrored, so borders do not darken.
"""
from __future__ import annotations

from typing import Optional

import torch

from .aperture import Aperture
from .layers import LayerPlan
from .resample import upsample2
from .tiles import HALO, TILE, PatchFetcher, TileGrid, blur_and_composite, presence_from_blocks, slot_kernels, tile_presence
from .workspace import kept_empty

#: Coverage below which a pixel's normalised colour is blended with the push-pull fill.
HOLE_COVERAGE = 0.05


def _upsample2(
    stack: Optional[torch.Tensor], source: TileGrid, target: TileGrid, name: str, scale: int,
) -> Optional[torch.Tensor]:
    """Bicubic 2x upsampling of a premultiplied stack on ``source`` to a stack on ``target`` (padded layouts),
    the grid reduced by ``scale``, into the buffer kept under ``name`` and ``scale`` (one per grid: the
    source's stays intact).

    Overshoot is removed without changing any colour: negative values become 0 and pixels whose
    alpha exceeds 1 are scaled down as a whole (premultiplied colour with them).
    """
    if stack is None:
        return None
    shape = (stack.shape[0], target.padded_height, target.padded_width)
    out = kept_empty(f"{name} stack at scale {scale}", shape, stack)
    up = upsample2(stack[:, : source.height, : source.width], *shape[1:], out=out).clamp_min_(0.0)
    rows, cols = torch.nonzero(up[3] > 1.0, as_tuple=True)
    up[:, rows, cols] /= up[3, rows, cols]
    return up


def _slot_order(plan: LayerPlan, members: list[int]) -> list[int]:
    """Compositing order of one grid's layers: back layers far to near, then front layers near to far."""
    return sorted(members, key=lambda i: (plan.layers[i].side > 0, -plan.layers[i].radius))


def _coarse_stacks(premult: torch.Tensor, plan: LayerPlan) -> dict[int, tuple[list[int], TileGrid, torch.Tensor]]:
    """Area-summed copies of the reduced-grid layers: per scale, its layers in slot order, its grid
    and their copies [L, 4, H + 2 HALO, (cols + 1) TILE] (the layout of ``TileGrid.with_halo``).
    Each cell holds the sum of its s x s pixels; the 1 / s^2 of the area average is applied with
    the blur kernel.

    One index_add over all pixels: each pixel lands in its own layer's copy, in the cell it falls
    in; a pixel's cell index is a row term plus a column term, both looked up in small per-layer
    tables.
    """
    _, height, width = premult.shape
    device = premult.device
    n_layers = len(plan.layers)
    rows_of = torch.arange(height)
    cols_of = torch.arange(width)
    row_table = torch.zeros(n_layers, height, dtype=torch.long)
    col_table = torch.zeros(n_layers, width, dtype=torch.long)
    layout = {}
    offset = 0
    for s in sorted({layer.scale for layer in plan.layers if layer.scale > 1}):
        members = _slot_order(plan, [i for i, layer in enumerate(plan.layers) if layer.scale == s])
        grid = TileGrid(-(-height // s), -(-width // s))
        rows, cols = grid.padded_height + 2 * HALO, (grid.cols + 1) * TILE  # the layout of TileGrid.with_halo
        layout[s] = (members, grid, offset, (len(members), rows, cols))
        for slot, i in enumerate(members):
            row_table[i] = offset + slot * rows * cols + (rows_of // s + HALO) * cols
            col_table[i] = cols_of // s + HALO
        offset += len(members) * rows * cols
    for i, layer in enumerate(plan.layers):
        if layer.scale == 1:
            row_table[i] = offset  # full-resolution pixels all land in one spare cell
    index = plan.ids * height
    index += rows_of.to(device)[:, None]
    dest = row_table.to(device).view(-1).index_select(0, index.view(-1))
    torch.mul(plan.ids, width, out=index)
    index += cols_of.to(device)[None, :]
    dest += col_table.to(device).view(-1).index_select(0, index.view(-1))
    # Channel rows of offset + TILE cells: every copy starts on a multiple of TILE (TileGrid.patch_fetcher).
    buffer = kept_empty("layer copies", (4, offset + TILE), premult).zero_()
    buffer.index_add_(1, dest, premult.reshape(4, -1))
    stacks = {}
    for s, (members, grid, start, (count, rows_s, cols_s)) in layout.items():
        stack = buffer[:, start : start + count * rows_s * cols_s].view(4, count, rows_s, cols_s).transpose(0, 1)
        # Cells cut by the frame hold fewer pixels: scale them to full cells, then mirror the frame.
        stack[:, :, HALO + grid.height - 1] *= s / (height - s * (grid.height - 1))
        stack[:, :, :, HALO + grid.width - 1] *= s / (width - s * (grid.width - 1))
        stacks[s] = (members, grid, grid.mirror_halo(stack))
    return stacks


def _composite_grid(
    plan: LayerPlan, members: list[int], grid: TileGrid, presence: torch.Tensor, fetch: PatchFetcher,
    scale: int, aperture: Aperture, back: Optional[torch.Tensor], front: Optional[torch.Tensor], like: torch.Tensor,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Blur one grid's layers (``members`` in slot order) and composite them into the back and front stacks.

    Back layers and the in-focus layer go over the back stack, front layers under the front stack.
    Stacks come and go as images of ``grid``'s padded size, None while empty. Patches on a grid
    reduced by ``scale`` hold sums of scale^2 pixels, hence the kernels' 1 / scale^2.
    """
    layers = [plan.layers[i] for i in members]
    if back is None and any(layer.side <= 0 for layer in layers):
        back = like.new_zeros((4, grid.padded_height, grid.padded_width))
    if front is None and any(layer.side > 0 for layer in layers):
        front = like.new_zeros((4, grid.padded_height, grid.padded_width))
    kernels = slot_kernels([layer.radius / scale for layer in layers], aperture, like, 1.0 / (scale * scale))
    blur_and_composite(back, front, grid, presence, fetch, kernels, [layer.side > 0 for layer in layers])
    return back, front


def _coarse_scale(
    plan: LayerPlan, scale: int, members: list[int], grid: TileGrid, stack: torch.Tensor, aperture: Aperture,
    back: Optional[torch.Tensor], front: Optional[torch.Tensor],
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Blur one reduced grid's layer copies into the back and front stacks of that grid."""
    return _composite_grid(
        plan, members, grid, tile_presence(stack[:, 3]), grid.patch_fetcher(stack), scale, aperture, back, front, stack,
    )


class LinearImage:
    """An opaque linear-light image [4, H, W] (colour, alpha = 1; contiguous) and its mirrored, tile-padded
    copy that the full-resolution layers read, made on first use: renders of one image at several K share it."""

    def __init__(self, premult: torch.Tensor) -> None:
        self.premult = premult
        self._padded: Optional[torch.Tensor] = None

    def padded(self) -> torch.Tensor:
        """The image placed by ``TileGrid.with_halo`` with its frame mirrored into the halo."""
        if self._padded is None:
            grid = TileGrid(*self.premult.shape[1:])
            self._padded = grid.mirror_halo(grid.with_halo(self.premult))
        return self._padded


def _full_resolution(
    image: LinearImage, plan: LayerPlan, aperture: Aperture, back: Optional[torch.Tensor], front: Optional[torch.Tensor],
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Blur the full-resolution layers (|r| < FULL_RES_LIMIT, in focus included) into the two stacks."""
    premult = image.premult
    _, height, width = premult.shape
    device = premult.device
    grid = TileGrid(height, width)
    members = _slot_order(plan, [i for i, layer in enumerate(plan.layers) if layer.scale == 1])
    n = len(members)
    if n == 0:
        return back, front
    slot_of = torch.full((len(plan.layers) + 1,), n, dtype=torch.long)
    slot_of[torch.tensor(members, dtype=torch.long) + 1] = torch.arange(n)
    ids = grid.mirror_halo(grid.with_halo(plan.ids.to(torch.int16), fill=-1))
    # Which layers have pixels in each HALO x HALO block: one bincount over (slot, block) keys.
    block_rows, block_cols = ids.shape[0] // HALO, ids.shape[1] // HALO
    block = (torch.arange(ids.shape[0], device=device)[:, None] // HALO) * block_cols + (
        torch.arange(ids.shape[1], device=device)[None, :] // HALO)
    key = ids.long()
    key += 1
    key = slot_of.to(device).index_select(0, key.view(-1)).view(key.shape)
    key *= block_rows * block_cols
    key += block
    counts = torch.bincount(key.reshape(-1), minlength=(n + 1) * block_rows * block_cols)
    presence = presence_from_blocks(counts[: n * block_rows * block_cols].view(n, block_rows, block_cols) > 0)

    patches = grid.patch_fetcher(image.padded()[None])
    id_patches = grid.patch_fetcher(ids[None, None])
    layer_of_slot = torch.tensor(members, dtype=torch.int16, device=device)

    def fetch(slot: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        single = torch.zeros_like(slot)  # both arrays hold one slot
        mine = id_patches(single, row, col) == layer_of_slot[slot][:, None, None, None]
        return patches(single, row, col).mul_(mine)

    return _composite_grid(plan, members, grid, presence, fetch, 1, aperture, back, front, premult)


def _halve(image: torch.Tensor) -> torch.Tensor:
    """[C, ceil(h / 2), ceil(w / 2)]: the mean of each 2 x 2 block's in-frame pixels of ``image`` [C, h, w]."""
    if image.shape[1] % 2:
        image = torch.cat([image, image[:, -1:]], 1)
    if image.shape[2] % 2:
        image = torch.cat([image, image[:, :, -1:]], 2)
    rows = image[:, 0::2] + image[:, 1::2]
    return (rows[:, :, 0::2] + rows[:, :, 1::2]).mul_(0.25)


def _bilinear_at(image: torch.Tensor, size: tuple[int, int], rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """[C, N] values at output pixels (rows, cols) of ``image`` [C, h, w] bilinearly resized to ``size``
    (half-pixel centres, as ``F.interpolate(..., mode="bilinear", align_corners=False)``)."""
    _, in_h, in_w = image.shape

    def taps(index: torch.Tensor, in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        source = ((index.to(image.dtype) + 0.5) * (in_size / out_size) - 0.5).clamp_min(0.0)
        low = source.long().clamp_max(in_size - 1)
        return low, (low + 1).clamp_max(in_size - 1), (source - low).clamp(0.0, 1.0)

    y0, y1, fy = taps(rows, in_h, size[0])
    x0, x1, fx = taps(cols, in_w, size[1])
    top = image[:, y0, x0] * (1.0 - fx) + image[:, y0, x1] * fx
    bottom = image[:, y1, x0] * (1.0 - fx) + image[:, y1, x1] * fx
    return top * (1.0 - fy) + bottom * fy


def normalise(premult: torch.Tensor) -> torch.Tensor:
    """Colour [3, H, W] of a premultiplied image: C / alpha, holes (alpha ~ 0) filled by push-pull.

    Each pyramid level's colour is (C + w up) / (alpha + w), with w = 1 - alpha / HOLE_COVERAGE
    clipped to [0, 1] and ``up`` the coarser level's colour resized; w is 0 outside the holes, so a
    level is C / alpha with ``up`` computed at its holes only.
    """
    colour, alpha = premult[:3], premult[3:4]
    if float(alpha.min()) >= HOLE_COVERAGE:
        return colour / alpha
    levels = [premult]
    while min(levels[-1].shape[-2:]) > 1:
        levels.append(_halve(levels[-1]))
    top = levels[-1]
    fill = torch.where(top[3:4] > 0, top[:3] / top[3:4].clamp_min(1e-12), torch.zeros_like(top[:3]))
    for level in reversed(levels[:-1]):
        colour, alpha = level[:3], level[3]
        rows, cols = torch.nonzero(alpha < HOLE_COVERAGE, as_tuple=True)
        up = _bilinear_at(fill, tuple(alpha.shape), rows, cols)
        hole_alpha = alpha[rows, cols]
        weight = 1.0 - hole_alpha / HOLE_COVERAGE
        fill = colour / alpha
        fill[:, rows, cols] = (colour[:, rows, cols] + weight * up) / (hole_alpha + weight)
    return fill


def render_linear(image: LinearImage, plan: LayerPlan, aperture: Aperture) -> torch.Tensor:
    """Defocus an opaque linear-light image sliced by ``plan``; returns linear light [3, H, W]."""
    _, height, width = image.premult.shape
    back = front = None
    stacks = _coarse_stacks(image.premult, plan)
    scale = max(stacks, default=1)
    grid = TileGrid(-(-height // scale), -(-width // scale))
    while scale > 1:
        if scale in stacks:
            back, front = _coarse_scale(plan, scale, *stacks[scale], aperture, back, front)
        scale //= 2
        finer = TileGrid(-(-height // scale), -(-width // scale))
        back, front = _upsample2(back, grid, finer, "back", scale), _upsample2(front, grid, finer, "front", scale)
        grid = finer
    back, front = _full_resolution(image, plan, aperture, back, front)
    if back is not None:
        back = back[:, :height, :width]
    if front is None:
        return normalise(back)
    front = front[:, :height, :width]
    if back is None:  # nothing behind the front stack anywhere: normalise it alone
        return front[:3] / front[3:4].clamp_min(1e-6)
    return normalise(back).mul_(1.0 - front[3:4]).add_(front[:3])
