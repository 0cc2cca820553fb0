"""estimators.camera_sensors checked against what the cameras' own EXIF implies about their sensors
(35 mm equivalents, focal-plane resolution) in tests/data/photos/exif_manifest.csv."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from estimators.camera_sensors import _SENSOR_WIDTH_MM, normalise_camera, sensor_width_mm

with open(Path(__file__).parent / "data" / "photos" / "exif_manifest.csv", newline="") as _fh:
    ROWS = [row for row in csv.DictReader(_fh) if row["file"].startswith("exif/") and row["make"]]
FULL_FRAME_DIAGONAL = math.hypot(36, 24)

# Sensor aspect of each manifest camera (3:2 for SLR/ILC-type sensors, 4:3 for compacts and
# Four Thirds). Phones are left out: their table widths are derived from the same published
# 35 mm equivalent that their EXIF carries, so comparing the two would prove nothing.
ASPECT = {
    "NIKON D70": (3, 2), "NIKON D70s": (3, 2), "NIKON D3100": (3, 2), "NIKON D300": (3, 2),
    "DSLR-A200": (3, 2), "SLT-A58": (3, 2), "DSC-RX1R": (3, 2), "GR": (3, 2),
    "EX-M2": (4, 3), "EX-Z750": (4, 3), "QV-R51": (4, 3), "COOLPIX P6000": (4, 3), "DMC-L10": (4, 3),
}


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_every_manifest_camera_is_known(row):
    assert sensor_width_mm(row["make"], row["model"]) is not None


def test_widths_plausible():
    assert all(3.0 < width <= 36.0 for width in _SENSOR_WIDTH_MM.values())


@pytest.mark.parametrize("row", [r for r in ROWS if r["model"] in ASPECT], ids=lambda r: r["file"])
def test_width_agrees_with_35mm_equivalent(row):
    # crop = f35 / f; diagonal = 43.27 mm / crop; width = diagonal * a / sqrt(a^2 + b^2).
    # Makers round f35 to whole mm and often use a nominal 1.5x for APS-C (Nikon D3100:
    # 23.1 mm sensor, true crop 1.56, EXIF 85 -> 127 mm), hence 5 %.
    a, b = ASPECT[row["model"]]
    diagonal = FULL_FRAME_DIAGONAL * float(row["focal_length_mm"]) / float(row["focal_length_35mm"])
    from_exif = diagonal * a / math.hypot(a, b)
    assert sensor_width_mm(row["make"], row["model"]) == pytest.approx(from_exif, rel=0.05)


FOCAL_PLANE = [r for r in ROWS if r["focal_plane_x_res"] and float(r["exif_image_width"]) > 500]


@pytest.mark.parametrize("row", FOCAL_PLANE, ids=lambda r: r["file"])
def test_width_agrees_with_focal_plane_resolution(row):
    # Canon compacts write FocalPlaneXResolution (px per inch, unit 2) for the recorded image
    # width, so width = ExifImageWidth / resolution * 25.4 mm.
    assert float(row["focal_plane_unit"]) == 2
    from_exif = float(row["exif_image_width"]) / float(row["focal_plane_x_res"]) * 25.4
    assert sensor_width_mm(row["make"], row["model"]) == pytest.approx(from_exif, rel=0.02)


def test_focal_plane_resolution_is_wrong_on_resized_files():
    # Canon_40D.jpg was scaled to 100 px in GIMP without touching the focal-plane tags:
    # 100 px / (4438.36 px/inch) = 0.57 mm, nothing like the 40D's 22.2 mm (docs/design.md §1).
    row = next(r for r in ROWS if r["file"] == "exif/Canon_40D.jpg")
    from_exif = float(row["exif_image_width"]) / float(row["focal_plane_x_res"]) * 25.4
    assert from_exif == pytest.approx(0.572, abs=0.001)
    assert sensor_width_mm(row["make"], row["model"]) == 22.2


@pytest.mark.parametrize("make,model,expected", [
    ("NIKON CORPORATION", "NIKON D70s", 23.7),
    ("Nikon", "d70s", 23.7),
    ("  nikon corporation ", "  NIKON   D70S\x00", 23.7),
    ("Canon", "Canon Canon EOS 40D", 22.2),
    (None, "Canon EOS 40D", 22.2),
    ("Canon", "EOS 40D", 22.2),
    ("OLYMPUS CORPORATION", "E-M1MarkII", 17.3),
    ("OM Digital Solutions", "E-M1 Mark II", 17.3),
    ("RICOH IMAGING COMPANY, LTD.", "PENTAX K-3", 23.5),
    ("PENTAX RICOH IMAGING", "GR", 23.7),
    ("CASIO COMPUTER CO.,LTD.", "EX-M2   ", 7.18),
])
def test_name_variants(make, model, expected):
    assert sensor_width_mm(make, model) == expected


@pytest.mark.parametrize("make,model,expected", [
    ("Canon", "Canon EOS 5D Mark IV", 36.0),
    ("NIKON CORPORATION", "NIKON Z 6_2", 36.0),
    ("SONY", "ILCE-7M3", 36.0),
    ("Canon", "Canon EOS 80D", 22.3),
    ("NIKON CORPORATION", "NIKON D7500", 23.5),
    ("SONY", "ILCE-6000", 23.5),
    ("FUJIFILM", "X-T3", 23.5),
    ("Panasonic", "DC-GH5", 17.3),
    ("OLYMPUS CORPORATION", "E-M10MarkIII", 17.3),
    ("SONY", "DSC-RX100M3", 13.2),
    ("Canon", "Canon PowerShot G7 X Mark II", 13.2),
])
def test_format_classes(make, model, expected):
    assert sensor_width_mm(make, model) == expected


def test_phone_width_from_published_equivalent():
    # iPhone 13 Pro Max main camera: 5.7 mm sold as 26 mm. diagonal = 43.267 * 5.7 / 26 = 9.485 mm,
    # width of a 4:3 sensor = 0.8 * diagonal = 7.588 mm
    assert sensor_width_mm("Apple", "iPhone 13 Pro Max") == pytest.approx(7.59, abs=0.005)
    # Xiaomi Mi 9T, Sony IMX586 (1/2" type, 6.4 mm): 4.77 mm sold as 26 mm -> 6.35 mm
    assert sensor_width_mm("Xiaomi", "Mi 9T") == pytest.approx(6.4, rel=0.01)


@pytest.mark.parametrize("make,model", [(None, None), ("Canon", ""), ("Canon", None), ("Leica", "M10"),
                                        (None, "EOS 40D"), ("Canon", "Canon EOS 99Z")])
def test_unknown(make, model):
    assert sensor_width_mm(make, model) is None


def test_normalised_key():
    assert normalise_camera("NIKON CORPORATION", "NIKON D70s") == ("nikon", "d70s")
    assert normalise_camera("Canon", "Canon Canon EOS 40D") == ("canon", "eos40d")
