"""Command-line flags shared by ``bokeh sample`` and ``bokeh eval``: which model, and how to sample it."""
from __future__ import annotations

import argparse
from typing import Any

from estimators.cli_util import UserError, non_negative_float, non_negative_int, positive_float, positive_int
from estimators.lens import MAX_BOKEH_LEVEL


def bokeh_level(text: str) -> float:
    """argparse type: a bokeh level K in 0..MAX_BOKEH_LEVEL."""
    value = non_negative_float(text)
    if value > MAX_BOKEH_LEVEL:
        raise argparse.ArgumentTypeError(f"bokeh level K must be in 0..{MAX_BOKEH_LEVEL:g}, got {text}")
    return value


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--base / --adapter / --checkpoint / --family / --device / --dtype."""
    g = p.add_argument_group("model")
    g.add_argument("--base", metavar="ID|PATH",
                   help="base model: a FLUX.1 or Stable Diffusion folder or hub id (e.g. black-forest-labs/FLUX.1-dev); "
                   "the tiny model's folder is CHECKPOINT/model")
    g.add_argument("--adapter", metavar="DIR|ID",
                   help="bokeh adapter: a folder with config.json + model.safetensors or a hub id (atfortes/BokehDiffusion)")
    g.add_argument("--checkpoint", metavar="DIR",
                   help="a `bokeh train` checkpoint (or run folder: its latest checkpoint) giving the adapter, and the "
                   "base when the checkpoint holds it (tiny model) or the run names it; --base / --adapter override")
    g.add_argument("--family", choices=("auto", "flux", "unet"), default="auto",
                   help="model family (default auto: from the base folder's layout or the adapter's config)")
    g.add_argument("--device", metavar="DEV", help="torch device (default: cuda when present, else cpu)")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="weights dtype (default: bfloat16 for FLUX on CUDA, as released; float32 otherwise)")


def add_bokeh_guidance_argument(group: Any) -> None:
    """--bokeh-guidance (shared by sample and eval)."""
    group.add_argument("--bokeh-guidance", type=non_negative_float, metavar="B",
                       help="guidance scale for K alone: each step adds B x (prediction with K - prediction without K), "
                       "one more model pass per step. Neutral B is the scale K already gets: the classifier-free scale "
                       "(UNet --guidance-scale, FLUX --true-cfg), or 1 without a negative pass (FLUX default); larger B "
                       "strengthens the blur K asks for (default: K guided with the prompt, no extra pass)")


def add_colour_transfer_argument(group: Any) -> None:
    """--no-colour-transfer (shared by sample and eval)."""
    group.add_argument("--no-colour-transfer", dest="colour_transfer", action="store_false",
                       help="grounded mode: keep each image's own colours instead of shifting its LAB means to the "
                       "pivot's (the released code shifts them; defocus in linear light brightens a blurred background, "
                       "and the shift that undoes it moves the subject's colours too)")


def add_shared_steps_argument(group: Any) -> None:
    """--shared-steps (shared by sample and eval)."""
    group.add_argument("--shared-steps", type=non_negative_int, default=0, metavar="S",
                       help="with a pivot: the first S steps denoise every image at the pivot's K, one shared trajectory "
                       "while the layout forms, then each image at its own K; holds a scene that would change with K "
                       "(default 0, as released)")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """--pivot / --grounding-steps / --shared-steps / --no-colour-transfer / --steps / --guidance-scale / --bokeh-guidance /
    --negative-prompt / --true-cfg / size."""
    g = p.add_argument_group("sampling")
    g.add_argument("--pivot", type=bokeh_level, metavar="K",
                   help="grounded mode: a pivot image at this K anchors the scene (released FLUX: 10-20 recommended)")
    g.add_argument("--grounding-steps", type=non_negative_int, default=24, metavar="N",
                   help="grounded mode: steps that use the pivot's attention queries (default 24 of 30; 0 = unbounded)")
    add_shared_steps_argument(g)
    add_colour_transfer_argument(g)
    g.add_argument("--steps", type=positive_int, metavar="N", help="denoising steps (default 30)")
    g.add_argument("--guidance-scale", type=non_negative_float, metavar="G",
                   help="FLUX: distilled guidance (default 3.0); UNet: classifier-free guidance (default 7.5, "
                   "pixel-space tiny model 2.0)")
    add_bokeh_guidance_argument(g)
    g.add_argument("--negative-prompt", metavar="TEXT",
                   help="negative prompt (UNet default empty; FLUX with --true-cfg: 'bad quality, low resolution')")
    g.add_argument("--true-cfg", type=positive_float, default=1.0, metavar="S",
                   help="FLUX only: true classifier-free guidance scale against the negative prompt (default 1 = off)")
    g.add_argument("--height", type=positive_int, metavar="PX", help="image height (default: the model's resolution)")
    g.add_argument("--width", type=positive_int, metavar="PX", help="image width (default: the model's resolution)")


def pipeline_from_args(args: argparse.Namespace) -> Any:
    """The pipeline the model flags name (one-line errors for missing or unfit models)."""
    from pipelines.loading import load_pipeline

    return load_pipeline(args.base, args.adapter, checkpoint=args.checkpoint, family=args.family,
                         device=args.device, dtype=args.dtype)


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline call's keyword arguments from the sampling flags (unset flags: pipeline defaults)."""
    return dict(
        pivot=args.pivot, grounding_steps=args.grounding_steps, num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale, negative_prompt=args.negative_prompt, true_cfg=args.true_cfg,
        bokeh_guidance=args.bokeh_guidance, height=args.height, width=args.width, colour_transfer=args.colour_transfer,
        shared_steps=args.shared_steps,
    )


def run_pipeline(pipe: Any, prompt: str, levels: list[float], seed: int, **kwargs: Any) -> list[Any]:
    """``pipe(...)`` with its ValueErrors (bad K, size, steps) as one-line user errors."""
    try:
        return pipe(prompt, levels, seed=seed, **kwargs).images
    except ValueError as exc:
        raise UserError(str(exc)) from exc
