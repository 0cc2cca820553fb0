"""The runnable blocks of README.md and docs/**/*.md: a fenced ```bash block whose opening fence has the line
``<!-- docs-check -->`` just above it is run here, one test per file.

Each file's marked blocks run in order, each with ``bash -euo pipefail``, in one fresh folder per file where the
repository's ``demo/`` and ``configs/`` are reachable as ``./demo`` and ``./configs``; a block sees the files the
blocks before it wrote (not their shell variables). ``bokeh`` on PATH runs this checkout's ``bokeh_cli`` with the
test's Python, and HF_HUB_OFFLINE=1. A failure shows the block (file and line), its exit status and its output's tail.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- docs-check -->"
#: Seconds one block may run (the convention asks for well under a minute on 2 cores).
BLOCK_TIMEOUT_S = 180
#: Output lines shown of a failed block.
TAIL_LINES = 40
#: Folders of the repository linked into each file's working folder.
LINKED = ("demo", "configs")


@dataclass
class Block:
    """One marked block: the line of its opening fence (1-based) and its text."""

    line: int
    text: str


@dataclass
class Failure:
    """The first block of a file that failed, its exit status (None: timed out) and its output's last lines."""

    block: Block
    status: Optional[int]
    tail: str


def marked_blocks(markdown: str, source: str = "<markdown>") -> list[Block]:
    """The ```bash blocks of ``markdown`` marked by :data:`MARKER` on the line above their fence; a marker above
    anything else, or a marked block never closed, is a ValueError naming ``source`` and the line."""
    lines = markdown.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = lines[i + 1] if i + 1 < len(lines) else ""
        indent = fence[: len(fence) - len(fence.lstrip())]
        if fence.strip() != "```bash":
            raise ValueError(f"{source}:{i + 1}: {MARKER} must be followed by a ```bash fence, found {fence.strip()!r}")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{source}:{i + 2}: the ```bash block marked by {MARKER} is never closed")
        body = [text[len(indent):] if text.startswith(indent) else text for text in lines[i + 2:end]]
        blocks.append(Block(i + 2, textwrap.dedent("\n".join(body)) + "\n"))
    return blocks


def prepare(folder: Path) -> dict[str, str]:
    """Make ``folder/work`` (with ``demo`` and ``configs`` linked) and ``folder/bin/bokeh``; the blocks' environment."""
    work, bin_dir = folder / "work", folder / "bin"
    work.mkdir(parents=True)
    bin_dir.mkdir()
    for name in LINKED:
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    shim = bin_dir / "bokeh"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bokeh_cli "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run_blocks(blocks: list[Block], folder: Path, timeout: float = BLOCK_TIMEOUT_S) -> Optional[Failure]:
    """Run ``blocks`` in order in a fresh ``folder/work``; the first that fails, or None when all pass."""
    env = prepare(folder)
    for block in blocks:
        try:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=folder / "work", env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            output = exc.output.decode(errors="replace") if exc.output else ""
            return Failure(block, None, "\n".join(output.splitlines()[-TAIL_LINES:]))
        if done.returncode != 0:
            output = done.stdout.decode(errors="replace")
            return Failure(block, done.returncode, "\n".join(output.splitlines()[-TAIL_LINES:]))
    return None


def failure_message(source: str, failure: Failure, timeout: float = BLOCK_TIMEOUT_S) -> str:
    """What a failed file reports: where the block is, the block, how it ended and its output's tail."""
    ended = f"timed out after {timeout:g} s" if failure.status is None else f"exit status {failure.status}"
    return (f"{source}:{failure.block.line}: the marked block failed ({ended})\n"
            f"--- block ---\n{failure.block.text}--- last {TAIL_LINES} lines of its output ---\n{failure.tail}")


def documented_files() -> list[Path]:
    """README.md and docs/**/*.md that hold the marker at all (each is parsed in its own test)."""
    candidates = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in candidates if p.is_file() and MARKER in p.read_text(encoding="utf-8")]


@pytest.mark.parametrize("page", documented_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_run(page, tmp_path):
    source = str(page.relative_to(ROOT))
    blocks = marked_blocks(page.read_text(encoding="utf-8"), source)
    failure = run_blocks(blocks, tmp_path)
    if failure is not None:
        pytest.fail(failure_message(source, failure), pytrace=False)


# --- the runner itself --------------------------------------------------------------------------------------------

SAMPLE = """\
# A page

<!-- docs-check -->
```bash
echo "first block" > made.txt
test -d demo/photos && test -d configs && test "$HF_HUB_OFFLINE" = 1
```

Not marked, never run:

```bash
exit 9
```

<!-- docs-check -->
```bash
grep -q "first block" made.txt
echo "about to fail"
false
echo "never printed"
```

<!-- docs-check -->
```bash
touch never-made.txt
```
"""


def test_parser_takes_only_marked_bash_blocks():
    blocks = marked_blocks(SAMPLE)
    assert [b.line for b in blocks] == [4, 16, 24]  # the opening fences' lines
    assert blocks[0].text == 'echo "first block" > made.txt\ntest -d demo/photos && test -d configs && test "$HF_HUB_OFFLINE" = 1\n'
    assert "exit 9" not in "".join(b.text for b in blocks)
    indented = "1. Run:\n\n   <!-- docs-check -->\n   ```bash\n   echo a\n     echo b\n   ```\n"
    assert [b.text for b in marked_blocks(indented)] == ["echo a\n  echo b\n"]


def test_parser_refuses_a_misplaced_marker_or_an_open_block():
    with pytest.raises(ValueError, match=r"page.md:1: .* must be followed by a ```bash fence, found '```python'"):
        marked_blocks("<!-- docs-check -->\n```python\nprint(1)\n```\n", "page.md")
    with pytest.raises(ValueError, match=r"page.md:3: .* never closed"):
        marked_blocks("text\n<!-- docs-check -->\n```bash\necho a\n", "page.md")


