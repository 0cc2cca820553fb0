"""The HTML pages of `bokeh eval` and `bokeh report`: their charts' geometry worked by hand, their contents from tiny
inputs, and both pages loaded in headless Chromium (every picture decodes, the charts have a size, the legend is clear
of the bars, labels keep a readable size in a narrow window). The browser tests skip when no Chromium is installed."""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from dataset_tools.report import human_duration, write_report
from dataset_tools.svg_charts import LEFT, RIGHT, TOP, BOTTOM, Guide, Series, line_chart, log_ticks, nice_ticks
from pipelines.eval_page import fmt, scene_words
from pipelines import eval_report
from pipelines.eval_report import main as eval_report_main
from pipelines.eval_report import write_evaluation
from pipelines.eval_sources import Scene
from pipelines.evaluate import EvalSettings, Evaluator
from test_report import write_dataset

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PROMPTS = ["a <b>bold</b> ball", "a plain box"]
LEVELS = [0, 15, 30]
SIZE = (72, 48)
THUMB_PX = 48  # below SIZE: the page shows JPEG thumbnails


# ---------------------------------------------------------------- charts, worked by hand


def test_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0.83, 0.99) == [0.8, 0.85, 0.9, 0.95, 1.0]
    assert nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert log_ticks(27, 4300) == [10, 100, 1000, 10000]
    assert log_ticks(30, 90) == [20, 50, 100]


