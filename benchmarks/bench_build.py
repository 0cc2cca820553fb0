"""Benchmark of `bokeh build`: source photos per second (per stage and end to end) for each --workers count
(speed-up against the first), peak memory.

Builds from N generated demo scenes (exact sidecar depth, 512 px, cached under --cache) with 4 synthetic
levels, each build in a fresh subprocess with its own local Ray of --workers CPUs, and samples the memory of
the whole process tree (driver + Ray) every 0.2 s. Run from the repository root, e.g.

    .venv/bin/python benchmarks/bench_build.py --photos 200 --workers 1 2 --memory-photos 200 2000

``--photos 0`` makes only the memory runs; at a small size they finish in minutes, e.g.

    .venv/bin/python benchmarks/bench_build.py --photos 0 --memory-photos 200 2000 --resolution 160 --levels 1

With ``--reference DIR`` (another source tree of the project, e.g. ``git archive main | tar -x -C DIR``) every
speed run is also made with that code, alternately, on the same inputs, and the ratio is printed beside the
figures.

Targets (issue 4): >= 1 source photo / s / core end to end, 2 workers >= 1.7x one, peak memory for 2,000
photos within 20 % of that for 200; issue 27: >= 2.5 source photos / s / core at 512 px with 4 renders.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def scenes(cache: Path, count: int, size: int) -> Path:
    """A folder of ``count`` demo scenes (made once per count and size)."""
    folder = cache / f"scenes_{size}_{count}"
    if not (folder / "done").exists():
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "bokeh_cli", "demo-data", "-o", str(folder), "--count", str(count),
                        "--size", str(size)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (folder / "done").touch()
    return folder


class TreeMemory(threading.Thread):
    """Peak RSS of a process and of it plus all its descendants, and their CPU seconds, sampled every
    ``interval`` s (CPU time of a process is its last sample: a short-lived one may be missed)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = psutil.Process(pid), interval
        self.peak_driver = self.peak_tree = 0
        self.cpu: dict[int, float] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                rss = []
                for proc in procs:
                    try:
                        rss.append(proc.memory_info().rss)
                        times = proc.cpu_times()
                        self.cpu[proc.pid] = times.user + times.system
                    except psutil.Error:
                        rss.append(0)
                self.peak_driver = max(self.peak_driver, rss[0])
                self.peak_tree = max(self.peak_tree, sum(rss))
            except psutil.Error:
                pass
            self.stopped.wait(self.interval)


