"""Camera EXIF for the thin-lens bokeh label: f-number, focal lengths, sensor scale, focus distance.

`read_exif` never raises. Every field it cannot give is None with a one-line reason in
`ExifInfo.missing`, so a dataset job can record why a photo fell back to the image-based estimate.

The TIFF block is cut out of the container by `estimators.exif_container` (no pixel is decoded).
exifread then parses that block with ``details=False`` (``details=True`` is slow on Sony/Casio files
because exifread walks their maker-note IFDs entry by entry). Other
containers go to exifread whole; their maker notes are then not read. The maker-note focus
distance, which exifread 3.5.1 does not expose, comes from `estimators.makernotes`.
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

from estimators.exif_container import BadValue, find_tiff_block
from estimators.image_io import ImageSource
from estimators.input_files import read_regular
from estimators.makernotes import maker_note_focus_distance

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
    return read_regular(Path(os.fspath(source)), MAX_FILE_BYTES, "photo")


# ---------------------------------------------------------------------------------------------
# Standard EXIF fields


def _exifread_tags(buf: bytes) -> dict:
    return exifread.process_file(io.BytesIO(buf), details=False, extract_thumbnail=False) or {}


def _parse(data: bytes) -> ExifInfo:
    if not data:
        return _all_missing(_NO_EXIF + " (empty file)")
    block = find_tiff_block(data)
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
        except BadValue as exc:
            info.missing[name] = str(exc)
        return
    info.missing[name] = _ABSENT


def _first(values) -> object:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
        raise BadValue(f"not a number: {str(values)[:40]!r}")
    return values[0]


def _rational_parts(value) -> tuple[float, int]:
    """(numerator, denominator) of an exifread number; floats are returned over 1."""
    if isinstance(value, tuple):  # exifread stores FLOAT/DOUBLE fields as struct.unpack tuples
        value = value[0] if value else None
    if isinstance(value, bool) or value is None:
        raise BadValue(f"not a number: {value!r}")
    if hasattr(value, "numerator") and hasattr(value, "denominator"):
        return int(value.numerator), int(value.denominator)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadValue(f"not a finite number: {value}")
        return value, 1
    raise BadValue(f"not a number: {value!r}")


def _number(values) -> float:
    num, den = _rational_parts(_first(values))
    if den == 0:
        raise BadValue("0/0 rational" if num == 0 else f"{num}/0 rational")
    return num / den


def _text(values) -> str:
    text = values.decode("utf-8", "replace") if isinstance(values, bytes) else str(values)
    text = " ".join(text.replace("\x00", " ").split())
    if not text:
        raise BadValue("empty")
    return text


def _ranged(what: str, low: float, high: float, unit: str = "", zero_unknown: bool = False) -> Callable:
    def convert(values) -> float:
        value = _number(values)
        if zero_unknown and value == 0:
            raise BadValue("0 = unknown")
        if value <= low:
            raise BadValue(f"{what} <= {low:g}{unit}")
        if value > high:
            raise BadValue(f"{what} > {high:g}{unit}")
        return float(value)

    return convert


def _pixels(values) -> int:
    value = _number(values)
    if value == 0:
        raise BadValue("0 = unknown")
    if value < 0 or value != int(value) or value > 1_000_000:
        raise BadValue(f"invalid pixel count {value:g}")
    return int(value)


def _orientation(values) -> int:
    value = _number(values)
    if value not in range(1, 9):
        raise BadValue(f"orientation {value:g} not in 1..8")
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
            raise BadValue("0/0 rational" if num == 0 else f"{num}/0 rational")
        if (num if raw_num is None else raw_num) == 0xFFFFFFFF:
            info.subject_distance_m = math.inf
        elif num == 0:
            raise BadValue("0 = unknown")
        else:
            info.subject_distance_m = _distance(num / den)
    except BadValue as exc:
        info.missing[name] = str(exc)


def _raw_numerator(block: Optional[bytes], offset: int) -> Optional[int]:
    if block is None or not 0 <= offset <= len(block) - 4:
        return None
    return struct.unpack_from("<I" if block[:2] == b"II" else ">I", block, offset)[0]


def _distance(metres: float) -> float:
    if not metres > 0:
        raise BadValue(f"distance {metres:g} m <= 0")
    if metres > MAX_DISTANCE_M:
        raise BadValue(f"absurd distance {metres:g} m")
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
            raise BadValue(f"unknown FocalPlaneResolutionUnit {unit}")
        px_per_mm = resolution / _PLANE_UNIT_MM[unit]
        # pixel pitch between 0.1 um and 1 mm: anything else is a writer bug
        if not 1.0 <= px_per_mm <= 10_000.0:
            raise BadValue(f"implausible focal plane resolution {px_per_mm:g} px/mm")
        info.focal_plane_px_per_mm = px_per_mm
    except BadValue as exc:
        info.missing[name] = str(exc)


def _fill_focus_distance(info: ExifInfo, block: bytes) -> None:
    name = "focus_distance_m"
    try:
        value, source, raw = maker_note_focus_distance(block, info.make, info.model, info.focal_length_35mm)
    except BadValue as exc:
        info.missing[name] = str(exc)
        return
    info.raw[source] = raw
    try:
        info.focus_distance_m = value if math.isinf(value) else _distance(value)
        info.focus_distance_source = source
    except BadValue as exc:
        info.missing[name] = f"{exc} ({source})"
