"""``bokeh build`` driver: check inputs and OUT and lock OUT, start or join Ray, shard the inputs, find repeated
inputs, run the stages (the workers write the rows), publish each shard when its photos are all in, summarise.

Every failure is one line and leaves OUT in a state that a rerun or ``--resume`` accepts: a new build that fails
before its inputs are sharded removes what it wrote (a plain rerun starts again); later failures keep the work
folder and the finished shards for ``--resume``.
"""
from __future__ import annotations

import errno
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from estimators.backends import MODEL_DEPTH_BACKENDS, default_depth_model
from estimators.cli_util import UserError

from . import storage
from .atomic import write_atomic
from .build_config import BuildConfig
from .build_stats import BuildStats
from .dedup import by_chunk, ensure_duplicates
from .input_shards import MANIFEST, Chunk, chunks_of, write_input_shards
from .input_stamp import CAPTION, DEPTH_SIDECAR, MASK_SIDECAR, InputsChanged
from .out_guard import LOCK, MARKER, check_apart, lock_out, read_marker, write_marker
from .photo_state import one_line
from .ray_join import DEFAULT_RAY_TIMEOUT
from .sources import InputError, iter_sources
from .writer import Layout, ShardWriter, build_entries, finish, remove_outputs, remove_work


class BuildFailed(RuntimeError):
    """The distributed run itself broke (not one photo: the pipeline); the message is one line."""


def check_out(layout: Layout, config: BuildConfig, resume: bool, overwrite: bool) -> bool:
    """Check that OUT may be used, writing nothing; True when ``--resume`` finds a finished build (nothing to do).

    OUT must be new or empty, or hold a build (its marker): a finished one is replaced with ``--overwrite``, an
    unfinished one continued with ``--resume`` (same settings) or replaced with ``--overwrite``. Files no build
    wrote are never removed, so ``--overwrite`` refuses a non-empty OUT without the marker.
    """
    out = layout.out
    if storage.is_file(out) or (not layout.remote and out.exists() and not out.is_dir()):
        raise UserError(f"{out} exists and is not a directory")
    others = [name for name in storage.list_names(out) if name not in (MARKER, LOCK)]
    if not others:
        return False
    if not read_marker(out):
        if overwrite:
            raise UserError(f"{out} holds files that no build wrote (it has no {MARKER} marker): --overwrite only "
                            "replaces a build's own files; choose a new or empty directory")
        if resume:
            raise UserError(f"{out} holds no build to resume (it has no {MARKER} marker): choose a new or empty "
                            "directory")
        raise UserError(f"{out} is not empty and holds no build: choose a new or empty directory")
    if overwrite:
        return False
    if layout.is_finished():
        if resume:
            return True
        raise UserError(f"{out} holds a finished build: pass --overwrite to replace it (--resume keeps it), "
                        "or choose another directory")
    if not resume:
        raise UserError(f"{out} holds an unfinished build: pass --resume to continue it, --overwrite to start "
                        "again, or choose another directory")
    if storage.is_file(layout.config):
        changed = config.differences(json.loads(storage.read_bytes(layout.config, 2**20, "settings")))
        if changed:
            raise UserError(f"{out} was started with other settings ({', '.join(changed)}): resume with the same "
                            "flags, or pass --overwrite to start again")
    return False


def make_out(layout: Layout, config: BuildConfig, overwrite: bool) -> None:
    """Make a checked OUT ready: with ``--overwrite`` remove a previous build's files first; mark OUT as a
    build's; store the settings."""
    if overwrite:
        remove_outputs(layout)
    if not read_marker(layout.out):
        write_marker(layout.out)
    storage.make_dirs(layout.work)
    if not storage.is_file(layout.config):
        write_atomic(layout.config, json.dumps(config.to_dict(), indent=2))


