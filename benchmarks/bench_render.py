"""Speed of synth_blur.render: megapixels per second at 512^2 and 1024^2 for K in {5, 15, 30}.

Scene: the Middlebury motorcycle photo with its ground-truth disparity (tests/data/photos/depth),
stretched to N x N, focused on the motorcycle. Timed with one thread and with all cores (best of
``--repeat`` runs after a warm-up), then on CUDA when present, next to the exact per-pixel scatter
reference of tests/test_render.py on a small quantised version of the scene.

    python benchmarks/bench_render.py [--repeat 5] [--sizes 512,1024]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from PIL import Image

from estimators.depth import normalize_disparity
from synth_blur import render

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "photos" / "depth"
LEVELS = (5, 15, 30)


def load_scene(size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The motorcycle photo and disparity resized to size x size, and a focus on the motorcycle."""
    with Image.open(DATA / "motorcycle_left.png") as img:
        rgb = np.asarray(img.convert("RGB"))
    with np.load(DATA / "motorcycle_disp.npz") as archive:
        disparity = normalize_disparity(archive["arr_0"])
    rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    disparity = cv2.resize(disparity, (size, size), interpolation=cv2.INTER_NEAREST)
    return rgb, disparity, float(np.percentile(disparity, 90))


def best_time(run: Callable[[], object], repeat: int, sync: Callable[[], None] = lambda: None) -> float:
    """Best wall time of ``repeat`` runs after one warm-up run."""
    run()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def load_reference() -> Callable[..., np.ndarray]:
    """scatter_reference from tests/test_render.py (the exact per-pixel scatter)."""
    spec = importlib.util.spec_from_file_location("render_reference", ROOT / "tests" / "test_render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.scatter_reference


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per case (best is reported)")
    parser.add_argument("--sizes", default="512,1024", help="square image sizes")
    parser.add_argument("--reference-size", type=int, default=96, help="image size for the slow exact reference")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cores = os.cpu_count() or 1
    print(f"synth_blur.render benchmark: motorcycle scene, CPU {cpu_name()} ({cores} cores), torch {torch.__version__}")
    print(f"{'size':>9} {'K':>3} {'1 thread':>15} {f'{cores} threads':>15} {'cuda':>15}")
    cuda = torch.cuda.is_available()
    costs = {}
    for size in sizes:
        rgb, disparity, focus = load_scene(size)
        megapixels = size * size / 1e6
        for level in LEVELS:
            cells = []
            for threads in (1, cores):
                torch.set_num_threads(threads)
                seconds = best_time(lambda: render(rgb, disparity, level, focus, device="cpu"), args.repeat)
                costs[(size, level, threads)] = seconds
                cells.append(f"{seconds:6.3f} s {megapixels / seconds:5.2f}")
            if cuda:
                seconds = best_time(lambda: render(rgb, disparity, level, focus, device="cuda"), args.repeat,
                                    torch.cuda.synchronize)
                cells.append(f"{seconds:6.3f} s {megapixels / seconds:5.1f}")
            else:
                cells.append("-")
            print(f"{size:>4}x{size:<4} {level:>3} " + " ".join(f"{c:>15}" for c in cells))
    print("(each cell: seconds per image and megapixels per second)")
    for size in sizes:
        ratio = costs[(size, 30, 1)] / costs[(size, 5, 1)]
        print(f"cost of K=30 / K=5 at {size}x{size}, one thread: {ratio:.2f}")

    torch.set_num_threads(1)
    scatter_reference = load_reference()
    size = args.reference_size
    rgb, disparity, focus = load_scene(size)
    image = rgb.astype(np.float32) / 255
    quantised = (np.round(disparity * 31) / 31).astype(np.float32)  # the reference wants few depths
    for level in LEVELS:
        reference = best_time(lambda: scatter_reference(image, quantised, level, focus), 1)
        ours = best_time(lambda: render(image, quantised, level, focus, device="cpu"), args.repeat)
        print(
            f"exact scatter reference at {size}x{size} (32 depths), K={level}: {reference:.3f} s "
            f"({size * size / 1e6 / reference:.3f} MP/s); render, same scene, one thread: {ours:.4f} s"
        )


if __name__ == "__main__":
    main()
