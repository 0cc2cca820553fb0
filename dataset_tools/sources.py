"""The reader: turns build inputs (folders, globs, path lists, Parquet / Hugging Face datasets) into a
stream of source items, without listing everything in memory first.

Folders, globs and Parquet files may also be object-store URLs (``s3://bucket/photos``, any fsspec protocol):
their keys are listed once (the listing gives every object's size and ETag, so stamps and caption size checks
cost no request), captions are fetched in concurrent batches, and photos and their depth / mask sidecars are
read later by the workers, with the same size caps as local files.
"""
from __future__ import annotations

import glob
import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from estimators.depth import DISPARITY_SIDECAR_SUFFIX
from estimators.image_io import MAX_PHOTO_BYTES
from estimators.input_files import (
    InputFileError,
    file_kind,
    inside,
    one_line,
    open_regular,
    read_regular,
    remote_fs,
    sidecar_of,
)
from estimators.mask import MASK_SIDECAR_SUFFIX

from .storage import is_remote, location

#: File endings taken from folders and globs (case-insensitive).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".heic", ".heif", ".avif"})
#: Image endings that folders and globs report as errors instead of reading, and why.
REFUSED_EXTENSIONS = {
    ".gif": "GIF holds at most 256 colours (dithered): convert it to PNG",
    ".dng": "camera raw files are not decoded: export a JPEG, PNG or TIFF",
    ".cr2": "camera raw files are not decoded: export a JPEG, PNG or TIFF",
    ".cr3": "camera raw files are not decoded: export a JPEG, PNG or TIFF",
    ".nef": "camera raw files are not decoded: export a JPEG, PNG or TIFF",
    ".arw": "camera raw files are not decoded: export a JPEG, PNG or TIFF",
}
#: Inputs with these endings are text files listing one photo path per line.
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
#: Caption sidecar next to a photo: ``<stem>.txt``.
CAPTION_SUFFIX = ".txt"
#: Longest caption, in UTF-8 bytes (file or dataset cell); a longer text is not a caption.
MAX_CAPTION_BYTES = 8192
#: Longest line of a path list, in characters.
MAX_LIST_LINE = 4096
#: Captions fetched together from an object store (one concurrent request batch).
CAPTION_BATCH = 64
#: Seconds the Hugging Face Hub gets to say whether a dataset id exists before the build gives up.
HUB_TIMEOUT_S = 10.0
#: Columns of a dataset input that may carry EXIF-like values for the estimators.
EXIF_COLUMNS = ("f_number", "focal_length_mm", "focal_length_35mm", "focus_distance_m", "camera_make", "camera_model", "lens_model")
HF_PREFIXES = ("hf://", "hf:")
#: errors.jsonl reason codes of items the listing already refuses: (how the message starts, or else a text
#: in it, code); every caption message starts with "caption".
_LISTING_STARTS = (("caption", "bad-caption"), ("symlinked folder", "symlinked-folder"),
                   ("unsupported format", "unsupported-format"))
_LISTING_TEXTS = (("not a regular file", "not-a-file"), ("outside the", "outside-input"))


class InputError(ValueError):
    """A build input that cannot be used at all (missing, unknown kind); one line."""


class CaptionError(ValueError):
    """A caption that is refused (unreadable, not UTF-8 text, too long); one line."""


