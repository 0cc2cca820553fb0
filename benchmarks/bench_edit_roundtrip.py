"""Round trip of ``bokeh edit`` at a photo's own K on tiny random-weight models: invert, regenerate, and compare
with the photo (pixel-space UNet predicting v: the photo itself; FLUX.1: the VAE's round trip of the photo), for a
growing number of steps. The mechanism behind ``tests/test_edit.py``'s reconstruction checks, with the figures.

    python benchmarks/bench_edit_roundtrip.py [--steps 4 12 36 100]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_edit import CAPTION, build_pixel_model, edit_pipe, mean_error, smooth_photo  # noqa: E402
from tests.tiny_pipelines import build_tiny_flux, build_tiny_sd, randomise  # noqa: E402


def vae_round_trip(pipe, photo) -> np.ndarray:
    """The photo through the pipeline's VAE and back, 0..255."""
    pixels, _ = pipe.photo_pixels(photo, None, None)
    with torch.no_grad():
        latents = pipe.to_batch(pipe.encode_image(pixels), photo.height, photo.width)
        return np.asarray(pipe.decode(latents, photo.height, photo.width)[0], np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 12, 36, 100])
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = {}
        for p in ("v_prediction", "epsilon", "sample"):
            folder = build_pixel_model(root / p, p)
            models[f"pixel UNet, {p}"] = (folder / "model", folder / "adapter")
        from diffusers import FluxTransformer2DModel, UNet2DConditionModel

        from bokeh_models.flux_adapter import BokehFluxAdapter
        from bokeh_models.unet_adapter import BokehUNetAdapter

        build_tiny_sd(root / "sd")
        unet = UNet2DConditionModel.from_pretrained(root / "sd", subfolder="unet")
        randomise(BokehUNetAdapter(unet, lora_rank=4, bokeh_context_dim=32), seed=3, std=0.1).save_pretrained(root / "sd-adapter")
        models["latent SD, epsilon"] = (root / "sd", root / "sd-adapter")
        build_tiny_flux(root / "flux")
        transformer = FluxTransformer2DModel.from_pretrained(root / "flux", subfolder="transformer")
        randomise(BokehFluxAdapter(transformer, lora_rank=4, bokeh_context_dim=32), seed=4, std=0.2).save_pretrained(root / "flux-adapter")
        models["FLUX.1, flow matching"] = (root / "flux", root / "flux-adapter")
        print("mean |edit - reference| in 8-bit levels at the photo's own K (K = 12), by steps " + str(args.steps))
        for name, (base, adapter) in models.items():
            pipe = edit_pipe(base, adapter)
            side = 32 if name.startswith("pixel") else 16
            photo = smooth_photo(side)
            reference = np.asarray(photo, np.float64) if pipe.vae is None else vae_round_trip(pipe, photo)
            errors = [mean_error(pipe(photo, CAPTION, [12], source_bokeh=12, num_inference_steps=n, colour_transfer=False,
                                      output_type="np").images[0] * 255, reference) for n in args.steps]
            print(f"  {name:24s} " + "  ".join(f"{e:7.2f}" for e in errors))


if __name__ == "__main__":
    main()
