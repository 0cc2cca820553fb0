"""Writes an evaluation to a folder: ``eval.json`` (every number), ``images/`` (every picture as PNG, JPEG
thumbnails of large ones under ``images/thumbs/``) and ``eval.html`` (:mod:`pipelines.eval_page`, pictures as
relative files).

``python -m pipelines.eval_report OUT`` writes ``OUT/eval.html`` again from ``OUT/eval.json`` and ``OUT/images``."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from pipelines.eval_page import fmt, overview_rows, render_page
from pipelines.evaluate import Evaluation, RunImages

#: Pictures larger than this (long side, px) get a JPEG thumbnail of this size for the page.
THUMB_PX = 256
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
#: Fields of eval.json that hold text, never a number written as text.
_TEXT_KEYS = frozenset({"prompt", "id", "mode", "scene_source", "name", "detail", "status", "images", "settings", "notes"})


def json_ready(value: Any) -> Any:
    """``value`` with non-finite floats as the strings 'inf' / '-inf' / 'nan' (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def from_json(value: Any) -> Any:
    """The inverse of :func:`json_ready` on eval.json: 'inf' / '-inf' / 'nan' back to floats, except in text fields."""
    if isinstance(value, dict):
        return {k: v if k in _TEXT_KEYS else from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return _NON_FINITE.get(value, value) if isinstance(value, str) else value


def summary_lines(scores: dict[str, Any]) -> list[str]:
    """The overall metrics (one line each, a column per mode) and the target lines as plain text, for the terminal."""
    levels = scores["settings"]["levels"]
    rows = [["metric"] + list(scores["overall"])] + overview_rows(scores["overall"], levels)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.append(f"scene consistency: {scores['settings']['consistency_metric']}")
    for t in scores["targets"]:
        lines.append(f"[{t['status'].upper():4}] {t['name']}: {fmt(t['value'])} ({t['detail']})")
    return lines


def _save(image: Image.Image, folder: Path, name: str, thumbs: dict[str, str]) -> str:
    """``image`` as ``folder/name.png``; its path relative to the evaluation folder. A large one also gets a JPEG
    thumbnail ``folder/thumbs/name.jpg``, recorded in ``thumbs`` (picture path -> thumbnail path); a small one's
    thumbnail from an earlier run in the same folder is removed."""
    image.save(folder / f"{name}.png")
    path, thumb_file = f"{folder.name}/{name}.png", folder / "thumbs" / f"{name}.jpg"
    if max(image.size) > THUMB_PX:
        thumb = image.convert("RGB")
        thumb.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
        thumb_file.parent.mkdir(exist_ok=True)
        thumb.save(thumb_file, quality=85)
        thumbs[path] = f"{folder.name}/thumbs/{thumb_file.name}"
    else:
        thumb_file.unlink(missing_ok=True)
    return path


def save_run_images(folder: Path, run_id: str, levels: Sequence[float], run: RunImages) -> dict[str, Any]:
    """PNG files of a sweep, its subject mask and its physical render (when there is one) under ``folder``:
    ``{"sweep": [path per K], "mask": path or None, "reference": [path per K] or None, "thumbs": {path: thumbnail
    path} for the pictures that have one}``."""
    thumbs: dict[str, str] = {}
    mask: Optional[str] = None
    if run.mask is not None:
        mask = _save(Image.fromarray(np.asarray(run.mask, dtype=np.uint8) * 255).convert("RGB"), folder, f"{run_id}_mask", thumbs)
    return {
        "sweep": [_save(image, folder, f"{run_id}_K{k:g}", thumbs) for k, image in zip(levels, run.images)],
        "mask": mask,
        "reference": None if run.reference is None else [_save(im, folder, f"{run_id}_render_K{k:g}", thumbs)
                                                         for k, im in zip(levels, run.reference)],
        "thumbs": thumbs,
    }


def write_page(scores: dict[str, Any], out: Path) -> Path:
    """``out/eval.html`` for ``scores`` (numbers as floats, images listed per run); returns its path."""
    path = out / "eval.html"
    path.write_text(render_page(scores, str(out)), encoding="utf-8")
    return path


def write_evaluation(evaluation: Evaluation, out: str | Path) -> dict[str, Path]:
    """Write ``eval.json``, ``eval.html`` and ``images/`` under ``out``; returns the two file paths."""
    out = Path(out)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    scores = evaluation.scores
    for run in scores["runs"]:
        run["images"] = save_run_images(image_dir, run["id"], scores["settings"]["levels"], evaluation.images[run["id"]])
    paths = {"json": out / "eval.json", "html": write_page(scores, out)}
    paths["json"].write_text(json.dumps(json_ready(scores), indent=1, allow_nan=False), encoding="utf-8")
    return paths


def rewrite_page(out: str | Path) -> Path:
    """Write ``out/eval.html`` again from ``out/eval.json`` (and the pictures it lists)."""
    out = Path(out)
    try:
        scores = from_json(json.loads((out / "eval.json").read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{out}: no readable eval.json ({exc})") from None
    if not all(isinstance(r.get("images"), dict) for r in scores.get("runs", [])):
        raise ValueError(f"{out}/eval.json lists its pictures in another layout: run bokeh eval again")
    return write_page(scores, out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m pipelines.eval_report OUT``: rewrite OUT/eval.html."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.eval_report", description=main.__doc__)
    parser.add_argument("out", help="an evaluation folder (bokeh eval -o)")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {rewrite_page(args.out)}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
