"""``bokeh edit``: a photo re-rendered at other bokeh levels K by a trained model (inversion, then grounded
regeneration), written as one image per K and a contact sheet of the input and its edits."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from estimators.cli_util import (
    UserError, add_depth_arguments, add_list_argument, disparity_file, non_negative_float, non_negative_int, positive_int,
)
from estimators.lens import MAX_BOKEH_LEVEL
from pipelines.model_args import add_model_arguments, bokeh_level, pipeline_from_args
from pipelines.sample_cli import SHEET_HEIGHT, png_text


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bokeh edit`` to the ``bokeh`` parser."""
    from estimators.backends import MASK_BACKENDS

    p = sub.add_parser(
        "edit",
        help="re-render a photo at other bokeh levels K with a trained model (adds or removes blur)",
        description="Edit the bokeh of a photo: estimate its own K (or take --source-bokeh), invert it at that K "
        "with its caption (--prompt, else the <stem>.txt next to it, else empty), then regenerate it at each "
        "--bokeh K grounded on the inverted trajectory, so layout and identity come from the photo. Writes "
        "STEM-K<k>.png per level and STEM-sheet.png (the input and its edits) to -o.",
    )
    p.add_argument("photo", metavar="PHOTO", help="the photo (JPEG, PNG, HEIC, ...)")
    add_list_argument(p, "--bokeh", bokeh_level, example="0 30", required=True,
                      help="target levels, 0 = all sharp .. 30 = very shallow depth of field")
    p.add_argument("--prompt", metavar="TEXT", help="the photo's caption (default: PHOTO's <stem>.txt, else empty)")
    p.add_argument("--source-bokeh", type=bokeh_level, metavar="K0",
                   help="the photo's own K (default: estimated as `bokeh estimate` does)")
    p.add_argument("--keep-subject", action="store_true",
                   help="blend the photo's subject (the estimator's mask) back over each edit: it stays in focus at "
                   "every K, and detail the inversion loses on it is kept")
    g = p.add_argument_group("estimation (for the photo's K and subject mask)")
    add_depth_arguments(g)
    g.add_argument("--mask", choices=MASK_BACKENDS, default="depth",
                   help="subject mask: depth (default), sam, sidecar (<stem>.mask.png) or none")
    g.add_argument("--sam-model", metavar="ID|PATH", help="SAM model id or local directory (default facebook/sam-vit-base)")
    add_model_arguments(p)
    s = p.add_argument_group("editing")
    s.add_argument("--steps", type=positive_int, metavar="N", help="inversion and denoising steps (default 30)")
    s.add_argument("--guidance-scale", type=non_negative_float, metavar="G",
                   help="FLUX: distilled guidance (default 3.0); UNet: classifier-free guidance of the regeneration "
                   "(default 1 = none, as the inversion: the edit then retraces the photo's trajectory)")
    s.add_argument("--grounding-steps", type=non_negative_int, metavar="N",
                   help="steps that attend with the photo's queries (default: all)")
    s.add_argument("--shared-steps", type=non_negative_int, default=0, metavar="S",
                   help="the first S steps follow the photo's inverted trajectory for every edit (more of the photo "
                   "kept, less room for the new blur; default 0)")
    s.add_argument("--no-colour-transfer", dest="colour_transfer", action="store_false",
                   help="keep each edit's own colours instead of shifting its LAB means to the photo's")
    s.add_argument("--size", type=positive_int, metavar="PX",
                   help="edit at about PX x PX pixels, the photo's aspect kept (default: the model's resolution)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created)")
    p.set_defaults(func=run)


def edit_size(width: int, height: int, side: int, multiple: int) -> tuple[int, int]:
    """(width, height) of about ``side`` x ``side`` pixels with the photo's aspect, each a multiple of ``multiple``."""
    scale = side / math.sqrt(width * height)
    return (max(multiple, round(width * scale / multiple) * multiple),
            max(multiple, round(height * scale / multiple) * multiple))


