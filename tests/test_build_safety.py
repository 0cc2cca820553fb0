"""`bokeh build` against operator mistakes around OUT: inputs as OUT, --overwrite of files no build wrote, two
builds into one OUT, inputs changed before --resume, repeated photos with and without sidecars, a full disk."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataset_tools.dedup import later_copies
from dataset_tools.input_stamp import CAPTION, DEPTH_SIDECAR, MASK_SIDECAR
from dataset_tools.out_guard import LOCK, MARKER, OutLock, check_apart
from dataset_tools.stages import EstimateStage
from bokeh_cli import main
from build_helpers import (REPO_ENV, Interrupted, StopAfterFirstShard, assert_each_photo_once, demo_scenes,  # noqa: F401
                           local_ray, read_errors, read_rows, wait_for)

FAST = ["--workers", "0", "--depth", "sidecar", "--mask", "sidecar", "--synthetic-levels", "0", "--resolution", "96",
        "--min-sharpness", "0"]


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("bokeh build: error:")]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- OUT and the inputs
def test_out_among_the_inputs_is_refused_and_nothing_is_deleted(tmp_path, capsys):
    """The reported case: `bokeh build u -o u --overwrite` on a folder of data/*.png and a README."""
    u = tmp_path / "u"
    demo_scenes(u / "data", 2, size=64)
    (u / "README.md").write_text("my notes")
    before = _tree(u)
    for inputs, out, why in (([u], u, "is the input"), ([u / "data"], u, "holds the input"),
                             ([u], u / "built", "lies inside the input"), ([f"{u}/data/*.png"], u, "holds the input"),
                             ([f"{u}/**/*.png"], u / "x", "lies inside the input")):
        assert main(["build", *map(str, inputs), "-o", str(out), *FAST, "--overwrite"]) == 2
        (line,) = _error_lines(capsys.readouterr().err)
        assert f"{why} " in line and "outside" in line
    assert _tree(u) == before and not (u / "built").exists() and not (u / "x").exists()
    check_apart([f"{u}/data/*.png", "hf://user/set"], u / "data" / "built")  # the glob never reaches into it


def test_overwrite_refuses_a_folder_no_build_wrote(tmp_path, capsys):
    demo_scenes(tmp_path / "in", 1, size=64)
    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    (out / "data" / "train-00000-of-00001.parquet").write_bytes(b"not a build's")
    (out / "README.md").write_text("mine")
    before = _tree(out)
    assert main(["build", str(tmp_path / "in"), "-o", str(out), *FAST, "--overwrite"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"no {MARKER} marker" in line and "only replaces a build's own files" in line
    assert _tree(out) == before and sorted(p.name for p in out.iterdir()) == ["README.md", "data"]
    # --resume and a plain run are refused alike; a build's marker with another format too.
    assert main(["build", str(tmp_path / "in"), "-o", str(out), *FAST, "--resume"]) == 2
    assert "holds no build to resume" in capsys.readouterr().err
    (out / MARKER).write_text('{"format": "bokeh-build/0"}')
    assert main(["build", str(tmp_path / "in"), "-o", str(out), *FAST, "--overwrite"]) == 2
    assert "another version" in capsys.readouterr().err and _tree(out) == {**before, MARKER: b'{"format": "bokeh-build/0"}'}


# ----------------------------------------------------------------------------- one build per OUT
def test_a_second_build_into_a_locked_out_fails_at_once(tmp_path, capsys):
    demo_scenes(tmp_path / "in", 1, size=64)
    out = tmp_path / "out"
    with OutLock(out):
        start = time.monotonic()
        assert main(["build", str(tmp_path / "in"), "-o", str(out), *FAST]) == 2
        assert time.monotonic() - start < 10
        (line,) = _error_lines(capsys.readouterr().err)
        assert f"in use by another bokeh build (pid {os.getpid()} on " in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # the holder's lock only: nothing was written
    assert not out.exists()  # the holder created OUT and removes it again, empty

    # A holder killed with -9 leaves its lock file, but not its lock: the next build runs.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from dataset_tools.out_guard import OutLock; OutLock(Path(sys.argv[1])).acquire(); "
                               "print('locked', flush=True); time.sleep(120)", str(out)],
                              env=REPO_ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["build", str(tmp_path / "in"), "-o", str(out), *FAST]) == 2
        assert f"(pid {holder.pid} on " in capsys.readouterr().err
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    assert (out / LOCK).is_file()
    assert main(["build", str(tmp_path / "in"), "-o", str(out), *FAST]) == 0
    assert not (out / LOCK).exists() and (out / MARKER).is_file()


