"""Sampling pipelines: against diffusers' own pipelines (fresh adapter = base model), against a
step-by-step transcription of the released FLUX inference loop (grounded, random adapter), and the
properties the issue asks for (count, size, determinism, grounding_steps=0 == unbounded)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny_diffusion import single_thread
from tests.tiny_pipelines import randomise

PROMPT = "a red ball in front of a green hedge"


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def sample(pipe, *args, **kwargs) -> list[Image.Image]:
    return pipe(*args, **kwargs).images


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def load(root, adapter):
    from pipelines.loading import load_pipeline

    pipe = load_pipeline(str(root / "base"), str(root / adapter), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sd_with_fresh_adapter_is_diffusers_stable_diffusion(sd_dir):
    from diffusers import StableDiffusionPipeline

    pipe = load(sd_dir, "fresh")
    images = sample(pipe, PROMPT, [0, 15, 30], seed=7, num_inference_steps=6, guidance_scale=5.0, negative_prompt="a white box")
    reference = StableDiffusionPipeline.from_pretrained(sd_dir / "base")
    reference.set_progress_bar_config(disable=True)
    expected = reference(PROMPT, negative_prompt="a white box", num_inference_steps=6, guidance_scale=5.0,
                         generator=torch.Generator().manual_seed(7), height=16, width=16).images[0]
    assert len(images) == 3
    for image in images:  # a fresh adapter adds nothing, whatever K
        assert np.abs(pixels(image) - pixels(expected)).max() <= 1


def test_flux_with_fresh_adapter_is_diffusers_flux(flux_dir):
    from diffusers import FluxPipeline

    pipe = load(flux_dir, "fresh")
    images = sample(pipe, PROMPT, [0, 30], seed=11, num_inference_steps=5, guidance_scale=3.5, height=16, width=24)
    reference = FluxPipeline.from_pretrained(flux_dir / "base")
    reference.set_progress_bar_config(disable=True)
    expected = reference(PROMPT, num_inference_steps=5, guidance_scale=3.5, height=16, width=24,
                         generator=torch.Generator().manual_seed(11)).images[0]
    assert images[0].size == (24, 16)
    for image in images:
        assert np.abs(pixels(image) - pixels(expected)).max() <= 1


def released_flux_image(pipe, prompt, seed, target, pivot, guidance, true_cfg, steps, size, grounding_steps):
    """The released inference loop (inference_flux.py generate_image), transcribed for one target K:
    a [target, pivot] batch, both rows swapped onto the pivot's queries for the first steps."""
    from diffusers import FluxPipeline
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
    from diffusers.utils.torch_utils import randn_tensor

    flux, adapter = pipe, pipe.adapter
    grounded = grounding_steps > 0 and pivot is not None
    n = 2 if grounded else 1

    def encode(text):
        clip_ids = flux.tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        pooled = flux.text_encoder(clip_ids, output_hidden_states=False).pooler_output.repeat(n, 1)
        t5_ids = flux.tokenizer_2([text], padding="max_length", max_length=512, truncation=True, return_tensors="pt").input_ids
        embeds = flux.text_encoder_2(t5_ids)[0].repeat(n, 1, 1)
        return embeds, pooled

    embeds, pooled = encode(prompt)
    neg_embeds, neg_pooled = encode("bad quality, low resolution")
    text_ids = torch.zeros(embeds.shape[1], 3)
    levels = [target, pivot] if grounded else [target]
    generator = torch.Generator("cpu").manual_seed(seed)
    channels = flux.transformer.config.in_channels // 4
    h = w = 2 * (size // (flux.vae_scale_factor * 2))
    latents = randn_tensor((1, channels, h, w), generator=generator, dtype=flux.vae.dtype).expand(n, -1, -1, -1)
    latents = FluxPipeline._pack_latents(latents, n, channels, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, "cpu", embeds.dtype)
    mu = calculate_shift(latents.shape[1], 256, 4096, 0.5, 1.15)
    timesteps, _ = retrieve_timesteps(flux.scheduler, steps, "cpu", sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    guidance_vec = torch.full([1], guidance, dtype=torch.float32).expand(n)
    for i, t in enumerate(timesteps):
        timestep = t.expand(n).to(latents.dtype) / 1000
        swap = [1, 1] if grounded and i < grounding_steps else None
        pred = adapter(flux.transformer, levels, swap, hidden_states=latents, timestep=timestep, guidance=guidance_vec,
                       pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=img_ids)
        if true_cfg > 1:
            neg = adapter(flux.transformer, [-1.0] * n, None, hidden_states=latents, timestep=timestep,
                          guidance=torch.ones_like(guidance_vec), pooled_projections=neg_pooled,
                          encoder_hidden_states=neg_embeds, txt_ids=text_ids, img_ids=img_ids)
            pred = neg + true_cfg * (pred - neg)
        latents = flux.scheduler.step(pred, t, latents, return_dict=False)[0]
    latents = FluxPipeline._unpack_latents(latents, size, size, flux.vae_scale_factor)
    latents = latents / flux.vae.config.scaling_factor + flux.vae.config.shift_factor
    images = flux.image_processor.postprocess(flux.vae.decode(latents, return_dict=False)[0], output_type="pil")
    if not grounded:
        return images[0]
    from pipelines.colour_transfer import lab_mean_transfer

    return lab_mean_transfer(images[1], images[0])


@pytest.mark.parametrize("true_cfg", [1.0, 2.0])
def test_flux_grounded_matches_the_released_loop(flux_dir, true_cfg):
    pipe = load(flux_dir, "random")
    targets, pivot = [0.0, 12.0, 30.0], 18.0
    images = sample(pipe, PROMPT, targets, pivot=pivot, grounding_steps=3, seed=5, num_inference_steps=5, guidance_scale=3.0,
                  true_cfg=true_cfg, height=16, width=16)
    with torch.no_grad():
        expected = [released_flux_image(pipe, PROMPT, 5, k, pivot, 3.0, true_cfg, 5, 16, 3) for k in targets]
    assert not np.array_equal(pixels(images[0]), pixels(images[2]))  # the adapter makes K matter
    for got, want in zip(images, expected):
        assert np.abs(pixels(got) - pixels(want)).max() <= 1


@pytest.mark.parametrize("root_name", ["sd_dir", "flux_dir"])
def test_zero_grounding_steps_is_unbounded_and_batching_changes_nothing(root_name, request):
    root = request.getfixturevalue(root_name)
    pipe = load(root, "random")
    common = dict(seed=2, num_inference_steps=4, height=16, width=16)
    unbounded = sample(pipe, PROMPT, [0, 20], **common)
    assert [pixels(i).tolist() for i in sample(pipe, PROMPT, [0, 20], pivot=15, grounding_steps=0, **common)] == \
        [pixels(i).tolist() for i in unbounded]
    alone = sample(pipe, PROMPT, [20], **common)[0]
    assert np.abs(pixels(alone) - pixels(unbounded[1])).max() <= 1
    grounded = sample(pipe, PROMPT, [0, 20], pivot=15, grounding_steps=2, **common)
    grounded_alone = sample(pipe, PROMPT, [20], pivot=15, grounding_steps=2, **common)[0]
    assert np.abs(pixels(grounded_alone) - pixels(grounded[1])).max() <= 1
    assert not np.array_equal(pixels(grounded[1]), pixels(unbounded[1]))


def test_colour_transfer_is_the_last_step_and_can_be_left_out(sd_dir):
    from pipelines.colour_transfer import lab_mean_transfer

    pipe = load(sd_dir, "random")
    common = dict(seed=3, num_inference_steps=4, height=16, width=16)
    shifted = sample(pipe, PROMPT, [0, 30], pivot=15, grounding_steps=3, **common)
    own = sample(pipe, PROMPT, [0, 30], pivot=15, grounding_steps=3, colour_transfer=False, **common)
    # The pivot row attends with its own queries over its keys twice: plain attention, so its image is the
    # unbounded one at K = 15 (to batching's rounding).
    pivot = sample(pipe, PROMPT, [15], **common)[0]
    for got, raw in zip(shifted, own):
        assert np.abs(pixels(got) - pixels(lab_mean_transfer(pivot, raw))).max() <= 2
    assert any(not np.array_equal(pixels(a), pixels(b)) for a, b in zip(shifted, own))


@pytest.mark.parametrize("root_name", ["sd_dir", "flux_dir"])
def test_all_steps_shared_give_the_pivot_image_at_every_k(root_name, request):
    """Every step at the pivot's K, from one noise: each image is the plain K = pivot sample (grounded on the
    pivot row or not: its queries over keys the rows share are plain attention)."""
    pipe = load(request.getfixturevalue(root_name), "random")
    common = dict(seed=4, num_inference_steps=3, height=16, width=16)
    pivot = pixels(sample(pipe, PROMPT, [18], **common)[0])
    for grounding_steps in (0, 2):
        images = sample(pipe, PROMPT, [0, 30], pivot=18, grounding_steps=grounding_steps, shared_steps=3, colour_transfer=False, **common)
        for image in images:
            assert np.abs(pixels(image) - pivot).max() <= 1


SHARED_CASES = [
    ("sd_dir", dict(guidance_scale=1.0)),
    ("sd_dir", dict(guidance_scale=2.0, bokeh_guidance=3.0)),
    ("flux_dir", dict(true_cfg=2.0, bokeh_guidance=3.0)),
]


@pytest.mark.parametrize("root_name, guidance", SHARED_CASES)
@pytest.mark.parametrize("grounding_steps", [0, 3])
def test_shared_steps_by_hand(root_name, guidance, grounding_steps, request):
    """The first S steps at the pivot's K for every row, the rest at each row's own K (grounded for the first
    ``grounding_steps``): the pipeline's own steps driven by hand over the whole batch give the same images."""
    pipe = load(request.getfixturevalue(root_name), "random")
    levels, pivot, steps, shared = [0.0, 30.0, -1.0], 12.0, 4, 2
    call = {"guidance_scale": pipe.default_guidance, "true_cfg": 1.0, "bokeh_guidance": None, **guidance}
    got = sample(pipe, PROMPT, levels, pivot=pivot, grounding_steps=grounding_steps, shared_steps=shared, seed=6,
               num_inference_steps=steps, height=16, width=16, colour_transfer=False, **call)
    rows = levels + [pivot] if grounding_steps else levels
    grounded_on = [len(rows) - 1] * len(rows) if grounding_steps else None
    scales = (call["guidance_scale"], call["true_cfg"], call["bokeh_guidance"])
    with torch.no_grad():
        text = pipe.encode(PROMPT, pipe.default_negative_prompt, len(rows), pipe.uses_guidance_pass(*scales[:2]))
        noise = torch.randn((1, *pipe.latent_shape(16, 16)), generator=torch.Generator().manual_seed(6), dtype=pipe.noise_dtype)
        latents = pipe.initial_latents(noise, len(rows), 16, 16)
        for i, t in enumerate(pipe.set_timesteps(steps, latents)):
            step_levels = [pivot] * len(rows) if i < shared else rows
            grounding = grounded_on if i < grounding_steps else None
            latents = pipe.step(pipe.predict(latents, t, text, step_levels, grounding, *scales), t, latents)
        want = pipe.decode(latents, 16, 16)[:len(levels)]
    for a, b in zip(got, want):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1
    plain = sample(pipe, PROMPT, levels, seed=6, num_inference_steps=steps, height=16, width=16, **call)
    assert not np.array_equal(pixels(got[1]), pixels(plain[1]))  # sharing changed the K = 30 image


def test_shared_steps_are_one_trajectory_with_a_noisy_scheduler(sd_dir):
    """A scheduler that adds fresh noise at each step (Euler ancestral) would part the rows during the shared
    steps if each were stepped on its own; stepped as one, every step shared leaves one image at every K."""
    from diffusers import EulerAncestralDiscreteScheduler

    pipe = load(sd_dir, "random")
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    images = sample(pipe, PROMPT, [0, 12, 30], pivot=18, grounding_steps=0, shared_steps=4, seed=3, num_inference_steps=4,
                  height=16, width=16, colour_transfer=False)
    assert all(np.array_equal(pixels(images[0]), pixels(image)) for image in images[1:])
    apart = sample(pipe, PROMPT, [0, 0], seed=3, num_inference_steps=4, height=16, width=16)  # one K, rows stepped apart
    assert not np.array_equal(pixels(apart[0]), pixels(apart[1]))


@pytest.mark.parametrize("root_name", ["sd_dir", "flux_dir"])
def test_shared_steps_denoise_one_row(root_name, request):
    """During the shared steps the rows are one image, so one row goes through the model; then the whole
    batch (two levels + the pivot row)."""
    pipe = load(request.getfixturevalue(root_name), "random")
    rows_seen = []
    predict = pipe.predict

    def counting(latents, *args):
        rows_seen.append(latents.shape[0])
        return predict(latents, *args)

    pipe.predict = counting
    sample(pipe, PROMPT, [0, 30], pivot=12, grounding_steps=3, shared_steps=2, seed=1, num_inference_steps=4, height=16, width=16)
    assert rows_seen == [1, 1, 3, 3]


def test_guided_formula_by_hand():
    from bokeh_models.guidance import guided

    positive, no_bokeh, negative = torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([1.0])
    assert guided(positive, negative, 2.0).item() == 1 + 2 * (3 - 1)  # classic CFG
    assert guided(positive, None, 2.0).item() == 3  # nothing to guide against
    assert guided(positive, negative, 2.0, no_bokeh, 5.0).item() == 1 + 2 * (2 - 1) + 5 * (3 - 2)  # 8
    assert guided(positive, None, 2.0, no_bokeh, 5.0).item() == 2 + 5 * (3 - 2)  # 7


@pytest.mark.parametrize("root_name, scale", [("sd_dir", dict(guidance_scale=3.0)), ("flux_dir", dict(true_cfg=2.0))])
def test_bokeh_guidance_identities(root_name, scale, request):
    """Guiding K with the prompt's own scale is plain guidance (extra pass cancels); bokeh_guidance 0
    removes K; other values change the images."""
    pipe = load(request.getfixturevalue(root_name), "random")
    common = dict(seed=2, num_inference_steps=4, height=16, width=16, **scale)
    same = next(iter(scale.values()))

    def close(a, b):
        return all(np.abs(pixels(x) - pixels(y)).max() <= 1 for x, y in zip(a, b))

    for mode in (dict(), dict(pivot=15, grounding_steps=2)):
        assert close(sample(pipe, PROMPT, [0, 30], bokeh_guidance=same, **mode, **common), sample(pipe, PROMPT, [0, 30], **mode, **common))
    no_k = sample(pipe, PROMPT, [-1, -1], **common)
    assert close(sample(pipe, PROMPT, [0, 30], bokeh_guidance=0.0, **common), no_k)
    stronger = sample(pipe, PROMPT, [0, 30], bokeh_guidance=3 * same, **common)
    assert not close(stronger, sample(pipe, PROMPT, [0, 30], **common))
    with pytest.raises(ValueError, match="bokeh_guidance must be >= 0"):
        sample(pipe, PROMPT, [0], bokeh_guidance=-1.0, **common)


def test_unet_guidance_chunks_rows_and_pivots(sd_dir):
    """One UNet pass over [prompt + K, prompt without K, negative]; each chunk grounded on its own pivot
    row (negative: not grounded); the output combined by the guidance formula worked by hand."""
    pipe = load(sd_dir, "random")
    calls = []

    def fake_adapter(unet, x, t, embeds, bokeh, pivot_ids):
        calls.append((list(bokeh), list(pivot_ids), embeds.shape[0]))
        return torch.arange(x.shape[0], dtype=x.dtype).view(-1, 1, 1, 1).expand_as(x)  # row i predicts i

    pipe.adapter = fake_adapter
    text = pipe.encode(PROMPT, "", rows=3, with_negative=True)
    latents = torch.zeros(3, pipe.unet.config.in_channels, 2, 2)
    out = pipe.predict(latents, torch.tensor(10), text, [0.0, 30.0, 15.0], [2, 2, -1], 3.0, 1.0, 5.0)
    assert calls == [([0.0, 30.0, 15.0] + [-1.0] * 6, [2, 2, -1, 5, 5, -1, -1, -1, -1], 9)]
    # row i: positive i, no K 3 + i, negative 6 + i -> 6 + i + 3 * (-3) + 5 * (-3) = i - 18
    assert out[:, 0, 0, 0].tolist() == [-18.0, -17.0, -16.0]


@pytest.mark.parametrize("patch_size", [1, 2])
def test_tiny_pixel_model_counts_sizes_and_seeds(tmp_path, patch_size):
    from pipelines.pipeline_sd import PIXEL_GUIDANCE, BokehStableDiffusionPipeline
    from bokeh_models.tiny_model import build_tiny_model
    from bokeh_models.unet_adapter import BokehUNetAdapter
    from diffusers import UNet2DConditionModel

    build_tiny_model(tmp_path / "base", [PROMPT], resolution=32, block_out_channels=[16, 32], attention_levels=1,
                     patch_size=patch_size, text_width=32, bokeh_time_embedding=True, text_time_embedding=True, resnet_time_scale_shift="scale_shift")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "base", subfolder="unet")
    assert unet.config.class_embed_type == "projection" and unet.config.projection_class_embeddings_input_dim == 1
    assert unet.config.addition_embed_type == "text" and unet.config.addition_embed_type_num_heads == 2  # text_heads
    randomise(BokehUNetAdapter(unet, bokeh_context_dim=32, lora_rank=4), seed=1, std=0.1).save_pretrained(tmp_path / "adapter")
    pipe = BokehStableDiffusionPipeline.from_pretrained(tmp_path / "base", tmp_path / "adapter", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.default_resolution == 32 and pipe.default_guidance == PIXEL_GUIDANCE
    assert pipe.size_multiple == 2 * patch_size
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"  # the DDPM training scheduler is swapped
    first = sample(pipe, PROMPT, [0, 10, 20, 30], seed=3, num_inference_steps=4)
    assert [im.size for im in first] == [(32, 32)] * 4
    again = sample(pipe, PROMPT, [0, 10, 20, 30], seed=3, num_inference_steps=4)
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(first, again))
    other = sample(pipe, PROMPT, [0, 10, 20, 30], seed=4, num_inference_steps=4)
    assert not np.array_equal(pixels(first[0]), pixels(other[0]))
    assert not np.array_equal(pixels(first[0]), pixels(first[3]))


def test_a_vae_less_unet_must_take_rgb_patches(sd_dir, tmp_path):
    import shutil

    from estimators.model_loading import ModelUnavailableError
    from pipelines.loading import load_pipeline

    shutil.copytree(sd_dir / "base", tmp_path / "base", ignore=shutil.ignore_patterns("vae"))  # a 4-channel latent UNet
    with pytest.raises(ModelUnavailableError, match=r"no vae/\) takes 3 \* p\^2 input channels .*got 4$"):
        load_pipeline(str(tmp_path / "base"), str(sd_dir / "fresh"), device="cpu")


@pytest.mark.parametrize("kwargs, message", [
    (dict(bokeh=[31.0]), "0..30"),
    (dict(bokeh=[]), "at least one"),
    (dict(bokeh=[5.0], pivot=40.0), "pivot"),
    (dict(bokeh=[5.0], height=18), "multiples of 4"),
    (dict(bokeh=[5.0], true_cfg=2.0), "FLUX option"),
    (dict(bokeh=[5.0], shared_steps=1), "needs a pivot"),
    (dict(bokeh=[5.0], pivot=15.0, shared_steps=-1), "shared_steps must be >= 0"),
])
def test_bad_requests_are_one_line_errors(sd_dir, kwargs, message):
    pipe = load(sd_dir, "fresh")
    with pytest.raises(ValueError, match=message):
        sample(pipe, PROMPT, num_inference_steps=2, **kwargs)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_ddim_sampling_recovers_the_image_with_an_oracle_denoiser(tmp_path, patch_size):
    """A denoiser that knows the clean image x0 (its exact noise for any x_t): DDIM (eta 0) ends on x0, for a
    list of prompts, as latents and as images (pixel patches unshuffled by the decoder)."""
    from bokeh_models.components import load_unet_components
    from bokeh_models.tiny_model import build_tiny_model
    from bokeh_models.unet_adapter import BokehUNetAdapter
    from pipelines.pipeline_sd import BokehStableDiffusionPipeline

    build_tiny_model(tmp_path / "base", [PROMPT], 16, patch_size=patch_size, block_out_channels=[16, 32],
                     attention_levels=1, text_width=32)
    parts = load_unet_components(str(tmp_path / "base"))
    target = torch.linspace(-0.9, 0.9, 3 * 16 * 16).reshape(1, 3, 16, 16)
    latent_target = torch.nn.functional.pixel_unshuffle(target, patch_size)
    alphas = parts["scheduler"].alphas_cumprod

    def oracle(unet, x, t, text, bokeh=None, pivot_ids=None):
        a = alphas[int(t)]  # the exact noise of x_t = sqrt(a) x0 + sqrt(1 - a) eps for the known x0
        return (x - a.sqrt() * latent_target) / (1 - a).sqrt()

    pipe = BokehStableDiffusionPipeline(**parts, adapter=BokehUNetAdapter(parts["unet"], bokeh_context_dim=32, lora_rank=4))
    pipe.set_progress_bar_config(disable=True)
    pipe.adapter = oracle
    common = dict(num_inference_steps=10, guidance_scale=1.0, seed=0)
    latents = pipe(["a red box", "a blue cone"], [0, 30], output_type="latent", **common).images
    assert latents.shape == (4, *latent_target.shape[1:])
    assert torch.allclose(latents, latent_target.expand(4, -1, -1, -1), atol=1e-4)
    images = pipe(["a red box", "a blue cone"], [0, 30], output_type="pt", **common).images
    assert images.shape == (4, 3, 16, 16)
    assert (images - (target + 1) / 2).abs().max() <= 0.5 / 255 + 1e-4  # 8-bit images


def test_stock_flux_pipeline_with_the_adapters_kwargs_gives_the_same_pixels(flux_dir):
    """docs/sample.md's recipe: diffusers' own FluxPipeline, the adapter installed on its transformer and its
    attention kwargs passed for every step, samples what BokehFluxPipeline does; without them, one-line error."""
    from diffusers import FluxPipeline

    from bokeh_models.flux_adapter import BokehFluxAdapter

    stock = FluxPipeline.from_pretrained(flux_dir / "base")
    stock.set_progress_bar_config(disable=True)
    adapter = BokehFluxAdapter.from_pretrained(flux_dir / "random", stock.transformer)
    common = dict(num_inference_steps=4, guidance_scale=3.0, height=16, width=16)
    ours = load(flux_dir, "random")
    for k in (0.0, 24.0):
        with torch.no_grad():
            got = stock(PROMPT, generator=torch.Generator().manual_seed(9), joint_attention_kwargs=adapter.attention_kwargs(k),
                        **common).images[0]
        want = sample(ours, PROMPT, [k], seed=9, **common)[0]
        assert np.abs(pixels(got) - pixels(want)).max() <= 1
    assert not np.array_equal(pixels(got), pixels(sample(ours, PROMPT, [0.0], seed=9, **common)[0]))
    with pytest.raises(ValueError, match="got no bokeh condition: pass the adapter's attention_kwargs") as info:
        stock(PROMPT, generator=torch.Generator().manual_seed(9), **common)
    assert "\n" not in str(info.value)


def test_pipeline_conventions_outputs_prompt_lists_generator_latents_and_callback(sd_dir):
    """diffusers' calling conventions, each checked against the plain call: prompt lists and num_images_per_prompt
    (sweeps in order, noise drawn in turn from one generator), latents, output types, return_dict, callbacks."""
    pipe = load(sd_dir, "random")
    common = dict(num_inference_steps=3, height=16, width=16)
    levels = [0.0, 30.0]
    out = pipe(["a red ball", "a white box"], levels, num_images_per_prompt=2, generator=torch.Generator().manual_seed(3), **common)
    assert out.bokeh == levels * 4 and len(out.images) == 8
    g = torch.Generator().manual_seed(3)
    noises = [torch.randn((1, *pipe.latent_shape(16, 16)), generator=g) for _ in range(4)]
    for j, prompt in enumerate(["a red ball", "a red ball", "a white box", "a white box"]):
        one = sample(pipe, prompt, levels, latents=noises[j], **common)
        assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(out.images[2 * j:2 * j + 2], one))
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(sample(pipe, "a red ball", levels, seed=3, **common), out.images[:2]))
    as_np = pipe("a red ball", levels, seed=3, output_type="np", **common).images
    as_pt, ks = pipe("a red ball", levels, seed=3, output_type="pt", return_dict=False, **common)
    assert as_np.shape == (2, 16, 16, 3) and as_pt.shape == (2, 3, 16, 16) and ks == levels
    assert np.array_equal(np.round(as_np * 255).astype(np.int16), np.stack([pixels(i) for i in out.images[:2]]))
    assert torch.equal(as_pt, torch.from_numpy(as_np).permute(0, 3, 1, 2))
    seen = []

    def stop_noise(p, i, t, kwargs):
        seen.append((i, kwargs["latents"].shape[0]))
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 2 else {}

    zeros = pipe("a red ball", levels, seed=3, output_type="latent", callback_on_step_end=stop_noise, **common).images
    assert seen == [(0, 2), (1, 2), (2, 2)] and torch.equal(zeros, torch.zeros_like(zeros))
    with pytest.raises(ValueError, match="latents must have shape"):
        pipe("a red ball", levels, latents=torch.zeros(1, 1, 2, 2), **common)
    with pytest.raises(ValueError, match="seed or generator, not both"):
        pipe("a red ball", levels, seed=1, generator=torch.Generator(), **common)
    with pytest.raises(ValueError, match="output_type must be one of"):
        pipe("a red ball", levels, output_type="jpeg", **common)


