"""Identical inputs: a photo whose bytes equal those of an input earlier in the stream is a duplicate.

The driver decides before any photo is processed, from the (seq, id) of every readable input (hashed by
the workers), that the copy with the lowest ``seq`` is the photo and every later copy a duplicate. The
decision depends on the input stream only, so every worker, shard and resumed run agrees; it is kept in
``OUT/_work/inputs/duplicates.json`` and the read stage turns each later copy into one errors.jsonl line
(stage ``dedup``, reason ``duplicate of <first source>``) without reading it again.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from .atomic import write_atomic
from .input_shards import Chunk, chunks_of_seqs, item_from_row, read_chunk, read_sources

DUPLICATES = "duplicates.json"


@dataclass(frozen=True)
class Duplicate:
    """A later copy of an input: its id (shared with the first copy) and where the first copy is."""

    id: str
    first_seq: int
    first_source: str


def photo_id(data: bytes) -> str:
    """The id of a photo: the SHA-1 of its encoded bytes (hex)."""
    return hashlib.sha1(data).hexdigest()


def chunk_ids(inputs_dir: Path, chunk: Chunk) -> list[tuple[int, str]]:
    """(seq, id) of the photos of one chunk; unreadable and empty inputs are left to the read stage to report."""
    found = []
    for row in read_chunk(inputs_dir, chunk):
        if row["error"]:
            continue
        try:
            data = item_from_row(row).read_bytes()
        except OSError:
            continue
        if data:
            found.append((int(row["seq"]), photo_id(data)))
    return found


def later_copies(ids: Iterable[tuple[int, str]]) -> dict[int, tuple[str, int]]:
    """seq -> (id, seq of the first copy) of every input whose id an input of lower seq also has.

    ``ids`` may come in any order; memory is one entry per distinct id (20 bytes of digest and a seq).
    """
    first: dict[bytes, int] = {}
    later: dict[int, bytes] = {}
    for seq, text in ids:
        digest = bytes.fromhex(text)
        owner = first.setdefault(digest, seq)
        if seq > owner:
            later[seq] = digest
        elif seq < owner:
            first[digest] = seq
            later[owner] = digest
    return {seq: (digest.hex(), first[digest]) for seq, digest in later.items()}


def encode(duplicates: Mapping[int, Duplicate]) -> str:
    """JSON of ``duplicates`` (the file and the per-chunk descriptors share it)."""
    return json.dumps([[seq, *astuple(dup)] for seq, dup in sorted(duplicates.items())])


def decode(text: str) -> dict[int, Duplicate]:
    """The inverse of :func:`encode`."""
    return {int(seq): Duplicate(pid, int(first), source) for seq, pid, first, source in json.loads(text)}


def find_duplicates(inputs_dir: Path, counts: Sequence[int], ids: Iterable[tuple[int, str]]) -> dict[int, Duplicate]:
    """The later copies among the inputs whose (seq, id) are ``ids``, with their first copy's source."""
    copies = later_copies(ids)
    sources = read_sources(inputs_dir, counts, {first for _, first in copies.values()})
    return {seq: Duplicate(pid, first, sources[first]) for seq, (pid, first) in copies.items()}


def ensure_duplicates(inputs_dir: Path, counts: Sequence[int],
                      ids: Callable[[], Iterable[tuple[int, str]]]) -> dict[int, Duplicate]:
    """The duplicates stored in ``inputs_dir`` (a resumed build), or found from ``ids()`` and stored."""
    path = inputs_dir / DUPLICATES
    if path.is_file():
        return decode(path.read_text())
    found = find_duplicates(inputs_dir, counts, ids())
    write_atomic(path, encode(found))
    return found


def by_chunk(duplicates: Mapping[int, Duplicate], counts: Sequence[int]) -> dict[Chunk, dict[int, Duplicate]]:
    """``duplicates`` split by the chunk that holds each later copy."""
    split: dict[Chunk, dict[int, Duplicate]] = defaultdict(dict)
    for seq, chunk in chunks_of_seqs(duplicates, counts).items():
        split[chunk][seq] = duplicates[seq]
    return dict(split)

