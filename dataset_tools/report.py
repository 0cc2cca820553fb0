"""``bokeh report``: one self-contained HTML page about a built dataset (summary, K histogram, groups)."""
from __future__ import annotations

import base64
import html
import io
import itertools
import json
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq
from PIL import Image

from dataset_tools.schema import LABELS, cell_bytes, label_names
from estimators.image_io import ImageLoadError, load_image
from synth_blur.contact_sheet import contact_sheet

#: Columns read from the data shards (never the depth / mask images).
_COLUMNS = ["id", "group_id", "kind", "image", "bokeh_level", "caption", "source", "bokeh_source"]
PAGE_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #ddd}.caption{color:#555;margin:0.2em 0 1.5em}
"""


class ReportError(ValueError):
    """OUT is not a built dataset (no stats.json or no data shards); one line."""


def _data_files(out: Path) -> list[Path]:
    return sorted((out / "data").glob("*.parquet"))


def _rows(files: list[Path]) -> Iterator[dict[str, Any]]:
    """Rows of the data shards in order, a row group at a time (memory stays flat); class labels by name."""
    for path in files:
        parquet = pq.ParquetFile(path)
        columns = [c for c in _COLUMNS if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=16, columns=columns):
            rows = batch.to_pylist()
            for column in LABELS:
                if column in columns:
                    for row, name in zip(rows, label_names(column, [r[column] for r in rows])):
                        row[column] = name
            yield from rows


def _decode(cell: Any) -> Image.Image:
    """An image cell decoded under the photo limits (pixels, aspect ratio), so a strip cannot blow up the sheet."""
    return load_image(cell_bytes(cell) or b"", apply_orientation=False)


def collect_groups(files: list[Path], max_groups: int) -> list[list[dict[str, Any]]]:
    """The first ``max_groups`` contrastive groups (a pivot with its renders), rows in K order.

    A photo's rows are written together, so a group is a run of rows with one ``group_id``.
    """
    groups: list[list[dict[str, Any]]] = []
    for _, run in itertools.groupby(_rows(files), key=lambda r: r["group_id"]):
        rows = list(run)
        if len(groups) == max_groups:
            break
        if any(r["kind"] == "synthetic" for r in rows):
            groups.append(sorted(rows, key=lambda r: r["bokeh_level"] or 0.0))
    return groups


def data_uri(image: Image.Image, fmt: str = "JPEG") -> str:
    """``image`` encoded as a data: URI, for self-contained HTML pages."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=88)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def histogram_svg(hist: dict[str, Any], width: int = 900, height: int = 260) -> str:
    """Stacked bars of real and synthetic rows per K bin, as inline SVG."""
    real, synthetic = hist["real"], hist["synthetic"]
    edges = hist["bin_edges"]
    top = max([r + s for r, s in zip(real, synthetic)] + [1])
    left, bottom, bar = 40, 30, (width - 50) / len(real)
    scale = (height - bottom - 10) / top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">']
    for i, (r, s) in enumerate(zip(real, synthetic)):
        x = left + i * bar
        y_real = height - bottom - r * scale
        parts.append(f'<rect x="{x:.1f}" y="{y_real:.1f}" width="{bar - 2:.1f}" height="{r * scale:.1f}" fill="#3a7bd5"><title>K {edges[i]}+: {r} real</title></rect>')
        parts.append(f'<rect x="{x:.1f}" y="{y_real - s * scale:.1f}" width="{bar - 2:.1f}" height="{s * scale:.1f}" fill="#f39c12"><title>K {edges[i]}+: {s} synthetic</title></rect>')
        if edges[i] % 5 == 0:
            parts.append(f'<text x="{x:.1f}" y="{height - bottom + 14}">{edges[i]}</text>')
    parts.append(f'<text x="{left}" y="{height - 2}">K (bins of 1; last bin K &gt;= {edges[-1]})</text>')
    parts.append(f'<text x="0" y="12">{top}</text><line x1="{left - 2}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" stroke="#555"/>')
    parts.append('<rect x="700" y="4" width="10" height="10" fill="#3a7bd5"/><text x="714" y="13">real</text>')
    parts.append('<rect x="760" y="4" width="10" height="10" fill="#f39c12"/><text x="774" y="13">synthetic</text></svg>')
    return "".join(parts)


