"""Guards around a build's OUT folder: one build at a time (a lock), a marker that proves a build wrote it, and
inputs kept apart from it.

``OUT/.bokeh-build`` holds :data:`MARKER_FORMAT`; it is written before anything else, so ``--overwrite`` removes
build files only from a folder a build made. ``OUT/.bokeh-build.lock`` is locked with ``flock`` by the driver
for the whole build: the kernel drops the lock when the driver dies, so a killed build never leaves a stale
lock, and a second build into the same OUT fails at once, naming the holder from the file's text.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Optional, Sequence

from estimators.cli_util import UserError

from .atomic import write_atomic

MARKER = ".bokeh-build"
#: The format id in the marker; a marker with another one was written by an incompatible build.
MARKER_FORMAT = "bokeh-build/1"
LOCK = ".bokeh-build.lock"
_WILDCARDS = "*?["


def read_marker(out: Path) -> bool:
    """True when OUT carries this format's build marker; UserError when it carries another format's."""
    path = out / MARKER
    if not path.is_file():
        return False
    try:
        found = json.loads(path.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        found = None
    if found != MARKER_FORMAT:
        raise UserError(f"{path} is not a {MARKER_FORMAT} build marker (found {found!r}): this OUT was written by "
                        "another version of the toolkit; choose another directory")
    return True


def write_marker(out: Path) -> None:
    """Mark OUT as written by a build (before any other build file)."""
    write_atomic(out / MARKER, json.dumps({"format": MARKER_FORMAT}) + "\n")


def _local_root(entry: str) -> Optional[tuple[Path, bool]]:
    """The folder or file an input names on this machine (a glob's folder before its first wildcard), and whether
    the input reaches below that folder's own entries; None for hub datasets."""
    if entry.startswith(("hf://", "hf:")):
        return None
    parts = Path(entry).parts
    cut = next((i for i, part in enumerate(parts) if any(ch in part for ch in _WILDCARDS)), None)
    if cut is None:
        root = Path(os.path.realpath(entry))
        return root, root.is_dir()
    root = Path(os.path.realpath(Path(*parts[:cut]) if cut else "."))
    return root, "**" in parts or cut < len(parts) - 1


def check_apart(inputs: Sequence[str], out: Path) -> None:
    """UserError (one line) when OUT is an input, lies where an input reaches (inside a folder input, or below a
    glob's folder when the glob descends), or holds an input."""
    target = Path(os.path.realpath(out))
    for entry in inputs:
        found = _local_root(str(entry))
        if found is None:
            continue
        root, deep = found
        if target == root:
            why = "is the input"
        elif deep and target.is_relative_to(root):
            why = "lies inside the input"
        elif root.is_relative_to(target):
            why = "holds the input"
        else:
            continue
        raise UserError(f"OUT {out} {why} {entry}: a build never writes among its inputs; choose an OUT outside them")


class OutLock:
    """The lock of one OUT, held by this process from :meth:`acquire` to :meth:`release` (creates OUT)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / LOCK
        self.fd: Optional[int] = None
        #: Folders this lock had to create (deepest first), removed again by :meth:`release` when left empty.
        self.created: list[Path] = []

    def acquire(self) -> "OutLock":
        """Take the lock or raise UserError naming the build that holds it."""
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"{self.out} exists and is not a directory")
        self.created = [p for p in (self.out, *self.out.parents) if not p.exists()]
        self.out.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 512).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise UserError(f"{self.out} is in use by another bokeh build ({holder}): wait for it to end, "
                                "or choose another directory") from None
            if self._same_file(fd):  # not a lock file its holder removed while we opened it
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}".encode())
        self.fd = fd
        return self

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Remove the lock file (while still holding it, so no one locks a removed file) and drop the lock;
        folders the lock created are removed when nothing else was written there."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:
                break

    def __enter__(self) -> "OutLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
