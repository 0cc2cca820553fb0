"""``bokeh lens`` (thin-lens calculator) and ``bokeh estimate`` (K of photos, one JSON line each)."""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Optional

from .cli_util import UserError, add_depth_arguments, disparity_file, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    """Add the estimators' subcommands to the ``bokeh`` parser."""
    _register_lens(sub)
    _register_estimate(sub)


# --------------------------------------------------------------------------- bokeh lens
def _register_lens(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lens",
        help="thin-lens calculator: sensor size, circle of confusion, k_metric, background blur, K",
        description="Thin-lens bokeh calculator (docs/design.md §1). Prints the sensor width, the circle of "
        "confusion of the background, k_metric (blur radius in px per 1/m of inverse depth), the "
        "background blur radius and the unified bokeh level K at short side 512.",
    )
    p.add_argument("--focal-length", type=positive_float, required=True, metavar="MM", help="real focal length in mm")
    p.add_argument("--f-number", type=float, required=True, metavar="N", help="aperture f-number, e.g. 1.8")
    p.add_argument("--focus-distance", type=float, required=True, metavar="M", help="focus distance in metres")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--focal-length-35mm", type=positive_float, metavar="MM", help="35 mm equivalent focal length (gives the sensor size)")
    size.add_argument("--sensor-width", type=positive_float, metavar="MM", help="sensor width in mm along the image width")
    p.add_argument("--width", type=positive_int, required=True, metavar="PX", help="image width in pixels")
    p.add_argument("--height", type=positive_int, required=True, metavar="PX", help="image height in pixels")
    p.add_argument("--background-distance", type=positive_float, default=math.inf, metavar="M",
                   help="distance of the background in metres (default: infinity)")
    p.add_argument("--near", type=positive_float, metavar="M",
                   help="nearest scene depth for the unified K (default: the focus distance)")
    p.add_argument("--far", type=positive_float, metavar="M",
                   help="farthest scene depth for the unified K (default: the background distance)")
    p.add_argument("--target-bokeh", type=positive_float, metavar="K",
                   help="also print the f-number that would give this unified K with the same lens and scene")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run_lens)


def lens_report(args: argparse.Namespace) -> dict[str, Any]:
    """The numbers ``bokeh lens`` prints, as a dict (raises UserError on impossible input)."""
    from . import lens

    try:
        if args.sensor_width is not None:
            sensor_w = args.sensor_width
        else:
            sensor_w = lens.sensor_width_from_35mm(args.focal_length, args.focal_length_35mm, args.width, args.height)
        bg = args.background_distance
        near = args.near if args.near is not None else args.focus_distance
        far = args.far if args.far is not None else bg
        k = lens.k_metric(args.focal_length, args.f_number, args.focus_distance, sensor_w, args.width)
        sensor_diag = sensor_w * math.hypot(args.width, args.height) / args.width
        report = {
            "sensor_width_mm": sensor_w,
            "crop_factor": lens.FULL_FRAME_DIAGONAL_MM / sensor_diag,
            "coc_infinity_mm": lens.coc_diameter_mm(args.focal_length, args.f_number, args.focus_distance, math.inf),
            "coc_background_mm": lens.coc_diameter_mm(args.focal_length, args.f_number, args.focus_distance, bg),
            "k_metric": k,
            "k_metric_512": lens.to_reference_resolution(k, args.width, args.height),
            "background_distance_m": bg,
            "background_blur_px": lens.blur_radius_px(k, args.focus_distance, bg),
            "background_blur_px_512": lens.to_reference_resolution(
                lens.blur_radius_px(k, args.focus_distance, bg), args.width, args.height
            ),
            "z_near_m": near,
            "z_far_m": far,
            "bokeh_level": lens.unified_bokeh_level(k, near, far, args.width, args.height),
            "hyperfocal_m": lens.hyperfocal_distance_m(args.focal_length, args.f_number, sensor_diag / 1500.0),
        }
        if args.target_bokeh is not None:
            report["target_bokeh"] = args.target_bokeh
            report["f_number_for_target"] = lens.f_number_for_bokeh_level(
                args.target_bokeh, args.focal_length, args.focus_distance, sensor_w, args.width, args.height, near, far
            )
    except lens.LensError as exc:
        raise UserError(str(exc)) from None
    return report


def run_lens(args: argparse.Namespace) -> int:
    report = lens_report(args)
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in report.items()}))
    else:
        for key, value in report.items():
            print(f"{key:24s} {value:.4g}" if isinstance(value, float) else f"{key:24s} {value}")
    return 0


