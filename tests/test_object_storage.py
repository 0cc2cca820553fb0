"""Inputs and OUT on an object store: every test talks S3 to a real S3-compatible server (moto in server mode)
that the module starts on 127.0.0.1 and stops by its PID. Credentials and the endpoint reach s3fs the way they
reach it on a cluster: the standard AWS_* environment variables."""
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from dataset_tools import storage  # noqa: E402
from dataset_tools.atomic import publish, write_atomic  # noqa: E402
from dataset_tools.input_stamp import stamp_of  # noqa: E402
from dataset_tools.schema import LABELS  # noqa: E402
from dataset_tools.out_guard import MARKER, ObjectLock, check_apart, lock_out, read_marker, write_marker  # noqa: E402
from dataset_tools.sources import MAX_CAPTION_BYTES, InputError, iter_sources, listing_code  # noqa: E402
from estimators.cli_util import UserError  # noqa: E402
from estimators.input_files import InputFileError, read_regular, remote_url  # noqa: E402
from estimators.sidecars import load_depth_sidecar, load_mask_sidecar  # noqa: E402

from build_helpers import demo_scenes  # noqa: E402

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free loopback port, with the environment pointing s3fs at it; yields the s3fs
    filesystem the build's code gets from that environment."""
    import s3fs

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the moto server did not start") from None
                time.sleep(0.1)
        with pytest.MonkeyPatch.context() as env:
            for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
                env.setenv(name, value)
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
                env.delenv(name, raising=False)
            s3fs.S3FileSystem.clear_instance_cache()
            yield s3fs.S3FileSystem()
            s3fs.S3FileSystem.clear_instance_cache()
    finally:
        os.kill(server.pid, 15)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, 9)
            server.wait()


