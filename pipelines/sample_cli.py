"""``bokeh sample``: text + K list -> one image per K and a labelled contact sheet."""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from estimators.cli_util import UserError, add_list_argument, non_negative_int
from pipelines.model_args import (
    add_model_arguments,
    add_sampling_arguments,
    bokeh_level,
    pipeline_from_args,
    run_pipeline,
    sampling_kwargs,
)

#: Contact-sheet thumbnails are at least this many pixels high (small models are scaled up).
SHEET_HEIGHT = 256


def prompt_slug(prompt: str, chars: int = 60) -> str:
    """A file-name-safe label for ``prompt``: lowercase words joined by underscores."""
    slug = "_".join(re.findall(r"[a-z0-9]+", prompt.lower()))[:chars].strip("_")
    return slug or "prompt"


def sample_settings(pipe: Any, args: argparse.Namespace, seed: int, mode: str) -> dict[str, str]:
    """What made an image, as PNG text: prompt, seed, steps, guidance (the pipeline's defaults where unset) and mode."""
    return {
        "prompt": args.prompt,
        "seed": str(seed),
        "steps": str(args.steps or pipe.default_steps),
        "guidance": f"{pipe.default_guidance if args.guidance_scale is None else args.guidance_scale:g}",
        "bokeh_guidance": "none" if args.bokeh_guidance is None else f"{args.bokeh_guidance:g}",
        "mode": mode,
    }


def png_text(fields: dict[str, str]) -> Any:
    """A PNG text-chunk block holding ``fields`` (read back with ``Image.open(path).text``)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in fields.items():
        info.add_itxt(key, value)  # international text: any prompt's characters
    return info


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bokeh sample`` to the ``bokeh`` parser."""
    p = sub.add_parser(
        "sample",
        help="generate one image per bokeh level K for a prompt (unbounded or grounded) with a trained adapter",
        description="Generate images of one prompt at several bokeh levels K from the same seed. Unbounded "
        "mode samples each K independently; grounded mode (--pivot) anchors the scene on a pivot image for the "
        "first --grounding-steps steps and matches its colours. Writes PREFIX-K<k>.png per level and "
        "PREFIX-sheet.png (labelled contact sheet) to -o, PREFIX = prompt words + seed.",
    )
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, help="the text prompt")
    add_list_argument(p, "--bokeh", bokeh_level, example="0 8 16 24", required=True,
                      help="bokeh levels, 0 = all sharp .. 30 = very shallow depth of field")
    p.add_argument("--seed", type=non_negative_int, metavar="S",
                   help="noise seed (default: FLUX 65578 as released, UNet 0)")
    add_sampling_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from synth_blur.contact_sheet import contact_sheet

    out = Path(args.output)
    labels = [f"{k:g}" for k in args.bokeh]
    twice = sorted({label for label in labels if labels.count(label) > 1}, key=float)
    if twice:  # one seed and one K give one image: a repeated level is a slip, and its file would be written over
        raise UserError(f"--bokeh gives K={', '.join(twice)} twice: list each level once")
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} exists and is not a folder")
    if args.shared_steps and args.pivot is None:  # before loading the model
        raise UserError("--shared-steps shares the pivot's K: give --pivot")
    pipe = pipeline_from_args(args)
    seed = pipe.default_seed if args.seed is None else args.seed
    images = run_pipeline(pipe, args.prompt, args.bokeh, seed, **sampling_kwargs(args))
    out.mkdir(parents=True, exist_ok=True)
    prefix = f"{prompt_slug(args.prompt)}-s{seed}"
    mode = "unbounded"
    if args.pivot is not None and args.grounding_steps > 0:
        mode = f"grounded on K={args.pivot:g}" + ("" if args.colour_transfer else ", own colours")
    if args.shared_steps:
        mode += f", first {args.shared_steps} steps at K={args.pivot:g}"
    settings = sample_settings(pipe, args, seed, mode)
    for k, image in zip(args.bokeh, images):
        image.save(out / f"{prefix}-K{k:g}.png", pnginfo=png_text({**settings, "K": f"{k:g}"}))
    sheet = contact_sheet(images, [f"K={k:g}" for k in args.bokeh], height=max(SHEET_HEIGHT, images[0].height))
    sheet.save(out / f"{prefix}-sheet.png")
    print(f"wrote {len(images)} images ({images[0].width}x{images[0].height}, seed {seed}, {mode}) and "
          f"{prefix}-sheet.png to {out}")
    return 0
