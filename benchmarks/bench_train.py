"""Cost of the bokeh adapter in a training step: step time and peak memory with the adapter off
(forward and backpropagation through the whole frozen base to its input: the reference step),
the base's forward alone, the adapter on, and on with grounding (every row after the first tied to
row 0), for the same random-weight base and batch. Overheads are relative to the reference step;
target <= 15 %. With the adapter only in the decoder, its backward pass stops there, so an adapter
step can be cheaper than the reference.

Bases: ``sd15`` (Stable Diffusion 1.5 UNet, 64x64 latents = 512 px), ``flux`` (FLUX.1-dev
transformer, 32x32 packed tokens = 512 px, 512 text tokens), ``tiny`` (tests' tiny UNet, for CPU).
Weights are random (no download); timing does not depend on their values.

    python benchmarks/bench_train.py --model sd15 [--batch 4] [--steps 10] [--dtype bf16] [--checkpointing] [--cudnn-attention]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from timing import measure  # noqa: E402
from tiny_diffusion import FLUX_DEV_CONFIG, SD15_UNET_CONFIG, TINY_UNET_CONFIG  # noqa: E402
from trainer.flux_adapter import BokehFluxAdapter  # noqa: E402
from trainer.objectives import latent_image_ids, pack_latents  # noqa: E402
from trainer.unet_adapter import BokehUNetAdapter  # noqa: E402


def build(model: str, device: torch.device, dtype: torch.dtype, batch: int):
    """The base, an adapter factory and a function running the base on the batch with given kwargs."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    g = torch.Generator().manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        if model == "flux":
            base = FluxTransformer2DModel(**FLUX_DEV_CONFIG)
        else:
            base = UNet2DConditionModel(**(SD15_UNET_CONFIG if model == "sd15" else TINY_UNET_CONFIG))
    torch.set_default_dtype(previous)
    base.requires_grad_(False)
    if model == "flux":
        latents = torch.randn(batch, 16, 64, 64, generator=g).to(device, dtype)
        x = pack_latents(latents)
        fixed = dict(
            timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
            guidance=torch.full((batch,), 3.5, device=device, dtype=dtype),
            pooled_projections=torch.randn(batch, 768, generator=g).to(device, dtype),
            encoder_hidden_states=torch.randn(batch, 512, 4096, generator=g).to(device, dtype),
            txt_ids=torch.zeros(512, 3, device=device, dtype=dtype), img_ids=latent_image_ids(latents),
        )

        def make_adapter():
            return BokehFluxAdapter(base, device=device)

        def run(adapter, sample, bokeh, pivots):
            if adapter is None:
                return base(hidden_states=sample, return_dict=False, **fixed)[0]
            return adapter(base, bokeh, pivots, hidden_states=sample, **fixed)
    else:
        cfg = SD15_UNET_CONFIG if model == "sd15" else TINY_UNET_CONFIG
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("sd15", "flux", "tiny"), default="tiny",
                        help="base: SD 1.5 UNet or FLUX.1-dev at full size (random weights), or the tests' tiny UNet (default)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant, after 2 warm-up steps; the median is printed (default 5)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None, help="base dtype (default bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in the base")
    parser.add_argument("--cudnn-attention", action="store_true",
                        help="allow PyTorch's cuDNN attention backend (off, as in `bokeh train` (run.cudnn_attention): its backward "
                             "crashed full-size FLUX on an H200, torch 2.11 + cuDNN 9.19)")
    args = parser.parse_args()
    torch.backends.cuda.enable_cudnn_sdp(args.cudnn_attention)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    base, x, make_adapter, run = build(args.model, device, dtype, args.batch)
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

    results = {}
    results["adapter off (frozen base)"] = measure(frozen_step, device, args.steps)
    results["base forward only"] = measure(forward_only, device, args.steps)
    adapter = make_adapter().to(device, torch.float32)
    params = adapter.set_trainable(base)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def adapter_step(pivots) -> Callable[[], None]:
        def step() -> None:
            with autocast:
                loss = run(adapter, x, bokeh, pivots).float().square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    results["adapter on"] = measure(adapter_step(None), device, args.steps)
    results["adapter on + grounding"] = measure(adapter_step(grounded), device, args.steps)
    n_params = sum(p.numel() for p in params)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"bench_train: {args.model}, batch {args.batch}, {dtype}, {name}, adapter params {n_params:,}, "
          f"gradient checkpointing {'on' if args.checkpointing else 'off'}")
    base_time = results["adapter off (frozen base)"][0]
    for label, (seconds, peak) in results.items():
        overhead = 100 * (seconds / base_time - 1)
        print(f"  {label:28s} {seconds * 1000:9.1f} ms/step  peak {peak:6.2f} GiB  overhead {overhead:+6.1f} %")


if __name__ == "__main__":
    main()
