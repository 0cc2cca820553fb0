"""A photo's depth and subject mask: "sidecar, else model", with one policy and the limits on sidecar files.

Names: ``<stem>.depth.npy`` (metric depth in metres) is preferred, then ``<stem>.disparity.npy`` and
``<stem>.disparity.png`` (relative disparity, larger = nearer); ``<stem>.mask.png`` is the subject mask.

Policy (every command that reads sidecars uses it through :func:`photo_depth` and :func:`photo_mask`):

- a sidecar that exists is used, and one that cannot be used (unreadable, over a limit, not the photo's shape,
  a symlink out of the photo's folder, not a regular file) is an error with a one-line reason, never replaced
  by a model's guess behind the user's back;
- with no sidecar the model decides (when the caller has one), else it is an error that names the expected files;
- the caller turns the error into its own record: an errors.jsonl line (build), a note (estimate), a one-line
  exit (render, eval).

Limits: a sidecar is a regular file of at most :data:`MAX_SIDECAR_BYTES` in the photo's folder (a symlink must
resolve inside it), has at most :data:`~estimators.image_io.MAX_PIXELS` pixels, and its aspect ratio matches the
photo's (:func:`check_fit`). Maps are normalised by the range they have at their own size and never
renormalised after a resize, so a flat map stays flat and interpolation cannot invent depth layers
(:func:`unit_map`).
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

import cv2
import numpy as np
from PIL import Image

from .depth import (
    DEPTH_SIDECAR_SUFFIX,
    DISPARITY_SIDECAR_SUFFIX,
    DepthMap,
    DepthUnavailableError,
    read_disparity_png,
    resize_map,
)
from .image_io import MAX_PIXELS, ImageLoadError, check_dimensions, open_checked
from .input_files import PathLike, read_regular, sidecar_of
from .mask import MaskUnavailableError, SubjectMask, mask_sidecar_path

#: Ceiling on the bytes of one sidecar file, and on the array a ``.npy`` / ``.npz`` holds
#: (a float32 map of 33 MP; maps are resized to the photo anyway).
MAX_SIDECAR_BYTES = 128 * 2**20
#: Relative aspect-ratio difference accepted between a sidecar and its photo beyond pixel rounding
#: (maps saved at a size rounded to a multiple of 32 or of a model's patch).
ASPECT_TOLERANCE = 0.02
#: Relative disparity (larger = nearer) as a 2-D ``.npy`` array, the lossless alternative to the PNG sidecar.
DISPARITY_NPY_SUFFIX = ".disparity.npy"
#: Bytes a ``.npy`` header may take (numpy's own reading limit is 10,000).
_NPY_HEADER_ROOM = 65536

Size = tuple[int, int]


class NoDepthSidecar(DepthUnavailableError):
    """The photo has no depth sidecar at all (as opposed to one that is refused)."""


class NoMaskSidecar(MaskUnavailableError):
    """The photo has no mask sidecar at all (as opposed to one that is refused)."""


ImageLike = Union[Image.Image, np.ndarray]


def _size_of(image: ImageLike) -> Size:
    return image.size if isinstance(image, Image.Image) else (int(image.shape[1]), int(image.shape[0]))


def fits(map_size: Size, photo_size: Size) -> bool:
    """True when a (width, height) map can be the photo's resized: one scale s takes each photo side to the map's
    within a pixel of rounding on either (|map - s photo| <= 1 + s / 2), or the aspect ratios differ by at most
    :data:`ASPECT_TOLERANCE`."""
    (mw, mh), (pw, ph) = map_size, photo_size
    if abs((mw / mh) / (pw / ph) - 1.0) <= ASPECT_TOLERANCE:
        return True
    # |m - s p| <= 1 + s/2  <=>  (m - 1) / (p + 1/2) <= s <= (m + 1) / (p - 1/2)
    low = max((mw - 1) / (pw + 0.5), (mh - 1) / (ph + 0.5))
    high = min((mw + 1) / max(pw - 0.5, 1e-9), (mh + 1) / max(ph - 0.5, 1e-9))
    return low <= high


def check_fit(map_size: Size, photo_size: Size, name: str) -> None:
    """ValueError (one line) unless the map of size ``map_size`` :func:`fits` the photo."""
    if fits(map_size, photo_size):
        return
    turned = " (it fits the photo turned 90 degrees: save it upright, as the photo displays)" if fits(
        map_size, photo_size[::-1]) else ""
    raise ValueError(
        f"{name} is {map_size[0]}x{map_size[1]} but the photo is {photo_size[0]}x{photo_size[1]}: "
        f"another aspect ratio, so not this photo's map{turned}"
    )


def unit_map(values: np.ndarray, size: Size) -> np.ndarray:
    """A map (larger = nearer; NaN and +-inf are the far end, as in normalize_disparity) min-max normalised to
    [0, 1] by the range of its finite values at its own size, and resized to ``size`` = (width, height), float32.

    The range is taken before resizing and the result is never renormalised: a flat map gives exactly 0
    everywhere, and the area mean (shrinking) or bilinear weights (enlarging) cannot invent new extremes, so
    interpolation noise never becomes depth layers. Applying the range after the resize gives the values of
    normalising first (both steps are linear) without a full-size float64 copy.
    """
    array = np.asarray(values)
    finite = np.isfinite(array)
    if not finite.any():
        return np.zeros((size[1], size[0]), np.float32)
    lo = float(np.min(array, where=finite, initial=np.inf))
    hi = float(np.max(array, where=finite, initial=-np.inf))
    if hi <= lo:
        return np.zeros((size[1], size[0]), np.float32)
    filled = (array if finite.all() else np.where(finite, array, lo)).astype(np.float32, copy=False)
    del finite
    if filled.shape[1] != size[0] or filled.shape[0] != size[1]:
        shrink = size[0] * size[1] < filled.shape[0] * filled.shape[1]
        filled = cv2.resize(filled, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.clip((filled - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


def inverse_depth(depth_m: np.ndarray) -> np.ndarray:
    """1 / z as float32 (larger = nearer): NaN where z <= 0 or NaN, 0 at z = inf; see :func:`disparity_from_depth`."""
    z = np.asarray(depth_m, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(z > 0, np.float32(1.0) / z, np.float32(np.nan))


# ----------------------------------------------------------------------------- reading sidecar files
def _checked_header(stream: BinaryIO, name: str) -> None:
    """Refuse a ``.npy`` stream whose header announces anything but a real 2-D map within the limits."""
    version = np.lib.format.read_magic(stream)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"{name} is a .npy file of format version {version[0]}.{version[1]}; save it with numpy.save")
    shape, _, dtype = readers[version](stream)
    if dtype.kind not in "fiub" or dtype.fields is not None:
        raise ValueError(f"{name} holds {dtype} values, not numbers")
    if len(shape) != 2:
        raise ValueError(f"{name} is not a 2-D array (shape {shape})")
    try:
        check_dimensions(int(shape[1]), int(shape[0]), MAX_PIXELS, name)
    except ImageLoadError as exc:
        raise ValueError(str(exc)) from None
    if shape[0] * shape[1] * dtype.itemsize > MAX_SIDECAR_BYTES:
        raise ValueError(f"{name} holds {shape[0] * shape[1] * dtype.itemsize:,} bytes of data, over the "
                         f"{MAX_SIDECAR_BYTES:,} byte limit")


def read_map_array(data: bytes, name: str, archive: bool = False) -> np.ndarray:
    """The 2-D array of ``.npy`` bytes (or the first array of ``.npz`` bytes), its header checked before any
    data is read; never unpickles."""
    if archive:
        with zipfile.ZipFile(io.BytesIO(data)) as zipped:
            members = [m for m in zipped.namelist() if m.endswith(".npy")]
            if not members:
                raise ValueError(f"{name} holds no array")
            with zipped.open(members[0]) as stream:
                _checked_header(stream, name)
            with zipped.open(members[0]) as stream:  # inflated no further than the header allows
                data = stream.read(MAX_SIDECAR_BYTES + _NPY_HEADER_ROOM)
                if stream.read(1):
                    raise ValueError(f"{name} holds more data than the {MAX_SIDECAR_BYTES:,} byte limit")
    _checked_header(io.BytesIO(data), name)
    return np.load(io.BytesIO(data), allow_pickle=False)


def _sidecar_bytes(photo: PathLike, path: Path, what: str) -> Optional[bytes]:
    """The bytes of a sidecar, or None when there is none; InputFileError when it is refused."""
    if not sidecar_of(photo, path, what):
        return None
    return read_regular(path, MAX_SIDECAR_BYTES, what)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def depth_sidecar_paths(photo: PathLike) -> tuple[Path, Path, Path]:
    """The depth sidecars a photo may have, in order of preference: metric ``.depth.npy``, then relative
    ``.disparity.npy`` and ``.disparity.png``."""
    stem = str(Path(photo).with_suffix(""))
    return tuple(Path(stem + suffix) for suffix in (DEPTH_SIDECAR_SUFFIX, DISPARITY_NPY_SUFFIX, DISPARITY_SIDECAR_SUFFIX))


def _relative_map(data: bytes, name: str) -> np.ndarray:
    """The raw relative disparity of a ``.npy`` / ``.npz`` or 8/16-bit PNG file's bytes (larger = nearer)."""
    if name.lower().endswith((".npy", ".npz")):
        return read_map_array(data, name, archive=name.lower().endswith(".npz"))
    return read_disparity_png(io.BytesIO(data), name=name)


