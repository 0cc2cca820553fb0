"""The ``eval.html`` page of an evaluation: the sweeps of each prompt side by side (unbounded, grounded, the
prompt-only baseline, the physical render), the metrics against K as charts, then the tables. Every metric has
one name (:func:`metrics`), explained where it appears; every text from the data is HTML-escaped."""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from dataset_tools.report import K_LINE, PAGE_CSS
from dataset_tools.svg_charts import Guide, Series, line_chart
from pipelines.evaluate import CALIBRATION_FACTOR, LVCORR_TARGET, SUBJECT_SSIM_TARGET

MODE_WORDS = {
    "unbounded": ("unbounded", "the model, each K sampled on its own"),
    "grounded": ("grounded", "the model, every K grounded on the pivot's image"),
    "baseline": ("prompt only", "the prompt without K: the floor"),
    "reference": ("photo renders", "real photos blurred by the renderer: the ceiling"),
}
MODE_COLOURS = {"unbounded": "#1f77b4", "grounded": "#d62728", "baseline": "#7f7f7f", "reference": "#2ca02c"}
_EXTRA_CSS = """
.pass{color:#1a7f37;font-weight:bold}.fail{color:#c62828;font-weight:bold}.na{color:#777}
.sweeps{display:grid;gap:4px;align-items:center;margin:0.5em 0 1em}
.sweeps img{display:block;width:100%;height:auto;border:1px solid #ddd}
.sweeps .head{font-size:14px;text-align:center;font-weight:600;overflow-wrap:anywhere}.sweeps .row{font-size:14px;padding-right:6px}
.sweeps .row small{display:block;color:#555}.sweeps .seed{grid-column:1/-1;font-weight:600;margin-top:0.4em}
.charts{display:flex;flex-wrap:wrap;gap:12px 24px}.charts figure{margin:0;max-width:100%}
.charts figcaption{font-size:14px;color:#444;max-width:460px}
section.prompt{border-top:1px solid #ddd;padding-top:0.5em;margin-top:1.5em}
"""


@dataclass
class Metric:
    """One number of the tables: its single name, what it means, how to read it from a mode summary, its format."""

    name: str
    explanation: str
    value: Callable[[dict[str, Any]], Optional[float]]
    kind: str = "plain"  # plain | factor | db


def _exp(value: Optional[float]) -> Optional[float]:
    return None if value is None else math.exp(value)


def _last(values: Optional[Sequence[Optional[float]]]) -> Optional[float]:
    return values[-1] if values else None


def _worst(log_ratios: Optional[Sequence[Optional[float]]]) -> Optional[float]:
    return None if not log_ratios or None in log_ratios else math.exp(max(log_ratios))


def metrics(levels: Sequence[float]) -> list[Metric]:
    """The summary metrics of one mode, named for these levels (lowest ``lo``, highest ``hi``)."""
    lo, hi = f"{levels[0]:g}", f"{levels[-1]:g}"
    same = f"compared with the same sweep's K = {lo} image"
    return [
        Metric("LVCorr, background", "Pearson correlation between K and the background's blur (minus the log of the variance "
               f"of its Laplacian) along a sweep: 1 = the blur grows steadily with K. Target {LVCORR_TARGET:g} or more.",
               lambda s: s["lvcorr_background"]),
        Metric("LVCorr, whole image", "The same correlation on the whole picture, subject included.", lambda s: s["lvcorr_whole"]),
        Metric("blur factor, geometric mean over K", "How many times sharper or blurrier the background is than the reference's "
               "at the same K (1 = the same blur), averaged over the levels in log space.", lambda s: _exp(s["calibration_mean"]),
               "factor"),
        Metric("blur factor, worst K", f"The blur factor at the level where it is largest (means over sweeps per K). "
               f"Target: within \u00d7{CALIBRATION_FACTOR:g} at every K.", lambda s: _worst(s["calibration_log_ratio"]), "factor"),
        Metric(f"subject SSIM, mean over K > {lo}", f"Structural similarity (1 = identical) of the subject, {same}, averaged "
               "over the other levels: does the subject stay the same while the background blurs?", lambda s: s["ssim_subject_mean"]),
        Metric(f"subject SSIM at K = {hi}", f"The subject's SSIM between the K = {hi} and K = {lo} images. Target "
               f"{SUBJECT_SSIM_TARGET:g} or more (grounded).", lambda s: _last(s["ssim_subject"])),
        Metric(f"whole-image SSIM, mean over K > {lo}", f"SSIM of the whole picture, {same}; it falls as the background "
               "blurs, so it is low for a good model too.", lambda s: s["ssim_whole_mean"]),
        Metric(f"subject PSNR at K = {hi}", f"Peak signal-to-noise ratio of the subject, K = {hi} against K = {lo}, in dB "
               "(higher = closer; 'identical' when no pixel differs).", lambda s: _last(s["psnr_subject"]), "db"),
        Metric(f"whole-image PSNR at K = {hi}", "The same PSNR on the whole picture, in dB.", lambda s: _last(s["psnr_whole"]), "db"),
    ]