def _summary_table(stats: dict[str, Any]) -> str:
    def reasons(counts: dict[str, int]) -> str:
        return ", ".join(f"{html.escape(k)}: {v}" for k, v in counts.items()) or "-"

    rows = [
        ("photos read", stats.get("photos_read")),
        ("kept", stats.get("kept")),
        ("filtered", f"{stats.get('filtered', 0)} ({reasons(stats.get('filtered_by_reason', {}))})"),
        ("failed", f"{stats.get('failed', 0)} ({reasons(stats.get('failed_by_reason', {}))})"),
        ("rows written", f"{stats.get('rows_written')} ({stats.get('rows_real')} real, {stats.get('rows_synthetic')} synthetic)"),
        ("contrastive groups", stats.get("groups")),
        ("wall time", f"{stats['wall_seconds']:.1f} s" if "wall_seconds" in stats else "-"),
    ]
    rates = stats.get("stage_photos_per_second", {})
    if rates:
        rows.append(("photos/s per stage", ", ".join(f"{html.escape(k)} {v:g}" for k, v in rates.items())))
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _errors_table(out: Path, limit: int) -> str:
    path = out / "errors.jsonl"
    if not path.is_file():
        return "<p>No errors.jsonl.</p>"
    lines = []
    with path.open(encoding="utf-8") as handle:
        for n, line in enumerate(handle):
            if n < limit:
                lines.append(json.loads(line))
    if not lines:
        return "<p>No photo failed or was filtered.</p>"
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(e.get(k, '')))}</td>" for k in ("source", "stage", "status", "reason")) + "</tr>"
        for e in lines
    )
    more = f"<p>{n + 1 - limit} more in errors.jsonl.</p>" if n + 1 > limit else ""
    return f"<table><tr><th>source</th><th>stage</th><th>status</th><th>reason</th></tr>{cells}</table>{more}"


def write_report(out: str | Path, report: str | Path, *, max_groups: int = 6, max_errors: int = 50) -> dict[str, int]:
    """Write the HTML report of dataset ``out`` to ``report``; returns what it shows (for the summary line)."""
    out = Path(out)
    stats_path = out / "stats.json"
    files = _data_files(out)
    if not stats_path.is_file() or not files:
        raise ReportError(f"{out} is not a finished bokeh dataset (needs stats.json and data/*.parquet)")
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    groups = collect_groups(files, max_groups)
    sections = []
    for rows in groups:
        caption = html.escape(rows[0].get("caption") or "(no caption)")
        source = html.escape(rows[0].get("source") or "")
        try:
            images = [_decode(r["image"]) for r in rows]
        except ImageLoadError as exc:
            sections.append(f'<p class="caption">{source}: group not shown ({html.escape(str(exc))})</p>')
            continue
        sheet = contact_sheet(
            images, [("pivot " if r["kind"] == "real" else "") + f"K = {r['bokeh_level']:.1f}" for r in rows], height=220
        )
        sections.append(f'<img src="{data_uri(sheet)}" alt="group"><p class="caption">{caption}<br><small>{source}</small></p>')
    settings = html.escape(json.dumps(stats.get("settings", {}), indent=1))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Bokeh dataset report: {html.escape(out.name)}</title>
<style>{PAGE_CSS}</style></head><body>
<h1>Bokeh dataset: {html.escape(str(out))}</h1>
<h2>Summary</h2>{_summary_table(stats)}
<h2>Bokeh level histogram</h2>{histogram_svg(stats["k_histogram"])}
<h2>Contrastive groups (first {len(groups)})</h2>{''.join(sections) or '<p>No group with renders.</p>'}
<h2>Failed and filtered photos</h2>{_errors_table(out, max_errors)}
<h2>Settings</h2><pre>{settings}</pre>
</body></html>"""
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(page, encoding="utf-8")
    return {"groups": len(groups), "shards": len(files)}