def load_depth_sidecar(photo: PathLike, size: Size) -> DepthMap:
    """Depth of ``photo`` from the first of its :func:`depth_sidecar_paths` that exists, at ``size`` =
    (width, height) of the decoded, upright photo; :class:`DepthUnavailableError` (one line) when there is
    none or it is refused."""
    depth_path, *disparity_paths = depth_sidecar_paths(photo)
    try:
        data = _sidecar_bytes(photo, depth_path, "depth sidecar")
        if data is not None:
            depth = read_map_array(data, depth_path.name).astype(np.float32, copy=False)
            check_fit((depth.shape[1], depth.shape[0]), size, depth_path.name)
            return DepthMap(unit_map(inverse_depth(depth), size), depth_m=resize_map(depth, size), source="sidecar-depth")
        for path in disparity_paths:
            data = _sidecar_bytes(photo, path, "disparity sidecar")
            if data is not None:
                raw = _relative_map(data, path.name)
                check_fit((raw.shape[1], raw.shape[0]), size, path.name)
                return DepthMap(unit_map(raw, size), source="sidecar-disparity")
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DepthUnavailableError(f"unusable depth sidecar for {Path(photo).name}: {_reason(exc)}") from None
    names = [path.name for path in (depth_path, *disparity_paths)]
    raise NoDepthSidecar(
        f"no depth sidecar for {Path(photo).name} (expected {', '.join(names[:-1])} or {names[-1]})"
    )


