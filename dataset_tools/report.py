"""``bokeh report``: one self-contained HTML page about a built dataset (summary, stage times, K histogram, groups)."""
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
from dataset_tools.svg_charts import Stack, bar_chart
from estimators.image_io import ImageLoadError, load_image

#: Columns read from the data shards (never the depth / mask images).
_COLUMNS = ["id", "group_id", "kind", "image", "bokeh_level", "caption", "source", "bokeh_source"]
PAGE_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#f3f3f3}td.num{text-align:right}img{max-width:100%;border:1px solid #ddd}.caption{color:#555;margin:0.2em 0 1.5em}
.chart-box{overflow-x:auto;max-width:100%}.chart text.axis-label{font-weight:600}
.strip{display:flex;flex-wrap:wrap;gap:6px}.strip figure{margin:0;text-align:center;font-size:14px;width:min-content}
.strip img{display:block;height:160px;width:auto;max-width:none}
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


def histogram_svg(hist: dict[str, Any]) -> str:
    """Stacked bars of real and synthetic rows per K bin, as an inline SVG chart."""
    edges = hist["bin_edges"]
    names = [f"K {k} to {k + 1}" for k in edges[:-1]] + [f"K {edges[-1]} and above"]
    return bar_chart(
        edges, [Stack("real photos", hist["real"], "#3a7bd5"), Stack("synthetic renders", hist["synthetic"], "#f39c12")],
        title="Rows per bokeh level", x_label=f"K (bins 1 wide; the last bin counts K \u2265 {edges[-1]})",
        y_label="rows", x_ticks=[k for k in edges if k % 5 == 0], bar_names=names,
    )


#: What each build stage does, in the words of the report.
STAGE_WORDS = {
    "read": "read the file and hash its bytes",
    "decode": "decode the image and resize it",
    "exif": "read the camera and lens data (EXIF)",
    "estimate": "estimate the photo's own K",
    "depth": "depth map (sidecar file or depth model)",
    "mask": "subject mask",
    "render": "render the synthetic blur levels",
    "encode": "encode the rows' images",
}


def human_duration(seconds: float) -> str:
    """A duration with two or three significant digits in the unit that reads best: 0.14 ms, 630 ms, 6.3 s, 2 min 5 s."""
    if seconds < 1e-3:
        return f"{seconds * 1e3:.2g} ms"
    seconds = float(f"{seconds:.3g}")  # rounded before the unit is chosen: 0.9996 s reads "1 s", not "1e+03 ms"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _share(fraction: float) -> str:
    return "under 1 %" if 0 < fraction < 0.005 else f"{100 * fraction:.0f} %"


def _stages_table(stats: dict[str, Any]) -> str:
    """Time per photo in each stage (summed over workers, divided by the photos read) and its share of the total."""
    seconds, photos = stats.get("stage_seconds") or {}, stats.get("photos_read") or 0
    total = sum(seconds.values())
    if not seconds or not photos or total <= 0:
        return "<p>No stage timings in stats.json.</p>"
    order = [s for s in STAGE_WORDS if s in seconds] + sorted(set(seconds) - set(STAGE_WORDS))
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(STAGE_WORDS.get(name, ''))}</td>"
        f'<td class="num">{human_duration(seconds[name] / photos)}</td><td class="num">{_share(seconds[name] / total)}</td></tr>'
        for name in order
    )
    return (f"<p>Work time per photo in each stage: the time all workers spent in it, divided by the {photos} photos read "
            f"(workers run side by side, so these add up to more than the wall time per photo).</p>"
            f"<table><tr><th>stage</th><th>what it does</th><th>time per photo</th><th>share of the work</th></tr>{rows}</table>")


