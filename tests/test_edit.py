"""Bokeh edits: the inversions against their closed forms, reconstruction of a photo at its own K on tiny
random-weight models (pixel-space UNet and FLUX) checked against the photo itself, the subject blend, and
``bokeh edit`` end to end with its one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bokeh_cli import main
from tests.tiny_diffusion import single_thread
from tests.tiny_pipelines import randomise

CAPTION = "a red ball in front of a green hedge"


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def smooth_photo(size: int) -> Image.Image:
    """A smooth colourful test photo (no model has seen it)."""
    y, x = np.mgrid[0:size, 0:size] * (32 / size)
    rgb = np.stack([128 + 100 * np.sin(x / 5), 128 + 100 * np.cos(y / 7), 128 + 60 * np.sin((x + y) / 4)], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def mean_error(image: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference in 8-bit levels."""
    return float(np.abs(np.asarray(image, np.float64) - np.asarray(reference, np.float64)).mean())


# ---------------------------------------------------------------- the inversions against closed forms


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_clean_and_noise_undo_each_parametrisation(prediction_type):
    from pipelines.inversion import clean_and_noise

    g = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(2, 3, 4, 4, generator=g).unbind(0)
    alpha_bar = torch.tensor(0.3)
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    sample = a * clean + s * noise
    output = {"epsilon": noise, "sample": clean, "v_prediction": a * noise - s * clean}[prediction_type]  # v: Salimans & Ho
    got_clean, got_noise = clean_and_noise(output, sample, alpha_bar, prediction_type)
    torch.testing.assert_close(got_clean, clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_noise, noise, atol=1e-5, rtol=0)


def test_ddim_inversion_with_a_constant_noise_prediction_is_the_closed_form():
    """A model that always predicts the noise c: DDIM moves along sqrt(a) * clean + sqrt(1 - a) * c with one clean
    sample, the one the photo has at the sampler's last level (final_alpha_cumprod); sampling back from the
    inversion's end retraces that path exactly, to the photo."""
    from diffusers import DDIMScheduler

    from pipelines.inversion import ddim_inversion

    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(7)
    g = torch.Generator().manual_seed(1)
    photo, c = torch.randn(2, 1, 4, 8, 8, generator=g).unbind(0)
    last = scheduler.final_alpha_cumprod
    clean = (photo - (1 - last).sqrt() * c) / last.sqrt()
    path = ddim_inversion(lambda x, t: c, photo, scheduler)
    assert len(path) == 8
    for x, t in zip(path, scheduler.timesteps):
        a = scheduler.alphas_cumprod[int(t)]
        torch.testing.assert_close(x, a.sqrt() * clean + (1 - a).sqrt() * c, atol=1e-5, rtol=0)
    torch.testing.assert_close(path[-1], photo)
    x = path[0]
    for t in scheduler.timesteps:
        x = scheduler.step(c, t, x).prev_sample
    torch.testing.assert_close(x, photo, atol=1e-5, rtol=0)