# ----------------------------------------------------------------------------- --resume and changed inputs
def _interrupted_build(args: list[str]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("dataset_tools.build.ShardWriter", StopAfterFirstShard)
        with pytest.raises(Interrupted):
            main(args)


def test_resume_refuses_inputs_that_changed(tmp_path, capsys):
    scenes = demo_scenes(tmp_path / "in", 4, size=64)
    out = tmp_path / "out"
    args = ["build", str(tmp_path / "in"), "-o", str(out), *FAST, "--shard-size", "1"]
    _interrupted_build(args)
    assert [p.name for p in (out / "data").iterdir()] == ["train-00000-of-00004.parquet"]
    # A photo added (with its sidecars), one removed, one rewritten with other bytes.
    added = demo_scenes(tmp_path / "extra", 1, size=64, seed=5)[0]
    for path in added.parent.glob(f"{added.stem}.*"):
        shutil.copy(path, tmp_path / "in" / f"zz_{path.name}")
    removed = tmp_path / "moved"
    removed.mkdir()
    shutil.move(scenes[2], removed / scenes[2].name)
    original = scenes[3].stat()
    scenes[3].write_bytes(scenes[3].read_bytes() + b"\0")
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "changed: 1 added, 1 removed, 1 changed since the build started" in line
    assert f"changed: {scenes[3]}" in line and "--overwrite" in line
    assert [p.name for p in (out / "data").iterdir()] == ["train-00000-of-00004.parquet"]  # kept for --resume

    # A touched sidecar is a change as well; restored inputs resume.
    shutil.move(removed / scenes[2].name, scenes[2])
    for path in (tmp_path / "in").glob("zz_*"):
        path.unlink()
    scenes[3].write_bytes(scenes[3].read_bytes()[:-1])
    assert main([*args, "--resume"]) == 2
    assert "1 changed" in capsys.readouterr().err  # the restored photo has a new modification time
    os.utime(scenes[3], ns=(original.st_atime_ns, original.st_mtime_ns))
    stamp = Path(f"{scenes[1].with_suffix('')}.mask.png")
    old = stamp.stat().st_mtime_ns
    os.utime(stamp, ns=(old, old + 10**9))
    assert main([*args, "--resume"]) == 2
    assert f"changed: {scenes[1]}" in capsys.readouterr().err
    os.utime(stamp, ns=(old, old))
    assert main([*args, "--resume"]) == 0
    assert_each_photo_once(out, {str(p) for p in scenes})


def test_resume_before_the_inputs_were_sharded_takes_the_inputs_as_they_are(tmp_path, capsys):
    """Killed while sharding (no photo processed yet): --resume starts the sharding over on the changed inputs,
    so the photo added in between is processed once and none counts as a copy of itself."""
    scenes = demo_scenes(tmp_path / "in", 3, size=64)
    out = tmp_path / "out"
    args = ["build", str(tmp_path / "in"), "-o", str(out), *FAST, "--shard-size", "1"]
    _interrupted_build(args)
    inputs = out / "_work" / "inputs"
    for name in ("manifest.json", "duplicates.json", "shard-00002.parquet"):
        (inputs / name).unlink()
    shutil.rmtree(out / "data")
    (out / "_work" / "shards").rename(tmp_path / "unused")
    first = demo_scenes(tmp_path / "extra", 1, size=64, seed=9)[0]
    for path in first.parent.glob(f"{first.stem}.*"):
        shutil.copy(path, tmp_path / "in" / f"aa_{path.name}")  # sorts first: every later photo moves one seat
    assert main([*args, "--resume"]) == 0
    expected = {str(p) for p in scenes} | {str(tmp_path / "in" / f"aa_{first.name}")}
    rows, errors = assert_each_photo_once(out, expected)
    assert errors == [] and len(rows) == 4


# ----------------------------------------------------------------------------- repeated photos and sidecars
def test_dedup_ranks_copies_by_the_sidecars_the_build_reads():
    a = "aa" * 20
    both = DEPTH_SIDECAR | MASK_SIDECAR
    # seq 1 has no sidecar, seq 4 depth + mask, seq 6 depth + mask + caption.
    ids = [(1, a, 0), (4, a, both), (6, a, both | CAPTION)]
    assert later_copies(ids, needed=both | CAPTION) == {1: (a, 6), 4: (a, 6)}
    # A caption alone does not beat a depth map the build reads; without --depth/--mask sidecar it does.
    ids = [(2, a, DEPTH_SIDECAR), (3, a, CAPTION)]
    assert later_copies(ids, needed=DEPTH_SIDECAR | CAPTION) == {3: (a, 2)}
    assert later_copies(list(reversed(ids)), needed=DEPTH_SIDECAR | CAPTION) == {3: (a, 2)}
    # Equal sidecars: the lowest seq, whatever the order the workers report in.
    ids = [(9, a, CAPTION), (5, a, CAPTION), (7, a, 0)]
    assert later_copies(ids, needed=CAPTION) == {9: (a, 5), 7: (a, 5)}


def test_the_copy_with_sidecars_is_the_one_kept(tmp_path, capsys):
    """a/ holds a bare copy of b/'s photo (first in the stream); b/ has its depth, mask and caption: b/ is kept."""
    scene = demo_scenes(tmp_path / "in" / "b", 1, size=64)[0]
    bare = tmp_path / "in" / "a" / scene.name
    bare.parent.mkdir()
    shutil.copy(scene, bare)
    out = tmp_path / "out"
    assert main(["build", str(tmp_path / "in"), "-o", str(out), *FAST]) == 0
    rows, errors = assert_each_photo_once(out, {str(scene), str(bare)})
    assert [r["source"] for r in rows] == [str(scene)] and rows[0]["caption"] == Path(scene.with_suffix(".txt")).read_text().strip()
    assert [(e["source"], e["stage"], e["code"], e["reason"]) for e in errors] == [
        (str(bare), "dedup", "duplicate", f"duplicate of {scene}")]
    assert errors[0]["id"] == hashlib.sha1(scene.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- failures: one line, state kept
def _no_space_on(call: int):
    """A publish that fails with ENOSPC on its ``call``-th use, as a full disk does."""
    from dataset_tools import atomic

    calls = []

    def publish(temp, final):
        calls.append(final)
        if len(calls) == call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))
        atomic.publish(temp, final)

    return publish


