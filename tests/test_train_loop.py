"""Training loop: loss falls on a fixed batch (tiny UNet model, tiny FLUX), exact resume, checkpoints
(strict keys, keep-last-M), objectives against hand formulas, configs and the `bokeh train` command."""
import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from estimators.cli_util import UserError
from estimators.model_loading import ModelUnavailableError
from test_train_data import write_dataset
from tiny_diffusion import TINY_FLUX_CONFIG, assert_same_floats, assert_same_tensors, single_thread, tiny_flux
from trainer.config import config_from_dict, load_config
from trainer.objectives import (ddpm_target, flux_loss, gradient_mse, pack_latents, row_mse, shifted_sigmas, snr_weights, tied_difference_mse,
                                unet_loss)

ROOT = Path(__file__).resolve().parent.parent
TINY_SIZES = dict(block_out_channels=[8, 16], attention_levels=1, text_width=16, text_heads=2, text_layers=1,
                  max_tokens=12, attention_head_dim=4, bokeh_time_embedding=True, text_time_embedding=True,
                  resnet_time_scale_shift="scale_shift")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("train_ds"))


def tiny_config(dataset, out, **run):
    return config_from_dict(dict(
        model=dict(family="tiny", tiny=TINY_SIZES),
        adapter=dict(bokeh_hidden_dim=8, bokeh_context_dim=8, lora_rank=2),
        data=dict(dataset=str(dataset), resolution=16, batch_size=3, cache_images=True),
        optim=dict(learning_rate=1e-3),
        run={**dict(output_dir=str(out), max_steps=4, checkpoint_every=2, keep_last=5, log_every=1, progress=False), **run},
        validation=dict(every=0),
    ))


