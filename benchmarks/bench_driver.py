"""Benchmark of the `bokeh build` driver alone: the bytes it receives from the workers and the CPU seconds it
spends, per source photo (issue 27: one driver must feed many workers).

Each build runs in a fresh subprocess that starts its own local Ray with --workers CPUs and calls
``dataset_tools.build.build`` in-process; the driver's CPU time is ``resource.getrusage(RUSAGE_SELF)`` of that
process (all its threads: Ray Data's executor included; never the workers), counted from the first finished
photo to the last (Ray start, sharding and the summary are left out), and split into the main thread (which
takes every finished photo or record and publishes shards: the CPU of each photo) and the other threads (Ray
Data's executor loop and Ray's own: cores taken while the build runs, whatever the photo rate); the bytes are
those of every row the driver's Ray Data iterators hand it. Two builds: a realistic one (--resolution px,
--levels renders) and a fast one (128 px, no renders), whose photos arrive many times faster. The other
threads' cores r come from the realistic build (few photos arrive: mostly the loop); what they take beyond
r * wall in the fast build is their CPU per photo (task and block bookkeeping); with the main thread's CPU per
photo at the realistic size, that is the CPU c of one photo, and one driver can feed (1 - r) / c photos/s.
Run from the repository root, e.g.

    .venv/bin/python benchmarks/bench_driver.py --photos 32 --fast-photos 192 --workers 2

Goal (issue 27): no image bytes through the driver and under 1 ms of driver CPU per photo.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_build import scenes  # noqa: E402


def _size(value: object) -> int:
    """Bytes of the payload of one row value (bytes, text, arrays, nested containers)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, dict):
        return sum(_size(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_size(v) for v in value)
    nbytes = getattr(value, "nbytes", None)
    return int(nbytes) if nbytes is not None else 8


def driver_run(inputs: str, out: str, workers: int, levels: int, resolution: int, shard_size: int) -> dict:
    """One build in this process; the driver's CPU seconds and the bytes its Ray Data iterators received."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray.data

    from dataset_tools.build import build
    from dataset_tools.build_config import BuildConfig

    received = {"received_rows": 0, "bytes": 0}
    window: list[tuple[float, float, float, int]] = []  # (driver CPU s, main-thread CPU s, wall s, photos so far)
    iter_rows = ray.data.Dataset.iter_rows

    def counted(self, *args, **kwargs):
        for row in iter_rows(self, *args, **kwargs):
            row = dict(row)
            received["received_rows"] += 1
            received["bytes"] += _size(row)
            photos = int(row["photos"]) if "photos" in row else int("state" in row)
            if photos:
                usage = resource.getrusage(resource.RUSAGE_SELF)
                done = window[-1][3] if window else 0
                window.append((usage.ru_utime + usage.ru_stime, time.thread_time(), time.perf_counter(), done + photos))
            yield row

    ray.data.Dataset.iter_rows = counted
    config = BuildConfig(depth="sidecar", mask="sidecar", synthetic_levels=levels, resolution=resolution,
                         shard_size=shard_size, min_sharpness=0)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    stats = build([inputs], out, config, workers=workers, progress=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    (cpu0, main0, wall0, photos0), (cpu1, main1, wall1, photos1) = window[0], window[-1]
    return {"photos": stats.photos, "rows": stats.rows, "cpu_s": cpu, "wall_s": wall,
            "window_cpu_s": cpu1 - cpu0, "window_main_cpu_s": main1 - main0, "window_wall_s": wall1 - wall0,
            "window_photos": photos1 - photos0,
            "stage_seconds": sum(stats.stage_seconds.values()), **received,
            "out_bytes": sum(p.stat().st_size for p in Path(out, "data").iterdir())}


def run(inputs: Path, workers: int, levels: int, resolution: int, args: argparse.Namespace) -> dict:
    """:func:`driver_run` in a fresh subprocess (its own Ray)."""
    out = Path(tempfile.mkdtemp(prefix="bench_driver_", dir=args.cache))
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from bench_driver import driver_run; "
            "print(json.dumps(driver_run(sys.argv[2], sys.argv[3], *map(int, sys.argv[4:]))))")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "benchmarks"), str(inputs), str(out / "ds"),
                           str(workers), str(levels), str(resolution), str(args.shard_size)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(real: dict, fast: dict) -> dict:
    """Print both builds and the driver's ceiling (see the module docstring); returns the figures."""
    for name, r in (("realistic", real), ("fast", fast)):
        n = r["window_photos"]
        print(f"{name}: {r['photos']} photos -> {r['rows']} rows ({r['out_bytes'] / r['photos'] / 1e3:.0f} KB of output "
              f"per photo); the driver received {r['bytes'] / r['photos'] / 1e3:.2f} KB/photo in {r['received_rows']} "
              f"rows; while photos arrived ({n} photos in {r['window_wall_s']:.1f} s) its CPU was "
              f"{1e3 * r['window_cpu_s'] / n:.2f} ms/photo: main thread {1e3 * r['window_main_cpu_s'] / n:.2f} ms/photo, "
              f"other threads {(r['window_cpu_s'] - r['window_main_cpu_s']) / r['window_wall_s']:.3f} cores")
    loop = (real["window_cpu_s"] - real["window_main_cpu_s"]) / real["window_wall_s"]
    other = fast["window_cpu_s"] - fast["window_main_cpu_s"] - loop * fast["window_wall_s"]
    per_photo = real["window_main_cpu_s"] / real["window_photos"] + max(0.0, other) / fast["window_photos"]
    ceiling = (1 - loop) / per_photo
    worker_rate = real["photos"] / real["stage_seconds"]
    print(f"driver: {loop:.3f} cores for Ray's loops + {1e3 * per_photo:.2f} ms CPU per photo -> one driver feeds "
          f"{ceiling:.0f} photos/s = {ceiling / worker_rate:.0f} workers at the realistic build's "
          f"{worker_rate:.2f} photos/s per worker")
    return {"loop_cores": loop, "cpu_s_per_photo": per_photo, "photos_per_s": ceiling,
            "worker_photos_per_s": worker_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=32, help="photos of the realistic build (default 32)")
    parser.add_argument("--fast-photos", type=int, default=192, help="photos of the fast build (default 192)")
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray (default 2)")
    parser.add_argument("--levels", type=int, default=4, help="synthetic levels of the realistic build (default 4)")
    parser.add_argument("--resolution", type=int, default=512, help="scene and stored size in px (default 512)")
    parser.add_argument("--shard-size", type=int, default=16, help="photos per shard (default 16)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bokeh_bench_build",
                        help="where scenes and outputs go (default: a folder in the temp dir)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)

    real = run(scenes(args.cache, args.photos, args.resolution), args.workers, args.levels, args.resolution, args)
    fast = run(scenes(args.cache, args.fast_photos, 128), args.workers, 0, 128, args)
    summary = summarise(real, fast)
    if args.json:
        args.json.write_text(json.dumps({"realistic": real, "fast": fast, **summary}, indent=2))


if __name__ == "__main__":
    main()
