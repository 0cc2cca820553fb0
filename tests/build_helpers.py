"""Helpers shared by the `bokeh build` tests (no tests here): inputs, output readers, Ray process cleanup."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# A local Ray started by these tests binds 127.0.0.1 only (read when ray is imported; docs/design.md §5).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from dataset_tools.build import ShardWriter  # noqa: E402
from dataset_tools.demo_scenes import write_demo_data  # noqa: E402
from dataset_tools.ray_reaper import reap  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REPO_ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(ROOT)}
META_COLUMNS = ("id", "group_id", "kind", "width", "height", "caption", "bokeh_level", "k_metric", "bokeh_source",
                "focus_disparity", "sharpness_subject", "sharpness_background", "is_all_in_focus", "source",
                "render_params")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs, loopback) for a test module; builds run in-process reuse it.

    It declares one GPU that is not there: model stages then take the GPU scheduling path (actor pools
    sharing the GPU), while torch, finding no CUDA, runs them on the CPU.
    """
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield
    ray.shutdown()


def demo_scenes(folder: Path, count: int, size: int = 256, seed: int = 0) -> list[Path]:
    """Procedural AIF scenes with .depth.npy / .mask.png / .txt sidecars."""
    return write_demo_data(folder, count, seed=seed, width=size, height=size, progress=False)


def cli(*args: object) -> list[str]:
    """The command line of ``bokeh`` run with this Python (a subprocess that can be killed)."""
    return [sys.executable, "-m", "bokeh_cli", *map(str, args)]


def read_rows(out: Path, columns=META_COLUMNS) -> list[dict]:
    """All rows of OUT/data (selected columns; None: all), shard by shard, class labels by name."""
    from dataset_tools.schema import LABELS

    rows = []
    for path in sorted((out / "data").glob("train-*.parquet")):
        rows.extend(pq.read_table(path, columns=None if columns is None else list(columns)).to_pylist())
    for row in rows:
        for column, names in LABELS.items():
            if row.get(column) is not None:
                row[column] = names[row[column]]
    return rows


def read_errors(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]


def assert_each_photo_once(out: Path, expected_sources: set[str]) -> tuple[list[dict], list[dict]]:
    """Every expected source is in exactly one place: one real row, or one errors.jsonl line."""
    rows, errors = read_rows(out), read_errors(out)
    real = [r["source"] for r in rows if r["kind"] == "real"]
    failed = [e["source"] for e in errors]
    assert len(real) == len(set(real)), "a photo has two real rows"
    assert len(failed) == len(set(failed)), "a photo has two error lines"
    assert not set(real) & set(failed), "a photo is both in the data and in errors.jsonl"
    assert set(real) | set(failed) == expected_sources
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    return rows, errors


def session_processes(session_id: int) -> list[psutil.Process]:
    """Live processes of the session started by process ``session_id`` (start_new_session=True)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and os.getsid(proc.pid) == session_id:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def kill_session(session_id: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process of a session this test started (never anything else)."""
    procs = session_processes(session_id)
    reap(procs, grace)
    psutil.wait_procs(procs, timeout=grace)


def wait_for(condition, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def disparity_by_hand(depth_m: np.ndarray) -> np.ndarray:
    """docs/design.md §1: d = (1/z - 1/z_far) / (1/z_near - 1/z_far), written out independently."""
    inv = 1.0 / depth_m.astype(np.float64)
    return (inv - inv.min()) / (inv.max() - inv.min())


class Interrupted(Exception):
    """Raised by :class:`StopAfterFirstShard`: the build stops as a crash would."""


class StopAfterFirstShard(ShardWriter):
    """A writer that breaks the build right after it published its first output shard."""

    def add(self, *args, **kwargs):
        done = super().add(*args, **kwargs)
        if done is not None:
            raise Interrupted
        return done
