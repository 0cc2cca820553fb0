"""Running the build's stages: on Ray Data (local or a cluster) or, for ``--workers 0``, in this process.

Ray path: the pending chunks (row groups of input shards) become a dataset of small descriptors;
the read stage expands each into photo states; model stages (Depth Anything, SAM) run in actor pools,
and so does the render stage when the cluster has GPUs (one actor of each such stage per GPU, sharing
it; else model actors take at most one CPU, always leaving one for the tasks); the other stages run as
tasks that Ray fuses into one, and the driver consumes finished states with ``iter_rows`` while the rest
stream on. Before them, one pass of tasks hashes every input for :mod:`dataset_tools.dedup`. Every stage call
on Ray is recorded in :mod:`dataset_tools.death_ledger`: Ray Data retries a task whose worker died for ever,
and the ledger makes every retry single out the photos of the batch until the one that keeps killing its
worker is an error, so the retries end.
Workers read the photos and ``OUT/_work/inputs`` by path, so on a multi-node cluster both must be on
storage every node sees.
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from estimators.backends import MODEL_DEPTH_BACKENDS

from .build_config import BuildConfig
from .death_ledger import ATTEMPTS, DeathLedger, read_recorded, run_states
from .dedup import Duplicate, chunk_ids, decode, encode
from .input_shards import Chunk
from .photo_state import PhotoState, pack, unpack
from .ray_join import DEFAULT_RAY_TIMEOUT, join_cluster
from .ray_reaper import child_pids, start_reaper, stop_reaper
from .stages import PHOTO_STAGES, DepthStage, GroupStage, MaskStage, ReadStage

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


def _read_task(batch: dict[str, Any], kwargs: dict[str, Any], ledger: str) -> dict[str, list]:
    """Ray task of the read stage: chunk descriptors in, pickled photo states out, recorded in the death ledger."""
    reader = _stage(ReadStage, kwargs)
    states: list[PhotoState] = []
    for shard, group, duplicates in zip(batch["shard"], batch["row_group"], batch["duplicates"]):
        states.extend(read_recorded(reader, Chunk(int(shard), int(group)), decode(duplicates), DeathLedger(ledger)))
    return pack(states)


def _stage_task(batch: dict[str, Any], cls: type, kwargs: dict[str, Any], ledger: str) -> dict[str, list]:
    """Ray task of a model-free stage, recorded in the death ledger."""
    stage = _stage(cls, kwargs)
    states = unpack(batch)
    run_states(stage.name, stage.run, states, DeathLedger(ledger))
    return pack(states)


class RecordedActor:
    """Ray Data actor of a model stage (one model per actor), its calls recorded in the death ledger."""

    def __init__(self, stage: type, kwargs: dict[str, Any], ledger: str) -> None:
        self.stage = stage(**kwargs)
        self.ledger = DeathLedger(ledger)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        states = unpack(batch)
        run_states(self.stage.name, self.stage.run, states, self.ledger)
        return pack(states)


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


def ray_states(config: BuildConfig, inputs_dir: str, chunks: list[Chunk],
               duplicates: Mapping[Chunk, Mapping[int, Duplicate]]) -> Iterator[PhotoState]:
    """Finished photo states of ``chunks``, computed by Ray Data on the current Ray session, as they come;
    ``duplicates`` holds the copies not kept of repeated inputs by chunk."""
    import ray

    _quiet_data()
    ledger = str(Path(inputs_dir).parent / ATTEMPTS)
    task_cpus, plans = stage_plan(config, ray.cluster_resources())
    ds = _descriptors(chunks, duplicates).map_batches(
        _read_task, batch_size=1, num_cpus=task_cpus,
        fn_kwargs={"kwargs": {"config": config, "inputs_dir": inputs_dir}, "ledger": ledger})
    for plan in plans:
        if plan.actors:
            resources = {"num_cpus": plan.num_cpus, **({"num_gpus": plan.num_gpus} if plan.num_gpus else {})}
            # (Ray 2.60 logs one "constructor arguments in the object store" line per actor: ray-project/ray#57733)
            ds = ds.map_batches(RecordedActor, batch_size=MODEL_BATCH,
                                fn_constructor_kwargs={"stage": plan.stage, "kwargs": plan.kwargs(config),
                                                       "ledger": ledger},
                                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.actors), **resources)
        else:
            ds = ds.map_batches(_stage_task, batch_size=None, num_cpus=plan.num_cpus,
                                fn_kwargs={"cls": plan.stage, "kwargs": plan.kwargs(config), "ledger": ledger})
    for row in ds.iter_rows():
        yield from unpack({"state": [row["state"]]})


def local_states(config: BuildConfig, inputs_dir: str, chunks: list[Chunk],
                 duplicates: Mapping[Chunk, Mapping[int, Duplicate]]) -> Iterator[PhotoState]:
    """The same stages run one chunk at a time in this process, without Ray (``--workers 0``).

    Like one Ray worker, it runs torch on one thread: the renderer's many small operations lose
    far more to thread hand-offs than they gain (about 15x slower at 256 px on two busy cores).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reader = ReadStage(config, inputs_dir)
        stages = [GroupStage(config, device=None) if cls is GroupStage else cls(config) for cls in PHOTO_STAGES]
        for chunk in chunks:
            states = reader.read(chunk, duplicates.get(chunk))
            for stage in stages:
                stage.run(states)
            yield from states
    finally:
        torch.set_num_threads(threads)