def _shard_inputs(inputs: Sequence[str], layout: Layout, config: BuildConfig) -> list[int]:
    """The photo counts of the input shards, written or (resumed) checked against the inputs."""
    def listing() -> Iterator[Any]:
        return iter_sources(inputs, image_column=config.image_column, caption_column=config.caption_column)

    try:
        counts = write_input_shards(listing, layout.inputs, config.shard_size)
    except InputError as exc:
        raise UserError(str(exc)) from None
    except InputsChanged as exc:
        raise UserError(f"the inputs of the build in {layout.out} changed: {exc}: resume needs the same inputs: "
                        "restore them, or pass --overwrite to start again") from None
    if not counts:
        raise UserError("no photos found in the inputs (folders are searched for image files, recursively)")
    return counts


def check_models(config: BuildConfig) -> None:
    """Fail fast, in the driver, when a requested model is not available (reads its config only)."""
    if config.depth not in MODEL_DEPTH_BACKENDS and config.mask != "sam":
        return
    from transformers import AutoConfig

    from estimators.mask import DEFAULT_SAM_MODEL
    from estimators.model_loading import load_pretrained

    if config.depth in MODEL_DEPTH_BACKENDS:
        load_pretrained(AutoConfig.from_pretrained, config.depth_model or default_depth_model(config.depth),
                        what="depth model", avoid="--depth sidecar", check_hub=True)
    if config.mask == "sam":
        load_pretrained(AutoConfig.from_pretrained, config.sam_model or DEFAULT_SAM_MODEL,
                        what="SAM model", avoid="--mask depth")


def _ray_failures(items: Iterator[Any]) -> Iterator[Any]:
    """``items`` of a Ray Data pipeline, with a failure of the pipeline (Ray wraps worker errors) as one line."""
    try:
        yield from items
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors; report one line
        from estimators.model_loading import ModelUnavailableError

        text = str(exc)
        marker = f"{ModelUnavailableError.__name__}: "
        if marker in text:
            raise ModelUnavailableError(text.split(marker, 1)[1].splitlines()[0]) from None
        raise BuildFailed(f"the Ray pipeline failed ({type(exc).__name__}: {one_line(exc)}); "
                          "finished shards are kept: rerun with --resume") from None


@contextmanager
def _session(ray_address: Optional[str], workers: Optional[int], ray_timeout: float) -> Iterator[None]:
    """The Ray session of the build (none for ``--workers 0``)."""
    if workers == 0:
        yield
        return
    from .distribute import ray_session

    with ray_session(ray_address, workers, ray_timeout):
        yield


def _records(config: BuildConfig, layout: Layout, counts: list[int], chunks: list[Chunk],
             workers: Optional[int]) -> Iterator[dict[str, Any]]:
    """Part records (:mod:`dataset_tools.shard_parts`) of ``chunks``, after deciding (or reloading) which copies of
    repeated inputs are not kept."""
    from .distribute import local_ids, local_records, ray_ids, ray_records

    on_ray = workers != 0
    ids, records = (ray_ids, ray_records) if on_ray else (local_ids, local_records)
    guard = _ray_failures if on_ray else iter
    inputs = layout.where(layout.inputs)
    every = [chunk for shard, count in enumerate(counts) for chunk in chunks_of(shard, count)]
    duplicates = ensure_duplicates(layout.inputs, counts, lambda: guard(ids(inputs, every)), sidecars_read(config))
    if duplicates:
        print(f"{len(duplicates)} input(s) repeat the bytes of another one: each goes to errors.jsonl "
              "(stage dedup)", file=sys.stderr)
    yield from guard(records(config, layout, chunks, by_chunk(duplicates, counts)))


