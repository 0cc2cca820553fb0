"""What travels between the build's worker stages for one source photo, and how a stage records failure."""
from __future__ import annotations

import pickle
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np

from estimators.bokeh_level import BokehEstimate
from estimators.depth import DepthMap
from estimators.exif import ExifInfo


class StageFailure(Exception):
    """A photo cannot go on: ``code`` is a short reason key (stats), the message one line (errors.jsonl)."""

    def __init__(self, code: str, reason: str, status: str = "failed") -> None:
        super().__init__(reason)
        self.code, self.reason, self.status = code, reason, status


@dataclass
class Render:
    """One synthetic member of a contrastive group, with its sharpness measured at the working size."""

    image: np.ndarray
    bokeh_level: float
    params: dict[str, Any]
    sharpness_subject: Optional[float] = None
    sharpness_background: Optional[float] = None


@dataclass
class PhotoState:
    """A source photo on its way through the stages. ``outcome`` is set once it failed or was filtered;
    ``rows`` holds its finished output rows (after the encode stage, which also drops the arrays)."""

    shard: int
    seq: int
    source: str
    path: Optional[str] = None
    caption: str = ""
    dataset_exif: dict[str, Any] = field(default_factory=dict)
    id: Optional[str] = None
    image: Optional[np.ndarray] = None  # HxWx3 uint8, upright, at the working size (short side >= 512 if possible)
    exif: Optional[ExifInfo] = None
    depth: Optional[DepthMap] = None
    mask: Optional[np.ndarray] = None
    mask_source: Optional[str] = None
    estimate: Optional[BokehEstimate] = None
    renders: list[Render] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    outcome: Optional[dict[str, Any]] = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """True while no stage has failed or filtered the photo."""
        return self.outcome is None

    def stop(self, stage: str, failure: StageFailure) -> None:
        """Record the photo's single errors.jsonl line and drop its arrays."""
        self.outcome = {
            "source": self.source,
            "stage": stage,
            "status": failure.status,
            "code": failure.code,
            "reason": failure.reason,
            "id": self.id,
            "seq": self.seq,
        }
        self.image = self.depth = self.mask = None
        self.renders = []

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the wall time of the block to ``timings[stage]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def pack(states: list[PhotoState]) -> dict[str, list]:
    """A Ray Data batch (column -> values) holding pickled states."""
    return {
        "shard": [s.shard for s in states],
        "seq": [s.seq for s in states],
        "state": [pickle.dumps(s, protocol=5) for s in states],
    }


def unpack(batch: dict[str, Any]) -> list[PhotoState]:
    """The states of a batch made by :func:`pack`."""
    return [pickle.loads(blob) for blob in batch["state"]]
