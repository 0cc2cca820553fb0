"""Maker-note focus distance (docs/design.md §1), read by a small bounds-checked TIFF IFD walker.

exifread 3.5.1 does not expose it: it decodes Canon ShotInfo index 19 under the
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

import math
import struct
from dataclasses import dataclass
from typing import Callable, Optional

from estimators.camera_sensors import camera_brand
from estimators.exif_container import TIFF_MAGIC, BadValue

#: (metres, source name, raw tag text) of one maker-note focus distance.
_Reading = tuple[float, str, str]

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
            raise BadValue("maker note truncated")
        return struct.unpack_from(self.order + fmt, self.buf, offset)

    def ifd(self, start: int, base: int = 0) -> dict[int, _Entry]:
        (count,) = self.unpack("H", start)
        if count == 0 or count > _MAX_ENTRIES:
            raise BadValue(f"maker note IFD with {count} entries")
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
            raise BadValue(f"expected a 16-bit array, found TIFF type {entry.type}")
        return self.unpack(f"{entry.count}H", entry.offset)

    def u32(self, entry: _Entry) -> int:
        return self.unpack("I", entry.offset)[0]


def _header_tiff(buf: bytes, at: int) -> tuple[_Tiff, int]:
    """Reader for an embedded TIFF header at `at` (offsets relative to it) and its first IFD."""
    sub = buf[at:]
    if sub[:4] not in TIFF_MAGIC:
        raise BadValue("maker note has no TIFF header")
    tiff = _Tiff(sub, sub[:2] == b"II")
    return tiff, tiff.unpack("I", 4)[0]


def _maker_note(block: bytes) -> tuple[_Tiff, int]:
    """(reader of the main block, maker-note offset) via IFD0 -> Exif IFD -> tag 0x927C."""
    tiff, ifd0 = _header_tiff(block, 0)
    exif_ptr = tiff.ifd(ifd0).get(0x8769)
    if exif_ptr is None:
        raise BadValue("no maker note (no Exif IFD)")
    note = tiff.ifd(tiff.u32(exif_ptr)).get(0x927C)
    if note is None:
        raise BadValue("no maker note")
    return tiff, note.offset


# ---------------------------------------------------------------------------------------------
# Maker-note focus distance per brand


def maker_note_focus_distance(
    block: bytes, make: Optional[str], model: Optional[str], focal_length_35mm: Optional[float]
) -> _Reading:
    """(metres, source, raw tag text) of the maker-note focus distance in an EXIF TIFF block.

    Raises BadValue with a one-line reason when the make is not covered or the note has none."""
    reader = _FOCUS_READERS.get(camera_brand(make or ""))
    if reader is None:
        raise BadValue(f"no maker-note focus distance for make {make!r}" if make else "make absent")
    tiff, offset = _maker_note(block)
    return reader(tiff, offset, model, focal_length_35mm)


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


def _canon(tiff: _Tiff, offset: int, model: Optional[str], focal_35mm: Optional[float]) -> _Reading:
    entries = tiff.ifd(offset, base=0)  # Canon maker-note offsets count from the TIFF header
    if 0x0093 in entries:  # int16s in exiv2, where -1 (read here unsigned: 0xFFFF) is infinity
        file_info = tiff.shorts(entries[0x0093])
        if len(file_info) > 21 and file_info[20] != 0:
            upper, lower = file_info[20], file_info[21]
            value = _canon_band(upper, lower, 0xFFFF)
            return value, "makernote:canon.FileInfo.FocusDistanceUpper/Lower", f"{upper} {lower}"
    if 0x0004 not in entries:
        raise BadValue("Canon maker note without ShotInfo")
    shot = tiff.shorts(entries[0x0004])
    if len(shot) <= 19:
        raise BadValue(f"Canon ShotInfo too short ({len(shot)} values)")
    upper = shot[19]
    lower = shot[20] if len(shot) > 20 else None
    raw = f"{upper} {lower}"
    if upper == 0:
        raise BadValue(f"Canon ShotInfo FocusDistanceUpper is 0 = unknown (raw {raw})")
    return _canon_band(upper, lower, 0xFFFF), "makernote:canon.ShotInfo.FocusDistanceUpper/Lower", raw


def _nikon(tiff: _Tiff, offset: int, model: Optional[str], focal_35mm: Optional[float]) -> _Reading:
    head = tiff.buf[offset : offset + 10]
    if head[:7] != b"Nikon\x00\x02":
        raise BadValue("Nikon maker note without LensData (not a type-2 note)")
    note, first = _header_tiff(tiff.buf, offset + 10)
    lens = note.ifd(first).get(0x0098)
    if lens is None:
        raise BadValue("Nikon maker note without LensData")
    data = note.raw(lens)
    version = data[:4].decode("ascii", "replace")
    if version != "0101":
        raise BadValue(f"Nikon LensData version {version!r} has no plain FocusDistance (0201+ is enciphered)")
    if len(data) < 10:
        raise BadValue("Nikon LensData truncated")
    raw = data[9]
    if raw == 0:
        raise BadValue("Nikon LensData FocusDistance is 0 = unknown")
    return 0.01 * 10 ** (raw / 40.0), "makernote:nikon.FocusDistance", str(raw)


def _sony_decipher_table() -> bytes:
    """Inverse of Sony's byte cipher c = b**3 mod 249 (bytes 249-255 are left as they are)."""
    table = bytearray(range(256))
    for plain in range(249):
        table[plain**3 % 249] = plain
    return bytes(table)


