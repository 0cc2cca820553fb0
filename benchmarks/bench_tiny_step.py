"""Step time of the tiny model's whole training step (text encoder, UNet and bokeh adapter all
training: forward, loss with the config's weights, backward, AdamW) for configs/tiny.yaml as shipped
(2 x 2 pixel patches) and variants: the UNet on whole pixels (p = 1), other patch
sizes and widths (``model.tiny.patch_size``), no detail loss, the weight average (``optim.ema_decay``); same
batch of 64 px images, CPU or GPU.
The ratio is against the shipped config in the same run; with ``--rounds`` the variants take turns, so a slow
spell of the machine hits them all, and each figure is the median of the rounds' medians.

    python benchmarks/bench_tiny_step.py [--threads 2] [--batch 8] [--steps 10] [--rounds 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import measure  # noqa: E402
from trainer.backbones import UNetBackbone  # noqa: E402
from trainer.config import TrainConfig, load_config  # noqa: E402
from trainer.ema import WeightAverage  # noqa: E402
from bokeh_models.tiny_model import build_tiny_model  # noqa: E402
from trainer.training import set_loss_weights, trainable_parameters  # noqa: E402

CAPTIONS = ["a red star in front of a leafy green hedge", "a purple cylinder on a wooden floor in front of trees"]
#: (label, overrides of the shipped model.tiny settings, overrides of its optim settings)
VARIANTS = [
    ("configs/tiny.yaml as shipped (p = 2)", {}, {}),
    ("without the detail loss", {}, dict(detail_weight=0.0)),
    ("with the weight average (ema_decay 0.999)", {}, dict(ema_decay=0.999)),
    ("p = 1, no caption in the time embedding", dict(patch_size=1, text_time_embedding=False), {}),
    ("p = 2, channels [64, 64, 96, 96]", dict(block_out_channels=[64, 64, 96, 96]), {}),
    ("p = 4, channels [96, 128, 128]", dict(patch_size=4, block_out_channels=[96, 128, 128]), {}),
]


def training_step(config: TrainConfig, batch: int, device: torch.device) -> tuple[Callable[[], None], int]:
    """One training step of ``config``'s tiny model, as a function, and the number of trained parameters."""
    resolution = config.data.resolution
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model(tmp, CAPTIONS, resolution, **config.model.tiny)
        backbone = UNetBackbone.load(tmp)
    set_loss_weights(backbone, config)
    backbone.unet.to(device).train()
    backbone.text_encoder.to(device).train()
    adapter = backbone.make_adapter(config.adapter).to(device)
    params = trainable_parameters(adapter, backbone, {"unet": backbone.unet, "text_encoder": backbone.text_encoder})
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    average = WeightAverage(params, config.optim.ema_decay) if config.optim.ema_decay else None
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1).to(device)
    noise_shape = (batch, *backbone.latent_shape(resolution))
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
    levels = [float(3 * i % 31) for i in range(batch)]
    pivots = [-1] + [0] * (batch - 1)
    weights = torch.ones(batch, 1, *noise_shape[-2:], device=device)  # the subject weight on the central quarter
    h, w = noise_shape[-2:]
    weights[..., h // 4:3 * h // 4, w // 4:3 * w // 4] = config.data.subject_weight

    def step() -> None:
        text = backbone.encode_text(captions, device)
        noise = torch.randn(noise_shape, generator=g).to(device)
        u = torch.rand(batch, generator=g).to(device)
        loss = backbone.loss(adapter, backbone.encode_images(pixels), text, levels, pivots, noise, u, weights)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if average is not None:
            average.update(1000)  # past the decay's warm-up

    return step, sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2, as the demo trains)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: configs/tiny.yaml's)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and round, after 2 warm-up steps (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in which the variants take turns (default 3)")
    args = parser.parse_args()
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()  # model save / load bars between the figures
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(ROOT / "configs" / "tiny.yaml")
    resolution, batch = config.data.resolution, args.batch or config.data.batch_size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"bench_tiny_step: batch {batch} at {resolution} px, {where}, median of {args.rounds} rounds' medians of {args.steps} steps")
    steps, n_params = {}, {}
    for label, overrides, optim in VARIANTS:
        variant = dataclasses.replace(config, model=dataclasses.replace(config.model, tiny={**config.model.tiny, **overrides}),
                                      optim=dataclasses.replace(config.optim, **optim))
        steps[label], n_params[label] = training_step(variant, batch, device)
    times = {label: [] for label in steps}
    for _ in range(args.rounds):
        for label, step in steps.items():
            times[label].append(measure(step, device, args.steps)[0])
    reference = statistics.median(times[VARIANTS[0][0]])
    for label in steps:
        seconds = statistics.median(times[label])
        spread = f"  rounds {min(times[label]) * 1000:.0f}-{max(times[label]) * 1000:.0f} ms" if args.rounds > 1 else ""
        print(f"  {label:42s} {seconds * 1000:8.1f} ms/step  {n_params[label] / 1e6:5.2f} M params  "
              f"x{reference / seconds:4.2f} steps per minute{spread}")


if __name__ == "__main__":
    main()
