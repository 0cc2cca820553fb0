"""``bokeh train CONFIG.yaml [section.key=value ...] [--resume latest|DIR] [--overwrite]`` (torch loads in the handler)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    parser = sub.add_parser(
        "train",
        help="train a Bokeh Diffusion adapter (or the tiny model) on a `bokeh build` dataset",
        description="Train on the dataset of `bokeh build`. Settings come from CONFIG.yaml (configs/tiny.yaml, "
        "configs/sd15.yaml, configs/flux.yaml) and section.key=value overrides, e.g. run.max_steps=200 "
        "data.dataset=OUT. Multi-GPU: accelerate launch -m bokeh_cli train CONFIG.yaml.",
    )
    parser.add_argument("config", help="YAML settings file")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="settings that replace the file's")
    parser.add_argument("--resume", metavar="latest|DIR", help="continue from the newest checkpoint of run.output_dir, or from DIR "
                        "(with the settings that define the run unchanged; max_steps, logging, checkpoints and validation may change)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in a run.output_dir that holds one, removing that run's files (only the trainer's)")
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Load the config and train; prints where the results are."""
    from accelerate import PartialState

    from trainer.config import load_config
    from trainer.training import train

    config = load_config(args.config, args.overrides)
    result = train(config, resume=args.resume, overwrite=args.overwrite)
    if not PartialState().is_main_process:  # one summary line, also under a multi-process launch
        return 0
    if result["complete"]:
        print(f"nothing to train: the checkpoint is at step {result['step']} = run.max_steps (the run is complete; raise "
              f"run.max_steps to train on); results in {config.run.output_dir}")
        return 0
    count = result["bad_rows"]
    bad = f"; {count} row{'s' if count > 1 else ''} with an unreadable image or mask, listed in logs/errors.jsonl" if count else ""
    print(f"trained to step {result['step']} (loss {result['loss']:.4f}); results in {config.run.output_dir}{bad}")
    return 0
