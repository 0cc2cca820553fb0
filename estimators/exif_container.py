"""Locate the EXIF TIFF block inside an image file without decoding any pixels.

JPEG: the first APP1 "Exif" segment, also when XMP or other segments come first and when the
file is truncated after its header; TIFF-based raw files are their own block; HEIF/HEIC/AVIF:
the "Exif" item located through the meta/iinf/iloc boxes (ISO/IEC 23008-12 and 14496-12), so no
decoder plug-in is needed; PNG eXIf and WebP EXIF chunks are cut out the same way (exifread
3.5.1 misreads a WebP EXIF chunk that lacks the "Exif\0\0" prefix, which the WebP spec does not
have).
"""
from __future__ import annotations

from typing import Optional

TIFF_MAGIC = (b"II*\x00", b"MM\x00*")


class BadValue(ValueError):
    """A field is present but unusable (bad tag value, truncated box or IFD); the message is the reason."""


def find_tiff_block(data: bytes) -> Optional[bytes]:
    """The EXIF TIFF structure (starting at its II*/MM* header), or None if none was found."""
    if data[:4] in TIFF_MAGIC:
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
            return chunk if chunk[:4] in TIFF_MAGIC else None
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
    raise BadValue(f"no {kind.decode()} box")


class _Cursor:
    """Big-endian field reader over data[pos:end] that raises BadValue when it runs out."""

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def uint(self, size: int) -> int:
        if self.pos + size > self.end:
            raise BadValue("ISOBMFF box truncated")
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
            raise BadValue(f"iloc construction method {method} not supported")
        item = b"".join(data[origin + offset : origin + offset + length] for offset, length in extents)
        tiff_at = 4 + int.from_bytes(item[:4], "big")  # exif_tiff_header_offset
    except BadValue:
        return None
    block = item[tiff_at:]
    if block[:4] not in TIFF_MAGIC and item[tiff_at : tiff_at + 6] == b"Exif\x00\x00":
        block = item[tiff_at + 6 :]
    return block if block[:4] in TIFF_MAGIC else None


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
    raise BadValue("no Exif item")


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
    raise BadValue("Exif item not in iloc")

