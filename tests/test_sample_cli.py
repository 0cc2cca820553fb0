"""``bokeh sample`` end to end on a tiny pixel-space model laid out as a training run."""
from __future__ import annotations

import pytest
from PIL import Image

from bokeh_cli import main
from pipelines.loading import checkpoint_paths
from tests.tiny_diffusion import single_thread
from tests.tiny_pipelines import randomise

PROMPT = "a red ball in front of a green hedge"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with two checkpoints, each holding model/ (the tiny base) and adapter/."""
    from diffusers import UNet2DConditionModel

    from bokeh_models.tiny_model import build_tiny_model
    from bokeh_models.unet_adapter import BokehUNetAdapter

    run = tmp_path_factory.mktemp("run")
    for step in (1, 2):
        ckpt = run / "checkpoints" / f"step-{step:07d}"
        build_tiny_model(ckpt / "model", [PROMPT], resolution=32, block_out_channels=[16, 32], attention_levels=1,
                         text_width=32)
        unet = UNet2DConditionModel.from_pretrained(ckpt / "model", subfolder="unet")
        randomise(BokehUNetAdapter(unet, bokeh_context_dim=32, lora_rank=4), seed=step, std=0.1).save_pretrained(ckpt / "adapter")
    return run


def test_run_folder_resolves_to_its_latest_checkpoint(run_dir):
    base, adapter = checkpoint_paths(run_dir)
    assert base.endswith("step-0000002/model") and adapter.endswith("step-0000002/adapter")


def test_sample_writes_one_image_per_level_and_a_sheet(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    with single_thread():
        code = main(["sample", "--checkpoint", str(run_dir), "--prompt", PROMPT, "--bokeh", "0", "15", "30",
                     "--seed", "4", "--steps", "3", "--pivot", "10", "--grounding-steps", "2", "--bokeh-guidance", "3",
                     "-o", str(out)])
    assert code == 0
    prefix = "a_red_ball_in_front_of_a_green_hedge-s4"
    for k in (0, 15, 30):
        image = Image.open(out / f"{prefix}-K{k}.png")
        assert image.size == (32, 32)
        assert image.text == {"prompt": PROMPT, "seed": "4", "steps": "3", "guidance": "2", "bokeh_guidance": "3",
                              "mode": "grounded on K=10", "K": str(k)}  # guidance: the tiny model's default
    sheet = Image.open(out / f"{prefix}-sheet.png")
    assert sheet.width > 3 * 256  # three labelled thumbnails side by side
    assert "grounded on K=10" in capsys.readouterr().out
    with single_thread():
        assert main(["sample", "--checkpoint", str(run_dir), "--prompt", PROMPT, "--bokeh", "0", "30", "--seed", "4",
                     "--steps", "3", "--pivot", "10", "--shared-steps", "2", "-o", str(out)]) == 0
        assert "first 2 steps at K=10" in capsys.readouterr().out
        assert main(["sample", "--checkpoint", str(run_dir), "--prompt", PROMPT, "--bokeh", "0", "--shared-steps", "2",
                     "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--shared-steps shares the pivot's K: give --pivot" in err


def test_missing_base_is_one_line(tmp_path, capsys):
    code = main(["sample", "--base", str(tmp_path / "nope"), "--adapter", str(tmp_path / "nope"), "--family", "unet",
                 "--prompt", "x", "--bokeh", "5", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nope" in err


def test_out_of_range_level_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--base", "b", "--adapter", "a", "--prompt", "x", "--bokeh", "31", "-o", "o"])
    assert exc.value.code == 2 and "0..30" in capsys.readouterr().err