@pytest.fixture
def bucket(s3):
    """A new, empty bucket for one test."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.mkdir(name)
    return name


def png_bytes(size=(12, 8), colour=(200, 40, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- URLs and paths
def test_urls_in_both_spellings_and_local_paths():
    assert remote_url("s3://bkt/a/x.jpg") == "s3://bkt/a/x.jpg"
    # pathlib folds "//": the sidecar paths estimators derive with Path still name the objects
    assert str(Path("s3://bkt/a/x.jpg").with_suffix(".txt")) == "s3:/bkt/a/x.txt"
    assert remote_url(Path("s3://bkt/a/x.jpg").with_suffix(".txt")) == "s3://bkt/a/x.txt"
    assert remote_url("gs://bkt/k") == "gs://bkt/k"
    for local in ("/data/photos", "photos/a.jpg", "c:/photos/a.jpg", "file:///data/a.jpg", "nosuchproto://x/y"):
        assert remote_url(local) is None and not storage.is_remote(local)
    assert storage.join("s3://bkt/out/", "data", "train.parquet") == "s3://bkt/out/data/train.parquet"
    assert storage.join("out", "data") == os.path.join("out", "data")
    assert storage.location(Path("s3://bkt/out")) == "s3://bkt/out"
    out = storage.as_path("s3://bkt/out")
    assert str(out / "data" / "x.parquet") == "s3://bkt/out/data/x.parquet" and (out / "x.png").name == "x.png"
    assert str((out / "x.png").with_suffix(".txt")) == os.fspath(out / "x.txt") == "s3://bkt/out/x.txt"
    assert storage.is_remote(out / "data") and not hasattr(out, "mkdir") and not hasattr(out, "exists")
    assert storage.as_path("out") == Path("out")


# ----------------------------------------------------------------------------- reading with the caps
def test_read_objects_with_the_size_cap(s3, bucket):
    s3.pipe_file(f"{bucket}/p/a.png", b"x" * 100)
    s3.pipe_file(f"{bucket}/p/sub/b.png", b"y")
    assert read_regular(f"s3://{bucket}/p/a.png", 100, "photo") == b"x" * 100
    with pytest.raises(InputFileError) as big:
        read_regular(f"s3://{bucket}/p/a.png", 99, "photo")
    assert big.value.code == "too-large" and "100 bytes, over the 99 bytes limit" in str(big.value)
    with pytest.raises(InputFileError) as missing:
        read_regular(f"s3://{bucket}/p/none.png", 100, "photo")
    assert missing.value.code == "unreadable" and "no such object" in str(missing.value)
    with pytest.raises(InputFileError) as folder:
        read_regular(f"s3://{bucket}/p/sub", 100, "photo")
    assert folder.value.code == "not-a-file" and "\n" not in str(folder.value)


def test_sidecars_read_from_objects_equal_the_local_ones(s3, bucket, tmp_path):
    """The worker code (estimators.sidecars) given a photo URL reads its depth and mask sidecar objects: the
    maps equal those read from the same files on disk."""
    photo = demo_scenes(tmp_path / "in", 1, size=64)[0]
    s3.put(str(tmp_path / "in") + "/", f"{bucket}/in/", recursive=True)
    url = f"s3://{bucket}/in/{photo.name}"
    size = Image.open(photo).size
    local_depth, remote_depth = load_depth_sidecar(photo, size), load_depth_sidecar(url, size)
    assert remote_depth.source == local_depth.source == "sidecar-depth"
    np.testing.assert_array_equal(remote_depth.disparity, local_depth.disparity)
    np.testing.assert_array_equal(load_mask_sidecar(url, size).mask, load_mask_sidecar(photo, size).mask)


# ----------------------------------------------------------------------------- listing inputs
def _tree(root: Path) -> None:
    """Photos with sidecars and captions in nested folders, plus files the listing refuses or skips."""
    (root / "sub" / "deeper").mkdir(parents=True)
    for rel in ("a.png", "sub/b.PNG", "sub/deeper/c.jpg", "d.png", "e.png"):
        (root / rel).write_bytes(png_bytes())
    (root / "a.txt").write_text("  a red square \n", encoding="utf-8")
    (root / "a.mask.png").write_bytes(png_bytes())
    np.save(root / "sub" / "b.depth.npy", np.ones((8, 12), np.float32))
    (root / "d.txt").write_bytes(b"\xff\xfe not utf-8")
    (root / "e.txt").write_bytes(b"x" * (MAX_CAPTION_BYTES + 1))
    (root / "f.gif").write_bytes(b"GIF89a")
    (root / "notes.md").write_text("not a photo")


def _view(items, prefix: str) -> list[tuple]:
    """What a listing says of each input, with its location made relative to ``prefix``."""
    view = []
    for item in items:
        stamp, bits = stamp_of(item)
        code = listing_code(item.error) if item.error else None
        view.append((item.source[len(prefix):].lstrip("/"), item.caption, code, bits))
    return view


def test_listing_a_prefix_follows_the_folder_rules(s3, bucket, tmp_path):
    """The same tree listed from disk (the local code path is the reference) and from the bucket gives the same
    photos, captions, refusals and sidecar bits; every image object becomes an item that the read stage fetches."""
    _tree(tmp_path / "in")
    s3.put(str(tmp_path / "in") + "/", f"{bucket}/in/", recursive=True)
    local = sorted(_view(iter_sources([str(tmp_path / "in")]), str(tmp_path / "in")))
    remote = _view(iter_sources([f"s3://{bucket}/in"]), f"s3://{bucket}/in")
    assert sorted(remote) == local
    assert [r[0] for r in remote] == sorted(r[0] for r in remote)  # key order
    by_name = {r[0]: r for r in remote}
    assert by_name["a.png"][1:] == ("a red square", None, 4 | 2)  # caption and mask sidecar
    assert by_name["sub/b.PNG"][3] == 1 and by_name["d.png"][2] == by_name["e.png"][2] == "bad-caption"
    assert by_name["f.gif"][2] == "unsupported-format" and "notes.md" not in by_name
    items = {i.source: i for i in iter_sources([f"s3://{bucket}/in"])}
    assert items[f"s3://{bucket}/in/sub/deeper/c.jpg"].read_bytes() == png_bytes()


def test_listing_globs_single_objects_and_refusals(s3, bucket, tmp_path):
    _tree(tmp_path / "in")
    s3.put(str(tmp_path / "in") + "/", f"{bucket}/in/", recursive=True)
    top = [i.source for i in iter_sources([f"s3://{bucket}/in/*.png"])]
    assert top == [f"s3://{bucket}/in/{n}" for n in ("a.png", "d.png", "e.png")]
    single = list(iter_sources([f"s3://{bucket}/in/a.png"]))
    assert [(i.source, i.caption, stamp_of(i)[1]) for i in single] == [(f"s3://{bucket}/in/a.png", "a red square", 6)]
    # one object named by the user is read whatever its ending, as a single local file is: decoding decides
    gif = f"s3://{bucket}/in/f.gif"
    assert [(i.source, i.error) for i in iter_sources([gif])] == [(gif, None)]
    assert [(i.source, i.error) for i in iter_sources([str(tmp_path / "in" / "f.gif")])] == [
        (str(tmp_path / "in" / "f.gif"), None)]
    for bad, text in ((f"s3://{bucket}/none", "input not found"), (f"s3://{bucket}/in/*.tif", "no object matches"),
                      (f"s3://{bucket}/list.txt", "lists of paths are read from local files only")):
        with pytest.raises(InputError, match=text):
            list(iter_sources([bad]))


def test_stamp_changes_when_an_object_or_its_sidecar_changes(s3, bucket):
    s3.pipe_file(f"{bucket}/in/a.png", png_bytes())
    first = stamp_of(next(iter_sources([f"s3://{bucket}/in"])))
    s3.pipe_file(f"{bucket}/in/a.depth.npy", b"\x93NUMPY")
    second = stamp_of(next(iter_sources([f"s3://{bucket}/in"])))
    s3.pipe_file(f"{bucket}/in/a.png", png_bytes(colour=(1, 2, 3)))
    third = stamp_of(next(iter_sources([f"s3://{bucket}/in"])))
    assert first[1] == 0 and second[1] == 1 and len({first[0], second[0], third[0]}) == 3


def test_parquet_objects_are_read_as_rows(s3, bucket):
    import pyarrow as pa

    table = pa.table({"image": [{"bytes": png_bytes(), "path": None}], "caption": ["from parquet"]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    s3.pipe_file(f"{bucket}/rows/part-0.parquet", buf.getvalue())
    items = list(iter_sources([f"s3://{bucket}/rows"]))
    assert [(i.data, i.caption) for i in items] == [(png_bytes(), "from parquet")]


# ----------------------------------------------------------------------------- writing
def test_write_publish_create_and_remove(s3, bucket, tmp_path):
    out = f"s3://{bucket}/out"
    write_atomic(storage.join(out, "stats.json"), '{"kept": 1}')
    assert s3.cat_file(f"{bucket}/out/stats.json") == b'{"kept": 1}'
    temp = storage.temp_for(storage.join(out, "data", "train-00000-of-00001.parquet"))
    assert not storage.is_remote(temp)
    pq.write_table(__import__("pyarrow").table({"x": [1, 2, 3]}), temp)
    publish(temp, storage.join(out, "data", "train-00000-of-00001.parquet"))
    assert not os.path.exists(temp)
    shard = storage.parquet_file(Path(f"{out}/data/train-00000-of-00001.parquet"))  # pathlib's spelling too
    assert shard.metadata.num_rows == 3 and shard.read()["x"].to_pylist() == [1, 2, 3]

    lock = storage.join(out, "lock")
    assert storage.create(lock, b"first") and not storage.create(lock, b"second")
    assert s3.cat_file(f"{bucket}/out/lock") == b"first"

    s3.pipe_file(f"{bucket}/out/_work/inputs/shard-00000.parquet", b"1")
    s3.pipe_file(f"{bucket}/out/_work/config.json", b"{}")
    s3.pipe_file(f"{bucket}/out/_work2/keep", b"1")  # shares the prefix "_work" but is another folder
    assert storage.exists(f"{out}/_work") and storage.is_file(f"{out}/_work/config.json")
    assert not storage.is_file(f"{out}/_work")
    storage.remove_tree(f"{out}/_work")
    storage.remove(f"{out}/lock")
    storage.remove(f"{out}/never-written")
    assert storage.list_files(out) == [f"{out}/_work2/keep", f"{out}/data/train-00000-of-00001.parquet",
                                       f"{out}/stats.json"]
    assert not storage.exists(f"{out}/_work")
    assert storage.list_names(out) == ["_work2", "data", "stats.json"] and storage.list_names(f"{out}/none") == []
    storage.make_dirs(f"{out}/made")  # a prefix needs no folder: nothing is written
    assert storage.list_names(out) == ["_work2", "data", "stats.json"]


def test_local_paths_take_the_os_calls(tmp_path):
    storage.make_dirs(tmp_path / "a" / "b")
    write_atomic(tmp_path / "a" / "b" / "f.txt", "text")
    assert storage.list_names(tmp_path / "a") == ["b"] and storage.list_names(tmp_path / "none") == []
    assert storage.list_files(tmp_path) == [str(tmp_path / "a" / "b" / "f.txt")]
    assert storage.is_file(tmp_path / "a" / "b" / "f.txt") and not storage.is_file(tmp_path / "a")
    assert storage.temp_for(tmp_path / "a" / "f.txt") == str(tmp_path / "a" / ".f.txt.tmp")
    storage.remove_tree(tmp_path / "a")
    storage.remove_tree(tmp_path / "a")
    assert not storage.exists(tmp_path / "a")


def test_local_create_is_exclusive(tmp_path):
    assert storage.create(tmp_path / "lock", b"a") and not storage.create(tmp_path / "lock", b"b")
    assert (tmp_path / "lock").read_bytes() == b"a"


# ----------------------------------------------------------------------------- OUT guards
def test_marker_on_an_object_store(s3, bucket):
    out = f"s3://{bucket}/out"
    assert read_marker(out) is False
    write_marker(out)
    assert read_marker(out) is True
    s3.pipe_file(f"{bucket}/other/{MARKER}", json.dumps({"format": "bokeh-build/0"}).encode())
    with pytest.raises(UserError, match="another version of the toolkit"):
        read_marker(f"s3://{bucket}/other")


def test_lock_object_is_exclusive_and_released(s3, bucket):
    out = f"s3://{bucket}/out"
    with lock_out(out) as held:
        assert isinstance(held, ObjectLock)
        holder = json.loads(s3.cat_file(f"{bucket}/out/.bokeh-build.lock"))
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(UserError) as busy:
            lock_out(out).acquire()
        assert f"pid {os.getpid()} on {socket.gethostname()}" in str(busy.value)
        assert f"delete {out}/.bokeh-build.lock" in str(busy.value)
    assert not s3.exists(f"{bucket}/out/.bokeh-build.lock")


def test_lock_left_by_a_dead_driver(s3, bucket):
    """A lock whose driver ran on this machine and is gone is taken over; one from another machine is not."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = f"{bucket}/out/.bokeh-build.lock"
    s3.pipe_file(lock, json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "then"}).encode())
    with lock_out(f"s3://{bucket}/out"):
        assert json.loads(s3.cat_file(lock))["pid"] == os.getpid()
    s3.pipe_file(lock, json.dumps({"pid": dead.pid, "host": "elsewhere", "since": "then"}).encode())
    with pytest.raises(UserError, match=f"pid {dead.pid} on elsewhere, since then"):
        lock_out(f"s3://{bucket}/out").acquire()
    assert json.loads(s3.cat_file(lock))["host"] == "elsewhere"


