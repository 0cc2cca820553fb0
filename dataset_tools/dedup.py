"""Identical inputs: of the inputs that share their bytes, one is the photo and every other copy a duplicate.

The driver decides before any photo is processed, from the (seq, id, sidecar bits) of every readable input
(hashed by the workers), which copy is kept: the one with the most of the sidecars the build reads
(``--depth sidecar``, ``--mask sidecar``, captions), then the most sidecars, then the lowest ``seq``, so a
copy without its depth map never wins over one with it and then fails. The decision depends on the input
stream and the settings only, so every worker, shard and resumed run agrees; it is kept in
``OUT/_work/inputs/duplicates.json`` and the read stage turns each other copy into one errors.jsonl line
(stage ``dedup``, reason ``duplicate of <kept source>``) without reading it again.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from . import storage
from .atomic import write_atomic
from .input_shards import Chunk, chunks_of_seqs, item_from_row, read_chunk, read_sources
from .input_stamp import CAPTION

DUPLICATES = "duplicates.json"


@dataclass(frozen=True)
class Duplicate:
    """A copy of an input that is not kept: its id (shared with the kept copy) and where the kept copy is
    (``first_*``: the copy the photo is kept as, whatever its place in the stream)."""

    id: str
    first_seq: int
    first_source: str


def photo_id(data: bytes) -> str:
    """The id of a photo: the SHA-1 of its encoded bytes (hex)."""
    return hashlib.sha1(data).hexdigest()


def chunk_ids(inputs_dir: Path, chunk: Chunk) -> list[tuple[int, str, int]]:
    """(seq, id, sidecar bits) of the photos of one chunk; unreadable and empty inputs are left to the read stage
    to report."""
    found = []
    for row in read_chunk(inputs_dir, chunk):
        if row["error"]:
            continue
        try:
            data = item_from_row(row).read_bytes()
        except OSError:
            continue
        if data:
            found.append((int(row["seq"]), photo_id(data), int(row["sidecars"])))
    return found


def _rank(seq: int, bits: int, needed: int) -> tuple[int, int, int]:
    """Which copy is kept: the highest rank (sidecars the build reads, then all sidecars, then the lowest seq)."""
    return bin(bits & needed).count("1"), bin(bits).count("1"), -seq


def later_copies(ids: Iterable[tuple[int, str, int]], needed: int = CAPTION) -> dict[int, tuple[str, int]]:
    """seq -> (id, seq of the kept copy) of every input whose id another input has and that is not kept.

    ``ids`` are (seq, id, sidecar bits) in any order; ``needed`` the sidecar bits the build reads. Memory is
    one entry per distinct id (20 bytes of digest, a seq and its bits).
    """
    kept: dict[bytes, tuple[int, int]] = {}
    others: dict[int, bytes] = {}
    for seq, text, bits in ids:
        digest = bytes.fromhex(text)
        current = kept.setdefault(digest, (seq, bits))
        if current[0] == seq:
            continue
        if _rank(seq, bits, needed) > _rank(*current, needed):
            kept[digest] = (seq, bits)
            others[current[0]] = digest
        else:
            others[seq] = digest
    return {seq: (digest.hex(), kept[digest][0]) for seq, digest in others.items()}


def encode(duplicates: Mapping[int, Duplicate]) -> str:
    """JSON of ``duplicates`` (the file and the per-chunk descriptors share it)."""
    return json.dumps([[seq, *astuple(dup)] for seq, dup in sorted(duplicates.items())])


def decode(text: str) -> dict[int, Duplicate]:
    """The inverse of :func:`encode`."""
    return {int(seq): Duplicate(pid, int(first), source) for seq, pid, first, source in json.loads(text)}


def find_duplicates(inputs_dir: Path, counts: Sequence[int], ids: Iterable[tuple[int, str, int]],
                    needed: int = CAPTION) -> dict[int, Duplicate]:
    """The copies not kept among the inputs whose (seq, id, sidecar bits) are ``ids``, with the kept copy's source."""
    copies = later_copies(ids, needed)
    sources = read_sources(inputs_dir, counts, {kept for _, kept in copies.values()})
    return {seq: Duplicate(pid, kept, sources[kept]) for seq, (pid, kept) in copies.items()}


def ensure_duplicates(inputs_dir: Path, counts: Sequence[int], ids: Callable[[], Iterable[tuple[int, str, int]]],
                      needed: int = CAPTION) -> dict[int, Duplicate]:
    """The duplicates stored in ``inputs_dir`` (a resumed build), or found from ``ids()`` and stored."""
    path = inputs_dir / DUPLICATES
    if storage.is_file(path):
        return decode(storage.read_bytes(path, 2**30, "duplicates").decode("utf-8"))
    found = find_duplicates(inputs_dir, counts, ids(), needed)
    write_atomic(path, encode(found))
    return found


def by_chunk(duplicates: Mapping[int, Duplicate], counts: Sequence[int]) -> dict[Chunk, dict[int, Duplicate]]:
    """``duplicates`` split by the chunk that holds each copy."""
    split: dict[Chunk, dict[int, Duplicate]] = defaultdict(dict)
    for seq, chunk in chunks_of_seqs(duplicates, counts).items():
        split[chunk][seq] = duplicates[seq]
    return dict(split)

