"""CPU seconds per source photo of the build's stages, without Ray: `bokeh build --workers 0` (every stage in one
process, one thread), this code and a reference tree built in turn on the same inputs, ``--rounds`` times each.

On a shared machine wall time follows the other jobs; the process CPU time of a one-thread build (``getrusage`` of
the finished child, exact) and its ratio against the reference built in the same minutes travel better. Run from
the repository root, e.g.

    .venv/bin/python benchmarks/bench_stages.py --reference /path/to/main --photos 48 --rounds 3

The same inputs as ``bench_build.py``: demo scenes with exact sidecar depth and masks, 512 px, 4 synthetic levels.
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

from bench_build import ROOT, scenes


def child_cpu_seconds() -> float:
    """User + system seconds of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build_once(inputs: Path, root: Path, args: argparse.Namespace) -> dict:
    """One in-process build of the code in ``root``: CPU and wall seconds, stage seconds per photo."""
    out = Path(tempfile.mkdtemp(prefix="bench_stages_", dir=args.cache))
    command = [sys.executable, "-m", "bokeh_cli", "build", str(inputs), "-o", str(out / "ds"), "--depth", "sidecar",
               "--mask", "sidecar", "--synthetic-levels", str(args.levels), "--resolution", str(args.resolution),
               "--workers", "0"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cpu, wall = child_cpu_seconds(), time.perf_counter()
    subprocess.run(command, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu, wall = child_cpu_seconds() - cpu, time.perf_counter() - wall
    stats = json.loads((out / "ds" / "stats.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    photos = stats["photos_read"]
    return {"cpu_s_per_photo": cpu / photos, "wall_s_per_photo": wall / photos,
            "stage_s_per_photo": {k: v / photos for k, v in stats["stage_seconds"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True, help="the other source tree to compare with")
    parser.add_argument("--photos", type=int, default=48, help="photos per build (default 48)")
    parser.add_argument("--rounds", type=int, default=3, help="builds of each tree, in turn (default 3)")
    parser.add_argument("--levels", type=int, default=4, help="synthetic levels (default 4)")
    parser.add_argument("--resolution", type=int, default=512, help="scene and stored size in px (default 512)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bokeh_bench_build",
                        help="where scenes and outputs go (default: the folder of bench_build.py)")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    inputs = scenes(args.cache, args.photos, args.resolution)
    runs: dict[str, list[dict]] = {"reference": [], "this": []}
    for round_index in range(args.rounds):
        for name, root in (("reference", args.reference.resolve()), ("this", ROOT)):
            run = build_once(inputs, root, args)
            runs[name].append(run)
            print(f"round {round_index + 1}, {name}: CPU {run['cpu_s_per_photo']:.3f} s/photo, wall "
                  f"{run['wall_s_per_photo']:.3f} s/photo, load average {os.getloadavg()[0]:.1f}", flush=True)
    best = {name: min(r["cpu_s_per_photo"] for r in rs) for name, rs in runs.items()}
    print(f"best CPU s per photo (one process, {args.photos} photos, {args.levels} renders each): reference "
          f"{best['reference']:.3f}, this code {best['this']:.3f}: {best['reference'] / best['this']:.2f}x, "
          f"{1 / best['this']:.2f} photos per CPU second")
    for name, rs in runs.items():
        stages = min(rs, key=lambda r: r["cpu_s_per_photo"])["stage_s_per_photo"]
        print(f"  {name}, stage seconds per photo of its best round: "
              + ", ".join(f"{k} {v:.3f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
