"""Thin-lens math against numbers worked by hand (docs/design.md §1) and the `bokeh lens` command."""
import json
import math

import pytest

from estimators import lens
from bokeh_cli import main

# Worked example of docs/design.md §1: 50 mm f/1.8, full frame, s = 2.5 m, 1024 x 683 px (3:2).
# hypot(1024, 683) = sqrt(1048576 + 466489) = 1230.880; sensor_w = 43.27 * 1024 / 1230.880 = 35.997 mm
# k_metric = 0.05^2 * 2.5 / (2 * 1.8 * (2.5 - 0.05)) * 1024 / 0.035997
#          = 0.00625 / 8.82 * 28446.8 = 20.158 px·m   (docs/design.md: ~20.2; ~15 at 512 short side)
EX = dict(focal_length_mm=50.0, f_number=1.8, focus_distance_m=2.5)


def test_sensor_width_from_35mm_equivalent():
    assert lens.sensor_width_from_35mm(50, 50, 1024, 683) == pytest.approx(35.997, abs=2e-3)
    # APS-C crop 1.6 (Canon): 50 mm on a 80 mm-equivalent, 3:2 -> 36 / 1.6 = 22.5 mm wide.
    assert lens.sensor_width_from_35mm(50, 80, 6000, 4000) == pytest.approx(43.27 / 1.6 * 6000 / math.hypot(6000, 4000), rel=1e-9)
    assert lens.sensor_width_from_35mm(50, 80, 6000, 4000) == pytest.approx(22.5, abs=0.02)


def test_k_metric_worked_example():
    sw = lens.sensor_width_from_35mm(50, 50, 1024, 683)
    k = lens.k_metric(**EX, sensor_width_mm=sw, width=1024)
    assert k == pytest.approx(20.158, abs=0.005)
    assert round(k, 1) == 20.2
    assert lens.to_reference_resolution(k, 1024, 683) == pytest.approx(15.11, abs=0.01)
    # Background at infinity: k / s = 8.063 px.
    assert lens.blur_radius_px(k, 2.5, math.inf) == pytest.approx(8.063, abs=0.002)


def test_coc_and_k_metric_agree():
    # c(inf) = f^2 / (N (s - f)) = 2500 / (1.8 * 2450) = 0.56689 mm
    assert lens.coc_diameter_mm(50, 1.8, 2.5, math.inf) == pytest.approx(0.56689, abs=1e-5)
    # c(10 m) = 2500 * 7500 / (1.8 * 2450 * 10000) = 0.42517 mm; as a radius in px: c/2 * 1024 / 35.997 = 6.0474
    c10 = lens.coc_diameter_mm(50, 1.8, 2.5, 10.0)
    assert c10 == pytest.approx(0.42517, abs=1e-5)
    sw = lens.sensor_width_from_35mm(50, 50, 1024, 683)
    k = lens.k_metric(**EX, sensor_width_mm=sw, width=1024)
    assert lens.blur_radius_px(k, 2.5, 10.0) == pytest.approx(c10 / 2 * 1024 / sw, rel=1e-9)
    assert lens.blur_radius_px(k, 2.5, 10.0) == pytest.approx(6.047, abs=0.002)
    # In focus: no blur.
    assert lens.coc_diameter_mm(50, 1.8, 2.5, 2.5) == 0.0


def test_unified_bokeh_level_and_inverse():
    sw = 36.0
    k = lens.k_metric(**EX, sensor_width_mm=sw, width=1024)
    # Scene from 2 m to 10 m: K = k (1/2 - 1/10) * 512 / 683
    assert lens.unified_bokeh_level(k, 2.0, 10.0, 1024, 683) == pytest.approx(k * 0.4 * 512 / 683, rel=1e-12)
    # Relative-depth convention: z_near = s, z_far = inf -> K = k / s at 512.
    k_bg = lens.unified_bokeh_level(k, 2.5, math.inf, 1024, 683)
    assert k_bg == pytest.approx(k / 2.5 * 512 / 683, rel=1e-12)
    # Inverse: the f-number that gives that K is the one we started from; K ~ 1/N.
    assert lens.f_number_for_bokeh_level(k_bg, 50, 2.5, sw, 1024, 683) == pytest.approx(1.8, rel=1e-9)
    assert lens.f_number_for_bokeh_level(k_bg / 2, 50, 2.5, sw, 1024, 683) == pytest.approx(3.6, rel=1e-9)


def test_hyperfocal_textbook_value():
    # 50 mm at f/8 with c = 0.03 mm: 2500 / 0.24 + 50 = 10466.7 mm.
    assert lens.hyperfocal_distance_m(50, 8, 0.03) == pytest.approx(10.4667, abs=1e-4)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(focal_length_mm=50, f_number=0, focus_distance_m=2.5),
        dict(focal_length_mm=50, f_number=-2, focus_distance_m=2.5),
        dict(focal_length_mm=50, f_number=2, focus_distance_m=0.05),
        dict(focal_length_mm=0, f_number=2, focus_distance_m=2.5),
    ],
)
def test_impossible_lens_raises(kwargs):
    with pytest.raises(lens.LensError):
        lens.k_metric(**kwargs, sensor_width_mm=36, width=1024)


LENS_ARGS = "lens --focal-length 50 --f-number 1.8 --focus-distance 2.5 --width 1024 --height 683".split()


def test_cli_lens_json(capsys):
    assert main(LENS_ARGS + ["--focal-length-35mm", "50", "--background-distance", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sensor_width_mm"] == pytest.approx(35.997, abs=2e-3)
    assert out["coc_infinity_mm"] == pytest.approx(0.56689, abs=1e-5)
    assert out["k_metric"] == pytest.approx(20.158, abs=0.005)
    assert out["background_blur_px"] == pytest.approx(6.047, abs=0.002)
    assert out["crop_factor"] == pytest.approx(1.0, abs=1e-3)


def test_cli_lens_sensor_width_and_infinity(capsys):
    assert main(LENS_ARGS + ["--sensor-width", "36", "--json", "--target-bokeh", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["background_distance_m"] is None  # infinity is not JSON: printed as null
    k = 0.05**2 * 2.5 / (2 * 1.8 * 2.45) * 1024 / 0.036
    assert out["background_blur_px"] == pytest.approx(k / 2.5, rel=1e-9)
    # K at infinity (z_near = s) ~ 1/N: target 10 needs N = 1.8 * K_now / 10
    assert out["f_number_for_target"] == pytest.approx(1.8 * out["bokeh_level"] / 10, rel=1e-9)


@pytest.mark.parametrize(
    "extra",
    [
        ["--f-number", "0"],
        ["--focus-distance", "0.04"],
        ["--f-number", "-1"],
    ],
)
def test_cli_lens_bad_arguments_exit_2_with_one_line(extra, capsys):
    args = LENS_ARGS + ["--sensor-width", "36"] + extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bokeh lens: error:") and "\n" not in err


def test_cli_lens_missing_size_is_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(LENS_ARGS)
    assert exc.value.code == 2