def fmt(value: Optional[float], kind: str = "plain") -> str:
    """A number for the page: '-' when missing, 'identical' for an infinite PSNR, a factor as x1.77, dB with one decimal."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "identical" if kind == "db" and value > 0 else ("\u221e" if value > 0 else "-\u221e")
    if kind == "factor":
        return f"\u00d7{value:.2f}"
    if kind == "db":
        return f"{value:.1f} dB"
    return f"{value:.3f}"


def overview_rows(summaries: dict[str, dict[str, Any]], levels: Sequence[float]) -> list[list[str]]:
    """One row per metric of :func:`metrics`, one column per mode (its summary), the metric's name first."""
    return [[m.name] + [fmt(m.value(s), m.kind) for s in summaries.values()] for m in metrics(levels)]


def _mode_name(mode: str) -> str:
    return MODE_WORDS.get(mode, (mode, ""))[0]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: range) -> str:
    """A table of escaped text; the columns in ``numeric`` right-aligned."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{html.escape(c)}</td>' for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _overview_html(summaries: dict[str, dict[str, Any]], levels: Sequence[float], explain: bool) -> str:
    """The summary metrics by mode; with ``explain``, a last column says what each metric means."""
    rows = overview_rows(summaries, levels)
    header = ["metric"] + [_mode_name(m) for m in summaries]
    numeric = range(1, len(header))
    if explain:
        rows = [row + [m.explanation] for row, m in zip(rows, metrics(levels))]
        header.append("what it means")
    return _table(header, rows, numeric)


def _targets_html(lines: Sequence[dict[str, Any]]) -> str:
    css = {"pass": "pass", "fail": "fail", "n/a": "na"}
    rows = "".join(
        f'<tr><td class="{css[t["status"]]}">{t["status"].upper()}</td><td>{html.escape(t["name"])}</td>'
        f'<td class="num">{fmt(t["value"])}</td><td>{html.escape(t["detail"])}</td></tr>'
        for t in lines
    )
    return f"<table><tr><th>status</th><th>target</th><th>value</th><th>how it is measured</th></tr>{rows}</table>"


def _targets_line(lines: Sequence[dict[str, Any]]) -> str:
    counts = {status: sum(t["status"] == status for t in lines) for status in ("pass", "fail", "n/a")}
    failed = "; ".join(f"{html.escape(t['name'])}: {fmt(t['value'])}" for t in lines if t["status"] == "fail")
    text = f"Targets: {counts['pass']} pass, {counts['fail']} fail" + (f", {counts['n/a']} not measured" if counts["n/a"] else "")
    return f'<p><a href="#targets">{text}</a>{" (" + failed + ")" if failed else ""}.</p>'


# ---------------------------------------------------------------- per-K values of the charts


def geometric_mean_per_k(runs: Sequence[dict[str, Any]], key: str) -> list[Optional[float]]:
    """Per level, the geometric mean of ``run[key][i]`` over ``runs`` (positive values only; None if there is none)."""
    lists = [r[key] for r in runs if r.get(key)]
    if not lists:
        return []
    out = []
    for column in zip(*lists):
        values = [v for v in column if v is not None and v > 0]
        out.append(math.exp(sum(math.log(v) for v in values) / len(values)) if values else None)
    return out


def _sharpness_key(runs: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The background sharpness when every run has a subject mask, else the whole image's."""
    if runs and all(r.get("sharpness_background") for r in runs):
        return "sharpness_background", "background"
    return "sharpness_whole", "whole-image"


