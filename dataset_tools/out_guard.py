"""Guards around a build's OUT folder: one build at a time (a lock), a marker that proves a build wrote it, and
inputs kept apart from it.

``OUT/.bokeh-build`` holds :data:`MARKER_FORMAT`; it is written before anything else, so ``--overwrite`` removes
build files only from a folder a build made. ``OUT/.bokeh-build.lock`` is locked with ``flock`` by the driver
for the whole build: the kernel drops the lock when the driver dies, so a killed build never leaves a stale
lock, and a second build into the same OUT fails at once, naming the holder from the file's text.

An OUT on an object store (``s3://...``) has no flock: its lock is an object created with a conditional PUT
(:func:`dataset_tools.storage.create`), so of two drivers starting together exactly one gets it, and removed
when the build ends (:class:`ObjectLock`). A driver that is killed leaves it behind: the next build on the
same machine sees that the holder's process is gone and takes the lock over; from another machine the user
removes the lock object, which the refusal names.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path, PurePath, PurePosixPath
from typing import Optional, Sequence, Union

from estimators.cli_util import UserError

from . import storage
from .atomic import write_atomic

MARKER = ".bokeh-build"
#: The format id in the marker; a marker with another one was written by an incompatible build.
MARKER_FORMAT = "bokeh-build/1"
LOCK = ".bokeh-build.lock"
_WILDCARDS = "*?["
#: Bytes read of a marker or lock file (each holds one short JSON object or line).
_SMALL_FILE_BYTES = 4096
Place = Union[str, os.PathLike]


def read_marker(out: Place) -> bool:
    """True when OUT carries this format's build marker; UserError when it carries another format's."""
    path = storage.join(out, MARKER)
    if not storage.is_file(path):
        return False
    try:
        found = json.loads(storage.read_bytes(path, _SMALL_FILE_BYTES, "build marker")).get("format")
    except (OSError, ValueError, AttributeError):
        found = None
    if found != MARKER_FORMAT:
        raise UserError(f"{path} is not a {MARKER_FORMAT} build marker (found {found!r}): this OUT was written by "
                        "another version of the toolkit; choose another directory")
    return True


def write_marker(out: Place) -> None:
    """Mark OUT as written by a build (before any other build file)."""
    write_atomic(storage.join(out, MARKER), json.dumps({"format": MARKER_FORMAT}) + "\n")


def _remote_root(entry: str) -> tuple[PurePosixPath, bool]:
    """Like :func:`_input_root` for an object-store URL: the prefix (``/protocol/bucket/key``, so stores and
    buckets never compare equal) before the first wildcard, and whether the input reaches below it (any prefix
    may hold keys below it)."""
    protocol, rest = storage.location(entry).split("://", 1)
    parts = PurePosixPath("/", protocol, rest).parts
    cut = next((i for i, part in enumerate(parts) if any(ch in part for ch in _WILDCARDS)), None)
    if cut is None:
        return PurePosixPath(*parts), True
    return PurePosixPath(*parts[:cut]), "**" in parts or cut < len(parts) - 1


def _input_root(entry: str) -> Optional[tuple[PurePath, bool]]:
    """The folder or file an input names (a glob's folder before its first wildcard), and whether the input
    reaches below that folder's own entries; None for hub datasets."""
    if entry.startswith(("hf://", "hf:")):
        return None
    if storage.is_remote(entry):
        return _remote_root(entry)
    parts = Path(entry).parts
    cut = next((i for i, part in enumerate(parts) if any(ch in part for ch in _WILDCARDS)), None)
    if cut is None:
        root = Path(os.path.realpath(entry))
        return root, root.is_dir()
    root = Path(os.path.realpath(Path(*parts[:cut]) if cut else "."))
    return root, "**" in parts or cut < len(parts) - 1


def check_apart(inputs: Sequence[str], out: Place) -> None:
    """UserError (one line) when OUT is an input, lies where an input reaches (inside a folder input, or below a
    glob's folder when the glob descends), or holds an input; a local OUT and an object-store input (or the
    reverse) are always apart."""
    remote = storage.is_remote(out)
    target = _remote_root(os.fspath(out))[0] if remote else Path(os.path.realpath(out))
    for entry in inputs:
        found = _input_root(str(entry))
        if found is None or storage.is_remote(str(entry)) != remote:
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


def lock_out(out: Place) -> Union["OutLock", "ObjectLock"]:
    """The lock of OUT, to use as a context manager: an flock locally, a lock object on an object store."""
    return ObjectLock(storage.location(out)) if storage.is_remote(out) else OutLock(Path(out))


def _holder() -> dict[str, object]:
    """Who holds a lock: this process, its machine, since when."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _parsed(raw: bytes) -> dict[str, object]:
    """The holder a lock's bytes record ({} when they are not a JSON object)."""
    try:
        found = json.loads(raw)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _process_gone(pid: object) -> bool:
    """True when no process ``pid`` runs on this machine."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class ObjectLock:
    """The lock of one OUT on an object store: the object ``OUT/.bokeh-build.lock``, created only when absent
    (a conditional PUT) and removed by :meth:`release`."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.path = storage.join(out, LOCK)
        self.text: Optional[bytes] = None

    def acquire(self) -> "ObjectLock":
        """Take the lock (taking over one that a dead driver of this machine left) or raise UserError naming the
        build that holds it. A takeover deletes the dead holder's lock and creates it again conditionally: two
        drivers of one machine taking over the same dead lock in the same instant could both get it."""
        text = json.dumps(_holder()).encode()
        holder: dict[str, object] = {}
        for _ in range(2):
            if storage.create(self.path, text):
                self.text = text
                return self
            holder = _parsed(self._read())
            if not (holder.get("host") == socket.gethostname() and _process_gone(holder.get("pid"))):
                break
            storage.remove(self.path)  # its driver died on this machine without releasing it
        who = (f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
               if {"pid", "host", "since"} <= holder.keys() else "another process")
        raise UserError(f"{self.out} is in use by another bokeh build ({who}): wait for it to end; if that build "
                        f"is no longer running, delete {self.path}")

    def _read(self) -> bytes:
        """The lock object's bytes (b"" when it cannot be read)."""
        try:
            return storage.read_bytes(self.path, _SMALL_FILE_BYTES, "lock")
        except OSError:
            return b""

    def release(self) -> None:
        """Remove the lock object when it is still this build's."""
        if self.text is None:
            return
        if self._read() == self.text:
            storage.remove(self.path)
        self.text = None

    def __enter__(self) -> "ObjectLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


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
