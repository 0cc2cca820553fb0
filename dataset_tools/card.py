"""The dataset card (OUT/README.md): Hub metadata (licence, task, size, the features and data files, which
``datasets.load_dataset(OUT)`` reads) and a short summary."""
from __future__ import annotations

from typing import Any

from .schema import COLUMNS, LABELS, card_features

DATA_FILES = "data/train-*"
TAGS = ["bokeh", "depth-of-field", "defocus", "bokeh-diffusion"]
#: The Hub's size bins: (upper bound on the rows, label); above the last one is "n>1T".
SIZE_BINS = ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"), (10**7, "1M<n<10M"),
             (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"), (10**11, "10B<n<100B"),
             (10**12, "100B<n<1T"))
#: The images are the source photos (resized) and renders of them: their own licences apply, which the build cannot know.
LICENSE_NOTE = ("Licence: `other`. Every image is a source photo (resized) or a render of one, so each row carries the "
                "licence of its source photo (`source`); the labels and depth maps derive from the same photos. Check "
                "the photos' licences before sharing or training on them.")


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` bin of a dataset of ``rows`` rows."""
    for bound, label in SIZE_BINS:
        if rows < bound:
            return label
    return "n>1T"


def _column_type(name: str, dtype: str) -> str:
    if dtype == "class_label":
        return "class label: " + ", ".join(f"{i} = {label}" for i, label in enumerate(LABELS[name]))
    return dtype


def dataset_card(stats: dict[str, Any], settings: dict[str, Any]) -> str:
    """README.md text: ``datasets.load_dataset(OUT)`` reads the features and data files from its header."""
    from huggingface_hub import DatasetCardData

    header = DatasetCardData(
        license="other", task_categories=["text-to-image"], size_categories=[size_category(stats["rows_written"])],
        tags=list(TAGS), pretty_name="Bokeh dataset",
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILES}]}],
        dataset_info={"features": card_features()},
    )
    lines = [
        "---",
        header.to_yaml(),
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
        "- settings: " + ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None),
        "",
        LICENSE_NOTE,
        "",
        "| column | type | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {_column_type(name, dtype)} | {doc} |" for name, dtype, doc in COLUMNS]
    return "\n".join(lines) + "\n"
