"""Training checkpoints: ``OUTPUT/checkpoints/step-NNNNNNN/`` holding

- ``adapter/`` config.json + model.safetensors (loadable by ``Bokeh*Adapter.from_pretrained``);
- ``model/<name>/`` every base network that trains (safetensors, by save_pretrained), plus the
  tokenizer and scheduler when the base is a local folder (so the tiny model is a complete folder);
- ``optimizer.pt``, ``lr_scheduler.pt``, ``rng.pt``: read back with ``torch.load(weights_only=True)``;
- ``trained_weights.safetensors`` when the run averages its weights (``optim.ema_decay``): then ``adapter/`` and
  ``model/`` hold the average, what sampling should use, and this file the optimizer's own weights, to resume;
- ``state.json``: the step (the data position is the step: batches are drawn per index).

A checkpoint is written under a temporary name and renamed into place, so a run killed while
saving never leaves a half checkpoint that ``--resume latest`` would pick.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn

from estimators.cli_util import UserError
from trainer.ema import WeightAverage, load_trained, save_trained

PATTERN = re.compile(r"^step-(\d+)$")
TRAINED_WEIGHTS = "trained_weights.safetensors"


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(output_dir: Path, resume: str) -> Path:
    """The checkpoint folder for ``--resume``: "latest" or a path."""
    if resume == "latest":
        dirs = checkpoint_dirs(output_dir)
        if not dirs:
            raise UserError(f"--resume latest: no checkpoint in {Path(output_dir) / 'checkpoints'}")
        return dirs[-1]
    path = Path(resume).expanduser()
    if not (path / "state.json").is_file():
        raise UserError(f"--resume {resume}: not a checkpoint folder (no state.json)")
    return path


def rng_state() -> dict[str, Any]:
    """The torch, CUDA, numpy and python generator states, in types ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [int(version), list(internal), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def _plain(adapter: Any, module: nn.Module) -> Iterator[None]:
    """``module`` with the library's own attention processors while inside (when the adapter is on it),
    so its saved weights are the plain base model's, loadable without the adapter."""
    host = adapter.fits(module)
    if host:
        adapter.uninstall(module)
    try:
        yield
    finally:
        if host:
            adapter.install(module)


def _weights_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise UserError(f"checkpoint folder {folder} should hold one .safetensors file, found {len(files)}")
    return files[0]


def save_checkpoint(
    output_dir: Path,
    step: int,
    adapter: Any,
    trained: dict[str, nn.Module],
    optimizer: Any,
    lr_scheduler: Any,
    keep_last: int,
    base_dir: Optional[Path] = None,
    average: Optional[WeightAverage] = None,
) -> Path:
    """Write the checkpoint of ``step`` and delete all but the newest ``keep_last``; returns its folder. With
    ``average`` the adapter and model folders get the averaged weights."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with average.swapped() if average is not None else nullcontext():
        adapter.save_pretrained(tmp / "adapter")
        for name, module in trained.items():
            with _plain(adapter, module):
                module.save_pretrained(tmp / "model" / name, safe_serialization=True)
    if average is not None:
        save_trained(_optimized(optimizer), tmp / TRAINED_WEIGHTS)
    if trained and base_dir is not None:
        for extra in ("tokenizer", "scheduler"):
            if (Path(base_dir) / extra).is_dir():
                shutil.copytree(Path(base_dir) / extra, tmp / "model" / extra)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "trained_modules": sorted(trained)}, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoint_dirs(output_dir)[:-keep_last]:
        shutil.rmtree(old)
    return final


def _optimized(optimizer: Any) -> list[nn.Parameter]:
    """The parameters the optimizer steps, in its order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def _without_inert(state: dict, adapter: Any, optimizer: Any) -> dict:
    """``state`` less the entries of the adapter's inert bokeh keys K_b when it was saved while they still
    trained (the optimizer then listed every adapter parameter first); other states unchanged."""
    inert = {id(p) for p in adapter.inert_parameters()}
    flags = [id(p) in inert for p in adapter.parameters()]
    groups = state.get("param_groups", [])
    if len(groups) != 1 or len(groups[0]["params"]) != len(optimizer.param_groups[0]["params"]) + sum(flags):
        return state
    dropped = {index for index, is_inert in zip(groups[0]["params"], flags) if is_inert}
    kept = [index for index in groups[0]["params"] if index not in dropped]
    renumber = {old: new for new, old in enumerate(kept)}
    return {"state": {renumber[k]: v for k, v in state["state"].items() if k in renumber},
            "param_groups": [{**groups[0], "params": list(range(len(kept)))}]}


def load_checkpoint(folder: Path, adapter: Any, trained: dict[str, nn.Module], optimizer: Any, lr_scheduler: Any,
                    average: Optional[WeightAverage] = None) -> int:
    """Load a checkpoint into the live objects (strict keys everywhere); returns its step. ``average`` restarts
    from the checkpoint's averaged weights (or from its weights when it was saved without one)."""
    from safetensors.torch import load_file

    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read checkpoint {folder}: {exc}") from exc
    if sorted(state.get("trained_modules", [])) != sorted(trained):
        raise UserError(
            f"checkpoint {folder} trained {state.get('trained_modules')} but this config trains {sorted(trained)}"
        )
    adapter.load_weights(folder / "adapter" / "model.safetensors")
    for name, module in trained.items():
        with _plain(adapter, module):
            try:
                module.load_state_dict(load_file(str(_weights_file(folder / "model" / name))), strict=True)
            except RuntimeError as exc:
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                raise UserError(f"checkpoint {folder / 'model' / name} does not fit this config: {' '.join(lines[1:2])[:300]}") from exc
    if average is not None:
        average.restart()
    if (folder / TRAINED_WEIGHTS).is_file():
        load_trained(_optimized(optimizer), folder / TRAINED_WEIGHTS)
    saved = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    try:
        optimizer.load_state_dict(_without_inert(saved, adapter, optimizer))
    except ValueError as exc:  # another set of trainable parameters (another config)
        raise UserError(f"checkpoint {folder}: its optimizer state does not fit this run's trainable parameters ({exc})") from exc
    lr_scheduler.load_state_dict(torch.load(folder / "lr_scheduler.pt", weights_only=True))
    set_rng_state(torch.load(folder / "rng.pt", weights_only=True))
    return int(state["step"])
