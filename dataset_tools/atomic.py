"""Crash-safe file publishing: write under a temporary name, fsync, rename into place, fsync the folder.

An object store has no rename, but it makes each object appear whole: a single PUT, or a multipart upload once it
is completed. A file for an object-store URL is therefore written in one upload straight to its final key (its
temporary copy, if any, lives on the local disk).
"""
from __future__ import annotations

import os
from pathlib import Path

from estimators.input_files import remote_fs, remote_url


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
    """fsync the finished file ``temp`` and rename it to ``final`` (atomic on one filesystem); a ``final``
    object-store URL gets ``temp`` in one upload, then ``temp`` is removed."""
    url = remote_url(final)
    if url is not None:
        fs, key = remote_fs(url)
        fs.put_file(os.fspath(temp), key)
        os.unlink(temp)
        return
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, final)
    fsync_dir(Path(final).parent)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    url = remote_url(path)
    if url is not None:
        fs, key = remote_fs(url)
        fs.pipe_file(key, raw)
        return
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as handle:
        handle.write(raw)
    publish(temp, path)
