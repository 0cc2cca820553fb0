"""`bokeh build --ray-address` against a Ray head this test starts on 127.0.0.1, stopped again by PID, and
against addresses where no cluster answers (a closed port, a port that accepts but never speaks)."""
from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from build_helpers import REPO_ENV, assert_each_photo_once, cli, demo_scenes, kill_session, session_processes, wait_for


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def cluster_env():
    """Environment of the head and the driver: loopback only, token auth with a token of this test's own."""
    return {**REPO_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture
def ray_head(tmp_path, cluster_env):
    """A one-CPU Ray head (own temp dir, loopback only) in its own session; yields (address, temp dir)."""
    port = _free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp"))  # short: Ray's socket paths are length-limited
    log_path = tmp_path / "head.log"
    with open(log_path, "wb") as log:
        head = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address=127.0.0.1",
             f"--port={port}", "--num-cpus=1", "--disable-usage-stats", "--include-dashboard=false",
             f"--temp-dir={temp_dir}", "--block"],
            env=cluster_env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: head.poll() is not None or "Ray runtime started" in log_path.read_text(errors="replace"), 120,
                 "the Ray head to start")
        assert head.poll() is None, log_path.read_text(errors="replace")
        yield f"127.0.0.1:{port}", temp_dir
    finally:
        kill_session(head.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert session_processes(head.pid) == [], "a process of the test's Ray head survived"


def test_build_on_a_ray_cluster(ray_head, cluster_env, relative_dir, tmp_path):
    """One CPU, no GPU: Depth Anything runs in a CPU actor that must leave room for the tasks."""
    address, temp_dir = ray_head
    photos = demo_scenes(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert not list(temp_dir.glob("session_*/logs/python-core-driver-*"))
    driver = subprocess.Popen(
        cli("build", tmp_path / "in", "-o", out, "--ray-address", address, "--depth", "depth-anything",
            "--depth-model", relative_dir, "--mask", "depth", "--min-sharpness", 0, "--synthetic-levels", 1,
            "--resolution", 128, "--shard-size", 2),
        env=cluster_env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = driver.communicate(timeout=300)
    finally:
        kill_session(driver.pid)
    assert driver.returncode == 0, output
    rows, errors = assert_each_photo_once(out, {str(p) for p in photos})
    assert all(e["status"] == "filtered" for e in errors)  # random weights may leave K unknown, never lose a photo
    assert len(list((out / "data").glob("train-*-of-00002.parquet"))) == 2
    # The driver joined the test's cluster (its log is in that cluster's session) instead of starting a Ray.
    assert list(temp_dir.glob("session_*/logs/python-core-driver-*"))
    assert "photos read   3" in output and json.loads((out / "stats.json").read_text())["stage_seconds"]["depth"] > 0


@pytest.mark.parametrize("listener", ["closed", "silent"])
def test_unreachable_cluster_fails_within_the_timeout(listener, tmp_path):
    """Nothing listens (Ray alone retries for over ten minutes), or a socket accepts and never answers (a wrong
    port): one line naming the address and what to check, exit 2, within --ray-timeout + 20 s, OUT untouched."""
    demo_scenes(tmp_path / "in", 1, size=64)
    out = tmp_path / "out"
    timeout = 3
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if listener == "silent":
            sock.listen(8)
        address = f"127.0.0.1:{sock.getsockname()[1]}"  # unbound listener: the port is closed
        start = time.monotonic()
        driver = subprocess.Popen(
            cli("build", tmp_path / "in", "-o", out, "--depth", "sidecar", "--ray-address", address,
                "--ray-timeout", timeout),
            env=REPO_ENV, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            stdout, stderr = driver.communicate(timeout=timeout + 60)
        finally:
            kill_session(driver.pid)
        elapsed = time.monotonic() - start
    assert driver.returncode == 2, stderr
    assert elapsed < timeout + 20
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bokeh build: error: cannot ") and stdout == "", stderr
    message = lines[0]
    assert address in message and "`ray start --head`" in message and "port" in message and "firewall" in message
    expected = "connection refused" if listener == "closed" else "no Ray GCS answered"
    assert expected in message
    assert not out.exists()
