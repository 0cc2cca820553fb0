"""``bokeh train`` settings: dataclasses read from a YAML file plus ``section.key=value`` overrides.

Unknown sections or keys are an error (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Sequence

from estimators.cli_util import UserError
from trainer.tracking import TRACKERS

FAMILIES = ("tiny", "unet", "flux")
PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class ModelConfig:
    """The backbone. ``tiny``: built from scratch (sizes in ``tiny``); ``unet``: a Stable Diffusion style
    folder or hub id (unet/, text_encoder/, tokenizer/, scheduler/, vae/); ``flux``: a FLUX.1 folder or id."""

    family: str = "tiny"
    base_model: Optional[str] = None
    train_base: bool = False
    weight_dtype: str = "float32"
    gradient_checkpointing: bool = False
    guidance: float = 3.5
    tiny: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where the rows come from and how batches are drawn (see ``trainer.data.BatchSampler``)."""

    dataset: str = ""
    split: str = "train"
    resolution: int = 64
    batch_size: int = 8
    contrastive_ratio: float = 0.5
    tie_probability: float = 0.2
    k_dropout: float = 0.1
    caption_dropout: float = 0.1
    # Probability that a row loses K and caption together (the guidance's negative pass; see BatchSampler).
    uncond_dropout: float = 0.0
    real_rows: str = "all"
    crop_min_fraction: float = 1.0
    cache_images: bool = False
    # Loss weight of the subject's pixels (the dataset's subject masks) against 1 for the rest; 1 = plain MSE.
    subject_weight: float = 1.0


@dataclass
class OptimConfig:
    """AdamW, a diffusers learning-rate schedule and (UNet objectives) loss weights with the SNR clamped to
    [snr_floor, snr_gamma] in x0 terms (min-SNR-gamma; truncated SNR with a floor of 1)."""

    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    snr_gamma: Optional[float] = None
    snr_floor: Optional[float] = None
    # Extra loss on rows tied to their pivot (its scene, noise and timestep): the error of (prediction - pivot's)
    # against (target - pivot's), i.e. of what their K changes, times this weight; 0 = off.
    difference_weight: float = 0.0
    # Extra loss on the error's image gradients (UNet backbones; pixels for the tiny model) times this weight: errors
    # in fine detail, which blur removes, count up to 1 + 4x this weight as much as flat ones; 0 = off.
    detail_weight: float = 0.0
    # Publish an exponential moving average of the trained weights with this decay (e.g. 0.999; 0 = off): the
    # checkpoints' adapter/ and model/ and the validation grids hold the average (trainer/ema.py).
    ema_decay: float = 0.0


@dataclass
class RunConfig:
    """The loop: steps, precision, checkpoints and logs (all under ``output_dir``)."""

    output_dir: str = "runs/bokeh"
    seed: int = 0
    max_steps: int = 1000
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    checkpoint_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    num_threads: int = 0
    progress: bool = True
    # PyTorch's cuDNN attention backend (CUDA only). Off by default: its backward can stop full-size FLUX training
    # with an illegal memory access (docs/train.md, "On a GPU"); flash and memory-efficient attention remain.
    cudnn_attention: bool = False
    # Where the scalars and validation grids also go: tensorboard (OUTPUT/logs/tensorboard), wandb, mlflow or none
    # (trainer/tracking.py); logs/train.jsonl is written whatever this says.
    report_to: str = "tensorboard"


@dataclass
class ValidationConfig:
    """The validation grid: one row per prompt, one column per K (every ``every`` steps; 0 = never)."""

    every: int = 500
    prompts: list = field(default_factory=list)
    levels: list = field(default_factory=lambda: [0, 10, 20, 30])
    steps: int = 25
    guidance_scale: Optional[float] = None  # None: the pipeline's own default (FLUX 3, SD 7.5, pixel models 2)
    seed: int = 0
    resolution: int = 0


@dataclass
class TrainConfig:
    """All settings of one training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for YAML / JSON)."""
        return asdict(self)

    def check(self) -> "TrainConfig":
        """Raise UserError on values no run can use."""
        if self.model.family not in FAMILIES:
            raise UserError(f"model.family must be one of {FAMILIES}, got {self.model.family!r}")
        if self.model.family != "tiny" and not self.model.base_model:
            raise UserError(f"model.base_model is required for family {self.model.family!r}")
        if self.run.mixed_precision not in PRECISIONS:
            raise UserError(f"run.mixed_precision must be one of {PRECISIONS}, got {self.run.mixed_precision!r}")
        if self.run.report_to not in TRACKERS:
            raise UserError(f"run.report_to must be one of {TRACKERS}, got {self.run.report_to!r}")
        if self.model.weight_dtype not in ("float32", "float16", "bfloat16"):
            raise UserError(f"model.weight_dtype must be float32, float16 or bfloat16, got {self.model.weight_dtype!r}")
        for name in ("snr_gamma", "snr_floor"):
            value = getattr(self.optim, name)
            if value is not None and (self.model.family == "flux" or not value > 0):
                raise UserError(f"optim.{name} must be a positive number and applies to the UNet families (tiny, unet), not flux")
        gamma, floor = self.optim.snr_gamma, self.optim.snr_floor
        if gamma is not None and floor is not None and floor > gamma:
            raise UserError(f"optim.snr_floor ({floor:g}) must not exceed optim.snr_gamma ({gamma:g})")
        if not self.data.dataset:
            raise UserError("data.dataset is required (a `bokeh build` output folder or an HF dataset id)")
        for name in ("max_steps", "gradient_accumulation_steps", "keep_last", "log_every"):
            if getattr(self.run, name) < 1:
                raise UserError(f"run.{name} must be >= 1, got {getattr(self.run, name)}")
        if not 0 < self.data.subject_weight < math.inf:
            raise UserError(f"data.subject_weight must be a finite number > 0 (1 = the subject weighs like the rest), got {self.data.subject_weight}")
        if not 0 <= self.optim.ema_decay < 1:
            raise UserError(f"optim.ema_decay must be in [0, 1) (0 = off; 0.999 averages over about the last 1000 steps once past the warm-up), got {self.optim.ema_decay}")
        if not 0 <= self.optim.detail_weight < math.inf or (self.optim.detail_weight and self.model.family == "flux"):
            raise UserError(f"optim.detail_weight must be a finite number >= 0 (0 = off) and applies to the UNet families "
                            f"(tiny, unet), not flux; got {self.optim.detail_weight}")
        if not 0 <= self.optim.difference_weight < math.inf:
            raise UserError(f"optim.difference_weight must be a finite number >= 0 (0 = off), got {self.optim.difference_weight}")
        if self.data.resolution < 8 or self.data.resolution % 8:
            raise UserError(f"data.resolution must be a multiple of 8, got {self.data.resolution}")
        return self


