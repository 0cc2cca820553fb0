"""Training data: rows of a built dataset, batch sampling (ratio, grouping, ties, dropout) and K under crops."""
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dataset_tools.schema import IMAGE_STRUCT
from estimators.cli_util import UserError
from trainer.data import BatchSampler, Crop, ImageLoader, crop_box, load_rows

WORDS = ["red", "blue", "green", "sphere", "box", "cone", "wall", "trees", "floor"]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(out, groups: int = 6, renders: int = 3, singles: int = 2, size=(24, 32), seed: int = 0, pivot_kind="real"):
    """A `bokeh build`-like folder: ``groups`` pivots (K 0) with ``renders`` renders each, plus single
    real rows; images are random PNGs of ``size`` (h, w). Returns the folder."""
    rng = np.random.default_rng(seed)
    rows = []

    def add(rid, gid, kind, k, caption):
        image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        rows.append(dict(id=rid, group_id=gid, kind=kind, image={"bytes": _png(image), "path": f"{rid}.png"},
                         caption=caption, bokeh_level=float(k), width=size[1], height=size[0]))

    for g in range(groups):
        caption = f"a {WORDS[g % 3]} {WORDS[3 + g % 3]} in front of {WORDS[6 + g % 3]}"
        add(f"g{g}", f"g{g}", pivot_kind, 0.0 if pivot_kind == "real" else 2.0, caption)
        for r in range(renders):
            add(f"g{g}r{r}", f"g{g}", "synthetic", 5.0 + 7.0 * r + g, caption)
    for s in range(singles):
        add(f"s{s}", f"s{s}", "real", 3.0 + s, f"a {WORDS[s]} box on a floor")
    (out / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "data" / "train-00000-of-00001.parquet")
    return out


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return load_rows(str(write_dataset(tmp_path_factory.mktemp("ds"))))


def test_rows_and_groups(rows):
    assert len(rows) == 6 * 4 + 2
    assert len(rows.groups) == 6  # single rows form no contrastive group
    for group in rows.groups:
        assert rows.kinds[group[0]] == "real" and len(group) == 4
        assert len({rows.group_ids[r] for r in group}) == 1


def test_pivot_without_real_row_is_lowest_k(tmp_path):
    data = load_rows(str(write_dataset(tmp_path, groups=2, singles=0, pivot_kind="synthetic")))
    for group in data.groups:
        assert data.levels[group[0]] == min(data.levels[r] for r in group) == 2.0


def test_bad_data_is_one_line_error(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "caption": ["x"]}), tmp_path / "x.parquet")
    with pytest.raises(UserError, match="lacks the column"):
        load_rows(str(tmp_path))
    with pytest.raises(UserError, match="cannot read training data"):
        load_rows(str(tmp_path / "missing"))


def test_sampler_ratio_grouping_ties_dropout(rows):
    n = 4000
    sampler = BatchSampler(rows, batch_size=3, seed=1)
    plans = [sampler.plan(i) for i in range(n)]
    contrastive = [p for p in plans if p.contrastive]
    # Binomial(n, 0.5): standard deviation sqrt(0.25 / n) = 0.0079; allow 4 sigma.
    assert abs(len(contrastive) / n - 0.5) < 4 * np.sqrt(0.25 / n)
    tied = others = 0
    for p in contrastive:
        assert len(p.rows) == 3 and len(set(p.rows)) == 3
        assert len({rows.group_ids[r] for r in p.rows}) == 1
        assert rows.kinds[p.rows[0]] == "real" and p.pivot_ids[0] == -1
        assert set(p.pivot_ids[1:]) <= {-1, 0}
        assert len(set(p.crops)) == 1  # one crop for the whole group
        tied += sum(1 for q in p.pivot_ids[1:] if q == 0)
        others += 2
    assert abs(tied / others - 0.2) < 4 * np.sqrt(0.2 * 0.8 / others)
    for p in plans:
        if not p.contrastive:
            assert p.pivot_ids == [-1] * 3
    levels = [(p, i) for p in plans for i in range(len(p.rows))]
    k_dropped = np.array([p.levels[i] == -1.0 for p, i in levels])
    cap_dropped = np.array([p.captions[i] == "" for p, i in levels])
    m = len(levels)
    assert abs(k_dropped.mean() - 0.1) < 4 * np.sqrt(0.09 / m)
    assert abs(cap_dropped.mean() - 0.1) < 4 * np.sqrt(0.09 / m)
    assert abs((k_dropped & cap_dropped).mean() - 0.01) < 4 * np.sqrt(0.0099 / m)  # independent
    for (p, i), dropped in zip(levels, k_dropped):
        if not dropped:  # no zoom crop: every row keeps its own K
            assert p.levels[i] == rows.levels[p.rows[i]]
            assert p.crops[i].size == 1.0