def test_a_line_chart_maps_values_to_pixels_and_keeps_its_legend_below_the_axes():
    svg = line_chart([Series("a <model>", [0, 30], [0.0, 1.0], "#123456")], title="t", x_label="K", y_label="v",
                     guides=[Guide("target", 0.8)], width=460, height=300)
    dots = [(float(x), float(y)) for x, y in re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', svg)]
    # ticks 0 .. 1: K = 0 at the left edge, 30 at the right; value 0 at the bottom, 1 at the top of the plot area
    assert dots == [(LEFT, 300 - BOTTOM), (460 - RIGHT, TOP)]
    guide_y = 300 - BOTTOM - 0.8 * (300 - BOTTOM - TOP)
    assert f'y1="{guide_y:.1f}"' in svg
    legend = svg[svg.index('<g class="legend">'):]
    assert min(float(y) for y in re.findall(r' y="([\d.]+)"', legend)) > 300  # under the axes, never over the data
    assert "a &lt;model&gt;" in legend and "<model>" not in svg
    assert 'height="326"' in svg  # one legend row of 20 px and 6 px of padding


def dots(svg: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', svg)]


def test_a_log_chart_of_one_value_spans_two_ticks():
    """Every value 100: the log axis runs from 100 to the next tick, 200, and the dots lie on its bottom."""
    assert log_ticks(100, 100) == [100, 200] and log_ticks(500, 500) == [500, 1000]
    svg = line_chart([Series("a", [0, 15, 30], [100.0, 100.0, 100.0], "#000")], title="t", x_label="K", y_label="s",
                     log_y=True, width=460, height=300)
    assert dots(svg) == [(LEFT, 300 - BOTTOM), ((LEFT + 460 - RIGHT) / 2, 300 - BOTTOM), (460 - RIGHT, 300 - BOTTOM)]


def test_a_chart_leaves_gaps_at_non_finite_values():
    """NaN and infinities are left out like None: the axis spans the finite values 0.5 .. 1 (ticks 0.5 .. 1.0), K = 0
    at the left bottom, K = 30 at the right top, and no line joins dots across a gap."""
    for log_y in (False, True):
        svg = line_chart([Series("a", [0, 10, 20, 30], [0.5, float("nan"), float("inf"), 1.0], "#000")], title="t",
                         x_label="K", y_label="v", guides=[Guide("g", float("nan"))], log_y=log_y, width=460, height=300)
        assert dots(svg) == [(LEFT, 300 - BOTTOM), (460 - RIGHT, TOP)]
        assert '<polyline class="data"' not in svg and "nan" not in svg.lower()


def test_a_chart_without_values_says_so():
    svg = line_chart([Series("a", [0, 30], [None, None], "#000")], title="Sharpness", x_label="K", y_label="s", log_y=True)
    assert "Sharpness: no values to plot" in svg and "<circle" not in svg


def test_numbers_in_words():
    assert fmt(float("inf"), "db") == "identical" and fmt(None) == "-" and fmt(1.7689, "factor") == "\u00d71.77"
    assert fmt(24.98, "db") == "25.0 dB" and fmt(0.85589) == "0.856"
    assert [human_duration(s) for s in (0.00014, 0.6343, 6.3431, 125)] == ["0.14 ms", "634 ms", "6.34 s", "2 min 5 s"]
    assert scene_words("dataset:demo") == "the training row with this caption in the dataset 'demo'"
    assert scene_words("sidecar-disparity + depth-grabcut") == "depth from sidecar-disparity, subject mask from depth-grabcut"


# ---------------------------------------------------------------- a tiny evaluation


def scene(size: tuple[int, int] = SIZE) -> Scene:
    """A scene of ``size`` (72x48 by default): the subject is a centre rectangle (at 72x48 rows 14..33, columns
    26..45) in front (disparity 1), the background a far plane (0)."""
    width, height = size
    mask = np.zeros((height, width), bool)
    mask[height * 7 // 24:height * 17 // 24, width * 13 // 36:width * 23 // 36] = True
    return Scene(mask, mask.astype(np.float32), "sidecar-disparity + depth-grabcut")


class BlurPainter:
    """A checkerboard of ``size`` blurred by a Gaussian of radius K / 10 (K < 0: sharp), the same for every prompt
    and seed."""

    def __init__(self, size: tuple[int, int] = SIZE) -> None:
        self.size = size

    def __call__(self, prompt, bokeh, seed=0, **kwargs):
        board = ((np.indices(self.size[::-1]).sum(axis=0) // 3) % 2 * 200 + 30).astype(np.uint8)
        image = Image.fromarray(np.stack([board, board // 2, 255 - board], axis=-1))
        return [image.filter(ImageFilter.GaussianBlur(max(k, 0) / 10)) for k in bokeh]


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    settings = EvalSettings(LEVELS, [0, 1], grounded=True, pivot=15, grounding_steps=2)
    result = Evaluator(BlurPainter(), settings, lambda prompt, image: scene(), "render", device="cpu").run(PROMPTS)
    out = tmp_path_factory.mktemp("eval") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(eval_report, "THUMB_PX", THUMB_PX)
        write_evaluation(result, out)
    return out


def test_eval_page_shows_pictures_first_then_charts_then_tables(eval_dir):
    page = (eval_dir / "eval.html").read_text()
    pictures, charts, tables = page.index('id="pictures"'), page.index('id="charts"'), page.index('id="tables"')
    assert pictures < charts < tables
    # per prompt and seed: unbounded, grounded, baseline (3 K + mask each) and the physical render (3 K)
    assert page.count("<img ") == len(PROMPTS) * 2 * (3 * (len(LEVELS) + 1) + len(LEVELS))
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert all(src.startswith("images/thumbs/") and src.endswith(".jpg") for src in sources if "_mask" not in src)
    assert all((eval_dir / html.unescape(src)).is_file() for src in sources)
    assert page.count('<svg class="chart"') == 3 + 2 * len(PROMPTS)  # three overall charts, two per prompt
    assert "a &lt;b&gt;bold&lt;/b&gt; ball" in page and "<b>bold</b>" not in page
    text = re.sub(r"<[^>]+>", " ", page[:page.index('id="settings"')])
    assert not re.search(r"\binf\b", text)  # the baseline's identical images have an infinite PSNR: said in words
    assert "identical" in text and "dataset:" not in text
    for name in ("subject SSIM, mean over K &gt; 0", "subject SSIM at K = 30", "blur factor, worst K"):
        assert page.count(f"<td>{name}</td>") == 1 + len(PROMPTS)  # overall and per prompt, one name each


def test_eval_page_can_be_written_again_from_its_json(eval_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(eval_dir, copy)
    (copy / "eval.html").unlink()
    assert eval_report_main([str(copy)]) == 0
    assert (copy / "eval.html").read_text() == (eval_dir / "eval.html").read_text().replace(str(eval_dir), str(copy))
    assert eval_report_main([str(tmp_path)]) == 2 and "no readable eval.json" in capsys.readouterr().err


def test_eval_json_lists_every_picture(eval_dir):
    data = json.loads((eval_dir / "eval.json").read_text())
    first = data["runs"][0]["images"]
    assert first["sweep"] == [f"images/p0-s0-unbounded_K{k}.png" for k in LEVELS]
    assert first["reference"] == [f"images/p0-s0-unbounded_render_K{k}.png" for k in LEVELS]
    assert first["mask"] == "images/p0-s0-unbounded_mask.png"
    assert first["thumbs"]["images/p0-s0-unbounded_K0.png"] == "images/thumbs/p0-s0-unbounded_K0.jpg"
    with Image.open(eval_dir / "images" / "thumbs" / "p0-s0-unbounded_K0.jpg") as thumb:
        assert thumb.size == (48, 32)  # 72x48 scaled to a 48 px long side


def test_a_second_evaluation_of_small_pictures_shows_no_thumbnail_of_the_first(tmp_path):
    """300x200 pictures get thumbnails (long side over 256 px), 72x48 ones do not: written into the same folder
    after the large ones, the page shows the new PNGs and no thumbnail is left behind."""
    out = tmp_path / "out"
    for size in ((300, 200), (72, 48)):
        settings = EvalSettings(LEVELS, [0], grounded=False)
        evaluator = Evaluator(BlurPainter(size), settings, lambda prompt, image: scene(size), "render", device="cpu")
        write_evaluation(evaluator.run(PROMPTS[:1]), out)
        sources = re.findall(r'<img src="([^"]+)"', (out / "eval.html").read_text())
        with Image.open(out / html.unescape(sources[0])) as shown:
            assert shown.size == ((256, 171) if size == (300, 200) else size)  # 300x200 scaled to a 256 px long side
    assert sources and all(src.endswith(".png") and "thumbs" not in src for src in sources)
    assert not list((out / "images" / "thumbs").glob("*.jpg"))
    assert all(not run["images"]["thumbs"] for run in json.loads((out / "eval.json").read_text())["runs"])


# ---------------------------------------------------------------- in a browser

CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const images = [...document.images].map(i => ({src: i.getAttribute('src').slice(0, 60), width: i.naturalWidth,
    height: i.naturalHeight, shown: box(i), done: i.complete}));
  const charts = [...document.querySelectorAll('svg.chart')].map(s => ({
    attr: Number(s.getAttribute('width')), box: box(s), lines: s.querySelectorAll('polyline.data').length,
    bars: [...s.querySelectorAll('rect.bar')].map(box),
    legend: [...s.querySelectorAll('.legend > *')].map(box),
    font: Math.min(...[...s.querySelectorAll('text')].map(t => t.getBoundingClientRect().height)),
    open: s.closest('details') === null || s.closest('details').open}));
  const captions = [...document.querySelectorAll('figcaption, .sweeps .head')].map(c => parseFloat(getComputedStyle(c).fontSize));
  const out = document.createElement('pre');
  out.id = 'browser-check';
  out.textContent = JSON.stringify({images, charts, captions});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    found = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if found is None:
        pytest.skip("no Chromium found (install Debian's chromium package; .ci/run does when it can)")
    return found


def in_browser(page: Path, tmp_path: Path, width: int) -> dict:
    """Load a copy of ``page`` (beside it, so relative pictures resolve) with the check script in a window ``width``
    px wide; the script's findings."""
    probe = page.with_name(f"{page.stem}.check.html")
    probe.write_text(page.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--allow-file-access-from-files",
               f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},1000", "--virtual-time-budget=10000",
               "--dump-dom", probe.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the check script did not run: {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def distorted(images: list[dict]) -> list[dict]:
    """The pictures shown with another aspect ratio than their own (squeezed or stretched by the page's layout)."""
    def aspect(width: float, height: float) -> float:
        return width / max(height, 1e-9)

    return [i for i in images if abs(aspect(i["shown"][2] - i["shown"][0], i["shown"][3] - i["shown"][1])
                                     / aspect(i["width"], i["height"]) - 1) > 0.05]


def test_eval_page_in_a_browser(eval_dir, tmp_path):
    found = in_browser(eval_dir / "eval.html", tmp_path, 1280)
    assert len(found["images"]) == len(PROMPTS) * 2 * (3 * (len(LEVELS) + 1) + len(LEVELS))
    assert [i for i in found["images"] if not (i["done"] and i["width"] > 0)] == []
    assert distorted(found["images"]) == []
    charts = found["charts"]
    assert len(charts) == 3 + 2 * len(PROMPTS)
    for chart in charts:
        width, height = chart["box"][2] - chart["box"][0], chart["box"][3] - chart["box"][1]
        assert width == chart["attr"] and height > 200 and chart["lines"] >= 2 and chart["font"] >= 10
    assert min(found["captions"]) >= 12


def test_report_page_in_a_narrow_browser_window(tmp_path):
    write_report(write_dataset(tmp_path / "out"), tmp_path / "report.html", max_groups=3)
    found = in_browser(tmp_path / "report.html", tmp_path, 480)
    assert len(found["images"]) == 3 + 2 + 2 and all(i["done"] and i["width"] > 0 for i in found["images"])
    assert distorted(found["images"]) == []
    (histogram,) = found["charts"]
    assert histogram["box"][2] - histogram["box"][0] == histogram["attr"] == 900  # scrolls, never shrinks its labels
    assert len(histogram["bars"]) == 6 and histogram["font"] >= 10
    assert not any(overlaps(bar, item) for bar in histogram["bars"] for item in histogram["legend"])
    assert min(found["captions"]) >= 12  # the K under each picture
