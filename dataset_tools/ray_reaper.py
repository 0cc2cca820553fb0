"""A local Ray that dies with the build's driver, even when the driver is killed with -9.

Ray binds the processes ``ray.init`` starts (GCS, raylet, monitors) to the driver's life, but the raylet's own
agents (DashboardAgent, RuntimeEnvAgent) outlive them by about a minute, polling for a raylet that is gone. The
reaper is a small process started next to Ray: it notes the driver's descendants every second and, once the
driver is gone (its pipe to the reaper closes, whatever ended it), stops those still alive. It runs only for a
Ray the build starts, never for a cluster it joins.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from typing import Optional

import psutil

#: Seconds between two looks at the driver's descendants.
POLL_S = 1.0
#: Seconds the leftovers get to exit on SIGTERM before SIGKILL.
GRACE_S = 2.0


def start_reaper() -> subprocess.Popen:
    """Start the reaper of this process's descendants; it acts when this process ends or :func:`stop_reaper`."""
    return subprocess.Popen([sys.executable, "-m", __name__, str(os.getpid())], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_reaper(reaper: subprocess.Popen) -> None:
    """Let the reaper stop what is left of this process's descendants, and wait for it."""
    assert reaper.stdin is not None
    reaper.stdin.close()
    try:
        reaper.wait(timeout=GRACE_S + 10)
    except subprocess.TimeoutExpired:
        reaper.kill()


def _descendants(driver: psutil.Process) -> Optional[list[psutil.Process]]:
    """The driver's descendants but this reaper; None once the driver is gone."""
    try:
        return [p for p in driver.children(recursive=True) if p.pid != os.getpid()]
    except psutil.NoSuchProcess:
        return None


def reap(procs: list[psutil.Process]) -> None:
    """SIGTERM, then SIGKILL after GRACE_S, each process of ``procs`` still alive (a reused pid is left alone)."""
    alive = [p for p in procs if p.is_running()]
    for proc in alive:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=GRACE_S)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass


def main(driver_pid: int) -> None:
    """Watch ``driver_pid`` until stdin closes, then reap its last known descendants."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: outlive the driver to clean up
    driver = psutil.Process(driver_pid)
    known: list[psutil.Process] = []
    while True:
        found = _descendants(driver)
        if found is None:
            break
        known = found
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 1):
            break
    reap(known)


if __name__ == "__main__":
    main(int(sys.argv[1]))
