"""Thin-lens optics behind the bokeh level K (docs/design.md §1). Lengths in mm unless a name says _m."""
from __future__ import annotations

import math
from typing import Optional

#: Diagonal of a 36 x 24 mm full-frame sensor, the reference of the 35 mm equivalent focal length.
FULL_FRAME_DIAGONAL_MM = 43.27
#: K is defined at this short side in pixels; at short side S a radius scales by S / 512.
REFERENCE_SHORT_SIDE = 512
#: The top of the K scale, 30 = very shallow depth of field (docs/design.md §1): the model takes K / 30, renders are
#: made at or below it and training keeps only labels at or below it (estimated real K can exceed it).
MAX_BOKEH_LEVEL = 30.0
#: Synthetic renders whose levels are not given draw K from U(this range) (docs/design.md §2).
RENDER_LEVEL_RANGE = (1.0, MAX_BOKEH_LEVEL)


class LensError(ValueError):
    """Physically impossible lens parameters (one-line reason)."""


def _check_lens(focal_length_mm: float, f_number: float, focus_distance_m: float) -> None:
    if not focal_length_mm > 0:
        raise LensError(f"focal length must be > 0 mm, got {focal_length_mm}")
    if not f_number > 0:
        raise LensError(f"f-number must be > 0, got {f_number}")
    if not focus_distance_m * 1000.0 > focal_length_mm:
        raise LensError(
            f"focus distance {focus_distance_m} m must be greater than the focal length {focal_length_mm} mm"
        )


def sensor_width_from_35mm(focal_length_mm: float, focal_length_35mm: float, width: int, height: int) -> float:
    """Sensor width in mm from the 35 mm equivalent (crop factor), taking the image aspect as the sensor's."""
    if not (focal_length_mm > 0 and focal_length_35mm > 0 and width > 0 and height > 0):
        raise LensError("focal lengths and image size must be positive")
    crop = focal_length_35mm / focal_length_mm
    diagonal = FULL_FRAME_DIAGONAL_MM / crop
    return diagonal * width / math.hypot(width, height)


def coc_diameter_mm(
    focal_length_mm: float, f_number: float, focus_distance_m: float, object_distance_m: float
) -> float:
    """Circle of confusion diameter on the sensor, ``c = f^2 |z - s| / (N (s - f) z)``; z may be inf."""
    _check_lens(focal_length_mm, f_number, focus_distance_m)
    f, s = focal_length_mm, focus_distance_m * 1000.0
    if math.isinf(object_distance_m):
        return f * f / (f_number * (s - f))
    if not object_distance_m > 0:
        raise LensError(f"object distance must be > 0 m, got {object_distance_m}")
    z = object_distance_m * 1000.0
    return f * f * abs(z - s) / (f_number * (s - f) * z)


def k_metric(
    focal_length_mm: float, f_number: float, focus_distance_m: float, sensor_width_mm: float, width: int
) -> float:
    """Blur radius in px per 1/m of inverse-depth difference: ``f^2 s / (2 N (s - f)) * (W / sensor_w)``, px·m."""
    _check_lens(focal_length_mm, f_number, focus_distance_m)
    if not (sensor_width_mm > 0 and width > 0):
        raise LensError("sensor width and image width must be positive")
    f = focal_length_mm / 1000.0
    s = focus_distance_m
    radius_on_sensor_m2 = f * f * s / (2.0 * f_number * (s - f))
    return radius_on_sensor_m2 * width / (sensor_width_mm / 1000.0)


def blur_radius_px(k_metric_pxm: float, focus_distance_m: float, object_distance_m: float) -> float:
    """Blur radius in px of an object at z: ``k_metric * |1/z - 1/s|`` (z = inf is the background at infinity)."""
    inv_z = 0.0 if math.isinf(object_distance_m) else 1.0 / object_distance_m
    return k_metric_pxm * abs(inv_z - 1.0 / focus_distance_m)


def to_reference_resolution(value_px: float, width: int, height: int) -> float:
    """Rescale a length in px at ``width x height`` to the reference short side of 512 px."""
    return value_px * REFERENCE_SHORT_SIDE / min(width, height)


def unified_bokeh_level(
    k_metric_pxm: float, z_near_m: float, z_far_m: float, width: int, height: int
) -> float:
    """Unified K: ``k_metric (1/z_near - 1/z_far)`` rescaled to short side 512 (z_far may be inf)."""
    if not (z_near_m > 0 and z_far_m >= z_near_m):
        raise LensError(f"need 0 < z_near <= z_far, got {z_near_m}, {z_far_m}")
    span = 1.0 / z_near_m - (0.0 if math.isinf(z_far_m) else 1.0 / z_far_m)
    return to_reference_resolution(k_metric_pxm * span, width, height)


def f_number_for_bokeh_level(
    bokeh_level: float,
    focal_length_mm: float,
    focus_distance_m: float,
    sensor_width_mm: float,
    width: int,
    height: int,
    z_near_m: Optional[float] = None,
    z_far_m: float = math.inf,
) -> float:
    """The f-number that gives unified K for this lens, focus and scene (inverse of the above).

    ``z_near`` defaults to the focus distance, so K is then the background's blur radius at infinity.
    """
    if not bokeh_level > 0:
        raise LensError(f"target bokeh level must be > 0, got {bokeh_level}")
    z_near = focus_distance_m if z_near_m is None else z_near_m
    # K is proportional to 1/N: evaluate at N = 1 and divide.
    k_at_f1 = unified_bokeh_level(
        k_metric(focal_length_mm, 1.0, focus_distance_m, sensor_width_mm, width), z_near, z_far_m, width, height
    )
    return k_at_f1 / bokeh_level


def hyperfocal_distance_m(focal_length_mm: float, f_number: float, coc_mm: float) -> float:
    """Hyperfocal distance ``f^2 / (N c) + f`` in metres for an acceptable CoC diameter ``c``."""
    if not (focal_length_mm > 0 and f_number > 0 and coc_mm > 0):
        raise LensError("focal length, f-number and CoC must be positive")
    return (focal_length_mm ** 2 / (f_number * coc_mm) + focal_length_mm) / 1000.0
