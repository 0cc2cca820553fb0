"""The columns of a built bokeh dataset, defined once: the Parquet (pyarrow) schema and the Hugging Face features.

One row per image. ``image``, ``depth`` and ``subject_mask`` are Hugging Face Image structs
``{bytes, path}`` (JPEG / 16-bit PNG / 8-bit PNG), so ``datasets`` decodes them to PIL images.
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
    ("kind", "string", "'real' (the photo) or 'synthetic' (a render of an all-in-focus photo)"),
    ("image", "image", "the image (JPEG), short side = --resolution (smaller photos are not enlarged)"),
    ("width", "int32", "stored image width in px"),
    ("height", "int32", "stored image height in px"),
    ("caption", "string", "from <stem>.txt or the caption column; empty when none was given"),
    ("bokeh_level", "float32", "unified K at short side 512 (DESIGN.md section 1), whatever the stored size"),
    ("k_metric", "float32", "blur radius in px (of the stored image) per 1/m of inverse depth; null unless from EXIF"),
    ("bokeh_source", "string", "where K came from: exif+depth, exif-only, image-only or synthetic"),
    ("provenance", "string", "JSON: depth, mask, focus-distance and sensor sources, and the estimator's notes"),
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
    ("render_params", "string", "JSON of the render parameters (synthetic rows), else null"),
)

IMAGE_COLUMNS = tuple(name for name, dtype, _ in COLUMNS if dtype == "image")
#: Arrow type of a Hugging Face Image cell.
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def cell_bytes(value: Any) -> Optional[bytes]:
    """The encoded bytes of an image cell (an HF Image struct ``{bytes, path}`` or plain binary); None when empty."""
    data = value.get("bytes") if isinstance(value, dict) else value
    return data or None


_ARROW_TYPES = {
    "string": pa.string(), "int32": pa.int32(), "float32": pa.float32(), "bool": pa.bool_(), "image": IMAGE_STRUCT,
}


def hf_features() -> dict[str, Any]:
    """The features in ``datasets``' serialized form (``Features.to_dict()``), as stored in Parquet metadata."""
    return {
        name: {"_type": "Image"} if dtype == "image" else {"dtype": dtype, "_type": "Value"}
        for name, dtype, _ in COLUMNS
    }


def card_features() -> list[dict[str, str]]:
    """The features as a dataset card's YAML ``dataset_info.features`` list."""
    return [{"name": name, "dtype": dtype} for name, dtype, _ in COLUMNS]


def output_schema() -> pa.Schema:
    """The Parquet schema of the data shards, with the Hugging Face features in its metadata so that
    ``datasets.load_dataset("parquet", data_dir=...)`` decodes the image columns too."""
    metadata = {"huggingface": json.dumps({"info": {"features": hf_features()}})}
    return pa.schema([pa.field(name, _ARROW_TYPES[dtype]) for name, dtype, _ in COLUMNS], metadata=metadata)


OUTPUT_SCHEMA = output_schema()
COLUMN_NAMES = tuple(name for name, _, _ in COLUMNS)
