"""Small pieces every subcommand shares: the user-error type, argparse value types, the one list syntax and the
one set of depth flags."""
from __future__ import annotations

import argparse
import math
from typing import Any, Callable, Optional

from .backends import DEFAULT_DEPTH_BACKEND, DEPTH_BACKENDS, depth_backend_help, depth_model_help


class UserError(Exception):
    """A bad argument or impossible request: ``bokeh`` prints it as one line and exits 2."""


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def positive_float(text: str) -> float:
    """argparse type: a float > 0."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


class ListAction(argparse.Action):
    """Collects one list from space- and comma-separated tokens (``0 8 16``, ``0,8,16``, ``0, 8 16``)."""

    def __init__(self, option_strings: list[str], dest: str, item: Callable[[str], Any], example: str,
                 **kwargs: Any) -> None:
        self.item, self.example = item, example
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        parts = []
        for token in values:
            fields = [field.strip() for field in token.split(",")]
            if "" in fields[1:-1]:  # a comma at either end joins the next token; two in a row lose a value
                raise argparse.ArgumentError(self, f"an empty value between commas in {token!r}")
            parts += [field for field in fields if field]
        if not parts:
            raise argparse.ArgumentError(self, f"give at least one value, e.g. {self.example}")
        parsed = []
        for part in parts:
            try:
                parsed.append(self.item(part))
            except argparse.ArgumentTypeError as exc:
                hint = (" (a list takes every value up to the next flag: put the other arguments before it)"
                        if parsed and not _is_number(part) else "")
                raise argparse.ArgumentError(self, f"{exc}{hint}") from None
        setattr(namespace, self.dest, parsed)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def add_list_argument(parser: Any, flag: str, item: Callable[[str], Any], *, example: str, help: str,
                      default: Optional[list[Any]] = None, metavar: str = "K", **kwargs: Any) -> argparse.Action:
    """Add a list flag that takes values separated by spaces, commas or both (the one list syntax of ``bokeh``).

    ``item`` checks each value (an argparse type); ``example`` is a space-separated sample for the help and the
    empty-list error; the help text ends with the syntax and ``default``, shown space-separated.
    """
    shown = "" if default is None else f"; default: {' '.join(format(v, 'g') for v in default)}"
    text = f"{help} (separate values by spaces or commas, e.g. {example}{shown})"
    return parser.add_argument(flag, action=ListAction, item=item, example=example, default=default,
                               metavar=metavar, help=text, **kwargs)


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (seeds, counts that may be zero)."""
    return _integer(text, 0)


#: ``--depth`` choices of a command that needs depth for every photo (all but ``none``).
DEPTH_REQUIRED_BACKENDS = tuple(name for name in DEPTH_BACKENDS if name != "none")
_DISPARITY_FORMATS = "8/16-bit PNG, .npy or .npz; larger = nearer, min-max normalised"
#: Why a dataset build takes no ``--disparity``: the map belongs to one photo.
DISPARITY_PER_PHOTO = ("--disparity names one photo's map; each photo of a build brings its own as a sidecar "
                       "(<stem>.depth.npy, <stem>.disparity.npy or <stem>.disparity.png): use --depth sidecar")


def add_depth_arguments(parser: argparse.ArgumentParser, backends: tuple[str, ...] = DEPTH_BACKENDS,
                        one_photo: bool = True) -> None:
    """Add ``--depth BACKEND`` / ``--disparity FILE`` (either one) and ``--depth-model``, the same in every command
    that reads depth; ``one_photo`` False (a dataset build) documents that ``--disparity`` is refused."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--depth", choices=backends, default=DEFAULT_DEPTH_BACKEND, metavar="BACKEND",
                        help=depth_backend_help(backends) + ". A model backend ignores sidecars")
    source.add_argument("--disparity", metavar="FILE",
                        help=f"one photo's own disparity map, instead of --depth ({_DISPARITY_FORMATS})" if one_photo
                        else f"not taken here: {DISPARITY_PER_PHOTO}")
    parser.add_argument("--depth-model", metavar="ID|PATH", help=depth_model_help())


def disparity_file(args: argparse.Namespace, photos: Optional[int]) -> Optional[str]:
    """The ``--disparity`` FILE of a command given ``photos`` photos (None: a dataset build, which refuses it);
    UserError unless it names the map of exactly one photo."""
    if args.disparity is None:
        return None
    if photos is None:
        raise UserError(DISPARITY_PER_PHOTO)
    if photos != 1:
        raise UserError(f"--disparity names one photo's map, but {photos} photos were given: estimate them one at "
                        "a time, or put each map next to its photo as <stem>.disparity.png / .npy and use --depth sidecar")
    return args.disparity


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """An instance of the dataclass ``cls`` from the parsed flags whose dest is one of its fields; a flag left
    unset (None) keeps the field's default, so the command and the Python API share one default."""
    given = {name: getattr(args, name) for name in cls.__dataclass_fields__ if getattr(args, name, None) is not None}
    return cls(**given)
