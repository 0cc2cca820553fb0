"""One record per photo: the bokeh level K, where it came from and how sure we are (docs/design.md §1)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Optional

import numpy as np

from . import lens
from .camera_sensors import sensor_width_mm as table_sensor_width_mm
from .depth import DepthMap, focus_disparity_from_mask, focus_distance_from_mask
from .exif import ExifInfo
from .focal_plane import FocalPlane, LayerBlur, find_focal_plane, fit_blur_slope, layer_blurs
from .image_io import to_gray
from .sharpness import subject_background_sharpness

#: A photo counts as all-in-focus when K <= this (docs/design.md §1).
ALL_IN_FOCUS_MAX_K = 1.0
#: Base confidence of each provenance before the image cross-check scales it.
BASE_CONFIDENCE = {"exif+depth": 0.9, "exif-only": 0.7, "exif+image": 0.5, "image-only": 0.4}
#: Subject/background edges closer than this in normalised disparity to the focal plane say little about K.
MIN_DISPARITY_LEVER = 0.15
#: Fewer measured edges than this give no image-based estimate.
MIN_EDGES = 20
#: Start of the focus-distance fixed point in :func:`_exif_with_image_blur` (metres; focus near infinity).
FAR_FOCUS_M = 1000.0
#: EXIF and image K whose ratio ``(1 + K_image) / (1 + K_exif)`` is this far from 1 get a note.
DISAGREEMENT = 1.5


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
    focus_source: Optional[str] = None
    focus_disparity: Optional[float] = None
    z_near_m: Optional[float] = None
    z_far_m: Optional[float] = None
    sensor_width_mm: Optional[float] = None
    sensor_width_source: Optional[str] = None
    background_blur_px: Optional[float] = None
    image_bokeh_level: Optional[float] = None
    image_edge_count: int = 0
    image_layer_count: int = 0
    image_spread: Optional[float] = None
    image_to_exif_ratio: Optional[float] = None
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
    focal-plane resolution (unreliable on resized files, docs/design.md §1)."""
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
    exif: ExifInfo, depth: Optional[DepthMap], region: Optional[np.ndarray], region_name: str
) -> tuple[Optional[float], Optional[str]]:
    """Focus distance in metres, best first: metric depth in the focus region, SubjectDistance, maker notes."""
    if depth is not None and depth.depth_m is not None and region is not None:
        s = focus_distance_from_mask(depth.depth_m, region)
        if s is not None:
            return s, f"depth+{region_name}"
    if exif.subject_distance_m is not None and math.isfinite(exif.subject_distance_m):
        return exif.subject_distance_m, "exif:SubjectDistance"
    if exif.focus_distance_m is not None and math.isfinite(exif.focus_distance_m):
        return exif.focus_distance_m, exif.focus_distance_source or "makernote"
    return None, None


class ImageBlur(NamedTuple):
    """Image-only K (px at short side 512) and what it rests on: edges, depth layers, their spread."""

    bokeh_level: Optional[float]
    edge_count: int
    layer_count: int
    spread: float


