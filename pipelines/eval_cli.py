"""``bokeh eval``: generate a prompts x seeds x K grid with a Bokeh Diffusion model and score it (LVCorr,
blur calibration, scene consistency) against a prompt-only baseline and physical renders; writes
eval.json, eval.html and the images. torch and the models load inside the handler."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from estimators.cli_util import (
    UserError, add_list_argument, dataclass_from_args, non_negative_float, non_negative_int, positive_int,
)
from pipelines.model_args import (
    add_bokeh_guidance_argument, add_colour_transfer_argument, add_model_arguments, add_shared_steps_argument, bokeh_level,
    pipeline_from_args,
)

DEFAULT_LEVELS = [0.0, 6.0, 12.0, 18.0, 24.0, 30.0]
DEFAULT_SEEDS = [0, 1, 2]
MASKS = ("depth", "sam", "dataset", "none")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    parser = sub.add_parser(
        "eval",
        help="score a model's bokeh control: LVCorr, blur calibration and scene consistency across K",
        description="Generate every prompt at every seed and K (unbounded sampling, plus grounded with "
        "--grounded, plus the prompt-only baseline with K ignored) and report, per prompt and overall: LVCorr "
        "(Pearson correlation of K with -log variance of the Laplacian, background and whole image), blur "
        "calibration (background sharpness against the dataset's images or a physical render at the same K) "
        "and scene consistency against the lowest K (SSIM / PSNR on the subject and whole image; LPIPS is not "
        "used, its weights are not available offline). Writes OUT/eval.json, OUT/eval.html and OUT/images/.",
    )
    add_model_arguments(parser)

    grid = parser.add_argument_group("grid")
    grid.add_argument("--prompts", required=True, metavar="FILE", help="text file, one prompt per line; blank lines and lines starting with '#' are skipped")
    add_list_argument(grid, "--levels", bokeh_level, example="0 6 12 18 24 30", default=DEFAULT_LEVELS,
                      help="ascending bokeh levels in 0..30, at least two; the lowest is the consistency reference")
    add_list_argument(grid, "--seeds", non_negative_int, example="0 1 2", default=DEFAULT_SEEDS, metavar="S",
                      help="seeds; each gives one sweep per mode")
    grid.add_argument("--grounded", action="store_true", help="also sample in grounded mode (pivot row and grounded self-attention)")
    grid.add_argument("--pivot", type=bokeh_level, default=15.0, help="K of the pivot row in grounded mode (default: 15)")
    grid.add_argument("--grounding-steps", type=positive_int, default=24, help="denoising steps with grounded self-attention (default: 24)")
    add_shared_steps_argument(grid)
    add_colour_transfer_argument(grid)
    grid.add_argument("--steps", type=positive_int, help="denoising steps (default: the pipeline's)")
    grid.add_argument("--guidance-scale", dest="guidance", type=non_negative_float, metavar="G",
                      help="FLUX: distilled guidance; UNet: classifier-free guidance (default: the pipeline's)")
    add_bokeh_guidance_argument(grid)
    grid.add_argument("--no-baseline", dest="baseline", action="store_false",
                      help="skip the prompt-only baseline (every K replaced by 'no condition'), the floor of the scores")

    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--mask", choices=MASKS,
                         help="subject mask of each sweep's lowest-K image: depth (Depth Anything + GrabCut), sam (Depth "
                         "Anything + SAM), dataset (the mask of the --dataset row whose caption is the prompt: for models "
                         "that memorise their training scenes), none (whole-image scores only). Default: dataset with "
                         "--dataset, else depth")
    scoring.add_argument("--depth-model", metavar="ID|DIR", help="Depth Anything checkpoint for --mask depth/sam and for "
                         "reference photos without a depth sidecar (default: Depth Anything V2 Small)")
    scoring.add_argument("--sam-model", metavar="ID|DIR", help="SAM checkpoint for --mask sam (default: facebook/sam-vit-base)")
    scoring.add_argument("--dataset", metavar="DIR", help="the `bokeh build` output folder the model trained on (data/*.parquet): "
                         "blur reference and dataset masks")
    scoring.add_argument("--reference", choices=("dataset", "render", "none"),
                         help="blur calibration reference: dataset (median background sharpness of the dataset's images at "
                         "the generated size, rows binned by K around each level), render (the K = 0 sample re-rendered at "
                         "each K with its depth: needs level 0 and a mask), none. Default: dataset with --dataset, else render")
    scoring.add_argument("--reference-photos", nargs="+", default=[], metavar="PHOTO",
                         help="all-in-focus photos rendered at the levels and scored the same way (the ceiling, LVCorr near 1); "
                         "depth from <stem>.depth.npy, <stem>.disparity.npy or <stem>.disparity.png, else --depth-model; "
                         "subject from <stem>.mask.png, else the depth masker")
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder for eval.json, eval.html and images/")
    parser.set_defaults(func=run_eval)


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a file: one per line, blank lines and '#' comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompts file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read prompts file {path}: {exc}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        raise UserError(f"prompts file {path} has no prompt (one per line; '#' starts a comment)")
    return prompts


def _scene_source(args: argparse.Namespace, mask: str, dataset: Any, prompts: list[str]) -> tuple[Any, Any, Any]:
    """(scene source, depth model, masker) for the chosen mask; models load here."""
    from estimators.backends import make_depth_model, make_masker
    from pipelines.eval_sources import EstimatedScenes

    if mask == "dataset":
        dataset.check_captions(prompts)
        return (lambda prompt, image: dataset.scene(prompt, image.size)), None, None
    if mask == "none":
        return None, None, None
    depth_model = make_depth_model("depth-anything", args.depth_model, args.device)
    masker = make_masker(mask, args.sam_model, args.device)
    return EstimatedScenes(depth_model, masker), depth_model, masker


def run_eval(args: argparse.Namespace) -> int:
    """Load the pipeline, run the grid, write the report and print the summary table."""
    from tqdm.auto import tqdm

    from pipelines.eval_report import summary_lines, write_evaluation
    from pipelines.eval_sources import DatasetSource
    from pipelines.evaluate import EvalSettings, Evaluator, check_reference

    prompts = read_prompts(args.prompts)
    try:
        settings = dataclass_from_args(EvalSettings, args)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    mask = args.mask or ("dataset" if args.dataset else "depth")
    reference = args.reference or ("dataset" if args.dataset else "render")
    if (mask == "dataset" or reference == "dataset") and not args.dataset:
        raise UserError(f"{'--mask' if mask == 'dataset' else '--reference'} dataset needs --dataset DIR (a `bokeh build` output folder)")
    if reference == "render" and mask == "none":
        raise UserError("--reference render needs a subject mask to focus on: use --mask depth, sam or dataset")
    for photo in args.reference_photos:
        if not Path(photo).is_file():
            raise UserError(f"reference photo not found: {photo}")
    dataset: Optional[DatasetSource] = DatasetSource(args.dataset) if args.dataset else None
    scenes, depth_model, masker = _scene_source(args, mask, dataset, prompts)
    try:
        check_reference(reference, settings.levels, scenes, dataset)  # before the (slow) model load
    except ValueError as exc:
        raise UserError(str(exc)) from None

    pipe = pipeline_from_args(args)
    pipe.set_progress_bar_config(disable=True)  # one bar over the grid instead of one per sweep
    evaluator = Evaluator(pipe, settings, scenes, reference, dataset, args.device)
    with tqdm(total=evaluator.calls(prompts), desc="generate", unit="sweep") as bar:
        evaluator.progress = bar.update
        try:
            result = evaluator.run(prompts, args.reference_photos, depth_model, masker)
        except ValueError as exc:  # e.g. a render reference for a dataset row without depth, a size the model refuses
            raise UserError(str(exc)) from None
    paths = write_evaluation(result, args.out)
    for line in summary_lines(result.scores):
        print(line)
    print(f"wrote {paths['json']} and {paths['html']}")
    return 0
