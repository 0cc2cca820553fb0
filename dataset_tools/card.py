"""The dataset card (OUT/README.md): YAML header with the features and data files, then a short summary."""
from __future__ import annotations

from typing import Any

import yaml

from .schema import COLUMNS, card_features

DATA_FILES = "data/train-*"


def dataset_card(stats: dict[str, Any], settings: dict[str, Any]) -> str:
    """README.md text: ``datasets.load_dataset(OUT)`` reads the features and data files from its header."""
    header = {
        "dataset_info": {"features": card_features()},
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILES}]}],
        "tags": ["bokeh", "depth-of-field", "defocus", "bokeh-diffusion"],
    }
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).rstrip(),
        "---",
        "",
        "# Bokeh dataset",
        "",
        "Built by `bokeh build` (Bokeh Diffusion toolkit): one row per image, real photos with their estimated "
        "bokeh level K (0 = all in focus, 30 = very shallow depth of field, at short side 512) and synthetic "
        "renders of the all-in-focus ones at other K, grouped by `group_id`.",
        "",
        f"- photos read: {stats['photos_read']}, kept: {stats['kept']}, filtered: {stats['filtered']}, "
        f"failed: {stats['failed']} (one line each in `errors.jsonl`)",
        f"- rows: {stats['rows_written']} ({stats['rows_real']} real, {stats['rows_synthetic']} synthetic "
        f"in {stats['groups']} groups); counts and the K histogram are in `stats.json`",
        f"- settings: " + ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None),
        "",
        "| column | type | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {dtype} | {doc} |" for name, dtype, doc in COLUMNS]
    return "\n".join(lines) + "\n"
