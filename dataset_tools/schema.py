"""The columns of a built bokeh dataset, defined once: the Parquet (pyarrow) schema and the Hugging Face features.

One row per image. ``image``, ``depth`` and ``subject_mask`` are Hugging Face Image structs
``{bytes, path}`` (JPEG / 16-bit PNG / 8-bit PNG), so ``datasets`` decodes them to PIL images. ``kind`` and
``bokeh_source`` are class labels (stored as the index of the name in ``LABELS``; rows are built with the names and
:func:`rows_table` encodes them), ``provenance`` and ``render_params`` structs with the fields of ``STRUCTS``.
Synthetic rows (``kind == "synthetic"``) leave ``depth``, ``subject_mask``, ``k_metric`` and the lens
fields null: depth and mask are their pivot's (same ``group_id``), and no lens took them.
"""
from __future__ import annotations

import json
from typing import Any, Optional

import pyarrow as pa

#: (name, Hugging Face dtype or "image", description). The order is the column order.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("id", "string", "sha1 of the source photo's bytes; synthetic rows: '<pivot id>-k<index>'"),
    ("group_id", "string", "shared by an all-in-focus pivot and its renders (a real photo alone: its id)"),
    ("kind", "class_label", "'real' (the photo) or 'synthetic' (a render of an all-in-focus photo)"),
    ("image", "image", "the image (JPEG), short side = --resolution (smaller photos are not enlarged)"),
    ("width", "int32", "stored image width in px"),
    ("height", "int32", "stored image height in px"),
    ("caption", "string", "from <stem>.txt or the caption column; empty when none was given"),
    ("bokeh_level", "float32", "unified K at short side 512 (docs/design.md §1), whatever the stored size"),
    ("k_metric", "float32", "blur radius in px (of the stored image) per 1/m of inverse depth; null unless from EXIF"),
    ("bokeh_source", "class_label", "where K came from: exif+depth, exif-only, exif+image, image-only or synthetic"),
    ("provenance", "struct", "depth, mask, focus-distance, focal-plane and sensor sources, depth range, image-based K "
     "and its ratio to the EXIF K, the estimator's notes (real rows); pivot id, depth and mask sources (synthetic rows)"),
    ("confidence", "float32", "the estimator's confidence in K, 0-1 (renders: 1)"),
    ("focus_distance_m", "float32", "focus distance in metres, when known"),
    ("focus_disparity", "float32", "normalised disparity of the focal plane (1 = nearest)"),
    ("f_number", "float32", "EXIF or dataset column"),
    ("focal_length_mm", "float32", "EXIF or dataset column"),
    ("focal_length_35mm", "float32", "EXIF or dataset column"),
    ("camera_make", "string", "EXIF or dataset column"),
    ("camera_model", "string", "EXIF or dataset column"),
    ("lens_model", "string", "EXIF or dataset column"),
    ("depth", "image", "16-bit grayscale PNG of the normalised disparity (65535 = nearest); null on synthetic rows"),
    ("subject_mask", "image", "8-bit PNG, 255 = subject; null on synthetic rows"),
    ("sharpness_subject", "float32", "variance of the Laplacian on the subject, at short side 512"),
    ("sharpness_background", "float32", "variance of the Laplacian off the subject, at short side 512"),
    ("is_all_in_focus", "bool", "K <= 1"),
    ("source", "string", "original path or URI of the photo"),
    ("render_params", "struct", "the renderer's settings (synthetic rows), else null"),
)

#: Class-label columns: their names, in index order (a name's index is what the Parquet column stores; only ever append).
LABELS: dict[str, tuple[str, ...]] = {
    "kind": ("real", "synthetic"),
    "bokeh_source": ("exif+depth", "exif-only", "image-only", "synthetic", "exif+image"),
}
#: Struct columns: their fields as (name, Hugging Face dtype, or "list" for a list of strings).
STRUCTS: dict[str, tuple[tuple[str, str], ...]] = {
    "provenance": (
        ("pivot_id", "string"), ("depth_source", "string"), ("mask_source", "string"), ("focus_distance_source", "string"),
        ("sensor_width_source", "string"), ("focus_source", "string"), ("z_near_m", "float32"), ("z_far_m", "float32"),
        ("image_bokeh_level", "float32"), ("image_to_exif_ratio", "float32"), ("notes", "list"),
    ),
    "render_params": (
        ("bokeh_level", "float32"), ("focus_disparity", "float32"), ("gamma", "float32"), ("highlight_boost", "float32"),
        ("aperture", "string"), ("seed", "int64"), ("levels_drawn", "bool"),
    ),
}