# ----------------------------------------------------------------------- bokeh estimate
def _register_estimate(sub: argparse._SubParsersAction) -> None:
    from .backends import MASK_BACKENDS

    p = sub.add_parser(
        "estimate",
        help="estimate the bokeh level K of photos (EXIF + depth + subject mask), one JSON line each",
        description="Estimate each photo's bokeh level K (0 = all sharp, 30 = very shallow depth of field) from "
        "EXIF lens math, depth and a subject mask, with its provenance and a confidence. Prints a line per photo, "
        "followed by a line for each input it went without (depth, subject mask, EXIF lens data) saying what "
        "that changes, or with --json one JSON object per photo (unreadable files give an object with an 'error' "
        "field). Exit status 0 unless every file failed.",
    )
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="photo files (JPEG, PNG, HEIC, AVIF, ...)")
    add_depth_arguments(p)
    p.add_argument("--mask", choices=MASK_BACKENDS, default="depth",
                   help="subject mask: nearest depth layer refined with GrabCut (depth, default, no weights), "
                   "Segment Anything (sam), <stem>.mask.png (sidecar) or none")
    p.add_argument("--sam-model", metavar="ID|PATH", help="SAM model id or local directory (default facebook/sam-vit-base)")
    p.add_argument("--device", metavar="DEV", help="torch device for the models (default: cuda when present, else cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object per photo (JSON lines) with every field")
    p.set_defaults(func=run_estimate)


def _value(value: float, unit: str = "") -> str:
    return format(value, ".3g") + unit


def _sharpness(value: Optional[float]) -> str:
    """A variance of the Laplacian as a whole number, or why there is none (a region under 16 pixels)."""
    return "unmeasured (too few pixels)" if value is None else f"{value:.0f}"


def summary_line(record: dict[str, Any]) -> str:
    """One readable line per photo for the default (non-JSON) output; what is unknown is said in words."""
    if "error" in record:
        return f"{record['source']}: ERROR {record['error']}"
    k = record["bokeh_level"]
    parts = [f"K={_value(k)} ({record['provenance']}, confidence {record['confidence']:.2f})" if k is not None
             else "K unknown (no estimate)"]
    focus = record["focus_distance_m"]
    parts.append(f"focus {_value(focus, ' m')} ({record['focus_distance_source']})" if focus is not None
                 else "focus distance unknown")
    plane = record.get("focus_source")
    parts.append(f"focal plane by {plane}" if plane else "focal plane not found")
    image_k = record["image_bokeh_level"]
    parts.append(f"image-K {_value(image_k)}" if image_k is not None else "image-K not measured (too few edges)")
    subject, background = record["sharpness_subject"], record["sharpness_background"]
    parts.append(f"sharpness subject/background {_sharpness(subject)}/{_sharpness(background)}"
                 if record["mask_source"] is not None else f"sharpness of the whole image {_sharpness(background)}")
    return f"{record['source']}: " + "; ".join(parts)


def _reason(notes: list[str], suffix: str, default: str) -> str:
    """Why an input is missing: the note that ends with ``suffix`` (less the suffix), else ``default``."""
    for note in notes:
        if note.endswith(suffix):
            return note[: -len(suffix)]
    return default


def missing_input_lines(record: dict[str, Any]) -> list[str]:
    """One line per input the estimate went without (depth, subject mask, EXIF lens data): why, and what the
    estimate rests on instead."""
    if "error" in record:
        return []
    notes, lines = record["notes"], []
    masked = record["mask_source"] is not None
    if record["depth_source"] is None:
        reason = _reason(notes, ": estimating without depth", "--depth none")
        instead = ("the focal plane and the scene's depth layers are unknown, so the focus distance can only come "
                   "from EXIF and the image-K " + ("compares the subject with the background" if masked
                                                   else "is the blur of the whole image taken as one layer"))
        if record["provenance"] == "exif-only":
            instead += "; the EXIF K takes the background at infinity (K = k_metric / focus distance)"
        lines.append(f"  without depth ({reason}): {instead}")
    elif record["provenance"] == "exif-only":
        lines.append(f"  without metric depth ({record['depth_source']} is relative): the EXIF K takes the background "
                     "at infinity (K = k_metric / focus distance), not the scene's depth range")
    if not masked:
        reason = _reason(notes, ": estimating without a subject mask", "--mask none")
        if "subject mask is empty: ignored" in notes:
            reason = "the subject mask is empty"
        instead = "subject and background sharpness are not told apart"
        if record["depth_source"] is not None:
            instead += "; the focal plane can only come from the sharpest depth layer"
        lines.append(f"  without a subject mask ({reason}): {instead}")
    exif_missing = next((note for note in notes if note.startswith("no EXIF K: missing ")), None)
    if exif_missing is not None:
        what = exif_missing[len("no EXIF K: missing "):]
        rests = "K is the image-K, measured from the photo's blur" if record["provenance"] == "image-only" else (
            "no K from the lens math")
        lines.append(f"  without EXIF lens data (missing {what}): {rests}")
    return lines


def run_estimate(args: argparse.Namespace) -> int:
    from .photo_estimator import PhotoEstimator

    estimator = PhotoEstimator(args.depth, args.mask, depth_model=args.depth_model, sam_model=args.sam_model,
                               device=args.device, disparity_file=disparity_file(args, len(args.photos)))
    failed = 0
    for record in estimator.estimate_all(args.photos):
        failed += "error" in record
        print(json.dumps(record) if args.json else "\n".join([summary_line(record), *missing_input_lines(record)]),
              flush=True)
    if failed:
        print(f"bokeh estimate: {failed} of {len(args.photos)} photos failed", file=sys.stderr)
    return 1 if failed == len(args.photos) else 0
