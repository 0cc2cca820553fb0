"""Who may write into a run folder (``run.output_dir``): one ``bokeh train`` at a time, and a new run only where
no earlier run's results would be mixed with or pruned by it.

- ``.bokeh-train.lock``: held with ``flock`` for the whole run, so a second ``bokeh train`` into the folder fails
  at once. The kernel drops the lock when its holder exits, however it exits, so no lock is ever stale; the file
  names the holder (pid, host, start time) for the message.
- ``.bokeh-train.json``: the marker that proves the trainer made the folder's run files, so that ``--overwrite``
  may remove them; files it did not write (other names, anything inside ``logs/`` or ``validation/`` that is not
  the trainer's) are never removed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Optional, Union

from estimators.cli_util import UserError

LOCK = ".bokeh-train.lock"
MARKER = ".bokeh-train.json"
#: The top-level names a run writes (besides the lock and the marker).
RUN_ENTRIES = ("config.yaml", "checkpoints", "logs", "base", "validation")
#: Inside ``checkpoints/`` (finished and temporary), ``logs/`` and ``validation/``: the trainer's own files.
_OWN = {
    "checkpoints": re.compile(r"^\.?step-\d+(\.tmp)?$"),
    "logs": re.compile(r"^(train\.jsonl|errors\.jsonl|events\.out\.tfevents\..+|tensorboard|wandb)$"),
    "validation": re.compile(r"^step-\d+\.png$"),
}


class RunLock:
    """``with RunLock(folder):`` holds the folder's lock (creating the folder), or raises a one-line UserError
    naming the holder when another process has it."""

    def __init__(self, folder: Union[str, Path]) -> None:
        self.folder = Path(folder)
        self._fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.folder} is in use by another `bokeh train` ({holder}): wait for it to finish, "
                            "or choose another run.output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _latest_step(folder: Path) -> Optional[int]:
    from trainer.checkpoint import checkpoint_dirs

    found = checkpoint_dirs(folder)
    return int(found[-1].name.split("-")[1]) if found else None


def _logged_steps(folder: Path) -> bool:
    log = folder / "logs" / "train.jsonl"
    return log.is_file() and log.stat().st_size > 0


def claim(folder: Path, continues: bool, overwrite: bool) -> None:
    """Make ``folder`` this run's (under its lock): for a new run (``continues`` False) refuse a folder that holds a
    run unless ``overwrite``, and clear the trainer's files of an earlier one; then write the marker."""
    marked = (folder / MARKER).is_file()
    present = [name for name in RUN_ENTRIES if (folder / name).exists()]
    if not continues and present:
        step = _latest_step(folder)
        if not marked:
            raise UserError(f"{folder} holds {', '.join(present)} but no {MARKER} marker, so they are not known to be "
                            "bokeh train's: choose another run.output_dir (or remove them yourself)")
        if not overwrite and (step is not None or _logged_steps(folder)):
            where = f"checkpoints up to step {step}" if step is not None else "a training log, no checkpoint yet"
            raise UserError(f"{folder} holds a run ({where}): `--resume latest` continues it, `--overwrite` replaces it, "
                            "or choose another run.output_dir")
        clear(folder)
    if not marked:
        write_json(folder / MARKER, {"tool": "bokeh train", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def clear(folder: Path) -> None:
    """Remove the trainer's files of a marked run folder: ``config.yaml``, the tiny base model it built
    (``base/``, when the marker says so), and its own files in ``checkpoints/``, ``logs/`` and ``validation/``
    (those folders too when that empties them)."""
    (folder / "config.yaml").unlink(missing_ok=True)
    marker = read_marker(folder)
    if marker.pop("built_base", False):
        shutil.rmtree(folder / "base", ignore_errors=True)
        write_json(folder / MARKER, marker)
    for sub, own in _OWN.items():
        path = folder / sub
        if not path.is_dir():
            continue
        for entry in path.iterdir():
            if not own.match(entry.name):
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        if not any(path.iterdir()):
            path.rmdir()


def read_marker(folder: Path) -> dict[str, Any]:
    """The marker's fields ({} when absent or unreadable)."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def note_built_base(folder: Path) -> None:
    """Record in the marker that the trainer built ``base/`` (so ``--overwrite`` may remove it)."""
    write_json(folder / MARKER, {**read_marker(folder), "built_base": True})


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (new, renamed, removed) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (a temporary file synced, then renamed over it)."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a crash leaves the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
