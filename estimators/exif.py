"""Camera EXIF for the thin-lens bokeh label: f-number, focal lengths, sensor scale, focus distance.

`read_exif` never raises. Every field it cannot give is None with a one-line reason in
`ExifInfo.missing`, so a dataset job can record why a photo fell back to the image-based estimate.

How the EXIF is found: the TIFF block is cut out of the container here (JPEG: the first APP1
"Exif" segment, also when XMP or other segments come first and when the file is truncated after
its header; TIFF-based raw files are their own block; HEIF/HEIC/AVIF: the "Exif" item located
through the meta/iinf/iloc boxes, so no pixel is decoded and no decoder plug-in is needed).
exifread then parses that block with ``details=False`` (1-3 ms; ``details=True`` costs up to
300 ms on Sony/Casio files because exifread walks their maker-note IFDs entry by entry). PNG
eXIf and WebP EXIF chunks are cut out the same way (exifread 3.5.1 misreads a WebP EXIF chunk
that lacks the "Exif\0\0" prefix, which the WebP spec does not have). Other containers go to
exifread whole; their maker notes are then not read.

Maker-note focus distance (DESIGN.md §1) is read by a small bounds-checked IFD walker in this
module, because exifread 3.5.1 does not expose it: it decodes Canon ShotInfo index 19 under the
name "SubjectDistance" but drops index 20 and the FileInfo record's 20/21, and it leaves Nikon
LensData, Sony 0x9402 and Olympus FocusInfo undecoded. Units and offsets, as documented by
ExifTool (Canon.pm, Nikon.pm, Sony.pm, Olympus.pm) and exiv2 (canonmn_int.cpp, sonymn_int.cpp):

- Canon FileInfo (0x0093) int16s [20]/[21] FocusDistanceUpper/Lower, and ShotInfo (0x0004)
  int16u [19]/[20] (ExifTool: FocusDistanceUpper/Lower; exiv2 and exifread call [19]
  "SubjectDistance"): centimetres, 0 = unknown, 0xFFFF = infinity. Both ExifTool ("$val / 100")
  and exiv2 ("value / 100.0 m") use cm for every model; no model with mm is documented in
  either, so cm is implemented throughout. FileInfo is preferred, then ShotInfo
  (darktable's order).
  Upper and lower bound a band; the estimate is its midpoint in dioptres,
  s = 2 / (1/lower + 1/upper), because defocus blur is linear in 1/distance (an infinite upper
  bound gives s = 2 * lower).
- Nikon LensData (0x0098) version "0101" (D50/D70/D70s), byte 9: s = 0.01 * 10**(raw/40) m.
  Versions 0201 and later are enciphered with the body serial number and shutter count;
  deciphering is not implemented, so those give a reason instead.
- Sony 0x9402 (bytes enciphered with c = b**3 mod 249), byte 0x2d FocusPosition2, not for
  DSC-/Stellar models: ExifTool's Composite FocusDistance2,
  s = (2**(pos/16 - 5) + 1) * FocalLengthIn35mmFormat / 1000 m, pos 255 = infinity.
- Olympus FocusInfo (0x2050) tag 0x0305 FocusDistance: numerator / 1000 m (the numerator is
  millimetres whatever the denominator), 0xFFFFFFFF = infinity.
"""
from __future__ import annotations

import io
import logging
import math
import os
import struct
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional

import exifread

from estimators.image_io import ImageSource

# exifread logs every oddity of a damaged file as a warning; they would flood dataset logs.
_EXIFREAD_LOGGER = logging.getLogger("exifread")
if _EXIFREAD_LOGGER.level == logging.NOTSET:
    _EXIFREAD_LOGGER.setLevel(logging.ERROR)

#: Largest file read whole (a 100 MP raw file is about 200 MB).
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_F_NUMBER = 128.0
MAX_FOCAL_MM = 5000.0
#: Beyond this a reported distance is treated as nonsense rather than as a real distance.
MAX_DISTANCE_M = 100_000.0
_INCH_MM = 25.4
#: FocalPlaneResolutionUnit -> millimetres per unit (EXIF 2.3: 2 inch, 3 cm; 4 mm and 5 um are
#: written by some raw converters). EXIF's default unit when the tag is absent is 2 (inch).
_PLANE_UNIT_MM = {2: _INCH_MM, 3: 10.0, 4: 1.0, 5: 0.001}
_NO_EXIF = "no EXIF"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
_ABSENT = "absent"