def _log(out):
    return [json.loads(line) for line in (Path(out) / "logs" / "train.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("patch_size", [1, 2])
def test_tiny_unet_steps_reduce_loss_on_fixed_batch(dataset, tmp_path, patch_size):
    from trainer.backbones import UNetBackbone
    from trainer.data import BatchSampler, ImageLoader, load_rows
    from bokeh_models.tiny_model import build_tiny_model
    from trainer.training import TrainStep, trainable_parameters

    rows = load_rows(str(dataset))
    with single_thread():
        build_tiny_model(tmp_path / "base", rows.captions, 16, patch_size=patch_size, **TINY_SIZES)
        backbone = UNetBackbone.load(str(tmp_path / "base"))
        assert backbone.latent_shape(16) == (3 * patch_size ** 2, 16 // patch_size, 16 // patch_size)
        adapter = backbone.make_adapter(dict(bokeh_context_dim=8, lora_rank=2))
        trained = {"unet": backbone.unet, "text_encoder": backbone.text_encoder}
        params = trainable_parameters(adapter, backbone, trained)
        module = TrainStep(backbone, adapter, trained).train()
        plan = BatchSampler(rows, 3, contrastive_ratio=1.0, tie_probability=1.0, k_dropout=0, caption_dropout=0).plan(0)
        assert plan.pivot_ids == [-1, 0, 0]  # grounded attention is exercised
        pixels = ImageLoader(rows, 16).load(plan.rows, plan.crops)
        optimizer = torch.optim.Adam(params, lr=3e-3)
        losses = []
        for _ in range(8):
            loss = module(pixels, plan, torch.Generator().manual_seed(0))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_tiny_flux_adapter_steps_reduce_loss_and_keep_base_frozen():
    from bokeh_models.flux_adapter import BokehFluxAdapter

    with single_thread():
        transformer = tiny_flux()
        before = {k: v.clone() for k, v in transformer.state_dict().items()}
        adapter = BokehFluxAdapter(transformer, bokeh_hidden_dim=8, bokeh_context_dim=16, lora_rank=4)
        params = adapter.set_trainable(transformer)
        g = torch.Generator().manual_seed(0)
        latents = torch.randn(2, 1, 8, 8, generator=g)  # packs to 16 tokens of 4 channels
        noise = torch.randn(2, 1, 8, 8, generator=g)
        embeds = torch.randn(2, 5, TINY_FLUX_CONFIG["joint_attention_dim"], generator=g)
        pooled = torch.randn(2, TINY_FLUX_CONFIG["pooled_projection_dim"], generator=g)
        sigmas = torch.tensor([0.3, 0.3])
        optimizer = torch.optim.Adam(params, lr=3e-2)
        losses = []
        for _ in range(15):
            loss = flux_loss(adapter, transformer, latents, embeds, pooled, torch.zeros(5, 3), [0.0, 20.0], [-1, 0], noise, sigmas)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    adapter_keys = {k for k in transformer.state_dict() if ".processor." in k}
    for key, value in transformer.state_dict().items():
        if key not in adapter_keys:
            assert torch.equal(value, before[key]), key


def test_objectives_by_hand():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    x0, eps, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([10, 900])
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(ddpm_target(scheduler, x0, eps, t), a.sqrt() * eps - (1 - a).sqrt() * x0, atol=1e-6)
    scheduler = DDPMScheduler(prediction_type="epsilon")
    assert ddpm_target(scheduler, x0, eps, t) is eps
    # shift 3 at u = 0.5: 1.5 / 2 = 0.75; end points stay.
    assert shifted_sigmas(torch.tensor([0.0, 0.5, 1.0]), 3.0).tolist() == [0.0, 0.75, 1.0]


def test_snr_weights_by_hand():
    from diffusers import DDPMScheduler

    betas = [0.1, 0.2, 0.5, 0.9]
    # alpha-bar by hand: 0.9, 0.72, 0.36, 0.036 -> SNR 9, 2.5714, 0.5625, 0.037344
    snr = [9.0, 0.72 / 0.28, 0.36 / 0.64, 0.036 / 0.964]
    t = torch.arange(4)
    for kind, expected in (
        ("sample", [5.0, snr[1], snr[2], snr[3]]),
        ("epsilon", [5.0 / 9.0, 1.0, 1.0, 1.0]),
        ("v_prediction", [5.0 / 10.0, snr[1] / (snr[1] + 1), snr[2] / (snr[2] + 1), snr[3] / (snr[3] + 1)]),
    ):
        scheduler = DDPMScheduler(num_train_timesteps=4, trained_betas=betas, prediction_type=kind)
        assert snr_weights(scheduler, t, 5.0).tolist() == pytest.approx(expected, rel=1e-5), kind
    # with a floor of 1 (x0 terms): SNR 0.5625 and 0.0373 rise to 1, i.e. 1 / SNR for epsilon, 1 / (SNR + 1) for v
    for kind, expected in (
        ("sample", [5.0, snr[1], 1.0, 1.0]),
        ("epsilon", [5.0 / 9.0, 1.0, 1.0 / snr[2], 1.0 / snr[3]]),
        ("v_prediction", [5.0 / 10.0, snr[1] / (snr[1] + 1), 1.0 / (snr[2] + 1), 1.0 / (snr[3] + 1)]),
    ):
        scheduler = DDPMScheduler(num_train_timesteps=4, trained_betas=betas, prediction_type=kind)
        assert snr_weights(scheduler, t, 5.0, 1.0).tolist() == pytest.approx(expected, rel=1e-5), kind
    scheduler = DDPMScheduler(num_train_timesteps=4, trained_betas=betas, prediction_type="sample")
    assert snr_weights(scheduler, t, None, 1.0).tolist() == pytest.approx([9.0, snr[1], 1.0, 1.0], rel=1e-5)


def test_unet_loss_weights_rows_by_clamped_snr():
    from diffusers import DDPMScheduler

    class Constant:  # an "adapter" whose prediction is always zero: the loss is the target's mean square
        def __call__(self, unet, noisy, timesteps, states, bokeh, pivot_ids):
            return torch.zeros_like(noisy)

    scheduler = DDPMScheduler(num_train_timesteps=4, trained_betas=[0.1, 0.2, 0.5, 0.9], prediction_type="sample")
    x0 = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)])  # row mean squares 1 and 4
    u = torch.tensor([0.0, 0.5])  # timesteps 0 (SNR 9 -> weight 5) and 2 (SNR 0.5625)
    args = (Constant(), None, scheduler, x0, None, [0.0, 0.0], None, torch.zeros_like(x0), u)
    assert unet_loss(*args).item() == pytest.approx(2.5)
    assert unet_loss(*args, snr_gamma=5.0).item() == pytest.approx((5.0 * 1 + 0.5625 * 4) / 2, rel=1e-5)
    assert unet_loss(*args, snr_gamma=5.0, snr_floor=1.0).item() == pytest.approx((5.0 * 1 + 1.0 * 4) / 2, rel=1e-5)
    # row 0's x0 made [[1, 3], [1, 1]]: weight 4 on the 3 gives (1 + 4 * 9 + 1 + 1) / (1 + 4 + 1 + 1) = 39 / 7
    x0[0, 0, 0, 1] = 3.0
    weights = torch.ones(2, 1, 2, 2)
    weights[0, 0, 0, 1] = 4.0
    args = (Constant(), None, scheduler, x0, None, [0.0, 0.0], None, torch.zeros_like(x0), u)
    assert unet_loss(*args, weights=weights).item() == pytest.approx((39 / 7 + 4) / 2, rel=1e-6)
    assert unet_loss(*args, snr_gamma=5.0, weights=weights).item() == pytest.approx((5 * 39 / 7 + 0.5625 * 4) / 2, rel=1e-5)


