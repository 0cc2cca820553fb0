"""`bokeh train` on complete Stable Diffusion (latent, VAE) and FLUX.1 model folders, then sampling
the checkpoint it wrote through the pipelines: the configs/sd15.yaml and configs/flux.yaml paths,
with tiny random-weight models in place of the real ones."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipelines.loading import load_pipeline
from synth_blur.contact_sheet import contact_sheet
from test_train_data import write_dataset
from tiny_diffusion import single_thread
from tiny_pipelines import build_tiny_flux, build_tiny_sd
from trainer.config import config_from_dict
from trainer.training import train
from trainer.validation import text_band


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("ds"), groups=3, renders=2, singles=1, size=(16, 16))


@pytest.mark.parametrize("family, build, adapter", [
    ("unet", build_tiny_sd, dict(bokeh_context_dim=16, lora_rank=4)),
    ("flux", build_tiny_flux, dict(bokeh_context_dim=16, lora_rank=4)),
])
def test_train_then_sample_the_checkpoint(dataset, tmp_path, family, build, adapter):
    base = build(tmp_path / "base")
    out = tmp_path / "run"
    config = config_from_dict(dict(
        model=dict(family=family, base_model=str(base)),
        adapter=adapter,
        data=dict(dataset=str(dataset), resolution=16, batch_size=2, cache_images=True),
        optim=dict(learning_rate=1e-2),
        run=dict(output_dir=str(out), max_steps=3, checkpoint_every=3, log_every=1, progress=False),
        validation=dict(every=3, prompts=["a red ball"], levels=[0, 30], steps=2, seed=5),
    ))
    with single_thread():
        result = train(config)
        assert result["step"] == 3
        adapter_dir = out / "checkpoints" / "step-0000003" / "adapter"
        weights_changed = json.loads((adapter_dir / "config.json").read_text())
        assert weights_changed  # written in the adapter layout
        pipe = load_pipeline(checkpoint=str(out), device="cpu")  # base from the run's config
        pipe.set_progress_bar_config(disable=True)
        images = pipe("a red ball", [0, 30], seed=1, num_inference_steps=2, height=16, width=16).images
        # the validation grid's first row is what users sample from the checkpoint (same seed, steps, guidance)
        shown = pipe("a red ball", [0, 30], seed=5, num_inference_steps=2, height=16, width=16).images
    sheet = contact_sheet(shown, ["K=0", "K=30"], height=64)
    grid = Image.open(out / "validation" / "step-0000003.png").convert("RGB")
    band = text_band("a red ball  (unbounded, seed 5)", grid.width, 12)  # the row's title above it
    assert grid.height > band.height + sheet.height  # the grounded row below
    assert np.array_equal(np.asarray(grid.crop((0, 0, *band.size))), np.asarray(band))
    assert np.array_equal(np.asarray(grid.crop((0, band.height, sheet.width, band.height + sheet.height))), np.asarray(sheet))
    assert type(pipe).__name__ == ("BokehFluxPipeline" if family == "flux" else "BokehStableDiffusionPipeline")
    assert [im.size for im in images] == [(16, 16)] * 2
    # the trained adapter (its V_b moved off zero) makes K change the output
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))