def load_photo(path: str) -> Any:
    """The photo as an RGB PIL image (size and file limits as everywhere), with one-line errors."""
    from estimators.image_io import MAX_PHOTO_BYTES, ImageLoadError, load_image
    from estimators.input_files import InputFileError, read_regular

    try:
        return load_image(read_regular(path, MAX_PHOTO_BYTES, "photo"))
    except (InputFileError, ImageLoadError) as exc:
        raise UserError(str(exc)) from None


def photo_caption(path: str, prompt: Optional[str]) -> str:
    """``prompt`` when given, else the photo's ``<stem>.txt`` caption, else empty."""
    if prompt is not None:
        return prompt
    from dataset_tools.sources import CaptionError, caption_for

    try:
        return caption_for(path)
    except CaptionError as exc:
        raise UserError(str(exc)) from None


def estimate_photo(args: argparse.Namespace) -> tuple[Optional[float], Optional[np.ndarray]]:
    """The photo's K and subject mask from the estimator (what ``bokeh estimate`` computes)."""
    from estimators.photo_estimator import PhotoEstimator

    estimator = PhotoEstimator(args.depth, args.mask, depth_model=args.depth_model, sam_model=args.sam_model,
                               device=args.device, disparity_file=disparity_file(args, 1))
    record, mask = estimator.estimate_with_mask(args.photo)
    if "error" in record:
        raise UserError(record["error"])
    return record.get("bokeh_level"), mask


def run(args: argparse.Namespace) -> int:
    from pipelines.edit_pipeline import edit_pipeline
    from synth_blur.contact_sheet import contact_sheet

    out = Path(args.output)
    labels = [f"{k:g}" for k in args.bokeh]
    twice = sorted({label for label in labels if labels.count(label) > 1}, key=float)
    if twice:
        raise UserError(f"--bokeh gives K={', '.join(twice)} twice: list each level once")
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} exists and is not a folder")
    photo = load_photo(args.photo)
    prompt = photo_caption(args.photo, args.prompt)
    source, mask, how = args.source_bokeh, None, "given"
    if source is None or args.keep_subject:
        estimated, mask = estimate_photo(args)
        if source is None:
            if estimated is None:
                raise UserError(f"cannot estimate the bokeh level of {args.photo} (see `bokeh estimate`): give --source-bokeh")
            source, how = round(min(float(estimated), MAX_BOKEH_LEVEL), 1), "estimated"
        if args.keep_subject and mask is None:
            raise UserError(f"--keep-subject needs a subject mask, and --mask {args.mask} gave none for {args.photo}")
    pipe = edit_pipeline(pipeline_from_args(args))
    width, height = edit_size(photo.width, photo.height, args.size or pipe.default_resolution, pipe.size_multiple)
    try:
        edits = pipe(photo, prompt, args.bokeh, source_bokeh=source, num_inference_steps=args.steps,
                     guidance_scale=args.guidance_scale, grounding_steps=args.grounding_steps,
                     shared_steps=args.shared_steps, colour_transfer=args.colour_transfer,
                     subject_mask=mask if args.keep_subject else None,
                     height=height, width=width).images
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.photo).stem
    settings = {"prompt": prompt, "source_bokeh": f"{source:g} ({how})", "steps": str(args.steps or pipe.default_steps),
                "guidance": f"{pipe.edit_guidance if args.guidance_scale is None else args.guidance_scale:g}",
                "keep_subject": str(args.keep_subject).lower()}
    for k, image in zip(args.bokeh, edits):
        image.save(out / f"{stem}-K{k:g}.png", pnginfo=png_text({**settings, "K": f"{k:g}"}))
    shown = photo.resize((width, height))
    sheet = contact_sheet([shown, *edits], [f"input K={source:g} ({how})", *(f"K={k:g}" for k in args.bokeh)],
                          height=max(SHEET_HEIGHT, height))
    sheet.save(out / f"{stem}-sheet.png")
    print(f"{args.photo}: K={source:g} ({how}); wrote {len(edits)} edits ({width}x{height}) and {stem}-sheet.png to {out}")
    return 0
