"""Training data: the rows of a dataset written by ``bokeh build`` (or an HF dataset with its columns),
and the sampler that turns them into real and contrastive batches.

K and crops (docs/design.md §1: K is the blur radius in px per unit of disparity at short side 512).
Every image is first resized so its short side is the training resolution R. Resizing does not
change K: the label is in the 512 convention, in which blur scales with the short side, so an image
shown at short side R carries ``K * R / 512`` px of blur and the model sees the same K it would see
at 512. A square R x R crop of that resized image (no further scaling) keeps K unchanged too. Only a
zoom crop changes it: a crop of ``c`` px of the resized short side ``R``, scaled back up to ``R``,
enlarges the blur by ``R / c``, so its label is ``K * R / c``. Zoom crops are off by default
(``crop_min_fraction = 1``); when on, ``c`` is never smaller than ``K_max * R / 30`` so that no label
leaves 0..30, and the rows of one contrastive group share one crop (same scene, same factor).
"""
from __future__ import annotations

import glob
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from dataset_tools.schema import cell_bytes, label_names
from estimators.cli_util import UserError
from estimators.lens import MAX_BOKEH_LEVEL

COLUMNS = ("id", "group_id", "kind", "image", "caption", "bokeh_level")
MASK_COLUMN = "subject_mask"


@dataclass(frozen=True)
class Crop:
    """A square crop in the resized image, as fractions: side ``size`` of the short side, its top-left
    corner at ``x``, ``y`` of the free room (0 = left / top, 1 = right / bottom)."""

    size: float = 1.0
    x: float = 0.5
    y: float = 0.5


@dataclass(frozen=True)
class BatchPlan:
    """What one training batch holds: dataset rows, their K (after crop scaling and dropout; -1 = no
    condition), captions (after dropout), per-row pivot row (-1 = not tied) and crops."""

    rows: list[int]
    levels: list[float]
    captions: list[str]
    pivot_ids: list[int]
    crops: list[Crop]
    contrastive: bool


class RowError(UserError):
    """A row whose image (or subject mask) cannot be used; ``row`` is its index, the message one line naming it."""

    def __init__(self, row: int, message: str) -> None:
        super().__init__(message)
        self.row = row


def without_rows(plan: BatchPlan, dropped: set[int]) -> BatchPlan:
    """``plan`` less the rows in ``dropped`` (row indices); a row tied to a dropped pivot is no longer tied."""
    if not dropped.intersection(plan.rows):
        return plan
    keep = [i for i, row in enumerate(plan.rows) if row not in dropped]
    position = {old: new for new, old in enumerate(keep)}
    return BatchPlan(
        rows=[plan.rows[i] for i in keep],
        levels=[plan.levels[i] for i in keep],
        captions=[plan.captions[i] for i in keep],
        pivot_ids=[position.get(plan.pivot_ids[i], -1) if plan.pivot_ids[i] >= 0 else -1 for i in keep],
        crops=[plan.crops[i] for i in keep],
        contrastive=plan.contrastive,
    )