@dataclass
class ExifInfo:
    """EXIF values needed for a physical bokeh estimate; None fields are explained in `missing`."""

    make: Optional[str] = None
    model: Optional[str] = None
    lens_model: Optional[str] = None
    f_number: Optional[float] = None
    focal_length_mm: Optional[float] = None
    focal_length_35mm: Optional[float] = None
    focal_plane_px_per_mm: Optional[float] = None
    exif_image_width: Optional[int] = None
    exif_image_height: Optional[int] = None
    orientation: Optional[int] = None
    subject_distance_m: Optional[float] = None
    focus_distance_m: Optional[float] = None
    focus_distance_source: Optional[str] = None
    missing: dict[str, str] = field(default_factory=dict)
    #: Raw text of the tags the values came from (provenance), e.g. {"EXIF FNumber": "71/10"}.
    raw: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict; infinite distances become the string "inf" (JSON has no infinity)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and math.isinf(value):
                out[key] = "inf"
        return out


VALUE_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(ExifInfo) if f.name not in ("missing", "raw", "focus_distance_source")
)


class _Bad(ValueError):
    """A tag is present but its value is unusable; the message is the reason."""


def read_exif(source: ImageSource) -> ExifInfo:
    """Read the bokeh-relevant EXIF of a photo (path or bytes); never raises, see `missing`."""
    try:
        data = _read_bytes(source)
    except (OSError, ValueError, TypeError, MemoryError) as exc:
        return _all_missing(f"cannot read file: {_one_line(exc)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _parse(data)
    except Exception as exc:  # any damaged file must give a record, not a crash
        return _all_missing(f"EXIF unreadable: {type(exc).__name__}: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _all_missing(reason: str) -> ExifInfo:
    return ExifInfo(missing={name: reason for name in VALUE_FIELDS})


def _read_bytes(source: ImageSource) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    path = Path(os.fspath(source))
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{size:,} bytes is over the {MAX_FILE_BYTES:,} byte limit")
    return path.read_bytes()


# ---------------------------------------------------------------------------------------------
# Locating the TIFF block


def _tiff_block(data: bytes) -> Optional[bytes]:
    """The EXIF TIFF structure (starting at its II*/MM* header), or None if none was found."""
    if data[:4] in _TIFF_MAGIC:
        return data
    if data[:2] == b"\xff\xd8":
        return _jpeg_exif_block(data)
    if data[4:8] == b"ftyp":
        return _isobmff_exif_block(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _chunk_exif_block(data, 8, b"eXIf", big_endian=True)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _chunk_exif_block(data, 12, b"EXIF", big_endian=False)
    return None


def _chunk_exif_block(data: bytes, pos: int, kind: bytes, big_endian: bool) -> Optional[bytes]:
    """EXIF chunk of a PNG (length, type, data, CRC) or WebP/RIFF (type, length, data, pad)."""
    while pos + 8 <= len(data):
        if big_endian:
            length, found, body = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8], pos + 8
            following = body + length + 4
        else:
            found, length, body = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little"), pos + 8
            following = body + length + (length & 1)
        if found == kind:
            chunk = data[body : body + length]
            chunk = chunk[6:] if chunk[:6] == b"Exif\x00\x00" else chunk  # prefix written by some tools
            return chunk if chunk[:4] in _TIFF_MAGIC else None
        pos = following
    return None


def _jpeg_exif_block(data: bytes) -> Optional[bytes]:
    """Payload of the first APP1 "Exif" segment (after XMP or other APPn segments too)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length field
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no metadata after this
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return None
        payload = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and payload[:6] == b"Exif\x00\x00":
            return payload[6:]
        pos += 2 + length
    return None


def _boxes(data: bytes, start: int, end: int):
    """(type, payload start, payload end) of the ISOBMFF boxes in data[start:end]."""
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int]:
    for found, body, stop in _boxes(data, start, end):
        if found == kind:
            return body, stop
    raise _Bad(f"no {kind.decode()} box")


class _Cursor:
    """Big-endian field reader over data[pos:end] that raises _Bad when it runs out."""

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def uint(self, size: int) -> int:
        if self.pos + size > self.end:
            raise _Bad("ISOBMFF box truncated")
        value = int.from_bytes(self.data[self.pos : self.pos + size], "big")
        self.pos += size
        return value


def _isobmff_exif_block(data: bytes) -> Optional[bytes]:
    """EXIF of a HEIF/HEIC/AVIF file: the 'Exif' item found via meta/iinf and located via iloc
    (ISO/IEC 23008-12 and 14496-12), read without decoding any pixels."""
    try:
        meta, meta_end = _child(data, 0, len(data), b"meta")
        meta += 4  # FullBox version and flags
        item_id = _exif_item_id(data, *_child(data, meta, meta_end, b"iinf"))
        method, extents = _iloc_extents(data, *_child(data, meta, meta_end, b"iloc"), item_id)
        if method == 1:  # offsets into the meta box's idat
            origin = _child(data, meta, meta_end, b"idat")[0]
        elif method == 0:  # file offsets
            origin = 0
        else:
            raise _Bad(f"iloc construction method {method} not supported")
        item = b"".join(data[origin + offset : origin + offset + length] for offset, length in extents)
        tiff_at = 4 + int.from_bytes(item[:4], "big")  # exif_tiff_header_offset
    except _Bad:
        return None
    block = item[tiff_at:]
    if block[:4] not in _TIFF_MAGIC and item[tiff_at : tiff_at + 6] == b"Exif\x00\x00":
        block = item[tiff_at + 6 :]
    return block if block[:4] in _TIFF_MAGIC else None


def _exif_item_id(data: bytes, start: int, end: int) -> int:
    cursor = _Cursor(data, start, end)
    version = cursor.uint(1)
    cursor.uint(3)
    cursor.uint(2 if version == 0 else 4)  # entry count: the boxes themselves are walked
    for kind, body, stop in _boxes(data, cursor.pos, end):
        if kind != b"infe":
            continue
        infe = _Cursor(data, body, stop)
        infe_version = infe.uint(1)
        infe.uint(3)
        if infe_version < 2:
            continue
        item_id = infe.uint(2 if infe_version == 2 else 4)
        infe.uint(2)  # protection index
        if data[infe.pos : infe.pos + 4] == b"Exif":
            return item_id
    raise _Bad("no Exif item")


def _iloc_extents(data: bytes, start: int, end: int, wanted: int) -> tuple[int, list[tuple[int, int]]]:
    """(construction method, [(offset, length), ...]) of item `wanted` in an iloc box."""
    cursor = _Cursor(data, start, end)
    version = cursor.uint(1)
    cursor.uint(3)
    sizes = cursor.uint(1)
    offset_size, length_size = sizes >> 4, sizes & 15
    sizes = cursor.uint(1)
    base_size, index_size = sizes >> 4, (sizes & 15 if version in (1, 2) else 0)
    for _ in range(cursor.uint(2 if version < 2 else 4)):
        item_id = cursor.uint(2 if version < 2 else 4)
        method = cursor.uint(2) & 15 if version in (1, 2) else 0
        cursor.uint(2)  # data reference index
        base = cursor.uint(base_size)
        extents = []
        for _ in range(cursor.uint(2)):
            cursor.uint(index_size)
            offset = cursor.uint(offset_size)
            extents.append((base + offset, cursor.uint(length_size)))
        if item_id == wanted and extents:
            return method, extents
    raise _Bad("Exif item not in iloc")


def _exifread_tags(buf: bytes) -> dict:
    return exifread.process_file(io.BytesIO(buf), details=False, extract_thumbnail=False) or {}


# ---------------------------------------------------------------------------------------------
# Standard EXIF fields


def _parse(data: bytes) -> ExifInfo:
    if not data:
        return _all_missing(_NO_EXIF + " (empty file)")
    block = _tiff_block(data)
    tags = _exifread_tags(block if block is not None else data)
    if not tags:
        return _all_missing(_NO_EXIF)
    info = ExifInfo()
    _fill_standard(info, tags)
    _fill_subject_distance(info, tags, block)
    if block is None:
        info.missing["focus_distance_m"] = "maker note not read: EXIF found only by exifread"
    else:
        _fill_focus_distance(info, block)
    return info


def _fill_standard(info: ExifInfo, tags: dict) -> None:
    _set(info, tags, "make", ("Image Make",), _text)
    _set(info, tags, "model", ("Image Model",), _text)
    _set(info, tags, "lens_model", ("EXIF LensModel", "Image LensModel"), _text)
    _set(info, tags, "f_number", ("EXIF FNumber", "Image FNumber"),
         _ranged("f-number", 0.0, MAX_F_NUMBER))
    _set(info, tags, "focal_length_mm", ("EXIF FocalLength", "Image FocalLength"),
         _ranged("focal length", 0.0, MAX_FOCAL_MM, unit=" mm"))
    _set(info, tags, "focal_length_35mm", ("EXIF FocalLengthIn35mmFilm", "Image FocalLengthIn35mmFilm"),
         _ranged("35 mm equivalent focal length", 0.0, MAX_FOCAL_MM, unit=" mm", zero_unknown=True))
    _set(info, tags, "exif_image_width", ("EXIF ExifImageWidth",), _pixels)
    _set(info, tags, "exif_image_height", ("EXIF ExifImageLength",), _pixels)
    _set(info, tags, "orientation", ("Image Orientation",), _orientation)
    _fill_focal_plane(info, tags)


def _set(info: ExifInfo, tags: dict, name: str, keys: tuple[str, ...], convert: Callable) -> None:
    for key in keys:
        tag = tags.get(key)
        if tag is None:
            continue
        info.raw[key] = str(tag.printable)[:200]
        try:
            setattr(info, name, convert(tag.values))
        except _Bad as exc:
            info.missing[name] = str(exc)
        return
    info.missing[name] = _ABSENT


def _first(values) -> object:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
        raise _Bad(f"not a number: {str(values)[:40]!r}")
    return values[0]


def _rational_parts(value) -> tuple[float, int]:
    """(numerator, denominator) of an exifread number; floats are returned over 1."""
    if isinstance(value, tuple):  # exifread stores FLOAT/DOUBLE fields as struct.unpack tuples
        value = value[0] if value else None
    if isinstance(value, bool) or value is None:
        raise _Bad(f"not a number: {value!r}")
    if hasattr(value, "numerator") and hasattr(value, "denominator"):
        return int(value.numerator), int(value.denominator)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Bad(f"not a finite number: {value}")
        return value, 1
    raise _Bad(f"not a number: {value!r}")


def _number(values) -> float:
    num, den = _rational_parts(_first(values))
    if den == 0:
        raise _Bad("0/0 rational" if num == 0 else f"{num}/0 rational")
    return num / den


def _text(values) -> str:
    text = values.decode("utf-8", "replace") if isinstance(values, bytes) else str(values)
    text = " ".join(text.replace("\x00", " ").split())
    if not text:
        raise _Bad("empty")
    return text


def _ranged(what: str, low: float, high: float, unit: str = "", zero_unknown: bool = False) -> Callable:
    def convert(values) -> float:
        value = _number(values)
        if zero_unknown and value == 0:
            raise _Bad("0 = unknown")
        if value <= low:
            raise _Bad(f"{what} <= {low:g}{unit}")
        if value > high:
            raise _Bad(f"{what} > {high:g}{unit}")
        return float(value)

    return convert


def _pixels(values) -> int:
    value = _number(values)
    if value == 0:
        raise _Bad("0 = unknown")
    if value < 0 or value != int(value) or value > 1_000_000:
        raise _Bad(f"invalid pixel count {value:g}")
    return int(value)


def _orientation(values) -> int:
    value = _number(values)
    if value not in range(1, 9):
        raise _Bad(f"orientation {value:g} not in 1..8")
    return int(value)


def _fill_subject_distance(info: ExifInfo, tags: dict, block: Optional[bytes]) -> None:
    """EXIF SubjectDistance in metres: numerator 0xFFFFFFFF = infinity, 0 = unknown (EXIF 2.3).

    exifread hands over reduced fractions (3750/1000 becomes 15/4), which hides that numerator,
    so it is read back from the block at the tag's offset when the block is known."""
    name = "subject_distance_m"
    tag = tags.get("EXIF SubjectDistance")
    if tag is None:
        info.missing[name] = _ABSENT
        return
    info.raw["EXIF SubjectDistance"] = str(tag.printable)
    try:
        num, den = _rational_parts(_first(tag.values))
        raw_num = _raw_numerator(block, tag.field_offset) if tag.field_type in (5, 10) else None
        if den == 0:
            raise _Bad("0/0 rational" if num == 0 else f"{num}/0 rational")
        if (num if raw_num is None else raw_num) == 0xFFFFFFFF:
            info.subject_distance_m = math.inf
        elif num == 0:
            raise _Bad("0 = unknown")
        else:
            info.subject_distance_m = _distance(num / den)
    except _Bad as exc:
        info.missing[name] = str(exc)


def _raw_numerator(block: Optional[bytes], offset: int) -> Optional[int]:
    if block is None or not 0 <= offset <= len(block) - 4:
        return None
    return struct.unpack_from("<I" if block[:2] == b"II" else ">I", block, offset)[0]


def _distance(metres: float) -> float:
    if not metres > 0:
        raise _Bad(f"distance {metres:g} m <= 0")
    if metres > MAX_DISTANCE_M:
        raise _Bad(f"absurd distance {metres:g} m")
    return float(metres)


def _fill_focal_plane(info: ExifInfo, tags: dict) -> None:
    name = "focal_plane_px_per_mm"
    res_tag = tags.get("EXIF FocalPlaneXResolution")
    if res_tag is None:
        info.missing[name] = _ABSENT
        return
    unit_tag = tags.get("EXIF FocalPlaneResolutionUnit")
    info.raw["EXIF FocalPlaneXResolution"] = str(res_tag.printable)
    try:
        resolution = _number(res_tag.values)
        unit = 2 if unit_tag is None else int(_number(unit_tag.values))
        if unit_tag is not None:
            info.raw["EXIF FocalPlaneResolutionUnit"] = str(unit_tag.printable)
        if unit not in _PLANE_UNIT_MM:
            raise _Bad(f"unknown FocalPlaneResolutionUnit {unit}")
        px_per_mm = resolution / _PLANE_UNIT_MM[unit]
        # pixel pitch between 0.1 um and 1 mm: anything else is a writer bug
        if not 1.0 <= px_per_mm <= 10_000.0:
            raise _Bad(f"implausible focal plane resolution {px_per_mm:g} px/mm")
        info.focal_plane_px_per_mm = px_per_mm
    except _Bad as exc:
        info.missing[name] = str(exc)


# ---------------------------------------------------------------------------------------------
# A minimal TIFF IFD walker for maker notes (every read is bounds-checked)

_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_MAX_ENTRIES = 1000


@dataclass(frozen=True)
class _Entry:
    type: int
    count: int
    offset: int  # where the value bytes start in the reader's buffer


class _Tiff:
    """Reads IFDs of one byte order from a buffer; offsets in entries are relative to `base`."""

    def __init__(self, buf: bytes, little_endian: bool) -> None:
        self.buf = buf
        self.order = "<" if little_endian else ">"

    def unpack(self, fmt: str, offset: int) -> tuple:
        size = struct.calcsize(self.order + fmt)
        if offset < 0 or offset + size > len(self.buf):
            raise _Bad("maker note truncated")
        return struct.unpack_from(self.order + fmt, self.buf, offset)

    def ifd(self, start: int, base: int = 0) -> dict[int, _Entry]:
        (count,) = self.unpack("H", start)
        if count == 0 or count > _MAX_ENTRIES:
            raise _Bad(f"maker note IFD with {count} entries")
        entries: dict[int, _Entry] = {}
        for index in range(count):
            pos = start + 2 + 12 * index
            if pos + 12 > len(self.buf):
                break
            tag, typ, n = self.unpack("HHI", pos)
            size = _TYPE_SIZE.get(typ, 0) * n
            if size == 0:
                continue
            offset = pos + 8 if size <= 4 else base + self.unpack("I", pos + 8)[0]
            if offset + size <= len(self.buf):
                entries.setdefault(tag, _Entry(typ, n, offset))
        return entries

    def raw(self, entry: _Entry) -> bytes:
        return self.buf[entry.offset : entry.offset + entry.count * _TYPE_SIZE[entry.type]]

    def shorts(self, entry: _Entry) -> tuple[int, ...]:
        if entry.type not in (3, 8):
            raise _Bad(f"expected a 16-bit array, found TIFF type {entry.type}")
        return self.unpack(f"{entry.count}H", entry.offset)

    def u32(self, entry: _Entry) -> int:
        return self.unpack("I", entry.offset)[0]


def _header_tiff(buf: bytes, at: int) -> tuple[_Tiff, int]:
    """Reader for an embedded TIFF header at `at` (offsets relative to it) and its first IFD."""
    sub = buf[at:]
    if sub[:4] not in _TIFF_MAGIC:
        raise _Bad("maker note has no TIFF header")
    tiff = _Tiff(sub, sub[:2] == b"II")
    return tiff, tiff.unpack("I", 4)[0]


def _maker_note(block: bytes) -> tuple[_Tiff, int]:
    """(reader of the main block, maker-note offset) via IFD0 -> Exif IFD -> tag 0x927C."""
    tiff, ifd0 = _header_tiff(block, 0)
    exif_ptr = tiff.ifd(ifd0).get(0x8769)
    if exif_ptr is None:
        raise _Bad("no maker note (no Exif IFD)")
    note = tiff.ifd(tiff.u32(exif_ptr)).get(0x927C)
    if note is None:
        raise _Bad("no maker note")
    return tiff, note.offset


# ---------------------------------------------------------------------------------------------
# Maker-note focus distance per brand


def _fill_focus_distance(info: ExifInfo, block: bytes) -> None:
    name = "focus_distance_m"
    brand = _brand(info.make)
    reader = _FOCUS_READERS.get(brand)
    try:
        if reader is None:
            raise _Bad(f"no maker-note focus distance for make {info.make!r}" if info.make else "make absent")
        tiff, offset = _maker_note(block)
        value, source, raw = reader(tiff, offset, info)
    except _Bad as exc:
        info.missing[name] = str(exc)
        return
    info.raw[source] = raw
    try:
        info.focus_distance_m = value if math.isinf(value) else _distance(value)
        info.focus_distance_source = source
    except _Bad as exc:
        info.missing[name] = f"{exc} ({source})"


def _brand(make: Optional[str]) -> str:
    low = (make or "").lower()
    for brand in ("canon", "nikon", "sony", "olympus", "om digital"):
        if brand in low:
            return "olympus" if brand == "om digital" else brand
    return ""


def _dioptric_midpoint(upper_m: float, lower_m: float) -> float:
    """Focus estimate inside [lower, upper]: midpoint of 1/distance (blur is linear in it)."""
    inverse = (1.0 / upper_m + 1.0 / lower_m) / 2.0  # 1/inf == 0.0
    return math.inf if inverse == 0 else 1.0 / inverse


def _canon_band(upper: int, lower: Optional[int], infinity: int) -> float:
    """Metres from Canon's centimetre pair; `infinity` is the raw code for infinity."""
    up = math.inf if upper == infinity else upper / 100.0
    if lower is None or lower <= 0:
        return up
    low = math.inf if lower == infinity else lower / 100.0
    return _dioptric_midpoint(up, low)


def _canon(tiff: _Tiff, offset: int, info: ExifInfo) -> tuple[float, str, str]:
    entries = tiff.ifd(offset, base=0)  # Canon maker-note offsets count from the TIFF header
    if 0x0093 in entries:  # int16s in exiv2, where -1 (read here unsigned: 0xFFFF) is infinity
        file_info = tiff.shorts(entries[0x0093])
        if len(file_info) > 21 and file_info[20] != 0:
            upper, lower = file_info[20], file_info[21]
            value = _canon_band(upper, lower, 0xFFFF)
            return value, "makernote:canon.FileInfo.FocusDistanceUpper/Lower", f"{upper} {lower}"
    if 0x0004 not in entries:
        raise _Bad("Canon maker note without ShotInfo")
    shot = tiff.shorts(entries[0x0004])
    if len(shot) <= 19:
        raise _Bad(f"Canon ShotInfo too short ({len(shot)} values)")
    upper = shot[19]
    lower = shot[20] if len(shot) > 20 else None
    raw = f"{upper} {lower}"
    if upper == 0:
        raise _Bad(f"Canon ShotInfo FocusDistanceUpper is 0 = unknown (raw {raw})")
    return _canon_band(upper, lower, 0xFFFF), "makernote:canon.ShotInfo.FocusDistanceUpper/Lower", raw


def _nikon(tiff: _Tiff, offset: int, info: ExifInfo) -> tuple[float, str, str]:
    head = tiff.buf[offset : offset + 10]
    if head[:7] != b"Nikon\x00\x02":
        raise _Bad("Nikon maker note without LensData (not a type-2 note)")
    note, first = _header_tiff(tiff.buf, offset + 10)
    lens = note.ifd(first).get(0x0098)
    if lens is None:
        raise _Bad("Nikon maker note without LensData")
    data = note.raw(lens)
    version = data[:4].decode("ascii", "replace")
    if version != "0101":
        raise _Bad(f"Nikon LensData version {version!r} has no plain FocusDistance (0201+ is enciphered)")
    if len(data) < 10:
        raise _Bad("Nikon LensData truncated")
    raw = data[9]
    if raw == 0:
        raise _Bad("Nikon LensData FocusDistance is 0 = unknown")
    return 0.01 * 10 ** (raw / 40.0), "makernote:nikon.FocusDistance", str(raw)


def _sony_decipher_table() -> bytes:
    """Inverse of Sony's byte cipher c = b**3 mod 249 (bytes 249-255 are left as they are)."""
    table = bytearray(range(256))
    for plain in range(249):
        table[plain**3 % 249] = plain
    return bytes(table)


_SONY_DECIPHER = _sony_decipher_table()


def _sony(tiff: _Tiff, offset: int, info: ExifInfo) -> tuple[float, str, str]:
    head = tiff.buf[offset : offset + 12]
    if head[:4] == b"SONY":
        if head[:9] not in (b"SONY DSC ", b"SONY CAM "):
            raise _Bad(f"Sony maker note of kind {head[:12]!r} is not read")
        start = offset + 12
    else:
        start = offset
    model = info.model or ""
    if model.startswith(("DSC-", "Stellar")):
        raise _Bad(f"Sony {model} does not record FocusPosition2")
    entry = tiff.ifd(start, base=0).get(0x9402)
    if entry is None or entry.count <= 0x2D:
        raise _Bad("Sony maker note without tag 0x9402 (FocusPosition2)")
    position = _SONY_DECIPHER[tiff.raw(entry)[0x2D]]
    if position == 0:
        raise _Bad("Sony FocusPosition2 is 0 = unknown")
    if position >= 255:
        return math.inf, "makernote:sony.FocusDistance2", str(position)
    if info.focal_length_35mm is None:
        raise _Bad(f"Sony FocusPosition2 {position} needs FocalLengthIn35mmFilm, which is missing")
    distance = (2 ** (position / 16 - 5) + 1) * info.focal_length_35mm / 1000.0
    return distance, "makernote:sony.FocusDistance2", str(position)


def _olympus(tiff: _Tiff, offset: int, info: ExifInfo) -> tuple[float, str, str]:
    head = tiff.buf[offset : offset + 16]
    if head[:8] == b"OLYMPUS\x00":  # new style: offsets relative to the maker note
        note, start, base = _Tiff(tiff.buf[offset:], head[8:10] == b"II"), 12, 0
    elif head[:12] == b"OM SYSTEM\x00\x00\x00":
        note, start, base = _Tiff(tiff.buf[offset:], head[12:14] == b"II"), 16, 0
    elif head[:6] == b"OLYMP\x00":  # old style: offsets relative to the TIFF header
        note, start, base = tiff, offset + 8, 0
    else:
        raise _Bad(f"Olympus maker note of kind {head[:8]!r} is not read")
    focus_info = note.ifd(start, base).get(0x2050)
    if focus_info is None:
        raise _Bad("Olympus maker note without FocusInfo")
    sub_start = focus_info.offset if focus_info.type == 7 else base + note.u32(focus_info)
    distance = note.ifd(sub_start, base).get(0x0305)
    if distance is None or distance.type not in (4, 5) or distance.count * _TYPE_SIZE[distance.type] < 8:
        raise _Bad("Olympus FocusInfo without FocusDistance")
    numerator, denominator = note.unpack("II", distance.offset)
    raw = f"{numerator}/{denominator}"
    if numerator == 0xFFFFFFFF:
        return math.inf, "makernote:olympus.FocusDistance", raw
    if numerator == 0:
        raise _Bad(f"Olympus FocusDistance is 0 = unknown (raw {raw})")
    return numerator / 1000.0, "makernote:olympus.FocusDistance", raw


_FOCUS_READERS: dict[str, Callable[[_Tiff, int, ExifInfo], tuple[float, str, str]]] = {
    "canon": _canon,
    "nikon": _nikon,
    "sony": _sony,
    "olympus": _olympus,
}
