"""The build's worker stages, each a callable class that Ray Data runs on batches (tasks or actor pools).

read (bytes, id, decode, EXIF, resize) -> depth -> mask -> estimate (K, filter) -> groups (renders of
all-in-focus photos) -> encode (rows). A stage works on :class:`PhotoState` objects; any failure of
one photo becomes its ``outcome`` (one errors.jsonl line), never an exception out of the stage. Called on a
Ray Data batch, a stage takes and returns columnar batches (:func:`dataset_tools.photo_state.to_columns`).
Model stages (Depth Anything, SAM) load their model once per instance, so one actor = one model.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import cv2
import numpy as np
from PIL import Image

from estimators.backends import make_depth_model, make_masker
from estimators.bokeh_level import estimate_bokeh_level
from estimators.depth import DepthUnavailableError
from estimators.exif import ExifInfo, read_exif
from estimators.image_io import ImageLoadError, load_image, to_array, to_gray
from estimators.input_files import InputFileError
from estimators.lens import REFERENCE_SHORT_SIDE, RENDER_LEVEL_RANGE
from estimators.mask import MaskUnavailableError
from estimators.sharpness import subject_background_sharpness
from estimators.sidecars import NoDepthSidecar, NoMaskSidecar, photo_depth, photo_mask

from .build_config import BuildConfig
from .dedup import Duplicate, decode, photo_id
from .encode import real_row, synthetic_row
from .input_shards import Chunk, item_from_row, read_chunk
from .photo_state import PhotoState, Render, StageFailure, from_columns, one_line, to_columns
from .sources import SourceItem, listing_code

#: ImageLoadError message starts -> reason code (stats group failures by code).
_DECODE_CODES = (
    ("empty file", "empty-file"),
    ("not a recognised image format", "not-an-image"),
    ("decompression bomb", "too-many-pixels"),
    ("image has", "too-many-pixels"),
    ("image is", "bad-aspect"),
)


class Stage:
    """Base of the per-photo stages: runs :meth:`process` on every active photo of a batch, timing it
    and turning any exception into the photo's outcome."""

    name = "stage"

    def __init__(self, config: BuildConfig) -> None:
        self.config = config

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Ray Data entry point: a columnar batch of photos in, the same photos (advanced) out."""
        states = from_columns(batch)
        self.run(states)
        return to_columns(states)

    def run(self, states: list[PhotoState]) -> None:
        """Advance every active state by this stage."""
        for state in states:
            if state.active:
                with state.timed(self.name):
                    guarded(self.name, state, self.process, state)

    def process(self, state: PhotoState) -> None:  # pragma: no cover - every stage overrides it
        raise NotImplementedError


def guarded(stage: str, state: PhotoState, fn: Any, *args: Any) -> Any:
    """Call ``fn(*args)``; a StageFailure or any exception stops ``state`` at ``stage`` instead of escaping."""
    try:
        return fn(*args)
    except StageFailure as failure:
        state.stop(stage, failure)
    except Exception as exc:  # noqa: BLE001 - one bad photo never stops the build
        state.stop(stage, StageFailure(f"{stage}-error", f"unexpected {type(exc).__name__}: {one_line(exc)}"))
    return None


# ----------------------------------------------------------------------------- read
def fit_short_side(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) with the short side brought down to ``side`` px (never enlarged)."""
    short = min(width, height)
    if short <= side:
        return width, height
    scale = side / short
    return max(1, round(width * scale)), max(1, round(height * scale))


def merge_dataset_exif(exif: ExifInfo, columns: dict[str, Any]) -> ExifInfo:
    """Fill the EXIF fields the file lacks from a dataset's EXIF-like columns (the file wins when both exist)."""
    numeric = {"f_number": "f_number", "focal_length_mm": "focal_length_mm",
               "focal_length_35mm": "focal_length_35mm", "focus_distance_m": "focus_distance_m"}
    text = {"camera_make": "make", "camera_model": "model", "lens_model": "lens_model"}
    for column, attr in numeric.items():
        if column not in columns or getattr(exif, attr) is not None:
            continue
        try:
            value = float(columns[column])
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and value > 0:
            setattr(exif, attr, value)
            exif.missing.pop(attr, None)
            exif.raw[f"dataset:{column}"] = str(columns[column])
            if attr == "focus_distance_m":
                exif.focus_distance_source = "dataset-column"
    for column, attr in text.items():
        value = columns.get(column)
        if getattr(exif, attr) is None and isinstance(value, str) and value.strip():
            setattr(exif, attr, value.strip())
            exif.missing.pop(attr, None)
    return exif


