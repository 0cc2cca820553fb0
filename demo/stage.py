"""``make demo``'s stage runner and closing summary (standard library only).

    python demo/stage.py run --log OUT/stages.jsonl --stage 4/8 --title TITLE --what LINE -- COMMAND ...
    python demo/stage.py summary OUT

``run`` prints a banner (stage, title, what it does, the command), runs the command, prints its elapsed time and
appends the stage's time to the log; it exits with the command's status. ``summary`` prints the time of each stage,
what to open and the pass / fail targets of OUT/eval/eval.json (written by ``bokeh eval``).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

RULE = "=" * 78


def format_duration(seconds: float) -> str:
    """``seconds`` as "42 s", "13 min 20 s" or "1 h 05 min"."""
    total = int(round(seconds))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def run_stage(title: str, what: str, command: Sequence[str], log: Path, stage: str = "") -> int:
    """Run ``command`` as one stage of the demo under a banner; record its time in ``log``; return its status."""
    heading = f"[{stage}] {title}" if stage else title
    print(f"\n{RULE}\n{heading}\n    {what}\n    $ {shlex.join(command)}\n{RULE}", flush=True)
    started = time.monotonic()
    try:
        status = subprocess.call(list(command))
    except OSError as exc:
        print(f"demo: cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        status = 127
    seconds = time.monotonic() - started
    outcome = "done" if status == 0 else f"FAILED (exit status {status})"
    print(f"--> {title}: {outcome} in {format_duration(seconds)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(json.dumps({"stage": stage, "title": title, "seconds": round(seconds, 3), "status": status}) + "\n")
    return status


def _stage_times(log: Path) -> list[dict[str, Any]]:
    """The stages recorded in ``log`` (a missing log or a line cut short is left out)."""
    if not log.is_file():
        return []
    records = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("seconds"), (int, float)):
            records.append(record)
    return records


def _value(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.3g}"


def target_lines(targets: Sequence[dict[str, Any]]) -> list[str]:
    """The headline of ``bokeh eval``'s targets: how many pass, then one line per target (failed and unscored ones
    with their detail)."""
    passed = sum(t.get("status") == "pass" for t in targets)
    lines = [f"Targets: {passed} of {len(targets)} pass"]
    for t in targets:
        status = str(t.get("status", "n/a"))
        line = f"  {status.upper() if status == 'fail' else status:4s}  {t.get('name', '?')}: {_value(t.get('value'))}"
        if status != "pass" and t.get("detail"):
            line += f"; {t['detail']}"
        lines.append(line)
    return lines


def summary_lines(out: Path, log: Optional[Path] = None) -> list[str]:
    """The closing summary of a demo run in ``out``: stage times, what to open, the eval targets."""
    log = log or out / "stages.jsonl"
    lines = [RULE, "make demo: finished", RULE]
    stages = _stage_times(log)
    if stages:
        lines.append("Time per stage:")
        total = sum(s["seconds"] for s in stages)
        for s in stages:
            share = f"{100 * s['seconds'] / total:3.0f} %" if total > 0 else "  - %"
            lines.append(f"  {format_duration(s['seconds']):>12s}  {share}  {s.get('title', '?')}")
        lines.append(f"  {format_duration(total):>12s}         in all")
    lines.append("Open:")
    sheets = sorted((out / "samples").glob("*-sheet.png"))
    for path, what in ((out / "report.html", "the dataset: K per photo, renders, what was filtered"),
                       (sheets[0] if sheets else out / "samples", "a sampled K sweep (0 .. 30) of one training caption"),
                       (out / "eval" / "eval.html", "the evaluation: sweeps, blur against K, the targets")):
        lines.append(f"  {path}  {what}" + ("" if path.exists() else "  (missing)"))
    eval_json = out / "eval" / "eval.json"
    try:
        targets = json.loads(eval_json.read_text())["targets"]
        if not isinstance(targets, list):
            raise ValueError("targets is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        lines.append(f"No targets: cannot read {eval_json} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
        return lines
    lines += target_lines(targets)
    lines.append("The result depends on the training run: README.md, \"What `make demo` measures\", gives the range "
                 "over several training seeds.")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``run`` and ``summary`` commands."""
    parser = argparse.ArgumentParser(prog="demo/stage.py", description="make demo's stage runner and closing summary")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one stage under a banner and record its time")
    run.add_argument("--log", type=Path, required=True, help="JSON lines file the stage's time is appended to")
    run.add_argument("--stage", default="", help="the stage's position, e.g. 4/8")
    run.add_argument("--title", required=True)
    run.add_argument("--what", required=True, help="one line on what the stage does")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    summary = commands.add_parser("summary", help="stage times, what to open, the eval targets")
    summary.add_argument("out", type=Path, help="the demo's output folder")
    args = parser.parse_args(argv)
    if args.command == "summary":
        lines = summary_lines(args.out)
        print("\n".join(lines))
        return 1 if lines[-1].startswith("No targets") else 0
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        parser.error("run: give the command after --")
    return run_stage(args.title, args.what, command, args.log, args.stage)


if __name__ == "__main__":
    sys.exit(main())
