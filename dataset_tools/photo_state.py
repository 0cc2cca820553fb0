"""What travels between the build's worker stages for one source photo, and how a stage records failure.

Inside a worker a photo is a :class:`PhotoState`; between stages (and into a user's own Ray Data pipeline) a
batch of photos is columnar (:func:`to_columns`, :func:`from_columns`): numpy arrays of images, disparity,
depth, mask and renders, and scalar columns, with the small records (EXIF, estimate, outcome, timings) as
JSON text. Nothing is pickled, so any Ray Data pipeline can read, filter or store these columns.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
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


#: Array columns of a photo batch: (column, dtype, dimensions); an absent array is an empty one (size 0).
ARRAY_COLUMNS = (("image", np.uint8, 3), ("disparity", np.float32, 2), ("depth_m", np.float32, 2),
                 ("mask", np.bool_, 2), ("renders", np.uint8, 4))
#: Text columns of a photo batch ("" when unset); the JSON ones hold a record, or "" for none.
TEXT_COLUMNS = ("source", "path", "caption", "id", "depth_source", "mask_source")
JSON_COLUMNS = ("dataset_exif", "exif", "estimate", "render_params", "outcome", "timings")


def _array(value: Optional[np.ndarray], dtype: Any, ndim: int) -> np.ndarray:
    return np.zeros((0,) * ndim, dtype) if value is None else np.ascontiguousarray(value, dtype=dtype)


def _column(values: list[np.ndarray]) -> np.ndarray:
    """An object column of arrays (kept one array per row even when every array has the same shape)."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (for JSON)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _json(value: Any) -> str:
    return "" if value is None else json.dumps(value, default=_plain)


def to_columns(states: list[PhotoState]) -> dict[str, np.ndarray]:
    """A columnar batch (column -> numpy array of one value per photo) of ``states``, for Ray Data."""
    renders = [np.stack([r.image for r in s.renders]) if s.renders else None for s in states]
    meta = [[{"bokeh_level": r.bokeh_level, "params": r.params, "sharpness_subject": r.sharpness_subject,
              "sharpness_background": r.sharpness_background} for r in s.renders] for s in states]
    depth = [s.depth for s in states]
    arrays = {"image": [s.image for s in states], "disparity": [d and d.disparity for d in depth],
              "depth_m": [d and d.depth_m for d in depth], "mask": [s.mask for s in states], "renders": renders}
    batch = {"shard": np.array([s.shard for s in states], np.int64), "seq": np.array([s.seq for s in states], np.int64)}
    for name, dtype, ndim in ARRAY_COLUMNS:
        batch[name] = _column([_array(v, dtype, ndim) for v in arrays[name]])
    text = {"source": [s.source for s in states], "path": [s.path for s in states],
            "caption": [s.caption for s in states], "id": [s.id for s in states],
            "depth_source": [d and d.source for d in depth], "mask_source": [s.mask_source for s in states]}
    for name in TEXT_COLUMNS:
        batch[name] = np.array([v or "" for v in text[name]], dtype=object)
    records = {"dataset_exif": [s.dataset_exif for s in states],
               "exif": [s.exif and asdict(s.exif) for s in states],
               "estimate": [s.estimate and asdict(s.estimate) for s in states],
               "render_params": [m or None for m in meta], "outcome": [s.outcome for s in states],
               "timings": [s.timings for s in states]}
    for name in JSON_COLUMNS:
        batch[name] = np.array([_json(v) for v in records[name]], dtype=object)
    return batch


def _record(cls: type, text: str) -> Any:
    """The dataclass ``cls`` from its JSON text (fields it does not know are ignored); None for ""."""
    if not text:
        return None
    data = json.loads(text)
    return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def _present(value: Any) -> Optional[np.ndarray]:
    """The array of a cell (writable: stages may change it in place), None for an absent (empty) one."""
    if value is None:
        return None
    array = np.asarray(value)
    if not array.size:
        return None
    return array if array.flags.writeable else array.copy()


def _loads(text: str, empty: Any) -> Any:
    return json.loads(text) if text else empty


def _text(batch: dict[str, Any], name: str, count: int) -> list[str]:
    values = batch.get(name)
    return [""] * count if values is None else ["" if v is None else str(v) for v in values]


def from_columns(batch: dict[str, Any]) -> list[PhotoState]:
    """The states of a columnar batch made by :func:`to_columns`; a batch from elsewhere needs ``image`` or
    ``path`` and may leave out any other column (``seq`` defaults to the row's place in the batch)."""
    count = len(next(iter(batch.values()))) if batch else 0
    text = {name: _text(batch, name, count) for name in (*TEXT_COLUMNS, *JSON_COLUMNS)}
    column = {name: batch.get(name, [None] * count) for name, _, _ in ARRAY_COLUMNS}
    shards = batch.get("shard", [0] * count)
    seqs = batch.get("seq", range(count))
    states = []
    for i in range(count):
        state = PhotoState(int(shards[i]), int(seqs[i]), text["source"][i] or text["path"][i],
                           text["path"][i] or None, text["caption"][i], _loads(text["dataset_exif"][i], {}))
        state.id = text["id"][i] or None
        state.image = _present(column["image"][i])
        disparity = _present(column["disparity"][i])
        if disparity is not None:
            state.depth = DepthMap(disparity, _present(column["depth_m"][i]), text["depth_source"][i])
        state.mask = _present(column["mask"][i])
        state.mask_source = text["mask_source"][i] or None
        state.exif = _record(ExifInfo, text["exif"][i])
        state.estimate = _record(BokehEstimate, text["estimate"][i])
        renders = _present(column["renders"][i])
        state.renders = [Render(image, m["bokeh_level"], m["params"], m["sharpness_subject"], m["sharpness_background"])
                         for image, m in zip([] if renders is None else renders, _loads(text["render_params"][i], []))]
        state.outcome = _loads(text["outcome"][i], None)
        state.timings = _loads(text["timings"][i], {})
        states.append(state)
    return states