class TrainingRows:
    """The columns the trainer needs, in memory; images (and subject masks, when the table has the
    ``subject_mask`` column) stay encoded in Arrow columns until used."""

    def __init__(self, table: Any) -> None:
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise UserError(f"training data lacks the column(s) {missing}; it needs {list(COLUMNS)} (as `bokeh build` writes)")
        levels = table.column("bokeh_level").to_pylist()
        keep = [k is not None and 0 <= k <= MAX_BOKEH_LEVEL for k in levels]
        if not all(keep):
            warnings.warn(f"skipping {keep.count(False)} of {len(keep)} rows whose bokeh_level is missing or outside 0..{MAX_BOKEH_LEVEL:g}", stacklevel=2)
            table = table.filter(pa.array(keep))
        if table.num_rows == 0:
            raise UserError(f"training data has no row with bokeh_level in 0..{MAX_BOKEH_LEVEL:g}")
        self._images = table.column("image")
        self.ids = [str(v) for v in table.column("id").to_pylist()]
        self.group_ids = [str(v) for v in table.column("group_id").to_pylist()]
        self.kinds = label_names("kind", table.column("kind").to_pylist())  # class-label indices or names
        self.captions = ["" if v is None else str(v) for v in table.column("caption").to_pylist()]
        self.levels = np.asarray(table.column("bokeh_level").to_pylist(), dtype=np.float64)
        self.groups = self._contrastive_groups()
        self._masks = table.column(MASK_COLUMN) if MASK_COLUMN in table.column_names else None
        self.mask_rows = self._mask_rows()

    def _mask_rows(self) -> list[int]:
        """Per row, the row whose subject mask it uses: its own, else the first of its group that has one
        (``bokeh build`` stores a group's mask on its real row only: the renders share the scene), else -1."""
        import pyarrow.compute as pc

        data = self._masks
        if data is not None and pa.types.is_struct(data.type):
            data = pc.struct_field(data, "bytes")
        if data is None or pa.types.is_null(data.type):  # no column, or nulls / path-only cells: nothing embedded
            return [-1] * len(self)
        has = pc.fill_null(pc.greater(pc.binary_length(data), 0), False).to_numpy(zero_copy_only=False)
        first: dict[str, int] = {}
        for row, gid in enumerate(self.group_ids):
            if has[row]:
                first.setdefault(gid, row)
        return [row if has[row] else first.get(gid, -1) for row, gid in enumerate(self.group_ids)]

    def __len__(self) -> int:
        return len(self.ids)

    def _contrastive_groups(self) -> list[list[int]]:
        """Groups of two or more rows, pivot first: the group's real row, else its lowest K."""
        members: dict[str, list[int]] = {}
        for row, gid in enumerate(self.group_ids):
            members.setdefault(gid, []).append(row)
        groups = []
        for rows in members.values():
            if len(rows) < 2:
                continue
            real = [r for r in rows if self.kinds[r] == "real"]
            pivot = real[0] if real else min(rows, key=lambda r: self.levels[r])
            groups.append([pivot] + [r for r in rows if r != pivot])
        return groups

    def image_bytes(self, row: int) -> bytes:
        """The encoded image of ``row`` (HF Image struct ``{bytes, path}``)."""
        data = cell_bytes(self._images[row].as_py())
        if not data:
            raise RowError(row, f"row {self.ids[row]}: image: no embedded image bytes")
        return data

    def mask_bytes(self, row: int) -> Optional[bytes]:
        """The encoded subject mask that applies to ``row`` (see :meth:`_mask_rows`), or None."""
        source = self.mask_rows[row]
        return None if source < 0 else cell_bytes(self._masks[source].as_py())


def _read_shards(files: Sequence[str], wanted: Sequence[str]) -> Any:
    """The ``wanted`` columns (those the first shard has) of every Parquet shard, as one table; a shard that cannot be
    read (truncated, not Parquet, other columns) is a one-line error naming it."""
    import pyarrow.parquet as pq

    tables, columns = [], None
    for file in files:
        try:
            if columns is None:
                names = pq.read_schema(file).names
                missing = [c for c in COLUMNS if c not in names]
                if missing:
                    raise UserError(f"training data {file} lacks the column(s) {missing}; it needs {list(COLUMNS)} (as `bokeh build` writes)")
                columns = [c for c in wanted if c in names]
            tables.append(pq.read_table(file, columns=columns))
        except (pa.ArrowException, OSError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"training data shard {file} cannot be read ({first[:200]}): it is truncated or damaged; "
                            "rebuild the dataset with `bokeh build`") from None
    try:
        return pa.concat_tables(tables)
    except pa.ArrowException as exc:
        raise UserError(f"the training data shards in {Path(files[0]).parent} do not share one schema ({str(exc).splitlines()[0][:200]}): "
                        "rebuild the dataset with `bokeh build`") from None