def sharpness_chart(runs: Sequence[dict[str, Any]], levels: Sequence[float], title: str, width: int = 460) -> str:
    """Sharpness against K per mode (geometric means over sweeps), the model's references dashed (one line when shared)."""
    model_runs = [r for r in runs if r["mode"] != "reference"]
    key, where = _sharpness_key(model_runs)
    modes = list(dict.fromkeys(r["mode"] for r in model_runs))
    series = [Series(_mode_name(m), levels, geometric_mean_per_k([r for r in model_runs if r["mode"] == m], key), MODE_COLOURS.get(m, "#000"))
              for m in modes]
    models = [m for m in modes if m != "baseline"]  # the baseline ignores K: its own reference says nothing
    references = {m: geometric_mean_per_k([r for r in model_runs if r["mode"] == m], "reference_sharpness") for m in models}
    present = {m: ref for m, ref in references.items() if ref and any(v is not None for v in ref)}
    distinct = {json.dumps([None if v is None else round(v, 6) for v in ref]) for ref in present.values()}
    if len(distinct) == 1:
        series.append(Series("reference", levels, next(iter(present.values())), "#000", dashed=True))
    else:
        series += [Series(f"reference of {_mode_name(m)}", levels, ref, MODE_COLOURS.get(m, "#000"), dashed=True) for m, ref in present.items()]
    return line_chart(series, title=title, x_label="K", y_label=f"{where} sharpness", log_y=True, width=width)


def factor_chart(summaries: dict[str, dict[str, Any]], levels: Sequence[float], width: int = 460) -> str:
    """The blur factor against the reference per K, per mode of the model (and the baseline), with the target."""
    series = [Series(_mode_name(m), levels, [_exp(v) for v in (s["calibration_log_ratio"] or [])], MODE_COLOURS.get(m, "#000"))
              for m, s in summaries.items() if m != "reference"]
    return line_chart(series, title="Blur factor against K", x_label="K", y_label="blur factor (log scale)", log_y=True,
                      guides=[Guide(f"target: within \u00d7{CALIBRATION_FACTOR:g}", CALIBRATION_FACTOR)], width=width)


def ssim_chart(summaries: dict[str, dict[str, Any]], levels: Sequence[float], title: str, width: int = 460) -> str:
    """Subject SSIM against the lowest-K image per K, per mode (whole image when no mode has a mask), with the target."""
    key, where = ("ssim_subject", "subject") if any(s["ssim_subject"] for s in summaries.values()) else ("ssim_whole", "whole-image")
    series = [Series(_mode_name(m), levels, s[key] or [], MODE_COLOURS.get(m, "#000")) for m, s in summaries.items()]
    return line_chart(series, title=title, x_label="K", y_label=f"{where} SSIM vs K = {levels[0]:g}",
                      guides=[Guide(f"target at K = {levels[-1]:g}: {SUBJECT_SSIM_TARGET:g}", SUBJECT_SSIM_TARGET)], width=width)


def _figure(svg: str, caption: str) -> str:
    return f'<figure><div class="chart-box">{svg}</div><figcaption>{caption}</figcaption></figure>'