def _summary_table(stats: dict[str, Any]) -> str:
    def counted(total: int, counts: dict[str, int]) -> str:
        if not total:
            return "none"
        return f"{total} (" + ", ".join(f"{html.escape(k)}: {v}" for k, v in counts.items()) + ")"

    photos, wall = stats.get("photos_read"), stats.get("wall_seconds")
    per_photo = f", {human_duration(wall / photos)} per photo" if wall and photos else ""
    rows = [
        ("photos read", photos),
        ("kept", stats.get("kept")),
        ("filtered (left out on purpose)", counted(stats.get("filtered", 0), stats.get("filtered_by_reason", {}))),
        ("failed", counted(stats.get("failed", 0), stats.get("failed_by_reason", {}))),
        ("rows written", f"{stats.get('rows_written')} ({stats.get('rows_real')} photos, {stats.get('rows_synthetic')} synthetic renders)"),
        ("contrastive groups (a photo with its renders)", stats.get("groups")),
        ("wall time", f"{human_duration(wall)}{per_photo}" if wall is not None else "-"),
    ]
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


#: Height in px of the group thumbnails (embedded as JPEG).
THUMB_HEIGHT = 160
K_LINE = ("K, the bokeh level, is how strongly a picture's background is blurred: 0 = everything sharp, 30 = a very "
          "shallow depth of field (the blur radius in px, at a 512 px short side, of a point one unit of normalised "
          "disparity away from the focal plane: docs/design.md \u00a71).")


def thumbnail(image: Image.Image, height: int = THUMB_HEIGHT) -> Image.Image:
    """``image`` scaled to ``height`` px high (never enlarged), in RGB."""
    image = image.convert("RGB")
    if image.height <= height:
        return image
    return image.resize((max(1, round(image.width * height / image.height)), height), Image.Resampling.LANCZOS)


def _group_html(rows: list[dict[str, Any]]) -> str:
    """One contrastive group: its pictures side by side, each labelled with its K in HTML text; or why it is not shown."""
    caption = html.escape(rows[0].get("caption") or "(no caption)")
    source = html.escape(rows[0].get("source") or "")
    try:
        images = [thumbnail(_decode(r["image"])) for r in rows]
    except ImageLoadError as exc:
        return f'<p class="caption">{source}: group not shown ({html.escape(str(exc))})</p>'
    figures = "".join(
        f'<figure><img src="{data_uri(image)}" alt="{"photo" if r["kind"] == "real" else "render"} K {r["bokeh_level"]:.1f}">'
        f'<figcaption>{"photo, estimated K" if r["kind"] == "real" else "render, K"} = {r["bokeh_level"]:.1f}</figcaption></figure>'
        for image, r in zip(images, rows)
    )
    return f'<div class="strip">{figures}</div><p class="caption">{caption}<br><small>{source}</small></p>'


def write_report(out: str | Path, report: str | Path, *, max_groups: int = 6, max_errors: int = 50) -> dict[str, int]:
    """Write the HTML report of dataset ``out`` to ``report``; returns what it shows (for the summary line)."""
    out = Path(out)
    stats_path = out / "stats.json"
    files = _data_files(out)
    if not stats_path.is_file() or not files:
        raise ReportError(f"{out} is not a finished bokeh dataset (needs stats.json and data/*.parquet)")
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    groups = collect_groups(files, max_groups)
    sections = "".join(_group_html(rows) for rows in groups)
    settings = html.escape(json.dumps(stats.get("settings", {}), indent=1))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Bokeh dataset report: {html.escape(out.name)}</title><style>{PAGE_CSS}</style></head><body>
<h1>Bokeh dataset: {html.escape(str(out))}</h1>
<p>{K_LINE} Each kept photo gives one row at its own estimated K and, in a contrastive group, synthetic renders
of it at chosen levels.</p>
<h2>Summary</h2>{_summary_table(stats)}
<h2>Time per stage</h2>{_stages_table(stats)}
<h2>Bokeh level histogram</h2><p>Rows per K: the photos at their estimated K and the synthetic renders at theirs.</p>
<div class="chart-box">{histogram_svg(stats["k_histogram"])}</div>
<h2>Contrastive groups (first {len(groups)})</h2>{sections or '<p>No group with renders.</p>'}
<h2>Failed and filtered photos</h2>{_errors_table(out, max_errors)}
<h2>Settings</h2><pre>{settings}</pre>
</body></html>"""
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(page, encoding="utf-8")
    return {"groups": len(groups), "shards": len(files)}