def test_flow_inversion_with_a_constant_velocity_is_the_straight_line():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from pipelines.inversion import flow_inversion

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(6)
    g = torch.Generator().manual_seed(2)
    x0, v = torch.randn(2, 1, 16, 4, generator=g).unbind(0)
    path = flow_inversion(lambda x, t: v, x0, scheduler)
    for x, sigma in zip(path, scheduler.sigmas):  # the last sigma is 0: the clean end
        torch.testing.assert_close(x, x0 + sigma * v, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- the pipelines on tiny random-weight models


def build_pixel_model(folder, prediction_type: str):
    """A checkpoint-like folder (model/ + adapter/) of a 32 px tiny pixel-space model predicting ``prediction_type``,
    random weights, with a DDIM schedule that does not clip (clipping is not invertible)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from bokeh_models.tiny_model import build_tiny_model
    from bokeh_models.unet_adapter import BokehUNetAdapter

    build_tiny_model(folder / "model", [CAPTION], resolution=32, block_out_channels=[16, 32], attention_levels=1,
                     text_width=32, patch_size=2, prediction_type=prediction_type, bokeh_time_embedding=True)
    scheduler = DDPMScheduler.from_pretrained(folder / "model", subfolder="scheduler")
    DDPMScheduler.from_config(scheduler.config, clip_sample=False).save_pretrained(folder / "model" / "scheduler")
    unet = UNet2DConditionModel.from_pretrained(folder / "model", subfolder="unet")
    randomise(BokehUNetAdapter(unet, bokeh_context_dim=32, lora_rank=4), seed=1, std=0.1).save_pretrained(folder / "adapter")
    return folder


@pytest.fixture(scope="module")
def pixel_checkpoint(tmp_path_factory):
    """The tiny pixel-space model predicting v (``build_pixel_model``)."""
    return build_pixel_model(tmp_path_factory.mktemp("pixel") / "ckpt", "v_prediction")


def edit_pipe(base, adapter):
    from pipelines.edit_pipeline import edit_pipeline
    from pipelines.loading import load_pipeline

    pipe = edit_pipeline(load_pipeline(str(base), str(adapter), device="cpu"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_edit_at_the_photos_own_k_reconstructs_it_closer_with_more_steps(pixel_checkpoint):
    """Pixel space: the reference is the photo itself. DDIM inversion's only approximation (the model seeing the
    point before its step) shrinks with the step size, so the error falls about as 1 / steps."""
    pipe = edit_pipe(pixel_checkpoint / "model", pixel_checkpoint / "adapter")
    photo = smooth_photo(32)
    errors = []
    for steps in (4, 12, 36):
        out = pipe(photo, CAPTION, [12], source_bokeh=12, num_inference_steps=steps, guidance_scale=1.0,
                   colour_transfer=False, output_type="np").images[0]
        errors.append(mean_error(out * 255, photo))
    assert errors[0] > 2 * errors[1] > 4 * errors[2]
    assert errors[2] < 4  # 8-bit levels
    other = pipe(photo, CAPTION, [0, 30], source_bokeh=12, num_inference_steps=12, guidance_scale=1.0).images
    assert [im.size for im in other] == [(32, 32)] * 2
    assert not np.array_equal(np.asarray(other[0]), np.asarray(other[1]))  # K reaches the regeneration


def lab_means_by_hand(image: Image.Image) -> np.ndarray:
    """The mean of each channel of ``image`` in OpenCV's 8-bit LAB encoding."""
    import cv2

    return cv2.cvtColor(np.asarray(image.convert("RGB"), np.uint8), cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(0)


@pytest.mark.parametrize("grounding_steps", [0, 6])
def test_colour_transfer_gives_each_edit_the_photos_lab_means_grounded_or_not(pixel_checkpoint, grounding_steps):
    pipe = edit_pipe(pixel_checkpoint / "model", pixel_checkpoint / "adapter")
    photo = smooth_photo(32)
    wanted = lab_means_by_hand(photo)
    for transfer in (True, False):
        images = pipe(photo, CAPTION, [0, 30], source_bokeh=12, num_inference_steps=6, grounding_steps=grounding_steps,
                      colour_transfer=transfer).images
        for image in images:
            gap = np.abs(lab_means_by_hand(image) - wanted).max()
            if transfer:
                assert gap < 1.0  # 8-bit LAB levels: the shift is rounded, then the round trip to RGB rounds again
            else:
                assert gap > 3.0


def test_encode_decode_path_gives_the_photo_back_when_every_step_is_shared(pixel_checkpoint):
    """With every step shared the rows end on the trajectory's clean end, the encoded photo, whatever the inversion
    gave before it: this checks the encode and decode path (pixels to patches and back) at every K."""
    pipe = edit_pipe(pixel_checkpoint / "model", pixel_checkpoint / "adapter")
    photo = smooth_photo(32)
    images = pipe(photo, CAPTION, [0, 30], source_bokeh=20, num_inference_steps=5, shared_steps=5,
                  colour_transfer=False).images
    for image in images:
        assert np.abs(np.asarray(image, np.int16) - np.asarray(photo, np.int16)).max() <= 1


@pytest.mark.parametrize("wrong", ["clean latents at every step", "noise at every step"])
def test_edit_after_some_shared_steps_needs_the_true_inversion(pixel_checkpoint, monkeypatch, wrong):
    """4 of 24 steps shared: the regeneration at the photo's own K starts from the trajectory's fifth point and runs
    20 steps of its own, so it comes back to the photo only from the true inverted trajectory; a trajectory that is
    the photo's clean latents, or noise, at every step leaves it far off."""
    pipe = edit_pipe(pixel_checkpoint / "model", pixel_checkpoint / "adapter")
    photo = smooth_photo(32)

    def reconstruction_error() -> float:
        out = pipe(photo, CAPTION, [12], source_bokeh=12, num_inference_steps=24, shared_steps=4,
                   colour_transfer=False, output_type="np").images[0]
        return mean_error(out * 255, photo)

    right = reconstruction_error()
    g = torch.Generator().manual_seed(5)
    monkeypatch.setattr(pipe, "invert", lambda predict, latents: [
        latents if wrong.startswith("clean") else torch.randn(latents.shape, generator=g)
        for _ in range(len(pipe.scheduler.timesteps) + 1)])
    assert right < 6 and reconstruction_error() > 3 * right


def vae_round_trip(folder, photo: Image.Image) -> np.ndarray:
    """``photo`` through the VAE of the model in ``folder`` and back (mean latents), 0..255: what a latent model can
    give back at best."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    with torch.no_grad():
        pixels = torch.from_numpy(np.asarray(photo, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    return ((decoded[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).numpy()


def test_latent_sd_encode_decode_path_is_the_vae_round_trip(sd_dir):
    """Latent Stable Diffusion (tiny, random weights), every step shared so the rows end on the encoded photo: its
    latents are the VAE's (scaled), and they decode to the VAE's round trip of the photo, whatever K."""
    pipe = edit_pipe(sd_dir / "base", sd_dir / "random")
    photo = smooth_photo(16)
    images = pipe(photo, CAPTION, [0, 30], source_bokeh=10, num_inference_steps=4, shared_steps=4,
                  colour_transfer=False, output_type="np").images
    for image in images:
        assert mean_error(image * 255, vae_round_trip(sd_dir / "base", photo)) < 0.5


def test_flux_edit_round_trips_through_flow_matching_inversion(flux_dir):
    """FLUX.1 (tiny, random weights): at the photo's own K the edit approaches the VAE's own round trip of the
    photo (the best a latent model can give back, computed here with diffusers' VAE) as steps grow."""
    pipe = edit_pipe(flux_dir / "base", flux_dir / "random")
    photo = smooth_photo(16)
    round_trip = vae_round_trip(flux_dir / "base", photo)
    errors = []
    for steps in (3, 12):
        out = pipe(photo, CAPTION, [12], source_bokeh=12, num_inference_steps=steps, colour_transfer=False,
                   output_type="np").images[0]
        errors.append(mean_error(out * 255, round_trip))
    assert errors[0] > 2.5 * errors[1]
    assert errors[1] < 2.5
    images = pipe(photo, CAPTION, [0, 30], source_bokeh=12, num_inference_steps=4, height=16, width=24).images
    assert [im.size for im in images] == [(24, 16)] * 2
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_edit_pipeline_refuses_bad_arguments(pixel_checkpoint):
    pipe = edit_pipe(pixel_checkpoint / "model", pixel_checkpoint / "adapter")
    photo = smooth_photo(32)
    with pytest.raises(ValueError, match="source_bokeh .* must be in 0..30"):
        pipe(photo, CAPTION, [0], source_bokeh=40)
    with pytest.raises(ValueError, match="multiples of 4"):
        pipe(photo.resize((30, 30)), CAPTION, [0], source_bokeh=5)
    with pytest.raises(ValueError, match="K >= 0"):
        pipe(photo, CAPTION, [-1], source_bokeh=5)
    with pytest.raises(ValueError, match="needs an output_type"):
        pipe(photo, CAPTION, [0], source_bokeh=5, subject_mask=np.ones((32, 32), bool), output_type="latent")


# ---------------------------------------------------------------- the subject blend


def test_keep_subject_takes_the_photo_inside_and_the_edit_outside():
    from pipelines.edit_blend import keep_subject

    edit, photo = Image.new("RGB", (64, 64), (0, 0, 0)), Image.new("RGB", (64, 64), (200, 100, 50))
    mask = np.zeros((128, 128), bool)  # any size: resized to the image's
    mask[32:96, 32:96] = True  # the 64 px image's [16, 48)
    out = np.asarray(keep_subject(edit, photo, mask), np.int16)
    assert (out[20:44, 20:44] == (200, 100, 50)).all()  # well inside: the photo
    outside = np.ones((64, 64), bool)
    outside[14:50, 14:50] = False
    assert (out[outside] == 0).all()  # beyond the subject: the edit
    assert np.all(np.diff(out[32, 8:33, 0]) >= 0)  # a monotone feather between


def test_keep_subject_blends_a_subject_thinner_than_the_feather():
    """A 16 px pole in a 512 px image: the 2 % erosion (10 px each side) would remove it whole; capped at half its
    half-width (4 px) it leaves an 8 px core, feathered by a Gaussian of sigma 2 px: the pole's centre takes
    erf(4 / (2 sqrt 2)) of the photo (a box of half-width 4 blurred by sigma 2), everything off the pole the edit."""
    import math

    from pipelines.edit_blend import keep_subject

    edit, photo = Image.new("RGB", (512, 512), (0, 0, 0)), Image.new("RGB", (512, 512), (200, 100, 50))
    mask = np.zeros((512, 512), bool)
    mask[64:448, 248:264] = True
    out = np.asarray(keep_subject(edit, photo, mask), np.int16)
    centre = math.erf(4 / (2 * math.sqrt(2)))
    assert np.abs(out[128:384, 255:257] - centre * np.array([200, 100, 50])).max() <= 1.5
    off = np.ones((512, 512), bool)
    off[60:452, 244:268] = False
    assert (out[off] == 0).all()
    assert np.all(np.diff(out[256, 240:257, 0]) >= 0)  # a monotone feather across the pole's left edge


@pytest.mark.parametrize("mask", [np.zeros((64, 64), bool), np.zeros((4, 4, 3), bool)], ids=["empty", "not 2-D"])
def test_keep_subject_refuses_a_mask_without_a_subject(mask):
    from pipelines.edit_blend import keep_subject

    image = Image.new("RGB", (64, 64))
    with pytest.raises(ValueError, match="subject mask") as exc:
        keep_subject(image, image, mask)
    assert len(str(exc.value).splitlines()) == 1


# ---------------------------------------------------------------- bokeh edit


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A procedural scene (photo, caption, depth and mask sidecars) at 96 x 48 px, its background blurred at K = 12."""
    from dataset_tools.demo_scenes import write_demo_data
    from estimators.image_io import load_mask
    from estimators.sidecars import photo_depth
    from pipelines.eval_sources import Scene
    from pipelines.evaluate import render_sweep

    folder = tmp_path_factory.mktemp("scene")
    path = write_demo_data(folder, 1, seed=3, width=96, height=48, progress=False)[0]
    sharp = Image.open(path).convert("RGB")
    mask = load_mask(path.with_name(path.stem + ".mask.png"))
    render_sweep([12.0], sharp, Scene(mask, photo_depth(path, sharp).disparity, "sidecar"))[0].save(path)
    return path


def edit_cli(pixel_checkpoint, scene, out, *extra):
    return main(["edit", str(scene), "--checkpoint", str(pixel_checkpoint), "--depth", "sidecar", "--mask", "sidecar",
                 "--steps", "3", "-o", str(out), *extra])


def test_edit_cli_writes_the_edits_and_a_contact_sheet(pixel_checkpoint, scene, tmp_path, capsys):
    out = tmp_path / "out"
    assert edit_cli(pixel_checkpoint, scene, out, "--bokeh", "0", "30", "--keep-subject") == 0
    caption = scene.with_suffix(".txt").read_text(encoding="utf-8").strip()
    printed = capsys.readouterr().out
    estimated = printed.split("K=", 1)[1].split(" ", 1)[0]
    assert 0 <= float(estimated) <= 30 and "(estimated)" in printed
    for k in (0, 30):
        image = Image.open(out / f"{scene.stem}-K{k}.png")
        # about 32 x 32 pixels (the model's) at the photo's 2:1: sqrt(2) * 32 = 45.3 and 32 / sqrt(2) = 22.6 px,
        # each to the nearest multiple of 4 (the model's)
        assert image.size == (44, 24)
        assert image.text["prompt"] == caption and image.text["K"] == str(k)
        assert image.text["source_bokeh"] == f"{estimated} (estimated)" and image.text["keep_subject"] == "true"
    sheet = Image.open(out / f"{scene.stem}-sheet.png")
    assert sheet.width > 3 * 256  # the input and two edits side by side
    assert edit_cli(pixel_checkpoint, scene, tmp_path / "given", "--bokeh", "5", "--source-bokeh", "12",
                    "--prompt", "a white box") == 0
    image = Image.open(tmp_path / "given" / f"{scene.stem}-K5.png")
    assert image.text["source_bokeh"] == "12 (given)" and image.text["prompt"] == "a white box"


@pytest.mark.parametrize("case", ["missing photo", "not an image", "no mask to keep", "repeated K"])
def test_edit_cli_bad_inputs_are_one_line(pixel_checkpoint, scene, tmp_path, capsys, case):
    photo, extra = scene, ["--bokeh", "0"]
    if case == "missing photo":
        photo = tmp_path / "nope.png"
    elif case == "not an image":
        photo = tmp_path / "text.png"
        photo.write_text("not a picture")
    elif case == "no mask to keep":
        extra = ["--bokeh", "0", "--keep-subject", "--mask", "none", "--source-bokeh", "12"]
    else:
        extra = ["--bokeh", "0", "0"]
    code = main(["edit", str(photo), "--checkpoint", str(pixel_checkpoint), "--depth", "sidecar", "--mask", "sidecar",
                 "--steps", "2", "-o", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("bokeh edit: error:")
    assert not (tmp_path / "o").exists()


def test_edit_cli_refuses_levels_out_of_range(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["edit", "photo.png", "--bokeh", "31", "-o", "o"])
    assert exc.value.code == 2 and "0..30" in capsys.readouterr().err


@pytest.mark.parametrize("root_name", ["sd_dir", "flux_dir"])
def test_model_cpu_offload_on_the_edit_pipeline_gives_the_plain_edit(root_name, request):
    """diffusers' enable_model_cpu_offload on an edit pipeline (the inversion included): hooks on every model of the
    offload sequence and the same pixels as without them (on the CPU the hooks' code paths run; see test_pipelines)."""
    root = request.getfixturevalue(root_name)
    pipe = edit_pipe(root / "base", root / "random")
    common = dict(source_bokeh=12, num_inference_steps=3, height=16, width=16)
    plain = pipe(smooth_photo(16), CAPTION, [0, 30], **common).images
    pipe.enable_model_cpu_offload(device="cpu")
    assert all(hasattr(getattr(pipe, name), "_hf_hook") for name in pipe.model_cpu_offload_seq.split("->"))
    offloaded = pipe(smooth_photo(16), CAPTION, [0, 30], **common).images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain, offloaded))
