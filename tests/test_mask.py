"""Subject masks: depth prompt, GrabCut masker, SAM candidate choice, tiny SAM, sidecars."""
from __future__ import annotations


import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import DEMO_PHOTOS
from estimators.image_io import load_image
from estimators.mask import (
    DepthMasker,
    MaskUnavailableError,
    SamMasker,
    choose_mask,
    depth_prompt,
    mask_choice_score,
    size_factor,
)
from estimators.model_loading import ModelUnavailableError
from estimators.sidecars import load_depth_sidecar, load_mask_sidecar



def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _scene(height=240, width=320, seed=0, blur=4.0, side_block=False):
    """Textured bluish background far away, a textured reddish disc near; disparity blurred like a model's."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    subject = (xx - 0.45 * width) ** 2 + (yy - 0.55 * height) ** 2 <= (0.22 * height) ** 2
    def texture(cell, tint):
        noise = rng.integers(0, 256, (height // cell, width // cell, 3), dtype=np.uint8)
        return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC) * 0.4 + np.array(tint) * 0.6
    image = np.where(subject[..., None], texture(6, (200, 80, 50)), texture(8, (40, 90, 140)))
    disparity = 0.15 + 0.1 * yy / height
    if side_block:  # a larger, less near object in the lower-left corner (like a parked car)
        disparity = np.where((xx < 0.25 * width) & (yy > 0.45 * height), 0.65, disparity)
    disparity = np.where(subject, 0.9, disparity).astype(np.float32)
    if blur:
        disparity = cv2.GaussianBlur(disparity, (0, 0), blur)
    return image.clip(0, 255).astype(np.uint8), disparity, subject


# ---------------------------------------------------------------- depth prompt and GrabCut masker


def test_depth_prompt_finds_near_subject_not_side_object():
    _, disparity, subject = _scene(blur=0, side_block=True)
    prompt = depth_prompt(disparity)
    assert not prompt.flat
    assert _iou(prompt.region, subject) > 0.9
    assert (prompt.region & subject).sum() / prompt.region.sum() > 0.99  # none of the side object
    ys, xs = np.nonzero(subject)
    np.testing.assert_allclose(prompt.box, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), atol=2)
    assert 1 <= len(prompt.points) <= 3
    for x, y in prompt.points:
        assert subject[int(y), int(x)]
    assert prompt.score > 0.8  # a sharp step from 0.9 to ~0.2 over a spread of ~0.75


def test_depth_masker_recovers_textured_disc():
    image, disparity, subject = _scene()
    result = DepthMasker()(Image.fromarray(image), disparity)
    assert result.mask.dtype == bool and result.mask.shape == subject.shape
    assert result.source == "depth-grabcut"
    assert _iou(result.mask, subject) >= 0.9
    assert 0.3 < result.score <= 1.0


def test_depth_masker_works_at_reduced_size_on_large_images(monkeypatch):
    import cv2

    from estimators import mask as mask_module

    image, disparity, subject = _scene(height=1000, width=1500, blur=12)
    seen = []
    real_grabcut = cv2.grabCut

    def recording_grabcut(img, *args):
        seen.append(img.shape[:2])
        return real_grabcut(img, *args)

    monkeypatch.setattr(mask_module.cv2, "grabCut", recording_grabcut)
    result = DepthMasker()(image, disparity)
    assert result.mask.shape == (1000, 1500)
    assert _iou(result.mask, subject) >= 0.9
    # GrabCut ran once, on the image scaled so that its long side is WORKING_SIDE
    side = mask_module.WORKING_SIDE
    assert seen == [(round(1000 * side / 1500), side)]


def test_flat_depth_gives_low_score_centre_mask():
    image, _, _ = _scene()
    for pixels in (image, np.zeros_like(image)):
        result = DepthMasker()(pixels, np.full(image.shape[:2], 0.4, np.float32))
        assert result.score <= 0.1 and result.source == "centre-prior"
        ys, xs = np.nonzero(result.mask)
        assert abs(xs.mean() - 160) < 3 and abs(ys.mean() - 120) < 3
        assert 0.1 < result.mask.mean() < 0.5


def test_all_zero_image_and_nan_depth_do_not_crash():
    image, disparity, subject = _scene()
    result = DepthMasker()(np.zeros_like(image), disparity)
    assert result.mask.shape == image.shape[:2] and result.mask.any()
    assert 0.0 <= result.score <= 1.0
    holed = disparity.copy()
    holed[:20, :40] = np.nan  # unknown depth counts as far
    result = DepthMasker()(image, holed)
    assert _iou(result.mask, subject) >= 0.9


def test_mismatched_disparity_is_a_clear_error():
    image, disparity, _ = _scene()
    with pytest.raises(ValueError, match="does not match"):
        DepthMasker()(image, disparity[:-1])


def test_depth_masker_on_demo_photo():
    photo = DEMO_PHOTOS / "street_8.jpg"
    image = load_image(photo)
    disparity = load_depth_sidecar(photo, image.size).disparity
    result = DepthMasker()(image, disparity)
    fraction = result.mask.mean()
    assert 0.01 <= fraction <= 0.70
    assert (disparity[result.mask] > np.median(disparity)).mean() >= 0.9
    # The subject is the man in the green jacket, between 60 % and 90 % of the width (seen by eye).
    xs = np.nonzero(result.mask)[1] / image.width
    assert ((xs > 0.6) & (xs < 0.9)).mean() >= 0.9


# ---------------------------------------------------------------- choosing among SAM candidates


def test_size_factor_by_hand():
    assert size_factor(0.3) == 1.0
    assert size_factor(0.0025) == pytest.approx(0.5)  # half of the 0.5 % floor
    assert size_factor(0.85) == pytest.approx(0.5)  # halfway from 70 % to 100 %
    assert size_factor(1.0) == 0.0


def _disparity_with_square():
    disparity = np.zeros((100, 100), np.float32)
    disparity[30:62, 40:71] = 1.0  # the subject: 32 x 31 = 9.92 % of the image
    return disparity


def _rect(y0, y1, x0, x1):
    mask = np.zeros((100, 100), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_choose_prefers_subject_over_whole_image_and_far_patch():
    disparity = _disparity_with_square()
    candidates = np.stack([_rect(0, 100, 0, 100), _rect(30, 62, 40, 71), _rect(80, 100, 0, 25)])
    index, merit = choose_mask(candidates, np.array([0.95, 0.80, 0.90]), disparity)
    assert index == 1
    # By hand: size factor 1, nearness (1 - 0.0992) / (1 - 0.0992) = 1, merit 0.6 * 0.8 + 0.4 * 1.
    assert merit == pytest.approx(0.88)


def test_choose_prefers_near_candidate_at_equal_iou_and_size():
    disparity = _disparity_with_square()
    candidates = np.stack([_rect(0, 32, 0, 31), _rect(30, 62, 40, 71)])
    index, _ = choose_mask(candidates, np.array([0.9, 0.9]), disparity)
    assert index == 1


def test_choose_rejects_tiny_speck_and_otherwise_follows_iou():
    disparity = _disparity_with_square()
    speck = _rect(40, 43, 50, 53)  # 0.09 % of the image, on the subject
    index, _ = choose_mask(np.stack([speck, _rect(30, 62, 40, 71)]), np.array([0.99, 0.7]), disparity)
    assert index == 1
    # speck merit by hand: 0.09 / 0.5 * (0.6 * 0.99 + 0.4 * 1) = 0.17892
    assert mask_choice_score(0.99, 1.0, 0.0009) == pytest.approx(0.17892)
    # two sound, equally near candidates: the higher predicted IoU wins
    index, _ = choose_mask(np.stack([_rect(30, 62, 40, 71), _rect(32, 60, 42, 69)]), np.array([0.7, 0.9]), disparity)
    assert index == 1


# ---------------------------------------------------------------- tiny SAM from disk


def test_tiny_sam_returns_image_sized_bool_mask(sam_dir):
    masker = SamMasker(str(sam_dir), device="cpu")
    for height, width in ((240, 320), (150, 90)):
        image, disparity, _ = _scene(height=height, width=width)
        result = masker(Image.fromarray(image), disparity)
        assert result.mask.dtype == bool and result.mask.shape == (height, width)
        assert 0.0 <= result.score <= 1.0
        assert result.source == f"sam:{sam_dir}"


def test_sam_missing_model_names_flag(tmp_path):
    with pytest.raises(ModelUnavailableError, match="--mask depth"):
        SamMasker(str(tmp_path / "no_sam"), device="cpu")


# ---------------------------------------------------------------- sidecars


def test_sidecar_8_bit_resized_nearest(tmp_path):
    small = np.zeros((20, 30), np.uint8)
    small[5:12, 8:20] = 255
    small[0, 0] = 1  # any value > 0 is subject
    Image.fromarray(small).save(tmp_path / "photo.mask.png")
    result = load_mask_sidecar(tmp_path / "photo.jpg", (60, 40))
    expected = np.repeat(np.repeat(small > 0, 2, axis=0), 2, axis=1)
    assert result.mask.shape == (40, 60)
    np.testing.assert_array_equal(result.mask, expected)
    assert result.source == "sidecar" and result.score == 1.0


def test_sidecar_16_bit(tmp_path):
    mask = np.zeros((40, 60), np.uint16)
    mask[10:30, 20:50] = 1000
    assert cv2.imwrite(str(tmp_path / "shot.mask.png"), mask)
    with Image.open(tmp_path / "shot.mask.png") as img:
        assert img.mode.startswith("I")  # really a 16-bit file
    result = load_mask_sidecar(tmp_path / "shot.heic", (60, 40))
    np.testing.assert_array_equal(result.mask, mask > 0)


def test_sidecar_missing_broken_or_empty(tmp_path):
    with pytest.raises(MaskUnavailableError, match="no mask sidecar for a.jpg"):
        load_mask_sidecar(tmp_path / "a.jpg", (10, 10))
    (tmp_path / "b.mask.png").write_bytes(b"not a png")
    with pytest.raises(MaskUnavailableError, match="unusable mask sidecar b.mask.png"):
        load_mask_sidecar(tmp_path / "b.jpg", (10, 10))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "c.mask.png")
    with pytest.raises(MaskUnavailableError, match="no subject pixels"):
        load_mask_sidecar(tmp_path / "c.jpg", (10, 10))


def test_depth_masker_takes_the_in_focus_subject_not_the_foreground():
    """Thin-lens render (tests/data/physics) with a blurred object in front of the focused subject: the mask
    is the plane at the focus distance; in the pinhole render of the same scene (nothing to read focus
    from) it is the nearest region, the foreground object. Truth from the metric depth."""
    import json
    from pathlib import Path

    from estimators.depth import disparity_from_depth

    data = Path(__file__).parent / "data" / "physics"
    camera = json.loads((data / "ff50-f1.8-fg.json").read_text())
    depth = np.load(data / "ff50-f1.8-fg.depth.npy", allow_pickle=False).astype(np.float32)
    subject = np.abs(depth - camera["focus_distance_m"]) < 0.01
    foreground = depth < 0.95 * camera["focus_distance_m"]
    assert subject.any() and foreground.any()
    disparity = disparity_from_depth(depth)
    lens = np.asarray(Image.open(data / "ff50-f1.8-fg.png").convert("RGB"))
    found = DepthMasker()(lens, disparity).mask
    assert _iou(found, subject) > 0.7 and (found & foreground).sum() < 0.05 * found.sum()
    pinhole = np.asarray(Image.open(data / "ff50-f1.8-fg.pinhole.png").convert("RGB"))
    assert _iou(DepthMasker()(pinhole, disparity).mask, foreground) > 0.7
