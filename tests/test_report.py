"""`bokeh report` on a hand-made dataset folder in the build's layout (no Ray needed)."""
import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataset_tools.build_stats import BuildStats
from dataset_tools.report import collect_groups, write_report
from bokeh_cli import main
from dataset_tools.schema import OUTPUT_SCHEMA, rows_table


def jpeg(color):
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), color).save(buf, format="JPEG")
    return {"bytes": buf.getvalue(), "path": None}


def row(group, kind, k, caption="", color=(100, 100, 100)):
    values = {name: None for name in OUTPUT_SCHEMA.names}
    values.update(id=f"{group}-{k}", group_id=group, kind=kind, image=jpeg(color), width=48, height=32,
                  caption=caption, bokeh_level=k, source=f"/photos/{group}.jpg")
    return values


def write_dataset(out):
    """A built dataset's layout under ``out``: two shards of four groups (g1: K 0, 7.5, 25; r1: a photo without
    renders; g2; g3), stats with two decode failures and the two errors.jsonl lines."""
    (out / "data").mkdir(parents=True)
    shard0 = [row("g1", "real", 0.0, "a <b>red</b> ball"), row("g1", "synthetic", 25.0), row("g1", "synthetic", 7.5),
              row("r1", "real", 12.0, "a real photo")]
    shard1 = [row("g2", "real", 0.5), row("g2", "synthetic", 3.0), row("g3", "real", 0.0), row("g3", "synthetic", 9.0)]
    for i, rows in enumerate((shard0, shard1)):
        pq.write_table(rows_table(rows), out / "data" / f"train-0000{i}-of-00002.parquet")
    stats = BuildStats(photos=6, kept=4, rows_real=4, rows_synthetic=4, groups=3)
    stats.failed["decode"] = 2
    stats.k_real[0], stats.k_real[12] = 3, 1
    for k in (25, 7, 3, 9):
        stats.k_synthetic[k] += 1
    (out / "stats.json").write_text(json.dumps(stats.to_dict()))
    (out / "errors.jsonl").write_text(
        json.dumps({"source": "/photos/bad<1>.jpg", "stage": "decode", "status": "failed", "reason": "empty file (0 bytes)"}) + "\n"
        + json.dumps({"source": "/photos/b2.jpg", "stage": "decode", "status": "failed", "reason": "not a recognised image format"}) + "\n"
    )
    return out


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "out")


def test_groups_are_pivot_and_renders_in_k_order_across_shards(dataset):
    groups = collect_groups(sorted((dataset / "data").glob("*.parquet")), max_groups=5)
    assert [[r["bokeh_level"] for r in g] for g in groups] == [[0.0, 7.5, 25.0], [0.5, 3.0], [0.0, 9.0]]
    assert len(collect_groups(sorted((dataset / "data").glob("*.parquet")), max_groups=2)) == 2


def test_report_page(dataset, tmp_path):
    shown = write_report(dataset, tmp_path / "r.html", max_groups=2, max_errors=1)
    page = (tmp_path / "r.html").read_text()
    assert shown == {"groups": 2, "shards": 2}
    assert "a &lt;b&gt;red&lt;/b&gt; ball" in page and "<b>red</b>" not in page  # captions are escaped
    assert page.count('<img src="data:image/jpeg;base64,') == 3 + 2  # the pictures of g1 and g2
    assert "<figcaption>photo, estimated K = 0.0</figcaption>" in page and "<figcaption>render, K = 25.0</figcaption>" in page
    # one bar per non-empty bin: real K 0 (3 rows) and 12 (1), synthetic 3, 7, 9 and 25 (1 each)
    assert page.count('<rect class="bar"') == 6 and "<title>K 25 to 26: 1 synthetic renders</title>" in page
    assert "<title>K 0 to 1: 3 real photos</title>" in page and ">rows</text>" in page  # the y axis is labelled
    assert "<td>6</td>" in page and "2 (decode: 2)" in page and "4 photos, 4 synthetic renders" in page
    assert "K, the bokeh level, is how strongly" in page
    assert "/photos/bad&lt;1&gt;.jpg" in page and "1 more in errors.jsonl" in page


def test_report_cli(dataset, capsys):
    assert main(["report", str(dataset)]) == 0
    assert (dataset / "report.html").is_file()
    assert "2 data shards, 3 groups shown" in capsys.readouterr().out


def test_report_on_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bokeh report: error:") and "not a finished bokeh dataset" in err and "\n" not in err


def test_a_group_with_an_image_over_the_limits_is_left_out_with_a_line(dataset, tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (4000, 1)).save(buf, format="PNG")  # 880,000 px wide at the sheet's 220 px height
    strip = row("s1", "real", 0.0, "a strip")
    strip["image"] = {"bytes": buf.getvalue(), "path": None}
    rows = [strip, row("s1", "synthetic", 5.0), row("g9", "real", 0.0), row("g9", "synthetic", 4.0)]
    pq.write_table(rows_table(rows), dataset / "data" / "train-00002-of-00003.parquet")
    write_report(dataset, tmp_path / "r.html", max_groups=5)
    page = (tmp_path / "r.html").read_text()
    assert "/photos/s1.jpg: group not shown (image is 4000x1, an aspect ratio of 4000:1" in page
    assert page.count('<img src="data:image/jpeg;base64,') == 3 + 2 + 2 + 2  # g1, g2, g3 and g9


def test_stage_times_are_per_photo_in_words(dataset, tmp_path):
    stats = json.loads((dataset / "stats.json").read_text())
    stats.update(stage_seconds={"read": 0.0006, "render": 12.0, "mystery": 0.3}, wall_seconds=130.0)
    (dataset / "stats.json").write_text(json.dumps(stats))
    write_report(dataset, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    # 6 photos read: 0.6 ms / 6 = 0.1 ms, 12 s / 6 = 2 s, 0.3 s / 6 = 50 ms; shares of 12.3006 s of work
    assert '<td>read</td><td>read the file and hash its bytes</td><td class="num">0.1 ms</td><td class="num">under 1 %</td>' in page
    assert '<td>render</td><td>render the synthetic blur levels</td><td class="num">2 s</td><td class="num">98 %</td>' in page
    assert '<td>mystery</td><td></td><td class="num">50 ms</td><td class="num">2 %</td>' in page
    assert "<td>2 min 10 s, 21.7 s per photo</td>" in page and "photos/s" not in page


def test_durations_round_before_they_choose_a_unit():
    from dataset_tools.report import human_duration

    assert [human_duration(s) for s in (0.9996, 0.99949, 59.96, 59.94, 3599.6)] == [
        "1 s", "999 ms", "1 min 0 s", "59.9 s", "1 h 0 min"]