def test_uncond_dropout_drops_k_and_caption_together(rows):
    n = 3000
    plain = BatchSampler(rows, batch_size=3, seed=1)
    joint = BatchSampler(rows, batch_size=3, seed=1, uncond_dropout=0.2)
    pairs = [(plain.plan(i), joint.plan(i)) for i in range(n)]
    k_only = caption_only = both = 0
    for a, b in pairs:
        assert (a.rows, a.pivot_ids, a.crops) == (b.rows, b.pivot_ids, b.crops)  # only the drops differ
        for i in range(len(a.rows)):
            # A row dropped without the joint draw stays dropped: the joint draw only adds drops.
            assert b.levels[i] == -1.0 or a.levels[i] == b.levels[i]
            assert b.captions[i] == "" or a.captions[i] == b.captions[i]
            k, c = b.levels[i] == -1.0, b.captions[i] == ""
            k_only += k and not c
            caption_only += c and not k
            both += k and c
    m = sum(len(a.rows) for a, _ in pairs)
    # Both dropped: 0.2 + 0.8 * 0.1 * 0.1 = 0.208; K alone: 0.8 * 0.1 * 0.9 = 0.072, the caption alone the same.
    assert abs(both / m - 0.208) < 4 * np.sqrt(0.208 * 0.792 / m)
    assert abs(k_only / m - 0.072) < 4 * np.sqrt(0.072 * 0.928 / m)
    assert abs(caption_only / m - 0.072) < 4 * np.sqrt(0.072 * 0.928 / m)
    with pytest.raises(UserError, match="uncond_dropout"):
        BatchSampler(rows, 3, uncond_dropout=1.5)


def test_sampler_is_a_function_of_seed_and_index(rows):
    a, b, c = BatchSampler(rows, 4, seed=3), BatchSampler(rows, 4, seed=3), BatchSampler(rows, 4, seed=4)
    assert [a.plan(i) for i in range(20)] == [b.plan(i) for i in range(20)]
    assert [a.plan(i) for i in range(20)] != [c.plan(i) for i in range(20)]


def test_real_rows_only_and_ratio_extremes(rows):
    only_real = BatchSampler(rows, 4, contrastive_ratio=0.0, real_rows="real")
    for i in range(50):
        assert all(rows.kinds[r] == "real" for r in only_real.plan(i).rows)
    always = BatchSampler(rows, 8, contrastive_ratio=1.0, tie_probability=1.0, k_dropout=0, caption_dropout=0)
    plan = always.plan(0)
    assert plan.contrastive and len(plan.rows) == 4  # a group of 4 caps a batch of 8
    assert plan.pivot_ids == [-1, 0, 0, 0]
    with pytest.raises(UserError):
        BatchSampler(rows, 4, contrastive_ratio=1.5)


def test_zoom_crops_scale_k_by_inverse_size(rows):
    sampler = BatchSampler(rows, 3, seed=5, crop_min_fraction=0.5, k_dropout=0.0)
    zoomed = 0
    for i in range(300):
        p = sampler.plan(i)
        for row, level, crop in zip(p.rows, p.levels, p.crops):
            k = rows.levels[row]
            # A crop of c = size * R px shown at R px enlarges the blur by R / c: K' = K / size.
            assert level == pytest.approx(k / crop.size, rel=1e-12)
            assert level <= 30.0 + 1e-9
            assert crop.size >= 0.5 - 1e-12
            zoomed += crop.size < 1
    assert zoomed > 100


def test_crop_box_by_hand():
    # 200 x 100 image, crop of half the short side (50 px) at the right edge, top: (150, 0, 200, 50).
    assert crop_box(200, 100, 64, Crop(0.5, 1.0, 0.0)) == (150.0, 0.0, 200.0, 50.0)
    # Full short side, centred: (50, 0, 150, 100).
    assert crop_box(200, 100, 64, Crop(1.0, 0.5, 0.5)) == (50.0, 0.0, 150.0, 100.0)


