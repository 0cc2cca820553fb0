"""Bicubic 2x upsampling by blocked matrix products against torch's own bicubic interpolation."""
import pytest
import torch
import torch.nn.functional as F

from synth_blur.resample import upsample2


@pytest.mark.parametrize("rows, cols", [(1, 1), (5, 7), (16, 16), (17, 33), (40, 3)])
def test_upsample2_equals_torch_bicubic(rows, cols):
    image = torch.rand(3, rows, cols, generator=torch.Generator().manual_seed(rows * 100 + cols), dtype=torch.float64)
    expected = F.interpolate(image[None], scale_factor=2, mode="bicubic", align_corners=False)[0]
    assert torch.allclose(upsample2(image, 2 * rows, 2 * cols), expected, atol=1e-12)


def test_upsample2_crops_and_refuses_too_large_outputs():
    image = torch.rand(1, 8, 8, dtype=torch.float64)
    full = F.interpolate(image[None], scale_factor=2, mode="bicubic", align_corners=False)[0]
    assert torch.allclose(upsample2(image, 11, 13), full[:, :11, :13], atol=1e-12)
    with pytest.raises(ValueError, match="cannot upsample"):
        upsample2(image, 33, 16)


@pytest.mark.parametrize("rows, cols, height, width", [(16, 16, 32, 32), (17, 9, 31, 18)])
def test_upsample2_into_a_given_array_after_other_sizes(rows, cols, height, width):
    # The intermediates come from scratch buffers the thread keeps: a larger call first leaves them dirty.
    upsample2(torch.rand(4, 50, 45, dtype=torch.float64), 100, 90)
    image = torch.rand(2, rows, cols, generator=torch.Generator().manual_seed(rows), dtype=torch.float64)
    expected = F.interpolate(image[None], scale_factor=2, mode="bicubic", align_corners=False)[0, :, :height, :width]
    out = torch.full((2, height, width), float("nan"), dtype=torch.float64)
    assert upsample2(image, height, width, out=out) is out
    assert torch.allclose(out, expected, atol=1e-12)
