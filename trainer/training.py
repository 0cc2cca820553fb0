"""The training loop: accelerate (mixed precision, gradient accumulation, multi-GPU via
``accelerate launch``), checkpoints with exact resume, JSONL / TensorBoard logs and validation grids.

Determinism: micro-batch ``n`` (counted over all processes) takes its rows from ``BatchSampler.plan(n)``
and its noise and timesteps from a generator seeded by ``(seed, n)``, so the data position is the step
count and a resumed run repeats an uninterrupted one exactly (bit for bit on CPU).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from estimators.cli_util import UserError
from trainer.backbones import DTYPES, UNetBackbone, load_backbone
from trainer.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from trainer.config import OptimConfig, TrainConfig
from trainer.data import BatchPlan, BatchSampler, ImageLoader, load_rows
from trainer.ema import WeightAverage


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
        from trainer.tiny_model import build_tiny_model

        base = output_dir / "base"
        if not (base / "unet").is_dir():
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
    """AdamW as configured; on CUDA the fused implementation (FLUX adapter, 346 tensors, H200: 3.8 ms a step
    against 8.1 ms for the default foreach one, which launches more kernels in a step bound by launches)."""
    return torch.optim.AdamW(params, lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2), weight_decay=o.weight_decay,
                             eps=o.adam_epsilon, fused=device.type == "cuda")


def _trained_modules(config: TrainConfig, backbone: Any) -> dict[str, nn.Module]:
    if config.model.family == "tiny":
        return {"unet": backbone.unet, "text_encoder": backbone.text_encoder}
    if config.model.train_base:
        name = "transformer" if backbone.family == "flux" else "unet"
        return {name: backbone.model}
    return {}


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines up to ``step`` (a resumed run rewrites what followed its checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _tensorboard(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir))


def validation_grid(backbone: Any, adapter: nn.Module, config: TrainConfig, device: torch.device) -> Any:
    """A PIL image: one contact-sheet row per prompt, one column per K, same seed across K."""
    from PIL import Image

    from synth_blur.contact_sheet import contact_sheet

    val = config.validation
    resolution = val.resolution or config.data.resolution
    channels, h, w = backbone.latent_shape(resolution)
    rows = []
    for i, prompt in enumerate(val.prompts):
        g = torch.Generator().manual_seed(val.seed + i)
        noise = torch.randn((1, channels, h, w), generator=g).expand(len(val.levels), -1, -1, -1).to(device)
        images = backbone.sample(adapter, [prompt] * len(val.levels), val.levels, noise, val.steps, val.guidance_scale)
        arrays = ((images.float().cpu().permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        rows.append(contact_sheet(list(arrays), [f"K={k:g}" for k in val.levels], height=max(64, resolution)))
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height
    return sheet


def train(config: TrainConfig, resume: Optional[str] = None) -> dict[str, Any]:
    """Run (or continue) the training described by ``config``; returns the final step and last loss.

    Without ``run.cudnn_attention`` PyTorch's cuDNN attention is left out for the run (flash, memory-
    efficient and math attention remain) and the previous choice comes back afterwards."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = None if config.run.cudnn_attention else [
        SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(backends) if backends else contextlib.nullcontext():
        return _train(config, resume)


def _train(config: TrainConfig, resume: Optional[str]) -> dict[str, Any]:
    """The body of :func:`train`, run inside its choice of attention backends."""
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
    if run.num_threads > 0:
        torch.set_num_threads(run.num_threads)
    output_dir = Path(run.output_dir)
    checkpoint = resolve_resume(output_dir, resume) if resume else None
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
    accelerator = Accelerator(mixed_precision=run.mixed_precision, gradient_accumulation_steps=run.gradient_accumulation_steps)
    if accelerator.device.type == "cpu" and run.mixed_precision != "no":
        warnings.warn(f"run.mixed_precision={run.mixed_precision} on a CPU: autocast made the tiny model's step 9x slower "
                      "there (12.3 vs 1.4 s over its first 10 steps at 2 threads); run.mixed_precision=no is faster on CPUs", stacklevel=3)
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
    if checkpoint is not None:
        step = load_checkpoint(checkpoint, adapter, trained, optimizer, lr_scheduler, average)
        if accelerator.is_main_process:
            _truncate_log(log_path, step)
    if accelerator.is_main_process:
        import yaml

        (output_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        log_path.parent.mkdir(parents=True, exist_ok=True)
    writer = _tensorboard(output_dir / "logs") if accelerator.is_main_process else None

    accum = run.gradient_accumulation_steps
    bar = tqdm(total=run.max_steps, initial=step, desc="train", disable=not (run.progress and accelerator.is_main_process))
    last_loss, grad_norm = float("nan"), None
    started = time.time()
    while step < run.max_steps:
        losses = []
        for micro in range(accum):
            index = (step * accum + micro) * procs + accelerator.process_index
            plan = sampler.plan(index)
            pixels, weights = loader.load_weighted(plan.rows, plan.crops, d.subject_weight if weighted else None)
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
            if writer is not None:
                writer.add_scalar("train/loss", last_loss, step)
                writer.add_scalar("train/lr", lr, step)
                if norm is not None:
                    writer.add_scalar("train/grad_norm", norm, step)
        if run.checkpoint_every and (step % run.checkpoint_every == 0 or step == run.max_steps):
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_checkpoint(output_dir, step, adapter, trained, optimizer, lr_scheduler, run.keep_last, base_dir, average)
        val = config.validation
        if accelerator.is_main_process and val.every and val.prompts and (step % val.every == 0 or step == run.max_steps):
            step_module.eval()
            with average.swapped() if average is not None else contextlib.nullcontext():
                grid = validation_grid(backbone, adapter, config, accelerator.device)
            step_module.train()
            (output_dir / "validation").mkdir(exist_ok=True)
            grid.save(output_dir / "validation" / f"step-{step:07d}.png")
    bar.close()
    if writer is not None:
        writer.close()
    return {"step": step, "loss": last_loss}
