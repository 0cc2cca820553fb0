"""Stamps of build inputs: what a resumed build compares to know it continues the same job, and which sidecars
came with each photo (the copy of a repeated photo that has them is the one kept).

A file's stamp is its size and modification time plus those of its sidecars (depth / disparity, mask, caption),
like ``make`` and ``rsync`` decide that a file changed; a dataset row carrying its bytes is stamped by their
length and CRC-32.
"""
from __future__ import annotations

import os
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from estimators.mask import mask_sidecar_path
from estimators.sidecars import depth_sidecar_paths

from .sources import CAPTION_SUFFIX, SourceItem

#: Sidecar bits of an input: a depth map (``.depth.npy``, ``.disparity.npy`` or ``.disparity.png``), a mask, a caption.
DEPTH_SIDECAR, MASK_SIDECAR, CAPTION = 1, 2, 4


class InputsChanged(ValueError):
    """The inputs of a resumed build are not those it started with; the message is one line."""


def _file_stamp(path: Path) -> Optional[str]:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return f"{info.st_size}:{info.st_mtime_ns}"


def _sidecars(photo: Path) -> tuple[tuple[int, Path], ...]:
    """(bit, path) of every sidecar a photo may have."""
    depth_maps = tuple((DEPTH_SIDECAR, path) for path in depth_sidecar_paths(photo))
    return depth_maps + ((MASK_SIDECAR, mask_sidecar_path(photo)), (CAPTION, photo.with_suffix(CAPTION_SUFFIX)))


def stamp_of(item: SourceItem) -> tuple[str, int]:
    """The stamp of an input and its sidecar bits."""
    bits = CAPTION if item.caption else 0
    if item.stamp is not None:
        return item.stamp, item.sidecars | bits
    if item.data is not None:
        return f"bytes {len(item.data)}:{zlib.crc32(item.data):08x}", bits
    if item.path is None:
        return f"none {item.error or ''}", bits
    photo = Path(item.path)
    parts = [_file_stamp(photo) or "missing"]
    for bit, sidecar in _sidecars(photo):
        stamp = _file_stamp(sidecar)
        if stamp is not None:
            parts.append(f"{sidecar.name}={stamp}")
            bits |= bit
    return " ".join(parts), bits


def object_stamp(key: str, infos: Mapping[str, Mapping[str, Any]]) -> tuple[str, int]:
    """The stamp and sidecar bits of the object ``key`` from a listing of its folder (key -> info with size and
    ETag or modification time), as :func:`stamp_of` makes them from a file system."""
    def stamp(info: Mapping[str, Any]) -> str:
        return f"{info.get('size')}:{info.get('ETag') or info.get('LastModified') or info.get('mtime')}"

    parts = [stamp(infos[key]) if key in infos else "missing"]
    bits = 0
    for bit, sidecar in _sidecars(Path(key)):
        if str(sidecar) in infos:
            parts.append(f"{sidecar.name}={stamp(infos[str(sidecar)])}")
            bits |= bit
    return " ".join(parts), bits


def describe_changes(stored: Iterable[tuple[str, str]], listed: Iterable[tuple[str, str]]) -> str:
    """One line on how the (source, stamp) pairs ``listed`` now differ from those ``stored`` when the build began."""
    before, now = Counter(stored), Counter(listed)
    gone, new = before - now, now - before
    changed = sorted(set(s for s, _ in gone) & set(s for s, _ in new))
    added = sorted(s for s, _ in new.elements() if s not in changed)
    removed = sorted(s for s, _ in gone.elements() if s not in changed)
    counts = [f"{len(names)} {what}" for names, what in ((added, "added"), (removed, "removed"),
                                                         (changed, "changed")) if names]
    if not counts:
        return "the inputs are listed in another order"
    example = next(f"{what} {names[0]}" for names, what in ((changed, "changed:"), (added, "added:"),
                                                            (removed, "removed:")) if names)
    return f"{', '.join(counts)} since the build started (e.g. {example})"
