"""A local Ray that dies with the build's driver, even when the driver is killed with -9.

Ray binds the processes ``ray.init`` starts (GCS, raylet, monitors) to the driver's life, but the raylet's own
agents (DashboardAgent, RuntimeEnvAgent) outlive them by about a minute, polling for a raylet that is gone. The
reaper is a small process started right after ``ray.init``, given the processes it started (the driver's new
children): it notes them and their descendants every second and, once the driver is gone (its pipe to the
reaper closes, whatever ended it), stops those still alive. Nothing else the driver started is touched. It
runs only for a Ray the build starts, never for a cluster it joins.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from typing import Iterable

import psutil

#: Seconds between two looks at the watched processes.
POLL_S = 1.0
#: Seconds the leftovers get to exit on SIGTERM before SIGKILL.
GRACE_S = 2.0


def child_pids() -> set[int]:
    """The pids of this process's children."""
    return {child.pid for child in psutil.Process().children()}


def start_reaper(roots: Iterable[int]) -> subprocess.Popen:
    """Start the reaper of the processes ``roots`` and their descendants; it acts when this process ends or at
    :func:`stop_reaper`."""
    return subprocess.Popen([sys.executable, "-m", __name__, *map(str, sorted(roots))], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_reaper(reaper: subprocess.Popen) -> None:
    """Let the reaper stop what is left of the processes it watches, and wait for it."""
    assert reaper.stdin is not None
    reaper.stdin.close()
    try:
        reaper.wait(timeout=GRACE_S + 10)
    except subprocess.TimeoutExpired:
        reaper.kill()


def _tree(roots: list[psutil.Process]) -> list[psutil.Process]:
    """The processes of ``roots`` still alive and their descendants."""
    found = []
    for root in roots:
        try:
            found += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return found


def reap(procs: list[psutil.Process], grace: float = GRACE_S) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, each process of ``procs`` still alive (a reused pid is left
    alone)."""
    alive = [p for p in procs if p.is_running()]
    for proc in alive:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=grace)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass


def main(roots: list[int]) -> None:
    """Watch the processes ``roots`` until stdin closes, then reap them and their last known descendants."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: outlive the driver to clean up
    watched = []
    for pid in roots:
        try:
            watched.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    known: set[psutil.Process] = set()
    while True:  # every process ever seen in the tree and still running: one reparented after a death counts too
        known = {proc for proc in known if proc.is_running()} | set(_tree(watched))
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 1):
            break
    reap(list(known))


if __name__ == "__main__":
    main([int(pid) for pid in sys.argv[1:]])
