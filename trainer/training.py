"""The training loop: accelerate (mixed precision, gradient accumulation, multi-GPU via
``accelerate launch``), checkpoints with exact resume, JSONL logs, experiment trackers (``trainer.tracking``) and validation
grids (``trainer.validation``).

Determinism: micro-batch ``n`` (counted over all processes) takes its rows from ``BatchSampler.plan(n)``
and its noise and timesteps from a generator seeded by ``(seed, n)``, so the data position is the step
count and a resumed run repeats an uninterrupted one exactly (bit for bit on CPU).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from bokeh_models.components import DTYPES
from estimators.cli_util import UserError
from trainer.backbones import UNetBackbone, load_backbone
from trainer.checkpoint import drop_after, load_checkpoint, read_state, resolve_resume, save_checkpoint
from trainer.config import STEP_FREE_SCHEDULES, OptimConfig, TrainConfig, job_settings, resume_changes
from trainer.data import BatchPlan, BatchSampler, ImageLoader, load_rows
from trainer.ema import WeightAverage
from trainer.run_folder import RunLock, claim, note_built_base, write_text
from trainer.tracking import check_tracker, log_scalars, log_validation, log_with, start_tracking
from trainer.validation import save_grid, validation_grid


class TrainStep(nn.Module):
    """Holds what trains (adapter, and the base networks when they train) so accelerate / DDP wrap one
    module; ``forward`` is the loss of one planned batch."""

    def __init__(self, backbone: Any, adapter: nn.Module, trained: dict[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter
        self.trained = nn.ModuleDict(trained)
        self.text_trains = "text_encoder" in trained

    def forward(self, pixels: torch.Tensor, plan: BatchPlan, generator: torch.Generator,
                pixel_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The loss of ``pixels`` [B, 3, R, R] planned as ``plan``; ``pixel_weights`` [B, 1, R, R] weigh the
        image's pixels (averaged over each latent position's pixels)."""
        device = pixels.device
        backbone = self.backbone
        latents = backbone.encode_images(pixels)
        weights = pixel_weights
        if weights is not None and backbone.latent_factor > 1:
            weights = torch.nn.functional.avg_pool2d(weights, backbone.latent_factor)
        if self.text_trains:
            text = backbone.encode_text(plan.captions, device)
        else:
            with torch.no_grad():
                text = backbone.encode_text(plan.captions, device)
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
        u = torch.rand(latents.shape[0], generator=generator, dtype=torch.float64)
        for row, pivot in enumerate(plan.pivot_ids):
            if pivot >= 0:  # tied rows share the pivot's noise and timestep
                noise[row] = noise[pivot]
                u[row] = u[pivot]
        noise = noise.to(device, latents.dtype)
        u = backbone.timestep_draw(u).to(device, torch.float32)
        return backbone.loss(self.adapter, latents, text, plan.levels, plan.pivot_ids, noise, u, weights)


def micro_seed(seed: int, index: int) -> int:
    """The noise seed of micro-batch ``index``."""
    return int(np.random.SeedSequence([seed, index, 7]).generate_state(1, dtype=np.uint64)[0] >> 1)


def build_backbone(config: TrainConfig, output_dir: Path, rows: Any) -> tuple[Any, Optional[Path]]:
    """The backbone and its local folder (tiny: built from scratch in OUTPUT/base on the first run)."""
    model = config.model
    if model.family == "tiny":
        from bokeh_models.tiny_model import build_tiny_model

        base = output_dir / "base"
        if not (base / "unet").is_dir():
            note_built_base(output_dir)
            try:
                build_tiny_model(base, rows.captions, config.data.resolution, seed=config.run.seed, **model.tiny)
            except ValueError as exc:
                raise UserError(f"model.tiny: {exc}") from None
        return UNetBackbone.load(str(base)), base
    dtype = DTYPES[model.weight_dtype]
    backbone = load_backbone(model.family, model.base_model, dtype, model.guidance)
    local = Path(model.base_model).expanduser()
    return backbone, local if local.is_dir() else None


def set_loss_weights(backbone: Any, config: TrainConfig) -> None:
    """The config's loss settings on the backbone: the SNR clamp and the detail loss (UNet families) and the
    tied rows' difference loss."""
    o = config.optim
    if config.model.family != "flux":
        backbone.snr_gamma, backbone.snr_floor, backbone.detail_weight = o.snr_gamma, o.snr_floor, o.detail_weight
    backbone.difference_weight = o.difference_weight


