"""Sensor width (mm) by camera make and model: the fallback when EXIF has no 35 mm equivalent.

docs/design.md §1 takes the sensor width from FocalLengthIn35mmFilm first, then from this table, then
from FocalPlaneXResolution. Where the numbers come from:

- Format classes: nominal widths of the sensor formats (35 mm film gate 36 x 24 mm; Canon APS-C
  22.3 x 14.9; Nikon DX / Sony / Pentax APS-C 23.5 x 15.6; Four Thirds 17.3 x 13.0; 1-inch type
  13.2 x 8.8; the "1/x-inch" compact types with their conventional active areas). A camera
  listed under a class is within about 2 % of its nominal width (e.g. Nikon DX bodies 23.1-23.7 mm).
- Model entries with their own number: the manufacturer's specification sheet of that model
  (e.g. Canon EOS 40D 22.2 x 14.8 mm, Nikon D70 23.7 x 15.6 mm, Sony DSC-RX1R 35.8 x 23.9 mm,
  Canon PowerShot G1 X Mark II 18.7 x 14.0 mm).
- Phones: makers publish the lens focal length and its 35 mm equivalent, not the sensor size,
  so the width is derived from those two published numbers for a 4:3 sensor:
  diagonal = 43.27 mm * f / f35, width = diagonal * 4/5 (see `_phone`).
"""
from __future__ import annotations

import math
from typing import Optional

FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # 43.27 mm

# Nominal widths of the common formats (mm).
FULL_FRAME = 36.0
APS_C_CANON = 22.3
APS_C = 23.5
FOUR_THIRDS = 17.3
ONE_INCH = 13.2
TYPE_1_1_7 = 7.44  # 1/1.7"
TYPE_1_1_8 = 7.18  # 1/1.8"
TYPE_1_2 = 6.40  # 1/2"
TYPE_1_2_3 = 6.17  # 1/2.3"
TYPE_1_2_5 = 5.76  # 1/2.5"
TYPE_1_2_7 = 5.27  # 1/2.7"


def _phone(focal_mm: float, equivalent_mm: float) -> float:
    """Width of a 4:3 sensor whose lens of `focal_mm` is sold as `equivalent_mm` (35 mm equiv.)."""
    return round(FULL_FRAME_DIAGONAL_MM * focal_mm / equivalent_mm * 4.0 / 5.0, 2)


# Make as written in EXIF -> brand key (first match wins, so longer names come first).
_BRANDS = (
    ("om digital", "olympus"),
    ("olympus", "olympus"),
    ("nikon", "nikon"),
    ("canon", "canon"),
    ("sony", "sony"),
    ("panasonic", "panasonic"),
    ("fujifilm", "fujifilm"),
    ("pentax", "pentax"),
    ("ricoh", "pentax"),  # Ricoh owns Pentax: both write "RICOH IMAGING" or "PENTAX RICOH IMAGING"
    ("casio", "casio"),
    ("apple", "apple"),
    ("xiaomi", "xiaomi"),
)

