"""Cost of the bokeh adapter in a training step: step time and peak memory with the adapter off
(forward and backpropagation through the whole frozen base to its input: the reference step),
the base's forward alone, the adapter on, and on with grounding (every row after the first tied to
row 0), for the same random-weight base and batch. Overheads are relative to the reference step;
target <= 15 %. With the adapter only in the decoder, its backward pass stops there, so an adapter
step can be cheaper than the reference.

Bases: ``sd15`` (Stable Diffusion 1.5 UNet, 64x64 latents = 512 px), ``flux`` (FLUX.1-dev
transformer, 32x32 packed tokens = 512 px, 512 text tokens), ``tiny`` (tests' tiny UNet, for CPU).
Weights are random (no download); timing does not depend on their values.

    python benchmarks/bench_train.py --model sd15 [--batch 4] [--steps 10] [--rounds 3] [--dtype bf16] [--checkpointing] [--cudnn-attention]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from timing import measure  # noqa: E402
from tiny_diffusion import FLUX_DEV_CONFIG, SD15_UNET_CONFIG, TINY_UNET_CONFIG  # noqa: E402
from trainer.config import OptimConfig  # noqa: E402
from bokeh_models.flux_adapter import BokehFluxAdapter  # noqa: E402
from bokeh_models.flux_latents import latent_image_ids, pack_latents  # noqa: E402
from trainer.training import adamw  # noqa: E402
from bokeh_models.unet_adapter import BokehUNetAdapter  # noqa: E402


# The same blocks at small widths (and 16 x 16 latents, 8 text tokens): what --count-ops runs, since the
# number of operations a step dispatches does not depend on widths or lengths.
NARROW = {
    "flux": dict(in_channels=4, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                 pooled_projection_dim=32, axes_dims_rope=(4, 4, 8)),
    "sd15": dict(sample_size=16, block_out_channels=(32, 32, 32, 32), cross_attention_dim=32, norm_num_groups=8),
    "tiny": {},
}


def build(model: str, device: torch.device, dtype: torch.dtype, batch: int, narrow: bool = False):
    """The base, an adapter factory and a function running the base on the batch with given kwargs."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    g = torch.Generator().manual_seed(0)
    cfg = FLUX_DEV_CONFIG if model == "flux" else SD15_UNET_CONFIG if model == "sd15" else TINY_UNET_CONFIG
    cfg = {**cfg, **(NARROW[model] if narrow else {})}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        base = FluxTransformer2DModel(**cfg) if model == "flux" else UNet2DConditionModel(**cfg)
    torch.set_default_dtype(previous)
    base.requires_grad_(False)
    if model == "flux":
        side, text_len = (16, 8) if narrow else (64, 512)
        latents = torch.randn(batch, cfg["in_channels"] // 4, side, side, generator=g).to(device, dtype)
        x = pack_latents(latents)
        fixed = dict(
            timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
            guidance=torch.full((batch,), 3.5, device=device, dtype=dtype),
            pooled_projections=torch.randn(batch, cfg["pooled_projection_dim"], generator=g).to(device, dtype),
            encoder_hidden_states=torch.randn(batch, text_len, cfg["joint_attention_dim"], generator=g).to(device, dtype),
            txt_ids=torch.zeros(text_len, 3, device=device, dtype=dtype), img_ids=latent_image_ids(latents),
        )

        def make_adapter():
            return BokehFluxAdapter(base, device=device)

        def run(adapter, sample, bokeh, pivots):
            if adapter is None:
                return base(hidden_states=sample, return_dict=False, **fixed)[0]
            return adapter(base, bokeh, pivots, hidden_states=sample, **fixed)
    else:
        size = cfg["sample_size"]
        x = torch.randn(batch, cfg["in_channels"], size, size, generator=g).to(device, dtype)
        text = torch.randn(batch, 77, cfg["cross_attention_dim"], generator=g).to(device, dtype)
        t = torch.full((batch,), 500, device=device)

        def make_adapter():
            return BokehUNetAdapter(base, bokeh_context_dim=768, device=device)

        def run(adapter, sample, bokeh, pivots):
            if adapter is None:
                return base(sample, t, text, return_dict=False)[0]
            return adapter(base, sample, t, text, bokeh=bokeh, pivot_ids=pivots)
    return base, x, make_adapter, run


# Backend ops that only allocate or reinterpret memory (view ops are recognised by their schema).
NO_KERNEL = frozenset({"aten::_unsafe_view", "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::empty_permuted",
                       "aten::lift_fresh", "aten::_local_scalar_dense"})


def count_kernel_ops(step: Callable[[], None]) -> int:
    """Backend operations one call of ``step`` runs (forward and backward), as a dispatch mode sees them:
    after autograd and autocast, composite ops already split into what runs, less views and allocations.
    On a GPU each launches a kernel or more."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += not func.is_view and func.name().split(".")[0] not in NO_KERNEL
            return func(*args, **(kwargs or {}))

    step()  # lazy initialisation stays out of the count
    with Counter() as counter:
        step()
    return counter.count


def gpu_kernel_seconds(step: Callable[[], None]) -> float:
    """GPU time of one call of ``step``: the durations of the kernels and copies it ran, summed (one stream,
    so no overlap). Far below the step's wall time, the step waits on the CPU launching them."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("sd15", "flux", "tiny"), default="tiny",
                        help="base: SD 1.5 UNet or FLUX.1-dev at full size (random weights), or the tests' tiny UNet (default)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant, after 2 warm-up steps; the median is printed (default 5)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the variants' timing in turns this many times and print the median of the rounds' medians with "
                             "their range: short steps vary from one spell of the machine to the next (default 1)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None, help="base dtype (default bf16 on CUDA and with --count-ops, else fp32)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in the base")
    parser.add_argument("--cudnn-attention", action="store_true",
                        help="allow PyTorch's cuDNN attention backend (off, as in `bokeh train` (run.cudnn_attention): its backward "
                             "can stop full-size FLUX with an illegal memory access; docs/train.md, On a GPU)")
    parser.add_argument("--count-ops", action="store_true",
                        help="instead of timing, count the kernel-launching operations of one forward + backward pass (no optimizer) "
                             "per variant, on the CPU with the same blocks at small widths (the count does not depend on widths); "
                             "launches bound the FLUX batch-1 step on a GPU (a CPU proxy: CUDA autocast casts a few more ops). At batch 1 "
                             "no row is tied, so the grounding row repeats the plain one")
    args = parser.parse_args()
    torch.backends.cuda.enable_cudnn_sdp(args.cudnn_attention)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.count_ops else "cpu")
    default_dtype = "bf16" if device.type == "cuda" or args.count_ops else "fp32"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype or default_dtype]
    base, x, make_adapter, run = build(args.model, device, dtype, args.batch, narrow=args.count_ops)
    if args.checkpointing:
        base.enable_gradient_checkpointing()
        base.train()
    bokeh = [float(5 * i % 31) for i in range(args.batch)]
    grounded = [-1] + [0] * (args.batch - 1)

    def frozen_step() -> None:
        sample = x.detach().requires_grad_(True)  # backprop through the whole frozen base, as adapter training must
        run(None, sample, None, None).float().square().mean().backward()

    def forward_only() -> None:
        with torch.no_grad():
            run(None, x, None, None)

    adapter = make_adapter().to(device, torch.float32)
    params = adapter.set_trainable(base)
    optimizer = adamw(params, OptimConfig(learning_rate=1e-5), device)  # as `bokeh train` makes it
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def adapter_step(pivots, optimize: bool = True) -> Callable[[], None]:
        def step() -> None:
            with autocast:
                loss = run(adapter, x, bokeh, pivots).float().square().mean()
            loss.backward()
            if optimize:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    def processors(installed: bool) -> None:
        """The adapter's processors on the base, or the library's plain ones."""
        (adapter.install if installed else adapter.uninstall)(base)

    # label -> (step, whether the adapter's processors are installed for it)
    variants = {"adapter off (frozen base)": (frozen_step, False), "base forward only": (forward_only, False),
                "adapter on": (adapter_step(None, not args.count_ops), True),
                "adapter on + grounding": (adapter_step(grounded, not args.count_ops), True)}
    if args.count_ops:
        del variants["base forward only"]
        counts = {}
        for label, (step, installed) in variants.items():
            processors(installed)
            counts[label] = count_kernel_ops(step)
        reference_ops = counts["adapter off (frozen base)"]
        print(f"bench_train --count-ops: {args.model} blocks at small widths, batch {args.batch}, {dtype}, trained adapter "
              f"tensors {len(params)}, gradient checkpointing {'on' if args.checkpointing else 'off'}")
        for label, n in counts.items():
            print(f"  {label:28s} {n:7d} ops/step  overhead {100 * (n / reference_ops - 1):+6.1f} %")
        return
    times: dict[str, list[float]] = {label: [] for label in variants}
    peaks: dict[str, float] = {}
    kernel_ms: dict[str, float] = {}
    for _ in range(args.rounds):  # variants take turns, so a slow spell of the machine hits them all
        for label, (step, installed) in variants.items():
            processors(installed)
            seconds, peaks[label] = measure(step, device, args.steps)
            times[label].append(seconds)
    if device.type == "cuda":
        for label, (step, installed) in variants.items():
            processors(installed)
            kernel_ms[label] = 1000 * gpu_kernel_seconds(step)
    n_params = sum(p.numel() for p in params)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"bench_train: {args.model}, batch {args.batch}, {dtype}, {name}, adapter params {n_params:,}, "
          f"gradient checkpointing {'on' if args.checkpointing else 'off'}, {args.rounds} round(s) of {args.steps} steps")
    medians = {label: statistics.median(values) for label, values in times.items()}
    base_time = medians["adapter off (frozen base)"]
    base_kernels = kernel_ms.get("adapter off (frozen base)")
    for label, seconds in medians.items():
        spread = f"  rounds {min(times[label]) * 1000:.1f}-{max(times[label]) * 1000:.1f} ms" if args.rounds > 1 else ""
        kernels = (f"  GPU kernels {kernel_ms[label]:7.1f} ms ({100 * (kernel_ms[label] / base_kernels - 1):+6.1f} %)"
                   if kernel_ms else "")
        print(f"  {label:28s} {seconds * 1000:9.1f} ms/step  peak {peaks[label]:6.2f} GiB  "
              f"overhead {100 * (seconds / base_time - 1):+6.1f} %{kernels}{spread}")


if __name__ == "__main__":
    main()
