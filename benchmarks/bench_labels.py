"""Physical validation of the K labels: thin-lens scenes rendered with Mitsuba 3 against the estimator.

Run: ``PYTHONPATH=. python benchmarks/bench_labels.py [--spp 1024] [--save-data tests/data/physics]``
(needs the ``[bench]`` extra: ``pip install mitsuba``; only the ``scalar_rgb`` variant is used).

Scenes are stacks of fronto-parallel, self-emitting rectangles (area emitters whose radiance is a
dead-leaves bitmap; the only integrator bounce is the emitted light, so there is no lighting to model):
a background, a subject at the focus distance, sometimes more objects behind it and, in the
"foreground" scenes, an object nearer than the subject (foreground bokeh).

Mitsuba conventions this relies on (and the thin-lens camera they make):

* The camera sits at the origin looking along +z (up +y); world +x appears on the image's left.
* ``fov`` is the full horizontal angle (``fov_axis = "x"``). A real camera with focal length f,
  sensor width S and focus distance s has its sensor at ``v = f s / (s - f)`` behind the lens, so
  ``fov = 2 atan(S / (2 v))``: the sensor size is implied by fov and focal length through v.
* ``thinlens.aperture_radius`` is in scene units (metres): ``A = f / (2 N)``.
* ``thinlens.focus_distance`` is measured along the optical axis (z), not along each ray: the plane
  z = s is sharp.

Truth, independent of estimators/lens.py: a point at depth z sends rays through the aperture disc of
radius A that meet the plane z = s in a disc of radius ``A |1 - s/z|``; that plane spans
``2 s tan(fov/2)`` over W pixels, so the blur radius in px is ``k_metric |1/z - 1/s|`` with
``k_metric = A W / (2 tan(fov/2))`` (px·m), which equals docs/design.md §1's ``f^2 s / (2 N (s - f)) W / S``.
K is ``k_metric (1/z_near - 1/z_far)`` at short side 512, z_near / z_far over the rendered depth map.

Printed per scene: true K and focus distance; the estimator's K and focus distance with EXIF +
metric depth, with EXIF + relative depth, and from the image alone (relative depth, no EXIF); the
all-in-focus decision on the pinhole (all-in-focus) render; and synth_blur's best-fit K against
the thin-lens image (its all-in-focus input is the pinhole render).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WIDTH, HEIGHT = 384, 256
FULL_FRAME_MM, APS_C_MM, MFT_MM = 36.0, 23.5, 17.3
#: Encoding of the rendered linear radiance into 8-bit (the renderer's gamma, docs/design.md §2).
GAMMA = 2.2
#: Texture resolution on every plane, in texels per image pixel.
TEXELS_PER_PIXEL = 2


@dataclass
class Plane:
    """A self-emitting rectangle at depth ``z`` (m) covering image box (u0, v0, u1, v1) in [-1, 1]
    (u to the right, v up) as seen by the camera; ``seed`` picks its dead-leaves texture."""

    z: float
    box: tuple[float, float, float, float]
    seed: int


@dataclass
class Scene:
    """One thin-lens photo: sensor width (mm), focal length (mm), f-number, focus distance (m) and planes."""

    name: str
    sensor_mm: float
    focal_mm: float
    f_number: float
    focus_m: float
    planes: list[Plane] = field(default_factory=list)
    has_foreground: bool = False

    @property
    def image_distance_m(self) -> float:
        f = self.focal_mm / 1000.0
        return f * self.focus_m / (self.focus_m - f)

    @property
    def fov_deg(self) -> float:
        return math.degrees(2.0 * math.atan(self.sensor_mm / 1000.0 / (2.0 * self.image_distance_m)))

    @property
    def aperture_radius_m(self) -> float:
        return self.focal_mm / 1000.0 / (2.0 * self.f_number)

    @property
    def focal_35mm(self) -> int:
        """The 35 mm equivalent focal length as EXIF records it (whole mm)."""
        return int(round(self.focal_mm * FULL_FRAME_MM / self.sensor_mm))


def _scene(name: str, sensor: float, focal: float, n: float, s: float, background: float,
           behind: tuple[float, ...] = (), front: Optional[float] = None, subject_box=(-0.35, -0.55, 0.25, 0.6)) -> Scene:
    """A background (full frame), the subject at s, objects at ``behind`` depths to the right of it and,
    if ``front`` is given, a foreground object at that depth over the lower left (foreground bokeh)."""
    planes = [Plane(background, (-1.0, -1.0, 1.0, 1.0), 1)]
    for i, z in enumerate(behind):
        planes.append(Plane(z, (0.35 + 0.15 * i, -0.7 + 0.35 * i, 0.9, 0.2 + 0.3 * i), 10 + i))
    planes.append(Plane(s, subject_box, 2))
    if front is not None:
        planes.append(Plane(front, (-1.0, -1.0, -0.2, -0.2), 3))
    return Scene(name, sensor, focal, n, s, planes, front is not None)


SCENES = [
    _scene("ff85-f1.4-near", FULL_FRAME_MM, 85, 1.4, 1.3, 12.0, behind=(4.0,)),
    _scene("ff50-f1.8-fg", FULL_FRAME_MM, 50, 1.8, 2.0, 10.0, behind=(4.0,), front=0.9),
    _scene("ff35-f2-far", FULL_FRAME_MM, 35, 2.0, 3.0, 30.0, behind=(8.0,)),
    _scene("ff135-f2-fg", FULL_FRAME_MM, 135, 2.0, 4.0, 25.0, front=2.5),
    _scene("ff24-f5.6-far", FULL_FRAME_MM, 24, 5.6, 2.0, 12.0, behind=(5.0,)),
    _scene("apsc35-f1.4-fg", APS_C_MM, 35, 1.4, 1.2, 6.0, behind=(2.5,), front=0.6),
    _scene("apsc56-f2-near", APS_C_MM, 56, 2.0, 1.0, 5.0),
    _scene("apsc23-f4-far", APS_C_MM, 23, 4.0, 6.0, 40.0, behind=(15.0,), front=2.5),
    _scene("apsc18-f8-mid", APS_C_MM, 18, 8.0, 2.5, 20.0),
    _scene("mft25-f1.7-fg", MFT_MM, 25, 1.7, 1.0, 4.0, front=0.45),
    _scene("mft45-f2.8-mid", MFT_MM, 45, 2.8, 2.5, 8.0, behind=(4.0,)),
    _scene("ff50-f5.6-fg", FULL_FRAME_MM, 50, 5.6, 3.0, 15.0, front=1.2),
    _scene("ff28-f4-fg", FULL_FRAME_MM, 28, 4.0, 2.0, 10.0, front=0.8),
    _scene("apsc50-f2.8-near", APS_C_MM, 50, 2.8, 1.5, 6.0, behind=(3.0,)),
]


# ---------------------------------------------------------------- truth (thin lens, Mitsuba geometry)


def k_metric_true(scene: Scene) -> float:
    """Blur radius in px (at WIDTH) per 1/m of inverse-depth difference: ``A W / (2 tan(fov/2))``."""
    return scene.aperture_radius_m * WIDTH / (2.0 * math.tan(math.radians(scene.fov_deg) / 2.0))


def true_bokeh_level(scene: Scene, depth: np.ndarray) -> float:
    """K = k_metric (1/z_near - 1/z_far) at short side 512, over the depth map."""
    span = 1.0 / float(depth.min()) - 1.0 / float(depth.max())
    return k_metric_true(scene) * span * 512.0 / min(WIDTH, HEIGHT)


def true_focus_disparity(scene: Scene, depth: np.ndarray) -> float:
    """Normalised disparity of the focal plane (docs/design.md §1)."""
    near, far = 1.0 / float(depth.min()), 1.0 / float(depth.max())
    return (1.0 / scene.focus_m - far) / (near - far)


# ---------------------------------------------------------------- rendering


def dead_leaves(seed: int, width: int, height: int) -> np.ndarray:
    """A dead-leaves texture (occluding discs, radii ~ 1/r^3 between 3 texels and a quarter of the short
    side), linear RGB; natural images share its scale-invariant statistics (ISO 19567-2 uses it)."""
    rng = np.random.default_rng(seed)
    size = max(width, height)
    tex = np.empty((size, size, 3), np.float32)
    tex[:] = rng.uniform(0.05, 0.8, 3)
    yy, xx = np.mgrid[:size, :size]
    r_min, r_max = 3.0, min(width, height) / 4.0
    mean_area = 2.0 * math.pi * r_min**2 * math.log(r_max / r_min)  # of a disc under this radius law
    for _ in range(int(4 * width * height / mean_area)):  # each texel covered ~4 times: few gaps left
        u = rng.uniform()
        r = 1.0 / math.sqrt(1.0 / r_min**2 - u * (1.0 / r_min**2 - 1.0 / r_max**2))
        cx, cy = rng.uniform(0, size, 2)
        x0, x1 = int(max(0, cx - r)), int(min(size, cx + r + 1))
        y0, y1 = int(max(0, cy - r)), int(min(size, cy + r + 1))
        disc = (xx[y0:y1, x0:x1] - cx) ** 2 + (yy[y0:y1, x0:x1] - cy) ** 2 <= r * r
        tex[y0:y1, x0:x1][disc] = rng.uniform(0.03, 0.85, 3)
    return tex[:height, :width]


def _scene_dict(scene: Scene, sensor: dict[str, Any], integrator: dict[str, Any]) -> dict[str, Any]:
    import mitsuba as mi

    T = mi.ScalarTransform4f
    half_x = math.tan(math.radians(scene.fov_deg) / 2.0)
    half_y = half_x * HEIGHT / WIDTH
    out: dict[str, Any] = {"type": "scene", "integrator": integrator, "sensor": sensor}
    for i, plane in enumerate(scene.planes):
        u0, v0, u1, v1 = plane.box
        # Boxes are slightly oversized so an edge plane still fills the frame under the lens' wider cone.
        grow = 1.15 if plane.box == (-1.0, -1.0, 1.0, 1.0) else 1.0
        cx, cy = -(u0 + u1) / 2 * half_x * plane.z, (v0 + v1) / 2 * half_y * plane.z
        hx, hy = (u1 - u0) / 2 * half_x * plane.z * grow, (v1 - v0) / 2 * half_y * plane.z * grow
        # TEXELS_PER_PIXEL texels per image pixel at every depth: each plane is as sharp as the pixels allow.
        texels = [max(16, round(TEXELS_PER_PIXEL * n * grow)) for n in ((u1 - u0) / 2 * WIDTH, (v1 - v0) / 2 * HEIGHT)]
        out[f"plane{i}"] = {
            "type": "rectangle",
            "to_world": T().translate([cx, cy, plane.z]).rotate([0, 1, 0], 180).scale([hx, hy, 1]),
            "emitter": {"type": "area", "radiance": {"type": "bitmap", "raw": True, "filter_type": "nearest",
                                                     "bitmap": mi.Bitmap(dead_leaves(plane.seed, *texels))}},
        }
    return out


def _sensor(scene: Scene, kind: str, spp: int) -> dict[str, Any]:
    import mitsuba as mi

    sensor = {
        "type": kind,
        "fov": scene.fov_deg,
        "fov_axis": "x",
        "to_world": mi.ScalarTransform4f().look_at(origin=[0, 0, 0], target=[0, 0, 1], up=[0, 1, 0]),
        "film": {"type": "hdrfilm", "width": WIDTH, "height": HEIGHT, "rfilter": {"type": "box"}, "pixel_format": "rgb"},
        "sampler": {"type": "independent", "sample_count": spp},
    }
    if kind == "thinlens":
        sensor.update(aperture_radius=scene.aperture_radius_m, focus_distance=scene.focus_m)
    return sensor


def render_scene(scene: Scene, spp: int) -> dict[str, np.ndarray]:
    """The thin-lens image, the pinhole (all-in-focus) image (8-bit sRGB-like, gamma 2.2) and depth z (m)."""
    import mitsuba as mi

    mi.set_variant("scalar_rgb")
    emitted = {"type": "path", "max_depth": 1}

    def encode(linear: Any) -> np.ndarray:
        return (np.clip(np.asarray(linear)[..., :3], 0, 1) ** (1 / GAMMA) * 255 + 0.5).astype(np.uint8)

    lens = encode(mi.render(mi.load_dict(_scene_dict(scene, _sensor(scene, "thinlens", spp), emitted))))
    pinhole = encode(mi.render(mi.load_dict(_scene_dict(scene, _sensor(scene, "perspective", 64), emitted))))
    position = mi.render(mi.load_dict(_scene_dict(scene, _sensor(scene, "perspective", 1), {"type": "aov", "aovs": "p:position"})))
    depth = np.asarray(position)[..., 2].astype(np.float32)  # camera z = world z (camera at the origin on +z)
    if not (depth > 0).all():
        raise RuntimeError(f"{scene.name}: some pixels see no plane")
    return {"lens": lens, "pinhole": pinhole, "depth": depth}


# ---------------------------------------------------------------- the estimator in its three modes


def truth_record(scene: Scene, depth: np.ndarray, spp: int) -> dict[str, Any]:
    """The scene's parameters and true K / focus (JSON for tests/data/physics)."""
    return {
        "name": scene.name,
        "samples_per_pixel": spp,
        "sensor_width_mm": scene.sensor_mm,
        "focal_length_mm": scene.focal_mm,
        "focal_length_35mm": scene.focal_35mm,
        "f_number": scene.f_number,
        "focus_distance_m": scene.focus_m,
        "fov_deg": scene.fov_deg,
        "aperture_radius_m": scene.aperture_radius_m,
        "has_foreground": scene.has_foreground,
        "width": WIDTH,
        "height": HEIGHT,
        "z_near_m": float(depth.min()),
        "z_far_m": float(depth.max()),
        "k_metric": k_metric_true(scene),
        "bokeh_level": true_bokeh_level(scene, depth),
        "focus_disparity": true_focus_disparity(scene, depth),
        "planes": [asdict(p) for p in scene.planes],
    }


