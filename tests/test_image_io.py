"""Decoding untrusted photos: every bad case is one ImageLoadError line, every odd mode becomes RGB."""
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import TEST_PHOTOS
from estimators.image_io import ImageLoadError, load_image, load_mask



def png_header_only(width, height):
    """A PNG whose IHDR claims width x height and whose data is a tiny stub: a decompression bomb header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def encoded(img, format="JPEG", **kw):
    buf = io.BytesIO()
    img.save(buf, format=format, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not a recognised image"),
        (png_header_only(60000, 60000), "decompression bomb refused"),
        (png_header_only(12000, 9000), "108,000,000 pixels, over the limit of 100,000,000"),
    ],
)
def test_bad_bytes_raise_one_line(data, message):
    with pytest.raises(ImageLoadError, match=message) as exc:
        load_image(data)
    assert "\n" not in str(exc.value)


def test_truncated_jpeg(tmp_path):
    data = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError):
        load_image(path)


def test_pixel_limit_is_configurable(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    assert load_image(path, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageLoadError, match="over the limit of 9,999"):
        load_image(path, max_pixels=9_999)


def test_unreadable_path(tmp_path):
    with pytest.raises(ImageLoadError, match="photo .*missing.jpg cannot be opened: No such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="is a folder, not a regular file"):
        load_image(tmp_path)


def test_modes_become_8_bit_rgb(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(encoded(cmyk, quality=100))
    assert out.mode == "RGB" and np.asarray(out)[4, 4, 0] > 200 and np.asarray(out)[4, 4, 1] < 60

    sixteen = tmp_path / "16.png"
    Image.fromarray(np.full((8, 8), 65535 // 2, np.uint16)).save(sixteen)
    out = np.asarray(load_image(sixteen))
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3) and abs(int(out[0, 0, 0]) - 128) <= 1

    gray = tmp_path / "g.png"
    Image.new("L", (8, 8), 77).save(gray)
    assert np.asarray(load_image(gray))[0, 0].tolist() == [77, 77, 77]

    rgba = tmp_path / "a.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(rgba)  # fully transparent composites onto white
    assert np.asarray(load_image(rgba))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_applied():
    raw = Image.open(TEST_PHOTOS / "exif" / "orientation_landscape_6.jpg")
    img = load_image(TEST_PHOTOS / "exif" / "orientation_landscape_6.jpg")
    assert img.size == (raw.size[1], raw.size[0])  # orientation 6: rotated 90 degrees to be upright


def test_heic_decodes_when_pillow_heif_present():
    pytest.importorskip("pillow_heif")
    img = load_image(TEST_PHOTOS / "exif" / "iphone_13_pro_max.heic")
    assert img.mode == "RGB" and min(img.size) > 0


def test_masks_grey_levels_or_alpha():
    grey = np.zeros((4, 6), dtype=np.uint8)
    grey[1:3, 2:5] = 200  # > 127: subject
    grey[0, 0] = 127  # not
    assert load_mask(encoded(Image.fromarray(grey), "PNG")).tolist() == (grey > 127).tolist()
    # a cut-out: opaque subject on a transparent (white) background; its grey levels would say "all subject"
    rgba = np.full((4, 6, 4), 255, dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[1:3, 2:5, 3] = 255
    assert load_mask(encoded(Image.fromarray(rgba, mode="RGBA"), "PNG")).tolist() == (rgba[..., 3] > 127).tolist()
    with pytest.raises(ImageLoadError, match="cannot decode mask"):
        load_mask(b"not a png")
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_mask(encoded(Image.fromarray(grey), "PNG"), max_pixels=10)


@pytest.mark.parametrize("size,ok", [((20, 1), True), ((1, 20), True), ((21, 1), False), ((1, 40000), False),
                                     ((4000, 199), False), ((4000, 200), True)])
def test_aspect_ratio_limit_of_20_to_1(size, ok):
    data = encoded(Image.new("RGB", size), format="PNG")
    if ok:
        assert load_image(data).size == size
    else:
        with pytest.raises(ImageLoadError, match=r"aspect ratio of \d+:1, over the 20:1 limit"):
            load_image(data)


def test_fifo_photo_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(ImageLoadError, match="is a FIFO"):
        load_image(tmp_path / "pipe.jpg")