class ReadStage:
    """Chunks of input shards in, photo states out: bytes, id (sha1), decode + orientation, EXIF, resize to the
    working size: short side max(--resolution, 512), never enlarged, so K, sharpness and renders are measured
    alike whatever the stored size; the encode stage brings everything down to --resolution. Later copies of
    an input (:mod:`dataset_tools.dedup`) stop here with stage ``dedup``, unread."""

    name = "read"

    def __init__(self, config: BuildConfig, inputs_dir: str) -> None:
        self.config = config
        self.inputs_dir = Path(inputs_dir)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Ray Data entry point: chunk descriptors (shard, row_group, duplicates as JSON) in, photos out."""
        states: list[PhotoState] = []
        for shard, group, duplicates in zip(batch["shard"], batch["row_group"], batch["duplicates"]):
            states.extend(self.read(Chunk(int(shard), int(group)), decode(duplicates)))
        return to_columns(states)

    def read(self, chunk: Chunk, duplicates: Optional[Mapping[int, Duplicate]] = None) -> list[PhotoState]:
        """The decoded photos of one chunk (failed ones and the later copies in ``duplicates`` carry their outcome)."""
        states = []
        for row in read_chunk(self.inputs_dir, chunk):
            item = item_from_row(row)
            state = PhotoState(chunk.shard, int(row["seq"]), item.source, item.path, item.caption, item.exif)
            duplicate = (duplicates or {}).get(state.seq)
            if duplicate is not None:
                state.id = duplicate.id
                state.stop("dedup", StageFailure("duplicate", f"duplicate of {duplicate.first_source}",
                                                 status="filtered"))
            elif item.error:
                state.stop("read", StageFailure(listing_code(item.error), item.error))
            else:
                self.load(state, item)
            states.append(state)
        return states

    def load(self, state: PhotoState, item: SourceItem) -> None:
        """Read, hash, decode and resize ``item`` into ``state`` (a failure becomes its outcome)."""
        guarded("read", state, self._load, state, item)

    def _load(self, state: PhotoState, item: SourceItem) -> None:
        with state.timed("read"):
            try:
                data = item.read_bytes()
            except InputFileError as exc:
                raise StageFailure(exc.code, one_line(exc)) from None
            except OSError as exc:
                raise StageFailure("unreadable", f"cannot read {item.source}: {exc.strerror or one_line(exc)}") from None
            state.id = photo_id(data)
        with state.timed("decode"):
            try:
                image = load_image(data, max_pixels=self.config.max_pixels)
            except ImageLoadError as exc:
                message = str(exc)
                code = next((c for prefix, c in _DECODE_CODES if message.startswith(prefix)), "corrupt")
                raise StageFailure(code, message) from None
            size = fit_short_side(image.width, image.height, max(self.config.resolution, REFERENCE_SHORT_SIDE))
            array = to_array(image)
            if size != image.size:
                array = cv2.resize(array, size, interpolation=cv2.INTER_AREA)
            state.image = array
        with state.timed("exif"):
            state.exif = merge_dataset_exif(read_exif(data), state.dataset_exif)


# ----------------------------------------------------------------------------- depth and mask
class DepthStage(Stage):
    """Depth from ``<stem>.depth.npy`` / ``<stem>.disparity.png`` sidecars (``--depth sidecar``) or the depth model."""

    name = "depth"

    def __init__(self, config: BuildConfig) -> None:
        super().__init__(config)
        self.model = make_depth_model(config.depth, config.depth_model)  # None for sidecar / none

    def run(self, states: list[PhotoState]) -> None:
        """Sidecars photo by photo; a model in one batched call (its time shared out), one by one if that fails."""
        active = [s for s in states if s.active]
        if self.model is None or not active:
            super().run(states)
            return
        start = time.perf_counter()
        try:
            maps = self.model.predict([Image.fromarray(s.image) for s in active])
        except Exception:  # noqa: BLE001 - retried one by one below, so only the bad photo fails
            super().run(active)
            return
        share = (time.perf_counter() - start) / len(active)
        for state, depth in zip(active, maps):
            state.depth = depth
            state.timings[self.name] = state.timings.get(self.name, 0.0) + share

    def process(self, state: PhotoState) -> None:
        try:
            state.depth = photo_depth(state.path, state.image, self.model, sidecar=self.model is None)
        except NoDepthSidecar as exc:
            raise StageFailure("no-depth", f"{exc}: add one, or choose a depth model with --depth") from None
        except DepthUnavailableError as exc:
            raise StageFailure("bad-sidecar", f"{exc}: fix or replace it, or choose a depth model with --depth") from None


class MaskStage(Stage):
    """The subject mask: depth layer + GrabCut (``depth``), Segment Anything (``sam``) or ``<stem>.mask.png``."""

    name = "mask"

    def __init__(self, config: BuildConfig) -> None:
        super().__init__(config)
        self.masker = make_masker(config.mask, config.sam_model)

    def process(self, state: PhotoState) -> None:
        try:
            found = photo_mask(state.path, state.image, state.depth.disparity, self.masker, sidecar=self.masker is None)
        except NoMaskSidecar as exc:
            raise StageFailure("no-mask", f"{exc}: add one, or use --mask depth or sam") from None
        except MaskUnavailableError as exc:
            raise StageFailure("bad-sidecar", f"{exc}: fix or replace it, or use --mask depth or sam") from None
        if not found.mask.any():
            raise StageFailure("no-mask", f"the {found.source} subject mask is empty")
        state.mask, state.mask_source = found.mask, found.source


# ----------------------------------------------------------------------------- estimate and filter
class EstimateStage(Stage):
    """K and the image measures (:func:`estimate_bokeh_level`), then the filter: K known, subject sharp."""

    name = "estimate"

    def process(self, state: PhotoState) -> None:
        rec = estimate_bokeh_level(
            state.image, state.exif, state.depth, state.mask, source=state.source, mask_source=state.mask_source
        )
        state.estimate = rec
        # A soft subject rules a photo out whatever K reads, so it is the reason given first.
        if rec.sharpness_subject is not None and rec.sharpness_subject < self.config.min_sharpness:
            raise StageFailure(
                "subject-not-sharp",
                f"subject sharpness {rec.sharpness_subject:.3g} < --min-sharpness {self.config.min_sharpness:g}",
                status="filtered",
            )
        if rec.bokeh_level is None:
            raise StageFailure("no-bokeh-level", rec.notes[-1] if rec.notes else "no estimate", status="filtered")
        if rec.sharpness_subject is None:
            raise StageFailure("subject-too-small", "the subject covers too few pixels to measure its sharpness",
                               status="filtered")


# ----------------------------------------------------------------------------- synthetic groups
def group_seed(seed: int, photo_id: str) -> int:
    """The render seed of one photo: from the build seed and the photo's id, whatever worker runs it."""
    return int(np.random.SeedSequence([int(seed), int(photo_id, 16)]).generate_state(1)[0])


