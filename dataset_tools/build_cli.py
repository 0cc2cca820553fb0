"""``bokeh build``: photos in, a sharded hybrid bokeh dataset (real photos + synthetic renders) out, with Ray."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from estimators.cli_util import (
    DEPTH_REQUIRED_BACKENDS, UserError, add_depth_arguments, add_list_argument, dataclass_from_args, disparity_file,
    non_negative_float, non_negative_int, positive_int,
)
from estimators.lens import MAX_BOKEH_LEVEL


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0, got 0")
    return value


def render_level(text: str) -> float:
    """argparse type: a render level K in (0, MAX_BOKEH_LEVEL]."""
    value = non_negative_float(text)
    if not 0 < value <= MAX_BOKEH_LEVEL:
        raise argparse.ArgumentTypeError(f"a render level must be in (0, {MAX_BOKEH_LEVEL:g}], got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bokeh build`` to the ``bokeh`` parser."""
    from .build_config import DEFAULT_MIN_SHARPNESS, DEFAULT_SYNTHETIC_LEVELS
    from .ray_join import DEFAULT_RAY_TIMEOUT

    p = sub.add_parser(
        "build",
        help="build a sharded hybrid bokeh dataset (real photos + synthetic renders) from photos, with Ray",
        description="Turn photos into a Hugging Face-style bokeh dataset: decode + EXIF, depth, subject mask, bokeh "
        "level K, filter, synthetic renders of all-in-focus photos (contrastive groups), resize, encode. Stages run "
        "on Ray Data (a local Ray by default, or a cluster). OUT gets data/train-*.parquet, README.md (dataset card), "
        "errors.jsonl (one line per failed or filtered photo) and stats.json. Every photo ends up in exactly one of "
        "data or errors.jsonl; an input with the same bytes as an earlier one is a duplicate (errors.jsonl, stage "
        "dedup). On a cluster with GPUs the models and the renders run on them.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="folders (searched recursively), glob patterns, text files listing photo paths (.txt/.lst), "
                   "Parquet files or folders, saved `datasets` folders, or hf://DATASET_ID; folders, globs and Parquet "
                   "files may be object-store URLs (s3://bucket/prefix, gs://..., credentials from the environment); "
                   "captions come from <stem>.txt sidecars or the caption column")
    p.add_argument("-o", "--out", required=True, metavar="OUT",
                   help="output directory or object-store URL (s3://bucket/prefix): new or empty, unless "
                   "--resume/--overwrite; never an input, inside one or holding one. One build at a time per OUT "
                   "(OUT/.bokeh-build.lock)")
    p.add_argument("--synthetic-levels", type=non_negative_int, metavar="N",
                   help="renders per all-in-focus photo, at K ~ U(1, 30) seeded from (--seed, photo id) "
                   f"(default {DEFAULT_SYNTHETIC_LEVELS}; 0 = none)")
    p.add_argument("--resolution", type=positive_int, default=512, metavar="PX",
                   help="short side of the stored images in px; smaller photos are not enlarged (default 512). "
                   "bokeh_level is always K at short side 512")
    p.add_argument("--shard-size", type=positive_int, default=1000, metavar="N",
                   help="source photos per shard: each becomes one data/train-*.parquet file, written atomically "
                   "(default 1000)")
    add_depth_arguments(p, DEPTH_REQUIRED_BACKENDS, one_photo=False)  # every photo of a build needs depth
    p.add_argument("--mask", choices=("depth", "sam", "sidecar"), default="depth",
                   help="subject mask: nearest depth layer refined with GrabCut (depth, default, no weights), "
                   "Segment Anything (sam) or <stem>.mask.png (sidecar)")
    p.add_argument("--sam-model", metavar="ID|PATH", help="SAM model id or local directory (default facebook/sam-vit-base)")
    p.add_argument("--min-sharpness", type=non_negative_float, default=DEFAULT_MIN_SHARPNESS, metavar="X",
                   help="keep photos whose subject's sharpness (variance of the Laplacian at short side 512) is at "
                   f"least X; others are filtered with reason subject-not-sharp (default {DEFAULT_MIN_SHARPNESS:g}; "
                   "0 = keep all)")
    p.add_argument("--balance", action="store_true",
                   help="draw each group's render levels one per equal stratum of [1, 30] (stratified) instead of "
                   "independently, so every group spans the range and the synthetic K histogram is flat")
    add_list_argument(p, "--levels", render_level, example="5 10 15 20 25 30",
                      help=f"render every all-in-focus photo at exactly these levels (0 < K <= {MAX_BOKEH_LEVEL:g}) "
                      "instead of drawing --synthetic-levels of them, e.g. so that every group reaches the top level")
    p.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="join this Ray cluster (auto = the one `ray start` runs on this machine); default: start a "
                   "local Ray bound to 127.0.0.1. On several nodes, inputs and OUT must be on shared storage or an "
                   "object store")
    p.add_argument("--ray-timeout", type=_seconds, metavar="SECONDS",
                   help=f"with --ray-address: give up joining the cluster after about this long, with a one-line error "
                   f"(default {DEFAULT_RAY_TIMEOUT:g})")
    p.add_argument("--workers", type=non_negative_int, metavar="N",
                   help="CPUs of the local Ray (default: all); 0 runs every stage in this process without Ray")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue an interrupted build in OUT with the same settings and the same inputs "
                       "(finished shards are kept); refused, saying what changed, when they differ")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the build in OUT: delete only the files a build wrote (README.md, "
                       "data/train-*.parquet, errors.jsonl, stats.json, _work/); refused for a folder no build "
                       "wrote (no OUT/.bokeh-build marker)")
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="S",
                   help="seed of the render levels; a photo's levels depend on (S, its id) only (default 0)")
    p.add_argument("--image-column", default="image", metavar="NAME",
                   help="image column of Parquet / dataset inputs (default image)")
    p.add_argument("--caption-column", default="caption", metavar="NAME",
                   help="caption column of Parquet / dataset inputs (default caption)")
    p.set_defaults(func=run_build)


