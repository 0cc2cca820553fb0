"""Photos that kill their worker (out of memory, a crash in native code) become errors instead of endless retries.

Ray retries a task whose worker process died, by default for ever. Around every stage call, a Ray worker
writes a small file in ``OUT/_work/attempts`` naming the batch it starts and removes it when the batch is
done, so the file of a batch survives only when its worker died. A retried batch that finds its file runs its
photos one at a time, each with a file of its own: a photo whose worker died :data:`MAX_DEATHS` times (the
batch's deaths included) is stopped with code ``worker-died`` and the others go on. The files live with the
build's work folder, so the counts also hold across ``--resume``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

from . import storage
from .atomic import write_atomic
from .dedup import Duplicate
from .input_shards import Chunk, chunk_seqs
from .photo_state import PhotoState, StageFailure
from .stages import ReadStage

#: Deaths of a worker with a photo in its hands after which the photo is an error.
MAX_DEATHS = 3
#: The ledger's folder, next to the input shards in OUT/_work.
ATTEMPTS = "attempts"
CODE = "worker-died"
#: Stands for the other photos of a chunk while one is read alone (their states are dropped).
_UNREAD = Duplicate("", -1, "")


class DeathLedger:
    """Counts of unfinished attempts, one small file per key, in ``folder`` (shared by every node)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = storage.as_path(folder)

    def _file(self, key: str) -> Path:
        return self.folder / key

    def deaths(self, key: str) -> int:
        """Attempts at ``key`` that began and never ended: each one's worker died."""
        if not storage.is_file(self._file(key)):
            return 0
        try:
            return int(storage.read_bytes(self._file(key), 64, "attempt count") or 1)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):  # a worker died while writing the count
            return 1

    def begin(self, key: str) -> None:
        """Record one more attempt at ``key`` (renamed into place, so a death never leaves a torn count)."""
        count = str(self.deaths(key) + 1)
        path = self._file(key)
        if storage.is_remote(path):  # one PUT: whole or absent
            write_atomic(path, count)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(count)
        temp.replace(path)

    def end(self, key: str) -> None:
        """The attempt at ``key`` finished: forget it."""
        storage.remove(self._file(key))


def worker_died(deaths: int) -> StageFailure:
    """The outcome of a photo whose worker died ``deaths`` times."""
    return StageFailure(CODE, f"the worker died {deaths} times processing this photo: likely out of memory "
                              "(a very large or very long image)")


def _batch_key(stage: str, seqs: Sequence[int]) -> str:
    return f"{stage}-batch-{min(seqs)}-{max(seqs)}-{len(seqs)}"


def run_states(stage: str, run: Callable[[list[PhotoState]], None], states: list[PhotoState],
               ledger: DeathLedger) -> None:
    """``run(states)`` (a stage named ``stage``), recorded in ``ledger``; photo by photo after a death."""
    active = [s for s in states if s.active]
    if not active:
        return
    batch = _batch_key(stage, [s.seq for s in active])
    earlier = ledger.deaths(batch)
    if not earlier:
        ledger.begin(batch)
        run(active)
        ledger.end(batch)
        return
    stopped = []  # their counts stay until the batch is done, so a later death in it never resets them
    for state in active:
        key = f"{stage}-{state.seq}"
        deaths = earlier + ledger.deaths(key)
        if deaths >= MAX_DEATHS:
            state.stop(stage, worker_died(deaths))
            stopped.append(key)
        else:
            ledger.begin(key)
            run([state])
            ledger.end(key)
    for key in [*stopped, batch]:
        ledger.end(key)


def read_recorded(reader: ReadStage, chunk: Chunk, duplicates: Mapping[int, Duplicate],
                  ledger: DeathLedger) -> list[PhotoState]:
    """``reader.read(chunk, duplicates)`` recorded in ``ledger``; photo by photo after a death, a photo whose
    worker died :data:`MAX_DEATHS` times left unread. ``read`` leaves the copies it is given unread, so one
    photo is read alone by passing the others of its chunk as such copies (and dropping their states)."""
    seqs = chunk_seqs(reader.inputs_dir, chunk)
    batch = _batch_key("read", seqs)
    earlier = ledger.deaths(batch)
    if not earlier:
        ledger.begin(batch)
        states = reader.read(chunk, duplicates)
        ledger.end(batch)
        return states
    states, stopped = [], []
    for seq in seqs:
        key = f"read-{seq}"
        deaths = earlier + ledger.deaths(key)
        unread = {other: _UNREAD for other in seqs if other != seq or deaths >= MAX_DEATHS}
        if deaths < MAX_DEATHS:
            ledger.begin(key)
        state = next(s for s in reader.read(chunk, {**unread, **duplicates}) if s.seq == seq)
        if deaths >= MAX_DEATHS:
            stopped.append(key)
            if seq not in duplicates:
                state.id = None
                state.stop("read", worker_died(deaths))
        else:
            ledger.end(key)
        states.append(state)
    for key in [*stopped, batch]:
        ledger.end(key)
    return states
