"""Input shards: the stream of source photos cut into numbered Parquet files of ``shard_size`` photos.

The driver streams :func:`dataset_tools.sources.iter_sources` into ``<work>/inputs/shard-NNNNN.parquet``
(each published atomically, in row groups of :data:`CHUNK_ROWS` photos that workers read one at a
time), then writes ``manifest.json``. Every row carries its input's stamp (:mod:`dataset_tools.input_stamp`).
A resumed build lists the inputs again: when the finished shards hold the same stamps in the same order it
keeps them and continues the stream after them, so input shard k, and hence output shard k, holds the same
photos in every run; when they differ before the manifest was written (no photo was processed yet) the
sharding starts over, and after it the resume is refused with what changed. Paths stay paths (workers read
the files); dataset rows carry their image bytes.
"""
from __future__ import annotations

import bisect
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .atomic import publish, write_atomic
from .input_stamp import InputsChanged, describe_changes, stamp_of
from .sources import SourceItem

#: Photos per row group of an input shard: the unit of work handed to a worker.
CHUNK_ROWS = 8
MANIFEST = "manifest.json"

INPUT_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),  # position in the whole input stream
        ("source", pa.string()),
        ("path", pa.string()),
        ("data", pa.binary()),
        ("caption", pa.string()),
        ("exif", pa.string()),  # JSON object of EXIF-like dataset columns
        ("error", pa.string()),  # set when the listing already knows the item is unusable
        ("stamp", pa.string()),  # dataset_tools.input_stamp.stamp_of
        ("sidecars", pa.int8()),  # its sidecar bits
    ]
)


@dataclass(frozen=True)
class Chunk:
    """One unit of work: row group ``row_group`` of input shard ``shard``."""

    shard: int
    row_group: int


def shard_path(inputs_dir: Path, shard: int) -> Path:
    """The file of input shard ``shard``."""
    return inputs_dir / f"shard-{shard:05d}.parquet"


def _row(item: SourceItem, seq: int) -> dict[str, Any]:
    stamp, sidecars = stamp_of(item)
    return {
        "seq": seq,
        "source": item.source,
        "path": item.path,
        "data": item.data,
        "caption": item.caption or "",
        "exif": json.dumps(item.exif, default=str) if item.exif else None,
        "error": item.error,
        "stamp": stamp,
        "sidecars": sidecars,
    }


def item_from_row(row: dict[str, Any]) -> SourceItem:
    """The source item stored in an input-shard row."""
    return SourceItem(
        source=row["source"],
        path=row["path"],
        data=row["data"],
        caption=row["caption"] or "",
        exif=json.loads(row["exif"]) if row["exif"] else {},
        error=row["error"],
    )


def _existing_counts(inputs_dir: Path) -> list[int]:
    """Photo counts of the finished shards 0, 1, ... (stopping at the first missing one)."""
    counts = []
    for shard in itertools.count():
        path = shard_path(inputs_dir, shard)
        if not storage.is_file(path):
            return counts
        counts.append(storage.parquet_file(path).metadata.num_rows)


class _ShardSink:
    """Writes one input shard in row groups of CHUNK_ROWS rows to a temp file, then publishes it."""

    def __init__(self, inputs_dir: Path, shard: int) -> None:
        self.final = shard_path(inputs_dir, shard)
        self.temp = storage.temp_for(self.final)
        self.writer = pq.ParquetWriter(self.temp, INPUT_SCHEMA)
        self.rows: list[dict[str, Any]] = []
        self.count = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) == CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=INPUT_SCHEMA), row_group_size=CHUNK_ROWS)
            self.rows = []

    def close(self) -> None:
        self._flush()
        self.writer.close()
        publish(self.temp, self.final)


def stored_stamps(inputs_dir: Path, counts: Sequence[int]) -> Iterator[tuple[str, str]]:
    """(source, stamp) of every row of input shards 0 .. len(counts) - 1, in stream order."""
    for shard in range(len(counts)):
        table = storage.parquet_file(shard_path(inputs_dir, shard)).read(columns=["source", "stamp"])
        yield from zip(table["source"].to_pylist(), table["stamp"].to_pylist())