def load_mask_sidecar(photo: PathLike, size: Size) -> SubjectMask:
    """The subject mask of ``photo`` from ``<stem>.mask.png`` (any bit depth, > 0 = subject) at ``size`` =
    (width, height) (nearest neighbour); :class:`MaskUnavailableError` when missing, refused or empty."""
    path = mask_sidecar_path(photo)
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"mask size must be positive (width, height), got {size}")
    try:
        data = _sidecar_bytes(photo, path, "mask sidecar")
        if data is None:
            raise NoMaskSidecar(f"no mask sidecar for {Path(photo).name} (expected {path.name})")
        with open_checked(io.BytesIO(data), MAX_PIXELS, path.name) as img:
            check_fit(img.size, (width, height), path.name)
            arr = np.asarray(img.convert("RGB") if img.mode == "P" else img)
    except MaskUnavailableError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MaskUnavailableError(f"unusable mask sidecar {path.name}: {_reason(exc)}") from None
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    subject = (arr > 0).astype(np.uint8)
    if subject.shape != (height, width):
        subject = cv2.resize(subject, (width, height), interpolation=cv2.INTER_NEAREST)
    if not subject.any():
        raise MaskUnavailableError(f"mask sidecar {path.name} marks no subject pixels")
    return SubjectMask(subject.astype(bool), 1.0, "sidecar")


def read_disparity_file(path: PathLike, size: Size) -> np.ndarray:
    """A disparity map the user names (8/16-bit PNG, ``.npy`` or ``.npz``; larger = nearer), normalised and
    resized to ``size`` = (width, height); ValueError (one line) when it is refused."""
    file = Path(path)
    try:
        raw = _relative_map(read_regular(file, MAX_SIDECAR_BYTES, "disparity file"), file.name)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"cannot read disparity {file}: {_reason(exc)}") from None
    check_fit((raw.shape[1], raw.shape[0]), size, file.name)
    return unit_map(raw, size)


# ----------------------------------------------------------------------------- the policy
def photo_depth(photo: Optional[PathLike], image: ImageLike, model: Optional[Callable[[Image.Image], DepthMap]] = None,
                *, sidecar: bool = True, disparity_file: Optional[PathLike] = None) -> DepthMap:
    """The depth of a photo: the map the user names (``disparity_file``, ``--disparity``) when given, else its
    sidecar when ``sidecar`` and one exists, else ``model(image)``.

    :class:`DepthUnavailableError` (one line) for a named file or sidecar that exists but is refused, or when
    none of them gives depth. ``photo`` is None for a photo with no file (a dataset row).
    """
    if disparity_file is not None:
        try:
            disparity = read_disparity_file(disparity_file, _size_of(image))
        except ValueError as exc:
            raise DepthUnavailableError(str(exc)) from None
        return DepthMap(disparity, source=f"file {Path(disparity_file).name}")
    if sidecar:
        if photo is not None:
            try:
                return load_depth_sidecar(photo, _size_of(image))
            except NoDepthSidecar:
                if model is None:
                    raise
        elif model is None:
            raise NoDepthSidecar("a photo from a dataset row has no depth sidecar")
    if model is None:
        raise DepthUnavailableError("no depth source: neither a sidecar nor a depth model")
    return model(image if isinstance(image, Image.Image) else Image.fromarray(image))


def photo_mask(photo: Optional[PathLike], image: ImageLike, disparity: Optional[np.ndarray],
               masker: Optional[Callable[[Any, np.ndarray], SubjectMask]] = None, *, sidecar: bool = True) -> SubjectMask:
    """The subject mask of a photo: its sidecar when ``sidecar`` and one exists, else ``masker(image, disparity)``.

    :class:`MaskUnavailableError` (one line) for a sidecar that exists but is refused, or when neither gives
    a mask (a masker needs ``disparity``).
    """
    if sidecar:
        if photo is not None:
            try:
                return load_mask_sidecar(photo, _size_of(image))
            except NoMaskSidecar:
                if masker is None:
                    raise
        elif masker is None:
            raise NoMaskSidecar("a photo from a dataset row has no mask sidecar")
    if masker is None:
        raise MaskUnavailableError("no mask source: neither a sidecar nor a masker")
    if disparity is None:
        raise MaskUnavailableError("the subject masker needs depth, and there is none")
    return masker(image, disparity)
