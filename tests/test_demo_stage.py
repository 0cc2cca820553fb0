"""demo/stage.py, make demo's stage runner and closing summary, on small commands and a hand-written eval.json."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "demo" / "stage.py"


@pytest.fixture(scope="module")
def stage():
    spec = importlib.util.spec_from_file_location("demo_stage", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_demo(out: Path, targets) -> None:
    """A demo folder with what the summary points to and an eval.json whose targets are ``targets``."""
    (out / "eval").mkdir(parents=True)
    (out / "samples").mkdir()
    (out / "report.html").write_text("<html></html>")
    (out / "samples" / "a_red_star-s100-sheet.png").write_bytes(b"")
    (out / "eval" / "eval.html").write_text("<html></html>")
    (out / "eval" / "eval.json").write_text(json.dumps({"settings": {}, "targets": targets, "runs": []}))


TARGETS = [
    {"name": "LVCorr >= 0.9 (unbounded)", "value": 0.9433, "status": "pass", "detail": "background"},
    {"name": "blur within x2 of the reference at every K (grounded)", "value": 2.101, "status": "fail",
     "detail": "largest mean sharpness ratio, at K = 30 (value is the factor)"},
    {"name": "grounded more consistent than unbounded", "value": None, "status": "n/a", "detail": "grounded mode not run"},
]


def test_durations_read_as_minutes_and_seconds(stage):
    assert stage.format_duration(0.4) == "0 s"
    assert stage.format_duration(59.6) == "1 min 00 s"
    assert stage.format_duration(800) == "13 min 20 s"
    assert stage.format_duration(3 * 3600 + 5 * 60 + 10) == "3 h 05 min"


def test_a_stage_prints_its_banner_and_time_and_records_them(stage, tmp_path):
    log = tmp_path / "out" / "stages.jsonl"
    command = [sys.executable, "-c", "print('the stage speaks')"]
    done = subprocess.run([sys.executable, str(SCRIPT), "run", "--log", str(log), "--stage", "6/8", "--title", "Train",
                           "--what", "about 85 % of the demo's time", "--", *command], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    banner = lines.index("[6/8] Train")
    assert lines[banner + 1].strip() == "about 85 % of the demo's time"
    assert lines[banner + 2].strip().startswith("$ ") and "print(" in lines[banner + 2]
    assert lines.index("the stage speaks") > banner  # the command's own output follows the banner
    assert lines[-1].startswith("--> Train: done in ") and lines[-1].endswith(" s")
    record = json.loads(log.read_text())
    assert record["stage"] == "6/8" and record["title"] == "Train" and record["status"] == 0 and record["seconds"] >= 0


def test_a_failing_stage_passes_its_status_on(stage, tmp_path, capsys):
    log = tmp_path / "stages.jsonl"
    assert stage.run_stage("Breaks", "exits 3", [sys.executable, "-c", "raise SystemExit(3)"], log, "1/1") == 3
    assert "--> Breaks: FAILED (exit status 3)" in capsys.readouterr().out
    assert json.loads(log.read_text())["status"] == 3
    assert stage.run_stage("Missing", "no such program", [str(tmp_path / "nothing-here")], log) == 127
    assert [json.loads(line)["title"] for line in log.read_text().splitlines()] == ["Breaks", "Missing"]


def test_the_summary_lists_what_to_open_stage_times_and_targets(stage, tmp_path):
    out = tmp_path / "demo_out"
    _fake_demo(out, TARGETS)
    (out / "stages.jsonl").write_text(
        json.dumps({"stage": "1/2", "title": "Build", "seconds": 60.0, "status": 0}) + "\n"
        + json.dumps({"stage": "2/2", "title": "Train", "seconds": 540.0, "status": 0}) + "\n"
        + '{"stage": "3/2", "tit')  # a line cut short is left out
    lines = stage.summary_lines(out)
    text = "\n".join(lines)
    # 60 s of 600 is 10 %, 540 s is 90 %; 600 s in all
    assert any(line.split() == ["1", "min", "00", "s", "10", "%", "Build"] for line in lines), text
    assert any(line.split() == ["9", "min", "00", "s", "90", "%", "Train"] for line in lines), text
    assert any(line.split() == ["10", "min", "00", "s", "in", "all"] for line in lines), text
    for path in (out / "report.html", out / "samples" / "a_red_star-s100-sheet.png", out / "eval" / "eval.html"):
        assert any(line.strip().startswith(str(path)) and "missing" not in line for line in lines), text
    assert "Targets: 1 of 3 pass" in lines
    assert "  pass  LVCorr >= 0.9 (unbounded): 0.943" in lines
    assert ("  FAIL  blur within x2 of the reference at every K (grounded): 2.1; largest mean sharpness ratio, at K = 30 "
            "(value is the factor)") in lines
    assert "  n/a   grounded more consistent than unbounded: -; grounded mode not run" in lines


def test_the_summary_command_says_what_is_missing(stage, tmp_path):
    out = tmp_path / "demo_out"
    out.mkdir()
    done = subprocess.run([sys.executable, str(SCRIPT), "summary", str(out)], capture_output=True, text=True)
    assert done.returncode == 1
    last = done.stdout.splitlines()[-1]
    assert last.startswith(f"No targets: cannot read {out / 'eval' / 'eval.json'}")
    assert f"{out / 'report.html'}" in done.stdout and "(missing)" in done.stdout
    _fake_demo(out / "full", TARGETS[:1])
    done = subprocess.run([sys.executable, str(SCRIPT), "summary", str(out / "full")], capture_output=True, text=True)
    assert done.returncode == 0 and "Targets: 1 of 1 pass" in done.stdout and "Time per stage" not in done.stdout
