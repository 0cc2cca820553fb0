"""The settings of one ``bokeh build``: what every worker stage needs, and what a resumed build must repeat."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Optional

from estimators.image_io import MAX_PIXELS

#: Default floor on the subject's sharpness (variance of the Laplacian at short side 512, gray 0-255).
#: Sharp subjects measure tens to thousands; a subject blurred by a Gaussian of sigma 2 px measures about 2.
DEFAULT_MIN_SHARPNESS = 10.0


@dataclass(frozen=True)
class BuildConfig:
    """Every setting that changes the rows of a build (plus the worker-side limits)."""

    synthetic_levels: int = 4
    resolution: int = 512
    shard_size: int = 1000
    depth: str = "sidecar"
    depth_model: Optional[str] = None
    mask: str = "depth"
    sam_model: Optional[str] = None
    min_sharpness: float = DEFAULT_MIN_SHARPNESS
    balance: bool = False
    #: Fixed render levels for every all-in-focus photo (``--levels``), instead of drawn ones.
    levels: Optional[tuple[float, ...]] = None
    seed: int = 0
    image_column: str = "image"
    caption_column: str = "caption"
    jpeg_quality: int = 95
    max_pixels: int = MAX_PIXELS

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (stored in OUT/_work/config.json and stats.json)."""
        return asdict(self)

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """Names of the settings that differ from a stored ``to_dict()`` (compared as JSON, where tuples are lists)."""
        current = json.loads(json.dumps(self.to_dict()))
        return [name for name, value in current.items() if stored.get(name) != value]
