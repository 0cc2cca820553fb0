"""Crash-safe file publishing: write under a temporary name, fsync, rename into place, fsync the folder."""
from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(temp: str | os.PathLike, final: str | os.PathLike) -> None:
    """fsync the finished file ``temp`` and rename it to ``final`` (atomic on one filesystem)."""
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, final)
    fsync_dir(Path(final).parent)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    publish(temp, path)
