"""Running the build's stages: on Ray Data (local or a cluster) or, for ``--workers 0``, in this process.

Ray path: the pending chunks (row groups of input shards) become a dataset of small descriptors;
a task reads each chunk and runs every stage up to the first actor stage on it in one call; model stages
(Depth Anything, SAM) run in actor pools, and so does the render stage when the cluster has GPUs (one actor
of each such stage per GPU, sharing it; else model actors take at most one CPU, always leaving one for the
tasks); between actors, the stages run in tasks, each a run of consecutive stages in one call. Photos travel
between calls as columnar batches (:func:`dataset_tools.photo_state.to_columns`). The last call writes the
finished photos' rows to OUT itself (:mod:`dataset_tools.shard_parts`) and hands the driver one small record
per part, which it consumes with ``iter_rows`` while the rest stream on; join actors (:class:`RayJoiner`)
join the parts of each complete shard. Before them, one pass of tasks hashes every input for :mod:`dataset_tools.dedup`.
Every stage call on Ray is recorded in :mod:`dataset_tools.death_ledger`: Ray Data retries a task whose worker
died for ever, and the ledger makes every retry single out the photos of the batch until the one that keeps
killing its worker is an error, so the retries end.
Workers read the photos and ``OUT/_work/inputs`` and write OUT by path or object-store URL, so on a multi-node
cluster both must be on storage every node sees (an object store is).
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from estimators.backends import MODEL_DEPTH_BACKENDS

from .build_config import BuildConfig
from .death_ledger import ATTEMPTS, DeathLedger, read_recorded, run_states
from .dedup import Duplicate, chunk_ids, decode, encode
from .input_shards import Chunk
from .photo_state import PhotoState, from_columns, to_columns
from .ray_join import DEFAULT_RAY_TIMEOUT, join_cluster
from .ray_reaper import child_pids, start_reaper, stop_reaper
from .shard_parts import record_columns, write_parts
from .stages import PHOTO_STAGES, DepthStage, GroupStage, MaskStage, ReadStage
from .writer import Layout, merge_parts

#: Times one shard's join is handed to a join actor before an actor failure is raised (a lost node's actors
#: restart elsewhere; a join is idempotent).
JOIN_TRIES = 5
#: Photos per call of an actor (model and GPU render stages).
MODEL_BATCH = 8
#: Upper bound on the blocks of the descriptor dataset (each block is one task's worth of chunks).
MAX_BLOCKS = 10_000
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_STAGE_CACHE: dict[Any, Any] = {}
_QUIET = {"log_to_driver": False, "logging_level": logging.ERROR}


@contextmanager
def ray_session(address: Optional[str], workers: Optional[int], timeout: float = DEFAULT_RAY_TIMEOUT) -> Iterator[None]:
    """Join the cluster at ``address`` ("auto" or HOST:PORT; UserError after about ``timeout`` s when it cannot),
    or start a local Ray (loopback only) with ``workers`` CPUs (None = all), reaped when this process ends
    (:mod:`dataset_tools.ray_reaper`); a Ray already initialised in this process is used as it is."""
    if address is None:
        os.environ.setdefault(_LOCAL_ONLY_ENV, "0")  # read when ray is imported: local Ray binds 127.0.0.1
    import ray

    if ray.is_initialized():
        yield
        return
    reaper = None
    try:
        if address is None:
            before = child_pids()
            ray.init(address="local", num_cpus=workers, include_dashboard=False, **_QUIET)
            reaper = start_reaper(child_pids() - before)  # the local Ray ends with this process, even after kill -9
        else:
            join_cluster(address, timeout, **_QUIET)
        yield
    finally:
        ray.shutdown()
        if reaper is not None:
            stop_reaper(reaper)


def _stage(cls: type, kwargs: dict[str, Any]) -> Any:
    """A model-free stage, built once per worker process."""
    key = (cls, tuple(sorted(kwargs.items())))
    stage = _STAGE_CACHE.get(key)
    if stage is None:
        stage = _STAGE_CACHE[key] = cls(**kwargs)
    return stage


def _run_stages(stages: Sequence[tuple[type, dict[str, Any]]], states: list[PhotoState], ledger: DeathLedger) -> None:
    """Run the model-free ``stages`` (class, constructor arguments) on ``states``, each call in the ledger."""
    for cls, kwargs in stages:
        stage = _stage(cls, kwargs)
        run_states(stage.name, stage.run, states, ledger)


def _segment_task(batch: dict[str, Any], stages: Sequence[tuple[type, dict[str, Any]]], read: Optional[dict[str, Any]],
                  work: Optional[str], ledger: str) -> dict[str, Any]:
    """Ray task of a run of model-free stages: photos in (or, with ``read`` (the read stage's arguments), chunk
    descriptors read here), photos out (or, with ``work``, their rows written there and part records out)."""
    recorded = DeathLedger(ledger)
    if read is None:
        states = from_columns(batch)
    else:
        reader = _stage(ReadStage, read)
        states = []
        for shard, group, duplicates in zip(batch["shard"], batch["row_group"], batch["duplicates"]):
            states.extend(read_recorded(reader, Chunk(int(shard), int(group)), decode(duplicates), recorded))
    _run_stages(stages, states, recorded)
    return to_columns(states) if work is None else record_columns(write_parts(work, states))


class RecordedActor:
    """Ray Data actor of a model stage (one model per actor), its calls recorded in the death ledger."""

    def __init__(self, stage: type, kwargs: dict[str, Any], ledger: str) -> None:
        self.stage = stage(**kwargs)
        self.ledger = DeathLedger(ledger)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        states = from_columns(batch)
        run_states(self.stage.name, self.stage.run, states, self.ledger)
        return to_columns(states)


def _needs_model(cls: type, config: BuildConfig) -> bool:
    return (cls is DepthStage and config.depth in MODEL_DEPTH_BACKENDS) or (cls is MaskStage and config.mask == "sam")


@dataclass(frozen=True)
class StagePlan:
    """How one per-photo stage runs on Ray: as fused tasks (``actors`` 0) or in a pool of up to ``actors``
    actors, each with ``num_cpus`` CPUs and ``num_gpus`` of a GPU."""

    stage: type
    num_cpus: float
    num_gpus: float = 0.0
    actors: int = 0

    def kwargs(self, config: BuildConfig) -> dict[str, Any]:
        """The stage's constructor arguments: a render actor holding a GPU renders there (CUDA when torch sees it)."""
        if self.stage is GroupStage and self.num_gpus:
            return {"config": config, "device": None}
        return {"config": config}


def stage_plan(config: BuildConfig, resources: Mapping[str, float]) -> tuple[float, list[StagePlan]]:
    """The CPUs of a task and the plan of every stage in :data:`PHOTO_STAGES` on a cluster with ``resources``
    (``ray.cluster_resources()``).

    Model stages always run in actors (a model loads once per actor); with GPUs the render stage does too,
    when it has anything to render. Actor stages share each GPU (one actor of each per GPU, else the
    later pools could never start); on CPUs an actor takes at most one and never the last one the tasks need.
    """
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    actor_stages = [cls for cls in PHOTO_STAGES if _needs_model(cls, config)
                    or (gpus and cls is GroupStage and config.synthetic_levels > 0)]
    task_cpus = 1.0 if cpus >= 2 or not actor_stages else cpus / 2
    actor_cpus = min(1.0, (cpus - task_cpus) / max(1, len(actor_stages)))
    plans = []
    for cls in PHOTO_STAGES:
        if cls in actor_stages:
            size = gpus or max(1, int((cpus - task_cpus) / len(actor_stages) / actor_cpus))
            plans.append(StagePlan(cls, actor_cpus, 1 / len(actor_stages) if gpus else 0.0, size))
        else:
            plans.append(StagePlan(cls, task_cpus))
    return task_cpus, plans


def _quiet_data() -> None:
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows its own progress over source photos
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _descriptors(chunks: list[Chunk], duplicates: Mapping[Chunk, Mapping[int, Duplicate]]) -> Any:
    """The dataset of chunk descriptors (with each chunk's copies not kept, as JSON)."""
    import ray

    items = [{"shard": c.shard, "row_group": c.row_group, "duplicates": encode(duplicates.get(c, {}))}
             for c in chunks]
    return ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))


