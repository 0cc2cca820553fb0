"""Large temporaries of a render carved from buffers that each thread keeps between renders on CPU.

The C library maps a block of many megabytes afresh on each allocation and returns it on release,
so every render would touch new, zero-filled pages for each large temporary; a kept buffer's pages
are already there. A buffer is kept per thread and per name; a tensor taken under a name is valid
until the next take of that name on the same thread, so a name is only used for a temporary that
never leaves the render.
"""
from __future__ import annotations

import math
import threading

import torch

#: Largest buffer (bytes) kept under one name; larger requests get fresh memory.
KEPT_LIMIT = 256 * 2**20

_kept = threading.local()


def kept_empty(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``shape`` with ``like``'s dtype and device: on CPU a view of
    the buffer this thread keeps under ``name`` (up to KEPT_LIMIT bytes), elsewhere fresh memory."""
    numel = math.prod(shape)
    if like.device.type != "cpu" or numel * like.element_size() > KEPT_LIMIT:
        return like.new_empty(shape)
    buffers = getattr(_kept, "buffers", None)
    if buffers is None:
        buffers = _kept.buffers = {}
    kept = buffers.get(name)
    if kept is None or kept.numel() < numel or kept.dtype != like.dtype:
        kept = buffers[name] = like.new_empty(numel)
    return kept[:numel].view(shape)
