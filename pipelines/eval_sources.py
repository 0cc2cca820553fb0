"""Where the evaluation's subject masks, depth and reference sharpness come from.

A *scene* is the subject mask and disparity of one generated image: estimated (a depth model and a
masker run on the image), or taken from the ``bokeh build`` dataset row whose caption is the prompt
(the tiny demo model memorises its training scenes). The dataset also gives the blur reference:
the background sharpness of its images, resized to the generated size and binned by K.
"""
from __future__ import annotations

import io
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from dataset_tools.schema import cell_bytes
from estimators.cli_util import UserError
from estimators.depth import normalize_disparity, read_disparity_png
from estimators.image_io import ImageLoadError, as_rgb_array, load_image, load_mask
from pipelines.metrics import background_sharpness

#: Dataset rows count for a level when their K lies within half the gap to the neighbouring level,
#: and never further than this.
MAX_BIN_HALF_WIDTH = 3.0
#: Rows decoded per bin at most (the first ones in file order): enough for a stable median.
MAX_ROWS_PER_BIN = 500
_COLUMNS = ("image", "subject_mask", "depth", "bokeh_level", "caption", "group_id")


@dataclass
class Scene:
    """Subject mask (HxW bool, True = subject) and disparity ([0, 1], larger = nearer) of one image;
    either may be None; ``source`` says where they came from."""

    mask: Optional[np.ndarray]
    disparity: Optional[np.ndarray]
    source: str


