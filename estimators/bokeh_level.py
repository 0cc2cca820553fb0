"""One record per photo: the bokeh level K, where it came from and how sure we are (DESIGN.md §1)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import cv2
import numpy as np

from . import lens
from .camera_sensors import sensor_width_mm as table_sensor_width_mm
from .depth import DepthMap, focus_disparity_from_mask, focus_distance_from_mask
from .exif import ExifInfo
from .image_io import to_gray
from .sharpness import (
    defocus_at_edges,
    disc_radius_from_sigma,
    downscale_to_reference,
    subject_background_sharpness,
)

#: A photo counts as all-in-focus when K <= this (DESIGN.md §1).
ALL_IN_FOCUS_MAX_K = 1.0
#: Base confidence of each provenance before the image cross-check scales it.
BASE_CONFIDENCE = {"exif+depth": 0.9, "exif-only": 0.7, "image-only": 0.4}
#: Subject/background edges closer than this in normalised disparity to the focal plane say little about K.
MIN_DISPARITY_LEVER = 0.15
#: Fewer measured edges than this give no image-based estimate.
MIN_EDGES = 20
#: Percentile of the per-edge estimates reported (see image_bokeh_level).
EDGE_PERCENTILE = 75
#: Scales (of the image at short side <= 512) at which edge blur is measured, and the smallest side used.
PYRAMID_SCALES = (1.0, 0.5, 0.25, 0.125)
MIN_PYRAMID_SIDE = 64


@dataclass
class BokehEstimate:
    """The estimate for one photo; ``to_dict`` is the JSON line ``bokeh estimate`` prints."""

    source: str
    width: int
    height: int
    bokeh_level: Optional[float] = None
    k_metric: Optional[float] = None
    provenance: Optional[str] = None
    confidence: float = 0.0
    focus_distance_m: Optional[float] = None
    focus_distance_source: Optional[str] = None
    focus_disparity: Optional[float] = None
    z_near_m: Optional[float] = None
    z_far_m: Optional[float] = None
    sensor_width_mm: Optional[float] = None
    sensor_width_source: Optional[str] = None
    background_blur_px: Optional[float] = None
    image_bokeh_level: Optional[float] = None
    image_edge_count: int = 0
    sharpness_subject: Optional[float] = None
    sharpness_background: Optional[float] = None
    subject_fraction: Optional[float] = None
    is_all_in_focus: Optional[bool] = None
    depth_source: Optional[str] = None
    mask_source: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    exif: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; non-finite floats become None (JSON has no inf)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean(asdict(self))


def sensor_width(exif: ExifInfo, width: int, height: int) -> tuple[Optional[float], Optional[str]]:
    """Sensor width in mm for the photo's orientation, best source first: 35 mm equivalent, camera table,
    focal-plane resolution (unreliable on resized files, DESIGN.md §1)."""
    if exif.focal_length_mm and exif.focal_length_35mm:
        return lens.sensor_width_from_35mm(exif.focal_length_mm, exif.focal_length_35mm, width, height), "35mm-equivalent"
    table = table_sensor_width_mm(exif.make, exif.model)
    if table:
        # The table gives the long side; scale to this image's width (portrait photos are rotated).
        return table * width / max(width, height), "camera-table"
    if exif.focal_plane_px_per_mm:
        recorded = exif.exif_image_width or max(width, height)
        long_mm = recorded / exif.focal_plane_px_per_mm
        return long_mm * width / max(width, height), "focal-plane-resolution"
    return None, None


def _focus_distance(
    exif: ExifInfo, depth: Optional[DepthMap], mask: Optional[np.ndarray]
) -> tuple[Optional[float], Optional[str]]:
    """Focus distance in metres, best first: metric depth in the subject, SubjectDistance, maker notes."""
    if depth is not None and depth.depth_m is not None and mask is not None:
        s = focus_distance_from_mask(depth.depth_m, mask)
        if s is not None:
            return s, "depth+mask"
    if exif.subject_distance_m is not None and math.isfinite(exif.subject_distance_m):
        return exif.subject_distance_m, "exif:SubjectDistance"
    if exif.focus_distance_m is not None and math.isfinite(exif.focus_distance_m):
        return exif.focus_distance_m, exif.focus_distance_source or "makernote"
    return None, None


def image_bokeh_level(
    gray: np.ndarray, disparity: Optional[np.ndarray], focus_disparity: Optional[float], background: Optional[np.ndarray]
) -> tuple[Optional[float], int]:
    """Image-only K from Zhuo & Sim edge blur, in px at short side 512, and the number of edges used.

    With depth, each background edge gives K = r / |d - d_focus| (DESIGN.md §1); without, the
    background is taken at d = 0 with the focus at d = 1, so K is the background blur radius. The
    75th percentile over edges is kept: sharp edges that are not background (the subject's outline,
    or the subject itself when there is no mask) are among the candidates. The re-blur ratio of a wide blur drowns in
    noise at full size, while a coarse scale hides a narrow one, so the image is measured at short
    sides 512, 256, 128 and 64 (never enlarged, never below 64) and the largest resolved estimate is kept.
    A coarse level reads only radii above one of its own pixels, and only counts when the next finer
    level, where the same blur spans twice the pixels, reads at least half that: a sharp texture finer than
    the coarse pixels (stripes, foliage) averages away there into a few wide-looking edges, which read
    K 8-35 at 64 px while 128 px reads 0.
    """
    gray, to_512 = downscale_to_reference(gray)
    best: tuple[Optional[float], int] = (None, 0)
    finer: Optional[float] = None
    for scale in PYRAMID_SCALES:
        if scale < 1 and min(gray.shape) * scale < MIN_PYRAMID_SIDE:
            break
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        pixel = to_512 / scale  # one pixel of this level, in px at short side 512
        k, count = _edge_bokeh_level(
            cv2.resize(gray, size, interpolation=cv2.INTER_AREA) if scale < 1 else gray,
            None if disparity is None else cv2.resize(disparity.astype(np.float32), size, interpolation=cv2.INTER_LINEAR),
            focus_disparity,
            None if background is None else cv2.resize(background.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0,
            pixel,
        )
        resolved = scale == 1 or (k is not None and k > pixel and (finer is None or finer >= pixel / 2))
        finer = k
        if k is not None and resolved and (best[0] is None or k > best[0]):
            best = (k, count)
    return best


def _edge_bokeh_level(
    gray: np.ndarray,
    disparity: Optional[np.ndarray],
    focus_disparity: Optional[float],
    background: Optional[np.ndarray],
    to_512: float,
) -> tuple[Optional[float], int]:
    """One scale of :func:`image_bokeh_level`: all maps at ``gray``'s size, ``to_512`` px scale factor.

    The photo's own in-focus edge width (lens, resizing, compression) is read from the edges in the
    focal plane (the subject, or edges near the focus disparity; else the sharpest quarter of all
    edges) and removed from every edge's width before it becomes a radius.
    """
    edges = defocus_at_edges(gray)
    candidates = edges.edges if background is None else edges.edges & background
    focused = None if background is None else edges.edges & ~background
    with_depth = disparity is not None and focus_disparity is not None
    if with_depth:
        lever = np.abs(disparity - focus_disparity)
        candidates = candidates & (lever >= MIN_DISPARITY_LEVER)
        if focused is None:
            focused = edges.edges & (lever < MIN_DISPARITY_LEVER / 3)
    count = int(candidates.sum())
    if count < MIN_EDGES:
        return None, count
    if focused is not None and focused.sum() >= MIN_EDGES:  # like with like: the same percentile
        intrinsic = float(np.percentile(edges.sigma[focused], EDGE_PERCENTILE))
    else:
        intrinsic = float(np.percentile(edges.sigma[edges.edges], 25))
    radius = disc_radius_from_sigma(edges.sigma[candidates], intrinsic) * to_512
    per_edge = radius / lever[candidates] if with_depth else radius
    return float(np.percentile(per_edge, EDGE_PERCENTILE)), count


def estimate_bokeh_level(
    image: np.ndarray,
    exif: ExifInfo,
    depth: Optional[DepthMap] = None,
    mask: Optional[np.ndarray] = None,
    *,
    source: str = "",
    mask_source: Optional[str] = None,
) -> BokehEstimate:
    """Combine EXIF lens math, depth and the subject mask of one upright RGB photo into a record.

    K comes from EXIF when focal length, f-number, focus distance and sensor size are known
    (with metric depth: unified K over the scene's depth range; otherwise K = k_metric / s, the
    background blur at infinity); else from the image-only defocus estimate. The image estimate
    is always computed and scales the confidence by how well it agrees.
    """
    height, width = image.shape[:2]
    rec = BokehEstimate(source=source, width=width, height=height, exif=exif.to_dict())
    rec.depth_source = depth.source if depth is not None else None
    rec.mask_source = mask_source if mask is not None else None

    # --- focus and depth ---------------------------------------------------------------
    if mask is not None and not np.asarray(mask, dtype=bool).any():
        rec.notes.append("subject mask is empty: ignored")
        mask = None
    if depth is not None and mask is not None:
        rec.focus_disparity = focus_disparity_from_mask(depth.disparity, mask)
    rec.focus_distance_m, rec.focus_distance_source = _focus_distance(exif, depth, mask)

    # --- EXIF lens math -------------------------------------------------------------------
    rec.sensor_width_mm, rec.sensor_width_source = sensor_width(exif, width, height)
    lens_ready = all(
        v is not None for v in (exif.focal_length_mm, exif.f_number, rec.focus_distance_m, rec.sensor_width_mm)
    )
    if lens_ready:
        try:
            rec.k_metric = lens.k_metric(
                exif.focal_length_mm, exif.f_number, rec.focus_distance_m, rec.sensor_width_mm, width
            )
        except lens.LensError as exc:
            rec.notes.append(f"lens math refused: {exc}")
    else:
        absent = [
            name
            for name, v in (
                ("focal length", exif.focal_length_mm),
                ("f-number", exif.f_number),
                ("focus distance", rec.focus_distance_m),
                ("sensor size", rec.sensor_width_mm),
            )
            if v is None
        ]
        rec.notes.append("no EXIF K: missing " + ", ".join(absent))

    if rec.k_metric is not None:
        s = rec.focus_distance_m
        depth_range = depth.depth_range_m if depth is not None else None
        if depth_range is not None:
            rec.z_near_m, rec.z_far_m = depth_range
            rec.provenance = "exif+depth"
        else:
            rec.z_near_m, rec.z_far_m = s, math.inf
            rec.provenance = "exif-only"
            rec.notes.append("no metric depth: z_near = focus distance, z_far = inf, so K = k_metric / s")
        rec.bokeh_level = lens.unified_bokeh_level(rec.k_metric, rec.z_near_m, rec.z_far_m, width, height)
        rec.background_blur_px = lens.blur_radius_px(rec.k_metric, s, rec.z_far_m)

    # --- image measures: sharpness at short side 512, edge blur at (at most) 512 -----------
    gray = to_gray(image)
    rec.sharpness_subject, rec.sharpness_background = subject_background_sharpness(gray, mask)
    background = None
    if mask is not None:
        rec.subject_fraction = float(np.asarray(mask, dtype=bool).mean())
        background = ~np.asarray(mask, dtype=bool)
    focus_d = rec.focus_disparity if rec.focus_disparity is not None else (None if depth is None else 1.0)
    rec.image_bokeh_level, rec.image_edge_count = image_bokeh_level(
        gray, None if depth is None else depth.disparity, focus_d, background
    )

    # --- combine ------------------------------------------------------------------------
    if rec.bokeh_level is None and rec.image_bokeh_level is not None:
        rec.bokeh_level = rec.image_bokeh_level
        rec.provenance = "image-only"
        rec.background_blur_px = rec.image_bokeh_level * min(width, height) / lens.REFERENCE_SHORT_SIDE
    if rec.bokeh_level is not None:
        rec.confidence = _confidence(rec)
        rec.is_all_in_focus = rec.bokeh_level <= ALL_IN_FOCUS_MAX_K
    else:
        rec.notes.append("no estimate: no usable EXIF and too few edges for the image-based estimate")
    return rec


def _confidence(rec: BokehEstimate) -> float:
    """Base confidence of the provenance, times the agreement of the EXIF and image estimates.

    Agreement is ``exp(-|log((1 + K_exif) / (1 + K_image))|)``: 1 when equal, 0.5 at a factor of ~2.
    Maker-note focus distances are coarse (lens encoder steps): 0.8x. Image-only estimates grow with
    the number of edges measured (full at 500).
    """
    base = BASE_CONFIDENCE[rec.provenance]
    if rec.provenance == "image-only":
        return round(base * min(1.0, rec.image_edge_count / 500.0), 3)
    if rec.focus_distance_source and rec.focus_distance_source.startswith("makernote"):
        base *= 0.8
    if rec.image_bokeh_level is not None:
        base *= math.exp(-abs(math.log((1.0 + rec.bokeh_level) / (1.0 + rec.image_bokeh_level))))
    return round(base, 3)
