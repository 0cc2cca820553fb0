"""Output of ``bokeh build``: one output shard per input shard, published atomically, then the summary files.

Layout of OUT (the contract ``bokeh report`` and the trainer read)::

    OUT/README.md                             dataset card; YAML header: dataset_info.features + configs
    OUT/data/train-00000-of-000NN.parquet     rows (schema: dataset_tools.schema), one file per input shard
    OUT/errors.jsonl                          one JSON line per photo that failed or was filtered:
                                              {source, stage, status: failed|filtered, code, reason, id, seq}
    OUT/stats.json                            photos_read, kept, filtered, filtered_by_reason, failed,
                                              failed_by_reason, rows_written, rows_real, rows_synthetic,
                                              groups, k_histogram {bin_edges, all, real, synthetic},
                                              stage_seconds, stage_photos_per_second, shards,
                                              wall_seconds, settings
    OUT/.bokeh-build                          marker: this folder holds a build (dataset_tools.out_guard)
    OUT/.bokeh-build.lock                     only while a build runs: its lock, naming the driver
    OUT/_work/                                only while a build is unfinished (removed at the end):
        config.json                           the settings, checked on --resume
        inputs/shard-NNNNN.parquet, manifest.json   input shards (dataset_tools.input_shards)
        inputs/duplicates.json                copies of repeated inputs not kept (dataset_tools.dedup)
        shards/shard-NNNNN.json               errors and stats of each finished output shard
        attempts/                             stage calls whose worker died (dataset_tools.death_ledger)
        tmp/                                  output shards being written

Every source photo is in exactly one place: a row of a data shard (with its renders) or a line of
errors.jsonl (so is each copy not kept of a repeated input's bytes: stage dedup, code duplicate). Output
shard k is complete exactly when ``data/train-k-of-NN.parquet`` exists: its rows spill to ``_work/tmp``
as row groups while they come, its errors and stats are written to ``_work/shards`` first, and the
data file is renamed into place last, so a build killed at any moment and resumed redoes only the
shards without a data file.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import pyarrow.parquet as pq

from .atomic import publish, write_atomic
from .build_stats import BuildStats
from .card import dataset_card
from .schema import OUTPUT_SCHEMA, rows_table

#: Rows buffered per shard before they are written as one Parquet row group.
ROW_GROUP_ROWS = 64
WORK = "_work"
#: The files a build writes at the top of OUT (each also under its temporary name ``.NAME.tmp``).
OUTPUT_FILES = ("README.md", "errors.jsonl", "stats.json")
#: The folders a build owns in full.
WORK_FOLDERS = (WORK, f"{WORK}.old")
#: The data files a build writes in OUT/data.
DATA_PATTERN = "train-*-of-*.parquet"


class Layout:
    """Paths inside OUT."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.data = self.out / "data"
        self.work = self.out / WORK
        self.inputs = self.work / "inputs"
        self.shard_meta = self.work / "shards"
        self.tmp = self.work / "tmp"
        self.config = self.work / "config.json"
        self.errors = self.out / "errors.jsonl"
        self.stats = self.out / "stats.json"
        self.card = self.out / "README.md"

    def data_file(self, shard: int, total: int) -> Path:
        return self.data / f"train-{shard:05d}-of-{total:05d}.parquet"

    def meta_file(self, shard: int) -> Path:
        return self.shard_meta / f"shard-{shard:05d}.json"

    def is_finished(self) -> bool:
        """A build that completed: summary written, work folder gone."""
        return self.stats.is_file() and not self.work.exists()


class _OpenShard:
    """An output shard being written: rows spill to a temp Parquet file in row groups."""

    def __init__(self, temp: Path) -> None:
        self.temp = temp
        self.writer: Optional[pq.ParquetWriter] = None
        self.buffer: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.stats = BuildStats()
        self.received = 0

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        self.buffer.extend(rows)
        if len(self.buffer) >= ROW_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.temp, OUTPUT_SCHEMA)
        self.writer.write_table(rows_table(self.buffer))
        self.buffer = []

    def close(self) -> None:
        self.flush()
        if self.writer is None:  # every photo of the shard failed: still one shard, with no row group
            self.writer = pq.ParquetWriter(self.temp, OUTPUT_SCHEMA)  # (a 0-row group would break `datasets`)
        self.writer.close()


