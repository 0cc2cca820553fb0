"""Reading untrusted input files: regular files only (never a FIFO, device, socket or folder), never more
than a size cap, and sidecars only from inside their photo's folder.

A path may also be an object-store URL (``s3://bucket/key``, ``gs://...``, any fsspec protocol): it is then
read through fsspec with the same size caps, credentials and endpoint coming from the environment as the
storage's own tools take them (AWS_* variables, ~/.aws, FSSPEC_<PROTOCOL>_<OPTION>). Object stores have no
symlinks, FIFOs or devices, so only "a folder, not a file" is refused there.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

PathLike = Union[str, os.PathLike]

#: Flags that make opening a FIFO return at once (it is then refused) instead of waiting for a writer.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


#: ``protocol://rest`` or pathlib's folding of it, ``protocol:/rest`` (``Path("s3://b/k")`` is ``s3:/b/k``).
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/{1,2}(?!/)(.+)$")
#: Protocols that name this machine's own files: read with the os calls below, not as objects.
_LOCAL_PROTOCOLS = frozenset({"file", "local"})


def remote_url(path: PathLike) -> Optional[str]:
    """The object-store URL ``path`` names (also in pathlib's folded spelling, so the sidecar paths that
    ``Path`` derives from a photo URL still name objects), or None for a local path."""
    match = _URL.match(os.fspath(path))
    if match is None:
        return None
    protocol = match.group(1).lower()
    if protocol in _LOCAL_PROTOCOLS:
        return None
    from fsspec.registry import known_implementations, registry

    if protocol not in known_implementations and protocol not in registry:
        return None
    return f"{protocol}://{match.group(2)}"


def remote_fs(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of an object-store URL."""
    from fsspec.core import url_to_fs

    return url_to_fs(remote_url(url) or url)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class InputFileError(OSError):
    """An input file that is refused or cannot be read; the message is one line that says why, ``code`` a
    short key for statistics: unreadable, not-a-file, too-large or outside-input."""

    def __init__(self, message: str, code: str = "unreadable") -> None:
        super().__init__(message)
        self.code = code


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (for messages)."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def size_text(size: int) -> str:
    """A byte count in words for messages: bytes, KiB or MiB, three significant digits."""
    if size < 2**10:
        return f"{size} bytes"
    return f"{size / 2**10:.3g} KiB" if size < 2**20 else f"{size / 2**20:.3g} MiB"


def _object_info(url: str, what: str) -> tuple[Any, str, dict[str, Any]]:
    """(filesystem, key, info) of the object ``url``; InputFileError when it is missing, a folder or unreachable."""
    try:
        fs, key = remote_fs(url)
        info = fs.info(key)
    except FileNotFoundError:
        raise InputFileError(f"{what} {url} cannot be opened: no such object") from None
    except Exception as exc:  # noqa: BLE001 - object-store clients raise many types; one line per file
        raise InputFileError(f"{what} {url} cannot be opened: {one_line(exc)}") from None
    if info.get("type") != "file":
        raise InputFileError(f"{what} {url} is a folder, not a regular file", "not-a-file")
    return fs, key, info


def open_regular(path: PathLike, what: str = "file") -> BinaryIO:
    """``path`` opened for binary reading once it is known to be a regular file (after symlinks resolve).

    A FIFO is opened without blocking and then refused, so nothing waits for a writer.
    """
    url = remote_url(path)
    if url is not None:
        fs, key, _ = _object_info(url, what)
        try:
            return fs.open(key, "rb")
        except Exception as exc:  # noqa: BLE001
            raise InputFileError(f"{what} {url} cannot be opened: {one_line(exc)}") from None
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise InputFileError(f"{what} {path} cannot be opened: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputFileError(f"{what} {path} is {file_kind(mode)}, not a regular file", "not-a-file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: PathLike, max_bytes: int, what: str = "file") -> bytes:
    """All bytes of the regular file ``path``; refused (nothing read) when it is larger than ``max_bytes``."""
    url = remote_url(path)
    if url is not None:
        return _read_object(url, max_bytes, what)
    with open_regular(path, what) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise InputFileError(f"{what} {path} is {size_text(size)}, over the {size_text(max_bytes)} limit: save it "
                                 "smaller", "too-large")
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise InputFileError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # the file grew while it was read
        raise InputFileError(f"{what} {path} is over the {size_text(max_bytes)} limit", "too-large")
    return data


def _read_object(url: str, max_bytes: int, what: str) -> bytes:
    """All bytes of the object ``url``, refused before any byte is fetched when its listed size is over the cap."""
    fs, key, info = _object_info(url, what)
    size = int(info.get("size") or 0)
    if size > max_bytes:
        raise InputFileError(f"{what} {url} is {size_text(size)}, over the {size_text(max_bytes)} limit: save it "
                             "smaller", "too-large")
    try:
        data = fs.cat_file(key, start=0, end=max_bytes + 1)
    except Exception as exc:  # noqa: BLE001
        raise InputFileError(f"{what} {url} cannot be read: {one_line(exc)}") from None
    if len(data) > max_bytes:  # replaced by a larger object between the listing and the read
        raise InputFileError(f"{what} {url} is over the {size_text(max_bytes)} limit", "too-large")
    return data


def inside(path: PathLike, folder: PathLike) -> bool:
    """True when ``path``, every symlink resolved, lies in ``folder`` (also resolved) or below it."""
    target, base = os.path.realpath(path), os.path.realpath(folder)
    return target == base or target.startswith(base.rstrip(os.sep) + os.sep)


def sidecar_of(photo: PathLike, sidecar: PathLike, what: str) -> bool:
    """Whether the sidecar file exists (a dangling symlink counts: it is reported, not ignored); refused with
    :class:`InputFileError` when it resolves outside the photo's folder (object stores have no symlinks)."""
    url = remote_url(sidecar)
    if url is not None:
        try:
            fs, key = remote_fs(url)
            return bool(fs.exists(key))
        except Exception as exc:  # noqa: BLE001
            raise InputFileError(f"{what} {url} cannot be looked up: {one_line(exc)}") from None
    if not os.path.lexists(sidecar):
        return False
    folder = Path(photo).parent
    if not inside(sidecar, folder):
        raise InputFileError(
            f"{what} {Path(sidecar).name} is a symlink to {os.path.realpath(sidecar)}, outside the photo's folder "
            f"{folder}: copy the file next to the photo",
            "outside-input",
        )
    return True