def _ids_batch(batch: dict[str, Any], inputs_dir: str) -> dict[str, list]:
    """Ray task of the hashing pass: one JSON list of (seq, id, sidecar bits) per chunk descriptor."""
    return {"ids": [json.dumps(chunk_ids(Path(inputs_dir), Chunk(int(shard), int(group))))
                    for shard, group in zip(batch["shard"], batch["row_group"])]}


def ray_ids(inputs_dir: str, chunks: list[Chunk]) -> Iterator[tuple[int, str, int]]:
    """(seq, id, sidecar bits) of the readable inputs of ``chunks``, hashed by Ray tasks on the current Ray session."""
    _quiet_data()
    ds = _descriptors(chunks, {}).map_batches(_ids_batch, batch_size=1, fn_kwargs={"inputs_dir": inputs_dir})
    for row in ds.iter_rows():
        for seq, pid, bits in json.loads(row["ids"]):
            yield int(seq), pid, int(bits)


def local_ids(inputs_dir: str, chunks: list[Chunk]) -> Iterator[tuple[int, str, int]]:
    """The same hashing pass in this process (``--workers 0``)."""
    for chunk in chunks:
        yield from chunk_ids(Path(inputs_dir), chunk)


def _segments(plans: list[StagePlan]) -> list[tuple[Optional[StagePlan], list[StagePlan]]]:
    """The plans cut into steps: (an actor stage's plan, []) or (None, consecutive task stages' plans); the first
    step is always a task step (it reads), and so is the last (it writes)."""
    steps: list[tuple[Optional[StagePlan], list[StagePlan]]] = [(None, [])]
    for plan in plans:
        if plan.actors:
            steps.append((plan, []))
        elif steps[-1][0] is not None:
            steps.append((None, [plan]))
        else:
            steps[-1][1].append(plan)
    if steps[-1][0] is not None:
        steps.append((None, []))
    return steps