def _process(config: BuildConfig, layout: Layout, counts: list[int], workers: Optional[int], progress: bool) -> None:
    """Run the photos of every shard without a data file, publishing each output shard when it completes."""
    from tqdm import tqdm

    joiner = None
    if workers != 0:
        from .distribute import RayJoiner

        joiner = RayJoiner(layout, len(counts))
    writer = ShardWriter(layout, counts, joiner)
    pending = writer.pending()
    chunks = [chunk for shard in pending for chunk in chunks_of(shard, counts[shard])]
    if not chunks:
        return
    todo = sum(counts[shard] for shard in pending)
    print(f"building {layout.out}: {sum(counts)} photos in {len(counts)} shards, {todo} to process", file=sys.stderr)
    with tqdm(total=todo, unit="photo", desc="build", disable=None if progress else True, file=sys.stderr) as bar:
        def report(wait: bool = False) -> None:  # one line per shard: the live record in logs where no bar is drawn
            for shard, stats in writer.published(wait):
                bar.write(f"wrote {layout.data_file(shard, len(counts)).name}: {stats.photos} photos, "
                          f"{stats.kept} kept, {stats.rows} rows", file=sys.stderr)

        for record in _records(config, layout, counts, chunks, workers):
            writer.add(record)
            report()
            seen = writer.seen
            bar.update(int(record["photos"]))
            bar.set_postfix(kept=seen.kept, filtered=sum(seen.filtered.values()),
                            failed=sum(seen.failed.values()), refresh=False)
        report(wait=True)
    unfinished = writer.pending()
    if unfinished:
        raise BuildFailed(f"the pipeline ended with {len(unfinished)} shard(s) unfinished; rerun with --resume")


def sidecars_read(config: BuildConfig) -> int:
    """The sidecar bits (:mod:`dataset_tools.input_stamp`) that a build with ``config`` reads."""
    return (CAPTION | (DEPTH_SIDECAR if config.depth == "sidecar" else 0)
            | (MASK_SIDECAR if config.mask == "sidecar" else 0))


def _undo(layout: Layout, marked: bool) -> None:
    """Remove what a new build wrote before it processed any photo (its marker too, when OUT had none)."""
    remove_work(layout)
    if not marked and not build_entries(layout):
        storage.remove(layout.out / MARKER)


def _io_failure(exc: OSError, undone: bool) -> BuildFailed:
    """One line for a file that could not be read or written, with what to do next."""
    where = f" ({exc.filename})" if exc.filename else ""
    text = f"{exc.strerror or one_line(exc)}{where}"
    then = "then run the build again" if undone else "then rerun with --resume (finished shards are kept)"
    space = "free some space, " if exc.errno == errno.ENOSPC else ""
    return BuildFailed(f"{text}: {space}{then}")


def build(
    inputs: Sequence[str],
    out: str | Path,
    config: BuildConfig,
    *,
    ray_address: Optional[str] = None,
    workers: Optional[int] = None,
    ray_timeout: float = DEFAULT_RAY_TIMEOUT,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildStats:
    """Build (or finish) the dataset in ``out`` and return its statistics.

    OUT is locked before anything else, then checked; Ray is joined (or started) before OUT is written, so a
    cluster that cannot be reached leaves OUT as it was.
    """
    check_models(config)
    layout = Layout(out)
    check_apart(inputs, layout.out)
    with lock_out(layout.out):
        if check_out(layout, config, resume, overwrite):
            remove_work(layout)
            print(f"{layout.out} already holds a finished build: nothing to do", file=sys.stderr)
            return BuildStats.from_dict(json.loads(storage.read_bytes(layout.stats, 2**20, "stats")))
        new = overwrite or not storage.exists(layout.work)
        marked = read_marker(layout.out)
        start = time.perf_counter()
        try:
            with _session(ray_address, workers, ray_timeout):
                make_out(layout, config, overwrite)
                counts = _shard_inputs(inputs, layout, config)
                _process(config, layout, counts, workers, progress)
            return finish(layout, counts, config.to_dict(), time.perf_counter() - start)
        except BaseException as exc:
            undo = new and (isinstance(exc, UserError) or not storage.is_file(layout.inputs / MANIFEST))
            if undo:
                _undo(layout, marked)
            if isinstance(exc, OSError):
                raise _io_failure(exc, undo) from None
            raise