def test_row_mse_by_hand():
    pred = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # squared errors 1, 4 (channel 0) and 9, 16 (channel 1)
    assert row_mse(pred, target).tolist() == [7.5]
    # a weight per position, shared by the channels: (1 + 3 * 4 + 9 + 3 * 16) / (2 * (1 + 3))
    assert row_mse(pred, target, torch.tensor([[[[1.0, 3.0]]]])).tolist() == [70 / 8]


def test_gradient_mse_by_hand():
    """Neighbour differences of the error, horizontal and vertical pairs pooled: 0 for a flat offset, 4 for a
    one-pixel checker (every difference is +-2), in pixels when the channels are 2 x 2 pixel patches."""
    zero = torch.zeros(1, 3, 4, 4)
    assert gradient_mse(zero + 5.0, zero).tolist() == [0.0]
    checker = (torch.arange(4)[:, None] + torch.arange(4)) % 2 * 2.0 - 1
    assert gradient_mse(checker.expand(1, 3, 4, 4), zero).tolist() == [4.0]
    # a ramp along x by 1 per pixel: horizontal differences 1 (12 pairs), vertical ones 0 (12 pairs)
    ramp = torch.arange(4.0).expand(1, 1, 4, 4)
    assert gradient_mse(ramp, zero[:, :1]).tolist() == [0.5]
    # weights: the ramp's first column weighs 3, so the pairs (0, 1) weigh 2 and column 0's vertical pairs 3;
    # sum of weighted squares 4 * 2 + 8 * 1 = 16 over weights 4 * 2 + 8 + 3 * 3 + 9 = 34
    weights = torch.ones(1, 1, 4, 4)
    weights[..., 0] = 3.0
    assert gradient_mse(ramp, zero[:, :1], weights).item() == pytest.approx(16 / 34)
    # the checker as 2 x 2 patches is flat per channel: 0 as latent positions, 4 as pixels
    patches = torch.nn.functional.pixel_unshuffle(checker.expand(1, 3, 4, 4), 2)
    assert gradient_mse(patches, torch.zeros_like(patches)).tolist() == [0.0]
    assert gradient_mse(patches, torch.zeros_like(patches), patch=2).tolist() == [4.0]
    # patch weights spread to their pixels: a weight on one patch is a weight on its 4 pixels
    patch_weights = torch.ones(1, 1, 2, 2)
    patch_weights[0, 0, 0, 0] = 3.0
    pixel_weights = patch_weights.repeat_interleave(2, -1).repeat_interleave(2, -2)
    ramp3 = ramp.expand(1, 3, 4, 4)
    assert gradient_mse(torch.nn.functional.pixel_unshuffle(ramp3, 2), torch.zeros_like(patches), patch_weights, 2).item() \
        == pytest.approx(gradient_mse(ramp3, zero, pixel_weights).item())


def test_tied_difference_mse_by_hand():
    """Only rows tied to a pivot score, on (prediction - pivot's) against (target - pivot's)."""
    pred = torch.tensor([[0.0, 0.0], [1.0, 2.0], [5.0, 5.0]]).view(3, 1, 1, 2)
    target = torch.tensor([[1.0, 1.0], [1.0, 5.0], [0.0, 0.0]]).view(3, 1, 1, 2)
    # row 1 against row 0: prediction difference [1, 2], target difference [0, 4]: squared errors 1 and 4
    assert tied_difference_mse(pred, target, [-1, 0, -1]).tolist() == [0.0, 2.5, 0.0]
    assert tied_difference_mse(pred, target, [-1, 0, -1], torch.tensor([[[[1.0, 3.0]]]])).tolist() == [0.0, 13 / 4, 0.0]
    assert tied_difference_mse(pred, target, [None, 0, None]).tolist() == [0.0, 2.5, 0.0]  # None: not tied, as in pivot_index
    assert tied_difference_mse(pred, target, torch.tensor([-1, 0, -1])).tolist() == [0.0, 2.5, 0.0]
    assert tied_difference_mse(pred, target, None).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="not a row index"):
        tied_difference_mse(pred, target, [-1, 5, -1])
    # a row whose prediction moves with its pivot's exactly as the targets do scores 0, whatever its own error
    assert tied_difference_mse(pred, pred + 7.0, [-1, 0, 0]).tolist() == [0.0, 0.0, 0.0]


