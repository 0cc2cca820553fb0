"""Where a `bokeh train` run keeps its checkpoints: ``OUTPUT/checkpoints/step-NNNNNNN/`` (written by the
trainer, read by the sampling pipelines' loader)."""
from __future__ import annotations

import re
from pathlib import Path

PATTERN = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]
