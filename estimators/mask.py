"""Subject masks: the in-focus (or nearest salient) depth region, refined by GrabCut (no weights) or
SAM, or a sidecar (read by :mod:`estimators.sidecars`).

Both model-free and SAM masks start from one automatic prompt (:func:`subject_prompt`): in a photo
with defocus the region where it is sharpest (:func:`focus_prompt`), in an all-in-focus one the
nearest depth region that is large and central enough (:func:`depth_prompt`), with its box and a few
interior points.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import cv2
import numpy as np
from PIL import Image

from estimators.depth import normalize_disparity
from estimators.focal_plane import find_focal_plane
from estimators.image_io import as_rgb_array, to_gray

if TYPE_CHECKING:  # torch is imported only when a SamMasker is built
    import torch

DEFAULT_SAM_MODEL = "facebook/sam-vit-base"
MASK_SIDECAR_SUFFIX = ".mask.png"  # any bit depth, > 0 = subject

#: Masks are found at a long side of at most this many pixels, then upsampled.
WORKING_SIDE = 512
#: Depth maps whose 2nd-99th percentile spread is below this have no usable structure.
FLAT_SPREAD = 0.05
#: Confidence given to the centre-prior mask used when depth has no structure.
FLAT_SCORE = 0.05
#: Subject sizes (fraction of the image) outside this range are penalised.
MIN_AREA, MAX_AREA = 0.005, 0.70

ImageLike = Union[Image.Image, np.ndarray]


class MaskUnavailableError(ValueError):
    """No subject mask could be read for a photo (missing or refused sidecar); one-line reason."""


@dataclass
class SubjectMask:
    """A subject mask (HxW bool), its confidence in [0, 1] and where it came from."""

    mask: np.ndarray
    score: float
    source: str


@dataclass
class DepthPrompt:
    """The nearest salient depth region with its box (x0, y0, x1, y1, pixel edges) and interior points (x, y)."""

    region: np.ndarray
    box: tuple[float, float, float, float]
    points: np.ndarray
    score: float
    flat: bool = False


# ---------------------------------------------------------------- scoring rules (pure functions)


def size_factor(area_fraction: float) -> float:
    """1 for subject sizes in [MIN_AREA, MAX_AREA], falling linearly to 0 at an empty or full image."""
    a = float(area_fraction)
    if a < MIN_AREA:
        return max(a, 0.0) / MIN_AREA
    if a > MAX_AREA:
        return max(0.0, (1.0 - a) / (1.0 - MAX_AREA))
    return 1.0


def nearness(mean_inside: float, mean_image: float, near_end: float) -> float:
    """How near a region is, in [0, 1]: 0 at the image's mean disparity, 1 at its near end (99th pct).

    A map with no depth range gives the neutral 0.5.
    """
    span = float(near_end) - float(mean_image)
    if span < 1e-3:
        return 0.5
    return float(np.clip((float(mean_inside) - float(mean_image)) / span, 0.0, 1.0))


def mask_choice_score(iou_score: float, near: float, area_fraction: float) -> float:
    """Combined merit in [0, 1] of a candidate mask: predicted IoU and nearness, times the size factor."""
    return size_factor(area_fraction) * (0.6 * float(np.clip(iou_score, 0.0, 1.0)) + 0.4 * float(near))


def choose_mask(masks: np.ndarray, iou_scores: np.ndarray, disparity: np.ndarray) -> tuple[int, float]:
    """Index and merit of the best of N candidate masks (N x H x W bool) by :func:`mask_choice_score`."""
    disp = normalize_disparity(disparity)
    mean_image, near_end = float(disp.mean()), float(np.percentile(disp, 99))
    merits = []
    for mask, iou in zip(np.asarray(masks, dtype=bool), np.asarray(iou_scores, dtype=np.float64)):
        area = float(mask.mean())
        near = nearness(float(disp[mask].mean()), mean_image, near_end) if mask.any() else 0.0
        merits.append(mask_choice_score(float(iou), near, area))
    best = int(np.argmax(merits))
    return best, float(merits[best])


# ---------------------------------------------------------------- automatic prompt from depth


def _centre_weight(height: int, width: int) -> np.ndarray:
    """A Gaussian centre prior (1 at the centre, sigma 35 % of each side)."""
    y = (np.arange(height, dtype=np.float32) + 0.5) / height - 0.5
    x = (np.arange(width, dtype=np.float32) + 0.5) / width - 0.5
    return np.exp(-0.5 * ((y[:, None] / 0.35) ** 2 + (x[None, :] / 0.35) ** 2))


def _centre_region(height: int, width: int) -> np.ndarray:
    """A centred ellipse (semi-axes 25 % of the width, 35 % of the height): the subject when depth says nothing."""
    y = (np.arange(height, dtype=np.float32) + 0.5) / height - 0.5
    x = (np.arange(width, dtype=np.float32) + 0.5) / width - 0.5
    return (y[:, None] / 0.35) ** 2 + (x[None, :] / 0.25) ** 2 <= 1.0


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every enclosed background hole filled."""
    padded = np.pad(mask.astype(np.uint8), 1)
    outside = padded.copy()
    cv2.floodFill(outside, None, (0, 0), 2)
    return (outside != 2)[1:-1, 1:-1]


