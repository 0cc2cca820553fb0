"""The build's stages as Ray Data UDFs (dataset_tools.udfs): the example of docs/build.md run as it is on a tiny
Ray Data pipeline, checked against the files by hand and against `bokeh build`; the columnar batch format."""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from PIL import Image, ImageOps

from build_helpers import ROOT, local_ray, read_errors, read_rows  # noqa: F401 - fixture
from conftest import DEMO_PHOTOS
from dataset_tools.photo_state import PhotoState, Render, StageFailure, from_columns, to_columns
from dataset_tools.udfs import read_photos
from estimators.depth import DepthMap
from estimators.exif import ExifInfo
from bokeh_cli import main

PHOTOS = [DEMO_PHOTOS / "new_11.jpg", DEMO_PHOTOS / "street_8.jpg"]


def _docs_example() -> str:
    """The Python block of docs/build.md's "Ray Data stages" section."""
    section = (ROOT / "docs" / "build.md").read_text().split("\n## Ray Data stages\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def _working_size(path) -> tuple[int, int]:
    """(width, height) with the short side brought to 512, worked out from the upright photo by hand."""
    width, height = ImageOps.exif_transpose(Image.open(path)).size
    scale = 512 / min(width, height)
    return round(width * scale), round(height * scale)


def test_the_docs_example_runs_on_ray_data(local_ray, tmp_path, capsys):  # noqa: F811 - fixture
    namespace = {"paths": PHOTOS}
    exec(compile(_docs_example(), "docs/build.md", "exec"), namespace)
    photos = {p["path"]: p for p in namespace["photos"]}
    assert set(photos) == {str(p) for p in PHOTOS}
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2

    # The same photos through `bokeh build` in-process: the UDFs are its stages.
    out = tmp_path / "out"
    main(["build", str(DEMO_PHOTOS), "-o", str(out), "--workers", "0", "--depth", "sidecar", "--mask", "depth",
          "--synthetic-levels", "2", "--min-sharpness", "0", "--resolution", "512"])
    rows, errors = read_rows(out), {e["source"]: e for e in read_errors(out)}
    for path in PHOTOS:
        photo = photos[str(path)]
        assert photo["id"] == hashlib.sha1(path.read_bytes()).hexdigest()
        width, height = _working_size(path)
        assert photo["image"].shape == (height, width, 3) and photo["image"].dtype == np.uint8
        by_hand = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB").resize((width, height),
                                                                                             Image.BOX))
        assert np.abs(photo["image"].astype(float) - by_hand).mean() < 3
        sidecar = np.asarray(Image.open(path.with_suffix(".disparity.png")).resize((width, height), Image.BILINEAR),
                             dtype=np.float64)
        sidecar = (sidecar - sidecar.min()) / (sidecar.max() - sidecar.min())
        assert photo["disparity"].shape == (height, width)
        assert np.corrcoef(sidecar.ravel(), photo["disparity"].ravel())[0, 1] > 0.99
        if photo["outcome"]:
            outcome = json.loads(photo["outcome"])
            assert (outcome["stage"], outcome["code"]) == (errors[str(path)]["stage"], errors[str(path)]["code"])
            continue
        estimate = json.loads(photo["estimate"])
        assert photo["mask"].shape == (height, width) and photo["mask"].any()
        real = [r for r in rows if r["source"] == str(path) and r["kind"] == "real"]
        synthetic = sorted(r["bokeh_level"] for r in rows if r["source"] == str(path) and r["kind"] == "synthetic")
        assert real[0]["bokeh_level"] == pytest.approx(estimate["bokeh_level"], abs=1e-9)
        levels = sorted(m["bokeh_level"] for m in json.loads(photo["render_params"] or "[]"))
        assert photo["renders"].shape[0] == len(levels) == (2 if estimate["is_all_in_focus"] else 0)
        assert levels == pytest.approx(synthetic)


def test_read_photos_takes_a_bare_path_column_and_reports_bad_files(tmp_path):
    """A user's batch: paths only; a text file named .jpg becomes its photo's outcome, the other photo is read."""
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    batch = read_photos({"path": np.array([str(PHOTOS[0]), str(bad)], dtype=object)})
    assert list(batch["seq"]) == [0, 1]
    good, failed = from_columns(batch)
    assert good.outcome is None and good.image.shape == (*_working_size(PHOTOS[0])[::-1], 3)
    assert good.exif is not None and good.id == hashlib.sha1(PHOTOS[0].read_bytes()).hexdigest()
    assert failed.outcome["stage"] == "read" and failed.outcome["code"] == "not-an-image"
    assert failed.image is None and batch["image"][1].size == 0


def test_columns_round_trip_every_field():
    rng = np.random.default_rng(0)
    state = PhotoState(3, 41, "a/b.jpg", "/in/a/b.jpg", "a cat", {"f_number": 2.8})
    state.id = "ab" * 20
    state.image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    state.depth = DepthMap(rng.random((6, 8), dtype=np.float32), rng.random((6, 8), dtype=np.float32) * 9, "sidecar")
    state.mask = rng.random((6, 8)) > 0.5
    state.mask_source = "sidecar"
    state.exif = ExifInfo(make="Nikon", f_number=np.float32(1.8), focus_distance_m=float("inf"),
                          missing={"lens_model": "absent"})
    state.renders = [Render(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), 12.5, {"seed": 7}, 3.0, None)
                     for _ in range(2)]
    state.timings = {"read": 0.25}
    stopped = PhotoState(3, 42, "c.png")
    stopped.stop("read", StageFailure("corrupt", "bad bytes"))

    back, again = from_columns(to_columns([state, stopped]))
    assert (back.shard, back.seq, back.source, back.path, back.caption, back.id) == (3, 41, "a/b.jpg", "/in/a/b.jpg",
                                                                                      "a cat", "ab" * 20)
    assert back.dataset_exif == {"f_number": 2.8} and back.timings == {"read": 0.25} and back.outcome is None
    np.testing.assert_array_equal(back.image, state.image)
    np.testing.assert_array_equal(back.depth.disparity, state.depth.disparity)
    np.testing.assert_array_equal(back.depth.depth_m, state.depth.depth_m)
    assert back.depth.source == "sidecar" and back.mask_source == "sidecar" and back.mask.dtype == bool
    np.testing.assert_array_equal(back.mask, state.mask)
    assert back.exif.make == "Nikon" and back.exif.f_number == pytest.approx(1.8) and back.exif.focus_distance_m == float("inf")
    assert back.exif.missing == {"lens_model": "absent"} and back.estimate is None
    assert [(r.bokeh_level, r.params, r.sharpness_subject, r.sharpness_background) for r in back.renders] == [
        (12.5, {"seed": 7}, 3.0, None)] * 2
    np.testing.assert_array_equal(back.renders[1].image, state.renders[1].image)
    assert again.outcome == stopped.outcome and again.image is None and again.depth is None and again.renders == []