_WIDTHS: dict[tuple[str, str], float] = {  # (brand, model as in EXIF without the brand)
    # --- Canon: full frame
    **{("canon", m): FULL_FRAME for m in (
        "eos 5d mark ii", "eos 5d mark iii", "eos 5d mark iv", "eos 5ds", "eos 5ds r",
        "eos-1d x", "eos-1d x mark ii", "eos r", "eos r5", "eos r6", "eos r6 mark ii", "eos rp",
        "eos 6d", "eos 6d mark ii", "eos 5d")},
    # --- Canon: APS-C
    ("canon", "eos 40d"): 22.2,  # Canon spec 22.2 x 14.8 mm
    **{("canon", m): APS_C_CANON for m in (
        "eos 7d", "eos 7d mark ii", "eos 60d", "eos 70d", "eos 77d", "eos 80d", "eos 90d",
        "eos 600d", "eos rebel t3i", "eos kiss x5", "eos 700d", "eos rebel t5i", "eos 750d",
        "eos rebel t6i", "eos 800d", "eos rebel t7i", "eos 200d", "eos rebel sl2", "eos 250d",
        "eos m50", "eos m6", "eos m6 mark ii", "eos r7", "eos r10", "eos r50", "eos 2000d",
        "eos rebel t7", "eos 4000d", "eos 1300d", "eos rebel t6")},
    # --- Canon compacts
    ("canon", "powershot g1 x mark ii"): 18.7,  # Canon spec 1.5-type 18.7 x 14.0 mm
    **{("canon", m): ONE_INCH for m in (
        "powershot g7 x", "powershot g7 x mark ii", "powershot g7 x mark iii", "powershot g5 x",
        "powershot g9 x", "powershot g9 x mark ii")},
    **{("canon", m): TYPE_1_1_8 for m in (
        "powershot s40", "powershot s400", "digital ixus 400", "ixy digital 400")},  # 1/1.8" CCD
    **{("canon", m): TYPE_1_2_5 for m in (
        "powershot sd300", "digital ixus 40", "ixy digital 50")},  # one camera, three names; 1/2.5"
    **{("canon", m): TYPE_1_2_7 for m in (
        "digital ixus", "powershot s100", "ixy digital")},  # 2000 Digital ELPH, 1/2.7"
    **{("canon", m): TYPE_1_2_3 for m in ("powershot sx60 hs", "powershot sx70 hs")},  # 1/2.3"
    # --- Nikon
    ("nikon", "d70"): 23.7,  # Nikon spec 23.7 x 15.6 mm
    ("nikon", "d70s"): 23.7,  # Nikon spec 23.7 x 15.6 mm
    ("nikon", "d50"): 23.7,  # Nikon spec 23.7 x 15.6 mm
    ("nikon", "d3100"): 23.1,  # Nikon spec 23.1 x 15.4 mm
    ("nikon", "d300"): 23.6,  # Nikon spec 23.6 x 15.8 mm
    ("nikon", "d300s"): 23.6,  # Nikon spec 23.6 x 15.8 mm
    **{("nikon", m): APS_C for m in (
        "d3200", "d3300", "d3400", "d3500", "d5100", "d5200", "d5300", "d5500", "d5600",
        "d7000", "d7100", "d7200", "d7500", "d500", "z 50", "z fc", "z 30")},
    **{("nikon", m): FULL_FRAME for m in (
        "d3", "d700", "d600", "d610", "d750", "d780", "d800", "d800e", "d810", "d850", "d4", "d5",
        "d6", "df", "z 5", "z 6", "z 6_2", "z 7", "z 7_2", "z 8", "z 9", "z f")},
    ("nikon", "e950"): TYPE_1_2,  # Coolpix 950, 1/2" CCD
    ("nikon", "coolpix p6000"): TYPE_1_1_7,  # 1/1.7" CCD
    # --- Sony
    ("sony", "dslr-a200"): 23.6,  # Sony spec 23.6 x 15.8 mm
    ("sony", "slt-a58"): 23.2,  # Sony spec 23.2 x 15.4 mm
    ("sony", "dsc-rx1r"): 35.8,  # Sony spec 35.8 x 23.9 mm
    ("sony", "dsc-rx1"): 35.8,  # Sony spec 35.8 x 23.9 mm
    **{("sony", m): FULL_FRAME for m in (
        "ilce-7", "ilce-7m2", "ilce-7m3", "ilce-7m4", "ilce-7r", "ilce-7rm2", "ilce-7rm3",
        "ilce-7rm4", "ilce-7rm5", "ilce-7s", "ilce-7sm2", "ilce-7sm3", "ilce-7c", "ilce-9",
        "ilce-1", "dsc-rx1rm2")},
    **{("sony", m): APS_C for m in (
        "ilce-6000", "ilce-6100", "ilce-6300", "ilce-6400", "ilce-6500", "ilce-6600", "ilce-6700",
        "ilce-5000", "ilce-5100", "nex-5n", "nex-5r", "nex-5t", "nex-6", "nex-7", "slt-a65",
        "slt-a77", "slt-a77v", "ilca-77m2", "zv-e10")},
    **{("sony", m): ONE_INCH for m in (
        "dsc-rx100", "dsc-rx100m2", "dsc-rx100m3", "dsc-rx100m4", "dsc-rx100m5", "dsc-rx100m5a",
        "dsc-rx100m6", "dsc-rx100m7", "dsc-rx10", "dsc-rx10m2", "dsc-rx10m3", "dsc-rx10m4", "zv-1")},
    # --- Olympus / OM System, Panasonic: Four Thirds
    **{("olympus", m): FOUR_THIRDS for m in (
        "e-p1", "e-p2", "e-p3", "e-p5", "e-p7", "e-pl1", "e-pl2", "e-pl3", "e-pl5", "e-pl6",
        "e-pl7", "e-pl8", "e-pl9", "e-pl10", "e-m1", "e-m1 mark ii", "e-m1 mark iii", "e-m1x",
        "e-m5", "e-m5 mark ii", "e-m5 mark iii", "e-m10", "e-m10 mark ii", "e-m10 mark iii",
        "e-m10 mark iv", "om-1", "om-5", "e-1", "e-300", "e-500", "e-510", "e-520", "e-620")},
    **{("panasonic", m): FOUR_THIRDS for m in (
        "dmc-l10", "dmc-l1", "dmc-g1", "dmc-g2", "dmc-g3", "dmc-g5", "dmc-g6", "dmc-g7",
        "dmc-g85", "dmc-gh2", "dmc-gh3", "dmc-gh4", "dc-gh5", "dc-gh5s", "dc-gh6", "dc-g9",
        "dmc-gx7", "dmc-gx8", "dmc-gx85", "dc-gx9", "dmc-gf1", "dmc-gm1", "dmc-gm5", "dc-g100")},
    **{("panasonic", m): ONE_INCH for m in ("dmc-zs100", "dmc-tz100", "dmc-fz1000", "dc-fz1000m2")},
    # --- Fujifilm APS-C (23.5 x 15.6 mm X-Trans)
    **{("fujifilm", m): APS_C for m in (
        "x-t1", "x-t2", "x-t3", "x-t4", "x-t5", "x-t10", "x-t20", "x-t30", "x-e2", "x-e3", "x-e4",
        "x-pro1", "x-pro2", "x-pro3", "x-h1", "x-h2", "x-h2s", "x-s10", "x-s20", "x100f", "x100v",
        "x100vi", "x100t", "x100s")},
    # --- Pentax / Ricoh
    ("pentax", "gr"): 23.7,  # Ricoh GR (2013) spec 23.7 x 15.7 mm
    **{("pentax", m): APS_C for m in (
        "gr ii", "gr iii", "gr iiix", "k-3", "k-3 ii", "k-70", "kp", "k-5", "k-5 ii", "k-x", "k-r")},
    # --- Casio Exilim / QV compacts: 1/1.8" type, as the 35 mm equivalents these models write imply
    # (crop 4.8-4.9, i.e. a 8.9-9.0 mm diagonal; checked in tests/test_camera_sensors.py)
    **{("casio", m): TYPE_1_1_8 for m in ("ex-z750", "ex-m2", "qv-r51")},
    # --- Phones: main (wide) camera, from published focal length and 35 mm equivalent
    ("apple", "iphone 6"): _phone(4.15, 29),
    ("apple", "iphone 6 plus"): _phone(4.15, 29),
    ("apple", "iphone 6s"): _phone(4.15, 29),
    ("apple", "iphone 6s plus"): _phone(4.15, 29),
    ("apple", "iphone 7"): _phone(3.99, 28),
    ("apple", "iphone 8"): _phone(3.99, 28),
    ("apple", "iphone x"): _phone(4.0, 28),
    ("apple", "iphone xs"): _phone(4.25, 26),
    ("apple", "iphone xr"): _phone(4.25, 26),
    ("apple", "iphone 11"): _phone(4.25, 26),
    ("apple", "iphone 11 pro"): _phone(4.25, 26),
    ("apple", "iphone 11 pro max"): _phone(4.25, 26),
    ("apple", "iphone 12"): _phone(4.2, 26),
    ("apple", "iphone 12 pro"): _phone(4.2, 26),
    ("apple", "iphone 12 pro max"): _phone(5.1, 26),
    ("apple", "iphone 13"): _phone(5.1, 26),
    ("apple", "iphone 13 mini"): _phone(5.1, 26),
    ("apple", "iphone 13 pro"): _phone(5.7, 26),
    ("apple", "iphone 13 pro max"): _phone(5.7, 26),
    ("apple", "iphone 14"): _phone(5.7, 26),
    ("apple", "iphone 14 plus"): _phone(5.7, 26),
    ("apple", "iphone 14 pro"): _phone(6.86, 24),
    ("apple", "iphone 14 pro max"): _phone(6.86, 24),
    ("apple", "iphone 15 pro"): _phone(6.86, 24),
    ("apple", "iphone 15 pro max"): _phone(6.86, 24),
    ("xiaomi", "mi 9t"): _phone(4.77, 26),  # Sony IMX586, 1/2" type
}