_SONY_DECIPHER = _sony_decipher_table()


def _sony(tiff: _Tiff, offset: int, model: Optional[str], focal_35mm: Optional[float]) -> _Reading:
    head = tiff.buf[offset : offset + 12]
    if head[:4] == b"SONY":
        if head[:9] not in (b"SONY DSC ", b"SONY CAM "):
            raise BadValue(f"Sony maker note of kind {head[:12]!r} is not read")
        start = offset + 12
    else:
        start = offset
    model = model or ""
    if model.startswith(("DSC-", "Stellar")):
        raise BadValue(f"Sony {model} does not record FocusPosition2")
    entry = tiff.ifd(start, base=0).get(0x9402)
    if entry is None or entry.count <= 0x2D:
        raise BadValue("Sony maker note without tag 0x9402 (FocusPosition2)")
    position = _SONY_DECIPHER[tiff.raw(entry)[0x2D]]
    if position == 0:
        raise BadValue("Sony FocusPosition2 is 0 = unknown")
    if position >= 255:
        return math.inf, "makernote:sony.FocusDistance2", str(position)
    if focal_35mm is None:
        raise BadValue(f"Sony FocusPosition2 {position} needs FocalLengthIn35mmFilm, which is missing")
    distance = (2 ** (position / 16 - 5) + 1) * focal_35mm / 1000.0
    return distance, "makernote:sony.FocusDistance2", str(position)


def _olympus(tiff: _Tiff, offset: int, model: Optional[str], focal_35mm: Optional[float]) -> _Reading:
    head = tiff.buf[offset : offset + 16]
    if head[:8] == b"OLYMPUS\x00":  # new style: offsets relative to the maker note
        note, start, base = _Tiff(tiff.buf[offset:], head[8:10] == b"II"), 12, 0
    elif head[:12] == b"OM SYSTEM\x00\x00\x00":
        note, start, base = _Tiff(tiff.buf[offset:], head[12:14] == b"II"), 16, 0
    elif head[:6] == b"OLYMP\x00":  # old style: offsets relative to the TIFF header
        note, start, base = tiff, offset + 8, 0
    else:
        raise BadValue(f"Olympus maker note of kind {head[:8]!r} is not read")
    focus_info = note.ifd(start, base).get(0x2050)
    if focus_info is None:
        raise BadValue("Olympus maker note without FocusInfo")
    sub_start = focus_info.offset if focus_info.type == 7 else base + note.u32(focus_info)
    distance = note.ifd(sub_start, base).get(0x0305)
    if distance is None or distance.type not in (4, 5) or distance.count * _TYPE_SIZE[distance.type] < 8:
        raise BadValue("Olympus FocusInfo without FocusDistance")
    numerator, denominator = note.unpack("II", distance.offset)
    raw = f"{numerator}/{denominator}"
    if numerator == 0xFFFFFFFF:
        return math.inf, "makernote:olympus.FocusDistance", raw
    if numerator == 0:
        raise BadValue(f"Olympus FocusDistance is 0 = unknown (raw {raw})")
    return numerator / 1000.0, "makernote:olympus.FocusDistance", raw


_FOCUS_READERS: dict[str, Callable[[_Tiff, int, Optional[str], Optional[float]], _Reading]] = {
    "canon": _canon,
    "nikon": _nikon,
    "sony": _sony,
    "olympus": _olympus,
}