SHARPNESS_CAPTION = ("Sharpness of the background (variance of its Laplacian; log scale) against K, geometric means over "
                     "sweeps; dashed: the reference's at the same K. A good model follows the reference down.")
FACTOR_CAPTION = ("The blur factor: how many times sharper or blurrier the background is than the reference's at each K "
                  "(1 = the same blur; log scale).")
SSIM_CAPTION = "Subject SSIM against the sweep's lowest-K image: 1 = the subject did not change while the background blurred."


# ---------------------------------------------------------------- pictures


def scene_words(source: str) -> str:
    """Where the subject mask and depth of a sweep came from, in words."""
    if source.startswith("dataset:"):
        return f"the training row with this caption in the dataset '{source[len('dataset:'):]}'"
    if source == "none":
        return "none (no subject mask: whole-image metrics only)"
    depth, _, mask = source.partition(" + ")
    return f"depth from {depth}" + (f", subject mask from {mask}" if mask else ", no subject mask")


def _cell(path: Optional[str], thumbs: dict[str, str], alt: str, tip: str) -> str:
    """A picture linking to its PNG ``path``, shown as its thumbnail when ``thumbs`` (from eval.json) lists one."""
    if path is None:
        return "<div></div>"
    src = thumbs.get(path, path)
    return (f'<a href="{html.escape(path)}"><img src="{html.escape(src)}" alt="{html.escape(alt)}" '
            f'title="{html.escape(tip)}" loading="eager"></a>')


def _row_label(run: dict[str, Any], what: str) -> str:
    if what == "reference":
        words = f"physical render of the {_mode_name(run['mode'])} K = 0 image"
        return f'<div class="row">physical render<small>{html.escape(words)}: the reference</small></div>'
    lv, which = (run["lvcorr_background"], "background") if run["lvcorr_background"] is not None else (run["lvcorr_whole"], "whole image")
    worst = None if run["mode"] == "reference" else _exp(run["calibration_max"])  # a render against itself: always 1
    facts = f"LVCorr, {which} {fmt(lv)}" + (f" \u00b7 blur factor, worst K {fmt(worst, 'factor')}" if worst is not None else "")
    return f'<div class="row">{html.escape(_mode_name(run["mode"]))}<small>{facts}</small></div>'


def _sweep_row(run: dict[str, Any], levels: Sequence[float], what: str = "sweep") -> str:
    images = run["images"]
    thumbs = images.get("thumbs") or {}
    paths = images["reference"] if what == "reference" else images["sweep"]
    if what == "reference":
        sharpness, who, where = run["reference_sharpness"], "physical render", "background" if run["sharpness_background"] else "whole-image"
    else:
        key, where = ("sharpness_background", "background") if run["sharpness_background"] else ("sharpness_whole", "whole-image")
        sharpness, who = run[key], _mode_name(run["mode"])
    cells = [_row_label(run, what)]
    for i, (k, path) in enumerate(zip(levels, paths)):
        tip = f"{who}, K = {k:g}: {where} sharpness {fmt(sharpness[i]) if sharpness else '-'}"
        cells.append(_cell(path, thumbs, f"{run['id']} {what} K {k:g}", tip))
    cells.append(_cell(images.get("mask") if what == "sweep" else None, thumbs, f"{run['id']} subject mask", "subject mask (white)"))
    return "".join(cells)


def _grid(blocks: Sequence[tuple[str, list[str]]], levels: Sequence[float]) -> str:
    """Rows of pictures under one header of K columns (and the subject mask), blocks separated by a title line."""
    head = '<div></div>' + "".join(f'<div class="head">K = {k:g}</div>' for k in levels) + '<div class="head">subject mask</div>'
    body = "".join(f'<div class="seed">{html.escape(title)}</div>' + "".join(rows) for title, rows in blocks)
    columns = f"minmax(7em,12em) repeat({len(levels) + 1},minmax(32px,128px))"
    return f'<div class="sweeps" style="grid-template-columns:{columns}">{head}{body}</div>'