def test_out_apart_from_object_store_inputs(tmp_path):
    check_apart(["s3://bkt/photos"], "s3://bkt/out")
    check_apart(["s3://bkt/photos"], "s3://other/photos/out")
    check_apart(["s3://bkt/photos/*.jpg"], "s3://bkt/photos/built")  # the glob never reaches into it
    check_apart(["s3://bkt/photos"], tmp_path / "photos")  # a local OUT is never an object-store input
    check_apart(["gs://bkt/photos"], "s3://bkt/photos/out")  # another store
    for inputs, out, why in ((["s3://bkt/photos"], "s3://bkt/photos", "is the input"),
                             (["s3://bkt/photos/"], "s3://bkt/photos/out", "lies inside the input"),
                             (["s3://bkt/photos/**/*.jpg"], "s3://bkt/photos/a/out", "lies inside the input"),
                             (["s3://bkt/photos/a"], "s3://bkt/photos", "holds the input")):
        with pytest.raises(UserError, match=why):
            check_apart(inputs, out)


# ----------------------------------------------------------------------------- the build, s3:// to s3://
SIDECAR_FLAGS = ["--depth", "sidecar", "--mask", "sidecar", "--synthetic-levels", "1", "--resolution", "64",
                 "--shard-size", "2", "--min-sharpness", "0"]
