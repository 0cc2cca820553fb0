"""Sidecar files under limits, their fit to the photo, flat maps kept flat, and the one "sidecar, else model" policy."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from hostile_files import npy_header, png_header_only, sparse_file
from estimators.depth import DepthMap, DepthUnavailableError
from estimators.input_files import InputFileError, read_regular
from estimators.mask import MaskUnavailableError, SubjectMask
from estimators.sidecars import (
    MAX_SIDECAR_BYTES,
    NoDepthSidecar,
    NoMaskSidecar,
    check_fit,
    fits,
    load_depth_sidecar,
    photo_depth,
    photo_mask,
    read_disparity_file,
    read_map_array,
    unit_map,
)


def photo(tmp_path, size=(40, 30), name="p.png"):
    path = tmp_path / name
    Image.new("RGB", size, (90, 120, 150)).save(path)
    return path


# ----------------------------------------------------------------------------- fit
@pytest.mark.parametrize("map_size,photo_size,ok", [
    ((17, 300), (128, 128), False),  # the strip map of a square photo
    ((128, 128), (128, 128), True),
    ((512, 341), (1000, 667), True),  # 341.33 rounded: aspect 1.5015 vs 1.4993
    ((600, 400), (768, 512), True),  # map of the 4000x2667 original, photo at the build's working size
    ((1024, 672), (1000, 667), True),  # padded to multiples of 32: aspect 1.524 vs 1.499, 1.6 % apart
    ((1024, 1024), (1500, 1000), False),  # a square model output for a 3:2 photo
    ((1, 5), (128, 128), False),  # no scale takes 128 to both 1 and 5 within a pixel
    ((16, 11), (1500, 1000), True),  # 16/11 = 1.455 is 3 % off 1.5, but 10.67 rounds to 11
])
def test_fits_accepts_rounding_and_refuses_other_shapes(map_size, photo_size, ok):
    assert fits(map_size, photo_size) is ok


def test_check_fit_names_both_sizes_and_a_turned_map():
    with pytest.raises(ValueError, match=r"a.depth.npy is 300x200 but the photo is 200x300: .*turned 90 degrees"):
        check_fit((300, 200), (200, 300), "a.depth.npy")
    with pytest.raises(ValueError) as info:
        check_fit((17, 300), (128, 128), "b.disparity.png")
    assert "\n" not in str(info.value) and "turned" not in str(info.value)


# ----------------------------------------------------------------------------- flat maps, resizing
def test_flat_disparity_stays_flat_after_resize(tmp_path):
    path = photo(tmp_path, (128, 96))
    Image.fromarray(np.full((3, 4), 40000, np.uint16)).save(tmp_path / "p.disparity.png")
    depth = load_depth_sidecar(path, (128, 96))
    assert depth.disparity.shape == (96, 128)
    assert np.ptp(depth.disparity) == 0.0  # min-max of a constant is 0 everywhere: no bands


def test_flat_metric_depth_stays_flat_after_resize(tmp_path):
    path = photo(tmp_path, (90, 60))
    np.save(tmp_path / "p.depth.npy", np.full((20, 30), 3.7, np.float32))
    depth = load_depth_sidecar(path, (90, 60))
    assert np.ptp(depth.disparity) == 0.0 and depth.depth_range_m == pytest.approx((3.7, 3.7))


def test_unit_map_takes_the_range_before_resizing_and_never_renormalises():
    ramp = np.linspace(0.2, 0.7, 12, dtype=np.float32).reshape(3, 4)
    blocks = np.kron(ramp, np.ones((10, 10), np.float32))
    np.testing.assert_allclose(unit_map(blocks, (4, 3)), (ramp - 0.2) / 0.5, atol=1e-6)  # area mean of each block
    up = unit_map(ramp, (40, 30))
    assert up.min() == 0.0 and up.max() == pytest.approx(1.0)  # bilinear weights: no new extremes
    # A 2x2 map shrunk to one pixel is its mean, 0.75; renormalising would turn it into 0.
    assert unit_map(np.array([[0.0, 1.0], [1.0, 1.0]]), (1, 1))[0, 0] == pytest.approx(0.75)
    # NaN and -inf are the far end; the range is over the finite values (2 .. 4).
    np.testing.assert_allclose(unit_map(np.array([[np.nan, 2.0], [-np.inf, 4.0]]), (2, 2)), [[0, 0], [0, 1]])


# ----------------------------------------------------------------------------- limits
def test_sparse_npy_is_refused_by_its_size_before_reading(tmp_path):
    path = photo(tmp_path)
    header = npy_header((10000, 10000))
    sparse_file(tmp_path / "p.depth.npy", header, len(header) + 10000 * 10000 * 8)  # 800 MB on paper
    with pytest.raises(DepthUnavailableError, match=r"over the 128 MiB limit"):
        load_depth_sidecar(path, (40, 30))


@pytest.mark.parametrize("header,message", [
    (npy_header((30, 40, 3)), "not a 2-D array"),
    (npy_header((8000, 8000), "<f4"), "over the .* byte limit"),  # 256 MB of data, in a header of 128 bytes
    (npy_header((1, 4000), "<f4"), "aspect ratio of 4000:1"),
    (npy_header((30, 40), "|O"), "not numbers"),
])
def test_npy_header_is_checked_before_any_data(header, message):
    with pytest.raises(ValueError, match=message):
        read_map_array(header, "m.npy")


def test_npz_member_is_checked_before_it_is_inflated(tmp_path):
    np.savez_compressed(tmp_path / "d.npz", np.zeros((12000, 12000), np.uint8))  # 144 MP in a small file
    assert os.path.getsize(tmp_path / "d.npz") < MAX_SIDECAR_BYTES
    with pytest.raises(ValueError, match="over the limit of 100,000,000"):
        read_disparity_file(tmp_path / "d.npz", (40, 30))


def test_disparity_png_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    path = photo(tmp_path, (100, 100))
    (tmp_path / "p.disparity.png").write_bytes(png_header_only(13000, 13000, bit_depth=16, colour=0))
    with pytest.raises(DepthUnavailableError, match="169,000,000 pixels, over the limit"):
        load_depth_sidecar(path, (100, 100))


def test_fifo_and_device_are_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(InputFileError, match="is a FIFO") as info:
        read_regular(tmp_path / "pipe.png", 100, "photo")
    assert info.value.code == "not-a-file"
    os.symlink("/dev/zero", tmp_path / "zero.png")
    with pytest.raises(InputFileError, match="is a character device"):
        read_regular(tmp_path / "zero.png", 100, "photo")


def test_sidecar_symlinked_out_of_the_photo_folder_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    path = photo(tmp_path / "in")
    np.save(tmp_path / "elsewhere.npy", np.ones((30, 40), np.float32))
    os.symlink(tmp_path / "elsewhere.npy", tmp_path / "in" / "p.depth.npy")
    with pytest.raises(DepthUnavailableError, match="outside the photo's folder"):
        load_depth_sidecar(path, (40, 30))
    np.save(tmp_path / "in" / "real.npy", np.ones((30, 40), np.float32))
    os.replace(tmp_path / "in" / "p.depth.npy", tmp_path / "gone")
    os.symlink("real.npy", tmp_path / "in" / "p.depth.npy")  # inside the folder: read
    assert load_depth_sidecar(path, (40, 30)).is_metric


# ----------------------------------------------------------------------------- the policy
class CountingModel:
    """A depth model that records its calls and answers a fixed ramp."""

    def __init__(self):
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        return DepthMap(np.tile(np.linspace(0, 1, image.size[0], dtype=np.float32), (image.size[1], 1)), source="model")


def test_sidecar_wins_a_missing_one_falls_to_the_model_a_refused_one_never_does(tmp_path):
    path = photo(tmp_path)
    image = Image.open(path)
    model = CountingModel()
    assert photo_depth(path, image, model).source == "model" and model.calls == 1  # none: the model
    with pytest.raises(NoDepthSidecar, match="no depth sidecar for p.png"):
        photo_depth(path, image)  # none and no model
    Image.fromarray(np.full((30, 40), 200, np.uint8)).save(tmp_path / "p.disparity.png")
    assert photo_depth(path, image, model).source == "sidecar-disparity" and model.calls == 1
    assert photo_depth(path, image, model, sidecar=False).source == "model" and model.calls == 2
    Image.fromarray(np.zeros((300, 17), np.uint8)).save(tmp_path / "p.disparity.png")
    with pytest.raises(DepthUnavailableError, match="17x300 but the photo is 40x30") as info:
        photo_depth(path, image, model)
    assert not isinstance(info.value, NoDepthSidecar) and model.calls == 2
    with pytest.raises(NoDepthSidecar, match="dataset row"):
        photo_depth(None, np.zeros((30, 40, 3), np.uint8))


def test_mask_policy_matches_the_depth_policy(tmp_path):
    path = photo(tmp_path)
    image = Image.open(path)
    disparity = np.zeros((30, 40), np.float32)
    masker = lambda img, disp: SubjectMask(np.ones(disp.shape, bool), 0.5, "masker")  # noqa: E731
    assert photo_mask(path, image, disparity, masker).source == "masker"
    with pytest.raises(NoMaskSidecar):
        photo_mask(path, image, disparity)
    with pytest.raises(MaskUnavailableError, match="needs depth"):
        photo_mask(path, image, None, masker)
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(tmp_path / "p.mask.png")  # right shape, but empty
    with pytest.raises(MaskUnavailableError, match="no subject pixels"):
        photo_mask(path, image, disparity, masker)


def test_npz_member_that_inflates_past_its_header_is_refused(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "d.npz", "w", zipfile.ZIP_DEFLATED) as archive:  # a small header, then 200 MB
        with archive.open("arr_0.npy", "w", force_zip64=True) as member:
            member.write(npy_header((30, 40), "|u1"))
            for _ in range(200):
                member.write(bytes(2**20))
    with pytest.raises(ValueError, match="more data than the 134,217,728 byte limit"):
        read_disparity_file(tmp_path / "d.npz", (40, 30))
