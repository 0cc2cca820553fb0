"""The built dataset's card and typed columns on a real small build (no Ray): Hub metadata (licence, task, size),
class labels and structs as `datasets` reads them, and the trainer's and the report's readers."""
import pytest
import yaml

from build_helpers import read_rows
from dataset_tools.card import size_category
from dataset_tools.schema import LABELS, OUTPUT_SCHEMA, STRUCTS, card_features, hf_features, label_names, rows_table
from estimators.bokeh_level import BASE_CONFIDENCE
from bokeh_cli import main


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from dataset_tools.demo_scenes import write_demo_data

    root = tmp_path_factory.mktemp("card_build")
    write_demo_data(root / "in", 2, width=96, height=64, progress=False)
    out = root / "out"
    assert main(["build", str(root / "in"), "-o", str(out), "--workers", "0", "--depth", "sidecar", "--levels", "8,24",
                 "--resolution", "64", "--min-sharpness", "0"]) == 0
    return out


def test_card_metadata_and_features(built):
    text = (built / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    rows = read_rows(built)
    assert header["license"] == "other" and header["task_categories"] == ["text-to-image"]
    assert len(rows) == 6 and header["size_categories"] == ["n<1K"]  # 2 photos, each with 2 renders
    features = {f["name"]: f for f in header["dataset_info"]["features"]}
    assert features["kind"]["dtype"] == {"class_label": {"names": {"0": "real", "1": "synthetic"}}}
    assert {f["name"] for f in features["provenance"]["struct"]} >= {"depth_source", "pivot_id", "notes"}
    assert "licence of its source photo" in text


def test_datasets_reads_labels_and_structs(built, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(built), split="train", cache_dir=str(tmp_path))
    assert isinstance(ds.features["kind"], datasets.ClassLabel) and isinstance(ds.features["bokeh_source"], datasets.ClassLabel)
    rows = read_rows(built)
    by_id = {r["id"]: r for r in rows}
    kinds = ds.features["kind"].int2str(ds["kind"])
    assert kinds == [by_id[i]["kind"] for i in ds["id"]] and sorted(kinds) == ["real"] * 2 + ["synthetic"] * 4
    for row in ds:
        if ds.features["kind"].int2str(row["kind"]) == "synthetic":
            pivot = row["id"].rsplit("-k", 1)[0]
            assert row["provenance"]["pivot_id"] == pivot and row["provenance"]["notes"] is None
            assert row["render_params"]["bokeh_level"] == pytest.approx(row["bokeh_level"])
            assert ds.features["bokeh_source"].int2str(row["bokeh_source"]) == "synthetic"
        else:
            assert row["render_params"] is None and row["provenance"]["depth_source"] == "sidecar-depth"
            assert isinstance(row["provenance"]["notes"], list)


def test_trainer_and_report_read_the_labels(built, tmp_path):
    from dataset_tools.report import collect_groups, write_report
    from trainer.data import load_rows

    rows = load_rows(str(built))
    assert sorted(rows.kinds) == ["real"] * 2 + ["synthetic"] * 4
    assert len(rows.groups) == 2 and all(rows.kinds[group[0]] == "real" for group in rows.groups)
    groups = collect_groups(sorted((built / "data").glob("*.parquet")), 6)  # a group: a run of rows with renders
    assert [[r["kind"] for r in group] for group in groups] == [["real", "synthetic", "synthetic"]] * 2
    assert [r["bokeh_source"] for r in groups[0]][1:] == ["synthetic"] * 2
    assert write_report(built, tmp_path / "report.html")["groups"] == 2


def test_schema_class_labels_and_structs_agree_with_datasets():
    datasets = pytest.importorskip("datasets")
    from_metadata = datasets.Features.from_dict(hf_features())
    assert datasets.Features._from_yaml_list(card_features()) == from_metadata
    assert from_metadata.arrow_schema.remove_metadata().equals(OUTPUT_SCHEMA.remove_metadata())
    assert set(BASE_CONFIDENCE) | {"synthetic"} == set(LABELS["bokeh_source"])  # every estimator provenance has a label
    assert [name for name, _ in STRUCTS["render_params"]] == list(from_metadata["render_params"])


def test_labels_encode_and_decode():
    row = {name: None for name in OUTPUT_SCHEMA.names}
    table = rows_table([{**row, "kind": "synthetic", "bokeh_source": "image-only"}, {**row, "kind": "real"}])
    assert table.column("kind").to_pylist() == [1, 0] and table.column("bokeh_source").to_pylist() == [2, None]
    assert label_names("kind", [1, 0, None, "real"]) == ["synthetic", "real", None, "real"]
    with pytest.raises(ValueError, match="kind 'fake' is not one of"):
        rows_table([{**row, "kind": "fake"}])
    assert [size_category(n) for n in (0, 999, 1000, 12_345, 10**6, 10**13)] == ["n<1K", "n<1K", "1K<n<10K", "10K<n<100K",
                                                                                 "1M<n<10M", "n>1T"]
