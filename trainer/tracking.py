"""Experiment trackers of a training run (``run.report_to``), through accelerate's tracker API.

TensorBoard writes under ``OUTPUT/logs/tensorboard/``, wandb keeps its local files in ``OUTPUT/logs/wandb/``;
Weights & Biases and MLflow log where their own settings point (``WANDB_*``, ``MLFLOW_TRACKING_URI``), in the project / experiment ``bokeh-diffusion`` with the
run folder's name as the run name. The tracker gets the run's settings as hyperparameters, the scalars of
``logs/train.jsonl`` and the validation grids. wandb and mlflow are optional packages: a missing one is a
one-line error before any work.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Optional

from estimators.cli_util import UserError

TRACKERS = ("tensorboard", "wandb", "mlflow", "none")
#: The package each tracker imports (the pip name is the same).
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
#: The wandb project and MLflow experiment of every run; TensorBoard's folder under ``logs/``.
PROJECT = "bokeh-diffusion"
TENSORBOARD_DIR = "tensorboard"
#: Prefix of the scalar names (``train/loss``, ``train/lr``, ...).
SCALAR_PREFIX = "train/"


def check_tracker(report_to: str) -> None:
    """Raise a one-line UserError when the package ``report_to`` needs is not installed."""
    package = PACKAGES.get(report_to)
    if package is not None and importlib.util.find_spec(package) is None:
        raise UserError(f"run.report_to={report_to} needs the {package} package: pip install {package}")


def log_with(report_to: str) -> Optional[str]:
    """The ``Accelerator(log_with=...)`` value of ``report_to`` (None: no tracker)."""
    return None if report_to == "none" else report_to


def hyperparameters(settings: dict[str, Any]) -> dict[str, Any]:
    """Flat job settings as tracker hyperparameters: lists (prompts, levels, sizes) as JSON text, since trackers
    take only numbers, strings, booleans and None."""
    return {key: json.dumps(value) if isinstance(value, (list, tuple, dict)) else value for key, value in settings.items()}


def start_tracking(accelerator: Any, report_to: str, settings: dict[str, Any], run_name: str, step: int) -> None:
    """``accelerator.init_trackers`` for this run with ``settings`` as its hyperparameters. A run resumed at
    ``step`` > 0 purges TensorBoard's events past it (the resumed run writes those steps again; ``train.jsonl`` is cut
at the same step)."""
    if report_to == "none":
        return
    init_kwargs = {
        "tensorboard": {"purge_step": step + 1} if step else {},
        "wandb": {"name": run_name, "dir": str(accelerator.logging_dir)},
        "mlflow": {"run_name": run_name},
    }
    project = TENSORBOARD_DIR if report_to == "tensorboard" else PROJECT
    accelerator.init_trackers(project, config=hyperparameters(settings), init_kwargs={report_to: init_kwargs[report_to]})


def log_scalars(accelerator: Any, record: dict[str, Any]) -> None:
    """The numbers of a ``train.jsonl`` record (all but its step; a None grad_norm is left out) at its step."""
    values = {SCALAR_PREFIX + key: value for key, value in record.items()
              if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
    accelerator.log(values, step=record["step"])


def log_validation(accelerator: Any, report_to: str, grid: Any, path: Path, step: int) -> None:
    """The validation grid ``grid`` (a PIL image, saved at ``path``) of ``step`` in the tracker: TensorBoard as an
    image, wandb as a ``wandb.Image``, MLflow as the PNG artifact ``validation/<name>``."""
    if report_to == "tensorboard":
        import numpy as np

        writer = accelerator.get_tracker("tensorboard", unwrap=True)
        writer.add_images("validation/grid", np.asarray(grid.convert("RGB"))[None], global_step=step, dataformats="NHWC")
        writer.flush()
    elif report_to == "wandb":
        accelerator.get_tracker("wandb").log_images({"validation/grid": [grid]}, step=step)
    elif report_to == "mlflow":
        accelerator.get_tracker("mlflow").log_artifact(str(path), artifact_path="validation")