def load_rows(source: str, split: str = "train", masks: bool = False) -> TrainingRows:
    """Rows from a ``bokeh build`` output folder (``data/*.parquet``), a folder of Parquet files, or
    an HF dataset id / folder readable by ``datasets.load_dataset``; with ``masks`` also their subject
    masks (the ``subject_mask`` column must exist)."""
    wanted = list(COLUMNS) + ([MASK_COLUMN] if masks else [])
    path = Path(source).expanduser()
    files = sorted(glob.glob(str(path / "data" / f"{split}-*.parquet"))) or sorted(glob.glob(str(path / "*.parquet")))
    if path.is_dir() and files:
        table = _read_shards(files, wanted)
    else:
        try:
            import datasets

            table = datasets.load_dataset(str(source), split=split).data.table
        except Exception as exc:  # noqa: BLE001 - missing folder, bad id, offline hub
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(
                f"cannot read training data {source!r} ({first[:200]}); pass a `bokeh build` output folder or an HF dataset id"
            ) from exc
    if table.num_rows == 0:
        raise UserError(f"training data {source!r} has no rows")
    if masks and MASK_COLUMN not in table.column_names:
        raise UserError(f"training data {source!r} has no {MASK_COLUMN} column (data.subject_weight needs the subject masks "
                        "`bokeh build --mask` writes)")
    rows = TrainingRows(table.select(wanted))
    if masks:
        without = rows.mask_rows.count(-1)
        if without == len(rows):
            raise UserError(f"training data {source!r}: no row has an embedded subject mask (nor its group's pivot); "
                            "data.subject_weight needs them")
        if without:
            warnings.warn(f"{without} of {len(rows)} rows have no subject mask (nor their group's pivot): "
                          "they weigh every pixel alike", stacklevel=2)
    return rows


class BatchSampler:
    """Draws batch ``n`` from its own generator seeded by ``(seed, n)``: the data position is just ``n``,
    so a resumed run sees exactly the batches an uninterrupted one would.

    With probability ``contrastive_ratio`` a batch is one contrastive group (pivot first, then up to
    ``batch_size - 1`` of its renders, each tied to the pivot with ``tie_probability``), otherwise
    ``batch_size`` random rows with their own K (``real_rows``: "all" rows or only kind "real").
    Then each row's K becomes -1 with ``k_dropout`` and its caption "" with ``caption_dropout``, and both
    together with ``uncond_dropout`` (the classifier-free guidance's negative pass, which has neither: the two
    independent drops alone train it on ``k_dropout * caption_dropout`` of the rows, 1 % at 0.1 each).
    """

    def __init__(
        self,
        rows: TrainingRows,
        batch_size: int,
        seed: int = 0,
        contrastive_ratio: float = 0.5,
        tie_probability: float = 0.2,
        k_dropout: float = 0.1,
        caption_dropout: float = 0.1,
        real_rows: str = "all",
        crop_min_fraction: float = 1.0,
        uncond_dropout: float = 0.0,
    ) -> None:
        for name, p in (("contrastive_ratio", contrastive_ratio), ("tie_probability", tie_probability),
                        ("k_dropout", k_dropout), ("caption_dropout", caption_dropout),
                        ("uncond_dropout", uncond_dropout)):
            if not 0 <= p <= 1:
                raise UserError(f"{name} must be in 0..1, got {p}")
        if not 0 < crop_min_fraction <= 1:
            raise UserError(f"crop_min_fraction must be in (0, 1], got {crop_min_fraction}")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if real_rows not in ("all", "real"):
            raise UserError(f"real_rows must be 'all' or 'real', got {real_rows!r}")
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.contrastive_ratio = contrastive_ratio if rows.groups and batch_size > 1 else 0.0
        self.tie_probability = tie_probability
        self.k_dropout = k_dropout
        self.caption_dropout = caption_dropout
        self.uncond_dropout = uncond_dropout
        self.crop_min_fraction = crop_min_fraction
        self.pool = np.arange(len(rows)) if real_rows == "all" else np.flatnonzero(np.asarray(rows.kinds) == "real")
        if self.pool.size == 0:
            raise UserError("real_rows: 'real' but the data has no row of kind 'real'")

    def _crop(self, rng: np.random.Generator, max_level: float) -> tuple[Crop, float]:
        """A crop and its K factor R / c (1 without zoom), keeping ``max_level * factor`` <= 30."""
        low = max(self.crop_min_fraction, max_level / MAX_BOKEH_LEVEL)
        size = 1.0 if low >= 1 else float(rng.uniform(low, 1.0))
        return Crop(size, float(rng.random()), float(rng.random())), 1.0 / size

    def plan(self, n: int) -> BatchPlan:
        """Batch number ``n`` (0, 1, 2 ...)."""
        rng = np.random.default_rng([self.seed, n])
        contrastive = bool(rng.random() < self.contrastive_ratio)
        if contrastive:
            group = self.rows.groups[int(rng.integers(len(self.rows.groups)))]
            renders = list(group[1:])
            take = min(self.batch_size - 1, len(renders))
            picked = [renders[i] for i in sorted(rng.choice(len(renders), size=take, replace=False))]
            rows = [group[0]] + picked
            ties = rng.random(len(rows)) < self.tie_probability
            pivot_ids = [-1] + [0 if t else -1 for t in ties[1:]]
            crop, factor = self._crop(rng, max(self.rows.levels[r] for r in rows))
            crops = [crop] * len(rows)
            factors = [factor] * len(rows)
        else:
            rows = [int(r) for r in rng.choice(self.pool, size=self.batch_size, replace=self.pool.size < self.batch_size)]
            pivot_ids = [-1] * len(rows)
            drawn = [self._crop(rng, self.rows.levels[r]) for r in rows]
            crops = [c for c, _ in drawn]
            factors = [f for _, f in drawn]
        drop_k = rng.random(len(rows)) < self.k_dropout
        drop_caption = rng.random(len(rows)) < self.caption_dropout
        if self.uncond_dropout:  # drawn last, so that 0 leaves every batch as it was
            drop_both = rng.random(len(rows)) < self.uncond_dropout
            drop_k, drop_caption = drop_k | drop_both, drop_caption | drop_both
        levels = [-1.0 if d else min(MAX_BOKEH_LEVEL, float(self.rows.levels[r]) * f) for r, f, d in zip(rows, factors, drop_k)]
        captions = ["" if d else self.rows.captions[r] for r, d in zip(rows, drop_caption)]
        return BatchPlan(rows, levels, captions, pivot_ids, crops, contrastive)


