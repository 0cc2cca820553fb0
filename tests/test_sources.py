"""The build reader: every kind of input becomes source items in a stable order, captions from sidecars."""
import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataset_tools.sources import (
    MAX_CAPTION_BYTES,
    MAX_LIST_LINE,
    CaptionError,
    InputError,
    check_caption,
    iter_sources,
    listing_code,
)


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


def test_captions_must_be_utf8_text_of_bounded_length(tmp_path):
    assert check_caption(b"\xef\xbb\xbf caf\xc3\xa9 \n") == "café"  # UTF-8 with a byte-order mark
    assert check_caption(None) == ""
    for bad, message in ((b"\xe9t\xe9", "not UTF-8 text"), ("a\x00b", "NUL"), ("x" * (MAX_CAPTION_BYTES + 1), "shorten it"),
                         ("é" * (MAX_CAPTION_BYTES // 2 + 1), "8,194 bytes")):  # é is 2 bytes in UTF-8
        with pytest.raises(CaptionError, match=message):
            check_caption(bad)


def test_listing_refusals_and_their_codes(tree):
    (tree / "clip.gif").write_bytes(b"GIF89a")
    os.mkfifo(tree / "pipe.webp")
    os.symlink(tree / "b", tree / "link")
    os.symlink(tree / "b" / "C.PNG", tree / "inner.png")  # resolves inside the folder: read
    items = {os.path.relpath(i.source, tree): i for i in iter_sources([str(tree)])}
    assert set(items) == {"a.jpg", "b/C.PNG", "b/deep/d.heic", "clip.gif", "pipe.webp", "link", "inner.png"}
    assert items["inner.png"].error is None and items["inner.png"].read_bytes() == png_bytes()
    assert {name: listing_code(items[name].error) for name in ("clip.gif", "pipe.webp", "link")} == {
        "clip.gif": "unsupported-format", "pipe.webp": "not-a-file", "link": "symlinked-folder"}
    (tree / "b" / "C.txt").mkdir()  # a folder where C.PNG's caption would be
    (item,) = [i for i in iter_sources([str(tree / "b" / "*.PNG")])]
    assert listing_code(item.error) == "bad-caption" and "is a folder, not a regular file" in item.error


def test_path_list_with_an_endless_line_is_refused(tmp_path):
    (tmp_path / "list.txt").write_text("a.jpg\n" + "x" * (MAX_LIST_LINE + 1) + "\n")
    with pytest.raises(InputError, match=f"line 2 of .*list.txt is over {MAX_LIST_LINE} characters"):
        list(iter_sources([str(tmp_path / "list.txt")]))
    (tmp_path / "ok.txt").write_text("y" * MAX_LIST_LINE + "\r\n")
    assert [len(os.path.basename(i.source)) for i in iter_sources([str(tmp_path / "ok.txt")])] == [MAX_LIST_LINE]