def test_unet_loss_adds_the_tied_difference_before_the_snr_weights():
    from diffusers import DDPMScheduler

    def zero(unet, noisy, timesteps, states, bokeh, pivot_ids):
        return torch.zeros_like(noisy)

    scheduler = DDPMScheduler(num_train_timesteps=4, trained_betas=[0.1, 0.2, 0.5, 0.9], prediction_type="sample")
    x0 = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)])
    u = torch.tensor([0.5, 0.5])  # a tied row shares its pivot's timestep: 2 (SNR 0.5625)
    args = (zero, None, scheduler, x0, None, [0.0, 20.0], [-1, 0], torch.zeros_like(x0), u)
    # rows' own errors 1 and 4; row 1's difference from its pivot (1 per pixel) adds 2 * 1
    assert unet_loss(*args, difference_weight=2.0).item() == pytest.approx((1 + 4 + 2) / 2)
    assert unet_loss(*args, snr_gamma=5.0, difference_weight=2.0).item() == pytest.approx(0.5625 * 7 / 2, rel=1e-5)
    assert unet_loss(*args).item() == pytest.approx(2.5)
    # the detail loss: row 0's x0 a ramp 0, 1 along x (squared errors 0, 1: mean 0.5, gradient 1 on the 2 of
    # 4 pairs that are horizontal: 0.5), row 1 flat (2: own error 4, gradient 0); both SNR-weighted
    x0[0, 0, :, 0] = 0.0
    assert unet_loss(*args, detail_weight=3.0).item() == pytest.approx((0.5 + 3 * 0.5 + 4) / 2)
    assert unet_loss(*args, snr_gamma=5.0, detail_weight=3.0).item() == pytest.approx(0.5625 * 6 / 2, rel=1e-5)


def test_flux_loss_weights_the_positions_they_belong_to():
    """The weights are packed like the latents: against the weighted error in unpacked [B, C, h, w] space."""
    g = torch.Generator().manual_seed(0)
    latents, noise, prediction = (torch.randn(2, 3, 4, 6, generator=g) for _ in range(3))
    weights = 1 + 4 * torch.rand(2, 1, 4, 6, generator=g)

    def adapter(transformer, levels, pivot_ids, hidden_states, **kwargs):  # predicts ``prediction``, packed
        return pack_latents(prediction)

    transformer = SimpleNamespace(config=SimpleNamespace(guidance_embeds=False))
    args = (adapter, transformer, latents, None, None, None, [0.0, 5.0], None, noise, torch.tensor([0.5, 0.5]))
    err = (prediction - (noise - latents)) ** 2
    expected = ((err * weights).sum((1, 2, 3)) / (3 * weights.sum((1, 2, 3)))).mean()
    assert flux_loss(*args, weights=weights).item() == pytest.approx(expected.item(), rel=1e-6)
    assert flux_loss(*args).item() == pytest.approx(err.mean().item(), rel=1e-6)
    # row 1 tied to row 0 (they share the noise): its velocity target differs from the pivot's by x0_0 - x0_1
    tied = args[:7] + ([-1, 0], noise[:1].expand(2, -1, -1, -1), args[9])
    err = (prediction - (noise[:1] - latents)) ** 2
    diff = ((prediction[1] - prediction[0]) - (latents[0] - latents[1])) ** 2
    expected = (err.mean() * 2 + 3 * diff.mean()) / 2
    assert flux_loss(*tied, difference_weight=3.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_resume_continues_bit_for_bit_and_checkpoints(dataset, tmp_path):
    from trainer.checkpoint import checkpoint_dirs
    from trainer.training import train

    with single_thread():
        full = train(tiny_config(dataset, tmp_path / "full"))
        cut = tmp_path / "cut"
        train(tiny_config(dataset, cut))
        last = checkpoint_dirs(cut)[-1]
        assert last.name == "step-0000004"
        import shutil

        shutil.rmtree(last)  # as if the run had died after step 2's checkpoint
        resumed = train(tiny_config(dataset, cut), resume="latest")
    assert resumed["step"] == full["step"] == 4
    a, b = _log(tmp_path / "full"), _log(cut)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert_same_floats([r["loss"] for r in a], [r["loss"] for r in b])  # exact floats on CPUs
    assert_same_floats([r["grad_norm"] for r in a], [r["grad_norm"] for r in b])
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "full/checkpoints/step-0000004/adapter/model.safetensors"))
    wb = load_file(str(cut / "checkpoints/step-0000004/adapter/model.safetensors"))
    assert_same_tensors(wa, wb)