def fit_to(image: Image.Image, size: tuple[int, int], resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """``image`` centre-cropped to the aspect of ``size`` = (width, height) and resized to it.

    A centre crop keeps K (docs/design.md §1); resizing to another short side keeps it too, since
    K is defined at short side 512 and blur in px scales with the short side.
    """
    width, height = image.size
    target_w, target_h = size
    scale = max(target_w / width, target_h / height)
    crop_w, crop_h = target_w / scale, target_h / scale
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    return image.resize(size, resample, box=(left, top, left + crop_w, top + crop_h))


def fit_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask fitted like :func:`fit_to` (area-weighted, then thresholded at one half)."""
    grey = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.float32), mode="F")
    return np.asarray(fit_to(grey, size, Image.Resampling.BILINEAR)) >= 0.5


def fit_disparity(disparity: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A disparity map normalised to [0, 1] at its own size, then fitted like :func:`fit_to` (never renormalised
    after: a flat map stays flat, interpolation noise does not become depth layers)."""
    grey = Image.fromarray(normalize_disparity(disparity), mode="F")
    return np.clip(np.asarray(fit_to(grey, size, Image.Resampling.BILINEAR), dtype=np.float32), 0.0, 1.0)


class EstimatedScenes:
    """Scenes from a depth model (``image -> DepthMap``) and an optional masker (``(image, disparity)
    -> SubjectMask``, see :func:`estimators.backends.make_masker`)."""

    def __init__(self, depth_model: Any, masker: Any = None) -> None:
        self.depth_model = depth_model
        self.masker = masker

    def __call__(self, prompt: str, image: Image.Image) -> Scene:
        depth = self.depth_model(image)
        if self.masker is None:
            return Scene(None, depth.disparity, depth.source)
        found = self.masker(image, depth.disparity)
        return Scene(np.asarray(found.mask, dtype=bool), depth.disparity, f"{depth.source} + {found.source}")


@dataclass
class _Pivot:
    level: float
    mask: bytes
    depth: Optional[bytes]


@dataclass
class BinnedReference:
    """Median background sharpness of the dataset rows near each level (None for an empty bin)."""

    levels: list[float]
    background: list[Optional[float]]
    whole: list[Optional[float]]
    counts: list[int]
    notes: list[str] = field(default_factory=list)


def level_bins(levels: Sequence[float]) -> list[tuple[float, float]]:
    """The (low, high) K range of each level: half the gap to its neighbours, at most MAX_BIN_HALF_WIDTH."""
    ordered = list(levels)
    bins = []
    for i, level in enumerate(ordered):
        gaps = [abs(level - ordered[j]) / 2 for j in (i - 1, i + 1) if 0 <= j < len(ordered)]
        half = min([MAX_BIN_HALF_WIDTH] + [g for g in gaps if g > 0])
        bins.append((level - half, level + half))
    return bins


class DatasetSource:
    """A ``bokeh build`` output folder (``data/*.parquet``): scenes by caption and binned reference blur."""

    def __init__(self, folder: str | Path) -> None:
        import pyarrow.parquet as pq

        self.folder = Path(folder).expanduser()
        self.files = sorted((self.folder / "data").glob("*.parquet"))
        if not self.files:
            raise UserError(f"--dataset {folder}: no data/*.parquet (pass a `bokeh build` output folder)")
        missing = [c for c in _COLUMNS if c not in pq.read_schema(self.files[0]).names]
        if missing:
            raise UserError(f"--dataset {folder}: {self.files[0].name} lacks the column(s) {missing}")
        self._pivots: dict[str, _Pivot] = {}
        self._bins: dict[tuple[tuple[int, int], tuple[float, ...]], BinnedReference] = {}

    def _rows(self, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
        import pyarrow.parquet as pq

        for path in self.files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=32, columns=list(columns)):
                yield from batch.to_pylist()

    def _groups(self, columns: Sequence[str]) -> Iterator[tuple[Optional[bytes], list[dict[str, Any]]]]:
        """Runs of rows of one contrastive group (written together), with the group's subject mask bytes
        (synthetic rows carry none: they share their pivot's)."""
        for _, run in itertools.groupby(self._rows(columns), key=lambda r: r["group_id"]):
            rows = list(run)
            masks = [cell_bytes(r["subject_mask"]) for r in rows]
            yield next((m for m in masks if m), None), rows

    def check_captions(self, prompts: Sequence[str]) -> None:
        """Find each prompt's scene row, the lowest-K row captioned exactly so that has a subject mask
        (kept for :meth:`scene`); UserError naming the first prompt that has none."""
        wanted = set(prompts) - set(self._pivots)
        if wanted:
            for row in self._rows(("subject_mask", "depth", "bokeh_level", "caption")):
                mask, caption, level = cell_bytes(row["subject_mask"]), row["caption"], row["bokeh_level"]
                if caption in wanted and mask and level is not None:
                    if caption not in self._pivots or level < self._pivots[caption].level:
                        self._pivots[caption] = _Pivot(float(level), mask, cell_bytes(row["depth"]))
        for prompt in prompts:
            if prompt not in self._pivots:
                raise UserError(
                    f"prompt {prompt!r} matches no caption of a dataset row with a subject mask in {self.folder} "
                    "(--mask dataset needs the exact training captions)"
                )

    def scene(self, prompt: str, size: tuple[int, int]) -> Scene:
        """Mask and depth of the dataset row captioned ``prompt``, fitted to ``size`` = (width, height)."""
        self.check_captions([prompt])
        pivot = self._pivots[prompt]
        mask = fit_mask(load_mask(pivot.mask), size)
        disparity = None
        if pivot.depth:
            disparity = fit_disparity(read_disparity_png(io.BytesIO(pivot.depth)), size)
        return Scene(mask, disparity, f"dataset:{self.folder.name}")

    def binned(self, levels: Sequence[float], size: tuple[int, int]) -> BinnedReference:
        """Median background and whole-image sharpness of the dataset's images fitted to ``size``, per
        level bin (:func:`level_bins`); each row's background uses its own (or its pivot's) mask."""
        key = (tuple(size), tuple(float(k) for k in levels))
        if key in self._bins:
            return self._bins[key]
        bins = level_bins(levels)
        background: list[list[float]] = [[] for _ in bins]
        whole: list[list[float]] = [[] for _ in bins]
        without_mask, unreadable = 0, 0
        for mask_bytes, rows in self._groups(("image", "subject_mask", "bokeh_level", "group_id")):
            mask = None
            for row in rows:
                level = row["bokeh_level"]
                near = [i for i, (lo, hi) in enumerate(bins) if level is not None and lo <= level <= hi]
                if not near:
                    continue
                i = min(near, key=lambda j: abs(levels[j] - level))
                if len(whole[i]) >= MAX_ROWS_PER_BIN:
                    continue
                try:
                    rgb = as_rgb_array(fit_to(load_image(cell_bytes(row["image"]) or b""), size))
                except ImageLoadError:
                    unreadable += 1
                    continue
                whole[i].append(background_sharpness(rgb) or 0.0)  # None only below 16 px: nothing to measure
                if mask_bytes is None:
                    without_mask += 1
                    continue
                if mask is None:
                    mask = fit_mask(load_mask(mask_bytes), size)
                value = background_sharpness(rgb, mask)
                if value is not None:
                    background[i].append(value)

        def medians(values: list[list[float]]) -> list[Optional[float]]:
            return [float(np.median(v)) if v else None for v in values]

        notes = [f"no dataset row with K in [{lo:g}, {hi:g}] for level {k:g}" for k, (lo, hi), v in zip(levels, bins, whole) if not v]
        if without_mask:
            notes.append(f"{without_mask} dataset rows have no subject mask in their group: whole-image sharpness only")
        notes += [f"level {k:g}: median of the first {MAX_ROWS_PER_BIN} dataset rows in its bin" for k, v in zip(levels, whole) if len(v) >= MAX_ROWS_PER_BIN]
        if unreadable:
            notes.append(f"{unreadable} dataset rows have an unreadable image: skipped")
        result = BinnedReference(list(levels), medians(background), medians(whole), [len(v) for v in whole], notes)
        self._bins[key] = result
        return result


def reference_photo(path: str | Path, size: tuple[int, int], depth_model: Any = None, masker: Any = None) -> tuple[Image.Image, Scene]:
    """A photo fitted to ``size`` with its scene: depth from its sidecar, else ``depth_model``; subject
    from its mask sidecar, else ``masker`` (default: the weight-free depth masker); a sidecar that is there
    but refused is a UserError, never replaced by a model."""
    from estimators.depth import DepthUnavailableError
    from estimators.mask import DepthMasker, MaskUnavailableError
    from estimators.sidecars import NoDepthSidecar, photo_depth, photo_mask

    try:
        photo = load_image(path)
    except ImageLoadError as exc:
        raise UserError(f"reference photo {path}: {exc}") from None
    try:
        depth = photo_depth(path, photo, depth_model)
        found = photo_mask(path, photo, depth.disparity, masker or DepthMasker())
    except (DepthUnavailableError, MaskUnavailableError) as exc:
        missing = isinstance(exc, NoDepthSidecar)
        hint = " (add one, or score with --mask depth or sam, which load --depth-model)" if missing else ""
        raise UserError(f"reference photo {path}: {exc}{hint}") from None
    image = fit_to(photo, size)
    scene = Scene(fit_mask(found.mask, size), fit_disparity(depth.disparity, size), f"{depth.source} + {found.source}")
    return image, scene
