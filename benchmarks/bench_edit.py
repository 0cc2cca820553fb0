"""Bokeh edits measured on the scenes of a ``make demo`` run, against the truth the procedural scenes give.

Each scene's all-in-focus image is rendered physically at source levels the model never trained on (default 12 and
22), and that render is edited by the trained tiny model to K = 0 and K = 30:

- K = 0 against the scene's all-in-focus image (PSNR / SSIM), beside what the input already had;
- K = 30 against the all-in-focus image rendered at 30: the blur factor ``exp(mean |log ratio|)`` of background
  sharpness, as ``bokeh eval`` computes it, beside the input's own and the physical renderer's (the input rendered
  again at sqrt(30^2 - K0^2): disc blurs add in quadrature);
- subject SSIM of each edit against the input (the scene's mask), with and without ``keep_subject``;
- CPU seconds per edit (one thread) and per plain sampling call of the same two levels, same steps;
- the K0 ``bokeh estimate`` finds for each render (depth and mask from the scene's sidecars).

    python benchmarks/bench_edit.py DEMO_OUT [--scenes 6] [--sources 12 22] [--steps 30] [--sheet edit.png]
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from estimators.image_io import load_mask  # noqa: E402
from estimators.photo_estimator import PhotoEstimator  # noqa: E402
from estimators.sidecars import photo_depth  # noqa: E402
from pipelines import metrics  # noqa: E402
from pipelines.edit_blend import keep_subject  # noqa: E402
from pipelines.edit_pipeline import edit_pipeline  # noqa: E402
from pipelines.eval_sources import Scene  # noqa: E402
from pipelines.evaluate import render_sweep  # noqa: E402
from pipelines.loading import load_pipeline  # noqa: E402

TARGETS = (0.0, 30.0)


def cpu_seconds(call):
    """``call()``'s result and the process CPU seconds it took."""
    start = time.process_time()
    out = call()
    return out, time.process_time() - start


def blur_factor(ratios: list[float]) -> float:
    """``exp`` of the mean ``|log ratio|``: how far background sharpness is from the reference, as a factor."""
    return math.exp(float(np.mean(ratios)))