def test_checkpoint_strict_keys_and_keep_last(dataset, tmp_path):
    from safetensors.torch import load_file, save_file

    from trainer.checkpoint import checkpoint_dirs
    from trainer.training import train
    from bokeh_models.unet_adapter import BokehUNetAdapter
    from diffusers import UNet2DConditionModel

    with single_thread():
        train(tiny_config(dataset, tmp_path, checkpoint_every=1, keep_last=2))
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-0000003", "step-0000004"]
    ckpt = checkpoint_dirs(tmp_path)[-1]
    unet_keys = set(load_file(str(ckpt / "model" / "unet" / "diffusion_pytorch_model.safetensors")))
    assert unet_keys == set(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(ckpt / "model" / "unet")).state_dict())
    unet = UNet2DConditionModel.from_pretrained(ckpt / "model" / "unet")
    adapter = BokehUNetAdapter.from_pretrained(ckpt / "adapter", unet)
    saved = load_file(str(ckpt / "adapter" / "model.safetensors"))
    assert all(torch.equal(adapter.state_dict()[k], saved[k]) for k in saved)
    saved["embedding_layer.9.weight"] = torch.zeros(1)
    save_file(saved, str(ckpt / "adapter" / "model.safetensors"))
    with pytest.raises(ModelUnavailableError, match="1 unexpected"):
        BokehUNetAdapter.from_pretrained(ckpt / "adapter", unet)
    assert (ckpt / "model" / "tokenizer").is_dir() and (ckpt / "model" / "scheduler").is_dir()
    # an optimizer state for another set of trainable parameters: one line
    earlier = checkpoint_dirs(tmp_path)[0]
    state = torch.load(earlier / "optimizer.pt", weights_only=True)
    state["param_groups"][0]["params"].pop()
    torch.save(state, earlier / "optimizer.pt")
    with single_thread(), pytest.raises(UserError, match="optimizer state does not fit this run's trainable parameters"):
        train(tiny_config(dataset, tmp_path, checkpoint_every=1, keep_last=2), resume=str(earlier))


def test_bad_tiny_model_setting_is_a_user_error(dataset, tmp_path):
    from trainer.training import train

    config = tiny_config(dataset, tmp_path)
    config.model.tiny = {**TINY_SIZES, "patch_size": 3}
    with pytest.raises(UserError, match=r"model.tiny: the resolution 16 must be a multiple of 6"):
        train(config)


def test_validation_grid_written_and_cudnn_attention_off_during_the_run(dataset, tmp_path, monkeypatch):
    from PIL import Image

    from trainer import training

    config = tiny_config(dataset, tmp_path, max_steps=1, checkpoint_every=0)
    config.validation.every = 1
    config.validation.prompts = ["a red sphere in front of wall", "a blue box"]
    config.validation.levels = [0, 30]
    config.validation.steps = 2
    seen, validation_grid = [], training.validation_grid

    def recording_grid(*args, **kwargs):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return validation_grid(*args, **kwargs)

    monkeypatch.setattr(training, "validation_grid", recording_grid)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        with single_thread():
            training.train(config)
        assert seen == [False]  # run.cudnn_attention: false by default
        assert torch.backends.cuda.cudnn_sdp_enabled()  # the caller's choice is back
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
    grid = Image.open(tmp_path / "validation" / "step-0000001.png")
    assert grid.height >= 4 * 64 and grid.width >= 2 * 64  # two prompts, each unbounded and grounded
    rows = json.loads(grid.text["rows"])
    assert [(r["prompt"], r["mode"]) for r in rows] == [
        ("a red sphere in front of wall", "unbounded"), ("a red sphere in front of wall", "grounded on K = 15"),
        ("a blue box", "unbounded"), ("a blue box", "grounded on K = 15")]
    assert grid.text["step"] == "1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is for CPU runs")
def test_mixed_precision_on_cpu_warns_and_trains(dataset, tmp_path, fresh_accelerate_state):
    from trainer.training import train

    config = tiny_config(dataset, tmp_path, max_steps=1, checkpoint_every=0, mixed_precision="bf16")
    # accelerate keeps one precision per process (earlier tests set "no"): the fixture resets it around this test
    with single_thread(), pytest.warns(UserWarning, match="run.mixed_precision=bf16 on a CPU.*run.mixed_precision=no"):
        result = train(config)
    assert result["step"] == 1 and math.isfinite(result["loss"])


