"""estimators.exif against real camera files (tests/data/photos, see SOURCES.md there), against the
independent exif_manifest.csv (made with exifread and Pillow), and against crafted EXIF blocks
whose expected values are worked out by hand from the published tag definitions."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import struct
import time
from pathlib import Path

import exifread
import pytest
from PIL import Image

from estimators.exif import VALUE_FIELDS, ExifInfo, read_exif

PHOTOS = Path(__file__).parent / "data" / "photos"
EXIF_DIR = PHOTOS / "exif"
ALL_FILES = sorted(p.name for p in EXIF_DIR.iterdir())
with open(PHOTOS / "exif_manifest.csv", newline="") as _fh:
    MANIFEST = [row for row in csv.DictReader(_fh) if row["file"].startswith("exif/")]

# exifread's printable Orientation strings -> EXIF values (EXIF 2.3, tag 0x0112)
ORIENTATION = {
    "Horizontal (normal)": 1,
    "Mirrored horizontal": 2,
    "Rotated 180": 3,
    "Mirrored vertical": 4,
    "Mirrored horizontal then rotated 90 CCW": 5,
    "Rotated 90 CW": 6,
    "Mirrored horizontal then rotated 90 CW": 7,
    "Rotated 90 CCW": 8,
}


def check_consistent(info: ExifInfo) -> None:
    """Every value field is either set or explained; the record serialises as strict JSON."""
    for name in VALUE_FIELDS:
        assert (getattr(info, name) is None) == (name in info.missing), (name, info)
    json.dumps(info.to_dict(), allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Real files


def test_data_copied_complete():
    assert len(ALL_FILES) == 31
    assert {row["file"][len("exif/"):] for row in MANIFEST} == set(ALL_FILES)


@pytest.mark.parametrize("name", ALL_FILES)
def test_every_file_parses(name):
    path = EXIF_DIR / name
    info = read_exif(path)
    check_consistent(info)
    assert read_exif(path.read_bytes()) == info  # bytes and path give the same record


def _blank(text: str) -> bool:
    return text.strip() == ""


@pytest.mark.parametrize("row", MANIFEST, ids=[r["file"] for r in MANIFEST])
def test_manifest_values(row):
    name = row["file"][len("exif/"):]
    info = read_exif(EXIF_DIR / name)
    if name == "no_exif.jpg":
        # exifread stops at this file's first APP1 segment (XMP) and reports nothing, hence the
        # empty manifest row. The second APP1 holds a Photoshop EXIF block, which we do read: no
        # camera fields, Orientation 1 and ExifImageWidth/Length equal to the pixel size.
        assert (info.orientation, info.exif_image_width, info.exif_image_height) == (1, 322, 466)
        assert (int(row["width"]), int(row["height"])) == (322, 466)
        for field in ("make", "model", "f_number", "focal_length_mm", "focus_distance_m"):
            assert getattr(info, field) is None
        assert info.missing["make"] == "absent" and info.missing["f_number"] == "absent"
        return

    for field in ("make", "model", "lens_model"):
        expected = " ".join(row[field].split()) or None
        assert getattr(info, field) == expected, field
    for field in ("f_number", "focal_length_mm", "focal_length_35mm"):
        if _blank(row[field]):
            assert getattr(info, field) is None and info.missing[field] in ("absent", "no EXIF"), field
        else:
            assert getattr(info, field) == pytest.approx(float(row[field]), rel=1e-9), field

    # SubjectDistance: the manifest holds the raw value; 4294967295 (0xFFFFFFFF) means infinity
    if _blank(row["subject_distance_m"]):
        assert info.subject_distance_m is None
    elif float(row["subject_distance_m"]) == 0xFFFFFFFF:
        assert info.subject_distance_m == math.inf
    else:
        assert info.subject_distance_m == pytest.approx(float(row["subject_distance_m"]))

    if _blank(row["orientation"]):
        assert info.orientation is None
    else:
        assert info.orientation == ORIENTATION[row["orientation"]]

    # ExifImageWidth: 0 (as written by the D300 here) means unknown
    if _blank(row["exif_image_width"]):
        assert info.exif_image_width is None
    elif float(row["exif_image_width"]) == 0:
        assert info.exif_image_width is None and info.missing["exif_image_width"] == "0 = unknown"
    else:
        assert info.exif_image_width == int(float(row["exif_image_width"]))

    # FocalPlaneXResolution in px per unit; all files here use unit 2 = inch = 25.4 mm
    if _blank(row["focal_plane_x_res"]):
        assert info.focal_plane_px_per_mm is None
    else:
        assert float(row["focal_plane_unit"]) == 2.0
        assert info.focal_plane_px_per_mm == pytest.approx(float(row["focal_plane_x_res"]) / 25.4)

    # Canon ShotInfo[19] (exifread's "MakerNote SubjectDistance"), in cm: ExifTool ShotInfo
    # FocusDistanceUpper "ValueConv $val / 100", exiv2 printSi0x0013 "value / 100.0 m".
    canon = row["canon_makernote_subject_distance"]
    if not _blank(canon):
        raw = int(float(canon))
        if raw == 0:
            assert info.focus_distance_m is None and "0 = unknown" in info.missing["focus_distance_m"]
        else:
            assert info.focus_distance_m == pytest.approx(raw / 100.0)
            assert info.focus_distance_source == "makernote:canon.ShotInfo.FocusDistanceUpper/Lower"


def test_file_without_exif():
    info = read_exif(EXIF_DIR / "invalid_image01551.jpg")  # JFIF + XMP only
    assert info.missing == {name: "no EXIF" for name in VALUE_FIELDS}


def test_heic_and_avif_exif_without_decoding_pixels():
    heic = read_exif(EXIF_DIR / "iphone_13_pro_max.heic")
    assert (heic.make, heic.model, heic.f_number, heic.focal_length_mm, heic.focal_length_35mm) == (
        "Apple", "iPhone 13 Pro Max", 1.5, 5.7, 26.0)
    # the stored tag (pillow-heif would hand over 1, having rotated the pixels itself)
    assert heic.orientation == 6
    avif = read_exif(EXIF_DIR / "olympus_epl8_mountains.avif")
    assert (avif.make, avif.model, avif.lens_model, avif.f_number, avif.focal_length_mm) == (
        "OLYMPUS CORPORATION", "E-PL8", "LEICA DG SUMMILUX 25/F1.4", 5.0, 25.0)


# ---------------------------------------------------------------------------------------------
# Maker-note focus distance on the real files, checked against independent decoders


def test_nikon_lensdata_focus_distance():
    data = (EXIF_DIR / "nikon_d70s_87_OSError.jpg").read_bytes()
    at = data.find(b"0101")  # LensData version "0101" (unenciphered), found by plain search
    assert data.count(b"0101") == 1 and data[at + 9] == 120
    info = read_exif(EXIF_DIR / "nikon_d70s_87_OSError.jpg")
    # ExifTool LensData01 byte 9 FocusDistance: 0.01 * 10**(raw/40) m -> 0.01 * 10**3 = 10 m
    assert info.focus_distance_m == pytest.approx(10.0)
    assert info.focus_distance_source == "makernote:nikon.FocusDistance"
    assert info.raw["makernote:nikon.FocusDistance"] == "120"
    assert info.subject_distance_m == math.inf  # the same file's EXIF SubjectDistance 0xFFFFFFFF/1


@pytest.mark.parametrize("name,version", [("nikon_D3100_TypeError.jpg", "0204"), ("nikon_d300_32-lens_data.jpeg", "0203")])
def test_nikon_enciphered_lensdata_is_explained(name, version):
    info = read_exif(EXIF_DIR / name)
    assert info.focus_distance_m is None
    assert version in info.missing["focus_distance_m"] and "enciphered" in info.missing["focus_distance_m"]


def test_sony_focus_distance2():
    path = EXIF_DIR / "Sony_alpha_a58_10px.JPG"
    with open(path, "rb") as fh:
        logging.getLogger("exifread").disabled = True
        try:
            tags = exifread.process_file(fh, details=True)  # exifread exposes 0x9402 undeciphered
        finally:
            logging.getLogger("exifread").disabled = False
    enciphered = tags["MakerNote Tag 0x9402"].values[0x2D]
    position = [b for b in range(249) if b**3 % 249 == enciphered]  # Sony cipher c = b**3 mod 249
    assert position == [197]
    info = read_exif(path)
    # ExifTool Composite FocusDistance2 = (2**(pos/16 - 5) + 1) * FocalLengthIn35mmFormat / 1000
    # = (2**7.3125 + 1) * 450 / 1000 = (158.96 + 1) * 0.45 = 71.98 m
    assert info.focal_length_35mm == 450
    assert info.focus_distance_m == pytest.approx((2 ** 7.3125 + 1) * 0.45)
    assert info.focus_distance_m == pytest.approx(71.98, abs=0.01)
    assert info.focus_distance_source == "makernote:sony.FocusDistance2"


def test_olympus_focus_distance_infinity():
    for name in ("olympus_ep3_42_IndexError.jpg", "olympus_epl8_mountains.avif"):
        data = (EXIF_DIR / name).read_bytes()
        assert data.count(bytes.fromhex("ffffffff0a000000")) == 1  # FocusDistance 0xFFFFFFFF/10 (II)
        info = read_exif(EXIF_DIR / name)
        # ExifTool FocusInfo 0x0305: numerator 0xFFFFFFFF = "inf"
        assert info.focus_distance_m == math.inf
        assert info.focus_distance_source == "makernote:olympus.FocusDistance"
        assert info.to_dict()["focus_distance_m"] == "inf"


@pytest.mark.parametrize("name,reason", [
    ("piexif_r_sony_rx1r.jpg", "does not record FocusPosition2"),
    ("Sony_DSLR-A200.jpg", "without tag 0x9402"),
    ("exiforg_nikon-e950.jpg", "not a type-2 note"),
    ("iphone6_hdr_NO.jpg", "no maker-note focus distance for make 'Apple'"),
    ("Canon_40D.jpg", "no maker note"),
])
def test_focus_distance_reasons(name, reason):
    info = read_exif(EXIF_DIR / name)
    assert info.focus_distance_m is None and reason in info.missing["focus_distance_m"]


# ---------------------------------------------------------------------------------------------
# Crafted EXIF: a small TIFF writer (independent of the reader under test)

LE = "<"
ASCII, SHORT, LONG, RATIONAL, UNDEFINED, SRATIONAL = 2, 3, 4, 5, 7, 10


def rational(num: int, den: int, e: str = LE) -> bytes:
    return struct.pack(e + "II", num, den)


def ifd(entries: list, start: int, e: str = LE) -> bytes:
    """An IFD at absolute offset `start` followed by its out-of-line values. A payload may be a
    function of its own absolute offset (maker notes whose pointers count from the header)."""
    entries = sorted(entries, key=lambda entry: entry[0])
    data_at = start + 2 + 12 * len(entries) + 4
    table, blobs = struct.pack(e + "H", len(entries)), b""
    for tag, typ, count, payload in entries:
        if callable(payload):
            payload = payload(data_at + len(blobs))
        if len(payload) <= 4:
            table += struct.pack(e + "HHI", tag, typ, count) + payload.ljust(4, b"\x00")
        else:
            table += struct.pack(e + "HHII", tag, typ, count, data_at + len(blobs))
            blobs += payload + b"\x00" * (len(payload) % 2)
    return table + b"\x00\x00\x00\x00" + blobs


def tiff(ifd0: list, exif: list = (), e: str = LE) -> bytes:
    header = (b"II*\x00" if e == "<" else b"MM\x00*") + struct.pack(e + "I", 8)
    if not exif:
        return header + ifd(ifd0, 8, e)
    first = ifd(ifd0 + [(0x8769, LONG, 1, struct.pack(e + "I", 0))], 8, e)
    pointer = struct.pack(e + "I", 8 + len(first))
    return header + ifd(ifd0 + [(0x8769, LONG, 1, pointer)], 8, e) + ifd(list(exif), 8 + len(first), e)


def text(value: str) -> tuple:
    raw = value.encode() + b"\x00"
    return ASCII, len(raw), raw


def jpeg_with(block: bytes, path: Path) -> Path:
    Image.new("RGB", (16, 16), (120, 60, 30)).save(path, "JPEG", exif=b"Exif\x00\x00" + block)
    return path


def camera(make: str, model: str, exif: list, e: str = LE) -> bytes:
    return tiff([(0x010F, *text(make)), (0x0110, *text(model))], exif, e)


@pytest.mark.parametrize("e", ["<", ">"])
def test_crafted_valid_values(tmp_path, e):
    block = tiff(
        [(0x010F, *text("Canon")), (0x0110, *text("Canon EOS 40D")), (0x0112, SHORT, 1, struct.pack(e + "H", 8))],
        [
            (0x829D, RATIONAL, 1, rational(28, 10, e)),  # FNumber 2.8
            (0x920A, RATIONAL, 1, rational(500, 10, e)),  # FocalLength 50 mm
            (0xA405, SHORT, 1, struct.pack(e + "H", 80)),  # 35 mm equivalent 80 mm
            (0x9206, RATIONAL, 1, rational(3750, 1000, e)),  # SubjectDistance 3.75 m
            (0xA20E, RATIONAL, 1, rational(1000, 1, e)),  # FocalPlaneXResolution 1000 px/cm
            (0xA210, SHORT, 1, struct.pack(e + "H", 3)),  # unit 3 = cm -> 100 px/mm
            (0xA002, LONG, 1, struct.pack(e + "I", 3000)),
            (0xA003, LONG, 1, struct.pack(e + "I", 2000)),
            (0xA434, *text("EF50mm f/1.8 II")),
        ],
        e,
    )
    info = read_exif(jpeg_with(block, tmp_path / "ok.jpg"))
    check_consistent(info)
    assert (info.make, info.model, info.lens_model, info.orientation) == ("Canon", "Canon EOS 40D", "EF50mm f/1.8 II", 8)
    assert (info.f_number, info.focal_length_mm, info.focal_length_35mm) == (2.8, 50.0, 80.0)
    assert info.subject_distance_m == 3.75  # 3750/1000, which exifread reduces to 15/4
    assert info.focal_plane_px_per_mm == pytest.approx(100.0)
    assert (info.exif_image_width, info.exif_image_height) == (3000, 2000)
    assert info.missing == {"focus_distance_m": "no maker note"}
    assert info.raw["EXIF FNumber"] == "14/5"


BROKEN = [
    ("f_number", (0x829D, RATIONAL, 1, rational(0, 0)), "0/0 rational"),
    ("f_number", (0x829D, RATIONAL, 1, rational(5, 0)), "5/0 rational"),
    ("f_number", (0x829D, RATIONAL, 1, rational(0, 1)), "f-number <= 0"),
    ("f_number", (0x829D, RATIONAL, 1, rational(200, 1)), "f-number > 128"),
    ("f_number", (0x829D, *text("f/2.8")), "not a number: 'f/2.8'"),
    ("focal_length_mm", (0x920A, SRATIONAL, 1, struct.pack("<ii", -50, 1)), "focal length <= 0 mm"),
    ("focal_length_mm", (0x920A, RATIONAL, 1, rational(0, 1)), "focal length <= 0 mm"),
    ("focal_length_mm", (0x920A, RATIONAL, 1, rational(6000, 1)), "focal length > 5000 mm"),
    ("focal_length_35mm", (0xA405, SHORT, 1, struct.pack("<H", 0)), "0 = unknown"),
    ("subject_distance_m", (0x9206, RATIONAL, 1, rational(0, 1)), "0 = unknown"),
    ("subject_distance_m", (0x9206, RATIONAL, 1, rational(0, 0)), "0/0 rational"),
    ("subject_distance_m", (0x9206, RATIONAL, 1, rational(500000, 1)), "absurd distance 500000 m"),
    ("exif_image_width", (0xA002, LONG, 1, struct.pack("<I", 0)), "0 = unknown"),
    ("focal_plane_px_per_mm", (0xA20E, RATIONAL, 1, rational(0, 0)), "0/0 rational"),
    ("focal_plane_px_per_mm", (0xA20E, RATIONAL, 1, rational(5, 1)), "implausible focal plane resolution"),
]


@pytest.mark.parametrize("field,entry,reason", BROKEN, ids=[f"{b[0]}:{b[2]}" for b in BROKEN])
def test_crafted_broken_values(tmp_path, field, entry, reason):
    info = read_exif(jpeg_with(camera("Canon", "Canon EOS 40D", [entry]), tmp_path / "bad.jpg"))
    check_consistent(info)
    assert getattr(info, field) is None
    assert info.missing[field].startswith(reason), info.missing[field]
    assert info.make == "Canon"  # the rest of the record survives


def test_crafted_ifd0_problems(tmp_path):
    block = tiff([(0x010F, *text("")), (0x0112, SHORT, 1, struct.pack("<H", 9))],
                 [(0xA20E, RATIONAL, 1, rational(300, 1)), (0xA210, SHORT, 1, struct.pack("<H", 7))])
    info = read_exif(jpeg_with(block, tmp_path / "ifd0.jpg"))
    assert info.missing["make"] == "empty"
    assert info.missing["orientation"] == "orientation 9 not in 1..8"
    assert info.missing["focal_plane_px_per_mm"] == "unknown FocalPlaneResolutionUnit 7"


@pytest.mark.parametrize("numerator,denominator", [(0xFFFFFFFF, 1), (0xFFFFFFFF, 100)])
def test_subject_distance_infinity(tmp_path, numerator, denominator):
    # EXIF 2.3: SubjectDistance numerator 0xFFFFFFFF = infinity, whatever the denominator
    info = read_exif(jpeg_with(camera("X", "Y", [(0x9206, RATIONAL, 1, rational(numerator, denominator))]), tmp_path / "a.jpg"))
    assert info.subject_distance_m == math.inf


def canon_note(shot: list[int] = None, file_info: list[int] = None):
    entries = []
    if shot is not None:
        entries.append((0x0004, SHORT, len(shot), struct.pack(f"<{len(shot)}H", *shot)))
    if file_info is not None:
        entries.append((0x0093, SHORT, len(file_info), struct.pack(f"<{len(file_info)}H", *file_info)))
    return lambda at: ifd(entries, at)  # Canon pointers count from the TIFF header


def shorts(length: int, **values: int) -> list[int]:
    out = [0] * length
    for index, value in values.items():
        out[int(index[1:])] = value
    return out


CANON_CASES = [
    # ShotInfo [19]/[20] = FocusDistanceUpper/Lower in cm; estimate 2/(1/upper + 1/lower)
    (canon_note(shot=shorts(21, i19=400, i20=200)), 2 / (1 / 4.0 + 1 / 2.0), "ShotInfo"),  # 2.667 m
    (canon_note(shot=shorts(21, i19=0xFFFF, i20=500)), 10.0, "ShotInfo"),  # upper inf: 2 * 5 m
    (canon_note(shot=shorts(21, i19=350)), 3.5, "ShotInfo"),  # lower 0 = unknown: upper alone
    (canon_note(shot=shorts(21, i19=0xFFFF, i20=0xFFFF)), math.inf, "ShotInfo"),
    # FileInfo [20]/[21] (exiv2 CanonFi 0x0014/0x0015, -1 = infinite) is preferred over ShotInfo
    (canon_note(shot=shorts(21, i19=999), file_info=shorts(22, i20=300, i21=300)), 3.0, "FileInfo"),
    (canon_note(shot=shorts(21, i19=999), file_info=shorts(22, i20=0xFFFF, i21=0xFFFF)), math.inf, "FileInfo"),
    (canon_note(shot=shorts(21, i19=120), file_info=shorts(22)), 1.2, "ShotInfo"),  # FileInfo 0 = unknown
]


@pytest.mark.parametrize("note,expected,record", CANON_CASES)
def test_crafted_canon_focus_distance(tmp_path, note, expected, record):
    block = camera("Canon", "Canon EOS 5D", [(0x927C, UNDEFINED, len(note(0)), note)])
    info = read_exif(jpeg_with(block, tmp_path / "canon.jpg"))
    assert info.focus_distance_m == pytest.approx(expected)
    assert info.focus_distance_source == f"makernote:canon.{record}.FocusDistanceUpper/Lower"


def nikon_note(lens_data: bytes) -> bytes:
    inner = b"II*\x00" + struct.pack("<I", 8) + ifd([(0x0098, UNDEFINED, len(lens_data), lens_data)], 8)
    return b"Nikon\x00\x02\x10\x00\x00" + inner  # pointers count from the embedded header


@pytest.mark.parametrize("lens_data,expected,reason", [
    (b"0101" + bytes([0, 0, 0, 0, 0, 80, 0, 0]), 1.0, None),  # 0.01 * 10**(80/40) = 1 m
    (b"0101" + bytes([0, 0, 0, 0, 0, 160, 0, 0]), 100.0, None),  # 0.01 * 10**4 = 100 m
    (b"0101" + bytes(8), None, "Nikon LensData FocusDistance is 0 = unknown"),
    (b"0204" + bytes(20), None, "Nikon LensData version '0204' has no plain FocusDistance"),
])
def test_crafted_nikon_focus_distance(tmp_path, lens_data, expected, reason):
    note = nikon_note(lens_data)
    info = read_exif(jpeg_with(camera("NIKON CORPORATION", "NIKON D70", [(0x927C, UNDEFINED, len(note), note)]), tmp_path / "n.jpg"))
    if expected is None:
        assert info.focus_distance_m is None and info.missing["focus_distance_m"].startswith(reason)
    else:
        assert info.focus_distance_m == pytest.approx(expected)


def sony_note(position: int):
    block = bytearray(64)
    block[0x2D] = position**3 % 249 if position < 249 else position  # Sony's byte cipher
    return lambda at: b"SONY DSC \x00\x00\x00" + ifd([(0x9402, UNDEFINED, 64, bytes(block))], at + 12)


@pytest.mark.parametrize("model,position,f35,expected", [
    ("ILCE-7M3", 144, 50, 0.85),  # (2**(144/16 - 5) + 1) * 50 / 1000 = 17 * 0.05
    ("ILCE-7M3", 112, 100, 0.5),  # (2**2 + 1) * 0.1
    ("ILCE-7M3", 255, 50, math.inf),
    ("DSC-RX100", 144, 50, None),  # DSC- models do not record FocusPosition2
])
def test_crafted_sony_focus_distance(tmp_path, model, position, f35, expected):
    note = sony_note(position)
    exif = [(0xA405, SHORT, 1, struct.pack("<H", f35)), (0x927C, UNDEFINED, len(note(0)), note)]
    info = read_exif(jpeg_with(camera("SONY", model, exif), tmp_path / "s.jpg"))
    if expected is None:
        assert info.focus_distance_m is None and "FocusPosition2" in info.missing["focus_distance_m"]
    else:
        assert info.focus_distance_m == pytest.approx(expected)


def olympus_note(numerator: int, denominator: int) -> bytes:
    placeholder = ifd([(0x2050, 13, 1, bytes(4))], 12)  # FocusInfo sub-IFD pointer (type IFD)
    sub_at = 12 + len(placeholder)
    main = ifd([(0x2050, 13, 1, struct.pack("<I", sub_at))], 12)
    sub = ifd([(0x0305, RATIONAL, 1, rational(numerator, denominator))], sub_at)
    return b"OLYMPUS\x00II\x03\x00" + main + sub  # pointers count from the maker note start


@pytest.mark.parametrize("numerator,denominator,expected", [
    (2500, 10, 2.5),  # ExifTool: the numerator is in mm whatever the denominator
    (800, 1, 0.8),
    (0xFFFFFFFF, 1, math.inf),
])
def test_crafted_olympus_focus_distance(tmp_path, numerator, denominator, expected):
    note = olympus_note(numerator, denominator)
    block = camera("OLYMPUS CORPORATION", "E-M1", [(0x927C, UNDEFINED, len(note), note)])
    info = read_exif(jpeg_with(block, tmp_path / "o.jpg"))
    assert info.focus_distance_m == pytest.approx(expected)
    assert info.focus_distance_source == "makernote:olympus.FocusDistance"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_other_containers(fmt):
    # PNG eXIf chunk, WebP EXIF chunk (Pillow writes it without the "Exif\0\0" prefix), TIFF IFDs
    buf = io.BytesIO()
    block = camera("Canon", "Canon EOS 40D", [(0x829D, RATIONAL, 1, rational(28, 10))])
    Image.new("RGB", (8, 8)).save(buf, fmt, exif=b"Exif\x00\x00" + block)
    info = read_exif(buf.getvalue())
    assert (info.make, info.model, info.f_number) == ("Canon", "Canon EOS 40D", 2.8)


def test_corrupt_maker_note_is_explained(tmp_path):
    note = b"\xff\xff" + bytes(30)  # an IFD claiming 65535 entries
    info = read_exif(jpeg_with(camera("Canon", "Canon EOS 5D", [(0x927C, UNDEFINED, len(note), note)]), tmp_path / "c.jpg"))
    assert info.focus_distance_m is None and "65535 entries" in info.missing["focus_distance_m"]
    assert info.make == "Canon"


# ---------------------------------------------------------------------------------------------
# Damaged input never raises


def test_empty_unreadable_and_non_image(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert set(read_exif(empty).missing.values()) == {"no EXIF (empty file)"}
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image at all\n" * 50)
    assert set(read_exif(text_file).missing.values()) == {"no EXIF"}
    for bad in (tmp_path / "does_not_exist.jpg", tmp_path):
        reasons = set(read_exif(bad).missing.values())
        assert len(reasons) == 1 and reasons.pop().startswith("cannot read file: ")
    assert set(read_exif(bytes(range(256)) * 40).missing.values()) == {"no EXIF"}


@pytest.mark.parametrize("name", ["canon_sd300_22-canon_tags.jpg", "nikon_d70s_87_OSError.jpg", "iphone_13_pro_max.heic"])
def test_truncated_files(name):
    data = (EXIF_DIR / name).read_bytes()
    for size in (1, 2, 4, 12, 100, 1000, 5000, len(data) // 2):
        check_consistent(read_exif(data[:size]))


def test_exif_intact_but_image_truncated():
    data = (EXIF_DIR / "canon_sd300_22-canon_tags.jpg").read_bytes()
    with pytest.raises(OSError):  # Pillow gives up before reaching the pixels...
        Image.open(io.BytesIO(data[:11300]))
    info = read_exif(data[:11300])  # ...but the EXIF segment is complete
    assert (info.model, info.focus_distance_m) == ("Canon PowerShot SD300", 1.0)


def test_exifread_logger_is_quiet(caplog):
    block = tiff([(0x010F, ASCII, 4, b"\xff\xfeA\x00")])  # Make that is not UTF-8
    logger = logging.getLogger("exifread")
    with caplog.at_level(logging.DEBUG):
        info = read_exif(block)
        assert not [r for r in caplog.records if r.name.startswith("exifread") and r.levelno >= logging.WARNING]
        level = logger.level
        logger.setLevel(logging.WARNING)  # proof that this input does make exifread warn
        try:
            read_exif(block)
        finally:
            logger.setLevel(level)
    assert any(r.name == "exifread" and "Possibly corrupted field Make" in r.getMessage() for r in caplog.records)
    assert info.make == "\ufffd\ufffdA"  # undecodable bytes replaced, the record still made


def test_read_is_fast():
    path = EXIF_DIR / "xiaomi_mi9t.jpg"  # 4.1 MB
    assert path.stat().st_size > 4_000_000
    best = min(_timed(path) for _ in range(3))
    assert best < 0.1, best


def _timed(path: Path) -> float:
    start = time.perf_counter()
    read_exif(path)
    return time.perf_counter() - start