def crop_box(width: int, height: int, resolution: int, crop: Crop) -> tuple[float, float, float, float]:
    """The (left, top, right, bottom) box in the *original* image that ``crop`` takes, when the image
    is first resized to short side ``resolution``."""
    short = min(width, height)
    side = crop.size * short
    left = crop.x * (width - side)
    top = crop.y * (height - side)
    return left, top, left + side, top + side


class ImageLoader:
    """Decodes rows to ``[3, R, R]`` float tensors in [-1, 1] (crop of the short-side-R image) and, for a
    subject-weighted loss, their ``[1, R, R]`` weights from the same crop of the subject mask; with an
    optional in-memory cache of the decoded images and masks (worth it for small datasets and models).
    A row that fails to decode fails the same way every time: the failure is remembered, not retried."""

    def __init__(self, rows: TrainingRows, resolution: int, cache: bool = False) -> None:
        self.rows = rows
        self.resolution = resolution
        self._cache: Optional[dict[tuple, Any]] = {} if cache else None
        self._failed: dict[tuple, RowError] = {}

    def _shrunk(self, image: Image.Image) -> Image.Image:
        """``image`` with its short side at most 2x the training size: enough pixels for any crop."""
        short, limit = min(image.size), 2 * self.resolution
        if short <= limit:
            return image
        scale = limit / short
        return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample=Image.Resampling.BICUBIC)

    def _cached(self, key: tuple, make: Any) -> Any:
        if key in self._failed:
            raise self._failed[key]
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        try:
            value = make()
        except RowError as exc:
            self._failed[key] = exc
            raise
        if self._cache is not None:
            self._cache[key] = value
        return value

    def _image(self, row: int) -> Image.Image:
        """Row ``row``'s image, RGB, shrunk for training."""
        from estimators.image_io import ImageLoadError, load_image

        def make() -> Image.Image:
            try:
                return self._shrunk(load_image(self.rows.image_bytes(row)))
            except ImageLoadError as exc:
                raise RowError(row, f"row {self.rows.ids[row]}: image: {exc}") from None

        return self._cached(("image", row), make)

    def _mask(self, row: int, size: tuple[int, int]) -> Image.Image:
        """The subject mask that applies to ``row`` (mode F, 1 = subject), resized to its image's ``size``."""
        from estimators.image_io import ImageLoadError, load_mask

        source = self.rows.mask_rows[row]

        def make() -> Image.Image:
            try:
                mask = load_mask(self.rows.mask_bytes(row))
            except ImageLoadError as exc:
                raise RowError(source, f"row {self.rows.ids[source]}: subject mask: {exc}") from None
            height, width = mask.shape
            if abs(width * size[1] - height * size[0]) > 0.01 * height * size[0]:  # aspects 1 % apart or more
                raise RowError(source, f"row {self.rows.ids[source]}: subject mask {width}x{height} does not fit the image of row "
                                       f"{self.rows.ids[row]} (aspect of {size[0]}x{size[1]})")
            grey = Image.fromarray(mask.astype(np.float32), mode="F")
            return grey.resize(size, resample=Image.Resampling.BILINEAR)

        return self._cached(("mask", source, size), make)

    def _tile(self, image: Image.Image, crop: Crop, resample: Image.Resampling) -> np.ndarray:
        box = crop_box(image.width, image.height, self.resolution, crop)
        return np.asarray(image.resize((self.resolution, self.resolution), resample=resample, box=box), dtype=np.float32)

    def load(self, rows: Sequence[int], crops: Sequence[Crop]) -> Any:
        """The ``[B, 3, R, R]`` batch for ``rows`` with their ``crops``."""
        return self.load_weighted(rows, crops, None)[0]

    def load_weighted(self, rows: Sequence[int], crops: Sequence[Crop], subject_weight: Optional[float]) -> tuple[Any, Any]:
        """The batch (as :meth:`load`) and, unless ``subject_weight`` is None, its ``[B, 1, R, R]`` loss
        weights: ``subject_weight`` on the subject mask, 1 elsewhere (in between on a resized mask edge;
        1 everywhere for rows without a mask). The mask is fitted to its row's image, then cropped alike.
        A row that cannot be used raises :class:`RowError`."""
        return self._tensors(rows, crops, [self._image(row) for row in rows], subject_weight, None)

    def load_plan(self, plan: BatchPlan, subject_weight: Optional[float]) -> tuple[BatchPlan, Any, Any, dict[str, str]]:
        """:meth:`load_weighted` of ``plan`` less its rows whose image cannot be decoded: the plan kept, the
        batch, its weights and the problems met (row id -> one line). A subject mask that cannot be used leaves
        its rows in, weighing every pixel alike. The batch is empty when no row could be decoded."""
        problems: dict[str, str] = {}
        images: dict[int, Image.Image] = {}
        for row in dict.fromkeys(plan.rows):
            try:
                images[row] = self._image(row)
            except RowError as exc:
                problems[self.rows.ids[exc.row]] = f"{exc}; the row is left out of its batches"
        kept = without_rows(plan, set(plan.rows) - set(images))
        if not kept.rows:
            return kept, None, None, problems
        pixels, weights = self._tensors(kept.rows, kept.crops, [images[row] for row in kept.rows], subject_weight, problems)
        return kept, pixels, weights, problems

    def _tensors(self, rows: Sequence[int], crops: Sequence[Crop], images: Sequence[Image.Image],
                 subject_weight: Optional[float], problems: Optional[dict[str, str]]) -> tuple[Any, Any]:
        """The batch and weights of decoded ``images``; a mask failure raises, or with ``problems`` is recorded
        there and its rows weigh every pixel alike."""
        import torch

        arrays, maps, done = [], [], {}
        flat = np.ones((self.resolution, self.resolution), dtype=np.float32)
        for row, crop, image in zip(rows, crops, images):
            arrays.append(self._tile(image, crop, Image.Resampling.BICUBIC))
            if subject_weight is None:
                continue
            key = (self.rows.mask_rows[row], crop, image.size)  # a contrastive batch shares one mask and crop
            if key not in done:
                done[key] = flat
                if key[0] >= 0:
                    try:
                        done[key] = 1.0 + (subject_weight - 1.0) * self._tile(self._mask(row, image.size), crop, Image.Resampling.BILINEAR)
                    except RowError as exc:
                        if problems is None:
                            raise
                        problems[self.rows.ids[exc.row]] = f"{exc}; its rows weigh every pixel alike"
            maps.append(done[key])
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
        return pixels, (torch.from_numpy(np.stack(maps)).unsqueeze(1) if maps else None)
