"""The bad-input suite: every kind of hostile input, built small, through `bokeh build` and `bokeh estimate`.

Each photo must end in exactly one place (a data row or one errors.jsonl line with a one-line reason and its
code), nothing may hang (FIFOs, devices: pytest-timeout and subprocess timeouts) and nothing may take memory
out of proportion to the file (the commands run under an address-space limit, RLIMIT_AS). docs/bad-inputs.md
lists the same kinds. Inputs that make a whole command unusable exit 2 with one line.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from build_helpers import REPO_ENV, assert_each_photo_once, cli, demo_scenes, local_ray, read_rows  # noqa: F401
from hostile_files import npy_header, png_header_only, sparse_file

#: Address space a command may take: room for Python, torch and a build of 128 px photos, and far below what
#: these files cost without the limits (the 1x40000 strip alone asks for 42 GB at short side 512).
ADDRESS_SPACE = 4 * 2**30
BUILD_FLAGS = ["--depth", "sidecar", "--mask", "sidecar", "--synthetic-levels", "0", "--resolution", "128",
               "--min-sharpness", "0", "--shard-size", "64"]
KEPT = "kept"

pytestmark = pytest.mark.timeout(300)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_limited(*args: object, timeout: float = 240) -> subprocess.CompletedProcess:
    """``bokeh ARGS`` in a subprocess under the address-space limit and a timeout (a hang fails, never waits)."""
    return subprocess.run(cli(*args), env={**REPO_ENV, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=_limit_memory)


def _scene(pool: list[Path], folder: Path, name: str, depth: bool = True, mask: bool = True) -> Path:
    """Move the next unused demo scene (distinct bytes, so no two are duplicates) to ``folder/name.png``."""
    source = pool.pop()
    target = folder / f"{name}.png"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.move(source, target)
    stem, new = source.with_suffix(""), target.with_suffix("")
    for suffix, keep in ((".depth.npy", depth), (".mask.png", mask), (".txt", False)):
        old = Path(f"{stem}{suffix}")
        if keep:
            shutil.move(old, f"{new}{suffix}")
        else:
            old.unlink()
    return target


def make_hostile_inputs(root: Path) -> tuple[list[str], dict[str, object]]:
    """Every kind of hostile input under ``root``; returns the build inputs and source -> expected outcome
    (KEPT, or (stage, code))."""
    pool = demo_scenes(root / "pool", 15, size=128)
    photos, outside = root / "photos", root / "outside"
    outside.mkdir()
    expected: dict[str, object] = {}

    def expect(path: Path, outcome: object) -> None:
        expected[str(path)] = outcome

    expect(_scene(pool, photos, "good"), KEPT)
    (photos / "good.txt").write_text("a good caption\n", encoding="utf-8")

    # Photos that are not photos.
    Image.fromarray(np.full((1, 40000, 3), 128, np.uint8)).save(photos / "strip.png")  # 42 GB at short side 512
    np.save(photos / "strip.depth.npy", np.full((1, 40000), 2.0, np.float32))  # sidecars that fit: only the
    Image.fromarray(np.full((1, 40000), 255, np.uint8)).save(photos / "strip.mask.png")  # aspect limit stops it
    expect(photos / "strip.png", ("read", "bad-aspect"))
    os.mkfifo(photos / "pipe.png")
    expect(photos / "pipe.png", ("read", "not-a-file"))
    Image.new("P", (64, 64)).save(photos / "anim.gif")
    expect(photos / "anim.gif", ("read", "unsupported-format"))
    os.symlink(_scene(pool, outside, "private"), photos / "linked.png")
    expect(photos / "linked.png", ("read", "outside-input"))
    (outside / "sub").mkdir()
    _scene(pool, outside / "sub", "hidden")
    os.symlink(outside / "sub", photos / "linked-folder")
    expect(photos / "linked-folder", ("read", "symlinked-folder"))

    # Captions.
    captions = {
        "caption-fifo": lambda p: os.mkfifo(p),
        "caption-passwd": lambda p: os.symlink("/etc/passwd", p),
        "caption-dangling": lambda p: os.symlink(photos / "no-such-caption.txt", p),
        "caption-binary": lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 JFIF"),
        "caption-nul": lambda p: p.write_bytes(b"a caption\x00with a NUL"),
        "caption-huge": lambda p: sparse_file(p, b"word ", 100 * 2**20),
    }
    for name, make in captions.items():
        make(photos / f"{name}.txt")
        expect(_scene(pool, photos, name), ("read", "bad-caption"))

    # Sidecars.
    expect(_scene(pool, photos, "no-depth", depth=False), ("depth", "no-depth"))
    sparse = _scene(pool, photos, "depth-sparse", depth=False)
    header = npy_header((10000, 10000))
    sparse_file(photos / "depth-sparse.depth.npy", header, len(header) + 10000 * 10000 * 8)
    expect(sparse, ("depth", "bad-sidecar"))
    bomb = _scene(pool, photos, "disparity-bomb", depth=False)
    (photos / "disparity-bomb.disparity.png").write_bytes(png_header_only(13000, 13000, bit_depth=16, colour=0))
    expect(bomb, ("depth", "bad-sidecar"))
    strip = _scene(pool, photos, "depth-17x300", depth=False)
    np.save(photos / "depth-17x300.depth.npy", np.linspace(1, 9, 17 * 300, dtype=np.float32).reshape(300, 17))
    expect(strip, ("depth", "bad-sidecar"))
    flat = _scene(pool, photos, "flat", depth=False)
    Image.fromarray(np.full((2, 2), 30000, np.uint16)).save(photos / "flat.disparity.png")
    expect(flat, ("estimate", "no-bokeh-level"))  # flat: no depth lever for the image K (flatness: test_sidecars)
    mask_link = _scene(pool, photos, "mask-outside", mask=False)
    Image.fromarray(np.full((128, 128), 255, np.uint8)).save(outside / "any.mask.png")
    os.symlink(outside / "any.mask.png", photos / "mask-outside.mask.png")
    expect(mask_link, ("mask", "bad-sidecar"))

    # A path list names a device through a symlink (a user-named path: the link is followed, the device refused).
    os.symlink("/dev/zero", root / "zero.png")
    (root / "list.lst").write_text("zero.png\n")
    expect(root / "zero.png", ("read", "not-a-file"))

    # Dataset rows with captions that are not text.
    image_bytes = (photos / "good.png").read_bytes()
    table = pa.table({"image": [image_bytes, image_bytes[:-1] + b"\x01"],
                      "caption": pa.array([b"\xff\xfe binary", b"x" * 9000], pa.binary())})
    pq.write_table(table, root / "rows.parquet")
    expect(f"{root / 'rows.parquet'}#0", ("read", "bad-caption"))
    expect(f"{root / 'rows.parquet'}#1", ("read", "bad-caption"))
    assert not pool
    return [str(photos), str(root / "list.lst"), str(root / "rows.parquet")], expected


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    inputs, expected = make_hostile_inputs(root)
    return root, inputs, expected


def check_outcomes(out: Path, expected: dict[str, object]) -> None:
    """Each input in exactly one place, with the expected stage and code and a one-line reason."""
    rows, errors = assert_each_photo_once(out, set(expected))
    kept = {r["source"] for r in rows if r["kind"] == "real"}
    assert kept == {s for s, o in expected.items() if o == KEPT}
    for error in errors:
        assert (error["stage"], error["code"]) == expected[error["source"]], error
        assert error["reason"].strip() and "\n" not in error["reason"]


def test_every_hostile_input_ends_in_one_place_under_a_memory_limit(hostile):
    root, inputs, expected = hostile
    out = root / "out"
    done = run_limited("build", *inputs, "-o", out, "--workers", "0", *BUILD_FLAGS)
    assert done.returncode == 0, done.stderr[-2000:]
    check_outcomes(out, expected)
    # Nothing outside the inputs was read: no caption holds /etc/passwd's text.
    assert not any("root:" in (r["caption"] or "") for r in read_rows(out))


def test_estimate_gives_one_line_per_hostile_photo(hostile):
    root, _, _ = hostile
    photos = root / "photos"
    names = ["strip.png", "pipe.png", "good.png", "depth-sparse.png", "disparity-bomb.png", "depth-17x300.png",
             "flat.png", "mask-outside.png"]
    done = run_limited("estimate", *[photos / n for n in names], str(root / "zero.png"), "--json",
                       "--depth", "sidecar", "--mask", "sidecar")
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0, done.stderr[-2000:]
    assert [Path(r["source"]).name for r in records] == names + ["zero.png"]
    by_name = {Path(r["source"]).name: r for r in records}
    assert "aspect ratio of 40000:1" in by_name["strip.png"]["error"]
    assert "FIFO" in by_name["pipe.png"]["error"] and "character device" in by_name["zero.png"]["error"]
    for name in ("depth-sparse.png", "disparity-bomb.png", "depth-17x300.png"):
        assert any("unusable depth sidecar" in note for note in by_name[name]["notes"]), by_name[name]["notes"]
    assert any("outside the photo's folder" in note for note in by_name["mask-outside.png"]["notes"])
    assert by_name["flat.png"]["depth_source"] == "sidecar-disparity"
    for record in records:
        assert all("\n" not in str(text) for text in [record.get("error", "")] + record.get("notes", []))


def test_a_hostile_folder_on_ray_ends_the_same(local_ray, tmp_path):  # noqa: F811 - fixture
    from bokeh_cli import main

    pool = demo_scenes(tmp_path / "pool", 2, size=128)
    photos = tmp_path / "photos"
    good = _scene(pool, photos, "good")
    fifo_caption = _scene(pool, photos, "fifo-caption")
    os.mkfifo(photos / "fifo-caption.txt")
    os.mkfifo(photos / "pipe.png")
    Image.fromarray(np.full((40000, 1, 3), 128, np.uint8)).save(photos / "strip.png")
    out = tmp_path / "out"
    assert main(["build", str(photos), "-o", str(out), *BUILD_FLAGS]) == 0
    check_outcomes(out, {str(good): KEPT, str(fifo_caption): ("read", "bad-caption"),
                         str(photos / "pipe.png"): ("read", "not-a-file"), str(photos / "strip.png"): ("read", "bad-aspect")})


# ----------------------------------------------------------------------------- inputs refused as a whole
def one_line_refusal(*args: object, timeout: float = 60) -> str:
    """Run ``bokeh build ARGS`` and return its one-line error (exit status 2, no traceback)."""
    done = run_limited("build", *args, "--workers", "0", *BUILD_FLAGS, timeout=timeout)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    return lines[0]


def test_truncated_parquet_is_one_line(tmp_path):
    pq.write_table(pa.table({"image": [b"x" * 1000] * 10, "caption": ["c"] * 10}), tmp_path / "t.parquet")
    data = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "t.parquet").write_bytes(data[: len(data) // 2])
    line = one_line_refusal(tmp_path / "t.parquet", "-o", tmp_path / "out")
    assert "cannot read Parquet file" in line and "is it complete?" in line


def test_folder_with_photos_and_a_stray_parquet_is_refused(tmp_path):
    demo_scenes(tmp_path / "in" / "sub", 1, size=64)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "in" / "stray.parquet")
    line = one_line_refusal(tmp_path / "in", "-o", tmp_path / "out")
    assert "holds both photos" in line and "stray.parquet" in line and "scene_00000.png" in line


def test_unknown_hub_dataset_offline_fails_in_seconds(tmp_path):
    start = time.monotonic()
    line = one_line_refusal("hf://nobody-here/no-such-dataset", "-o", tmp_path / "out")
    assert time.monotonic() - start < 60  # the whole process, imports included: no rounds of hub retries
    assert "cannot load dataset nobody-here/no-such-dataset" in line


def test_path_list_that_is_a_fifo_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "photos.txt")
    line = one_line_refusal(tmp_path / "photos.txt", "-o", tmp_path / "out")
    assert "is a FIFO (named pipe), not a regular file" in line
