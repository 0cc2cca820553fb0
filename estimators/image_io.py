"""Safe photo decoding: pixel limits against decompression bombs, EXIF orientation, any mode to RGB."""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Callable, TypeVar, Union

import numpy as np
from PIL import Image, ImageOps

try:  # HEIC/HEIF (and AVIF on older Pillow) pixels; EXIF is read without it.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - optional at run time
    pillow_heif = None

#: Default ceiling on decoded pixels (a 100 MP photo is larger than any current camera's output).
MAX_PIXELS = 100_000_000

ImageSource = Union[str, os.PathLike, bytes]
T = TypeVar("T")


class ImageLoadError(ValueError):
    """A photo that cannot be decoded; the message is one line that says why."""


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageLoadError("empty file (0 bytes)")
        return Image.open(io.BytesIO(source))
    path = Path(source)
    if not path.is_file():
        raise ImageLoadError(f"not a readable file: {path}")
    if path.stat().st_size == 0:
        raise ImageLoadError("empty file (0 bytes)")
    return Image.open(path)


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


def _decode(source: ImageSource, max_pixels: int, convert: Callable[[Image.Image], T]) -> T:
    """``convert`` of the decoded image, refusing files over ``max_pixels`` before any pixel is decoded;
    every failure is an :class:`ImageLoadError` with a one-line reason."""
    try:
        with warnings.catch_warnings():
            # Our own limit below is the authority; Pillow's hard limit (2x its MAX_IMAGE_PIXELS) still applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = _open(source)
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageLoadError(f"invalid image size {width}x{height}")
            if width * height > max_pixels:
                raise ImageLoadError(
                    f"image has {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
                )
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
    """Decode a photo to an upright 8-bit RGB PIL image, refusing files over ``max_pixels``.

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
