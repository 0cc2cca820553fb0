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
        parts/shard-NNNNN/                    rows of finished batches, written by the workers
                                              (dataset_tools.shard_parts)
        tmp/                                  output shards being joined from their parts

Every source photo is in exactly one place: a row of a data shard (with its renders) or a line of
errors.jsonl (so is each copy not kept of a repeated input's bytes: stage dedup, code duplicate). The
workers write the rows; the driver only counts the small record of each part. Output shard k is complete
exactly when ``data/train-k-of-NN.parquet`` exists: once the records of all its photos are in, its errors
and stats are written to ``_work/shards``, then its parts are joined in ``_work/tmp`` (by a Ray actor, or in
this process) and the data file is renamed into place, so a build killed at any moment and resumed redoes
only the shards without a data file.

OUT may be an object-store URL (:mod:`dataset_tools.storage`): the same keys, each file uploaded whole to its
final key from a local temporary copy (no ``tmp/``), and ``_work/config.json`` deleted before the rest of
``_work``, so a build whose stats.json exists and config.json does not is finished.
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .atomic import publish, write_atomic
from .build_stats import BuildStats
from .card import dataset_card
from .schema import OUTPUT_SCHEMA
from .shard_parts import PARTS, part_folder

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
        self.out = storage.as_path(out)
        self.remote = storage.is_remote(self.out)
        self.data = self.out / "data"
        self.work = self.out / WORK
        self.inputs = self.work / "inputs"
        self.shard_meta = self.work / "shards"
        self.parts = self.work / PARTS
        self.tmp = self.work / "tmp"
        self.config = self.work / "config.json"
        self.errors = self.out / "errors.jsonl"
        self.stats = self.out / "stats.json"
        self.card = self.out / "README.md"

    def data_file(self, shard: int, total: int) -> Path:
        return self.data / f"train-{shard:05d}-of-{total:05d}.parquet"

    def meta_file(self, shard: int) -> Path:
        return self.shard_meta / f"shard-{shard:05d}.json"

    def where(self, path: Path) -> str:
        """``path`` as other processes (Ray workers) take it: the object-store URL, or the absolute local path."""
        return storage.location(path) if self.remote else str(Path(path).resolve())

    def is_finished(self) -> bool:
        """A build that completed: summary written, work folder gone (on an object store: its settings gone,
        which :func:`remove_work` deletes first)."""
        if self.remote:
            return storage.is_file(self.stats) and not storage.is_file(self.config)
        return self.stats.is_file() and not self.work.exists()


def merge_parts(layout: Layout, shard: int, total: int, parts: list[str]) -> None:
    """Join the named parts of output shard ``shard`` (in order) into its data file, published atomically in
    row groups of ROW_GROUP_ROWS rows (none when no photo was kept: a 0-row group would break `datasets`), then
    remove the shard's parts. A repeated call after one that finished (a retried task) finds the work done.
    For an object store the shard is written to the local spool and uploaded once."""
    folder = part_folder(layout.work, shard)
    final = layout.data_file(shard, total)
    if storage.is_file(final) and not storage.exists(folder):
        return
    temp = storage.temp_for(final) if layout.remote else layout.tmp / f"train-{shard:05d}.parquet"
    pending: list[pa.Table] = []
    with pq.ParquetWriter(temp, OUTPUT_SCHEMA) as writer:
        for name in sorted(parts):
            pending.append(storage.read_table(folder / name, OUTPUT_SCHEMA))
            rows = pa.concat_tables(pending)
            whole = len(rows) // ROW_GROUP_ROWS * ROW_GROUP_ROWS
            if whole:
                writer.write_table(rows.slice(0, whole), row_group_size=ROW_GROUP_ROWS)
            pending = [rows.slice(whole)] if len(rows) > whole else []
        if pending:
            writer.write_table(pa.concat_tables(pending))
    publish(temp, final)
    if layout.remote:
        storage.remove_tree(folder)
    else:
        shutil.rmtree(folder, ignore_errors=True)


class LocalJoiner:
    """Joins each complete shard's parts at once, in this process (``--workers 0``)."""

    def __init__(self, layout: Layout, total: int) -> None:
        self.layout, self.total = layout, total
        self.joined: list[int] = []

    def submit(self, shard: int, parts: list[str]) -> None:
        """Join ``parts`` into the data file of ``shard``."""
        merge_parts(self.layout, shard, self.total, parts)
        self.joined.append(shard)

    def finished(self, wait: bool = False) -> list[int]:
        """The shards joined since the last call."""
        done, self.joined = self.joined, []
        return done


class _OpenShard:
    """An output shard whose photos are coming in: the names of its parts, its errors and stats."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.errors: list[dict[str, Any]] = []
        self.stats = BuildStats()


class ShardWriter:
    """The driver's account of the output shards: takes the record of each part (:mod:`dataset_tools.shard_parts`)
    in any order and, when a shard's last photo is in, writes its errors and stats and has ``joiner`` (default: a
    :class:`LocalJoiner`; on Ray, a pool of actors) join its parts into its data file."""

    def __init__(self, layout: Layout, counts: list[int], joiner: Optional[Any] = None) -> None:
        self.layout = layout
        self.counts = counts
        self.joiner = joiner or LocalJoiner(layout, len(counts))
        self.open: dict[int, _OpenShard] = {}
        self.joining: dict[int, BuildStats] = {}
        self.seen = BuildStats()  # every photo whose record came in, for progress
        if layout.remote:  # the parts an interrupted run was writing (an upload's spool is local to its process)
            storage.remove_tree(layout.parts)
        else:
            for folder in (layout.tmp, layout.parts):  # what an interrupted run was writing
                shutil.rmtree(folder, ignore_errors=True)
        for folder in (layout.data, layout.shard_meta, layout.tmp, layout.parts):
            storage.make_dirs(folder)

    def pending(self) -> list[int]:
        """Shards without a published data file (a resumed build redoes exactly these), from one listing."""
        total = len(self.counts)
        published = set(storage.list_names(self.layout.data))
        return [k for k in range(total) if self.layout.data_file(k, total).name not in published]

    def add(self, record: dict[str, Any]) -> Optional[BuildStats]:
        """Take the record of one part; when this completes its shard, have it joined and return its stats."""
        shard = int(record["shard"])
        current = self.open.setdefault(shard, _OpenShard())
        part = BuildStats.from_dict(json.loads(record["stats"]))
        current.stats.merge(part)
        self.seen.merge(part)
        current.errors.extend(json.loads(record["errors"]))
        if record["part"]:
            current.parts.append(record["part"])
        if current.stats.photos < self.counts[shard]:
            return None
        if current.stats.photos > self.counts[shard]:
            raise RuntimeError(f"output shard {shard} received {current.stats.photos} photos of {self.counts[shard]}")
        del self.open[shard]
        errors = sorted(current.errors, key=lambda e: e["seq"])
        write_atomic(self.layout.meta_file(shard), json.dumps({"errors": errors, "stats": current.stats.to_dict()}))
        self.joining[shard] = current.stats
        self.joiner.submit(shard, current.parts)
        return current.stats

    def published(self, wait: bool = False) -> list[tuple[int, BuildStats]]:
        """(shard, stats) of the shards whose data file was published since the last call; with ``wait``, after
        every shard handed to the joiner is."""
        return [(shard, self.joining.pop(shard)) for shard in self.joiner.finished(wait)]


def finish(layout: Layout, counts: list[int], settings: dict[str, Any], wall_seconds: float) -> BuildStats:
    """Write errors.jsonl (streamed shard by shard), stats.json and README.md from the finished shards,
    then remove _work."""
    total = BuildStats()
    temp = storage.temp_for(layout.errors)
    with open(temp, "w", encoding="utf-8") as errors:
        for shard in range(len(counts)):
            meta = json.loads(storage.read_bytes(layout.meta_file(shard), 2**30, "shard summary"))
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
    if layout.remote:
        found += [layout.data / name for name in fnmatch.filter(storage.list_names(layout.data), DATA_PATTERN)]
        return [p for p in found if storage.exists(p)]
    if layout.data.is_dir():
        found += sorted(layout.data.glob(DATA_PATTERN))
    return [p for p in found if p.exists() or p.is_symlink()]


def remove_outputs(layout: Layout) -> None:
    """Delete a previous build's files from OUT; ``data/`` goes too when nothing else is left in it."""
    for path in build_entries(layout):
        if layout.remote:  # a prefix holds no folder to remove
            storage.remove_tree(path)
            storage.remove(path)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if layout.remote:
        return
    try:
        layout.data.rmdir()
    except OSError:
        pass  # absent, or it holds files a build did not write


def remove_work(layout: Layout) -> None:
    """Delete _work (renamed first, so a crash mid-delete never leaves a half work folder behind; an object store
    has no rename: its settings go first, so a half-deleted work folder already reads as finished)."""
    if layout.remote:
        storage.remove(layout.config)
        storage.remove_tree(layout.work)
        return
    old = layout.out / f"{WORK}.old"
    shutil.rmtree(old, ignore_errors=True)
    if layout.work.exists():
        os.replace(layout.work, old)
    shutil.rmtree(old, ignore_errors=True)
