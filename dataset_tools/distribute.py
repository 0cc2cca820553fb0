"""Running the build's stages: on Ray Data (local or a cluster) or, for ``--workers 0``, in this process.

Ray path: the pending chunks (row groups of input shards) become a dataset of small descriptors;
the read stage expands each into photo states, model stages (Depth Anything, SAM) run in actor pools
(one GPU per actor when the cluster has GPUs, shared when both models run; else at most one CPU, always
leaving one for the tasks), model-free stages run as tasks that Ray fuses into one, and the driver consumes finished states with ``iter_rows`` while the rest stream on.
Workers read the photos and ``OUT/_work/inputs`` by path, so on a multi-node cluster both must be on
storage every node sees.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from estimators.cli_util import UserError

from .build_config import BuildConfig
from .input_shards import Chunk
from .photo_state import PhotoState, one_line, unpack
from .stages import PHOTO_STAGES, DepthStage, GroupStage, MaskStage, ReadStage

#: Photos per call of a model actor.
MODEL_BATCH = 8
#: Upper bound on the blocks of the descriptor dataset (each block is one task's worth of chunks).
MAX_BLOCKS = 10_000
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_STAGE_CACHE: dict[Any, Any] = {}


@contextmanager
def ray_session(address: Optional[str], workers: Optional[int]) -> Iterator[None]:
    """Join the cluster at ``address`` ("auto" or HOST:PORT), or start a local Ray (loopback only) with
    ``workers`` CPUs (None = all); a Ray already initialised in this process is used as it is."""
    if address is None:
        os.environ.setdefault(_LOCAL_ONLY_ENV, "0")  # read when ray is imported: local Ray binds 127.0.0.1
    import ray

    if ray.is_initialized():
        yield
        return
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        ray.init(address="local", num_cpus=workers, include_dashboard=False, **quiet)
    else:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot join the Ray cluster at {address}: {_join_failure(exc)}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _join_failure(exc: BaseException) -> str:
    """One line on why joining a cluster failed, with the fix for Ray's token authentication."""
    chain, cause = [], exc
    while cause is not None and len(chain) < 8:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    text = one_line(exc)
    if any("Authentication" in part or "auth token" in part.lower() for part in chain):
        text += ("; the cluster uses token authentication: set RAY_AUTH_MODE=token and give its token in "
                 "RAY_AUTH_TOKEN or ~/.ray/auth_token")
    return text


def _cached_stage(batch: dict[str, Any], cls: type, kwargs: dict[str, Any]) -> dict[str, list]:
    """Run a model-free stage in a Ray task, building it once per worker process."""
    key = (cls, tuple(sorted(kwargs.items())))
    stage = _STAGE_CACHE.get(key)
    if stage is None:
        stage = _STAGE_CACHE[key] = cls(**kwargs)
    return stage(batch)


def _needs_model(cls: type, config: BuildConfig) -> bool:
    return (cls is DepthStage and config.depth == "depth-anything") or (cls is MaskStage and config.mask == "sam")


def ray_states(config: BuildConfig, inputs_dir: str, chunks: list[Chunk]) -> Iterator[PhotoState]:
    """Finished photo states of ``chunks``, computed by Ray Data on the current Ray session, as they come."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows its own progress over source photos
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    model_stages = [cls for cls in PHOTO_STAGES if _needs_model(cls, config)]

    # CPU share of a task and of a model actor: actors never take the last CPU the tasks need.
    task_cpus = 1.0 if cpus >= 2 or not model_stages else cpus / 2
    actor_cpus = min(1.0, (cpus - task_cpus) / max(1, len(model_stages)))
    items = [{"shard": c.shard, "row_group": c.row_group} for c in chunks]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
    ds = ds.map_batches(_cached_stage, batch_size=1, num_cpus=task_cpus,
                        fn_kwargs={"cls": ReadStage, "kwargs": {"config": config, "inputs_dir": inputs_dir}})
    for cls in PHOTO_STAGES:
        if cls in model_stages:
            # One GPU per actor; two model stages share each GPU (else the second pool could never start).
            per_actor = {"num_cpus": actor_cpus, **({"num_gpus": 1 / len(model_stages)} if gpus else {})}
            size = gpus or max(1, int((cpus - task_cpus) / len(model_stages) / actor_cpus))
            # (Ray 2.60 logs one "constructor arguments in the object store" line per actor: ray-project/ray#57733)
            ds = ds.map_batches(cls, batch_size=MODEL_BATCH, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size),
                                fn_constructor_kwargs={"config": config}, **per_actor)
        else:
            ds = ds.map_batches(_cached_stage, batch_size=None, num_cpus=task_cpus,
                                fn_kwargs={"cls": cls, "kwargs": {"config": config}})
    for row in ds.iter_rows():
        yield from unpack({"state": [row["state"]]})


def local_states(config: BuildConfig, inputs_dir: str, chunks: list[Chunk]) -> Iterator[PhotoState]:
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
            states = reader.read(chunk)
            for stage in stages:
                stage.run(states)
            yield from states
    finally:
        torch.set_num_threads(threads)