def _interior_points(region: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` well-separated interior points (x, y): successive maxima of the distance to the edge."""
    dist = cv2.distanceTransform(np.pad(region.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    points = []
    yy, xx = np.mgrid[: region.shape[0], : region.shape[1]]
    for _ in range(count):
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        radius = float(dist[y, x])
        if radius < 1.0:
            break
        points.append((x + 0.5, y + 0.5))
        dist[(yy - y) ** 2 + (xx - x) ** 2 <= (1.5 * radius) ** 2] = 0.0
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def _box(region: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(region)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _prompt_from_region(region: np.ndarray, score: float, flat: bool, n_points: int) -> DepthPrompt:
    return DepthPrompt(region, _box(region), _interior_points(region, n_points), float(score), flat)


def depth_prompt(disparity: np.ndarray, n_points: int = 3) -> DepthPrompt:
    """The nearest salient depth region of a disparity map (larger = nearer), as a mask, box and points.

    Bands just below the near end are split into connected components; each is rated by nearness
    (squared), centrality (a centre prior) and size (fourth root of its area, penalised outside
    [MIN_AREA, MAX_AREA]), and the best one, holes filled, is the subject. The score is its depth
    contrast with its surroundings. A map with no depth structure gives a low-score centre ellipse.
    """
    disp = normalize_disparity(np.asarray(disparity))
    if disp.ndim != 2 or min(disp.shape) < 2:
        raise ValueError(f"disparity must be a 2-D map of at least 2x2 pixels, got shape {disp.shape}")
    height, width = disp.shape
    low, near_end = np.percentile(disp, [2, 99])
    spread = float(near_end - low)
    if spread < FLAT_SPREAD:
        return _prompt_from_region(_centre_region(height, width), FLAT_SCORE, True, n_points)

    sigma = max(1.0, max(height, width) / 256.0)
    smooth = cv2.GaussianBlur(disp, (0, 0), sigma)
    weight = _centre_weight(height, width)
    mean_image = float(smooth.mean())
    best_rating, best_labels, best_k = 0.0, None, 0
    for band in (0.15, 0.25, 0.35, 0.5):
        count, labels = cv2.connectedComponents((smooth >= near_end - band * spread).astype(np.uint8), connectivity=8)
        flat_labels = labels.ravel()
        area = np.bincount(flat_labels, minlength=count).astype(np.float64)
        area[0] = np.inf  # label 0 is the far side of the threshold
        mean_d = np.bincount(flat_labels, weights=smooth.ravel(), minlength=count) / area
        centrality = np.bincount(flat_labels, weights=weight.ravel(), minlength=count) / area
        fraction = area / disp.size
        for k in range(1, count):
            rating = (
                nearness(mean_d[k], mean_image, near_end) ** 2
                * centrality[k]
                * fraction[k] ** 0.25
                * size_factor(fraction[k])
            )
            if rating > best_rating:
                best_rating, best_labels, best_k = rating, labels, k
    if best_labels is None:
        return _prompt_from_region(_centre_region(height, width), FLAT_SCORE, True, n_points)

    region = _fill_holes(best_labels == best_k)
    ring_width = max(2, int(round(0.05 * max(height, width))))
    ring = cv2.dilate(region.astype(np.uint8), np.ones((2 * ring_width + 1,) * 2, np.uint8)).astype(bool) & ~region
    surround = float(smooth[ring].mean()) if ring.any() else float(low)
    contrast = float(np.clip((float(smooth[region].mean()) - surround) / spread, 0.0, 1.0))
    return _prompt_from_region(region, contrast, False, n_points)


def focus_prompt(gray: np.ndarray, disparity: np.ndarray, n_points: int = 3) -> Optional[DepthPrompt]:
    """The in-focus region of a photo with defocus as a prompt (docs/design.md §1), or None when the photo has
    no readable defocus (then the subject rule, :func:`depth_prompt`, decides).

    The focal plane's depth layer (:func:`estimators.focal_plane.find_focal_plane`) is split into
    connected components; the one with the most centre-weighted area, holes filled, is the subject. The
    score is its share of the layer's area.
    """
    plane = find_focal_plane(gray, disparity)
    if plane.disparity is None or not plane.region.any():
        return None
    height, width = plane.region.shape
    count, labels = cv2.connectedComponents(plane.region.astype(np.uint8), connectivity=8)
    weight = _centre_weight(height, width).ravel()
    merit = np.bincount(labels.ravel(), weights=weight, minlength=count)
    merit[0] = -1.0  # label 0 is outside the layer
    best = int(np.argmax(merit))
    region = _fill_holes(labels == best)
    area = np.bincount(labels.ravel(), minlength=count)
    return _prompt_from_region(region, float(area[best] / area[1:].sum()), False, n_points)


def subject_prompt(rgb: np.ndarray, disparity: np.ndarray, n_points: int = 3) -> DepthPrompt:
    """The prompt of a photo's subject: its in-focus region when it has readable defocus, else the
    nearest salient depth region."""
    return focus_prompt(to_gray(rgb), disparity, n_points) or depth_prompt(disparity, n_points)


# ---------------------------------------------------------------- helpers shared by the maskers


def _checked_disparity(disparity: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    disp = np.asarray(disparity, dtype=np.float32)
    if disp.shape != shape:
        raise ValueError(f"disparity shape {disp.shape} does not match the image's {shape}")
    return disp


def _working_scale(height: int, width: int) -> float:
    return min(1.0, WORKING_SIDE / max(height, width))


def _downscale(array: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return array
    size = (max(2, round(array.shape[1] * scale)), max(2, round(array.shape[0] * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA)


def _upscale_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape == (height, width):
        return mask.astype(bool)
    return cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


# ---------------------------------------------------------------- maskers


class DepthMasker:
    """Weight-free subject mask: the depth prompt's region refined by GrabCut at a reduced size."""

    def __init__(self, iterations: int = 4) -> None:
        if int(iterations) < 1:
            raise ValueError(f"GrabCut iterations must be at least 1, got {iterations}")
        self.iterations = int(iterations)

    def __call__(self, image: ImageLike, disparity: np.ndarray) -> SubjectMask:
        """Subject mask of ``image`` (PIL or uint8 array) given its disparity (HxW, larger = nearer)."""
        rgb = as_rgb_array(image)
        height, width = rgb.shape[:2]
        disp = _checked_disparity(disparity, (height, width))
        scale = _working_scale(height, width)
        small_rgb, small_disp = _downscale(rgb, scale), _downscale(disp, scale)
        prompt = subject_prompt(small_rgb, small_disp)
        if prompt.flat:
            return SubjectMask(_upscale_mask(prompt.region, height, width), prompt.score, "centre-prior")
        refined = self._grabcut(small_rgb, normalize_disparity(small_disp), prompt.region)
        score = prompt.score * (0.5 + 0.5 * _iou(refined, prompt.region))
        return SubjectMask(_upscale_mask(refined, height, width), float(score), "depth-grabcut")

    def _grabcut(self, rgb: np.ndarray, disp: np.ndarray, region: np.ndarray) -> np.ndarray:
        """GrabCut seeded from depth: eroded region sure fg, band probable, the depth layers far from the
        subject's (in front of it or behind) sure bg."""
        band = max(2, int(round(0.01 * max(rgb.shape[:2]))))
        kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
        core = cv2.erode(region.astype(np.uint8), kernel).astype(bool)
        near_zone = cv2.dilate(region.astype(np.uint8), kernel).astype(bool)
        subject_level = float(np.median(disp[region]))
        outside = np.abs(disp[~near_zone] - subject_level)
        separation = float(np.median(outside)) if outside.size else 1.0
        far = np.abs(disp - subject_level) > 0.5 * separation

        labels = np.full(region.shape, cv2.GC_PR_BGD, np.uint8)
        labels[far & ~near_zone] = cv2.GC_BGD
        labels[region] = cv2.GC_PR_FGD
        labels[core] = cv2.GC_FGD
        foreground = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        if foreground.all() or not foreground.any():
            return region  # GrabCut needs samples of both sides
        bgd_model, fgd_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(
            cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), labels, None, bgd_model, fgd_model, self.iterations, cv2.GC_INIT_WITH_MASK
        )
        result = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        seed = core if core.any() else region
        count, components = cv2.connectedComponents(result.astype(np.uint8), connectivity=8)
        keep = np.zeros(count, bool)
        keep[np.unique(components[seed & result])] = True
        keep[0] = False
        result = keep[components]
        return _fill_holes(result) if result.any() else region


class SamMasker:
    """Segment Anything prompted with the depth prompt's box and points, keeping the best of its
    candidates by :func:`choose_mask`; depth with no structure gives the low-score centre prior."""

    def __init__(
        self,
        model: str = DEFAULT_SAM_MODEL,
        device: Optional[str | torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        import torch
        from transformers import SamModel, SamProcessor

        from estimators.model_loading import load_pretrained, resolve_device

        self.model_name = str(model)
        self.device = resolve_device(device)
        self.dtype = dtype if dtype is not None else torch.float32
        self.processor = load_pretrained(SamProcessor.from_pretrained, self.model_name, what="SAM model", avoid="--mask depth")
        network = load_pretrained(SamModel.from_pretrained, self.model_name, what="SAM model", avoid="--mask depth")
        self.model = network.to(device=self.device, dtype=self.dtype).eval()
        self.source = f"sam:{self.model_name}"

    def __call__(self, image: ImageLike, disparity: np.ndarray) -> SubjectMask:
        """Subject mask of ``image`` (PIL or uint8 array) given its disparity (HxW, larger = nearer)."""
        import torch

        rgb = as_rgb_array(image)
        height, width = rgb.shape[:2]
        disp = _checked_disparity(disparity, (height, width))
        scale = _working_scale(height, width)
        prompt = subject_prompt(_downscale(rgb, scale), _downscale(disp, scale))
        if prompt.flat:
            return SubjectMask(_upscale_mask(prompt.region, height, width), prompt.score, "centre-prior")
        x_scale, y_scale = width / prompt.region.shape[1], height / prompt.region.shape[0]
        box = [prompt.box[0] * x_scale, prompt.box[1] * y_scale, prompt.box[2] * x_scale, prompt.box[3] * y_scale]
        points = (prompt.points * [x_scale, y_scale]).tolist()
        prompts = {"input_boxes": [[box]]}
        if points:
            prompts.update(input_points=[[points]], input_labels=[[[1] * len(points)]])
        inputs = self.processor(images=Image.fromarray(rgb), return_tensors="pt", **prompts)
        model_inputs = {
            name: inputs[name].to(self.device, self.dtype if inputs[name].is_floating_point() else None)
            for name in ("pixel_values", "input_boxes", "input_points", "input_labels")
            if name in inputs
        }
        with torch.inference_mode():
            outputs = self.model(**model_inputs, multimask_output=True)
        candidates = self.processor.post_process_masks(
            outputs.pred_masks.float().cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0][0]
        index, merit = choose_mask(candidates.numpy(), outputs.iou_scores[0, 0].float().cpu().numpy(), disp)
        return SubjectMask(candidates[index].numpy().astype(bool), merit, self.source)


# ---------------------------------------------------------------- sidecar


def mask_sidecar_path(photo: str | Path) -> Path:
    """``<stem>.mask.png`` next to ``photo``."""
    return Path(f"{Path(photo).with_suffix('')}{MASK_SIDECAR_SUFFIX}")