def _seed_rows(runs: Sequence[dict[str, Any]], levels: Sequence[float]) -> list[str]:
    """The sweeps of one prompt and seed, in mode order, then the physical render of the first one's K = 0 image."""
    order = {m: i for i, m in enumerate(MODE_WORDS)}
    runs = sorted(runs, key=lambda r: order.get(r["mode"], len(order)))
    rows = [_sweep_row(r, levels) for r in runs]
    first = next((r for r in runs if r["images"].get("reference")), None)
    if first is not None:
        rows.append(_sweep_row(first, levels, "reference"))
    return rows


def prompt_section(prompt: str, runs: Sequence[dict[str, Any]], summaries: dict[str, dict[str, Any]],
                   levels: Sequence[float], index: int) -> str:
    """One prompt: the first seed's sweeps side by side, the other seeds folded, then its charts."""
    seeds = list(dict.fromkeys(r["seed"] for r in runs))
    first = _grid([(f"seed {seeds[0]}", _seed_rows([r for r in runs if r["seed"] == seeds[0]], levels))], levels)
    more = ""
    if len(seeds) > 1:
        blocks = [(f"seed {s}", _seed_rows([r for r in runs if r["seed"] == s], levels)) for s in seeds[1:]]
        more = f"<details><summary>seeds {', '.join(str(s) for s in seeds[1:])}</summary>{_grid(blocks, levels)}</details>"
    sources = "; ".join(html.escape(scene_words(s)) for s in dict.fromkeys(r["scene_source"] for r in runs))
    charts = (_figure(sharpness_chart(runs, levels, "Sharpness against K"), "Background sharpness, means over this prompt's seeds; dashed: the reference.")
              + _figure(ssim_chart(summaries, levels, "Subject SSIM against K"), "Subject SSIM against the K = "
                        f"{levels[0]:g} image, means over this prompt's seeds."))
    return (f'<section class="prompt" id="prompt-{index}"><h3>{html.escape(prompt)}</h3>'
            f'<p class="caption">Subject mask and depth: {sources}.</p>{first}{more}<div class="charts">{charts}</div></section>')


def photos_section(runs: Sequence[dict[str, Any]], levels: Sequence[float]) -> str:
    """The reference photos rendered at every level by the physical renderer."""
    if not runs:
        return ""
    blocks = [(f"{r['prompt']} ({scene_words(r['scene_source'])})", [_sweep_row(r, levels)]) for r in runs]
    return ("<h3>Reference photos, physically rendered</h3><p>Real photos blurred by the renderer at each K: what the "
            f"model should look like.</p>{_grid(blocks, levels)}")


# ---------------------------------------------------------------- the page


def _per_k_table(levels: Sequence[float], runs: Sequence[dict[str, Any]], s: dict[str, Any]) -> str:
    key, where = _sharpness_key(runs)
    columns = {
        f"{where} sharpness": (geometric_mean_per_k(runs, key), "plain1"),
        "reference sharpness": (geometric_mean_per_k(runs, "reference_sharpness"), "plain1"),
        "blur factor": ([_exp(v) for v in s["calibration_log_ratio"] or []], "factor"),
        f"subject SSIM vs K = {levels[0]:g}": (s["ssim_subject"], "plain"),
        f"whole-image SSIM vs K = {levels[0]:g}": (s["ssim_whole"], "plain"),
        f"subject PSNR vs K = {levels[0]:g}": (s["psnr_subject"], "db"),
        f"whole-image PSNR vs K = {levels[0]:g}": (s["psnr_whole"], "db"),
    }

    def cell(values: Optional[Sequence[Optional[float]]], i: int, kind: str) -> str:
        value = values[i] if values else None
        if kind == "plain1":
            return "-" if value is None else f"{value:.1f}"
        return fmt(value, kind)

    rows = [[f"{k:g}"] + [cell(v, i, kind) for v, kind in columns.values()] for i, k in enumerate(levels)]
    return _table(["K"] + list(columns), rows, range(len(columns) + 1))