class ShardWriter:
    """Receives finished photos in any order and publishes each output shard when its last photo arrives."""

    def __init__(self, layout: Layout, counts: list[int]) -> None:
        self.layout = layout
        self.counts = counts
        self.open: dict[int, _OpenShard] = {}
        shutil.rmtree(layout.tmp, ignore_errors=True)  # parts of shards an interrupted run was writing
        for folder in (layout.data, layout.shard_meta, layout.tmp):
            folder.mkdir(parents=True, exist_ok=True)

    def pending(self) -> list[int]:
        """Shards without a published data file (a resumed build redoes exactly these)."""
        total = len(self.counts)
        return [k for k in range(total) if not self.layout.data_file(k, total).is_file()]

    def add(self, shard: int, rows: list[dict[str, Any]], outcome: Optional[dict[str, Any]],
            timings: dict[str, float]) -> Optional[BuildStats]:
        """Take one finished source photo; when this completes its shard, publish it and return its stats."""
        current = self.open.get(shard)
        if current is None:
            current = self.open[shard] = _OpenShard(self.layout.tmp / f"train-{shard:05d}.parquet")
        current.stats.add(rows, outcome, timings)
        if outcome is not None:
            current.errors.append(outcome)
        else:
            current.add_rows(rows)
        current.received += 1
        if current.received < self.counts[shard]:
            return None
        self._commit(shard, self.open.pop(shard))
        return current.stats

    def _commit(self, shard: int, done: _OpenShard) -> None:
        done.close()
        errors = sorted(done.errors, key=lambda e: e["seq"])
        write_atomic(self.layout.meta_file(shard), json.dumps({"errors": errors, "stats": done.stats.to_dict()}))
        publish(done.temp, self.layout.data_file(shard, len(self.counts)))


def finish(layout: Layout, counts: list[int], settings: dict[str, Any], wall_seconds: float) -> BuildStats:
    """Write errors.jsonl (streamed shard by shard), stats.json and README.md from the finished shards,
    then remove _work."""
    total = BuildStats()
    temp = layout.errors.with_name(f".{layout.errors.name}.tmp")
    with open(temp, "w", encoding="utf-8") as errors:
        for shard in range(len(counts)):
            meta = json.loads(layout.meta_file(shard).read_text())
            total.merge(BuildStats.from_dict(meta["stats"]))
            errors.writelines(json.dumps(e) + "\n" for e in meta["errors"])
    publish(temp, layout.errors)
    stats = {**total.to_dict(), "shards": len(counts), "wall_seconds": round(wall_seconds, 3), "settings": settings}
    write_atomic(layout.stats, json.dumps(stats, indent=2) + "\n")
    write_atomic(layout.card, dataset_card(stats, settings))
    remove_work(layout)
    return total


def build_entries(layout: Layout) -> list[Path]:
    """The files and folders of OUT that a build wrote (``--overwrite`` removes exactly these; others stay)."""
    found = [layout.out / name for name in WORK_FOLDERS]
    found += [layout.out / f for name in OUTPUT_FILES for f in (name, f".{name}.tmp")]
    if layout.data.is_dir():
        found += sorted(layout.data.glob(DATA_PATTERN))
    return [p for p in found if p.exists() or p.is_symlink()]


def remove_outputs(layout: Layout) -> None:
    """Delete a previous build's files from OUT; ``data/`` goes too when nothing else is left in it."""
    for path in build_entries(layout):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    try:
        layout.data.rmdir()
    except OSError:
        pass  # absent, or it holds files a build did not write


def remove_work(layout: Layout) -> None:
    """Delete _work (renamed first, so a crash mid-delete never leaves a half work folder behind)."""
    old = layout.out / f"{WORK}.old"
    shutil.rmtree(old, ignore_errors=True)
    if layout.work.exists():
        os.replace(layout.work, old)
    shutil.rmtree(old, ignore_errors=True)