def estimate_modes(image: np.ndarray, depth: np.ndarray, truth: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Records of ``bokeh estimate --depth sidecar --mask depth`` in three settings (see module doc)."""
    from estimators.bokeh_level import estimate_bokeh_level
    from estimators.depth import DepthMap, disparity_from_depth
    from estimators.exif import ExifInfo
    from estimators.mask import DepthMasker

    exif = ExifInfo(
        f_number=truth["f_number"], focal_length_mm=truth["focal_length_mm"], focal_length_35mm=truth["focal_length_35mm"]
    )
    disparity = disparity_from_depth(depth)
    masker = DepthMasker()
    out = {}
    for mode, info, dmap in (
        ("exif+metric", exif, DepthMap(disparity, depth_m=depth, source="sidecar-depth")),
        ("exif+relative", exif, DepthMap(disparity, source="sidecar-disparity")),
        ("image", ExifInfo(), DepthMap(disparity, source="sidecar-disparity")),
    ):
        found = masker(image, dmap.disparity)
        out[mode] = estimate_bokeh_level(image, info, dmap, found.mask, source=truth["name"], mask_source=found.source).to_dict()
    return out


def synth_best_fit(pinhole: np.ndarray, depth: np.ndarray, lens: np.ndarray, truth: dict[str, Any]) -> Optional[float]:
    """synth_blur's K that best reproduces the thin-lens image from the pinhole one (golden-section on MSE)."""
    from estimators.depth import disparity_from_depth
    from synth_blur.renderer import render

    k_true = truth["bokeh_level"]
    if k_true < 1.0:
        return None  # sub-pixel blur: the fit is flat
    disparity = disparity_from_depth(depth)
    target = lens.astype(np.float32)

    def loss(k: float) -> float:
        out = render(pinhole, disparity, k, truth["focus_disparity"], device="cpu")
        return float(np.mean((out.astype(np.float32) - target) ** 2))

    lo, hi = math.log(0.6 * k_true), math.log(1.5 * k_true)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(math.exp(a)), loss(math.exp(b))
    for _ in range(12):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(math.exp(b))
    return math.exp((lo + hi) / 2)


# ---------------------------------------------------------------- scene files (tests/data/physics)


def save_scene(directory: Path, truth: dict[str, Any], rendered: dict[str, np.ndarray]) -> None:
    """``<name>.png`` (thin lens), ``<name>.pinhole.png``, ``<name>.depth.npy`` (float16 m), ``<name>.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    name = truth["name"]
    Image.fromarray(rendered["lens"]).save(directory / f"{name}.png", optimize=True)
    Image.fromarray(rendered["pinhole"]).save(directory / f"{name}.pinhole.png", optimize=True)
    np.save(directory / f"{name}.depth.npy", rendered["depth"].astype(np.float16), allow_pickle=False)
    (directory / f"{name}.json").write_text(json.dumps(truth, indent=1) + "\n")


def load_scene(directory: Path, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The inverse of :func:`save_scene`."""
    truth = json.loads((directory / f"{name}.json").read_text())
    rendered = {
        "lens": np.asarray(Image.open(directory / f"{name}.png").convert("RGB")),
        "pinhole": np.asarray(Image.open(directory / f"{name}.pinhole.png").convert("RGB")),
        "depth": np.load(directory / f"{name}.depth.npy", allow_pickle=False).astype(np.float32),
    }
    return truth, rendered


# ---------------------------------------------------------------- report


def _ratio(value: Optional[float], truth: float) -> Optional[float]:
    return None if value is None or truth <= 0 else value / truth


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spp", type=int, default=1024, help="samples per pixel of the thin-lens renders")
    parser.add_argument("--scenes", nargs="*", help="scene names (default: all)")
    parser.add_argument("--cache", type=Path, help="folder to keep / reuse rendered scenes in")
    parser.add_argument("--save-data", type=Path, help="also write the scenes named by --save-names here")
    parser.add_argument("--save-names", nargs="*", default=[])
    parser.add_argument("--no-synth", action="store_true", help="skip synth_blur's best-fit K")
    args = parser.parse_args(argv)

    scenes = [s for s in SCENES if not args.scenes or s.name in args.scenes]
    rows = []
    for scene in scenes:
        started = time.perf_counter()
        if args.cache and (args.cache / f"{scene.name}.json").is_file():
            truth, rendered = load_scene(args.cache, scene.name)
        else:
            rendered = render_scene(scene, args.spp)
            truth = truth_record(scene, rendered["depth"], args.spp)
            if args.cache:
                save_scene(args.cache, truth, rendered)
        render_s = time.perf_counter() - started
        if args.save_data and scene.name in args.save_names:
            save_scene(args.save_data, truth, rendered)
        records = estimate_modes(rendered["lens"], rendered["depth"], truth)
        pinhole = estimate_modes(rendered["pinhole"], rendered["depth"], truth)["image"]
        synth = None if args.no_synth else synth_best_fit(rendered["pinhole"], rendered["depth"], rendered["lens"], truth)
        rows.append((scene, truth, records, pinhole, synth, render_s))

    k_col = {"exif+metric": "K exif+metric", "exif+relative": "K exif+rel", "image": "K image"}
    header = ["scene", "fg", "K true", "s true (m)", *k_col.values(), "s exif+metric (m)", "s exif+rel (m)",
              "focus_source", "image conf", "pinhole K (AIF)", "synth fit K/K"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    errors: dict[str, list[float]] = {m: [] for m in k_col}
    focus_errors = []
    for scene, truth, records, pinhole, synth, _ in rows:
        k_true = truth["bokeh_level"]
        cells = [scene.name, "yes" if scene.has_foreground else "", _fmt(k_true), _fmt(scene.focus_m)]
        for mode in k_col:
            k = records[mode].get("bokeh_level")
            r = _ratio(k, k_true)
            cells.append(f"{_fmt(k)} ({_fmt(r)}x)")
            if r is not None and k_true >= 2.0:
                errors[mode].append(abs(r - 1.0))
        s_read = records["exif+metric"].get("focus_distance_m")
        if s_read is not None and k_true >= 2.0:
            focus_errors.append(abs(s_read / scene.focus_m - 1.0))
        cells += [_fmt(s_read), _fmt(records["exif+relative"].get("focus_distance_m")),
                  str(records["exif+metric"].get("focus_source")), _fmt(records["image"].get("confidence"))]
        k_aif = pinhole.get("bokeh_level")
        cells.append(f"{_fmt(k_aif)} ({'AIF' if pinhole.get('is_all_in_focus') else 'not AIF'})")
        cells.append(_fmt(_ratio(synth, k_true)))
        print("| " + " | ".join(cells) + " |")
    print()
    for mode, errs in errors.items():
        if errs:
            print(f"{k_col[mode]}, scenes with K >= 2 ({len(errs)}): median |error| {100 * statistics.median(errs):.1f} %, "
                  f"worst {100 * max(errs):.1f} %")
    if focus_errors:
        print(f"focus distance (exif+metric), scenes with K >= 2 ({len(focus_errors)}): median |error| "
              f"{100 * statistics.median(focus_errors):.1f} %, "
              f"worst {100 * max(focus_errors):.1f} %")
    spp = sorted({truth["samples_per_pixel"] for _, truth, *_ in rows})
    aif = sum(bool(pinhole.get("is_all_in_focus")) for _, _, _, pinhole, _, _ in rows)
    print(f"pinhole renders read all-in-focus: {aif} / {len(rows)}")
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}, python {platform.python_version()}; "
          f"thin-lens renders at {'/'.join(map(str, spp))} spp, rendering / loading {sum(r[-1] for r in rows):.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
