"""Makers of small hostile input files for the bad-input tests (no tests here)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np


def png_header_only(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A PNG whose IHDR claims width x height (colour type 2 = RGB, 0 = grey) over a tiny stub of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def npy_header(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    """A version 1.0 .npy header for ``shape`` (no data), as numpy.save writes it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def sparse_file(path: Path, head: bytes, size: int) -> None:
    """``head`` followed by a hole up to ``size`` bytes: large to stat, a few KB on disk."""
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)