def trainable_parameters(adapter: nn.Module, backbone: Any, trained: dict[str, nn.Module]) -> list[nn.Parameter]:
    """What the optimizer steps, each once: the adapter's parameters (and the base model's when it is in
    ``trained``), plus the text encoder's when it is in ``trained``."""
    params = adapter.set_trainable(backbone.model, train_base=bool(trained))
    if "text_encoder" in trained:
        backbone.text_encoder.requires_grad_(True)
        own = {id(p) for p in params}
        params += [p for p in backbone.text_encoder.parameters() if id(p) not in own]
    return params


def adamw(params: list[nn.Parameter], o: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW as configured; on CUDA the fused implementation, which launches fewer kernels than the default foreach
    one (an adapter's training step is bound by kernel launches)."""
    return torch.optim.AdamW(params, lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2), weight_decay=o.weight_decay,
                             eps=o.adam_epsilon, fused=device.type == "cuda")


def _trained_modules(config: TrainConfig, backbone: Any) -> dict[str, nn.Module]:
    if config.model.family == "tiny":
        return {"unet": backbone.unet, "text_encoder": backbone.text_encoder}
    if config.model.train_base:
        name = "transformer" if backbone.family == "flux" else "unet"
        return {name: backbone.model}
    return {}


def _records(path: Path, step: int) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` up to ``step`` (a line cut short by a crash is left out)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step", 0), (int, float)) and record.get("step", 0) <= step:
            records.append(record)
    return records


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines up to ``step`` (a resumed run rewrites what followed its checkpoint)."""
    if path.is_file():
        write_text(path, "".join(json.dumps(r) + "\n" for r in _records(path, step)))


def _report(problems: dict[str, str], reported: set[str], path: Path, step: int) -> None:
    """Record each row in ``problems`` not yet ``reported``: a line in the errors file and a warning."""
    new = {row: message for row, message in problems.items() if row not in reported}
    if not new:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for row, message in new.items():
            f.write(json.dumps({"step": step, "row": row, "error": message}) + "\n")
            warnings.warn(f"{message} (recorded in {path})", stacklevel=3)
    reported.update(new)


def _on_main(state: Any, action: Callable[[], None]) -> None:
    """Run ``action`` on the main process; a UserError it raises is raised on every process."""
    message = None
    if state.is_main_process:
        try:
            action()
        except UserError as exc:
            message = str(exc)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = broadcast_object_list([message], from_process=0)[0]
    if message is not None:
        raise UserError(message)


def _saved_settings(checkpoint: Path) -> dict[str, Any]:
    """The job settings a checkpoint's ``state.json`` records (every checkpoint of ``bokeh train`` has them)."""
    saved = read_state(checkpoint).get("settings")
    if not isinstance(saved, dict):
        raise UserError(f"--resume {checkpoint}: its state.json records no run settings, so it was not written by "
                        "bokeh train; train a new run (another run.output_dir, or --overwrite)")
    return saved


def _check_resume(config: TrainConfig, checkpoint: Path, step: int, processes: int) -> list[str]:
    """Refuse a resume whose settings change what the run trains, or whose ``run.max_steps`` is below the
    checkpoint's step; returns the notes on what may change and did."""
    refused, notes = resume_changes(_saved_settings(checkpoint), job_settings(config, processes))
    if refused:
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise UserError(f"--resume {checkpoint}: this config changes what the run trains ({'; '.join(refused[:3])}{more}): a resumed "
                        "run keeps them; put them back, or train a new run (another run.output_dir, or --overwrite)")
    max_steps = config.run.max_steps
    if step > max_steps:
        raise UserError(f"the checkpoint {checkpoint} is at step {step}, past run.max_steps={max_steps}: nothing to train; "
                        f"raise run.max_steps above {step}")
    schedule = config.optim.lr_scheduler
    return [note + (f" (the {schedule} learning-rate schedule now ends at step {max_steps})"
                    if note.startswith("run.max_steps:") and schedule not in STEP_FREE_SCHEDULES else "") for note in notes]


def _open_run(config: TrainConfig, state: Any, resume: Optional[str], overwrite: bool,
              stack: contextlib.ExitStack) -> tuple[Optional[Path], int]:
    """Lock ``run.output_dir`` for this run (held until ``stack`` closes) and check that the run may start there:
    a new run only where no earlier run would be mixed in (``trainer.run_folder``), a resumed one with the settings
    that define it. Returns the checkpoint to resume from (None: a new run) and its step."""
    output_dir = Path(config.run.output_dir)
    contradiction = "--overwrite removes the run that --resume would continue: give one of them"
    if overwrite and resume == "latest":
        raise UserError(contradiction)
    checkpoint = resolve_resume(output_dir, resume) if resume else None
    step = read_state(checkpoint)["step"] if checkpoint is not None else 0
    continues = checkpoint is not None and checkpoint.resolve().parent.parent == output_dir.resolve()
    if overwrite and continues:
        raise UserError(contradiction)

    def start() -> None:
        stack.enter_context(RunLock(output_dir))
        notes = [] if checkpoint is None else _check_resume(config, checkpoint, step, state.num_processes)
        if checkpoint is not None and step == config.run.max_steps:
            return  # the run is complete: nothing to write
        claim(output_dir, continues, overwrite)
        if continues:
            later = drop_after(output_dir, step)
            if later:
                notes.append(f"its later checkpoints {', '.join(p.name for p in later)} are removed (this run replaces them)")
        if notes:
            print(f"bokeh train: resuming {checkpoint} at step {step}; {'; '.join(notes)}", file=sys.stderr)

    _on_main(state, start)
    return checkpoint, step


def train(config: TrainConfig, resume: Optional[str] = None, overwrite: bool = False) -> dict[str, Any]:
    """Run (or continue: ``resume`` "latest" or a checkpoint folder) the training described by ``config``;
    ``overwrite`` replaces the trainer's files of an earlier run in ``run.output_dir``. Returns the final step,
    the last loss, how many rows had an unreadable image or mask (``bad_rows``) and whether the checkpoint
    resumed was already at ``run.max_steps`` (``complete``: nothing trained).

    Without ``run.cudnn_attention`` PyTorch's cuDNN attention is left out for the run (flash, memory-
    efficient and math attention remain) and the previous choice comes back afterwards."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = None if config.run.cudnn_attention else [
        SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with contextlib.ExitStack() as stack:
        if backends:
            stack.enter_context(sdpa_kernel(backends))
        return _train(config, resume, overwrite, stack)


def _train(config: TrainConfig, resume: Optional[str], overwrite: bool, stack: contextlib.ExitStack) -> dict[str, Any]:
    """The body of :func:`train`, run inside its choice of attention backends; the run folder's lock joins ``stack``."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import parse_flag_from_env
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    run = config.run
    # the process group before the models, and without the precision (a failed model load must not fix it for the
    # process); on CPUs only ACCELERATE_USE_CPU (torchrun, accelerate's MULTI_CPU) makes several processes distributed
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.num_processes == 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(f"launched as {os.environ['WORLD_SIZE']} processes, but accelerate runs this one alone (they would "
                        "train independently into one folder); on CPUs set ACCELERATE_USE_CPU=1")
    check_tracker(run.report_to)
    if run.num_threads > 0:
        torch.set_num_threads(run.num_threads)
    output_dir = Path(run.output_dir)
    checkpoint, start = _open_run(config, state, resume, overwrite, stack)
    if checkpoint is not None and start == run.max_steps:
        return {"step": start, "loss": math.nan, "bad_rows": 0, "complete": True}
    d = config.data
    weighted = d.subject_weight != 1
    rows = load_rows(d.dataset, d.split, masks=weighted)
    sampler = BatchSampler(rows, d.batch_size, run.seed, d.contrastive_ratio, d.tie_probability, d.k_dropout,
                           d.caption_dropout, d.real_rows, d.crop_min_fraction, d.uncond_dropout)
    loader = ImageLoader(rows, d.resolution, cache=d.cache_images)
    if config.optim.difference_weight and not (sampler.contrastive_ratio and d.tie_probability):
        warnings.warn("optim.difference_weight does nothing here: no row is ever tied to a pivot (data.contrastive_ratio or "
                      "data.tie_probability is 0, or the data has no group of two or more rows)", stacklevel=3)

    output_dir.mkdir(parents=True, exist_ok=True)
    with state.main_process_first():  # the main process builds the tiny model, the others read it
        backbone, base_dir = build_backbone(config, output_dir, rows)
    set_loss_weights(backbone, config)
    accelerator = Accelerator(mixed_precision=run.mixed_precision, gradient_accumulation_steps=run.gradient_accumulation_steps,
                              log_with=log_with(run.report_to), project_dir=str(output_dir / "logs"))
    if accelerator.device.type == "cpu" and run.mixed_precision != "no":
        warnings.warn(f"run.mixed_precision={run.mixed_precision} on a CPU: autocast slows CPU training steps down; "
                      "run.mixed_precision=no is faster on CPUs", stacklevel=3)
    trained = _trained_modules(config, backbone)
    # freeze first: the adapter's processors become submodules of the base model when installed
    for name, module in backbone.modules().items():
        module.to(accelerator.device)
        if name not in trained:
            module.requires_grad_(False)
            module.eval()
    torch.manual_seed(run.seed)  # the adapter's initial weights depend on the seed only
    try:
        adapter = backbone.make_adapter(dict(config.adapter))
    except (TypeError, ValueError) as exc:
        raise UserError(f"adapter settings do not fit the base model: {exc}") from exc
    params = trainable_parameters(adapter, backbone, trained)
    adapter.to(accelerator.device, torch.float32)
    if config.model.gradient_checkpointing:
        backbone.model.enable_gradient_checkpointing()
    o = config.optim
    optimizer = adamw(params, o, accelerator.device)
    # accelerate steps a prepared scheduler once per process at each optimizer step: count in those units.
    procs = accelerator.num_processes
    try:
        lr_scheduler = get_scheduler(o.lr_scheduler, optimizer, num_warmup_steps=o.warmup_steps * procs,
                                     num_training_steps=run.max_steps * procs)
    except ValueError as exc:
        raise UserError(f"optim.lr_scheduler {o.lr_scheduler!r}: {exc}") from exc
    step_module = TrainStep(backbone, adapter, trained).train()
    step_module, optimizer, lr_scheduler = accelerator.prepare(step_module, optimizer, lr_scheduler)
    average = WeightAverage(params, o.ema_decay) if o.ema_decay else None

    step = 0
    log_path = output_dir / "logs" / "train.jsonl"
    errors_path = output_dir / "logs" / "errors.jsonl"
    if checkpoint is not None:
        step = load_checkpoint(checkpoint, adapter, trained, optimizer, lr_scheduler, average)
        if accelerator.is_main_process:
            _truncate_log(log_path, step)
            _truncate_log(errors_path, step)
    reported = {str(r.get("row")) for r in _records(errors_path, step)}  # rows recorded before the checkpoint
    settings = job_settings(config, procs)
    if accelerator.is_main_process:
        import yaml

        write_text(output_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        log_path.parent.mkdir(parents=True, exist_ok=True)
    start_tracking(accelerator, run.report_to, settings, output_dir.resolve().name, step)

    accum = run.gradient_accumulation_steps
    bar = tqdm(total=run.max_steps, initial=step, desc="train", disable=not (run.progress and accelerator.is_main_process))
    last_loss, grad_norm = float("nan"), None
    started = time.time()
    while step < run.max_steps:
        losses = []
        for micro in range(accum):
            index = (step * accum + micro) * procs + accelerator.process_index
            plan, pixels, weights, problems = loader.load_plan(sampler.plan(index), d.subject_weight if weighted else None)
            _report(problems, reported, errors_path, step + 1)
            if pixels is None:
                raise UserError(f"step {step + 1}: no row of its batch has a readable image ({', '.join(problems)}; see {errors_path}): "
                                "fix or remove these rows, then --resume latest")
            pixels = pixels.to(accelerator.device)
            weights = None if weights is None else weights.to(accelerator.device)
            generator = torch.Generator().manual_seed(micro_seed(run.seed, index))
            with accelerator.accumulate(step_module):
                loss = step_module(pixels, plan, generator, weights)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    # The norm before clipping is logged (a spike before a divergence shows there); inf clips nothing.
                    grad_norm = accelerator.clip_grad_norm_(params, o.max_grad_norm if o.max_grad_norm > 0 else math.inf)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        if average is not None:
            average.update(step)
        step += 1
        last_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
        lr = lr_scheduler.get_last_lr()[0]
        bar.update(1)
        norm = None if grad_norm is None else float(grad_norm)  # None: DeepSpeed clips inside its engine
        bar.set_postfix(loss=f"{last_loss:.4f}", grad_norm="-" if norm is None else f"{norm:.3g}", lr=f"{lr:.2e}")
        if accelerator.is_main_process and (step % run.log_every == 0 or step == run.max_steps):
            record = {"step": step, "loss": last_loss, "grad_norm": norm, "lr": lr, "elapsed_s": round(time.time() - started, 3)}
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            log_scalars(accelerator, record)
        if run.checkpoint_every and (step % run.checkpoint_every == 0 or step == run.max_steps):
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_checkpoint(output_dir, step, adapter, trained, optimizer, lr_scheduler, run.keep_last, base_dir, average, settings)
        val = config.validation
        if accelerator.is_main_process and val.every and val.prompts and (step % val.every == 0 or step == run.max_steps):
            step_module.eval()
            with average.swapped() if average is not None else contextlib.nullcontext():
                grid = validation_grid(backbone, adapter, config)
            step_module.train()
            (output_dir / "validation").mkdir(exist_ok=True)
            grid_path = output_dir / "validation" / f"step-{step:07d}.png"
            save_grid(grid, grid_path, config, step)
            log_validation(accelerator, run.report_to, grid, grid_path, step)
    bar.close()
    # The trackers close; the process group stays for the caller (destroying it here while another process still
    # works can leave that process waiting forever).
    for tracker in accelerator.trackers:
        tracker.finish()
    return {"step": step, "loss": last_loss, "bad_rows": len(reported), "complete": False}
