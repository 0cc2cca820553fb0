"""``bokeh render``: re-render an all-in-focus photo with synthetic defocus at one or several bokeh levels."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from estimators.cli_util import (
    DEPTH_REQUIRED_BACKENDS, UserError, add_depth_arguments, add_list_argument, disparity_file, non_negative_float,
    positive_float,
)

#: Contact-sheet thumbnails are this many pixels high.
SHEET_HEIGHT = 320


def _unit(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"focus disparity must be in [0, 1], got {text}")
    return value


def _point(text: str) -> tuple[int, int]:
    try:
        x, y = (int(round(float(part))) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y pixel coordinates, got {text!r}") from None
    return x, y


def _aperture(text: str) -> Any:
    from .aperture import blade_count

    try:
        blades = blade_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return "disc" if blades == 0 else blades


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bokeh render`` to the ``bokeh`` parser."""
    p = sub.add_parser(
        "render",
        help="re-render an all-in-focus photo with synthetic lens blur at bokeh level K (or a sweep of levels)",
        description="Re-render an all-in-focus photo with physically based synthetic defocus: blur radius "
        "K * |d - d_focus| * min(H, W) / 512 px for normalised disparity d (larger = nearer), occlusion-aware, "
        "in linear light. --bokeh writes one image; --sweep writes one image per level and a labelled contact sheet.",
    )
    p.add_argument("photo", metavar="PHOTO", help="all-in-focus photo (JPEG, PNG, HEIC, ...)")
    level = p.add_mutually_exclusive_group(required=True)
    level.add_argument("--bokeh", type=non_negative_float, metavar="K", help="bokeh level (0 = unchanged .. 30 = very shallow)")
    add_list_argument(level, "--sweep", non_negative_float, example="0 5 10 20 30",
                      help="several levels, one image each and a contact sheet: -o is then a folder")
    add_depth_arguments(p, DEPTH_REQUIRED_BACKENDS)  # a render needs depth
    focus = p.add_mutually_exclusive_group()
    focus.add_argument("--focus-point", type=_point, metavar="X,Y",
                       help="focus on the disparity at this pixel (median of a small window)")
    focus.add_argument("--focus-disparity", type=_unit, metavar="D", help="focal plane disparity in [0, 1]")
    p.add_argument("--aperture", type=_aperture, default="disc", metavar="disc|N",
                   help="aperture shape: disc (default) or a number of blades >= 3")
    p.add_argument("--gamma", type=positive_float, default=2.2, help="display gamma for linear-light blur (default 2.2)")
    p.add_argument("--highlight-boost", type=non_negative_float, default=0.0, metavar="B",
                   help="brighten clipped highlights out of focus by up to 1 + B in linear light (default 0)")
    p.add_argument("--device", metavar="DEV", help="torch device (default: cuda when present, else cpu)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output image (--bokeh) or folder (--sweep)")
    p.set_defaults(func=run_render)


def _disparity(args: argparse.Namespace, image: Any) -> tuple[np.ndarray, str]:
    """The photo's normalised disparity and where it came from."""
    from estimators.backends import make_depth_model
    from estimators.depth import DepthUnavailableError
    from estimators.sidecars import photo_depth

    given = disparity_file(args, 1)
    model = None if given else make_depth_model(args.depth, args.depth_model, args.device)  # None for sidecar
    try:
        depth = photo_depth(args.photo, image, model, sidecar=model is None, disparity_file=given)
    except DepthUnavailableError as exc:
        hint = "" if given else "; pass --disparity FILE or a depth model with --depth"
        raise UserError(f"{exc}{hint}") from None
    return depth.disparity, depth.source


def _focus(args: argparse.Namespace, image: Any, disparity: np.ndarray) -> tuple[float, str]:
    """The focal-plane disparity and how it was chosen."""
    if args.focus_disparity is not None:
        return float(args.focus_disparity), "given"
    height, width = disparity.shape
    if args.focus_point is not None:
        x, y = args.focus_point
        if not (0 <= x < width and 0 <= y < height):
            raise UserError(f"--focus-point {x},{y} lies outside the {width}x{height} photo")
        half = max(2, min(height, width) // 200)
        window = disparity[max(0, y - half) : y + half + 1, max(0, x - half) : x + half + 1]
        return float(np.median(window)), f"point {x},{y}"
    from estimators.backends import make_masker
    from estimators.mask import MaskUnavailableError, mask_sidecar_path
    from estimators.sidecars import photo_mask

    from .group import focus_from_mask

    try:
        found = photo_mask(args.photo, image, disparity, make_masker("depth"))
    except MaskUnavailableError as exc:  # a mask sidecar that is there but cannot be used
        raise UserError(f"{exc}; fix it, or pass --focus-point X,Y or --focus-disparity D") from None
    if not found.mask.any():
        raise UserError("no subject found to focus on; pass --focus-point X,Y or --focus-disparity D")
    name = mask_sidecar_path(args.photo).name
    how = f"the subject of {name}" if found.source == "sidecar" else f"the subject the depth masker found (no {name})"
    return focus_from_mask(disparity, found.mask), how


def _save(image: Any, path: Path) -> None:
    from PIL import Image

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot write {path}: {exc}") from None


def run_render(args: argparse.Namespace) -> int:
    """Handler of ``bokeh render``."""
    from estimators.image_io import ImageLoadError, load_image, to_array
    from estimators.model_loading import resolve_device

    from .contact_sheet import contact_sheet
    from .renderer import render

    try:
        resolve_device(args.device)
    except RuntimeError as exc:
        raise UserError(f"bad --device {args.device!r}: {str(exc).splitlines()[0]}") from None
    try:
        image = load_image(args.photo)
    except ImageLoadError as exc:
        raise UserError(f"{args.photo}: {exc}") from None
    disparity, depth_source = _disparity(args, image)
    focus, focus_source = _focus(args, image, disparity)
    rgb = to_array(image)
    levels = [args.bokeh] if args.sweep is None else args.sweep
    options = dict(gamma=args.gamma, highlight_boost=args.highlight_boost, aperture=args.aperture, device=args.device)
    out = Path(args.output)
    renders = []
    for level in levels:
        result = render(rgb, disparity, level, focus, **options)
        target = out if args.sweep is None else out / f"{Path(args.photo).stem}_K{level:g}.png"
        _save(result, target)
        renders.append(result)
        print(f"wrote {target} (K={level:g}, focus disparity {focus:.3f} from {focus_source}, depth {depth_source})")
    if args.sweep is not None:
        sheet = contact_sheet(renders, [f"K = {level:g}" for level in levels], height=min(SHEET_HEIGHT, rgb.shape[0]))
        target = out / f"{Path(args.photo).stem}_sweep.png"
        _save(sheet, target)
        print(f"wrote {target} (contact sheet of {len(levels)} levels)")
    return 0
