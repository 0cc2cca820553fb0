"""Where a build reads and writes: a local path (the plain os calls, exactly as elsewhere in the build) or an
object-store URL (``s3://bucket/prefix``, ``gs://...``, any fsspec protocol), through one set of functions that
take either.

Object stores have no folders, no rename and no file locks. What holds on them instead, and what this module
relies on: an object appears whole (one PUT, or a completed multipart upload), so every file is written once to
its final key (:mod:`dataset_tools.atomic`); a "folder" is the set of keys under a prefix; a conditional PUT
(``If-None-Match: *``, S3 and S3-compatible servers) creates an object only when its key is free, which makes a
lock (:func:`create`). Credentials and endpoints come from the environment, as each store's own tools take them
(AWS_* variables and ~/.aws for S3, Application Default Credentials for GCS, ``FSSPEC_<PROTOCOL>_<OPTION>``
variables or ~/.config/fsspec for any fsspec option), so every Ray worker finds them the way the driver does.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from estimators.input_files import open_regular, read_regular, remote_fs, remote_url

from .atomic import publish, write_atomic

__all__ = [
    "ObjectPath", "as_path", "create", "exists", "is_file", "is_remote", "join", "list_files", "list_names",
    "location", "make_dirs", "open_read", "parquet_file", "publish", "read_bytes", "read_table", "remove",
    "remove_tree",
    "temp_for", "write_atomic",
]

#: Local folder of the temporary copies of files bound for an object store (one per driver or worker process).
_SPOOL: Optional[str] = None


class ObjectPath(PurePosixPath):
    """An object-store location with pathlib's joining and naming (``/``, ``name``, ``parent``, ``with_suffix``),
    shown as its URL. It has none of ``Path``'s file operations, so code that would touch the local disk
    instead of the store fails at once: read and write it with this module's functions."""

    def __str__(self) -> str:
        return location(super().__str__())


def as_path(path: str | os.PathLike) -> Path | ObjectPath:
    """``path`` as a ``Path``, or an :class:`ObjectPath` for an object-store URL."""
    return ObjectPath(location(path)) if is_remote(path) else Path(path)


def is_remote(path: str | os.PathLike) -> bool:
    """True when ``path`` names an object-store location (a URL of a non-local fsspec protocol)."""
    return remote_url(path) is not None


def location(path: str | os.PathLike) -> str:
    """``path`` as text: an object-store URL in its ``protocol://`` spelling, a local path unchanged."""
    return remote_url(path) or os.fspath(path)


def join(path: str | os.PathLike, *names: str) -> str:
    """``names`` below ``path`` (``/``-joined for URLs, ``os.path.join`` locally)."""
    url = remote_url(path)
    if url is None:
        return os.path.join(os.fspath(path), *names)
    return "/".join([url.rstrip("/"), *(name.strip("/") for name in names)])


def _fs(url: str) -> tuple[Any, str]:
    """(filesystem, key) with no listing cached for ``key``: other processes (workers) write there too."""
    fs, key = remote_fs(url)
    fs.invalidate_cache(key)
    return fs, key


def exists(path: str | os.PathLike) -> bool:
    """Whether a file, folder, object or non-empty prefix is at ``path``."""
    url = remote_url(path)
    if url is None:
        return os.path.lexists(path)
    fs, key = _fs(url)
    return bool(fs.exists(key))