def test_image_loader_crops_the_right_region(tmp_path):
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[:, 100:] = 255  # left half black, right half white
    rows_table = pa.Table.from_pylist([dict(id="a", group_id="a", kind="real", image={"bytes": _png(image), "path": None},
                                            caption="x", bokeh_level=0.0)])
    pq.write_table(rows_table, tmp_path / "a.parquet")
    data = load_rows(str(tmp_path))
    loader = ImageLoader(data, resolution=8, cache=True)
    batch = loader.load([0, 0], [Crop(1.0, 0.0, 0.5), Crop(1.0, 1.0, 0.5)])
    assert batch.shape == (2, 3, 8, 8)
    # Away from the black / white edge (where the resampling filter reaches across it) the crops are pure.
    assert float(batch[0, :, :, :6].max()) == -1.0 and float(batch[1, :, :, 2:].min()) == 1.0


def test_rows_with_k_outside_range_are_skipped_with_a_warning(tmp_path):
    image = _png(np.zeros((8, 8, 3), dtype=np.uint8))
    table = pa.Table.from_pylist([
        dict(id=i, group_id=i, kind="real", image={"bytes": image, "path": None}, caption="x", bokeh_level=k)
        for i, k in (("a", 3.0), ("b", 35.0), ("c", None))
    ])
    pq.write_table(table, tmp_path / "a.parquet")
    with pytest.warns(UserWarning, match="skipping 2 of 3 rows"):
        data = load_rows(str(tmp_path))
    assert data.ids == ["a"] and data.levels.tolist() == [3.0]


def _mask_dataset(folder):
    """One group (a real pivot whose image and subject mask are the same white 8 x 12 box on black, two
    renders without a mask) and a single real row without a mask; images 24 x 32 (h x w)."""
    subject = np.zeros((24, 32), dtype=np.uint8)
    subject[8:16, 10:22] = 255
    noise = _png(np.random.default_rng(0).integers(0, 256, size=(24, 32, 3), dtype=np.uint8))
    cell = lambda data: {"bytes": data, "path": None}  # noqa: E731
    rows = [dict(id="p", group_id="g", kind="real", image=cell(_png(np.dstack([subject] * 3))), subject_mask=cell(_png(subject)),
                 caption="a box", bokeh_level=0.0)]
    rows += [dict(id=f"r{i}", group_id="g", kind="synthetic", image=cell(noise), subject_mask=None, caption="a box",
                  bokeh_level=10.0 * (i + 1)) for i in range(2)]
    rows.append(dict(id="s", group_id="s", kind="real", image=cell(noise), subject_mask=None, caption="x", bokeh_level=3.0))
    schema = pa.schema([("id", pa.string()), ("group_id", pa.string()), ("kind", pa.string()), ("image", IMAGE_STRUCT),
                        ("subject_mask", IMAGE_STRUCT), ("caption", pa.string()), ("bokeh_level", pa.float64())])
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "data" / "train-00000-of-00001.parquet")
    return folder


def test_subject_masks_are_shared_by_the_group_and_weigh_the_cropped_subject(tmp_path):
    with pytest.warns(UserWarning, match="1 of 4 rows"):
        data = load_rows(str(_mask_dataset(tmp_path)), masks=True)
    assert data.mask_rows == [0, 0, 0, -1]  # the renders use their pivot's mask, the single row has none
    loader = ImageLoader(data, resolution=16, cache=True)
    crops = [Crop(1.0, 1.0, 0.5), Crop(1.0, 0.0, 0.5), Crop(1.0, 0.0, 0.5), Crop()]
    pixels, weights = loader.load_weighted([0, 1, 2, 3], crops, subject_weight=5.0)
    assert torch.equal(pixels, loader.load([0, 1, 2, 3], crops)) and loader.load_weighted([0], crops[:1], None)[1] is None
    assert weights.shape == (4, 1, 16, 16)
    assert torch.equal(weights[1], weights[2]) and torch.equal(weights[3], torch.ones(1, 16, 16))
    # By hand: the 24-px short side becomes 16 (x 2/3), so the 8 x 12 box is 5.33 x 8 px = 42.7 px; the right crop
    # (x = 1) starts at column 8 of 32: box columns 2..14 -> 1.33..9.33, the left one: 10..22 -> 6.67..14.67; rows 5.33..10.67.
    rows_, cols = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5, indexing="ij")
    for w, centre_col in ((weights[0, 0], 5.33), (weights[1, 0], 10.67)):
        extra = w - 1
        assert extra.sum().item() / 4 == pytest.approx(42.67, rel=0.02)
        assert (extra * cols).sum().item() / extra.sum().item() == pytest.approx(centre_col, abs=0.1)
        assert (extra * rows_).sum().item() / extra.sum().item() == pytest.approx(8.0, abs=0.1)
        assert w.min().item() == 1.0 and w.max().item() == pytest.approx(5.0)
    # the image crop and its weights cover the same pixels: the subject is the white box of the pivot image
    image = (loader.load([0], crops[:1])[0, 0] + 1) / 2
    inside = weights[0, 0] > 3
    assert image[inside].min().item() > 0.5 and image[~inside].max().item() < 0.5


