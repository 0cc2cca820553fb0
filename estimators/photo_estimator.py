"""Runs EXIF, depth, mask and bokeh-level estimation over photo files, one record per photo."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from .backends import DEFAULT_DEPTH_BACKEND, make_depth_model, make_masker
from .bokeh_level import estimate_bokeh_level
from .depth import DepthMap, DepthUnavailableError
from .exif import read_exif
from .image_io import MAX_PHOTO_BYTES, MAX_PIXELS, ImageLoadError, load_image, to_array
from .input_files import InputFileError, read_regular
from .mask import MaskUnavailableError
from .sidecars import photo_depth, photo_mask


class PhotoEstimator:
    """Estimate K for photo files with the chosen depth and mask backends (models load once, at construction);
    ``disparity_file`` names one photo's own disparity map, used instead of the depth backend."""

    def __init__(
        self,
        depth: str = DEFAULT_DEPTH_BACKEND,
        mask: str = "depth",
        *,
        depth_model: Optional[str] = None,
        sam_model: Optional[str] = None,
        device: Optional[str] = None,
        max_pixels: int = MAX_PIXELS,
        disparity_file: Optional[str | Path] = None,
    ) -> None:
        self.depth_backend, self.mask_backend = depth, mask
        self.max_pixels, self.disparity_file = max_pixels, disparity_file
        self._depth_model = None if disparity_file is not None else make_depth_model(depth, depth_model, device)
        self._masker = make_masker(mask, sam_model, device)

    def _depth(self, path: Path, image: Any, notes: list[str]) -> Optional[DepthMap]:
        if self.depth_backend == "none" and self.disparity_file is None:
            return None
        try:
            return photo_depth(path, image, self._depth_model, sidecar=self.depth_backend == "sidecar",
                               disparity_file=self.disparity_file)
        except DepthUnavailableError as exc:
            if self.disparity_file is not None:
                raise  # a map the user named is not optional: its photo fails rather than losing it quietly
            notes.append(f"{exc}: estimating without depth")
            return None

    def _mask(self, path: Path, image: Any, depth: Optional[DepthMap], notes: list[str]) -> tuple[Optional[np.ndarray], Optional[str]]:
        if self.mask_backend == "none":
            return None, None
        try:
            found = photo_mask(path, image, None if depth is None else depth.disparity, self._masker,
                               sidecar=self.mask_backend == "sidecar")
        except MaskUnavailableError as exc:
            notes.append(f"{exc}: estimating without a subject mask")
            return None, None
        return found.mask, found.source

    def estimate(self, path: str | Path) -> dict[str, Any]:
        """The record of one photo as a JSON-ready dict; a file that cannot be read gives {source, error}."""
        return self.estimate_with_mask(path)[0]

    def estimate_with_mask(self, path: str | Path) -> tuple[dict[str, Any], Optional[np.ndarray]]:
        """``estimate``'s record and the subject mask it used (HxW bool at the photo's size; None without one)."""
        path = Path(path)
        try:
            data = read_regular(path, MAX_PHOTO_BYTES, "photo")
            image = load_image(data, max_pixels=self.max_pixels)
        except (InputFileError, ImageLoadError) as exc:
            return {"source": str(path), "error": str(exc)}, None
        notes: list[str] = []
        try:
            depth = self._depth(path, image, notes)
        except DepthUnavailableError as exc:
            return {"source": str(path), "error": str(exc)}, None
        mask, mask_source = self._mask(path, image, depth, notes)
        record = estimate_bokeh_level(
            to_array(image), read_exif(data), depth, mask, source=str(path), mask_source=mask_source
        )
        record.notes[:0] = notes
        return record.to_dict(), mask

    def estimate_all(self, paths: Iterable[str | Path]) -> Iterator[dict[str, Any]]:
        """Records for many photos, in order; one bad photo never stops the rest."""
        for path in paths:
            try:
                yield self.estimate(path)
            except Exception as exc:  # noqa: BLE001 - recorded, never a crash of the run
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                yield {"source": str(path), "error": f"unexpected {type(exc).__name__}: {message}"}