def _listed_stamps(items: Iterable[SourceItem]) -> Iterator[tuple[str, str]]:
    for item in items:
        yield item.source, stamp_of(item)[0]


def _same_start(items: Iterator[SourceItem], inputs_dir: Path, counts: Sequence[int]) -> bool:
    """Whether the next items of ``items`` are, in order, the rows of the finished shards (consumes them)."""
    for stored in stored_stamps(inputs_dir, counts):
        item = next(items, None)
        if item is None or (item.source, stamp_of(item)[0]) != stored:
            return False
    return True


def write_input_shards(listing: Callable[[], Iterable[SourceItem]], inputs_dir: Path, shard_size: int) -> list[int]:
    """Cut the items of ``listing()`` into input shards (resuming after the finished ones) and return every
    shard's photo count; InputsChanged when the manifest exists and the listing differs from it."""
    manifest = inputs_dir / MANIFEST
    if storage.is_file(manifest):
        counts = json.loads(storage.read_bytes(manifest, 2**26, "manifest"))["counts"]
        items = iter(listing())
        if not _same_start(items, inputs_dir, counts) or next(items, None) is not None:
            raise InputsChanged(describe_changes(stored_stamps(inputs_dir, counts), _listed_stamps(listing())))
        return counts
    storage.make_dirs(inputs_dir)
    counts = _existing_counts(inputs_dir)
    items = iter(listing())
    if not _same_start(items, inputs_dir, counts):
        for shard in range(len(counts)):
            storage.remove(shard_path(inputs_dir, shard))
        counts, items = [], iter(listing())
    seq = sum(counts)
    sink: Optional[_ShardSink] = None
    for item in items:
        if sink is None:
            sink = _ShardSink(inputs_dir, len(counts))
        sink.add(_row(item, seq))
        seq += 1
        if sink.count == shard_size:
            sink.close()
            counts.append(sink.count)
            sink = None
    if sink is not None:
        sink.close()
        counts.append(sink.count)
    write_atomic(manifest, json.dumps({"counts": counts, "photos": sum(counts)}))
    return counts


def chunks_of(shard: int, count: int) -> list[Chunk]:
    """The chunks (row groups) of an input shard of ``count`` photos."""
    return [Chunk(shard, g) for g in range(math.ceil(count / CHUNK_ROWS))]


def read_chunk(inputs_dir: Path, chunk: Chunk) -> Iterator[dict[str, Any]]:
    """The input rows of one chunk."""
    table = storage.parquet_file(shard_path(inputs_dir, chunk.shard)).read_row_group(chunk.row_group)
    yield from table.to_pylist()


def chunk_seqs(inputs_dir: Path, chunk: Chunk) -> list[int]:
    """The stream positions of the photos of one chunk (reads that column only)."""
    table = storage.parquet_file(shard_path(inputs_dir, chunk.shard)).read_row_group(chunk.row_group, columns=["seq"])
    return table["seq"].to_pylist()


def chunks_of_seqs(seqs: Iterable[int], counts: Sequence[int]) -> dict[int, Chunk]:
    """The chunk holding each stream position in ``seqs`` (input shard k holds seqs sum(counts[:k]) onwards)."""
    starts = list(itertools.accumulate(counts, initial=0))
    found = {}
    for seq in seqs:
        shard = bisect.bisect_right(starts, seq) - 1
        if not 0 <= shard < len(counts):
            raise ValueError(f"stream position {seq} is outside the {starts[-1]} input photos")
        found[seq] = Chunk(shard, (seq - starts[shard]) // CHUNK_ROWS)
    return found


def read_sources(inputs_dir: Path, counts: Sequence[int], seqs: Iterable[int]) -> dict[int, str]:
    """The ``source`` of each stream position in ``seqs``, reading only the row groups (and column) that hold them."""
    wanted = chunks_of_seqs(seqs, counts)
    sources: dict[int, str] = {}
    for chunk in set(wanted.values()):
        table = storage.parquet_file(shard_path(inputs_dir, chunk.shard)).read_row_group(
            chunk.row_group, columns=["seq", "source"])
        for seq, source in zip(table["seq"].to_pylist(), table["source"].to_pylist()):
            if seq in wanted:
                sources[seq] = source
    return sources