@pytest.mark.parametrize("root_name", ["sd_dir", "flux_dir"])
def test_model_cpu_offload_gives_the_plain_pixels(root_name, request):
    """diffusers' enable_model_cpu_offload: hooks on every model in the offload sequence, the adapter (inside the
    base model's layers) excluded; the offloaded sweep equals the plain one. Without an accelerator the hooks'
    execution device is the CPU itself (diffusers refuses device=None there), so this runs the hooks' code paths;
    the CUDA case below moves the models for real."""
    pipe = load(request.getfixturevalue(root_name), "random")
    common = dict(seed=2, num_inference_steps=3, height=16, width=16, pivot=15.0, grounding_steps=2)
    plain = sample(pipe, PROMPT, [0.0, 30.0], **common)
    pipe.enable_model_cpu_offload(device="cpu")
    hooked = [name for name in pipe.model_cpu_offload_seq.split("->") if hasattr(getattr(pipe, name), "_hf_hook")]
    assert hooked == pipe.model_cpu_offload_seq.split("->") and not hasattr(pipe.adapter, "_hf_hook")
    offloaded = sample(pipe, PROMPT, [0.0, 30.0], **common)
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(plain, offloaded))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="moving models between CPU and GPU needs a CUDA device")
def test_model_cpu_offload_on_cuda_matches_the_pipeline_on_cuda(flux_dir):
    pipe = load(flux_dir, "random").to("cuda")
    common = dict(seed=2, num_inference_steps=3, height=16, width=16, pivot=15.0, grounding_steps=2)
    plain = sample(pipe, PROMPT, [0.0, 30.0], **common)
    pipe.enable_model_cpu_offload()
    offloaded = sample(pipe, PROMPT, [0.0, 30.0], **common)
    assert pipe.transformer.device.type == "cpu"  # offloaded again after the sweep
    assert all(np.abs(pixels(a) - pixels(b)).max() <= 1 for a, b in zip(plain, offloaded))


