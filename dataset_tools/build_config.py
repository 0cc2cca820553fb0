"""The settings of one ``bokeh build``: what every worker stage needs, and what a resumed build must repeat."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Optional

from estimators.backends import DEFAULT_DEPTH_BACKEND
from estimators.image_io import MAX_PIXELS
from estimators.lens import MAX_BOKEH_LEVEL

#: Default floor on the subject's sharpness (variance of the Laplacian at short side 512, gray 0-255).
#: Sharp subjects measure tens to thousands; a subject blurred by a Gaussian of sigma 2 px measures about 2.
DEFAULT_MIN_SHARPNESS = 10.0

#: Renders per all-in-focus photo when neither ``--synthetic-levels`` nor ``--levels`` is given.
DEFAULT_SYNTHETIC_LEVELS = 4


@dataclass(frozen=True)
class BuildConfig:
    """Every setting that changes the rows of a build (plus the worker-side limits)."""

    synthetic_levels: int = DEFAULT_SYNTHETIC_LEVELS
    resolution: int = 512
    shard_size: int = 1000
    depth: str = DEFAULT_DEPTH_BACKEND
    depth_model: Optional[str] = None
    mask: str = "depth"
    sam_model: Optional[str] = None
    min_sharpness: float = DEFAULT_MIN_SHARPNESS
    balance: bool = False
    #: Fixed render levels for every all-in-focus photo (``--levels``), instead of drawn ones; stored sorted, and
    #: ``synthetic_levels`` becomes their count.
    levels: Optional[tuple[float, ...]] = None
    seed: int = 0
    image_column: str = "image"
    caption_column: str = "caption"
    jpeg_quality: int = 95
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        """Fixed levels decide the render count, so a config built by hand cannot disagree with itself."""
        if self.levels is None:
            return
        levels = tuple(sorted(float(k) for k in self.levels))
        text = ",".join(f"{k:g}" for k in levels)
        if self.balance:
            raise ValueError("fixed levels are not drawn: balance does not apply to them")
        if len(set(levels)) < len(levels):
            raise ValueError(f"a level repeats: {text}")
        if not all(0 < k <= MAX_BOKEH_LEVEL for k in levels):
            raise ValueError(f"every level must be in (0, {MAX_BOKEH_LEVEL:g}]: {text}")
        object.__setattr__(self, "levels", levels)  # frozen: set once, here
        object.__setattr__(self, "synthetic_levels", len(levels))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (stored in OUT/_work/config.json and stats.json)."""
        return asdict(self)

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """Names of the settings that differ from a stored ``to_dict()`` (compared as JSON, where tuples are lists)."""
        current = json.loads(json.dumps(self.to_dict()))
        return [name for name, value in current.items() if stored.get(name) != value]