def balanced_levels(seed: int, count: int, low: float = RENDER_LEVEL_RANGE[0], high: float = RENDER_LEVEL_RANGE[1]) -> list[float]:
    """``count`` levels, one uniform draw in each of ``count`` equal strata of [low, high] (``--balance``).

    Every level is still U(low, high) over groups, but each group spans the whole range and the
    histogram of all renders is flat even for a few groups (independent draws leave bins empty by chance).
    """
    rng = np.random.default_rng(int(seed))
    width = (high - low) / count
    return [round(low + (j + float(u)) * width, 2) for j, u in enumerate(rng.random(count))]


class GroupStage(Stage):
    """Renders of every all-in-focus photo at ``synthetic_levels`` bokeh levels (one contrastive group)."""

    name = "render"

    def __init__(self, config: BuildConfig, device: Optional[str] = "cpu") -> None:
        super().__init__(config)
        self.device = device
        from synth_blur import make_group  # torch: imported once per worker, not inside a photo's timing

        self.make_group = make_group

    def process(self, state: PhotoState) -> None:
        if self.config.synthetic_levels < 1 or not state.estimate.is_all_in_focus:
            return
        seed = group_seed(self.config.seed, state.id)
        count = self.config.synthetic_levels
        levels = self.config.levels or (balanced_levels(seed, count) if self.config.balance else None)
        group = self.make_group(state.image, state.depth.disparity, state.mask, levels, seed, count=count,
                           device=self.device, group_id=state.id)
        for member in group.renders:
            image = np.asarray(member.image)
            subject, background = subject_background_sharpness(to_gray(image), state.mask)
            state.renders.append(Render(image, float(member.bokeh_level), dict(member.params), subject, background))


class EncodeStage(Stage):
    """Resize to --resolution, then the output rows (JPEG image, PNG depth and mask) of a kept photo and its
    renders; drops the arrays."""

    name = "encode"

    def process(self, state: PhotoState) -> None:
        height, width = state.image.shape[:2]
        size = fit_short_side(width, height, self.config.resolution)
        if size != (width, height):
            state.image = cv2.resize(state.image, size, interpolation=cv2.INTER_AREA)
            state.depth.disparity = cv2.resize(state.depth.disparity, size, interpolation=cv2.INTER_AREA)
            state.mask = cv2.resize(state.mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5
            for render in state.renders:
                render.image = cv2.resize(render.image, size, interpolation=cv2.INTER_AREA)
        quality = self.config.jpeg_quality
        pivot = real_row(state, quality, k_scale=size[0] / width)
        state.rows = [pivot] + [synthetic_row(pivot, state, r, i, quality) for i, r in enumerate(state.renders)]
        state.image = state.depth = state.mask = state.estimate = None
        state.renders = []


#: The per-photo stages after reading, in order.
PHOTO_STAGES = (DepthStage, MaskStage, EstimateStage, GroupStage, EncodeStage)