def ray_records(config: BuildConfig, layout: Layout, chunks: list[Chunk],
                duplicates: Mapping[Chunk, Mapping[int, Duplicate]]) -> Iterator[dict[str, Any]]:
    """The part records (:mod:`dataset_tools.shard_parts`) of ``chunks``, computed and written by Ray Data on the
    current Ray session, as they come; ``duplicates`` holds the copies not kept of repeated inputs by chunk."""
    import ray

    _quiet_data()
    inputs_dir = layout.where(layout.inputs)
    work = layout.where(layout.work)
    ledger = layout.where(layout.work / ATTEMPTS)
    task_cpus, plans = stage_plan(config, ray.cluster_resources())
    steps = _segments(plans)
    ds = _descriptors(chunks, duplicates)
    for index, (actor, tasks) in enumerate(steps):
        if actor is not None:
            resources = {"num_cpus": actor.num_cpus, **({"num_gpus": actor.num_gpus} if actor.num_gpus else {})}
            # (Ray 2.60 logs one "constructor arguments in the object store" line per actor: ray-project/ray#57733)
            ds = ds.map_batches(RecordedActor, batch_size=MODEL_BATCH,
                                fn_constructor_kwargs={"stage": actor.stage, "kwargs": actor.kwargs(config),
                                                       "ledger": ledger},
                                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actor.actors), **resources)
            continue
        first, last = index == 0, index == len(steps) - 1
        ds = ds.map_batches(_segment_task, batch_size=1 if first else None, num_cpus=task_cpus,
                            fn_kwargs={"stages": [(p.stage, p.kwargs(config)) for p in tasks],
                                       "read": {"config": config, "inputs_dir": inputs_dir} if first else None,
                                       "work": work if last else None, "ledger": ledger})
    for row in ds.iter_rows():
        yield dict(row)


class _JoinActor:
    """Ray actor that joins the parts of complete shards (:func:`dataset_tools.writer.merge_parts`)."""

    def __init__(self, layout: Layout, total: int) -> None:
        self.layout, self.total = layout, total

    def join(self, shard: int, parts: list[str]) -> int:
        merge_parts(self.layout, shard, self.total, parts)
        return shard


class RayJoiner:
    """Joins complete shards' parts in a pool of Ray actors (one per node, at least two, spread over the nodes;
    no CPU reserved: the work is mostly reading and writing), while the driver goes on. The actors start with
    the build, so a local Ray's reaper knows their processes; a lost actor is restarted and its join retried
    (a join is idempotent), handed to the next actor when Ray's own retries of it end (up to JOIN_TRIES times).
    An OSError of a join is raised in the driver as itself."""

    def __init__(self, layout: Layout, total: int) -> None:
        import ray

        layout = Layout(layout.where(layout.out))
        size = max(2, len([node for node in ray.nodes() if node.get("Alive")]))
        actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3, scheduling_strategy="SPREAD")(_JoinActor)
        self.actors = [actor.remote(layout, total) for _ in range(size)]
        self.pending: dict[Any, tuple[int, list[str], int]] = {}  # join -> (shard, parts, tries so far)
        self.submitted = 0

    def submit(self, shard: int, parts: list[str], tries: int = 0) -> None:
        """Have one actor join ``parts`` into the data file of ``shard``."""
        actor = self.actors[self.submitted % len(self.actors)]
        self.submitted += 1
        self.pending[actor.join.remote(shard, parts)] = (shard, parts, tries + 1)

    def finished(self, wait: bool = False) -> list[int]:
        """The shards joined since the last call; with ``wait``, after every submitted one is."""
        import ray

        done = []
        while self.pending:
            refs = list(self.pending)
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=None if wait else 0)
            for ref in ready:
                shard, parts, tries = self.pending.pop(ref)
                try:
                    done.append(ray.get(ref))
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, OSError):
                        raise exc.cause from None
                    raise
                except ray.exceptions.RayActorError:  # its actor was lost past Ray's retries (a node went away)
                    if tries >= JOIN_TRIES:
                        raise
                    self.submit(shard, parts, tries)
            if not wait:
                break
        return done


def local_records(config: BuildConfig, layout: Layout, chunks: list[Chunk],
                  duplicates: Mapping[Chunk, Mapping[int, Duplicate]]) -> Iterator[dict[str, Any]]:
    """The same stages and part records, one chunk at a time in this process, without Ray (``--workers 0``).

    Like one Ray worker, it runs torch on one thread: the renderer's many small operations lose
    far more to thread hand-offs than they gain.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reader = ReadStage(config, str(layout.inputs))
        stages = [GroupStage(config, device=None) if cls is GroupStage else cls(config) for cls in PHOTO_STAGES]
        for chunk in chunks:
            states = reader.read(chunk, duplicates.get(chunk))
            for stage in stages:
                stage.run(states)
            yield from write_parts(layout.work, states)
    finally:
        torch.set_num_threads(threads)
