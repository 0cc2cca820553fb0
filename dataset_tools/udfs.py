"""The build's stages as Ray Data UDFs for a user's own pipeline: columnar batches in, columnar batches out.

Every UDF takes and returns a batch in the columns of :func:`dataset_tools.photo_state.to_columns` (numpy
arrays: ``image``, ``disparity``, ``depth_m``, ``mask``, ``renders``; text: ``path``, ``id``, ...; JSON
text: ``exif``, ``estimate``, ``outcome``, ...). A photo that fails or is filtered keeps its row with
``outcome`` set (its errors.jsonl line) and is passed through untouched by the later stages. The settings
are those of ``bokeh build`` (:class:`dataset_tools.build_config.BuildConfig` fields, e.g. ``depth="sidecar"``,
``synthetic_levels=4``), given as keyword arguments::

    ds = ray.data.from_items([{"path": p} for p in paths])
    ds = ds.map_batches(read_photos, fn_kwargs={"resolution": 512})
    ds = ds.map_batches(DepthUDF, fn_constructor_kwargs={"depth": "sidecar"}, concurrency=2)
    ds = ds.map_batches(MaskUDF, fn_constructor_kwargs={"mask": "sidecar"}, concurrency=2)
    ds = ds.map_batches(estimate_k).map_batches(render_group, fn_kwargs={"synthetic_levels": 4})

CPU stages are plain functions (their stage objects are made once per worker process); model stages are
classes that load their model in ``__init__``, for actor pools (``concurrency=N``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .build_config import BuildConfig
from .photo_state import PhotoState, from_columns, to_columns
from .sources import SourceItem
from .stages import DepthStage, EstimateStage, GroupStage, MaskStage, ReadStage, Stage

Batch = dict[str, Any]
_CACHE: dict[Any, Any] = {}


def _cached(cls: type, settings: dict[str, Any]) -> Any:
    """The stage ``cls`` for these settings, made once per worker process."""
    key = (cls, tuple(sorted(settings.items())))
    if key not in _CACHE:
        config = BuildConfig(**settings)
        _CACHE[key] = cls(config, "") if cls is ReadStage else cls(config)
    return _CACHE[key]


def _run(stage: Stage, batch: Batch) -> Batch:
    states = from_columns(batch)
    stage.run(states)
    return to_columns(states)


def read_photos(batch: Batch, **settings: Any) -> Batch:
    """Read stage: a batch with ``path`` (and optionally ``caption``) -> decoded, upright photos at the working
    size with their id (SHA-1 of the file) and EXIF; an unreadable file becomes an outcome."""
    reader: ReadStage = _cached(ReadStage, settings)
    paths = [str(p) for p in batch["path"]]
    captions = batch.get("caption", [""] * len(paths))
    states = []
    for seq, (path, caption) in enumerate(zip(paths, captions)):
        state = PhotoState(0, seq, path, path, "" if caption is None else str(caption))
        reader.load(state, SourceItem(source=path, path=path, caption=state.caption))
        states.append(state)
    columns = to_columns(states)
    for name in ("shard", "seq"):
        if name in batch:
            columns[name] = np.asarray(batch[name], np.int64)
    return columns


class DepthUDF:
    """Depth stage (``depth``: a model backend such as ``"depth-anything"`` with ``depth_model``, or
    ``"sidecar"``): the model is loaded once, here, so use it in an actor pool."""

    def __init__(self, **settings: Any) -> None:
        self.stage = DepthStage(BuildConfig(**settings))

    def __call__(self, batch: Batch) -> Batch:
        return _run(self.stage, batch)


class MaskUDF:
    """Subject-mask stage (``mask``: ``"sam"`` with ``sam_model``, ``"depth"`` or ``"sidecar"``); the SAM model is
    loaded once, here."""

    def __init__(self, **settings: Any) -> None:
        self.stage = MaskStage(BuildConfig(**settings))

    def __call__(self, batch: Batch) -> Batch:
        return _run(self.stage, batch)


def estimate_k(batch: Batch, **settings: Any) -> Batch:
    """Estimate stage: K and the image measures into ``estimate`` (JSON); a photo without K or with a subject
    softer than ``min_sharpness`` is filtered (its ``outcome``)."""
    return _run(_cached(EstimateStage, settings), batch)


def render_group(batch: Batch, **settings: Any) -> Batch:
    """Render stage: ``synthetic_levels`` renders of each all-in-focus photo into ``renders`` (L x H x W x 3) with
    their levels and parameters in ``render_params`` (JSON), on the CPU."""
    return _run(_cached(GroupStage, settings), batch)

