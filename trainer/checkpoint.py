"""Training checkpoints: ``OUTPUT/checkpoints/step-NNNNNNN/`` holding

- ``adapter/`` config.json + model.safetensors (loadable by ``Bokeh*Adapter.from_pretrained``) and its model card
  README.md (``trainer.model_card``);
- ``model/<name>/`` every base network that trains (safetensors, by save_pretrained), plus the
  tokenizer and scheduler when the base is a local folder (so the tiny model is a complete folder);
- ``optimizer.pt``, ``lr_scheduler.pt``, ``rng.pt``: read back with ``torch.load(weights_only=True)``;
- ``trained_weights.safetensors`` when the run averages its weights (``optim.ema_decay``): then ``adapter/`` and
  ``model/`` hold the average, what sampling should use, and this file the optimizer's own weights, to resume;
- ``state.json``: the step (the data position is the step: batches are drawn per index) and the settings that
  define the run (``trainer.config.job_settings``), which a resumed run must keep.

A checkpoint is written under a temporary name, synced to disk (files and folders) and renamed into place, the
rename synced too, so neither a run killed while saving nor a power loss leaves a named but partial checkpoint
that ``--resume latest`` would pick. Files read back come from untrusted places as much as from the trainer:
``torch.load(weights_only=True)`` and safetensors only, and a file that fails to load is one line naming it.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn

from bokeh_models.checkpoint_layout import PATTERN, checkpoint_dirs
from estimators.cli_util import UserError
from trainer.ema import WeightAverage, load_trained, save_trained
from trainer.model_card import write_model_card
from trainer.run_folder import fsync_dir

TRAINED_WEIGHTS = "trained_weights.safetensors"


def step_of(checkpoint: Path) -> int:
    """The step in a checkpoint folder's name."""
    return int(PATTERN.match(checkpoint.name).group(1))


def resolve_resume(output_dir: Path, resume: str) -> Path:
    """The checkpoint folder for ``--resume``: "latest" or a path."""
    if resume == "latest":
        dirs = checkpoint_dirs(output_dir)
        if not dirs:
            raise UserError(f"--resume latest: no checkpoint in {Path(output_dir) / 'checkpoints'}: a run that stopped "
                            "before its first checkpoint starts again with --overwrite")
        return dirs[-1]
    path = Path(resume).expanduser()
    if not (path / "state.json").is_file():
        raise UserError(f"--resume {resume}: not a checkpoint folder (no state.json)")
    return path


def read_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``: its step, trained modules and (when recorded) the run's settings."""
    try:
        state = json.loads((folder / "state.json").read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
            raise ValueError("no step count")
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read checkpoint {folder / 'state.json'}: {str(exc).splitlines()[0]}") from None
    return state


def drop_after(output_dir: Path, step: int) -> list[Path]:
    """Remove the run's checkpoints past ``step`` (a run resumed from an earlier checkpoint replaces them); returns them."""
    later = [p for p in checkpoint_dirs(output_dir) if step_of(p) > step]
    for path in later:
        shutil.rmtree(path)
    return later


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors on the CPU; a file that fails (missing, truncated, foreign) is one line naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - the library's own error type, OSError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load {path} ({first[:200]}): the checkpoint is damaged; resume from another checkpoint "
                        "(--resume DIR)") from None


def load_trusted(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (tensors and plain containers only: a crafted pickle runs
    no code); a file that fails is one line naming it."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - missing, truncated, foreign or crafted file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load {path} ({first[:200]}): the checkpoint is damaged or not bokeh train's; "
                        "resume from another checkpoint (--resume DIR)") from None


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


def _fsync_tree(folder: Path) -> None:
    """Sync every file under ``folder``, then every folder, deepest first (so that each is named on disk)."""
    folders = [folder]
    for path in folder.rglob("*"):
        if path.is_dir():
            folders.append(path)
        else:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for path in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(path)


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
    settings: Optional[dict[str, Any]] = None,
) -> Path:
    """Write the checkpoint of ``step`` and delete all but the newest ``keep_last``; returns its folder. With
    ``average`` the adapter and model folders get the averaged weights; ``settings`` (the run's job settings)
    go into ``state.json``."""
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
    state = {"step": step, "trained_modules": sorted(trained), "settings": settings}
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    write_model_card(tmp / "adapter", state, adapter_ref=str(final / "adapter"))
    _fsync_tree(tmp)
    fsync_dir(root)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(root)
    for old in checkpoint_dirs(output_dir)[:-keep_last]:
        shutil.rmtree(old)
    return final


def _optimized(optimizer: Any) -> list[nn.Parameter]:
    """The parameters the optimizer steps, in its order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def load_checkpoint(folder: Path, adapter: Any, trained: dict[str, nn.Module], optimizer: Any, lr_scheduler: Any,
                    average: Optional[WeightAverage] = None) -> int:
    """Load a checkpoint into the live objects (strict keys everywhere); returns its step. ``average`` restarts
    from the checkpoint's averaged weights (or from its weights when it was saved without one)."""
    state = read_state(folder)
    if sorted(state.get("trained_modules", [])) != sorted(trained):
        raise UserError(
            f"checkpoint {folder} trained {state.get('trained_modules')} but this config trains {sorted(trained)}"
        )
    adapter.load_weights(folder / "adapter" / "model.safetensors")
    for name, module in trained.items():
        with _plain(adapter, module):
            try:
                module.load_state_dict(load_tensors(_weights_file(folder / "model" / name)), strict=True)
            except RuntimeError as exc:
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                raise UserError(f"checkpoint {folder / 'model' / name} does not fit this config: {' '.join(lines[1:2])[:300]}") from exc
    if average is not None:
        average.restart()
    if (folder / TRAINED_WEIGHTS).is_file():
        load_trained(_optimized(optimizer), folder / TRAINED_WEIGHTS)
    saved = load_trusted(folder / "optimizer.pt")
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # another config's parameters, or not an optimizer state
        raise UserError(f"{folder / 'optimizer.pt'}: its optimizer state does not fit this run's trainable parameters ({exc})") from exc
    schedule = load_trusted(folder / "lr_scheduler.pt")
    if not isinstance(schedule, dict) or not isinstance(schedule.get("last_epoch"), int):
        raise UserError(f"{folder / 'lr_scheduler.pt'} holds no learning-rate schedule state: resume from another checkpoint")
    lr_scheduler.load_state_dict(schedule)
    try:
        set_rng_state(load_trusted(folder / "rng.pt"))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise UserError(f"{folder / 'rng.pt'} holds no generator states ({exc}): resume from another checkpoint") from None
    return int(state["step"])