def test_pipeline_save_and_load_round_trip(flux_dir, tmp_path):
    """save_pretrained writes diffusers' pipeline folder with adapter/ in the released layout and a transformer
    without the adapter's weights; from_pretrained of that folder samples the same pixels."""
    import json

    from pipelines.pipeline_flux import BokehFluxPipeline

    pipe = load(flux_dir, "random")
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "BokehFluxPipeline" and index["adapter"] == ["bokeh_models.flux_adapter", "BokehFluxAdapter"]
    assert sorted(p.name for p in (tmp_path / "saved" / "adapter").iterdir()) == ["config.json", "model.safetensors"]
    from safetensors.torch import load_file

    saved_transformer = load_file(next((tmp_path / "saved" / "transformer").glob("*.safetensors")))
    assert not any("processor" in key for key in saved_transformer)
    again = BokehFluxPipeline.from_pretrained(tmp_path / "saved", torch_dtype=torch.float32)
    again.set_progress_bar_config(disable=True)
    common = dict(seed=1, num_inference_steps=3, height=16, width=16)
    assert all(np.array_equal(pixels(a), pixels(b))
               for a, b in zip(sample(again, PROMPT, [0.0, 30.0], **common), sample(pipe, PROMPT, [0.0, 30.0], **common)))


def test_flux_latent_packing_matches_diffusers_layout():
    """Our packing, unpacking and position ids against diffusers' FluxPipeline helpers (the reference layout)."""
    from diffusers import FluxPipeline

    from bokeh_models.flux_latents import latent_image_ids, pack_latents, unpack_latents

    latents = torch.randn(2, 4, 6, 10, generator=torch.Generator().manual_seed(0))
    packed = pack_latents(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 4, 6, 10))
    assert torch.equal(unpack_latents(packed, 6, 10), latents)
    assert torch.equal(unpack_latents(packed, 6, 10), FluxPipeline._unpack_latents(packed, 6 * 8, 10 * 8, 8))
    assert torch.equal(latent_image_ids(latents), FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32))