def estimated_level(photo: Image.Image, scene_path: Path, estimator: PhotoEstimator, folder: Path) -> float:
    """The K ``bokeh estimate --depth sidecar --mask sidecar`` gives ``photo``, a render of the scene at ``scene_path``."""
    target = folder / "photo.png"
    photo.save(target)
    for suffix in (".depth.npy", ".mask.png"):
        shutil.copyfile(scene_path.with_name(scene_path.stem + suffix), folder / f"photo{suffix}")
    level = estimator.estimate(target).get("bokeh_level")
    return math.nan if level is None else float(level)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a make demo output folder (tiny/ and scenes/)")
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--sources", type=float, nargs="+", default=[12.0, 22.0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, help="guidance scale of the regeneration (default the edit's, 1)")
    parser.add_argument("--grounding-steps", type=int, help="default all")
    parser.add_argument("--shared-steps", type=int, default=0)
    parser.add_argument("--estimated", action="store_true",
                        help="edit from the K0 the estimator finds (as `bokeh edit` without --source-bokeh), not the true one")
    parser.add_argument("--sheet", type=Path, help="write a picture of the first scene's edits here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    sampler = load_pipeline(checkpoint=str(args.demo / "tiny"), device="cpu")
    sampler.set_progress_bar_config(disable=True)
    pipe = edit_pipeline(sampler)
    pipe.set_progress_bar_config(disable=True)
    side = pipe.default_resolution
    size = (side, side)
    rows: dict[float, dict[str, list[float]]] = {k: {} for k in args.sources}
    times: dict[str, list[float]] = {"edit": [], "sample": []}
    sheet_tiles = []
    estimator = PhotoEstimator("sidecar", "sidecar")
    tmp = tempfile.mkdtemp(prefix="bench_edit_")
    scenes = sorted(p for p in (args.demo / "scenes").glob("scene_*.png") if "." not in p.stem)  # not the masks
    for path in scenes[:args.scenes]:
        sharp = Image.open(path).convert("RGB")
        caption = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        mask = load_mask(path.with_name(path.stem + ".mask.png"))
        scene = Scene(mask, photo_depth(path, sharp).disparity, "sidecar")
        small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
        truth0 = sharp.resize(size, Image.LANCZOS)
        truth30 = render_sweep([30.0], sharp, scene)[0].resize(size, Image.LANCZOS)
        ref30 = metrics.background_sharpness(truth30, small_mask)
        for k0 in args.sources:
            photo_full = render_sweep([k0], sharp, scene)[0]
            r = rows[k0]
            r.setdefault("estimated_k", []).append(estimated_level(photo_full, path, estimator, Path(tmp)))
            source = r["estimated_k"][-1] if args.estimated else k0
            photo = photo_full.resize(size, Image.LANCZOS)
            physical = render_sweep([math.sqrt(30.0**2 - k0**2)], photo_full, scene)[0].resize(size, Image.LANCZOS)
            edits, seconds = cpu_seconds(lambda: pipe(
                photo, caption, list(TARGETS), source_bokeh=source, num_inference_steps=args.steps, guidance_scale=args.guidance,
                grounding_steps=args.grounding_steps, shared_steps=args.shared_steps).images)
            times["edit"].append(seconds / len(TARGETS))
            _, seconds = cpu_seconds(lambda: sampler(caption, list(TARGETS), seed=0, num_inference_steps=args.steps,
                                                     guidance_scale=pipe.edit_guidance if args.guidance is None else args.guidance))
            times["sample"].append(seconds / len(TARGETS))
            kept = [keep_subject(edit, photo, small_mask) for edit in edits]
            measured = {
                "input_psnr0": metrics.psnr(photo, truth0), "input_ssim0": metrics.ssim(photo, truth0),
                "edit_psnr0": metrics.psnr(edits[0], truth0), "edit_ssim0": metrics.ssim(edits[0], truth0),
                "kept_psnr0": metrics.psnr(kept[0], truth0), "kept_ssim0": metrics.ssim(kept[0], truth0),
                "input_blur30": metrics.log_ratio(metrics.background_sharpness(photo, small_mask), ref30),
                "edit_blur30": metrics.log_ratio(metrics.background_sharpness(edits[1], small_mask), ref30),
                "physical_blur30": metrics.log_ratio(metrics.background_sharpness(physical, small_mask), ref30),
                "edit_subject0": metrics.ssim(edits[0], photo, small_mask),
                "edit_subject30": metrics.ssim(edits[1], photo, small_mask),
                "kept_subject0": metrics.ssim(kept[0], photo, small_mask),
                "physical_subject30": metrics.ssim(physical, photo, small_mask),
            }
            for key, value in measured.items():
                r.setdefault(key, []).append(value)
            print(f"{path.stem} K0={k0:g}: " + ", ".join(f"{k} {v:.3f}" for k, v in measured.items()), flush=True)
            if not sheet_tiles:
                sheet_tiles = [(photo, f"input K={k0:g}"), (edits[0], "edit K=0"), (truth0, "true K=0"),
                               (edits[1], "edit K=30"), (physical, "render K=30"), (truth30, "true K=30")]
    for k0, r in rows.items():
        print(f"\nsource K0 = {k0:g} ({len(r['edit_psnr0'])} scenes; estimated K0 {np.nanmean(r['estimated_k']):.1f}, "
              f"{np.nanmin(r['estimated_k']):.1f} .. {np.nanmax(r['estimated_k']):.1f})")
        print(f"  to K=0 : PSNR input {np.mean(r['input_psnr0']):.2f} -> edit {np.mean(r['edit_psnr0']):.2f} "
              f"(kept subject {np.mean(r['kept_psnr0']):.2f}) dB; SSIM input {np.mean(r['input_ssim0']):.3f} -> edit "
              f"{np.mean(r['edit_ssim0']):.3f} (kept {np.mean(r['kept_ssim0']):.3f})")
        print(f"  to K=30: blur factor input {blur_factor(r['input_blur30']):.2f}, edit {blur_factor(r['edit_blur30']):.2f}, "
              f"physical {blur_factor(r['physical_blur30']):.2f}")
        print(f"  subject SSIM vs input: edit K=0 {np.mean(r['edit_subject0']):.3f} (kept {np.mean(r['kept_subject0']):.3f}), "
              f"edit K=30 {np.mean(r['edit_subject30']):.3f}, physical K=30 {np.mean(r['physical_subject30']):.3f}")
    edit_s, sample_s = np.median(times["edit"]), np.median(times["sample"])
    print(f"\nCPU seconds per edit (one thread, {args.steps} steps): {edit_s:.2f}; per sampled image {sample_s:.2f}; "
          f"ratio {edit_s / sample_s:.2f}")
    shutil.rmtree(tmp)
    if args.sheet:
        from synth_blur.contact_sheet import contact_sheet

        contact_sheet([t[0] for t in sheet_tiles], [t[1] for t in sheet_tiles], height=192).save(args.sheet)


if __name__ == "__main__":
    main()