E2E_FLAGS = [*SIDECAR_FLAGS, "--workers", "0"]


#: The stored value of ``kind`` for a photo's own row (a class-label column holds the label's index).
REAL = LABELS["kind"].index("real")


class _Stopped(Exception):
    pass


def test_build_from_s3_to_s3_resume_and_overwrite(s3, bucket, tmp_path, capsys, monkeypatch):
    """Four photos with sidecars in a bucket, built into the same bucket: every photo in exactly one place; a
    removed shard object is redone alone on --resume; --overwrite removes only the build's objects. Nothing
    lands on the local disk under pathlib's spelling of the URL (``s3:/...``)."""
    from bokeh_cli import main

    monkeypatch.chdir(tmp_path)

    demo_scenes(tmp_path / "in", 3, size=64)
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    s3.put(str(tmp_path / "in") + "/", f"{bucket}/in/", recursive=True)
    out = f"s3://{bucket}/out"
    sources = {f"s3://{bucket}/in/{p.name}" for p in (tmp_path / "in").iterdir()
               if p.suffix == ".png" and not p.name.endswith(".mask.png") and not p.name.endswith(".disparity.png")}
    assert len(sources) == 4

    # A build stopped before its summary keeps its work state: with one shard object removed, --resume
    # redoes that shard only.
    def stop(*args, **kwargs):
        raise _Stopped

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("dataset_tools.build.finish", stop)
        with pytest.raises(_Stopped):
            main(["build", f"s3://{bucket}/in", "-o", out, *E2E_FLAGS])
    shards = sorted(s3.glob(f"{bucket}/out/data/train-*.parquet"))
    assert len(shards) == 2 and s3.exists(f"{bucket}/out/_work/config.json")
    kept = s3.info(shards[1])["ETag"]
    s3.rm_file(shards[0])
    assert main(["build", f"s3://{bucket}/in", "-o", out, *E2E_FLAGS, "--resume"]) == 0
    assert s3.exists(shards[0]) and s3.info(shards[1])["ETag"] == kept

    rows = pq.read_table(f"{bucket}/out/data", filesystem=s3, columns=["source", "kind"]).to_pylist()
    errors = [json.loads(line) for line in s3.cat_file(f"{bucket}/out/errors.jsonl").decode().splitlines()]
    real = [r["source"] for r in rows if r["kind"] == REAL]
    failed = [e["source"] for e in errors]
    assert sorted(real + failed) == sorted(sources) and len(set(real)) == len(real) == 3
    assert failed == [f"s3://{bucket}/in/broken.png"]
    assert json.loads(s3.cat_file(f"{bucket}/out/stats.json"))["photos_read"] == 4
    assert not s3.exists(f"{bucket}/out/_work") and not s3.exists(f"{bucket}/out/.bokeh-build.lock")

    s3.pipe_file(f"{bucket}/out/notes.txt", b"the user's")  # not the build's: kept by --overwrite
    assert main(["build", f"s3://{bucket}/in", "-o", out, *E2E_FLAGS]) == 2
    assert f"{out} holds a finished build" in capsys.readouterr().err
    assert main(["build", f"s3://{bucket}/in", "-o", out, *E2E_FLAGS, "--overwrite"]) == 0
    assert s3.cat_file(f"{bucket}/out/notes.txt") == b"the user's"
    assert sorted(s3.glob(f"{bucket}/out/data/train-*.parquet")) == shards
    assert not (tmp_path / "s3:").exists()


def test_build_from_s3_to_s3_on_a_local_ray(s3, bucket, tmp_path, monkeypatch):
    """The same build on a local Ray of one worker: the workers fetch the photos and sidecars and find the
    endpoint and credentials in the environment they inherit."""
    from bokeh_cli import main

    monkeypatch.chdir(tmp_path)
    photos = demo_scenes(tmp_path / "in", 2, size=64)
    s3.put(str(tmp_path / "in") + "/", f"{bucket}/in/", recursive=True)
    assert main(["build", f"s3://{bucket}/in", "-o", f"s3://{bucket}/out", *SIDECAR_FLAGS, "--workers", "1"]) == 0
    rows = pq.read_table(f"{bucket}/out/data", filesystem=s3, columns=["source", "kind"]).to_pylist()
    assert sorted(r["source"] for r in rows if r["kind"] == REAL) == [f"s3://{bucket}/in/{p.name}" for p in photos]
    assert s3.cat_file(f"{bucket}/out/errors.jsonl") == b""
    assert not (tmp_path / "s3:").exists()
