"""The `bokeh` command (top of the layers): one argparse parser whose subcommands each layer registers."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from dataset_tools import build_cli
from dataset_tools import cli as dataset_tools_cli
from estimators import cli as estimators_cli
from estimators.cli_util import UserError
from estimators.model_loading import ModelUnavailableError
from pipelines import edit_cli, eval_cli, sample_cli
from synth_blur import cli as synth_blur_cli
from trainer import cli as trainer_cli

from . import push


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered, lower layers first."""
    parser = argparse.ArgumentParser(
        prog="bokeh",
        description="Bokeh Diffusion toolkit: estimate, render, build datasets, train and sample "
        "bokeh-controllable text-to-image models (K = 0 all sharp .. 30 very shallow depth of field).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in (estimators_cli.register, synth_blur_cli.register, dataset_tools_cli.register, build_cli.register, trainer_cli.register,
                     sample_cli.register, edit_cli.register, eval_cli.register, push.register):
        register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse arguments and run the chosen subcommand; user errors exit 2 with one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ModelUnavailableError) as exc:
        print(f"bokeh {args.command}: error: {exc}", file=sys.stderr)
        return 2