def test_config_overrides_and_errors(tmp_path):
    config = load_config(ROOT / "configs" / "tiny.yaml", ["run.max_steps=7", "optim.learning_rate=2e-4", "validation.levels=[0, 5]"])
    assert config.run.max_steps == 7 and config.optim.learning_rate == 2e-4 and config.validation.levels == [0, 5]
    assert not config.run.cudnn_attention and load_config(ROOT / "configs" / "tiny.yaml", ["run.cudnn_attention=true"]).run.cudnn_attention
    # accelerate's "no" (YAML 1.1 reads it as false) means no mixed precision, in overrides and in files
    assert load_config(ROOT / "configs" / "flux.yaml", ["run.mixed_precision=no"]).run.mixed_precision == "no"
    written = tmp_path / "no.yaml"
    written.write_text((ROOT / "configs" / "tiny.yaml").read_text().replace("run:\n", "run:\n  mixed_precision: no\n"))
    assert load_config(written).run.mixed_precision == "no"
    for bad, pattern in (("run.max_step=3", "unknown key"), ("nosuch.x=1", "unknown config section"), ("max_steps", "section.key=value"),
                         ("run.max_steps=many", "run.max_steps must be int"), ("optim.learning_rate=fast", "must be float")):
        with pytest.raises(UserError, match=pattern):
            load_config(ROOT / "configs" / "tiny.yaml", [bad])
    for name in ("sd15", "flux"):
        assert load_config(ROOT / "configs" / f"{name}.yaml").model.base_model
    with pytest.raises(UserError, match="snr_gamma"):
        load_config(ROOT / "configs" / "flux.yaml", ["optim.snr_gamma=5"])
    with pytest.raises(UserError, match="snr_gamma"):
        load_config(ROOT / "configs" / "tiny.yaml", ["optim.snr_gamma=0"])
    with pytest.raises(UserError, match="snr_floor"):
        load_config(ROOT / "configs" / "tiny.yaml", ["optim.snr_gamma=2", "optim.snr_floor=3"])
    with pytest.raises(UserError, match="subject_weight"):
        load_config(ROOT / "configs" / "tiny.yaml", ["data.subject_weight=0"])
    with pytest.raises(UserError, match="difference_weight"):
        load_config(ROOT / "configs" / "tiny.yaml", ["optim.difference_weight=-1"])
    with pytest.raises(UserError, match="detail_weight"):
        load_config(ROOT / "configs" / "tiny.yaml", ["optim.detail_weight=nan"])
    with pytest.raises(UserError, match="detail_weight"):
        load_config(ROOT / "configs" / "flux.yaml", ["optim.detail_weight=1"])


def test_adamw_takes_the_config_and_fuses_on_cuda_only():
    from trainer.training import adamw

    o = load_config(ROOT / "configs" / "tiny.yaml", ["optim.learning_rate=3e-4", "optim.weight_decay=0.02", "optim.adam_beta1=0.8",
                                                     "optim.adam_beta2=0.95", "optim.adam_epsilon=1e-6"]).optim
    params = [torch.nn.Parameter(torch.zeros(3))]
    for device, fused in ((torch.device("cpu"), False), (torch.device("cuda"), True)):
        d = adamw(params, o, device).defaults
        assert (d["lr"], d["betas"], d["weight_decay"], d["eps"], bool(d["fused"])) == (3e-4, (0.8, 0.95), 0.02, 1e-6, fused)


def test_pixel_weights_reach_the_loss_averaged_over_each_latent_position():
    """TrainStep pools [B, 1, R, R] pixel weights to the latent grid: the mean of each p x p patch."""
    from trainer.data import BatchPlan
    from trainer.training import TrainStep

    class Spy:  # a backbone with 2 x 2 pixel patches that records what its loss receives
        latent_factor = 2

        def encode_images(self, pixels):
            return torch.nn.functional.pixel_unshuffle(pixels, 2)

        def encode_text(self, captions, device):
            return {}

        def timestep_draw(self, u):
            return u

        def loss(self, adapter, latents, text, levels, pivot_ids, noise, u, weights=None):
            self.seen = (latents.shape, weights)
            return latents.sum() * 0

    spy = Spy()
    pixels = torch.zeros(1, 3, 4, 4)
    weights = torch.arange(16.0).view(1, 1, 4, 4)
    plan = BatchPlan([0], [5.0], ["x"], [-1], [None], False)
    TrainStep(spy, torch.nn.Identity(), {})(pixels, plan, torch.Generator().manual_seed(0), weights)
    shape, pooled = spy.seen
    # patches of [[0, 1], [4, 5]] etc.: means 2.5, 4.5, 10.5, 12.5
    assert shape == (1, 12, 2, 2) and pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