def test_full_disk_mid_build_is_one_line_and_resume_finishes(tmp_path, capsys):
    demo_scenes(tmp_path / "in", 3, size=64)
    out = tmp_path / "out"
    args = ["build", str(tmp_path / "in"), "-o", str(out), *FAST, "--shard-size", "1"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("dataset_tools.writer.publish", _no_space_on(2))  # the second output shard
        assert main(args) == 1
    (line,) = _error_lines(capsys.readouterr().err)
    assert "No space left on device" in line and "train-00001-of-00003.parquet" in line
    assert "free some space, then rerun with --resume" in line
    assert main(args) == 2 and "pass --resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    reference = tmp_path / "reference"
    assert main(["build", str(tmp_path / "in"), "-o", str(reference), *FAST, "--shard-size", "1"]) == 0
    assert read_rows(out) == read_rows(reference)


def test_failures_before_any_photo_leave_out_as_it_was(tmp_path, capsys):
    demo_scenes(tmp_path / "in", 1, size=64)
    out = tmp_path / "new" / "out"
    args = ["build", str(tmp_path / "in"), "-o", str(out), *FAST]
    assert main([*args[:2], str(tmp_path / "missing"), *args[2:]]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "input not found" in line
    assert not (tmp_path / "new").exists()
    with pytest.MonkeyPatch.context() as patch:  # the disk fills while the inputs are sharded
        patch.setattr("dataset_tools.input_shards.publish", _no_space_on(1))
        assert main(args) == 1
    (line,) = _error_lines(capsys.readouterr().err)
    assert "free some space, then run the build again" in line and not (tmp_path / "new").exists()
    out.mkdir(parents=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["build", str(empty), "-o", str(out), *FAST]) == 2
    assert "no photos found" in capsys.readouterr().err and list(out.iterdir()) == []
    assert main(args) == 0 and len(read_rows(out)) == 1 and read_errors(out) == []


# ----------------------------------------------------------------------------- a Ray build killed with -9
def test_the_reaper_stops_the_processes_it_watches_and_nothing_else(tmp_path):
    import psutil

    from dataset_tools.ray_reaper import start_reaper, stop_reaper

    other = subprocess.Popen(["sleep", "60"])
    watched = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    grandchild = psutil.Process(int(watched.stdout.readline()))
    try:
        reaper = start_reaper([watched.pid])
        time.sleep(2)  # one look at the watched tree, grandchild included
        stop_reaper(reaper)
        watched.wait(timeout=10)
        wait_for(lambda: not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE, 10,
                 "the watched process's child to end")
        assert reaper.returncode == 0 and other.poll() is None
    finally:
        for proc in (other, watched):
            proc.kill()
            proc.wait()


def test_a_killed_ray_build_frees_out_and_leaves_no_process(tmp_path, capsys):
    """While a build on a local Ray runs, a second build into its OUT is refused at once, naming it. Killed with
    -9, it leaves no process behind within seconds (Ray's agents alone outlive their raylet by about a minute)
    and no lock: --resume finishes, and a build that ends normally leaves no process either."""
    from build_helpers import cli, kill_session, session_processes

    scenes = demo_scenes(tmp_path / "in", 6, size=96)
    out = tmp_path / "out"
    args = ["build", tmp_path / "in", "-o", out, *FAST[2:], "--shard-size", "1", "--workers", "2"]
    with open(tmp_path / "killed.log", "wb") as log:
        driver = subprocess.Popen(cli(*args), env=REPO_ENV, start_new_session=True, stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: driver.poll() is not None or any((out / "data").glob("train-*.parquet")), 180,
                     "the first output shard")
            assert main(["build", str(tmp_path / "in"), "-o", str(out), *FAST, "--resume"]) == 2
            (line,) = _error_lines(capsys.readouterr().err)
            assert f"in use by another bokeh build (pid {driver.pid} on " in line
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
            wait_for(lambda: session_processes(driver.pid) == [], 20, "the killed build's processes to end")
        finally:
            kill_session(driver.pid)
    assert driver.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    assert not (out / "stats.json").exists()

    finisher = subprocess.Popen(cli(*args, "--resume"), env=REPO_ENV, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = finisher.communicate(timeout=300)
        assert finisher.returncode == 0, stderr
        wait_for(lambda: session_processes(finisher.pid) == [], 15, "the finished build's processes to end")
    finally:
        kill_session(finisher.pid)
    rows, errors = assert_each_photo_once(out, {str(p) for p in scenes})
    assert errors == [] and not (out / LOCK).exists()


# ----------------------------------------------------------------------------- photos that kill their worker
class _Died(BaseException):
    """Stands for the death of the worker process: nothing after it runs."""


def test_death_ledger_singles_out_the_photo_that_kills_its_worker(tmp_path):
    """By hand: a batch of 4 where photo 12 kills the worker. Attempt 1 dies with all four in hand; attempt 2
    runs them one by one (10 and 11 finish, 12 dies); attempt 3 finds 12 with two deaths and dies again;
    attempt 4 stops 12 after its third death and finishes 13."""
    from dataset_tools.death_ledger import MAX_DEATHS, DeathLedger, run_states
    from dataset_tools.photo_state import PhotoState

    ledger = DeathLedger(tmp_path / "attempts")
    done: list[list[int]] = []

    def run(states):
        if any(s.seq == 12 for s in states):
            raise _Died
        done.append([s.seq for s in states])

    batches = []
    for attempt in range(1, 5):
        states = [PhotoState(0, seq, f"p{seq}.jpg") for seq in (10, 11, 12, 13)]
        batches.append(states)
        try:
            run_states("render", run, states, ledger)
        except _Died:
            continue
        break
    assert attempt == 4 and MAX_DEATHS == 3
    assert done == [[10], [11], [10], [11], [10], [11], [13]]
    outcomes = {s.seq: s.outcome for s in batches[-1]}
    assert outcomes[10] is None and outcomes[11] is None and outcomes[13] is None
    assert outcomes[12]["code"] == "worker-died" and outcomes[12]["stage"] == "render"
    assert outcomes[12]["reason"].startswith("the worker died 3 times processing this photo: likely out of memory")
    assert list((tmp_path / "attempts").iterdir()) == []  # nothing left over once the batch is done

    # Two photos that kill the worker (11 and 13): each dies exactly three times, the batch's death included.
    died = {11: 0, 13: 0}

    def run_two(states):
        for s in states:
            if s.seq in died:
                died[s.seq] += 1
                raise _Died

    for attempt in range(1, 10):
        states = [PhotoState(0, seq, f"p{seq}.jpg") for seq in (10, 11, 12, 13)]
        try:
            run_states("depth", run_two, states, ledger)
        except _Died:
            continue
        break
    assert attempt == 6 and died == {11: 3, 13: 2}  # the batch's death (with both in hand) counts for 13 too
    assert [(s.seq, s.outcome and s.outcome["code"]) for s in states] == [
        (10, None), (11, "worker-died"), (12, None), (13, "worker-died")]
    assert list((tmp_path / "attempts").iterdir()) == []


class _KillerEstimate(EstimateStage):
    """The estimate stage, except that the Ray worker holding photo ``scene_00002`` dies (SIGKILL), as under the
    kernel's OOM killer."""

    def run(self, states):
        if any(s.source.endswith("scene_00002.png") for s in states):
            os.kill(os.getpid(), signal.SIGKILL)
        super().run(states)


def test_a_photo_that_kills_its_ray_worker_becomes_an_error(local_ray, tmp_path, capsys):  # noqa: F811
    from ray import cloudpickle

    import dataset_tools.distribute as distribute

    scenes = demo_scenes(tmp_path / "in", 4, size=64)
    out = tmp_path / "out"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module
    stages = [_KillerEstimate if cls is EstimateStage else cls for cls in distribute.PHOTO_STAGES]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distribute, "PHOTO_STAGES", stages)
        code = main(["build", str(tmp_path / "in"), "-o", str(out), *FAST[2:]])
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert code == 0, capsys.readouterr().err
    rows, errors = assert_each_photo_once(out, {str(p) for p in scenes})
    assert sorted(r["source"] for r in rows) == [str(p) for p in scenes if p.name != "scene_00002.png"]
    assert [(e["source"], e["stage"], e["code"]) for e in errors] == [
        (str(tmp_path / "in" / "scene_00002.png"), "estimate", "worker-died")]
    assert "died 3 times" in errors[0]["reason"]
