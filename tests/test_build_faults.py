"""Faults of the Ray cluster under a running build: a worker process killed (SIGKILL, found by PID) while it runs
a stage, and a node lost mid-build (two nodes on 127.0.0.1 with ``ray.cluster_utils.Cluster``). The build
finishes with every input in exactly one place and the same rows as a build without Ray.

What happens: Ray retries the task of the dead worker (on a node still there); the retry finds the death
ledger's file of its batch (OUT/_work/attempts) and runs that batch's photos one at a time; a part file the
dead attempt may have written is never joined (its record never reached the driver). Nothing else is redone.
Each test is bounded (small photos, few of them) and has its own time limit.
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from build_helpers import assert_each_photo_once, demo_scenes, read_rows
from bokeh_cli import main

FLAGS = ["--depth", "sidecar", "--mask", "sidecar", "--synthetic-levels", "2", "--resolution", "192",
         "--shard-size", "3", "--min-sharpness", "0"]
PHOTOS = 6
#: The Ray Data task that runs the stages (its process title names it while it runs).
STAGE_TASK = "_segment_task"


def _busy_workers(ancestors: set[int]) -> list[psutil.Process]:
    """Ray worker processes of this test's Ray (below one of ``ancestors``) that run the stage task now."""
    found = []
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        try:
            title = " ".join(proc.info["cmdline"] or [])
            if STAGE_TASK in title and title.startswith("ray::") and ancestors & {p.pid for p in proc.parents()}:
                found.append(proc)
        except psutil.Error:
            continue
    return found


class _Fault(threading.Thread):
    """Waits until a render call is under way (its file in the death ledger), then runs ``act`` once; then
    notes the photos that a retry renders one at a time (their own ledger files)."""

    def __init__(self, out: Path, act) -> None:
        super().__init__(daemon=True)
        self.attempts, self.act = out / "_work" / "attempts", act
        self.done = threading.Event()
        self.result = None
        self.singled: set[str] = set()

    def _names(self) -> list[str]:
        try:
            return [p.name for p in self.attempts.iterdir()]
        except OSError:
            return []

    def run(self) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not self.done.is_set():
            names = self._names()
            if self.result is None and any(name.startswith("render-batch") for name in names):
                self.result = self.act()
            self.singled.update(name for name in names if self.result and re.fullmatch(r"render-\d+", name))
            time.sleep(0.02)


def _reference(inputs: Path, tmp_path: Path) -> list[dict]:
    out = tmp_path / "reference"
    assert main(["build", str(inputs), "-o", str(out), *FLAGS, "--workers", "0"]) == 0
    return sorted(read_rows(out), key=lambda r: r["id"])


def _finished_once(out: Path, inputs: Path, photos: list[Path], tmp_path: Path) -> None:
    rows, errors = assert_each_photo_once(out, {str(p) for p in photos})
    assert errors == [] and not (out / "_work").exists()
    assert sorted(rows, key=lambda r: r["id"]) == _reference(inputs, tmp_path)


def _row_sizes(monkeypatch) -> list[int]:
    """The bytes of every row the driver's Ray Data iterators hand it (text and binary values), as they come."""
    import ray.data

    sizes: list[int] = []
    iter_rows = ray.data.Dataset.iter_rows

    def counted(self, *args, **kwargs):
        for row in iter_rows(self, *args, **kwargs):
            values = dict(row).values()
            assert not any(isinstance(v, (bytes, np.ndarray)) for v in values), "the driver received bytes or arrays"
            sizes.append(sum(len(v) if isinstance(v, str) else 8 for v in values))
            yield row

    monkeypatch.setattr(ray.data.Dataset, "iter_rows", counted)
    return sizes


@pytest.mark.timeout(300)
def test_a_ray_worker_killed_mid_stage_is_retried_and_the_build_finishes(tmp_path, monkeypatch):
    """Also: the driver receives small records only (the workers write the rows)."""
    import ray

    photos = demo_scenes(tmp_path / "in", PHOTOS, size=192)
    out = tmp_path / "out"
    sizes = _row_sizes(monkeypatch)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        ours = {p.pid for p in psutil.Process().children(recursive=True)}  # this Ray's processes (raylet, ...)

        def kill_busy():
            # every worker running the stages now: with two CPUs another chunk's worker may be busy beside the one
            # that renders, and which of them renders cannot be told from outside
            busy = _busy_workers(ours)
            for proc in busy:
                os.kill(proc.pid, signal.SIGKILL)
            return [proc.pid for proc in busy] or None

        fault = _Fault(out, kill_busy)
        fault.start()
        code = main(["build", str(tmp_path / "in"), "-o", str(out), *FLAGS])
        fault.done.set()
        fault.join()
    finally:
        ray.shutdown()
    assert code == 0 and fault.result is not None, "no worker was killed while a stage ran"
    for pid in fault.result:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert fault.singled, "the retry of the killed batch did not render its photos one at a time"
    assert sizes and max(sizes) < 4096  # one record per part (and per chunk of the hashing pass)
    _finished_once(out, tmp_path / "in", photos, tmp_path)


@pytest.mark.timeout(300)
def test_a_node_lost_mid_build_is_replaced_by_the_other(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    photos = demo_scenes(tmp_path / "in", PHOTOS, size=192)
    out = tmp_path / "out"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")

        def lose_node():
            cluster.remove_node(worker, allow_graceful=False)
            return worker.unique_id

        fault = _Fault(out, lose_node)
        fault.start()
        code = main(["build", str(tmp_path / "in"), "-o", str(out), *FLAGS])
        fault.done.set()
        fault.join()
        deadline = time.monotonic() + 60  # the GCS marks a removed node dead after its health checks fail
        while len(alive := [n for n in ray.nodes() if n["Alive"]]) > 1 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert code == 0 and fault.result is not None, "the node was not removed while a stage ran"
    assert len(alive) == 1
    _finished_once(out, tmp_path / "in", photos, tmp_path)
