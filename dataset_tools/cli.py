"""``bokeh demo-data``: write procedural all-in-focus demo scenes with depth, mask and caption sidecars."""
from __future__ import annotations

import argparse
from pathlib import Path

from estimators.cli_util import UserError, non_negative_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    """Add the dataset tools' subcommands to the ``bokeh`` parser."""
    _register_demo_data(sub)
    _register_report(sub)


def scene_size(text: str) -> tuple[int, int]:
    """argparse type: ``W`` (a square) or ``WxH`` in pixels, each side at least MIN_SIDE."""
    from .demo_scenes import MIN_SIDE

    parts = text.lower().split("x")
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W or WxH in pixels, got {text!r}") from None
    if len(sides) not in (1, 2) or min(sides) < MIN_SIDE:
        raise argparse.ArgumentTypeError(f"expected W or WxH with each side >= {MIN_SIDE} px, got {text!r}")
    return (sides[0], sides[-1])


def _register_demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-data",
        help="write procedural all-in-focus demo scenes with exact depth, subject masks and captions",
        description="Write procedural all-in-focus scenes: a simple shaded subject (0.8-3 m) in front of a textured "
        "background (4-60 m) or on a receding floor. Each scene is scene_NNNNN.png with scene_NNNNN.depth.npy "
        "(metric depth), scene_NNNNN.mask.png (subject, 0/255) and scene_NNNNN.txt (caption). Same seed, same files.",
    )
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory (created; must be empty unless --overwrite)")
    p.add_argument("--count", type=positive_int, default=16, metavar="N", help="number of scenes to write (default 16)")
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="S", help="seed of the run; scene i depends on (S, i) only (default 0)")
    p.add_argument("--size", type=scene_size, default="512", metavar="W[xH]",
                   help="image size in pixels: W for a square or WxH (default 512)")
    p.add_argument("--overwrite", action="store_true", help="write into DIR even if it already holds files (same names are replaced)")
    p.set_defaults(func=run_demo_data)


def run_demo_data(args: argparse.Namespace) -> int:
    """Write the scenes and print one summary line."""
    from .demo_scenes import write_demo_data

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} is not empty: choose a new or empty directory, or pass --overwrite")
    width, height = args.size
    try:
        paths = write_demo_data(out, args.count, seed=args.seed, width=width, height=height)
    except OSError as exc:
        raise UserError(f"cannot write demo scenes to {out}: {exc.strerror or exc}") from None
    print(f"wrote {len(paths)} demo scenes ({width}x{height}, seed {args.seed}) to {out} "
          "(PNG images with .depth.npy, .mask.png and .txt sidecars)")
    return 0


def _register_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write an HTML page about a built dataset: summary, K histogram, contact sheets of groups, errors",
        description="Write one self-contained HTML page (images embedded) about a dataset made by `bokeh build`: "
        "the counts of stats.json, the K histogram of real and synthetic rows, contact sheets of the first "
        "contrastive groups (pivot and its renders), and the failed or filtered photos.",
    )
    p.add_argument("dataset", metavar="OUT", help="the output folder of `bokeh build`")
    p.add_argument("-o", "--output", metavar="HTML", help="report file (default OUT/report.html)")
    p.add_argument("--groups", type=positive_int, default=6, metavar="N", help="contact sheets of the first N groups (default 6)")
    p.add_argument("--errors", type=positive_int, default=50, metavar="N", help="list at most N failed/filtered photos (default 50)")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Write the report and print where it is."""
    from .report import ReportError, write_report

    output = Path(args.output) if args.output else Path(args.dataset) / "report.html"
    try:
        shown = write_report(args.dataset, output, max_groups=args.groups, max_errors=args.errors)
    except ReportError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {output} ({shown['shards']} data shards, {shown['groups']} groups shown)")
    return 0