@dataclass
class SourceItem:
    """One input photo: where it came from, how to get its bytes, and what came with it."""

    source: str
    path: Optional[str] = None
    data: Optional[bytes] = None
    caption: str = ""
    exif: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None  # set when the item is already known to be unreadable
    #: Its stamp and sidecar bits (:mod:`dataset_tools.input_stamp`) when the listing already knows them
    #: (object stores); None: stamped from the file system.
    stamp: Optional[str] = None
    sidecars: int = 0

    def read_bytes(self) -> bytes:
        """The encoded image bytes; :class:`~estimators.input_files.InputFileError` (an OSError) unless the path
        is a regular file of at most MAX_PHOTO_BYTES."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise OSError("no path or bytes for this item")
        return read_regular(self.path, MAX_PHOTO_BYTES, "photo")


def listing_code(error: str) -> str:
    """The errors.jsonl reason code of an item the listing refused (``SourceItem.error``)."""
    found = [code for start, code in _LISTING_STARTS if error.startswith(start)]
    found += [code for text, code in _LISTING_TEXTS if text in error]
    return found[0] if found else "unreadable"


def check_caption(value: Any, name: str = "caption") -> str:
    """A caption as stripped text: bytes must be UTF-8; NUL characters (a binary file) and more than
    MAX_CAPTION_BYTES are refused with :class:`CaptionError`."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        if len(value) > MAX_CAPTION_BYTES:
            raise CaptionError(f"{name} is {len(value):,} bytes, over the {MAX_CAPTION_BYTES:,}-byte caption limit: shorten it")
        try:
            value = bytes(value).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CaptionError(f"{name} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    text = str(value)
    if "\x00" in text:
        raise CaptionError(f"{name} holds NUL characters (a binary file, not text): replace it with a text file")
    if len(text.encode("utf-8")) > MAX_CAPTION_BYTES:
        raise CaptionError(f"{name} is {len(text.encode('utf-8')):,} bytes, over the {MAX_CAPTION_BYTES:,}-byte caption "
                           "limit: shorten it")
    return text.strip()


def caption_for(path: str | Path) -> str:
    """The ``<stem>.txt`` caption next to a photo, stripped; "" when there is none. :class:`CaptionError` when it
    is refused: not a regular file, a symlink out of the photo's folder, unreadable, or not :func:`check_caption`."""
    sidecar = Path(path).with_suffix(CAPTION_SUFFIX)
    try:
        if not sidecar_of(path, sidecar, "caption"):
            return ""
        data = read_regular(sidecar, MAX_CAPTION_BYTES, "caption")
    except InputFileError as exc:
        action = {"not-a-file": ": replace it with a text file, or remove it", "unreadable": ": fix or remove it"}
        raise CaptionError(f"{exc}{action.get(exc.code, '')}") from None
    return check_caption(data, f"caption {sidecar}")


def _file_item(path: str) -> SourceItem:
    item = SourceItem(source=path, path=path)
    try:
        item.caption = caption_for(path)
    except CaptionError as exc:
        item.error = str(exc)
    return item


def _is_image(name: str) -> bool:
    """An image file that is not one of the estimators' sidecars (disparity, mask)."""
    lower = name.lower()
    if lower.endswith((DISPARITY_SIDECAR_SUFFIX, MASK_SIDECAR_SUFFIX)):
        return False
    return os.path.splitext(lower)[1] in IMAGE_EXTENSIONS


def _listed(path: str, folder: Optional[str]) -> Optional[SourceItem]:
    """The item of a file a folder walk (``folder``) or a glob (None) found: None when it is no image; an error
    item when it is an unsupported format, not a regular file, or (walks only) a symlink out of ``folder``."""
    ext = os.path.splitext(path)[1].lower()
    if ext in REFUSED_EXTENSIONS:
        return SourceItem(source=path, error=f"unsupported format {ext}: {REFUSED_EXTENSIONS[ext]}")
    if not _is_image(path):
        return None
    if folder is not None and os.path.islink(path) and not inside(path, folder):
        return SourceItem(source=path, error=(
            f"photo {path} is a symlink to {os.path.realpath(path)}, outside the input folder {folder}: "
            "pass the target as an input, or copy the file"))
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = stat.S_IFREG  # a dangling link: the read stage reports it
    if not stat.S_ISREG(mode):
        return SourceItem(source=path, error=f"photo {path} is {file_kind(mode)}, not a regular file")
    return _file_item(path)


def _walk(folder: str) -> Iterator[SourceItem]:
    """Image files under ``folder``, recursively, in sorted order; unreadable folders, symlinked folders (not
    followed) and refused files become error items."""
    def on_error(exc: OSError) -> None:
        errors.append(SourceItem(source=str(exc.filename or folder), error=f"unreadable folder: {exc.strerror or exc}"))

    errors: list[SourceItem] = []
    for root, dirs, files in os.walk(folder, onerror=on_error, followlinks=False):
        dirs.sort()
        while errors:
            yield errors.pop()
        for name in dirs:
            path = os.path.join(root, name)
            if os.path.islink(path):
                yield SourceItem(source=path, error=(
                    f"symlinked folder {path} (-> {os.path.realpath(path)}) is not followed: pass its target as an input"))
        for name in sorted(files):
            item = _listed(os.path.join(root, name), folder)
            if item is not None:
                yield item
    yield from errors


def _scan(folder: str) -> tuple[list[str], Optional[str]]:
    """The ``.parquet`` files under ``folder`` (sorted) and the first photo found there, if any."""
    parquet, photo = [], None
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(".parquet"):
                parquet.append(os.path.join(root, name))
            elif photo is None and (_is_image(name) or os.path.splitext(name)[1].lower() in REFUSED_EXTENSIONS):
                photo = os.path.join(root, name)
    return sorted(parquet), photo


def _path_list(list_file: str) -> Iterator[SourceItem]:
    """Paths listed one per line (blank lines and # comments skipped), relative to the list's folder."""
    base = os.path.dirname(os.path.abspath(list_file))
    try:
        raw = open_regular(list_file, "path list")
    except InputFileError as exc:
        raise InputError(str(exc)) from None
    with io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as handle:
        number = 0
        while True:
            line = handle.readline(MAX_LIST_LINE + 2)
            number += 1
            if not line:
                return
            if len(line.rstrip("\r\n")) > MAX_LIST_LINE:
                raise InputError(f"line {number} of {list_file} is over {MAX_LIST_LINE} characters: not a list of paths")
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
    exif = {k: row[k] for k in EXIF_COLUMNS if row.get(k) is not None}
    source = path if (path and data is None) else f"{origin}#{index}"
    item = SourceItem(source=source, path=path if data is None else None, data=data, exif=exif)
    try:
        item.caption = check_caption(row.get(caption_column), f"caption of row {index}")
    except CaptionError as exc:
        item.error = str(exc)
    if data is None and not path:
        item.error = f"row {index} has no image in column '{image_column}'"
    return item


def _parquet_rows(paths: Sequence[str], image_column: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in paths:
        try:
            with open_regular(path, "Parquet file") as handle:
                parquet = pq.ParquetFile(handle)
                names = parquet.schema_arrow.names
                if image_column not in names:
                    raise InputError(f"{path} has no column '{image_column}' (columns: {', '.join(names)})")
                index = 0
                for batch in parquet.iter_batches(batch_size=64):
                    for row in batch.to_pylist():
                        yield path, index, row
                        index += 1
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"cannot read Parquet file {path} ({one_line(exc)}): is it complete?") from None


def _check_hub(name: str) -> None:
    """InputError within HUB_TIMEOUT_S when the Hub has no dataset ``name`` or cannot be reached; nothing
    to check offline (HF_HUB_OFFLINE=1), where `datasets` answers from its cache at once."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return
    try:
        HfApi().dataset_info(name, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise InputError(f"no dataset {name} on the Hugging Face Hub (a private one needs `hf auth login`)") from None
    except Exception as exc:  # noqa: BLE001 - network errors come from several libraries
        raise InputError(f"cannot reach the Hugging Face Hub for dataset {name} ({one_line(exc)}): check the "
                         "network, or set HF_HUB_OFFLINE=1 to use a cached copy") from None


def _dataset_rows(name: str, image_column: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Rows of a saved (``save_to_disk``) dataset folder or a hub dataset id, images undecoded; any failure to
    open or read it is one InputError line."""
    import datasets

    if not os.path.isdir(name):
        _check_hub(name)
    try:
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
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - `datasets` raises many types; the build needs one line
        raise InputError(f"cannot load dataset {name} ({type(exc).__name__}: {one_line(exc)})") from None


def _object_listing(entry: str) -> tuple[str, dict[str, dict[str, Any]], list[str]]:
    """(protocol, key -> listing info of every object near the input, the keys the input names, sorted) of an
    object-store input: a prefix (every key below it), a glob, or one object (its folder is listed for the
    sidecars). A missing or unreachable input is one InputError line."""
    url = location(entry)
    protocol = url.split("://", 1)[0]
    try:
        fs, key = remote_fs(url)
        cut = next((i for i, part in enumerate(key.split("/")) if any(ch in part for ch in "*?[")), None)
        if cut is not None:
            infos = fs.find("/".join(key.split("/")[:cut]), detail=True)
            named = sorted(k for k in fs.glob(key) if k in infos)
            if not named:
                raise InputError(f"no object matches {url}")
            return protocol, infos, named
        info = fs.info(key)
        if info.get("type") == "file":
            infos = {i["name"]: i for i in fs.ls(info["name"].rsplit("/", 1)[0], detail=True)}
            return protocol, infos, [info["name"]]
        infos = fs.find(key, detail=True)
        return protocol, infos, sorted(infos)
    except FileNotFoundError:
        raise InputError(f"input not found: {url}") from None
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - object-store clients raise many types; the build needs one line
        raise InputError(f"cannot list {url} ({type(exc).__name__}: {one_line(exc)})") from None


def _captions(protocol: str, waiting: list[tuple[SourceItem, str]]) -> None:
    """Fetch the caption objects of ``waiting`` (item, caption key) in one concurrent batch and set each item's
    caption, or its error when the caption is refused."""
    if not waiting:
        return
    fs, _ = remote_fs(f"{protocol}://{waiting[0][1]}")
    found = fs.cat([key for _, key in waiting], on_error="return", start=0, end=MAX_CAPTION_BYTES + 1)
    for item, key in waiting:
        url = f"{protocol}://{key}"
        data = found.get(key, FileNotFoundError(key))
        try:
            if isinstance(data, BaseException):
                raise CaptionError(f"caption {url} cannot be read: {one_line(data)}: fix or remove it")
            item.caption = check_caption(data, f"caption {url}")
        except CaptionError as exc:
            item.error = str(exc)


def _object_items(protocol: str, infos: dict[str, dict[str, Any]], named: list[str],
                  single: bool = False) -> Iterator[SourceItem]:
    """The items of the image objects among ``named`` (refused formats as error items; a ``single`` object the
    user named is taken whatever its ending: decoding decides), stamped from ``infos``, their ``<stem>.txt``
    captions read in batches of CAPTION_BATCH."""
    from .input_stamp import object_stamp

    batch: list[SourceItem] = []
    waiting: list[tuple[SourceItem, str]] = []
    for key in named:
        url = f"{protocol}://{key}"
        ext = os.path.splitext(key)[1].lower()
        if ext in REFUSED_EXTENSIONS and not single:
            batch.append(SourceItem(source=url, error=f"unsupported format {ext}: {REFUSED_EXTENSIONS[ext]}"))
        elif single or _is_image(key):
            item = SourceItem(source=url, path=url)
            item.stamp, item.sidecars = object_stamp(key, infos)
            caption = os.path.splitext(key)[0] + CAPTION_SUFFIX
            size = int(infos.get(caption, {}).get("size") or 0)
            if size > MAX_CAPTION_BYTES:
                item.error = (f"caption {protocol}://{caption} is {size:,} bytes, over the {MAX_CAPTION_BYTES:,}-byte "
                              "caption limit: shorten it")
            elif caption in infos:
                waiting.append((item, caption))
            batch.append(item)
        if len(batch) >= CAPTION_BATCH:
            _captions(protocol, waiting)
            yield from batch
            batch, waiting = [], []
    _captions(protocol, waiting)
    yield from batch


def _is_saved_dataset(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, f)) for f in ("dataset_dict.json", "state.json"))


