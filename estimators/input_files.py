"""Reading untrusted input files: regular files only (never a FIFO, device, socket or folder), never more
than a size cap, and sidecars only from inside their photo's folder."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Union

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


def open_regular(path: PathLike, what: str = "file") -> BinaryIO:
    """``path`` opened for binary reading once it is known to be a regular file (after symlinks resolve).

    A FIFO is opened without blocking and then refused, so nothing waits for a writer.
    """
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


def inside(path: PathLike, folder: PathLike) -> bool:
    """True when ``path``, every symlink resolved, lies in ``folder`` (also resolved) or below it."""
    target, base = os.path.realpath(path), os.path.realpath(folder)
    return target == base or target.startswith(base.rstrip(os.sep) + os.sep)


def sidecar_of(photo: PathLike, sidecar: PathLike, what: str) -> bool:
    """Whether the sidecar file exists (a dangling symlink counts: it is reported, not ignored); refused with
    :class:`InputFileError` when it resolves outside the photo's folder."""
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