IMAGE_COLUMNS = tuple(name for name, dtype, _ in COLUMNS if dtype == "image")
#: Arrow type of a Hugging Face Image cell.
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def cell_bytes(value: Any) -> Optional[bytes]:
    """The encoded bytes of an image cell (an HF Image struct ``{bytes, path}`` or plain binary); None when empty."""
    data = value.get("bytes") if isinstance(value, dict) else value
    return data or None


_ARROW_TYPES = {
    "string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(), "bool": pa.bool_(),
    "image": IMAGE_STRUCT, "class_label": pa.int64(), "list": pa.list_(pa.string()),
}


def _arrow_type(name: str, dtype: str) -> pa.DataType:
    if dtype == "struct":
        return pa.struct([(field, _ARROW_TYPES[kind]) for field, kind in STRUCTS[name]])
    return _ARROW_TYPES[dtype]


def _hf_value(dtype: str) -> dict[str, Any]:
    if dtype == "list":
        return {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"}
    return {"dtype": dtype, "_type": "Value"}


def _hf_feature(name: str, dtype: str) -> dict[str, Any]:
    if dtype == "image":
        return {"_type": "Image"}
    if dtype == "class_label":
        return {"names": list(LABELS[name]), "_type": "ClassLabel"}
    if dtype == "struct":
        return {field: _hf_value(kind) for field, kind in STRUCTS[name]}
    return _hf_value(dtype)


def hf_features() -> dict[str, Any]:
    """The features in ``datasets``' serialized form (``Features.to_dict()``), as stored in Parquet metadata."""
    return {name: _hf_feature(name, dtype) for name, dtype, _ in COLUMNS}


def _card_field(name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "list": "string"} if kind == "list" else {"name": name, "dtype": kind}


def card_features() -> list[dict[str, Any]]:
    """The features as a dataset card's YAML ``dataset_info.features`` list (``datasets``' YAML form)."""
    features = []
    for name, dtype, _ in COLUMNS:
        if dtype == "class_label":
            features.append({"name": name, "dtype": {"class_label": {"names": {str(i): label for i, label in enumerate(LABELS[name])}}}})
        elif dtype == "struct":
            features.append({"name": name, "struct": [_card_field(field, kind) for field, kind in STRUCTS[name]]})
        else:
            features.append({"name": name, "dtype": dtype})
    return features


def output_schema() -> pa.Schema:
    """The Parquet schema of the data shards, with the Hugging Face features in its metadata so that
    ``datasets.load_dataset("parquet", data_dir=...)`` decodes the image columns and class labels too."""
    metadata = {"huggingface": json.dumps({"info": {"features": hf_features()}})}
    return pa.schema([pa.field(name, _arrow_type(name, dtype)) for name, dtype, _ in COLUMNS], metadata=metadata)


def label_index(column: str, name: Optional[str]) -> Optional[int]:
    """The stored index of label ``name`` of class-label ``column`` (None stays None); ValueError for an unknown name."""
    if name is None:
        return None
    try:
        return LABELS[column].index(name)
    except ValueError:
        raise ValueError(f"{column} {name!r} is not one of {LABELS[column]}") from None


def label_names(column: str, values: list[Any]) -> list[Optional[str]]:
    """The names of a class-label column's values: indices (this schema) or names already (a text column)."""
    names = LABELS[column]
    return [names[v] if isinstance(v, int) and 0 <= v < len(names) else (None if v is None else str(v)) for v in values]


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as built (class labels by name, structs as dicts) as a table of ``OUTPUT_SCHEMA``."""
    encoded = [{**row, **{column: label_index(column, row.get(column)) for column in LABELS}} for row in rows]
    return pa.Table.from_pylist(encoded, schema=OUTPUT_SCHEMA)


OUTPUT_SCHEMA = output_schema()
COLUMN_NAMES = tuple(name for name, _, _ in COLUMNS)
