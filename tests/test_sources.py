"""The build reader: every kind of input becomes source items in a stable order, captions from sidecars."""
import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataset_tools.sources import InputError, iter_sources


def png_bytes(color=(10, 20, 30)):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a.jpg").write_bytes(png_bytes())
    (tmp_path / "a.txt").write_text("  a caption \n")
    (tmp_path / "a.disparity.png").write_bytes(png_bytes())
    (tmp_path / "a.mask.png").write_bytes(png_bytes())
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "b" / "C.PNG").write_bytes(png_bytes())
    (tmp_path / "b" / "deep" / "d.heic").write_bytes(b"whatever")
    return tmp_path


def test_folder_walk_is_recursive_sorted_and_skips_sidecars(tree):
    items = list(iter_sources([str(tree)]))
    assert [os.path.relpath(i.source, tree) for i in items] == ["a.jpg", "b/C.PNG", "b/deep/d.heic"]
    assert items[0].caption == "a caption" and items[1].caption == ""
    assert items[0].read_bytes() == png_bytes()


def test_glob_and_path_list(tree, tmp_path):
    globbed = [os.path.basename(i.source) for i in iter_sources([str(tree / "**" / "*.*")])]
    assert globbed == ["a.jpg", "C.PNG", "d.heic"]
    listing = tmp_path / "list.txt"
    listing.write_text("# photos\na.jpg\n\n" + str(tree / "b" / "C.PNG") + "\nmissing.jpg\n")
    items = list(iter_sources([str(listing)]))
    assert [os.path.basename(i.source) for i in items] == ["a.jpg", "C.PNG", "missing.jpg"]
    assert items[0].caption == "a caption"
    with pytest.raises(OSError):
        items[2].read_bytes()


def test_missing_input_and_empty_glob_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="input not found"):
        list(iter_sources([str(tmp_path / "nope")]))
    with pytest.raises(InputError, match="no file matches"):
        list(iter_sources([str(tmp_path / "*.jpg")]))


def test_parquet_with_hf_image_struct_bytes_and_paths(tmp_path):
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "image": pa.array([{"bytes": png_bytes(), "path": None}, {"bytes": None, "path": "/x/y.jpg"}, {"bytes": None, "path": None}], image_type),
        "caption": ["first", None, "third"],
        "f_number": [1.8, None, None],
    })
    pq.write_table(table, tmp_path / "part.parquet")
    items = list(iter_sources([str(tmp_path / "part.parquet")]))
    assert items[0].data == png_bytes() and items[0].caption == "first" and items[0].exif == {"f_number": 1.8}
    assert items[0].source.endswith("part.parquet#0")
    assert items[1].path == "/x/y.jpg" and items[1].source == "/x/y.jpg" and items[1].caption == ""
    assert items[2].error and "no image" in items[2].error
    # A folder of Parquet files reads the same rows.
    assert [i.source for i in iter_sources([str(tmp_path)])] == [i.source for i in items]


def test_parquet_without_image_column(tmp_path):
    pq.write_table(pa.table({"pixels": [b"x"]}), tmp_path / "t.parquet")
    with pytest.raises(InputError, match="no column 'image'"):
        list(iter_sources([str(tmp_path / "t.parquet")]))


def test_saved_datasets_folder_with_image_feature(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"img": [Image.new("RGB", (8, 8), (200, 0, 0))], "text": ["red square"]},
        features=datasets.Features({"img": datasets.Image(), "text": datasets.Value("string")}),
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    (item,) = iter_sources([str(tmp_path / "saved")], image_column="img", caption_column="text")
    assert item.caption == "red square"
    assert Image.open(io.BytesIO(item.read_bytes())).getpixel((0, 0)) == (200, 0, 0)
