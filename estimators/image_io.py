"""Safe photo decoding: pixel and aspect limits against decompression bombs and strips, EXIF orientation,
any mode to RGB."""
from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO, Callable, TypeVar, Union

import numpy as np
from PIL import Image, ImageOps

from .input_files import InputFileError, read_regular

try:  # HEIC/HEIF (and AVIF on older Pillow) pixels; EXIF is read without it.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - optional at run time
    pillow_heif = None

#: Default ceiling on decoded pixels (a 100 MP photo is larger than any current camera's output).
MAX_PIXELS = 100_000_000
#: Longest side over shortest side of an image or map: wider than a stitched panorama is a strip, not a photo,
#: and scaling its short side to 512 px would take memory without bound.
MAX_ASPECT = 20.0
#: Ceiling on the bytes of one photo file (an uncompressed 8-bit 100 MP TIFF is 300 MB).
MAX_PHOTO_BYTES = 512 * 2**20

ImageSource = Union[str, os.PathLike, bytes]
T = TypeVar("T")


class ImageLoadError(ValueError):
    """A photo that cannot be decoded; the message is one line that says why."""


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageLoadError("empty file (0 bytes)")
        return Image.open(io.BytesIO(source))
    try:
        data = read_regular(source, MAX_PHOTO_BYTES, "photo")
    except InputFileError as exc:
        raise ImageLoadError(str(exc)) from None
    return _open(data)


def check_dimensions(width: int, height: int, max_pixels: int = MAX_PIXELS, what: str = "image") -> None:
    """Refuse (:class:`ImageLoadError`, one line) a size with no pixels, more than ``max_pixels``, or an
    aspect ratio over :data:`MAX_ASPECT`."""
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"invalid {what} size {width}x{height}")
    if width * height > max_pixels:
        raise ImageLoadError(f"{what} has {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageLoadError(
            f"{what} is {width}x{height}, an aspect ratio of {max(width, height) / min(width, height):.0f}:1, "
            f"over the {MAX_ASPECT:g}:1 limit: a strip, not a photo (crop it)"
        )


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (CMYK, 16-bit, grayscale, palette, alpha) to 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_checked(source: Union[str, os.PathLike, BinaryIO], max_pixels: int = MAX_PIXELS, what: str = "image") -> Image.Image:
    """A lazily opened PIL image whose header passed :func:`check_dimensions` (no pixel decoded yet)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_dimensions is the authority
        img = Image.open(source)
    try:
        check_dimensions(*img.size, max_pixels, what)
    except ImageLoadError:
        img.close()
        raise
    return img


def _decode(source: ImageSource, max_pixels: int, convert: Callable[[Image.Image], T]) -> T:
    """``convert`` of the decoded image, refusing (:func:`check_dimensions`) before any pixel is decoded;
    every failure is an :class:`ImageLoadError` with a one-line reason."""
    try:
        with warnings.catch_warnings():
            # Our own limit below is the authority; Pillow's hard limit (2x its MAX_IMAGE_PIXELS) still applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = _open(source)
            check_dimensions(*img.size, max_pixels)
            img.load()
            return convert(img)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"decompression bomb refused: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as exc:
        raise ImageLoadError(f"cannot decode image: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def load_image(source: ImageSource, *, max_pixels: int = MAX_PIXELS, apply_orientation: bool = True) -> Image.Image:
    """Decode a photo to an upright 8-bit RGB PIL image, refusing files over ``max_pixels`` or
    :data:`MAX_ASPECT`; a path must be a regular file of at most :data:`MAX_PHOTO_BYTES`.

    The size is checked from the header before any pixel is decoded, so a decompression bomb
    costs nothing. Every failure raises :class:`ImageLoadError` with a one-line reason.
    """
    return _decode(source, max_pixels, lambda img: _to_rgb(ImageOps.exif_transpose(img) if apply_orientation else img))


def load_mask(source: ImageSource, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A subject mask image as an HxW bool array, True = subject: grey level > 127 (the 0 / 255 masks
    ``bokeh build`` writes), or the alpha channel > 127 of a cut-out; decoded as :func:`load_image`
    decodes (same limit), its errors prefixed "cannot decode mask"."""

    def subject(img: Image.Image) -> np.ndarray:
        return np.asarray(img.convert("RGBA").getchannel("A") if _has_alpha(img) else img.convert("L")) > 127

    try:
        return _decode(source, max_pixels, subject)
    except ImageLoadError as exc:
        raise ImageLoadError(f"cannot decode mask: {exc}") from None


def to_array(img: Image.Image) -> np.ndarray:
    """HxWx3 uint8 array of an RGB PIL image."""
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def as_rgb_array(image: Union[Image.Image, np.ndarray]) -> np.ndarray:
    """HxWx3 uint8 from a PIL image or a uint8 array (gray, RGB or RGBA: alpha dropped)."""
    if isinstance(image, Image.Image):
        return to_array(image)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image array must be uint8 0..255, got {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[..., :3])
    raise ValueError(f"image array must be HxW or HxWx3/4, got shape {array.shape}")


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """Luma (Rec. 601) of an HxWx3 uint8 or float image, as float32 in the input's value range."""
    rgb = np.asarray(rgb, dtype=np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