def image_bokeh_level(
    gray: np.ndarray,
    disparity: Optional[np.ndarray],
    focus_disparity: Optional[float],
    background: Optional[np.ndarray],
    layers: Optional[list[LayerBlur]] = None,
) -> ImageBlur:
    """Image-only K: the slope of lens blur radius over distance from the focal plane in normalised disparity.

    Each depth layer's blur radius r (see :func:`estimators.focal_plane.layer_blurs`; ``layers`` when
    already measured on this disparity) at lever ``|d - d_focus| >= MIN_DISPARITY_LEVER`` says
    K = r / lever (docs/design.md §1); :func:`estimators.focal_plane.fit_blur_slope` fits them together.
    Without depth the subject mask stands in for it (subject d = 1, background d = 0, focus on the
    subject), and without either the whole image is one layer at lever 1, so K is its blur radius.
    """
    if disparity is None:
        disparity = np.zeros(gray.shape[:2], np.float32) if background is None else np.where(background, 0.0, 1.0)
        focus_disparity, layers = 1.0, None
    focus = 1.0 if focus_disparity is None else float(focus_disparity)
    if layers is None:
        layers = layer_blurs(gray, np.asarray(disparity, dtype=np.float32))
    fit = fit_blur_slope(layers, focus, MIN_DISPARITY_LEVER)
    if fit is None or fit.edges < MIN_EDGES:
        return ImageBlur(None, 0 if fit is None else fit.edges, 0 if fit is None else fit.layers, 0.0)
    return ImageBlur(fit.slope, fit.edges, fit.layers, fit.spread)


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

    The focal plane is where the photo is sharpest (per depth layer); only a photo with no readable
    defocus falls back on the subject mask (``focus_source``). K comes from EXIF when focal length,
    f-number, focus distance and sensor size are known (with metric depth: unified K over the scene's
    depth range; otherwise K = k_metric / s, the background blur at infinity). With focal length and
    f-number but no focus distance, the image's measured blur gives K and the lens math turns it into a
    focus distance (provenance "exif+image"); with no usable EXIF the image-only estimate is the label.
    The image estimate is always computed and scales the confidence by how well it agrees.
    """
    height, width = image.shape[:2]
    rec = BokehEstimate(source=source, width=width, height=height, exif=exif.to_dict())
    rec.depth_source = depth.source if depth is not None else None
    rec.mask_source = mask_source if mask is not None else None
    gray = to_gray(image)

    # --- focus: the sharpest depth layer, else the subject mask ----------------------------
    if mask is not None and not np.asarray(mask, dtype=bool).any():
        rec.notes.append("subject mask is empty: ignored")
        mask = None
    focal: Optional[FocalPlane] = None if depth is None else find_focal_plane(gray, depth.disparity)
    region, region_name = None, None
    if focal is not None and focal.disparity is not None:
        region, region_name, rec.focus_source = focal.region, "in-focus", "sharpness"
    elif depth is not None and mask is not None:
        region, region_name, rec.focus_source = mask, "mask", "subject"
    if depth is not None and region is not None:
        rec.focus_disparity = focus_disparity_from_mask(depth.disparity, region)
    rec.focus_distance_m, rec.focus_distance_source = _focus_distance(exif, depth, region, region_name or "")
    if rec.focus_source is None and rec.focus_distance_m is not None:
        rec.focus_source = "exif"

    # --- image measures: sharpness at short side 512, layer blur at (at most) 512 ----------
    rec.sharpness_subject, rec.sharpness_background = subject_background_sharpness(gray, mask)
    background = None
    if mask is not None:
        rec.subject_fraction = float(np.asarray(mask, dtype=bool).mean())
        background = ~np.asarray(mask, dtype=bool)
    focus_d = rec.focus_disparity if rec.focus_disparity is not None else (None if depth is None else 1.0)
    blur = image_bokeh_level(
        gray, None if depth is None else depth.disparity, focus_d, background, None if focal is None else focal.layers
    )
    rec.image_bokeh_level, rec.image_edge_count = blur.bokeh_level, blur.edge_count
    if focal is not None and focal.disparity is None and blur.bokeh_level is not None:
        # No readable focal plane: the defocus that follows depth stays below focal.contrast, which bounds K.
        rec.image_bokeh_level = min(blur.bokeh_level, focal.contrast)
    rec.image_layer_count, rec.image_spread = blur.layer_count, round(blur.spread, 4)

    # --- EXIF lens math -------------------------------------------------------------------
    rec.sensor_width_mm, rec.sensor_width_source = sensor_width(exif, width, height)
    lens_known = all(v is not None for v in (exif.focal_length_mm, exif.f_number, rec.sensor_width_mm))
    if lens_known and rec.focus_distance_m is None and rec.image_bokeh_level is not None:
        _exif_with_image_blur(rec, exif, focus_d)
    elif lens_known and rec.focus_distance_m is not None:
        try:
            rec.k_metric = lens.k_metric(
                exif.focal_length_mm, exif.f_number, rec.focus_distance_m, rec.sensor_width_mm, width
            )
        except lens.LensError as exc:
            rec.notes.append(f"lens math refused: {exc}")
    if rec.k_metric is None and rec.provenance is None:
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
        if absent:
            rec.notes.append("no EXIF K: missing " + ", ".join(absent))

    if rec.k_metric is not None and rec.provenance is None:
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
        _note_disagreement(rec)

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


def _exif_with_image_blur(rec: BokehEstimate, exif: ExifInfo, focus_disparity: Optional[float]) -> None:
    """Focal length and f-number without a focus distance: K is the image's measured blur, and the lens
    math gives the focus distance that blur implies (the farthest layer taken at infinity).

    The measured slope K (px at 512 per unit of normalised disparity) is ``k_metric (1/z_near - 1/z_far)``
    at short side 512, so the scene's inverse-depth span is ``K / k_metric``; the focal plane sits at
    ``d_focus`` of it, hence ``1/s = d_focus K / k_metric`` with ``1/z_far = 0``. k_metric itself
    depends on s only through ``s / (s - f)``, so a few fixed-point steps settle it.
    """
    width, height = rec.width, rec.height
    k_image = rec.image_bokeh_level
    d_focus = 1.0 if focus_disparity is None else focus_disparity
    to_512 = lens.REFERENCE_SHORT_SIDE / min(width, height)
    f_m = exif.focal_length_mm / 1000.0
    s, guess = math.inf, FAR_FOCUS_M
    for _ in range(8):
        k_metric = lens.k_metric(exif.focal_length_mm, exif.f_number, guess, rec.sensor_width_mm, width)
        inverse_s = d_focus * k_image / (k_metric * to_512)
        if inverse_s <= 0 or 1.0 / inverse_s <= 1.5 * f_m:
            s = math.inf
            break
        s = guess = 1.0 / inverse_s
    rec.provenance = "exif+image"
    rec.bokeh_level = k_image
    rec.background_blur_px = k_image * d_focus / to_512
    if math.isfinite(s):
        rec.focus_distance_m, rec.focus_distance_source = s, "lens+image-blur"
        rec.k_metric = lens.k_metric(exif.focal_length_mm, exif.f_number, s, rec.sensor_width_mm, width)
        rec.focus_source = rec.focus_source or "sharpness"
        rec.notes.append("no focus distance: K from the image's blur; focus distance from it by the lens math "
                         "(farthest layer at infinity)")
    else:
        rec.notes.append("no focus distance and no measurable blur: K from the image alone")


def _note_disagreement(rec: BokehEstimate) -> None:
    """Record the ratio of the EXIF and image K, with a note where they differ by DISAGREEMENT or more."""
    if rec.image_bokeh_level is None or rec.bokeh_level is None:
        return
    ratio = (1.0 + rec.image_bokeh_level) / (1.0 + rec.bokeh_level)
    rec.image_to_exif_ratio = round(ratio, 4)
    if max(ratio, 1.0 / ratio) >= DISAGREEMENT:
        rec.notes.append(
            f"EXIF and image disagree: K {rec.bokeh_level:.2f} from {rec.provenance}, {rec.image_bokeh_level:.2f} from "
            "the image's blur; the EXIF value is kept (see docs/estimate.md)"
        )


def _confidence(rec: BokehEstimate) -> float:
    """Base confidence of the provenance, times how well it is supported.

    EXIF-based: times the agreement of the EXIF and image estimates,
    ``exp(-|log((1 + K_exif) / (1 + K_image))|)`` (1 when equal, 0.5 at a factor of ~2); maker-note focus
    distances are coarse (lens encoder steps): 0.8x. Image-based (image-only, exif+image): times the
    amount of evidence, edges measured (full at 500) and depth layers fitted (n / (n + 1)), and times
    ``exp(-spread)``, the layers' disagreement.
    """
    base = BASE_CONFIDENCE[rec.provenance]
    if rec.provenance in ("image-only", "exif+image"):
        layers = rec.image_layer_count / (rec.image_layer_count + 1.0)
        spread = math.exp(-(rec.image_spread or 0.0))
        return round(base * min(1.0, rec.image_edge_count / 500.0) * layers * spread, 3)
    if rec.focus_distance_source and rec.focus_distance_source.startswith("makernote"):
        base *= 0.8
    if rec.image_bokeh_level is not None:
        base *= math.exp(-abs(math.log((1.0 + rec.bokeh_level) / (1.0 + rec.image_bokeh_level))))
    return round(base, 3)