def test_runner_runs_blocks_in_order_and_stops_at_the_first_failure(tmp_path):
    failure = run_blocks(marked_blocks(SAMPLE), tmp_path)
    assert failure is not None and failure.block.line == 16 and failure.status == 1
    assert failure.tail.splitlines() == ["about to fail"]  # `false` under -e: the block ends there
    assert (tmp_path / "work" / "made.txt").read_text() == "first block\n"
    assert not (tmp_path / "work" / "never-made.txt").exists()
    message = failure_message("page.md", failure)
    assert message.startswith("page.md:16: the marked block failed (exit status 1)\n")
    assert 'grep -q "first block" made.txt\necho "about to fail"\nfalse\n' in message and message.endswith("about to fail")


def test_runner_uses_pipefail_unset_variables_and_a_timeout(tmp_path):
    blocks = marked_blocks(f"{MARKER}\n```bash\nfalse | true\n```\n")
    assert run_blocks(blocks, tmp_path / "pipe").status == 1
    blocks = marked_blocks(f"{MARKER}\n```bash\necho \"$NOT_SET_ANYWHERE_42\"\n```\n")
    failure = run_blocks(blocks, tmp_path / "unset")
    assert failure.status == 1 and "NOT_SET_ANYWHERE_42: unbound variable" in failure.tail
    blocks = marked_blocks(f"{MARKER}\n```bash\necho started\nsleep 30\n```\n")
    failure = run_blocks(blocks, tmp_path / "slow", timeout=1)
    assert failure.status is None and failure.tail == "started"
    assert "(timed out after 1 s)" in failure_message("page.md", failure, timeout=1)


def test_runner_puts_this_checkouts_bokeh_on_path(tmp_path):
    """The runner's own check: tests/data/docs_check_example.md runs real commands of this checkout."""
    page = Path(__file__).parent / "data" / "docs_check_example.md"
    blocks = marked_blocks(page.read_text(encoding="utf-8"), page.name)
    assert len(blocks) == 2
    failure = run_blocks(blocks, tmp_path)
    assert failure is None, failure_message(page.name, failure)
    scenes = sorted(p.name for p in (tmp_path / "work" / "scenes").iterdir())
    assert "scene_00000.png" in scenes and "scene_00000.txt" in scenes
