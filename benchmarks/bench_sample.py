"""Time of one sampled sweep (the images of one prompt at several K), unbounded and grounded, and what
``--shared-steps`` saves: its shared steps run one row instead of the whole batch (the grounded sweep without
sharing, where every step runs the whole batch, is the reference). Defaults are `make demo`'s
sweep (K = 0, 6, ..., 30, pivot 15, 20 grounding steps, 25 steps, 10 shared, K guided 2x and the caption not)
on its trained tiny model.

    python benchmarks/bench_sample.py [--checkpoint demo_out/tiny] [--threads 2] [--repeats 3] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import measure  # noqa: E402
from pipelines.loading import load_pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "demo_out" / "tiny"),
                        help="a `bokeh train` run or checkpoint folder (default: make demo's, demo_out/tiny)")
    parser.add_argument("--prompt", default="a red star in front of a leafy green hedge, with a pink box further back",
                        help="the caption sampled (default: make demo's first)")
    parser.add_argument("--levels", default="0,6,12,18,24,30", help="the sweep's K, comma-separated (default 0,6,...,30)")
    parser.add_argument("--pivot", type=float, default=15.0, help="the grounded sweeps' pivot K (default 15)")
    parser.add_argument("--grounding-steps", type=int, default=20, help="grounding steps (default 20)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    parser.add_argument("--shared-steps", type=int, default=10, help="shared steps of the last sweep (default 10)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance (default 1: none)")
    parser.add_argument("--bokeh-guidance", type=float, default=2.0,
                        help="guidance of K alone (default 2; a negative value: none, the pipeline's default)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed sweeps per variant and round (default 3)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds in which the variants take turns; each figure is the median of the rounds' medians")
    args = parser.parse_args()
    if not Path(args.checkpoint).exists():
        raise SystemExit(f"no checkpoint at {args.checkpoint}: run `make demo` first or pass --checkpoint")
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(checkpoint=args.checkpoint, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    levels = [float(k) for k in args.levels.split(",")]
    common = dict(num_inference_steps=args.steps, seed=0, guidance_scale=args.guidance_scale,
                  bokeh_guidance=None if args.bokeh_guidance < 0 else args.bokeh_guidance)
    grounded = dict(pivot=args.pivot, grounding_steps=args.grounding_steps, **common)
    variants = [
        ("unbounded", dict(common)),
        ("grounded (the reference)", grounded),
        (f"grounded, {args.shared_steps} steps shared", dict(grounded, shared_steps=args.shared_steps)),
    ]
    rounds: dict[str, list[float]] = {label: [] for label, _ in variants}
    for _ in range(args.rounds):
        for label, kwargs in variants:
            seconds, _peak = measure(lambda: pipe(args.prompt, levels, **kwargs), pipe.device, args.repeats, warmup=1)
            rounds[label].append(seconds)
    print(f"{len(levels)} levels, {args.steps} steps, {pipe.device}, {args.threads} threads; "
          f"median of {args.rounds} rounds of {args.repeats} sweeps each")
    reference = statistics.median(rounds["grounded (the reference)"])
    for label, _ in variants:
        seconds = statistics.median(rounds[label])
        print(f"  {label:<32} {seconds:7.3f} s per sweep  ({seconds / reference:.2f}x the reference)")
    rows = len(levels) + 1
    ideal = (args.shared_steps + (args.steps - args.shared_steps) * rows) / (args.steps * rows)
    print(f"  (model rows run with sharing: {ideal:.2f}x the reference's)")


if __name__ == "__main__":
    main()