def run_build(inputs: Path, workers: int, args: argparse.Namespace, root: Path = ROOT) -> dict:
    """One `bokeh build` of the code in ``root`` in a subprocess; returns its stats plus wall time and peak memory."""
    out = Path(tempfile.mkdtemp(prefix="bench_out_", dir=args.cache))
    command = [sys.executable, "-m", "bokeh_cli", "build", str(inputs), "-o", str(out / "ds"), "--depth", "sidecar",
               "--mask", args.mask, "--synthetic-levels", str(args.levels), "--resolution", str(args.resolution),
               "--shard-size", str(args.shard_size), "--workers", str(workers)]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(root)}
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeMemory(proc.pid)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    sampler.stopped.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}):\n{stdout}\n{stderr}")
    stats = json.loads((out / "ds" / "stats.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"workers": workers, "photos": stats["photos_read"], "rows": stats["rows_written"], "wall_s": wall,
            "build_wall_s": stats["wall_seconds"], "stage_seconds": stats["stage_seconds"],
            "peak_driver_mb": sampler.peak_driver / 2**20, "peak_tree_mb": sampler.peak_tree / 2**20,
            "cpu_s": sum(sampler.cpu.values())}


def ray_start_seconds(workers: int) -> float:
    """Seconds to start and stop an empty local Ray (the fixed cost inside every build's wall time)."""
    code = ("import time, ray; t = time.perf_counter(); "
            f"ray.init(address='local', num_cpus={workers}, include_dashboard=False, logging_level='ERROR'); "
            "ray.data.range(1).materialize(); print(time.perf_counter() - t); ray.shutdown()")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=200, help="photos of the speed runs (default 200; 0: none)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="CPU workers to compare (default 1 2)")
    parser.add_argument("--memory-photos", type=int, nargs="*", default=[200, 2000],
                        help="photo counts of the peak-memory comparison, run with the largest worker count "
                        "(default 200 2000; none to skip)")
    parser.add_argument("--memory-workers", type=int, help="workers of the memory runs (default: the largest --workers)")
    parser.add_argument("--levels", type=int, default=4, help="synthetic levels (default 4)")
    parser.add_argument("--resolution", type=int, default=512, help="scene and stored size in px (default 512)")
    parser.add_argument("--shard-size", type=int, default=100, help="photos per shard (default 100)")
    parser.add_argument("--mask", default="sidecar", choices=("sidecar", "depth"), help="mask backend (default sidecar)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bokeh_bench_build",
                        help="where scenes and outputs go (default: a folder in the temp dir)")
    parser.add_argument("--reference", type=Path, help="another source tree: its speed runs are made too, to compare")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)

    speed_workers = args.workers if args.photos > 0 else []
    results = {"ray_start_s": {w: round(ray_start_seconds(w), 2) for w in speed_workers}, "speed": [], "memory": [],
               "reference": []}
    inputs = scenes(args.cache, args.photos, args.resolution) if speed_workers else None
    for workers in speed_workers:
        if args.reference:
            reference = run_build(inputs, workers, args, args.reference.resolve())
            results["reference"].append(reference)
        run = run_build(inputs, workers, args)
        results["speed"].append(run)
        per_stage = {k: round(run["photos"] / v, 2) for k, v in run["stage_seconds"].items() if v > 0}
        busy = sum(run["stage_seconds"].values())
        if args.reference:
            print(f"{workers} worker(s), reference code: {reference['photos'] / reference['wall_s'] / workers:.2f} "
                  f"photos/s per core end to end, stage work {sum(reference['stage_seconds'].values()) / reference['photos']:.3f} "
                  f"s/photo, CPU {reference['cpu_s'] / reference['photos']:.3f} s/photo (all processes); peak memory "
                  f"all processes {reference['peak_tree_mb']:.0f} MB; this code is "
                  f"{reference['wall_s'] / run['wall_s']:.2f}x as fast end to end, "
                  f"{sum(reference['stage_seconds'].values()) / busy:.2f}x in stage work, "
                  f"{reference['cpu_s'] / run['cpu_s']:.2f}x in CPU seconds")
        print(f"{workers} worker(s): {run['photos']} photos -> {run['rows']} rows in {run['wall_s']:.1f} s "
              f"({run['photos'] / run['wall_s']:.2f} photos/s end to end, "
              f"{run['photos'] / run['wall_s'] / workers:.2f} per core; Ray start {results['ray_start_s'][workers]} s); "
              f"stage work {busy / run['photos']:.3f} s/photo = {run['photos'] / busy:.2f} photos/s/core; "
              f"CPU {run['cpu_s'] / run['photos']:.3f} s/photo (all processes), cores used {run['cpu_s'] / run['wall_s']:.2f}; "
              f"peak memory driver {run['peak_driver_mb']:.0f} MB, all processes {run['peak_tree_mb']:.0f} MB")
        print("   photos/s per core by stage: " + ", ".join(f"{k} {v}" for k, v in sorted(per_stage.items())))
    for run in results["speed"][1:]:
        first = results["speed"][0]
        start_first, start_run = results["ray_start_s"][first["workers"]], results["ray_start_s"][run["workers"]]
        print(f"speed-up {run['workers']} vs {first['workers']} workers: {first['wall_s'] / run['wall_s']:.2f}x end to end, "
              f"{(first['wall_s'] - start_first) / (run['wall_s'] - start_run):.2f}x without Ray start")
    for count in args.memory_photos:
        run = run_build(scenes(args.cache, count, args.resolution), args.memory_workers or max(args.workers), args)
        results["memory"].append(run)
        print(f"memory, {count} photos, {run['workers']} workers: peak driver {run['peak_driver_mb']:.0f} MB, "
              f"all processes {run['peak_tree_mb']:.0f} MB ({run['wall_s']:.0f} s)")
    if len(results["memory"]) >= 2:
        small, large = results["memory"][0], results["memory"][-1]
        print(f"peak memory {large['photos']} vs {small['photos']} photos: driver "
              f"{large['peak_driver_mb'] / small['peak_driver_mb']:.2f}x, all processes "
              f"{large['peak_tree_mb'] / small['peak_tree_mb']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
