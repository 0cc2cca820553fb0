"""Speed of synth_blur.render: megapixels per second at 512^2 and 1024^2 for K in {5, 15, 30}.

Scene: the Middlebury motorcycle photo with its ground-truth disparity (tests/data/photos/depth),
stretched to N x N, focused on the motorcycle. Timed with one thread and with all cores (best of
``--repeat`` runs after a warm-up), then on CUDA when present, next to the exact per-pixel scatter
reference of tests/test_render.py on a small quantised version of the scene.

Then, on one thread, the figure that travels between machines: each render's time against one
depth-unaware FFT disc blur of the whole image in linear light (``disc_blur_reference``, radius
K x size / 1024 px: 30 px at 1024^2, K = 30; a plain one and a fastest one), timed in turn in the
same loop so that all see the same machine load.

    python benchmarks/bench_render.py [--repeat 5] [--sizes 512,1024] [--ratio-only]
    python benchmarks/bench_render.py --reference DIR [--repeat 9]

``--reference DIR`` (another source tree of the project) imports that tree's renderer beside this one and
times both and the plain disc blur in turn, in process CPU seconds on one thread, with the largest difference
between their outputs.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from estimators.depth import normalize_disparity
from synth_blur import render
from synth_blur.aperture import aperture_kernel

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "photos" / "depth"
LEVELS = (5, 15, 30)
GAMMA = 2.2


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


def fast_fft_size(n: int) -> int:
    """The smallest 5-smooth integer (factors 2, 3, 5 only) >= n: a size the FFT handles fastest."""
    size = n
    while True:
        rest = size
        for factor in (2, 3, 5):
            while rest % factor == 0:
                rest //= factor
        if rest == 1:
            return size
        size += 1


def disc_blur_reference(rgb: np.ndarray, radius: float, fast_size: bool = False) -> Callable[[], np.ndarray]:
    """One depth-unaware disc blur of a whole uint8 image in linear light, by FFT, as a timing yardstick.

    Decode gamma, mirror-pad by the kernel's half width, rfft2, multiply by the disc's spectrum,
    irfft2, crop, encode: the renderer's I/O without its depth handling. By default the transform
    size is the padded size and the kernel's spectrum is computed in each call (a straightforward
    FFT convolution); ``fast_size`` rounds the size up to a 5-smooth one and computes the spectrum
    once, outside the timed call (the fastest such blur, a stricter yardstick).
    """
    kernel = torch.as_tensor(aperture_kernel(radius), dtype=torch.float32)
    half = kernel.shape[0] // 2
    height, width = rgb.shape[:2]
    rows, cols = height + 2 * half, width + 2 * half
    if fast_size:
        rows, cols = fast_fft_size(rows), fast_fft_size(cols)

    def spectrum() -> torch.Tensor:
        placed = torch.zeros(rows, cols)
        placed[: 2 * half + 1, : 2 * half + 1] = kernel
        return torch.fft.rfft2(torch.roll(placed, (-half, -half), (0, 1)))

    cached = spectrum() if fast_size else None

    def run() -> np.ndarray:
        linear = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0) ** GAMMA
        padded = F.pad(linear[None], (half, cols - width - half, half, rows - height - half), mode="reflect")[0]
        kernel_spectrum = cached if cached is not None else spectrum()
        blurred = torch.fft.irfft2(torch.fft.rfft2(padded) * kernel_spectrum, s=(rows, cols))
        out = blurred[:, half : half + height, half : half + width].clamp(0.0, 1.0) ** (1.0 / GAMMA)
        return (out.permute(1, 2, 0) * 255.0).round().to(torch.uint8).numpy()

    return run


def best_times(runs: list[Callable[[], object]], repeat: int, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Best time of each call by ``clock`` (wall by default), the calls timed in turn ``repeat`` times after one
    warm-up of each."""
    for run in runs:
        run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeat):
        for run, bucket in zip(runs, times):
            start = clock()
            run()
            bucket.append(clock() - start)
    return [min(bucket) for bucket in times]


def print_ratios(sizes: list[int], repeat: int) -> None:
    """One thread: render time, the two reference disc blurs' times and the ratios per size and K."""
    torch.set_num_threads(1)
    print(f"one thread, best of {repeat}: render against one FFT disc blur of the whole image in linear light, "
          f"radius K x size / 1024 px (plain: padded size, kernel FFT per call; fast: 5-smooth size, kernel FFT cached)")
    print(f"{'size':>9} {'K':>3} {'render':>9} {'plain':>9} {'fast':>9} {'/plain':>7} {'/fast':>7}")
    for size in sizes:
        rgb, disparity, focus = load_scene(size)
        for level in LEVELS:
            radius = level * size / 1024
            ours, plain, fast = best_times([
                lambda: render(rgb, disparity, level, focus, device="cpu"),
                disc_blur_reference(rgb, radius), disc_blur_reference(rgb, radius, fast_size=True),
            ], repeat)
            print(f"{size:>4}x{size:<4} {level:>3} {ours:7.3f} s {plain:7.3f} s {fast:7.3f} s "
                  f"{ours / plain:7.2f} {ours / fast:7.2f}")


def renderer_of(tree: Path) -> Callable[..., np.ndarray]:
    """``render`` of the synth_blur package in another source tree, imported under another name."""
    package = tree / "synth_blur"
    spec = importlib.util.spec_from_file_location("reference_synth_blur", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{spec.name}.renderer").render


def print_against_reference(tree: Path, sizes: list[int], repeat: int) -> None:
    """One thread, CPU seconds: the reference tree's renderer, this one and the plain disc blur, timed in turn."""
    torch.set_num_threads(1)
    before = renderer_of(tree)
    print(f"one thread, process CPU seconds, best of {repeat}, load average {os.getloadavg()[0]:.1f}; "
          f"reference: {tree}")
    print(f"{'size':>9} {'K':>3} {'before':>9} {'after':>9} {'speed-up':>8} {'plain':>9} {'before/plain':>12} "
          f"{'after/plain':>11} {'max diff':>9}")
    for size in sizes:
        rgb, disparity, focus = load_scene(size)
        for level in LEVELS:
            old, new = (lambda fn=fn: fn(rgb, disparity, level, focus, device="cpu") for fn in (before, render))
            diff = np.abs(old().astype(np.int16) - new().astype(np.int16)).max()
            t_old, t_new, t_plain = best_times([old, new, disc_blur_reference(rgb, level * size / 1024)], repeat,
                                               time.process_time)
            print(f"{size:>4}x{size:<4} {level:>3} {t_old:7.3f} s {t_new:7.3f} s {t_old / t_new:8.2f} {t_plain:7.3f} s "
                  f"{t_old / t_plain:12.2f} {t_new / t_plain:11.2f} {diff:9d}", flush=True)
    print(f"(max diff: largest difference of the uint8 outputs, in levels; load average now {os.getloadavg()[0]:.1f})")


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
    parser.add_argument("--ratio-only", action="store_true", help="only the one-thread render / disc blur table")
    parser.add_argument("--reference", type=Path, help="another source tree: its renderer against this one, in turn")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.reference:
        print_against_reference(args.reference, sizes, args.repeat)
        return
    if args.ratio_only:
        print_ratios(sizes, args.repeat)
        return
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
    print_ratios(sizes, args.repeat)


if __name__ == "__main__":
    main()
