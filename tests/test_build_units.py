"""The build's pieces without Ray: sizes, levels, EXIF columns, input shards, duplicates, the stage plan for
fake clusters, stats, schema, and the in-process path."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataset_tools.build_config import BuildConfig
from dataset_tools.build_stats import BuildStats
from dataset_tools.dedup import Duplicate, by_chunk, decode, encode, later_copies
from dataset_tools.distribute import stage_plan
from dataset_tools.input_shards import (CHUNK_ROWS, MANIFEST, Chunk, chunks_of, chunks_of_seqs, read_chunk,
                                        read_sources, shard_path, write_input_shards)
from dataset_tools.schema import COLUMN_NAMES, OUTPUT_SCHEMA, hf_features
from dataset_tools.sources import SourceItem
from dataset_tools.stages import (DepthStage, EncodeStage, EstimateStage, GroupStage, MaskStage, balanced_levels,
                                  fit_short_side, group_seed, merge_dataset_exif)
from estimators.exif import ExifInfo
from bokeh_cli import main
from build_helpers import demo_scenes, read_errors, read_rows


def test_fit_short_side_by_hand():
    assert fit_short_side(2000, 1333, 512) == (768, 512)  # 2000 * 512 / 1333 = 768.2
    assert fit_short_side(1333, 2000, 256) == (256, 384)
    assert fit_short_side(300, 200, 512) == (300, 200)  # never enlarged


def test_balanced_levels_fill_one_stratum_each():
    count, width = 4, 29 / 4
    everything = []
    for seed in range(200):
        levels = balanced_levels(seed, count)
        for j, level in enumerate(levels):
            assert 1 + j * width - 0.005 <= level <= 1 + (j + 1) * width + 0.005
        everything += levels
    # Over groups the levels are U(1, 30): each of the 29 unit bins holds 800 / 29 = 27.6 on average.
    counts = np.histogram(everything, bins=29, range=(1, 30))[0]
    assert counts.min() > 10 and counts.max() < 50


def test_group_seed_depends_on_seed_and_id_only():
    a = "ab" * 20
    assert group_seed(0, a) == group_seed(0, a)
    assert len({group_seed(0, a), group_seed(1, a), group_seed(0, "cd" * 20)}) == 3


def test_dataset_exif_columns_fill_only_missing_fields():
    exif = ExifInfo(f_number=2.8, missing={"focal_length_mm": "absent", "make": "absent"})
    merged = merge_dataset_exif(exif, {"f_number": 1.4, "focal_length_mm": "50", "camera_make": " Canon ",
                                       "focus_distance_m": "nan", "focal_length_35mm": -3})
    assert merged.f_number == 2.8  # the file's own value wins
    assert merged.focal_length_mm == 50.0 and "focal_length_mm" not in merged.missing
    assert merged.make == "Canon" and merged.focus_distance_m is None and merged.focal_length_35mm is None


def _items(n):
    for i in range(n):
        yield SourceItem(source=f"photo{i}.jpg", path=f"/x/photo{i}.jpg", caption=f"c{i}", exif={"f_number": 2.0})


def test_input_shards_resume_after_a_kill(tmp_path):
    fresh = tmp_path / "fresh"
    counts = write_input_shards(lambda: _items(21), fresh, shard_size=10)
    assert counts == [10, 10, 1]
    assert pq.ParquetFile(shard_path(fresh, 0)).metadata.num_row_groups == math.ceil(10 / CHUNK_ROWS)
    rows = [r for c in chunks_of(1, 10) for r in read_chunk(fresh, c)]
    assert [r["seq"] for r in rows] == list(range(10, 20)) and json.loads(rows[0]["exif"]) == {"f_number": 2.0}

    # Killed after shard 1 was published: the rerun keeps shards 0-1 and continues the stream after them.
    killed = tmp_path / "killed"
    write_input_shards(lambda: _items(21), killed, shard_size=10)
    shard_path(killed, 2).unlink()
    (killed / MANIFEST).unlink()
    before = shard_path(killed, 0).stat().st_mtime_ns
    assert write_input_shards(lambda: _items(21), killed, shard_size=10) == [10, 10, 1]
    assert shard_path(killed, 0).stat().st_mtime_ns == before
    for shard in range(3):
        assert pq.read_table(shard_path(killed, shard)).equals(pq.read_table(shard_path(fresh, shard)))
    # Killed between the last shard and the manifest: nothing is rewritten.
    (killed / MANIFEST).unlink()
    assert write_input_shards(lambda: _items(21), killed, shard_size=10) == [10, 10, 1]


def test_stream_positions_map_to_chunks_and_sources(tmp_path):
    counts = write_input_shards(lambda: _items(21), tmp_path, shard_size=10)  # shards hold seqs 0-9, 10-19, 20
    assert counts == [10, 10, 1] and CHUNK_ROWS == 8
    assert chunks_of_seqs([0, 7, 8, 10, 19, 20], counts) == {
        0: Chunk(0, 0), 7: Chunk(0, 0), 8: Chunk(0, 1), 10: Chunk(1, 0), 19: Chunk(1, 1), 20: Chunk(2, 0)}
    assert read_sources(tmp_path, counts, [20, 3, 17]) == {20: "photo20.jpg", 3: "photo3.jpg", 17: "photo17.jpg"}
    with pytest.raises(ValueError, match="outside the 21 input photos"):
        chunks_of_seqs([21], counts)


def test_later_copies_keep_the_lowest_seq_whatever_the_order():
    a, b, c = "aa" * 20, "bb" * 20, "cc" * 20
    # Workers report in any order: the copy at seq 2 is the first one even though seq 5 came in first.
    pairs = [(5, a, 0), (9, b, 0), (2, a, 0), (7, a, 0), (1, b, 0), (3, c, 0)]
    assert later_copies(pairs) == {5: (a, 2), 7: (a, 2), 9: (b, 1)}
    assert later_copies(sorted(pairs)) == later_copies(pairs)
    found = {5: Duplicate(a, 2, "x/a.jpg"), 9: Duplicate(b, 1, "y/b.jpg")}
    assert decode(encode(found)) == found and decode(encode({})) == {}
    assert by_chunk(found, [10]) == {Chunk(0, 0): {5: found[5]}, Chunk(0, 1): {9: found[9]}}


def _plan(config, resources):
    task_cpus, plans = stage_plan(config, resources)
    return task_cpus, {p.stage: (p.num_cpus, p.num_gpus, p.actors) for p in plans}, {p.stage: p for p in plans}


def test_stage_plan_puts_renders_on_gpus_only_when_there_are_gpus():
    sidecar = BuildConfig(depth="sidecar", mask="depth", synthetic_levels=4)
    # CPU only: every stage a task of one CPU, the render on the CPU.
    task_cpus, plan, plans = _plan(sidecar, {"CPU": 2.0})
    assert task_cpus == 1.0 and plan == {cls: (1.0, 0.0, 0) for cls in
                                         (DepthStage, MaskStage, EstimateStage, GroupStage, EncodeStage)}
    assert plans[GroupStage].kwargs(sidecar) == {"config": sidecar}  # GroupStage's default device: cpu
    # One CPU and a model: half a CPU for the tasks, the other half for the depth actor (one actor).
    model = BuildConfig(depth="depth-anything", mask="depth", synthetic_levels=4)
    task_cpus, plan, _ = _plan(model, {"CPU": 1.0})
    assert task_cpus == 0.5 and plan[DepthStage] == (0.5, 0.0, 1) and plan[GroupStage] == (0.5, 0.0, 0)
    # Two GPUs: the render stage becomes a pool of one actor per GPU holding a whole GPU, rendering there.
    task_cpus, plan, plans = _plan(sidecar, {"CPU": 16.0, "GPU": 2.0})
    assert task_cpus == 1.0 and plan[GroupStage] == (1.0, 1.0, 2) and plan[DepthStage] == (1.0, 0.0, 0)
    assert plans[GroupStage].kwargs(sidecar) == {"config": sidecar, "device": None}
    # Depth Anything, SAM and the renders share each GPU in thirds; one CPU each, 16 CPUs leave plenty.
    both = BuildConfig(depth="depth-anything", mask="sam", synthetic_levels=2)
    _, plan, _ = _plan(both, {"CPU": 16.0, "GPU": 2.0})
    for cls in (DepthStage, MaskStage, GroupStage):
        assert plan[cls] == (1.0, pytest.approx(1 / 3), 2)
    assert plan[EstimateStage] == plan[EncodeStage] == (1.0, 0.0, 0)
    # Two CPUs and a GPU with three GPU stages: the tasks keep one CPU, the actors share the other.
    _, plan, _ = _plan(both, {"CPU": 2.0, "GPU": 1.0})
    assert plan[GroupStage] == (pytest.approx(1 / 3), pytest.approx(1 / 3), 1)
    # No renders asked for: the render stage stays a task even with GPUs.
    _, plan, plans = _plan(BuildConfig(depth="sidecar", synthetic_levels=0), {"CPU": 8.0, "GPU": 1.0})
    assert plan[GroupStage] == (1.0, 0.0, 0) and "device" not in plans[GroupStage].kwargs(sidecar)


def test_stats_round_trip_and_summary():
    stats = BuildStats()
    stats.add([{"kind": "real", "bokeh_level": 0.4}, {"kind": "synthetic", "bokeh_level": 12.5},
               {"kind": "synthetic", "bokeh_level": 30.0}], None, {"read": 0.5})
    stats.add([], {"status": "failed", "code": "corrupt"}, {"read": 0.25})
    stats.add([], {"status": "filtered", "code": "subject-not-sharp"}, {})
    data = stats.to_dict()
    assert (data["photos_read"], data["kept"], data["failed"], data["filtered"]) == (3, 1, 1, 1)
    assert data["k_histogram"]["real"][0] == 1 and data["k_histogram"]["synthetic"][12] == 1
    assert data["k_histogram"]["synthetic"][30] == 1  # K = 30 goes to the last bin
    assert data["stage_seconds"]["read"] == 0.75 and data["stage_photos_per_second"]["read"] == 4.0
    again = BuildStats.from_dict(data)
    again.merge(stats)
    assert again.to_dict()["rows_written"] == 6 and again.to_dict()["failed_by_reason"] == {"corrupt": 2}
    text = stats.summary()
    assert "failed        1  (corrupt 1)" in text and "rows written  3  (1 real, 2 synthetic in 1 groups)" in text


def test_schema_matches_datasets_own_conversion():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features.from_dict(hf_features())
    assert list(features) == list(COLUMN_NAMES)
    for column in ("image", "depth", "subject_mask"):
        assert isinstance(features[column], datasets.Image)
    assert features.arrow_schema.remove_metadata().equals(OUTPUT_SCHEMA.remove_metadata())


def test_parquet_dataset_input_with_exif_columns(tmp_path, relative_dir):
    """Rows of a Parquet input (image bytes, caption and EXIF columns), in-process, with a tiny Depth Anything."""
    scene = demo_scenes(tmp_path / "scene", 1)[0]
    same = {"bytes": scene.read_bytes(), "path": None}
    table = pa.table({  # row 2 repeats row 0's bytes: a duplicate, whatever its caption
        "image": [same, {"bytes": b"broken", "path": None}, same],
        "caption": ["a test scene", None, "again"],
        "f_number": [2.0] * 3, "focal_length_mm": [50.0] * 3, "focal_length_35mm": [50.0] * 3,
        "focus_distance_m": [2.5] * 3,
    })
    pq.write_table(table, tmp_path / "photos.parquet")
    out = tmp_path / "out"
    code = main(["build", str(tmp_path / "photos.parquet"), "-o", str(out), "--workers", "0", "--depth",
                 "depth-anything", "--depth-model", str(relative_dir), "--synthetic-levels", "0", "--min-sharpness", "0"])
    assert code == 0
    (row,) = read_rows(out, columns=("source", "caption", "bokeh_level", "k_metric", "bokeh_source", "f_number",
                                      "focus_distance_m", "width", "height"))
    error, duplicate = read_errors(out)
    assert error["source"].endswith("photos.parquet#1") and error["code"] == "not-an-image"
    assert duplicate["source"].endswith("photos.parquet#2") and duplicate["stage"] == "dedup"
    assert duplicate["reason"] == f"duplicate of {tmp_path / 'photos.parquet'}#0"
    assert row["source"].endswith("photos.parquet#0") and row["caption"] == "a test scene"
    assert row["bokeh_source"] == "exif-only" and row["f_number"] == 2.0 and row["focus_distance_m"] == 2.5
    # Thin lens by hand (docs/design.md §1): full frame (f35 = f), 256x256 px, relative depth -> K = k_metric / s.
    f, n, s, w = 0.050, 2.0, 2.5, 256
    sensor_w = 0.04327 * w / math.hypot(w, w)
    k_metric = f * f * s / (2 * n * (s - f)) * w / sensor_w
    assert row["k_metric"] == pytest.approx(k_metric, rel=1e-5)
    assert row["bokeh_level"] == pytest.approx(k_metric / s * 512 / 256, rel=1e-5)


def test_overwrite_replaces_only_build_files(tmp_path, capsys):
    demo_scenes(tmp_path / "in", 1)
    out = tmp_path / "out"
    args = ["build", str(tmp_path / "in"), "-o", str(out), "--workers", "0", "--depth", "sidecar",
            "--synthetic-levels", "0", "--resolution", "128"]
    assert main(args) == 0
    (out / "notes.txt").write_text("mine")
    (out / "data" / "mine.parquet").write_bytes(b"mine")
    (out / "data" / "train-00003-of-00009.parquet").write_bytes(b"an earlier build's shard")
    assert main([*args, "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "data" / "mine.parquet").read_bytes() == b"mine"
    assert sorted(p.name for p in (out / "data").iterdir()) == ["mine.parquet", "train-00000-of-00001.parquet"]
    assert len(read_rows(out)) == 1
    capsys.readouterr()
    assert main([*args, "--resume", "--seed", "3"]) == 0  # a finished build: nothing to do, settings unchecked
    with pytest.raises(SystemExit):
        main([*args, "--resume", "--overwrite"])
    assert main([*args[:-2], "--ray-address", "auto", "--overwrite"]) == 2
    assert "--workers sizes the local Ray" in capsys.readouterr().err
    assert main([*args, "--ray-timeout", "5", "--overwrite"]) == 2
    assert "--ray-timeout limits joining a cluster" in capsys.readouterr().err


def test_stored_images_and_balanced_levels(tmp_path):
    """No Ray: the stored JPEGs decode to the size the rows say, and --balance puts one render per stratum."""
    from dataset_tools.demo_scenes import write_demo_data

    write_demo_data(tmp_path / "in", 2, width=300, height=200, progress=False)
    out = tmp_path / "out"
    assert main(["build", str(tmp_path / "in"), "-o", str(out), "--workers", "0", "--depth", "sidecar",
                 "--synthetic-levels", "2", "--balance", "--resolution", "100", "--min-sharpness", "0"]) == 0
    rows = read_rows(out, columns=None)
    for row in rows:
        image = Image.open(io.BytesIO(row["image"]["bytes"]))
        assert image.format == "JPEG" and image.size == (row["width"], row["height"]) == (150, 100)
    pivots = [r for r in rows if r["kind"] == "real" and r["is_all_in_focus"]]
    assert pivots
    for pivot in pivots:
        levels = sorted(r["bokeh_level"] for r in rows if r["group_id"] == pivot["id"] and r["kind"] == "synthetic")
        assert len(levels) == 2 and 1 <= levels[0] <= 15.5 <= levels[1] <= 30


def test_fixed_levels_render_every_group_at_them(tmp_path, capsys):
    """No Ray: --levels renders every all-in-focus photo at exactly the given K, stored sorted, and a resumed
    build compares them as its other settings (the stored JSON has a list where the config has a tuple)."""
    import json

    from dataset_tools.build_config import BuildConfig
    from dataset_tools.demo_scenes import write_demo_data

    write_demo_data(tmp_path / "in", 2, width=300, height=200, progress=False)
    out = tmp_path / "out"
    args = ["build", str(tmp_path / "in"), "-o", str(out), "--workers", "0", "--depth", "sidecar",
            "--resolution", "100", "--min-sharpness", "0"]
    assert main([*args, "--levels", "30,7.5"]) == 0
    rows = read_rows(out, columns=None)
    pivots = [r for r in rows if r["kind"] == "real" and r["is_all_in_focus"]]
    assert pivots
    for pivot in pivots:
        levels = sorted(r["bokeh_level"] for r in rows if r["group_id"] == pivot["id"] and r["kind"] == "synthetic")
        assert levels == [7.5, 30.0]
    stored = json.loads(json.dumps(BuildConfig(levels=(7.5, 30.0)).to_dict()))
    assert BuildConfig(levels=(7.5, 30.0)).differences(stored) == []
    assert BuildConfig(levels=(7.5, 20.0)).differences(stored) == ["levels"]
    # a config built by hand gets the count from its levels, whatever synthetic_levels said
    assert BuildConfig(levels=[30, 7.5], synthetic_levels=6) == BuildConfig(levels=(7.5, 30.0))
    assert BuildConfig(levels=(30, 7.5)).synthetic_levels == 2
    for bad, message in ((dict(levels=(5, 5)), "a level repeats: 5,5"), (dict(levels=(0, 5)), r"every level must be in \(0, 30\]: 0,5"),
                         (dict(levels=(5,), balance=True), "balance does not apply")):
        with pytest.raises(ValueError, match=message):
            BuildConfig(**bad)
    capsys.readouterr()
    for extra, message in ((["--balance"], "--levels fixes the render levels"),
                           (["--synthetic-levels", "2"], "--levels fixes the render levels")):
        assert main([*args, "--overwrite", "--levels", "5,30", *extra]) == 2
        assert message in capsys.readouterr().err
    assert main([*args, "--overwrite", "--levels", "5,5"]) == 2
    assert "--levels: a level repeats: 5,5" in capsys.readouterr().err
    for bad in ("0,5", "31"):
        with pytest.raises(SystemExit):
            main([*args, "--overwrite", "--levels", bad])
    assert "a render level must be in (0, 30]" in capsys.readouterr().err


def test_join_failure_names_the_token_fix():
    from dataset_tools.ray_join import join_failure

    try:
        try:
            raise RuntimeError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect")
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:1\nmore") from inner
    except ConnectionError as exc:
        text = join_failure(exc)
    assert "\n" not in text and text.startswith("Failed to connect to Ray cluster at 127.0.0.1:1")
    assert "RAY_AUTH_MODE=token" in text
    assert "RAY_AUTH_MODE" not in join_failure(ConnectionError("refused"))