def test_subject_weight_reaches_the_loss(dataset, tmp_path):
    """Same batches and noise at lr 0, only the subject weight differs: the loss must change (the weights' values
    and the weighted mean are tested above)."""
    from test_train_data import _mask_dataset
    from trainer.training import train

    masked = _mask_dataset(tmp_path / "masked")
    losses = {}
    for weight in (1.0, 8.0):
        config = tiny_config(masked, tmp_path / f"w{weight}", max_steps=3, checkpoint_every=0)
        config.optim.learning_rate, config.data.subject_weight, config.data.contrastive_ratio = 0.0, weight, 1.0
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "1 of 4 rows have no subject mask")  # the single row; tested in test_train_data
            train(config)
        losses[weight] = [r["loss"] for r in _log(tmp_path / f"w{weight}")]
    # every batch is the masked group (the pivot and its renders share the pivot's mask): each step's loss moves
    assert all(abs(w - u) > 0.01 * u for w, u in zip(losses[8.0], losses[1.0]))
    config = tiny_config(dataset, tmp_path / "nomask", max_steps=1)
    config.data.subject_weight = 2.0
    with pytest.raises(UserError, match="subject_mask"):
        train(config)


def test_difference_weight_reaches_the_loss(dataset, tmp_path):
    """Same tied batches and noise at lr 0: the difference term (>= 0; by hand above) raises every step's loss."""
    from trainer.training import train

    losses = {}
    for weight in (0.0, 4.0):
        config = tiny_config(dataset, tmp_path / f"d{weight}", max_steps=3, checkpoint_every=0)
        config.optim.learning_rate, config.optim.difference_weight = 0.0, weight
        config.data.contrastive_ratio, config.data.tie_probability, config.data.k_dropout = 1.0, 1.0, 0.0
        with single_thread():
            train(config)
        losses[weight] = [r["loss"] for r in _log(tmp_path / f"d{weight}")]
    assert all(d > 1.01 * u for d, u in zip(losses[4.0], losses[0.0]))
    config = tiny_config(dataset, tmp_path / "untied", max_steps=1, checkpoint_every=0)
    config.optim.difference_weight, config.data.tie_probability = 1.0, 0.0
    with single_thread(), pytest.warns(UserWarning, match="difference_weight does nothing here"):
        train(config)


def test_detail_weight_reaches_the_loss(dataset, tmp_path):
    """Same batches and noise at lr 0: the image-gradient term (>= 0; by hand above) raises every step's loss."""
    from trainer.training import train

    losses = {}
    for weight in (0.0, 2.0):
        config = tiny_config(dataset, tmp_path / f"g{weight}", max_steps=2, checkpoint_every=0)
        config.optim.learning_rate, config.optim.detail_weight = 0.0, weight
        with single_thread():
            train(config)
        losses[weight] = [r["loss"] for r in _log(tmp_path / f"g{weight}")]
    assert all(d > 1.01 * u for d, u in zip(losses[2.0], losses[0.0]))


def test_logged_gradient_norm_is_taken_before_clipping(dataset, tmp_path):
    """At lr 0 the weights never move, so each step's gradient depends on its batch only: clipping to 1e-4 or not
    at all logs the same norms, far above 1e-4 (the norm before clipping, which shows a spike)."""
    from trainer.training import train

    norms = {}
    for clip in (0.0, 1e-4):
        config = tiny_config(dataset, tmp_path / f"c{clip}", max_steps=3, checkpoint_every=0)
        config.optim.learning_rate, config.optim.max_grad_norm = 0.0, clip
        with single_thread():
            train(config)
        norms[clip] = [r["grad_norm"] for r in _log(tmp_path / f"c{clip}")]
    assert_same_floats(norms[0.0], norms[1e-4])
    assert all(n > 100 * 1e-4 and math.isfinite(n) for n in norms[0.0])


