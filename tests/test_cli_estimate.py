"""`bokeh estimate` end to end: sidecars, tiny models loaded from disk, EXIF files, errors and exit codes."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import DEMO_PHOTOS, TEST_PHOTOS
from bokeh_cli import main


def run(capsys, *args):
    code = main(["estimate", *map(str, args), "--json"])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_demo_photo_with_disparity_sidecar_is_all_in_focus(capsys):
    code, (rec,), _ = run(capsys, DEMO_PHOTOS / "street_8.jpg", "--depth", "sidecar", "--mask", "depth")
    assert code == 0
    assert rec["provenance"] == "image-only"  # MPIB photos carry no EXIF
    assert rec["depth_source"] == "sidecar-disparity" and rec["mask_source"] == "depth-grabcut"
    assert rec["is_all_in_focus"] is True and rec["bokeh_level"] <= 1.0
    assert 0.01 < rec["subject_fraction"] < 0.7
    assert 0.5 < rec["focus_disparity"] <= 1.0  # the subject is the nearest thing in the scene
    assert rec["width"] == 2000 and rec["height"] == 1333


def test_exif_subject_distance_gives_exif_k(capsys):
    code, (rec,), _ = run(capsys, TEST_PHOTOS / "exif" / "exiforg_canon-ixus.jpg", "--depth", "none", "--mask", "none")
    assert code == 0 and rec["provenance"] == "exif-only"
    assert rec["focus_distance_m"] == pytest.approx(3.75) and rec["focus_distance_source"] == "exif:SubjectDistance"
    # k_metric = f^2 s / (2 N (s - f)) * W / sensor_w, with the EXIF values 10.8125 mm, f/4.0, 3.75 m, 640 px.
    f, n, s = 0.0108125, 4.0, 3.75
    expected = f * f * s / (2 * n * (s - f)) * 640 / (rec["sensor_width_mm"] / 1000)
    assert rec["k_metric"] == pytest.approx(expected, rel=1e-6)
    assert rec["bokeh_level"] == pytest.approx(expected / s * 512 / 480, rel=1e-6)


def test_heic_and_broken_files_are_records_not_crashes(capsys, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    fake = tmp_path / "fake.jpg"
    fake.write_text("hello")
    code, recs, err = run(capsys, TEST_PHOTOS / "exif" / "iphone_13_pro_max.heic", empty, fake, tmp_path / "gone.jpg",
                          "--depth", "none", "--mask", "none")
    assert code == 0 and len(recs) == 4
    assert recs[0]["exif"]["f_number"] == 1.5 and "error" not in recs[0]
    assert [("error" in r) for r in recs[1:]] == [True, True, True]
    assert "empty file" in recs[1]["error"] and "not a recognised image" in recs[2]["error"]
    assert "3 of 4 photos failed" in err


def test_every_file_failing_exits_nonzero(capsys, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    code, recs, _ = run(capsys, bad, "--depth", "none", "--mask", "none")
    assert code == 1 and "error" in recs[0]


def test_missing_sidecar_is_a_note(capsys, tmp_path):
    photo = tmp_path / "p.jpg"
    shutil.copy(TEST_PHOTOS / "exif" / "exiforg_canon-ixus.jpg", photo)
    code, (rec,), _ = run(capsys, photo, "--depth", "sidecar", "--mask", "depth")
    assert code == 0 and rec["depth_source"] is None and rec["bokeh_level"] is not None
    assert any("no depth sidecar" in note for note in rec["notes"])


def test_tiny_depth_anything_and_sam_from_disk(capsys, tmp_path, relative_dir, sam_dir):
    photo = tmp_path / "scene.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), np.uint8)).save(photo)
    code, (rec,), _ = run(capsys, photo, "--depth", "depth-anything", "--depth-model", relative_dir,
                          "--mask", "sam", "--sam-model", sam_dir, "--device", "cpu")
    assert code == 0 and "error" not in rec
    assert rec["depth_source"] == f"depth-anything:{relative_dir}"
    assert rec["mask_source"] is None or rec["mask_source"].startswith(("sam:", "centre-prior"))


def test_metric_depth_model_gives_exif_plus_depth(capsys, tmp_path, metric_dir):
    photo = tmp_path / "ixus.jpg"
    shutil.copy(TEST_PHOTOS / "exif" / "exiforg_canon-ixus.jpg", photo)
    code, (rec,), _ = run(capsys, photo, "--depth", "depth-anything", "--depth-model", metric_dir, "--mask", "depth")
    assert code == 0 and rec["provenance"] == "exif+depth"
    assert 0 < rec["z_near_m"] <= rec["z_far_m"] <= 20.0


@pytest.mark.parametrize("flags,names", [
    (["--depth", "depth-anything", "--depth-model", "/no/such/depth-model"], ["/no/such/depth-model", "--depth sidecar"]),
    (["--depth", "none", "--mask", "sam", "--sam-model", "/no/such/sam"], ["/no/such/sam", "--mask depth"]),
])
def test_missing_model_is_one_clear_line(capsys, flags, names):
    code = main(["estimate", str(DEMO_PHOTOS / "street_8.jpg"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith("bokeh estimate: error: cannot load")
    for name in names:
        assert name in err


def test_human_readable_default(capsys):
    assert main(["estimate", str(DEMO_PHOTOS / "new_11.jpg"), "--depth", "sidecar"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{DEMO_PHOTOS / 'new_11.jpg'}: K=") and "image-only" in out
