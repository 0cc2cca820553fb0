"""Tensors prepared once per call for all blocks (cast weights, batched V_b) against the per-block path."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tiny_diffusion import TINY_ADAPTER as TINY, flux_batch, randomize, single_thread, tiny_flux, tiny_unet, unet_batch
from bokeh_models import BokehFluxAdapter, BokehUNetAdapter
from bokeh_models.lora import LowRankLinear


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


class _Ops(TorchDispatchMode):
    """Names of the backend operations run inside the block."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def test_add_to_is_the_residual_low_rank_sum_with_the_add_fused():
    torch.manual_seed(0)
    layer = LowRankLinear(16, 16, rank=4, alpha=2.0)
    torch.nn.init.normal_(layer.up.weight)
    x = torch.randn(2, 5, 16, requires_grad=True)
    with _Ops() as ops:
        got = layer.add_to(x, 0.7)
    by_hand = x + 0.7 * (x @ layer.down.weight.T @ layer.up.weight.T) * (2.0 / 4)
    torch.testing.assert_close(got, by_hand)
    assert "aten::addmm" in ops.names and not any(n.startswith(("aten::add.", "aten::mul.")) for n in ops.names)
    grads = torch.autograd.grad(got.square().sum(), [x, layer.down.weight, layer.up.weight])
    expected = torch.autograd.grad(by_hand.square().sum(), [x, layer.down.weight, layer.up.weight])
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b)
    # bf16 activations with fp32 weights, without autocast (product in fp32) and under it (in bf16)
    xb = x.detach().to(torch.bfloat16)
    exact = xb.float() + 0.7 * (xb.float() @ layer.down.weight.T @ layer.up.weight.T) * (2.0 / 4)
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            half = layer.add_to(xb, 0.7)
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.float(), exact.detach(), rtol=2e-2, atol=2e-2)


def _per_block(model, adapter, levels, pivots, call):
    """The model run with the adapter's attention arguments less the prepared tensors: every block
    computes its own."""
    return call({**adapter.attention_kwargs(levels, pivots, len(levels), torch.device("cpu")), "prepared": None})


def _compare(adapter, params, prepared_out, per_block_out, target, rtol, atol):
    F.mse_loss(prepared_out.float(), target).backward()
    prepared_grads = [p.grad.clone() for p in params]
    adapter.zero_grad(set_to_none=True)
    F.mse_loss(per_block_out.float(), target).backward()
    torch.testing.assert_close(prepared_out, per_block_out, rtol=rtol, atol=atol)
    for got, expected in zip(prepared_grads, (p.grad for p in params)):
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)


