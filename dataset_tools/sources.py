"""The reader: turns build inputs (folders, globs, path lists, Parquet / Hugging Face datasets) into a
stream of source items, without listing everything in memory first."""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from estimators.depth import DISPARITY_SIDECAR_SUFFIX
from estimators.mask import MASK_SIDECAR_SUFFIX

#: File endings taken from folders and globs (case-insensitive).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".heic", ".heif", ".avif"})
#: Inputs with these endings are text files listing one photo path per line.
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
#: Caption sidecar next to a photo: ``<stem>.txt``.
CAPTION_SUFFIX = ".txt"
#: Columns of a dataset input that may carry EXIF-like values for the estimators.
EXIF_COLUMNS = ("f_number", "focal_length_mm", "focal_length_35mm", "focus_distance_m", "camera_make", "camera_model", "lens_model")
HF_PREFIXES = ("hf://", "hf:")


class InputError(ValueError):
    """A build input that cannot be used at all (missing, unknown kind); one line."""


@dataclass
class SourceItem:
    """One input photo: where it came from, how to get its bytes, and what came with it."""

    source: str
    path: Optional[str] = None
    data: Optional[bytes] = None
    caption: str = ""
    exif: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None  # set when the item is already known to be unreadable

    def read_bytes(self) -> bytes:
        """The encoded image bytes (raises OSError for unreadable paths)."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise OSError("no path or bytes for this item")
        return Path(self.path).read_bytes()


def caption_for(path: str | Path) -> str:
    """The ``<stem>.txt`` caption next to a photo, stripped; "" when absent or unreadable."""
    sidecar = Path(path).with_suffix(CAPTION_SUFFIX)
    try:
        return sidecar.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _file_item(path: str) -> SourceItem:
    return SourceItem(source=path, path=path, caption=caption_for(path))


def _is_image(name: str) -> bool:
    """An image file that is not one of the estimators' sidecars (disparity, mask)."""
    lower = name.lower()
    if lower.endswith((DISPARITY_SIDECAR_SUFFIX, MASK_SIDECAR_SUFFIX)):
        return False
    return os.path.splitext(lower)[1] in IMAGE_EXTENSIONS


def _walk(folder: str) -> Iterator[SourceItem]:
    """Image files under ``folder``, recursively, in sorted order; unreadable folders become error items."""
    def on_error(exc: OSError) -> None:
        errors.append(SourceItem(source=str(exc.filename or folder), error=f"unreadable folder: {exc.strerror or exc}"))

    errors: list[SourceItem] = []
    for root, dirs, files in os.walk(folder, onerror=on_error, followlinks=False):
        dirs.sort()
        while errors:
            yield errors.pop()
        for name in sorted(files):
            if _is_image(name):
                yield _file_item(os.path.join(root, name))
    yield from errors


def _path_list(list_file: str) -> Iterator[SourceItem]:
    """Paths listed one per line (blank lines and # comments skipped), relative to the list's folder."""
    base = os.path.dirname(os.path.abspath(list_file))
    with open(list_file, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                yield _file_item(entry if os.path.isabs(entry) else os.path.join(base, entry))


def _image_value(value: Any) -> tuple[Optional[bytes], Optional[str]]:
    """Bytes or a path from an image cell: HF Image struct {bytes, path}, raw bytes, or a path string."""
    if isinstance(value, dict):
        return value.get("bytes"), value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, str):
        return None, value
    if value is not None and hasattr(value, "save"):  # a decoded PIL image from `datasets`
        import io

        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue(), None
    return None, None


def _row_item(row: dict[str, Any], origin: str, index: int, image_column: str, caption_column: str) -> SourceItem:
    data, path = _image_value(row.get(image_column))
    caption = row.get(caption_column) or ""
    exif = {k: row[k] for k in EXIF_COLUMNS if row.get(k) is not None}
    source = path if (path and data is None) else f"{origin}#{index}"
    item = SourceItem(source=source, path=path if data is None else None, data=data, caption=str(caption).strip(), exif=exif)
    if data is None and not path:
        item.error = f"row {index} has no image in column '{image_column}'"
    return item


def _parquet_rows(paths: Sequence[str], image_column: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    for path in paths:
        parquet = pq.ParquetFile(path)
        if image_column not in parquet.schema_arrow.names:
            raise InputError(f"{path} has no column '{image_column}' (columns: {', '.join(parquet.schema_arrow.names)})")
        index = 0
        for batch in parquet.iter_batches(batch_size=64):
            for row in batch.to_pylist():
                yield path, index, row
                index += 1


def _dataset_rows(name: str, image_column: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Rows of a saved (``save_to_disk``) dataset folder or a hub dataset id, images undecoded."""
    import datasets

    if os.path.isdir(name):
        ds = datasets.load_from_disk(name)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    else:
        ds = datasets.load_dataset(name, split="train", streaming=True)
    if image_column not in (ds.column_names or []):
        raise InputError(f"dataset {name} has no column '{image_column}'")
    features = getattr(ds, "features", None) or {}
    if isinstance(features.get(image_column), datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    for index, row in enumerate(ds):
        yield name, index, row


def _is_saved_dataset(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, f)) for f in ("dataset_dict.json", "state.json"))


def iter_sources(
    inputs: Sequence[str], *, image_column: str = "image", caption_column: str = "caption"
) -> Iterator[SourceItem]:
    """Source items of every input, in order. Folders are walked recursively for image files;
    glob patterns expand; ``.txt``/``.lst`` files list paths; ``.parquet`` files (or folders of them),
    saved `datasets` folders and ``hf://ID`` hub datasets give one item per row."""
    for raw in inputs:
        entry = str(raw)
        if entry.startswith(HF_PREFIXES):
            name = entry.split(":", 1)[1].lstrip("/")
            rows = _dataset_rows(name, image_column)
        elif any(ch in entry for ch in "*?["):
            matches = sorted(glob.iglob(entry, recursive=True))
            if not matches:
                raise InputError(f"no file matches {entry}")
            for match in matches:
                if os.path.isfile(match) and _is_image(match):
                    yield _file_item(match)
            continue
        elif os.path.isdir(entry):
            parquet_files = sorted(glob.glob(os.path.join(entry, "**", "*.parquet"), recursive=True))
            if _is_saved_dataset(entry):
                rows = _dataset_rows(entry, image_column)
            elif parquet_files and not any(_is_image(n) for n in os.listdir(entry)):
                rows = _parquet_rows(parquet_files, image_column)
            else:
                yield from _walk(entry)
                continue
        elif os.path.isfile(entry):
            ext = os.path.splitext(entry)[1].lower()
            if ext in LIST_EXTENSIONS:
                yield from _path_list(entry)
                continue
            if ext == ".parquet":
                rows = _parquet_rows([entry], image_column)
            else:
                yield _file_item(entry)  # any single file: decoding decides
                continue
        else:
            raise InputError(f"input not found: {entry}")
        for origin, index, row in rows:
            yield _row_item(row, origin, index, image_column, caption_column)
