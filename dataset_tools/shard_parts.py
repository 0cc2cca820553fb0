"""The worker's side of writing OUT: the finished photos of a batch become part files of their output shards.

A worker that finishes a batch encodes its kept photos and writes their rows, one part per output shard the
batch touches, to ``OUT/_work/parts/shard-NNNNN/`` (written under a temporary name and renamed, or on an object
store uploaded once from the local spool, so a part is whole or absent), and hands the driver one small record
per part: the shard, the part's name, its photo count, its errors.jsonl lines and its statistics. The driver
never sees a row; when a shard's photos are all accounted for it has the shard's parts joined into the data
file (:func:`dataset_tools.writer.merge_parts`). A part left by an attempt whose record never reached the driver
(its worker died, Ray retried it) is never joined, and goes with its shard's folder.
"""
from __future__ import annotations

import json
import uuid
from itertools import groupby
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from . import storage
from .atomic import publish
from .build_stats import BuildStats
from .photo_state import PhotoState
from .schema import rows_table

PARTS = "parts"
#: The columns of a part record (one per part; Ray Data carries them to the driver).
RECORD_COLUMNS = ("shard", "part", "photos", "stats", "errors")


def part_folder(work: str | Path, shard: int) -> Path:
    """The folder of the parts of output shard ``shard`` (a prefix for an object-store ``work``)."""
    return storage.as_path(work) / PARTS / f"shard-{shard:05d}"


def write_parts(work: str | Path, states: list[PhotoState]) -> list[dict[str, Any]]:
    """Write the rows of ``states`` (finished: encoded or stopped) as parts and return their records."""
    records = []
    for shard, group in groupby(sorted(states, key=lambda s: (s.shard, s.seq)), key=lambda s: s.shard):
        photos = list(group)
        stats, errors, rows = BuildStats(), [], []
        for state in photos:
            stats.add(state.rows, state.outcome, state.timings)
            if state.outcome is not None:
                errors.append(state.outcome)
            else:
                rows.extend(state.rows)
        name = ""
        if rows:
            folder = part_folder(work, shard)
            storage.make_dirs(folder)
            name = f"{photos[0].seq:012d}-{uuid.uuid4().hex}.parquet"
            temp = storage.temp_for(folder / name)
            pq.write_table(rows_table(rows), temp)
            publish(temp, folder / name)
        records.append({"shard": shard, "part": name, "photos": len(photos),
                        "stats": json.dumps(stats.to_dict()), "errors": json.dumps(errors)})
    return records


def record_columns(records: list[dict[str, Any]]) -> dict[str, list]:
    """Records as a Ray Data batch (column -> values)."""
    return {name: [r[name] for r in records] for name in RECORD_COLUMNS}