FLUX_SETUPS = {  # adapter options, autocast, gradient checkpointing, model and adapter dtype
    "fp32": (dict(), False, False, torch.float32),
    "bf16-autocast": (dict(), True, False, torch.float32),
    "alpha-and-scales-autocast": (dict(lora_alpha=2.0, bokeh_scale=1.5, lora_scale=0.5), True, False, torch.float32),
    "one-block-no-k-checkpointing-autocast": (
        dict(blocks=["single_transformer_blocks.0"], unfreeze_k=False), True, True, torch.float32),
    "bf16-model-and-adapter": (dict(), False, False, torch.bfloat16),  # the sampling pipelines' set-up
}


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("setup", list(FLUX_SETUPS))
def test_flux_prepared_call_equals_per_block_path(setup):
    options, autocast, checkpointing, dtype = FLUX_SETUPS[setup]
    base = tiny_flux().to(dtype)
    adapter = BokehFluxAdapter(base, **TINY, **options)
    randomize(adapter)
    adapter.to(dtype)
    params = adapter.set_trainable(base)
    if checkpointing:
        base.enable_gradient_checkpointing()
        base.train()
    inputs = {k: v.to(dtype) for k, v in flux_batch(batch=3).items()}
    levels, pivots = [4.0, 30.0, -1.0], [2, None, 2]
    target = torch.randn(inputs["hidden_states"].shape)
    adapted = [m for m in adapter.adapter_modules if hasattr(m, "to_v_bokeh")]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        prepared = adapter.attention_kwargs(levels, pivots, 3, torch.device("cpu"))["prepared"]
        assert len(prepared.bokeh_values) == len(adapted)  # V_b of every block from one batched product
        qk = sum(m.to_q_adp is not None for m in adapted) + sum(m.to_k_adp is not None for m in adapted)
        assert len(prepared.weights) == (qk if autocast else 0)  # q / k weights cast once, under autocast
        ours = adapter(base, levels, pivots, **inputs)
        theirs = _per_block(base, adapter, levels, pivots, lambda kw: base(
            **inputs, joint_attention_kwargs=kw, return_dict=False)[0])
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 and not autocast else dict(rtol=2e-2, atol=2e-2)
    _compare(adapter, params, ours, theirs, target, **tolerance)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_blocks_use_the_prepared_tensors():
    """Zeroed prepared tensors must act as the per-block path with that branch switched off (scale 0)."""
    base = tiny_flux()
    adapter = BokehFluxAdapter(base, **TINY)
    randomize(adapter)
    inputs = flux_batch(batch=2)
    levels, pivots = [5.0, 25.0], [1, 1]

    def run(zero_values=False, zero_weights=False):
        kwargs = adapter.attention_kwargs(levels, pivots, 2, torch.device("cpu"))
        prepared = kwargs["prepared"]
        if zero_values:
            prepared.bokeh_values = {k: torch.zeros_like(v) for k, v in prepared.bokeh_values.items()}
        if zero_weights:
            prepared.weights = {k: (d, torch.zeros_like(u)) for k, (d, u) in prepared.weights.items()}
        return base(**inputs, joint_attention_kwargs=kwargs, return_dict=False)[0]

    def per_block():
        return _per_block(base, adapter, levels, pivots, lambda kw: base(
            **inputs, joint_attention_kwargs=kw, return_dict=False)[0])

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        no_values, no_weights = run(zero_values=True), run(zero_weights=True)
        adapter.set_bokeh_scale(0)
        without_bokeh = per_block()
        adapter.set_bokeh_scale(1)
        adapter.set_lora_scale(0)
        without_lora = per_block()
        adapter.set_lora_scale(1)
        full = run()
    torch.testing.assert_close(no_values, without_bokeh)
    torch.testing.assert_close(no_weights, without_lora)
    assert (full - no_values).abs().max() > 1e-2 and (full - no_weights).abs().max() > 1e-2
    # tokens other than those the values came from: the blocks compute V_b themselves
    kwargs = adapter.attention_kwargs(levels, None, 2, torch.device("cpu"))
    kwargs["bokeh_embeds"] = adapter.bokeh_tokens([30.0, 0.0], 2)
    with torch.no_grad():
        mixed = base(**inputs, joint_attention_kwargs=kwargs, return_dict=False)[0]
        expected = adapter(base, [30.0, 0.0], None, **inputs)
    torch.testing.assert_close(mixed, expected)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_unet_prepared_call_equals_per_block_path(autocast):
    unet = tiny_unet()
    adapter = BokehUNetAdapter(unet, **TINY)
    randomize(adapter)
    params = adapter.set_trainable(unet)
    batch = unet_batch(batch=2)
    sample, t, text = batch["sample"], batch["timestep"], batch["encoder_hidden_states"]
    levels, pivots = [6.0, 24.0], [1, 1]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        grounded = [m for m in adapter.adapter_modules if hasattr(m, "to_q_adp")]
        prepared = adapter.attention_kwargs(levels, pivots, 2, torch.device("cpu"))["prepared"]
        assert len(prepared.weights) == (2 * len(grounded) if autocast else 0)
        assert not prepared.bokeh_values  # the UNet's V_b is dense: each block runs its own
        ours = adapter(unet, sample, t, text, bokeh=levels, pivot_ids=pivots)
        theirs = _per_block(unet, adapter, levels, pivots, lambda kw: unet(
            sample, t, text, cross_attention_kwargs=kw, return_dict=False)[0])
    tolerance = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-6)
    _compare(adapter, params, ours, theirs, torch.randn_like(sample), **tolerance)
