"""Encoding a finished photo (and its renders) into output rows of :mod:`dataset_tools.schema`."""
from __future__ import annotations

import io
import math
from typing import Any, Optional

import numpy as np
from PIL import Image


from .photo_state import PhotoState, Render


def jpeg_bytes(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG of an HxWx3 uint8 image (no chroma subsampling: keeps sharp colour edges sharp)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality), subsampling=0)
    return buf.getvalue()


def disparity_png(disparity: np.ndarray) -> bytes:
    """16-bit grayscale PNG of a [0, 1] disparity map (65535 = nearest)."""
    levels = np.round(np.clip(np.asarray(disparity, dtype=np.float64), 0.0, 1.0) * 65535.0).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(levels).save(buf, format="PNG")
    return buf.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    """8-bit PNG of a boolean mask (255 = subject)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()


def _number(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _image_cell(data: bytes, name: str) -> dict[str, Any]:
    return {"bytes": data, "path": name}


def real_row(state: PhotoState, quality: int, k_scale: float) -> dict[str, Any]:
    """The row of the source photo itself, from a state already resized to the stored size; ``k_scale``
    turns the estimate's k_metric (px of the working image) into px of the stored image."""
    rec, exif = state.estimate, state.exif
    height, width = state.image.shape[:2]
    provenance = {
        "depth_source": rec.depth_source,
        "mask_source": rec.mask_source,
        "focus_distance_source": rec.focus_distance_source,
        "sensor_width_source": rec.sensor_width_source,
        "focus_source": rec.focus_source,
        "z_near_m": _number(rec.z_near_m),
        "z_far_m": _number(rec.z_far_m),
        "image_bokeh_level": _number(rec.image_bokeh_level),
        "image_to_exif_ratio": _number(rec.image_to_exif_ratio),
        "notes": list(rec.notes),
    }
    return {
        "id": state.id,
        "group_id": state.id,
        "kind": "real",
        "image": _image_cell(jpeg_bytes(state.image, quality), f"{state.id}.jpg"),
        "width": width,
        "height": height,
        "caption": state.caption,
        "bokeh_level": _number(rec.bokeh_level),
        "k_metric": None if rec.k_metric is None else _number(rec.k_metric * k_scale),
        "bokeh_source": rec.provenance,
        "provenance": provenance,
        "confidence": _number(rec.confidence),
        "focus_distance_m": _number(rec.focus_distance_m),
        "focus_disparity": _number(rec.focus_disparity),
        "f_number": _number(exif.f_number),
        "focal_length_mm": _number(exif.focal_length_mm),
        "focal_length_35mm": _number(exif.focal_length_35mm),
        "camera_make": exif.make,
        "camera_model": exif.model,
        "lens_model": exif.lens_model,
        "depth": _image_cell(disparity_png(state.depth.disparity), f"{state.id}.depth.png"),
        "subject_mask": _image_cell(mask_png(state.mask), f"{state.id}.mask.png"),
        "sharpness_subject": _number(rec.sharpness_subject),
        "sharpness_background": _number(rec.sharpness_background),
        "is_all_in_focus": rec.is_all_in_focus,
        "source": state.source,
        "render_params": None,
    }


def synthetic_row(pivot: dict[str, Any], state: PhotoState, render: Render, index: int, quality: int) -> dict[str, Any]:
    """The row of render ``index`` of the photo whose real row is ``pivot``."""
    row_id = f"{state.id}-k{index}"
    return {
        **pivot,
        "id": row_id,
        "kind": "synthetic",
        "image": _image_cell(jpeg_bytes(render.image, quality), f"{row_id}.jpg"),
        "bokeh_level": float(render.bokeh_level),
        "k_metric": None,
        "bokeh_source": "synthetic",
        "provenance": {"pivot_id": state.id, "depth_source": state.estimate.depth_source,
                       "mask_source": state.estimate.mask_source},
        "confidence": 1.0,
        "focus_disparity": float(render.params.get("focus_disparity", pivot["focus_disparity"])),
        "f_number": None,
        "focal_length_mm": None,
        "focal_length_35mm": None,
        "depth": None,
        "subject_mask": None,
        "sharpness_subject": _number(render.sharpness_subject),
        "sharpness_background": _number(render.sharpness_background),
        "is_all_in_focus": False,
        "render_params": render_params(render.params),
    }


def render_params(params: dict[str, Any]) -> dict[str, Any]:
    """The ``render_params`` struct of a render's parameters (``synth_blur.group``): its group and pivot flag are
    the row's ``group_id`` and ``kind``; the aperture is "disc" or "<n>-blade"."""
    aperture = params.get("aperture", "disc")
    return {
        "bokeh_level": float(params["bokeh_level"]),
        "focus_disparity": float(params["focus_disparity"]),
        "gamma": float(params["gamma"]),
        "highlight_boost": float(params["highlight_boost"]),
        "aperture": aperture if isinstance(aperture, str) else f"{int(aperture)}-blade",
        "seed": int(params["seed"]),
        "levels_drawn": bool(params["levels_drawn"]),
    }