def config_from_args(args: argparse.Namespace) -> Any:
    """The BuildConfig of the parsed flags (a flag left out keeps the dataclass default); UserError when they
    contradict each other."""
    from .build_config import BuildConfig

    disparity_file(args, None)
    if args.levels is not None and (args.balance or args.synthetic_levels is not None):
        raise UserError("--levels fixes the render levels: leave out --synthetic-levels and --balance")
    try:
        return dataclass_from_args(BuildConfig, args)
    except ValueError as exc:  # BuildConfig checks the fixed levels itself (a repeat)
        raise UserError(f"--levels: {exc}") from exc


#: Failure codes of photos that lacked an input, and what that meant, for the summary.
MISSING_INPUTS = {
    "no-depth": "had no depth sidecar (<stem>.depth.npy, <stem>.disparity.npy or <stem>.disparity.png) and so no "
                "depth: they are not in the dataset; add the sidecars or choose a depth model with --depth",
    "no-mask": "had no usable subject mask (no <stem>.mask.png, or an empty mask): they are not in the dataset; add "
               "the masks or use --mask depth or sam",
    "bad-sidecar": "had a sidecar that could not be used (unreadable, over a limit, another shape): they are not in "
                   "the dataset; fix or replace the sidecars",
}


def missing_input_lines(failed: dict[str, int], errors: str) -> list[str]:
    """Lines in words for the photos a build dropped for want of an input (``failed``: count by failure code)."""
    return [f"{failed[code]} photo{'s' if failed[code] > 1 else ''} {text} (listed in {errors})"
            for code, text in MISSING_INPUTS.items() if failed.get(code)]


def run_build(args: argparse.Namespace) -> int:
    """Run the build and print the summary; exit 1 when the pipeline broke or no photo was kept."""
    from .build import BuildFailed, build
    from .ray_join import DEFAULT_RAY_TIMEOUT
    from .storage import join

    if args.ray_address is not None and args.workers is not None:
        raise UserError("--workers sizes the local Ray; with --ray-address the cluster's resources are used")
    if args.ray_timeout is not None and args.ray_address is None:
        raise UserError("--ray-timeout limits joining a cluster: give it with --ray-address")
    config = config_from_args(args)
    try:
        stats = build(args.inputs, args.out, config, ray_address=args.ray_address, workers=args.workers,
                      ray_timeout=args.ray_timeout or DEFAULT_RAY_TIMEOUT, resume=args.resume, overwrite=args.overwrite)
    except BuildFailed as exc:
        print(f"bokeh build: error: {exc}", file=sys.stderr)
        return 1
    print(stats.summary())
    for line in missing_input_lines(stats.failed, join(args.out, "errors.jsonl")):
        print(line)
    if stats.kept == 0:
        print(f"bokeh build: no photo was kept: see {join(args.out, 'errors.jsonl')}", file=sys.stderr)
        return 1
    return 0