def render_page(scores: dict[str, Any], title: str) -> str:
    """The whole page for ``scores`` (as in eval.json: pictures and their thumbnails listed per run, relative to
    the evaluation folder, where the page lies)."""
    settings, levels = scores["settings"], scores["settings"]["levels"]
    runs = scores["runs"]
    prompts = list(scores["per_prompt"])
    sections = "".join(
        prompt_section(p, [r for r in runs if r["prompt"] == p and r["mode"] != "reference"], scores["per_prompt"][p], levels, i)
        for i, p in enumerate(prompts)
    )
    photos = photos_section([r for r in runs if r["mode"] == "reference"], levels)
    overall = scores["overall"]
    charts = (_figure(sharpness_chart(runs, levels, "Sharpness against K, all prompts"), SHARPNESS_CAPTION)
              + _figure(factor_chart(overall, levels), FACTOR_CAPTION)
              + _figure(ssim_chart(overall, levels, "Subject SSIM against K, all prompts"), SSIM_CAPTION))
    per_k = "".join(f"<h3>{html.escape(_mode_name(m))}</h3>{_per_k_table(levels, [r for r in runs if r['mode'] == m], s)}"
                    for m, s in overall.items())
    per_prompt = "".join(f"<h3>{html.escape(p)}</h3>{_overview_html(scores['per_prompt'][p], levels, False)}" for p in prompts)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in scores["notes"]) or "<li>none</li>"
    modes = "".join(f"<li><b>{html.escape(_mode_name(m))}</b>: {html.escape(MODE_WORDS.get(m, (m, ''))[1])}</li>" for m in settings["modes"])
    reference = {"render": "the physical render of the sweep's own K = 0 image at each K",
                 "dataset": "the training dataset's images near each K (median)",
                 "none": "none"}.get(settings["reference"], settings["reference"])
    nav = " \u00b7 ".join(f'<a href="#{a}">{t}</a>' for a, t in (("pictures", "pictures"), ("charts", "metrics against K"),
                                                                   ("targets", "targets"), ("tables", "tables"), ("settings", "settings")))
    return f"""<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Bokeh evaluation</title><style>{PAGE_CSS}{_EXTRA_CSS}</style></head><body>
<h1>Bokeh evaluation</h1><p class="caption">{html.escape(title)}</p>
<p>{K_LINE} Each prompt was sampled as a sweep over K = {', '.join(f'{k:g}' for k in levels)} with seeds
{', '.join(str(s) for s in settings['seeds'])}, in these modes:</p><ul>{modes}</ul>
<p>Blur reference: {html.escape(reference)}. Scene consistency: {html.escape(settings['consistency_metric'])}.</p>
{_targets_line(scores['targets'])}<p>{nav}</p>
<h2 id="pictures">Pictures</h2><p>Rows: the sweeps of one seed; columns: K. Click a picture for the full size; hover for its
sharpness. Other seeds are folded under each grid.</p>{sections}{photos}
<h2 id="charts">Metrics against K (all prompts)</h2><div class="charts">{charts}</div>
<h2 id="targets">Targets</h2>{_targets_html(scores["targets"])}
<h2 id="tables">Tables</h2><h3>Overall (means over prompts and seeds)</h3>{_overview_html(overall, levels, True)}
<h3>Per K</h3><p>Sharpness: geometric means over sweeps. Blur factor, SSIM and PSNR as in the overall table, at each K.</p>{per_k}
<h3>Per prompt</h3><details><summary>{len(prompts)} prompts</summary>{per_prompt}</details>
<h2>Notes</h2><ul>{notes}</ul>
<h2 id="settings">Settings</h2><pre>{html.escape(json.dumps(settings, indent=1))}</pre>
</body></html>"""