@pytest.mark.parametrize("name,model_id", [("sd15", "stable-diffusion-v1-5"), ("flux", "FLUX.1-dev")])
def test_bokeh_train_missing_base_model_is_one_line(dataset, tmp_path, capsys, monkeypatch, name, model_id):
    from bokeh_cli import main

    import diffusers.utils.constants
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at import time: patch the modules' copies too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(diffusers.utils.constants, "HF_HUB_OFFLINE", True, raising=False)
    code = main(["train", str(ROOT / "configs" / f"{name}.yaml"), f"data.dataset={dataset}", f"run.output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("bokeh train: error:")]  # (libraries may warn on import)
    assert len(errors) == 1 and model_id in errors[0] and "base_model" in errors[0] and "Traceback" not in err


def test_pixel_patches_by_hand(dataset, tmp_path):
    """patch_size 2: latent channel c * 4 + 2 * dy + dx at (Y, X) holds pixel (2Y + dy, 2X + dx) of colour c."""
    from bokeh_models.components import pixel_patch_size
    from trainer.backbones import UNetBackbone
    from trainer.data import load_rows
    from bokeh_models.tiny_model import build_tiny_model

    assert [pixel_patch_size(c) for c in (3, 12, 48)] == [1, 2, 4]
    with pytest.raises(ValueError, match="3 \\* p\\^2 input channels"):
        pixel_patch_size(4)
    with pytest.raises(ValueError, match="resolution 16 must be a multiple of 12"):  # 3 x 2^2
        build_tiny_model(tmp_path / "bad", ["a box"], 16, patch_size=3, block_out_channels=[8, 8, 8])
    with pytest.raises(ValueError, match="whole number >= 1, got 1.5"):
        build_tiny_model(tmp_path / "bad", ["a box"], 16, patch_size=1.5)
    build_tiny_model(tmp_path / "base", load_rows(str(dataset)).captions, 16, patch_size=2, **TINY_SIZES)
    backbone = UNetBackbone.load(str(tmp_path / "base"))
    image = torch.arange(3 * 16 * 16, dtype=torch.float32).reshape(1, 3, 16, 16)
    latents = backbone.encode_images(image)
    assert latents.shape == (1, 12, 8, 8) and backbone.latent_factor == 2
    for c in range(3):
        for y in range(16):
            for x in range(16):
                assert latents[0, c * 4 + 2 * (y % 2) + x % 2, y // 2, x // 2] == image[0, c, y, x]
    assert torch.equal(backbone.decode(latents), image)
    backbone.unet.register_to_config(out_channels=3)
    with pytest.raises(ValueError, match="must output its 12 input channels, got 3"):
        UNetBackbone(backbone.unet, backbone.text_encoder, backbone.tokenizer, backbone.scheduler)


def test_processes_that_would_train_independently_are_refused(dataset, tmp_path, monkeypatch):
    """torchrun on CPUs without ACCELERATE_USE_CPU: accelerate would run each process alone."""
    from trainer.training import train

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="launched as 2 processes.*ACCELERATE_USE_CPU=1"):
        train(tiny_config(dataset, tmp_path))
    assert not (tmp_path / "logs").exists()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")
def test_two_cpu_processes_shard_the_batches_and_average_the_loss(dataset, tmp_path):
    """`torchrun` with 2 CPU processes (ACCELERATE_USE_CPU: accelerate's distributed CPU mode): process p
    trains on batch index p, and step 1 logs the mean of both losses. Reference: one process with the
    learning rate at 0, whose steps 1 and 2 are batch indices 0 and 1 on the same initial weights."""
    import os
    import subprocess
    import sys

    import yaml

    def config_file(name, **run):
        config = tiny_config(dataset, tmp_path / name, max_steps=2, checkpoint_every=2, num_threads=1, **run).to_dict()
        config["optim"]["learning_rate"] = 0.0
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    # GPUs hidden: on a CUDA machine accelerate's barrier (accelerate 1.15, torch 2.11) asks gloo for GPU `local rank`,
    # and process 1 fails with "invalid device ordinal" on a one-GPU machine
    env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    one = subprocess.run([sys.executable, "-m", "bokeh_cli", "train", config_file("one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "bokeh_cli", "train", config_file("two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("trained to step 2") == 1  # the summary from the main process only
    single = [r["loss"] for r in _log(tmp_path / "one")]
    pair = [r["step"] for r in _log(tmp_path / "two")]
    assert pair == [1, 2]  # one log line per step, not one per process
    assert _log(tmp_path / "two")[0]["loss"] == pytest.approx((single[0] + single[1]) / 2, rel=1e-5)
    assert [p.name for p in (tmp_path / "two" / "checkpoints").iterdir()] == ["step-0000002"]
