"""Writes an evaluation to a folder: ``eval.json`` (every number), ``eval.html`` (self-contained: tables,
pass / fail targets and one contact sheet per sweep, images inline) and ``images/*.png``."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from dataset_tools.report import PAGE_CSS, data_uri
from pipelines.evaluate import Evaluation, RunImages
from synth_blur.contact_sheet import contact_sheet

#: Height of the contact-sheet tiles in px (the tiny model's 32 px images are enlarged to it).
SHEET_HEIGHT = 160
_EXTRA_CSS = ".pass{color:#1a7f37;font-weight:bold}.fail{color:#c62828;font-weight:bold}.na{color:#777}td.num{text-align:right}"
_MODE_LABELS = {
    "unbounded": "model, unbounded",
    "grounded": "model, grounded",
    "baseline": "prompt only (K ignored): floor",
    "reference": "physical render of photos: ceiling",
}


def fmt(value: Optional[float], digits: int = 3) -> str:
    """A number for a table: '-' for missing, 'inf' for infinite, else ``digits`` decimals."""
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def json_ready(value: Any) -> Any:
    """``value`` with non-finite floats as the strings 'inf' / '-inf' / 'nan' (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _factor(log_ratio: Optional[float]) -> Optional[float]:
    return None if log_ratio is None else math.exp(log_ratio)


def _last(values: Optional[Sequence[Optional[float]]]) -> Optional[float]:
    return values[-1] if values else None


def overview_rows(summaries: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per mode: runs, LVCorr (background, whole), calibration (mean |log ratio|, worst factor),
    mean SSIM vs the lowest K (subject, whole) and PSNR at the highest K (subject, whole)."""
    rows = []
    for mode, s in summaries.items():
        worst = max(s["calibration_log_ratio"]) if s["calibration_log_ratio"] and None not in s["calibration_log_ratio"] else None
        rows.append([
            mode, str(s["runs"]), fmt(s["lvcorr_background"]), fmt(s["lvcorr_whole"]), fmt(s["calibration_mean"]),
            fmt(_factor(worst), 2), fmt(s["ssim_subject_mean"]), fmt(s["ssim_whole_mean"]),
            fmt(_last(s["psnr_subject"]), 1), fmt(_last(s["psnr_whole"]), 1),
        ])
    return rows


OVERVIEW_HEADER = [
    "mode", "runs", "LVCorr bg", "LVCorr whole", "calib |log r|", "worst factor", "SSIM subj", "SSIM whole",
    "PSNR subj @Kmax", "PSNR whole @Kmax",
]


def summary_lines(scores: dict[str, Any]) -> list[str]:
    """The overall table and the target lines as plain text, for the terminal."""
    rows = [OVERVIEW_HEADER] + overview_rows(scores["overall"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(OVERVIEW_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.append(f"scene consistency: {scores['settings']['consistency_metric']}")
    for t in scores["targets"]:
        lines.append(f"[{t['status'].upper():4}] {t['name']}: {fmt(t['value'])} ({t['detail']})")
    return lines


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _per_k_table(levels: Sequence[float], s: dict[str, Any]) -> str:
    def column(key: str, transform=lambda v: v, digits: int = 3) -> list[str]:
        values = s[key] or [None] * len(levels)
        return [fmt(None if v is None else transform(v), digits) for v in values]

    cols = {
        "calibration factor": column("calibration_log_ratio", math.exp, 2),
        "SSIM subject": column("ssim_subject"), "SSIM whole": column("ssim_whole"),
        "PSNR subject": column("psnr_subject", digits=1), "PSNR whole": column("psnr_whole", digits=1),
    }
    rows = [[fmt(k, 1)] + [c[i] for c in cols.values()] for i, k in enumerate(levels)]
    return _table(["K"] + list(cols), rows)


def _targets_html(lines: Sequence[dict[str, Any]]) -> str:
    css = {"pass": "pass", "fail": "fail", "n/a": "na"}
    rows = "".join(
        f'<tr><td class="{css[t["status"]]}">{t["status"].upper()}</td><td>{html.escape(t["name"])}</td>'
        f'<td class="num">{fmt(t["value"])}</td><td>{html.escape(t["detail"])}</td></tr>'
        for t in lines
    )
    return f"<table><tr><th>status</th><th>target</th><th>value</th><th>how</th></tr>{rows}</table>"


def _mask_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).convert("RGB")


def save_run_images(folder: Path, run_id: str, levels: Sequence[float], run: RunImages) -> tuple[list[str], Image.Image]:
    """PNG files of a sweep (and its mask) under ``folder``; their names, and the sweep's contact sheet."""
    names, tiles, labels = [], list(run.images), [f"K = {k:g}" for k in levels]
    for k, image in zip(levels, run.images):
        names.append(f"{run_id}_K{k:g}.png")
        image.save(folder / names[-1])
    if run.mask is not None:
        mask = _mask_image(run.mask)
        names.append(f"{run_id}_mask.png")
        mask.save(folder / names[-1])
        tiles.append(mask)
        labels.append("subject mask")
    sheet = contact_sheet(tiles, labels, height=SHEET_HEIGHT)
    names.append(f"{run_id}_sheet.png")
    sheet.save(folder / names[-1])
    return names, sheet


def write_evaluation(evaluation: Evaluation, out: str | Path) -> dict[str, Path]:
    """Write ``eval.json``, ``eval.html`` and ``images/`` under ``out``; returns the two file paths."""
    out = Path(out)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    scores = evaluation.scores
    levels = scores["settings"]["levels"]
    sections = []
    for run in scores["runs"]:
        names, sheet = save_run_images(image_dir, run["id"], levels, evaluation.images[run["id"]])
        run["images"] = [f"images/{n}" for n in names]
        seed = "" if run["seed"] is None else f", seed {run['seed']}"
        caption = (
            f"{html.escape(run['prompt'])}<br><small>{html.escape(run['mode'])}{seed}; LVCorr background "
            f"{fmt(run['lvcorr_background'])}, whole {fmt(run['lvcorr_whole'])}; calibration mean |log ratio| "
            f"{fmt(run['calibration_mean'])}; subject from {html.escape(run['scene_source'])}</small>"
        )
        sections.append(f'<img src="{data_uri(sheet, "PNG")}" alt="{html.escape(run["id"])}"><p class="caption">{caption}</p>')
    per_k = "".join(
        f"<h3>{html.escape(_MODE_LABELS.get(mode, mode))}</h3>{_per_k_table(levels, s)}" for mode, s in scores["overall"].items()
    )
    per_prompt = "".join(
        f"<h3>{html.escape(prompt)}</h3>{_table(OVERVIEW_HEADER, overview_rows(modes))}" for prompt, modes in scores["per_prompt"].items()
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in scores["notes"]) or "<li>none</li>"
    settings = html.escape(json.dumps(json_ready(scores["settings"]), indent=1))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Bokeh evaluation</title>
<style>{PAGE_CSS}{_EXTRA_CSS}</style></head><body>
<h1>Bokeh evaluation: {html.escape(str(out))}</h1>
<p>LVCorr: Pearson correlation between K and -log(variance of the Laplacian), of the background (off the
subject mask) and of the whole image; 1 = blur follows K. Calibration: |log| of the ratio of the background
sharpness to the reference ({html.escape(scores['settings']['reference'])}) at the same K; factor = exp of it.
Scene consistency against the lowest-K image: {html.escape(scores['settings']['consistency_metric'])}.</p>
<h2>Targets</h2>{_targets_html(scores["targets"])}
<h2>Overall (means over prompts and seeds)</h2>{_table(OVERVIEW_HEADER, overview_rows(scores["overall"]))}
<h2>Per K</h2>{per_k}
<h2>Per prompt</h2>{per_prompt}
<h2>Notes</h2><ul>{notes}</ul>
<h2>Sweeps</h2>{''.join(sections)}
<h2>Settings</h2><pre>{settings}</pre>
</body></html>"""
    paths = {"json": out / "eval.json", "html": out / "eval.html"}
    paths["json"].write_text(json.dumps(json_ready(scores), indent=1, allow_nan=False), encoding="utf-8")
    paths["html"].write_text(page, encoding="utf-8")
    return paths
