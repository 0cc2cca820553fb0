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