SECTIONS = {f.name: f for f in fields(TrainConfig)}


def _section(name: str, value: Any, cls: Any) -> Any:
    if not isinstance(value, dict):
        raise UserError(f"config section {name!r} must be a mapping, got {type(value).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise UserError(f"unknown key(s) {unknown} in config section {name!r} (known: {sorted(known)})")
    return cls(**{f.name: _coerce(f"{name}.{f.name}", f.type, value[f.name]) for f in fields(cls) if f.name in value})


def _coerce(key: str, kind: str, value: Any) -> Any:
    """``value`` as the field's type (YAML reads 1e-4 as a string: numbers in strings are accepted)."""
    def fail() -> UserError:
        return UserError(f"{key} must be {kind.replace('Optional[', '').rstrip(']')}, got {value!r}")

    if value is None and kind.startswith("Optional"):
        return None
    if key == "run.mixed_precision" and value is False:
        return "no"  # accelerate's word for off, which YAML 1.1 reads as false
    base = kind.removeprefix("Optional[").rstrip("]")
    if base == "float":
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise fail() from None
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        return value
    if base in ("bool", "str", "list", "dict") and not isinstance(value, {"bool": bool, "str": str, "list": list, "dict": dict}[base]):
        raise fail()
    return value


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``data`` with each ``section.key=value`` (value read as YAML: 3, 1e-4, true, [0, 10]) set."""
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise UserError(f"override {item!r} is not section.key=value (e.g. run.max_steps=100)")
        if parts[0] not in SECTIONS:
            raise UserError(f"unknown config section {parts[0]!r} in {item!r} (known: {sorted(SECTIONS)})")
        node = data.setdefault(parts[0], {})
        for part in parts[1:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r}: {part!r} is not a mapping")
        node[parts[-1]] = _parse_value(text)
    return data


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A checked TrainConfig from plain data."""
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise UserError(f"unknown config section(s) {unknown} (known: {sorted(SECTIONS)})")
    kwargs = {}
    for name, value in data.items():
        if value is None:
            continue
        cls = SECTIONS[name].type
        if name == "adapter":
            if not isinstance(value, dict):
                raise UserError("config section 'adapter' must be a mapping of adapter constructor arguments")
            kwargs[name] = dict(value)
        else:
            kwargs[name] = _section(name, value, globals()[cls] if isinstance(cls, str) else cls)
    return TrainConfig(**kwargs).check()


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read the YAML file at ``path``, apply ``overrides`` and check the result."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise UserError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a YAML mapping of sections")
    return config_from_dict(apply_overrides(data, overrides))


#: Settings a resumed run may change, as dotted keys or section prefixes: they leave what is trained as it was
#: (how far it goes, logs and their trackers, checkpoints, validation grids, speed and memory, the published weight
#: average; mixed precision and the attention kernels change the rounding of the arithmetic, not the data, model or
#: optimizer).
RESUMABLE = ("run.max_steps", "run.checkpoint_every", "run.keep_last", "run.log_every", "run.num_threads", "run.progress",
             "run.cudnn_attention", "run.mixed_precision", "run.report_to", "model.gradient_checkpointing", "data.cache_images",
             "optim.ema_decay", "validation")
#: Where the run writes: a run resumed from another folder's checkpoint writes elsewhere by design.
PLACE = ("run.output_dir",)
#: The learning-rate schedules whose rates do not depend on ``run.max_steps``.
STEP_FREE_SCHEDULES = ("constant", "constant_with_warmup")


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{dotted key: value}`` (an empty mapping adds no key)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def job_settings(config: TrainConfig, processes: int) -> dict[str, Any]:
    """Every setting as ``{dotted key: value}`` plus the number of processes (which sets the batch each step
    takes), with a local ``data.dataset`` as its absolute path: what a checkpoint records of its run."""
    settings = _flat(config.to_dict())
    local = Path(settings["data.dataset"]).expanduser()
    if local.exists():
        settings["data.dataset"] = str(local.resolve())
    settings["processes"] = processes
    return settings


_UNSET = object()


def _resumable(key: str) -> bool:
    return any(key == name or key.startswith(name + ".") for name in RESUMABLE)


def _show(value: Any) -> str:
    if value is _UNSET:
        return "unset"
    if isinstance(value, (list, bool)) or value is None:
        return json.dumps(value)
    return str(value)


def resume_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The settings that differ between a checkpoint's ``saved`` job settings and this run's, as "key: old -> new":
    (those a resumed run must keep, those it may change)."""
    refused, allowed = [], []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, _UNSET), current.get(key, _UNSET)
        if old == new or key in PLACE:
            continue
        (allowed if _resumable(key) else refused).append(f"{key}: {_show(old)} -> {_show(new)}")
    return refused, allowed