def camera_brand(text: str) -> Optional[str]:
    """The maker's brand in a Make string ("NIKON CORPORATION" -> "nikon", "OM Digital Solutions" -> "olympus")."""
    low = text.lower()
    for name, brand in _BRANDS:
        if name in low:
            return brand
    return None


def normalise_camera(make: Optional[str], model: Optional[str]) -> Optional[tuple[str, str]]:
    """(brand, model) key: case and all spacing dropped ("E-M1 Mark II" == "E-M1MarkII"), maker
    names such as "NIKON CORPORATION" reduced to one brand, and the brand removed from the front
    of the model ("Canon Canon EOS 40D" -> ("canon", "eos40d")); None if the brand is unknown."""
    words = (model or "").replace("\x00", " ").lower().split()
    brand = camera_brand(make or "") or (camera_brand(words[0]) if words else None)
    if brand is None or not words:
        return None
    while len(words) > 1 and camera_brand(words[0]) == brand:
        words.pop(0)
    return brand, "".join(words)


_SENSOR_WIDTH_MM = {normalise_camera(brand, model): width for (brand, model), width in _WIDTHS.items()}


def sensor_width_mm(make: Optional[str], model: Optional[str]) -> Optional[float]:
    """Sensor width in mm of a known camera (main camera for phones), else None."""
    key = normalise_camera(make, model)
    return None if key is None else _SENSOR_WIDTH_MM.get(key)