def is_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file (an object, for URLs)."""
    url = remote_url(path)
    if url is None:
        return os.path.isfile(path)
    fs, key = _fs(url)
    return bool(fs.isfile(key))


def read_bytes(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """All bytes of a file or object of at most ``max_bytes`` (:func:`estimators.input_files.read_regular`)."""
    return read_regular(path, max_bytes, what)


def open_read(path: str | os.PathLike, what: str = "file") -> BinaryIO:
    """A binary reader of a regular file or object (seekable: pyarrow reads Parquet footers through it)."""
    return open_regular(path, what)


def parquet_file(path: str | os.PathLike) -> pq.ParquetFile:
    """A Parquet file or object opened for reading (row groups, columns and metadata on demand)."""
    if remote_url(path) is None:
        return pq.ParquetFile(path)
    return pq.ParquetFile(open_read(path, "Parquet file"))


def read_table(path: str | os.PathLike, schema: pa.Schema) -> pa.Table:
    """A whole Parquet file or object, read as ``schema``."""
    if remote_url(path) is None:
        return pq.read_table(path, schema=schema)
    with open_read(path, "Parquet file") as handle:
        return pq.read_table(handle, schema=schema)


def make_dirs(path: str | os.PathLike) -> None:
    """Make the folder ``path`` and its parents locally; nothing for a URL (a prefix exists with its first key)."""
    if remote_url(path) is None:
        os.makedirs(path, exist_ok=True)


def list_names(path: str | os.PathLike) -> list[str]:
    """The names of the files and folders directly in ``path`` (sorted); [] when there is no such folder."""
    url = remote_url(path)
    if url is None:
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    fs, key = _fs(url)
    try:
        return sorted(name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(key, detail=False))
    except FileNotFoundError:
        return []


def list_files(path: str | os.PathLike) -> list[str]:
    """Every file below ``path`` (recursively, sorted), as locations; [] when there is none."""
    url = remote_url(path)
    if url is None:
        found = [os.path.join(root, name) for root, _, files in os.walk(path) for name in files]
        return sorted(found)
    fs, key = _fs(url)
    protocol = url.split("://", 1)[0]
    return sorted(f"{protocol}://{name}" for name in fs.find(key))


def create(path: str | os.PathLike, data: bytes) -> bool:
    """Write ``data`` to ``path`` only when nothing is there; False (nothing written) when something is.

    Atomic locally (``O_EXCL``) and on stores with conditional writes (S3's ``If-None-Match: *``, which fsspec
    maps to ``mode="create"``); on a store without them a check before the write stands in, and two writers
    starting in the same instant can both succeed.
    """
    url = remote_url(path)
    if url is None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return True
    fs, key = _fs(url)
    try:
        fs.pipe_file(key, data, mode="create")
    except FileExistsError:
        return False
    except TypeError:  # a filesystem without conditional writes
        if fs.exists(key):
            return False
        fs.pipe_file(key, data)
    return True


def temp_for(final: str | os.PathLike) -> str:
    """Where to write a file before :func:`publish` moves it to ``final``: next to it locally (so the rename
    stays on one filesystem), in a local spool folder of this process for an object-store ``final``."""
    global _SPOOL
    url = remote_url(final)
    if url is None:
        final = Path(final)
        return str(final.with_name(f".{final.name}.tmp"))
    if _SPOOL is None or not os.path.isdir(_SPOOL):
        _SPOOL = tempfile.mkdtemp(prefix="bokeh-build-")
        atexit.register(shutil.rmtree, _SPOOL, True)  # copies of uploads that never happened (a failed build)
    handle, temp = tempfile.mkstemp(dir=_SPOOL, suffix=f"-{url.rsplit('/', 1)[-1]}")
    os.close(handle)
    return temp


def remove(path: str | os.PathLike) -> None:
    """Delete one file or object; nothing happens when it is absent."""
    url = remote_url(path)
    if url is None:
        Path(path).unlink(missing_ok=True)
        return
    fs, key = _fs(url)
    try:
        fs.rm_file(key)
    except FileNotFoundError:
        pass


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a folder and everything in it (every object under the prefix ``path/``); nothing when absent."""
    url = remote_url(path)
    if url is None:
        if os.path.lexists(path):
            shutil.rmtree(path)
        return
    fs, key = _fs(url)
    keys = fs.find(key.rstrip("/") + "/")
    if keys:
        fs.rm(keys)