def test_subject_weights_need_the_mask_column(tmp_path):
    with pytest.raises(UserError, match="subject_mask"):
        load_rows(str(write_dataset(tmp_path)), masks=True)


def _rewrite(folder, change):
    """The mask dataset's single Parquet file with ``change(rows)`` applied."""
    path = folder / "data" / "train-00000-of-00001.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    return folder


def test_subject_mask_problems_are_one_line_errors_or_warnings(tmp_path):
    cell = lambda data: {"bytes": data, "path": None}  # noqa: E731
    # no embedded mask at all (path-only cells): refused, not trained unweighted in silence
    def paths_only(rows):
        rows[0]["subject_mask"] = {"bytes": None, "path": "p.mask.png"}
    with pytest.raises(UserError, match="no row has an embedded subject mask"):
        load_rows(str(_rewrite(_mask_dataset(tmp_path / "a"), paths_only)), masks=True)
    # a column of nulls only (its Arrow type is null): the same error
    table = pq.read_table(_mask_dataset(tmp_path / "n") / "data" / "train-00000-of-00001.parquet").drop_columns(["subject_mask"])
    pq.write_table(table.append_column("subject_mask", pa.nulls(table.num_rows)), tmp_path / "n" / "data" / "train-00000-of-00001.parquet")
    with pytest.raises(UserError, match="no row has an embedded subject mask"):
        load_rows(str(tmp_path / "n"), masks=True)
    # the single row without a mask: a warning with the count
    with pytest.warns(UserWarning, match="1 of 4 rows have no subject mask"):
        load_rows(str(_mask_dataset(tmp_path / "b")), masks=True)

    def corrupt(rows):
        rows[0]["subject_mask"] = cell(b"not a png")
    with pytest.warns(UserWarning):
        data = load_rows(str(_rewrite(_mask_dataset(tmp_path / "c"), corrupt)), masks=True)
    with pytest.raises(UserError, match="row p: subject mask: "):
        ImageLoader(data, 16).load_weighted([1], [Crop()], 3.0)

    def square_mask(rows):  # a 24 x 24 mask for a 24 x 32 image
        rows[0]["subject_mask"] = cell(_png(np.full((24, 24), 255, dtype=np.uint8)))
    with pytest.warns(UserWarning):
        data = load_rows(str(_rewrite(_mask_dataset(tmp_path / "d"), square_mask)), masks=True)
    with pytest.raises(UserError, match="subject mask 24x24 does not fit the image of row r0"):
        ImageLoader(data, 16).load_weighted([1], [Crop()], 3.0)


def test_a_half_size_mask_weighs_the_same_pixels(tmp_path):
    """A mask at half the image's size (same aspect) is fitted to the image before the crop."""
    def half(rows):
        subject = np.zeros((12, 16), dtype=np.uint8)
        subject[4:8, 5:11] = 255  # the 8 x 12 box of the full-size mask, halved
        rows[0]["subject_mask"] = {"bytes": _png(subject), "path": None}
    with pytest.warns(UserWarning):
        full = load_rows(str(_mask_dataset(tmp_path / "full")), masks=True)
        halved = load_rows(str(_rewrite(_mask_dataset(tmp_path / "half"), half)), masks=True)
    crop = [Crop(1.0, 1.0, 0.5)]
    a = ImageLoader(full, 16).load_weighted([0], crop, 5.0)[1]
    b = ImageLoader(halved, 16).load_weighted([0], crop, 5.0)[1]
    assert (a - 1).sum().item() == pytest.approx((b - 1).sum().item(), rel=0.03)
    assert torch.equal(a > 3, b > 3)