def iter_sources(
    inputs: Sequence[str], *, image_column: str = "image", caption_column: str = "caption"
) -> Iterator[SourceItem]:
    """Source items of every input, in order. Folders are walked recursively for image files (a folder with
    photos and ``.parquet`` files is refused: which did the user mean?); glob patterns expand; ``.txt``/``.lst``
    files list paths; ``.parquet`` files (or folders of them), saved `datasets` folders and ``hf://ID`` hub
    datasets give one item per row. Files that are refused become items with an ``error``."""
    for raw in inputs:
        entry = str(raw)
        if entry.startswith(HF_PREFIXES):
            name = entry.split(":", 1)[1].lstrip("/")
            rows = _dataset_rows(name, image_column)
        elif is_remote(entry):
            if os.path.splitext(entry)[1].lower() in LIST_EXTENSIONS:
                raise InputError(f"{entry}: lists of paths are read from local files only; pass the photos' prefix "
                                 "or a glob")
            protocol, infos, named = _object_listing(entry)
            parquet_files = [f"{protocol}://{k}" for k in named if k.lower().endswith(".parquet")]
            photo = next((k for k in named if _is_image(k) or os.path.splitext(k)[1].lower() in REFUSED_EXTENSIONS),
                         None)
            if parquet_files and photo:
                raise InputError(
                    f"{entry} holds both photos ({protocol}://{photo}) and Parquet files ({parquet_files[0]}): pass "
                    "them as separate inputs (a prefix or glob of the photos, and the .parquet files)")
            if not parquet_files:
                single = len(named) == 1 and location(entry) == f"{protocol}://{named[0]}"
                yield from _object_items(protocol, infos, named, single)
                continue
            rows = _parquet_rows(parquet_files, image_column)
        elif any(ch in entry for ch in "*?["):
            matches = sorted(glob.iglob(entry, recursive=True))
            if not matches:
                raise InputError(f"no file matches {entry}")
            for match in matches:
                item = None if os.path.isdir(match) else _listed(match, None)
                if item is not None:
                    yield item
            continue
        elif os.path.isdir(entry):
            if _is_saved_dataset(entry):
                rows = _dataset_rows(entry, image_column)
            else:
                parquet_files, photo = _scan(entry)
                if parquet_files and photo:
                    raise InputError(
                        f"{entry} holds both photos ({photo}) and Parquet files ({parquet_files[0]}): pass them as "
                        "separate inputs (a folder or glob of the photos, and the .parquet files)")
                if not parquet_files:
                    yield from _walk(entry)
                    continue
                rows = _parquet_rows(parquet_files, image_column)
        elif os.path.lexists(entry):  # a file, or something the readers refuse with one line
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
