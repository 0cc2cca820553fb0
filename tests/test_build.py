"""`bokeh build` on a real local Ray: demo scenes, the demo photos and every kind of bad input end to end,
model stages in actor pools, duplicate inputs (also across a resume), and a build killed with SIGKILL mid-run
then resumed. One local Ray serves the whole module; it declares a GPU, so renders take the GPU actor path."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import DEMO_PHOTOS, TEST_PHOTOS
from dataset_tools.dedup import DUPLICATES
from bokeh_cli import main
from build_helpers import (
    REPO_ENV,
    Interrupted,
    StopAfterFirstShard,
    assert_each_photo_once,
    cli,
    demo_scenes,
    disparity_by_hand,
    kill_session,
    local_ray,  # noqa: F401 - fixture
    read_errors,
    read_rows,
    session_processes,
    wait_for,
)

LEVELS = 2
RESOLUTION = 256
BUILD_FLAGS = ["--depth", "sidecar", "--mask", "depth", "--synthetic-levels", LEVELS, "--resolution", RESOLUTION,
               "--shard-size", 4, "--seed", 0]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height over a tiny stub of data: a decompression bomb header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _with_depth(image_path: Path, depth_from: Path) -> None:
    """Give ``image_path`` the metric-depth sidecar of a demo scene."""
    shutil.copy(Path(f"{depth_from.with_suffix('')}.depth.npy"), Path(f"{image_path.with_suffix('')}.depth.npy"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """INPUT folder + a path list; returns (cli inputs, {source: expected outcome})."""
    root = tmp_path_factory.mktemp("build_inputs")
    src = root / "in"
    scenes = demo_scenes(src / "scenes", 5)
    expected = {str(p): "kept" for p in scenes}

    (src / "photos").mkdir()
    for name in ("street_8", "new_11"):
        for suffix in (".jpg", ".disparity.png", ".txt"):
            shutil.copy(DEMO_PHOTOS / f"{name}{suffix}", src / "photos" / f"{name}{suffix}")
        expected[str(src / "photos" / f"{name}.jpg")] = "kept"

    base = demo_scenes(root / "base", 1, seed=7)[0]
    rgb = Image.open(base).convert("RGB")
    modes = src / "modes"
    modes.mkdir()
    variants = {
        "cmyk.jpg": lambda p: rgb.convert("CMYK").save(p, quality=95),
        "gray16.png": lambda p: Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257)).save(p),
        "gray.png": lambda p: rgb.convert("L").save(p),
        "alpha.png": lambda p: rgb.convert("RGBA").save(p),
    }
    for name, save in variants.items():
        save(modes / name)
        _with_depth(modes / name, base)
        expected[str(modes / name)] = "kept"

    rotated = src / "rotated" / "rotated.jpg"
    rotated.parent.mkdir()
    shutil.copy(TEST_PHOTOS / "exif" / "orientation_landscape_6.jpg", rotated)
    rows = np.linspace(20.0, 2.0, 450, dtype=np.float32)[:, None]  # upright 600x450: near at the bottom
    np.save(Path(f"{rotated.with_suffix('')}.depth.npy"), np.repeat(rows, 600, axis=1))
    expected[str(rotated)] = "kept"

    blurry = src / "blurry" / "blurry.png"
    blurry.parent.mkdir()
    Image.fromarray(cv2.GaussianBlur(np.asarray(rgb), (0, 0), 6)).save(blurry)
    _with_depth(blurry, base)
    expected[str(blurry)] = ("filtered", "subject-not-sharp", "estimate")

    bad = src / "bad"
    bad.mkdir()
    good_jpeg = (modes / "cmyk.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 3])
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("this is not a photo\n")
    (bad / "bomb.png").write_bytes(png_header_only(60000, 60000))
    expected[str(bad / "truncated.jpg")] = ("failed", "corrupt", "read")
    expected[str(bad / "zero.jpg")] = ("failed", "empty-file", "read")
    expected[str(bad / "text.jpg")] = ("failed", "not-an-image", "read")
    expected[str(bad / "bomb.png")] = ("failed", "too-many-pixels", "read")

    listing = root / "list.lst"
    listing.write_text("# one path that does not exist\nmissing/photo.jpg\n")
    expected[str(root / "missing" / "photo.jpg")] = ("failed", "unreadable", "read")
    return [str(src), str(listing)], expected


@pytest.fixture(scope="module")
def built(inputs, local_ray, tmp_path_factory):  # noqa: F811 - fixture
    """One build shared by the tests below; returns (OUT, expected outcomes, exit code, stdout)."""
    out = tmp_path_factory.mktemp("build_out") / "dataset"
    args, expected = inputs
    code = main(["build", *args, "-o", str(out), *map(str, BUILD_FLAGS)])
    return out, expected, code


def test_every_input_in_exactly_one_place(built):
    out, expected, code = built
    assert code == 0
    rows, errors = assert_each_photo_once(out, set(expected))
    kept = {r["source"] for r in rows if r["kind"] == "real"}
    assert kept == {s for s, e in expected.items() if e == "kept"}
    by_source = {e["source"]: e for e in errors}
    for source, outcome in expected.items():
        if outcome != "kept":
            status, code_, stage = outcome
            line = by_source[source]
            assert (line["status"], line["code"], line["stage"]) == (status, code_, stage), line
            assert line["reason"] and "\n" not in line["reason"]
    bomb = next(e for s, e in by_source.items() if s.endswith("bomb.png"))
    assert "decompression bomb" in bomb["reason"] or "60000x60000" in bomb["reason"]
    assert not (out / "_work").exists()


def test_groups_and_row_counts(built):
    out, _, _ = built
    rows = read_rows(out)
    real = [r for r in rows if r["kind"] == "real"]
    synthetic = [r for r in rows if r["kind"] == "synthetic"]
    aif = [r for r in real if r["is_all_in_focus"]]
    assert len(aif) >= 8  # the scenes, their mode variants and the two MPIB photos are all-in-focus
    assert len(rows) == sum(1 + (LEVELS if r["is_all_in_focus"] else 0) for r in real)
    by_id = {r["id"]: r for r in real}
    for r in real:
        assert r["group_id"] == r["id"] and r["render_params"] is None
    for r in synthetic:
        pivot = by_id[r["group_id"]]
        assert pivot["is_all_in_focus"] and r["id"].startswith(pivot["id"] + "-k")
        assert 1.0 <= r["bokeh_level"] <= 30.0
        assert r["bokeh_source"] == "synthetic" and r["k_metric"] is None and r["caption"] == pivot["caption"]
        assert r["sharpness_background"] < pivot["sharpness_background"]
        params = r["render_params"]
        assert params["bokeh_level"] == pytest.approx(r["bokeh_level"]) and params["aperture"] == "disc"
        assert params["focus_disparity"] == pytest.approx(r["focus_disparity"]) and params["gamma"] == pytest.approx(2.2)
    for pivot_id in by_id:
        members = [r for r in synthetic if r["group_id"] == pivot_id]
        assert len(members) in (0, LEVELS)


def test_ids_are_sha1_of_source_bytes(built):
    import hashlib

    out, expected, _ = built
    for r in read_rows(out):
        if r["kind"] == "real":
            assert r["id"] == hashlib.sha1(Path(r["source"]).read_bytes()).hexdigest()


def test_sizes_captions_and_depth_column(built):
    out, _, _ = built
    rows = read_rows(out, columns=None)
    street = next(r for r in rows if r["source"].endswith("street_8.jpg") and r["kind"] == "real")
    assert (street["width"], street["height"]) == (384, 256)  # 2000x1333 -> short side 256, 2000*256/1333 = 384.1
    assert street["caption"] == (DEMO_PHOTOS / "street_8.txt").read_text().strip()
    scene = next(r for r in rows if r["source"].endswith("scene_00000.png") and r["kind"] == "real")
    assert (scene["width"], scene["height"]) == (256, 256)
    assert scene["caption"] == Path(scene["source"]).with_suffix(".txt").read_text().strip()
    # The stored depth is the scene's exact metric depth turned into normalised disparity by hand.
    stored = np.asarray(Image.open(io.BytesIO(scene["depth"]["bytes"])), dtype=np.float64) / 65535.0
    expected = disparity_by_hand(np.load(Path(scene["source"]).with_suffix(".depth.npy")))
    assert np.abs(stored - expected).max() < 1e-4
    mask = np.asarray(Image.open(io.BytesIO(scene["subject_mask"]["bytes"])))
    assert set(np.unique(mask)) <= {0, 255} and 0.005 < (mask > 0).mean() < 0.7
    synthetic = [r for r in rows if r["kind"] == "synthetic"]
    assert synthetic and all(r["depth"] is None and r["subject_mask"] is None for r in synthetic)


def test_exif_rotated_photo_is_stored_upright(built):
    out, _, _ = built
    rows = read_rows(out, columns=None)
    row = next(r for r in rows if r["source"].endswith("rotated.jpg"))
    stored = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB"), dtype=np.float64)
    assert (row["width"], row["height"]) == (341, 256)  # 450x600 file, orientation 6 -> 600x450 upright
    upright = ImageOps.exif_transpose(Image.open(TEST_PHOTOS / "exif" / "orientation_landscape_6.jpg")).convert("RGB")
    reference = np.asarray(upright.resize((341, 256), Image.BILINEAR), dtype=np.float64)
    upside_down = reference[::-1, ::-1]
    assert np.abs(stored - reference).mean() < 6.0
    assert np.abs(stored - upside_down).mean() > 4 * np.abs(stored - reference).mean()


def test_loads_with_datasets_both_ways(built, tmp_path):
    datasets = pytest.importorskip("datasets")
    out, _, _ = built
    rows = read_rows(out)
    for ds in (
        datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "a")),
        datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train", cache_dir=str(tmp_path / "b")),
    ):
        assert ds.num_rows == len(rows)
        first = ds[0]
        assert isinstance(first["image"], Image.Image) and first["image"].size == (first["width"], first["height"])
        assert ds.features["kind"].names == ["real", "synthetic"]
        assert ds.features["bokeh_source"].names == ["exif+depth", "exif-only", "image-only", "synthetic", "exif+image"]
        real = ds.filter(lambda kind: kind == ds.features["kind"].str2int("real"), input_columns="kind")[0]
        assert set(real["provenance"]) >= {"depth_source", "notes"} and isinstance(real["provenance"]["notes"], list)
        assert real["depth"].mode == "I;16" and real["subject_mask"].mode == "L"


def test_stats_json_is_consistent(built, capsys):
    out, expected, _ = built
    stats = json.loads((out / "stats.json").read_text())
    rows, errors = read_rows(out), read_errors(out)
    assert stats["photos_read"] == len(expected)
    assert stats["kept"] + stats["filtered"] + stats["failed"] == stats["photos_read"]
    assert stats["kept"] == sum(r["kind"] == "real" for r in rows)
    assert stats["rows_written"] == len(rows)
    assert stats["rows_synthetic"] == sum(r["kind"] == "synthetic" for r in rows)
    failed, filtered = {}, {}
    for e in errors:
        target = failed if e["status"] == "failed" else filtered
        target[e["code"]] = target.get(e["code"], 0) + 1
    assert stats["failed_by_reason"] == failed and stats["filtered_by_reason"] == filtered
    hist = stats["k_histogram"]
    by_hand = [0] * 31
    for r in rows:
        by_hand[min(int(r["bokeh_level"]), 30)] += 1
    assert hist["all"] == by_hand
    assert sum(hist["synthetic"]) == stats["rows_synthetic"]
    assert stats["shards"] == len(list((out / "data").glob("train-*-of-00005.parquet"))) == 5
    assert set(stats["stage_seconds"]) >= {"read", "decode", "depth", "mask", "estimate", "render", "encode"}
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "dataset_info:" in card and "data/train-*" in card


def test_non_empty_out_is_refused(built, inputs, capsys):
    out, _, _ = built
    code = main(["build", *inputs[0], "-o", str(out), "--depth", "sidecar"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "holds a finished build" in err and "--resume" in err and "--overwrite" in err


def test_resume_of_a_finished_build_does_nothing(built, inputs, capsys):
    out, _, _ = built
    before = {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    code = main(["build", *inputs[0], "-o", str(out), *map(str, BUILD_FLAGS), "--resume"])
    assert code == 0 and "nothing to do" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()} == before


# ----------------------------------------------------------------------------- kill -9 and --resume
RESUME_FLAGS = ["--depth", "sidecar", "--mask", "sidecar", "--synthetic-levels", "2", "--resolution", "256",
                "--shard-size", "1"]
RESUME_PHOTOS = 8


def _content(rows: list[dict]) -> set[tuple]:
    return {(r["id"], r["group_id"], r["kind"], round(r["bokeh_level"], 4), r["source"]) for r in rows}


def test_resume_after_kill_9(local_ray, tmp_path, capsys):  # noqa: F811 - fixture
    photos = demo_scenes(tmp_path / "in", RESUME_PHOTOS)
    out = tmp_path / "out"
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(cli("build", tmp_path / "in", "-o", out, *RESUME_FLAGS), env=REPO_ENV,
                                start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: proc.poll() is not None or any((out / "data").glob("train-*.parquet")), 180,
                     "the first output shard")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            kill_session(proc.pid)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    assert session_processes(proc.pid) == [], "a process the killed build started is still alive"
    done = len(list((out / "data").glob("train-*.parquet")))
    assert 1 <= done < RESUME_PHOTOS and (out / "_work").is_dir() and not (out / "stats.json").exists()

    # Other settings are refused; the same settings finish the build.
    assert main(["build", str(tmp_path / "in"), "-o", str(out), *RESUME_FLAGS[:-1], "2", "--resume"]) == 2
    assert "other settings (shard_size)" in capsys.readouterr().err
    assert main(["build", str(tmp_path / "in"), "-o", str(out), *RESUME_FLAGS, "--resume"]) == 0
    rows, errors = assert_each_photo_once(out, {str(p) for p in photos})
    assert errors == [] and not (out / "_work").exists()
    assert len(list((out / "data").glob(f"train-*-of-{RESUME_PHOTOS:05d}.parquet"))) == RESUME_PHOTOS

    # The same rows as a build that was never interrupted (run in-process, without Ray).
    reference = tmp_path / "reference"
    assert main(["build", str(tmp_path / "in"), "-o", str(reference), *RESUME_FLAGS, "--workers", "0"]) == 0
    assert _content(rows) == _content(read_rows(reference))


# ----------------------------------------------------------------------------- model stages
def test_depth_anything_and_sam_run_in_actor_pools(local_ray, relative_dir, sam_dir, tmp_path):  # noqa: F811
    photos = demo_scenes(tmp_path / "in", 3)
    out = tmp_path / "out"
    code = main(["build", str(tmp_path / "in"), "-o", str(out), "--depth", "depth-anything", "--depth-model",
                 str(relative_dir), "--mask", "sam", "--sam-model", str(sam_dir), "--synthetic-levels", "1",
                 "--resolution", "128", "--min-sharpness", "0"])
    assert code in (0, 1)  # random weights: every photo may be filtered, but none may be lost
    rows, errors = assert_each_photo_once(out, {str(p) for p in photos})
    assert all(e["status"] == "filtered" for e in errors)
    for row in read_rows(out, columns=("kind", "provenance")):
        if row["kind"] == "real":
            provenance = row["provenance"]
            assert provenance["depth_source"] == f"depth-anything:{relative_dir}"
            assert provenance["mask_source"] in (f"sam:{sam_dir}", "centre-prior")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stage_seconds"]["depth"] > 0 and stats["stage_seconds"]["mask"] > 0


def test_missing_model_is_one_line_exit_2(tmp_path, capsys):
    demo_scenes(tmp_path / "in", 1)
    out = tmp_path / "out"
    code = main(["build", str(tmp_path / "in"), "-o", str(out), "--depth", "depth-anything",
                 "--depth-model", str(tmp_path / "no-such-model")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "cannot load depth model" in err and "--depth sidecar" in err
    assert not out.exists()  # refused before OUT was touched


# ----------------------------------------------------------------------------- duplicate inputs
DEDUP_FLAGS = ["--depth", "sidecar", "--mask", "sidecar", "--synthetic-levels", "1", "--resolution", "96",
               "--shard-size", "2", "--min-sharpness", "0"]


def _copy_photo(photo: Path, folder: Path) -> Path:
    """Copy a demo scene with its sidecars into ``folder``."""
    folder.mkdir(exist_ok=True)
    for path in photo.parent.glob(f"{photo.stem}.*"):
        shutil.copy(path, folder / path.name)
    return folder / photo.name


def _outcomes(out: Path) -> tuple[set, dict]:
    rows = {(r["id"], r["group_id"], r["kind"], round(r["bokeh_level"], 4), r["source"]) for r in read_rows(out)}
    return rows, {e["source"]: (e["stage"], e["code"], e["reason"], e["id"]) for e in read_errors(out)}


def test_duplicate_inputs_become_dedup_lines_across_shards_and_resume(local_ray, tmp_path, capsys):  # noqa: F811
    """a/ holds four scenes, b/ copies of two of them, c/ a third copy of one: with shards of two photos the
    copies sit in other shards than their first copy. Every later copy is one dedup line naming the first
    copy, never a row; the same holds for a build interrupted after its first shard and resumed."""
    import hashlib

    scenes = demo_scenes(tmp_path / "in" / "a", 4, size=96)
    copies = {_copy_photo(scenes[1], tmp_path / "in" / "b"): scenes[1],
              _copy_photo(scenes[3], tmp_path / "in" / "b"): scenes[3],
              _copy_photo(scenes[1], tmp_path / "in" / "c"): scenes[1]}
    everything = {str(p) for p in [*scenes, *copies]}

    out = tmp_path / "out"
    assert main(["build", str(tmp_path / "in"), "-o", str(out), *DEDUP_FLAGS]) == 0
    summary = capsys.readouterr().out
    rows, errors = assert_each_photo_once(out, everything)
    assert {r["source"] for r in rows if r["kind"] == "real"} == {str(p) for p in scenes}
    assert {e["source"]: (e["stage"], e["status"], e["code"], e["reason"]) for e in errors} == {
        str(copy): ("dedup", "filtered", "duplicate", f"duplicate of {first}") for copy, first in copies.items()}
    for e in errors:
        assert e["id"] == hashlib.sha1(Path(e["source"]).read_bytes()).hexdigest()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["filtered_by_reason"] == {"duplicate": 3} and stats["kept"] == 4 and stats["photos_read"] == 7
    assert "filtered      3  (duplicate 3)" in summary

    # Interrupted after its first output shard (in-process, shard 0 = a/0 and a/1 comes first), then resumed
    # on Ray: b/ and c/ copies of a/1 (finished) and a/3 with its copy (pending) are decided the same way.
    resumed = tmp_path / "resumed"
    args = ["build", str(tmp_path / "in"), "-o", str(resumed), *DEDUP_FLAGS]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("dataset_tools.build.ShardWriter", StopAfterFirstShard)
        with pytest.raises(Interrupted):
            main([*args, "--workers", "0"])
    assert [p.name for p in (resumed / "data").iterdir()] == ["train-00000-of-00004.parquet"]
    assert (resumed / "_work" / "inputs" / DUPLICATES).is_file()  # decided before any photo was processed
    assert main([*args, "--resume"]) == 0
    assert_each_photo_once(resumed, everything)
    assert _outcomes(resumed) == _outcomes(out)
