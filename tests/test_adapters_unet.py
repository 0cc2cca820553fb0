"""BokehUNetAdapter: SD 1.5 shapes and counts, the processors' formulas by hand, I/O and training."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from estimators.model_loading import ModelUnavailableError
from tiny_diffusion import TINY_ADAPTER as TINY, meta_unet, randomize, single_thread, tiny_unet, unet_batch
from bokeh_models import BokehUNetAdapter
from bokeh_models.attention_processors import BokehCrossAttnProcessor, GroundedSelfAttnProcessor, UNetAttnProcessor



@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def test_sd15_adapter_shapes_and_count():
    unet = meta_unet()
    adapter = BokehUNetAdapter(unet)
    names = list(unet.attn_processors)
    state = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    # SD 1.5's decoder: up_blocks.1-3 hold 3 transformer layers each, 1280 / 640 / 320 wide.
    widths = {"up_blocks.1": 1280, "up_blocks.2": 640, "up_blocks.3": 320}
    expected = {"embedding_layer.0.weight": (64, 1), "embedding_layer.0.bias": (64,),
                "embedding_layer.2.weight": (768, 64), "embedding_layer.2.bias": (768,)}
    for block, width in widths.items():
        for j in range(3):
            layer = f"{block}.attentions.{j}.transformer_blocks.0"
            cross = names.index(f"{layer}.attn2.processor")
            expected[f"adapter_modules.{cross}.to_k_bokeh.weight"] = (width, 768)
            expected[f"adapter_modules.{cross}.to_v_bokeh.weight"] = (width, 768)
            own = names.index(f"{layer}.attn1.processor")
            for name in ("to_q_adp", "to_k_adp"):
                expected[f"adapter_modules.{own}.{name}.down.weight"] = (64, width)
                expected[f"adapter_modules.{own}.{name}.up.weight"] = (width, 64)
    assert state == expected
    # dense K_b, V_b: 2 * 768 * (3 * (1280 + 640 + 320)) = 10,321,920; rank-64 q/k pairs:
    # 4 * 64 * 6720 = 1,720,320; MLP: 64 + 64 + 768 * 64 + 768 = 50,048.
    assert sum(p.numel() for p in adapter.parameters()) == 12_092_288
    kinds = [type(p) for p in adapter.adapter_modules]
    assert kinds.count(BokehCrossAttnProcessor) == 9 and kinds.count(GroundedSelfAttnProcessor) == 9
    assert kinds.count(UNetAttnProcessor) == len(names) - 18


def test_block_lists_are_configurable_and_checked():
    unet = meta_unet()
    adapter = BokehUNetAdapter(unet, blocks=["mid_block", "up_blocks.3"], grounded_blocks=[])
    kinds = {n: type(p) for n, p in zip(unet.attn_processors, adapter.adapter_modules)}
    bokeh = sorted(n for n, k in kinds.items() if k is BokehCrossAttnProcessor)
    assert len(bokeh) == 4 and bokeh[0].startswith("mid_block.") and all(
        n.startswith(("mid_block.", "up_blocks.3.")) for n in bokeh)
    assert GroundedSelfAttnProcessor not in kinds.values()
    with pytest.raises(ValueError, match="up_blocks.0"):
        BokehUNetAdapter(unet, blocks=["up_blocks.0"])  # UpBlock2D has no attention


# ------------------------------------------------------------------ processor formulas by hand


def _attention_module():
    torch.manual_seed(0)
    return Attention(query_dim=16, heads=2, dim_head=8, cross_attention_dim=24).eval(), \
        Attention(query_dim=16, heads=2, dim_head=8).eval()


def _softmax_attention(q, k, v, heads):
    """Plain multi-head softmax attention on [S, H*D] tensors."""
    dim = q.shape[-1] // heads
    out = []
    for h in range(heads):
        s = slice(h * dim, (h + 1) * dim)
        out.append(torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(dim), dim=-1) @ v[:, s])
    return torch.cat(out, dim=-1)


def test_decoupled_bokeh_cross_attention_formula():
    cross, _ = _attention_module()
    proc = BokehCrossAttnProcessor(context_dim=12, key_dim=16, value_dim=16, bokeh_scale=0.6)
    randomize(proc)
    x, text, tokens = torch.randn(2, 9, 16), torch.randn(2, 5, 24), torch.randn(2, 1, 12)
    with torch.no_grad():
        cross.set_processor(proc)
        got = cross(x, text, bokeh_embeds=tokens)
        for b in range(2):
            q, k, v = x[b] @ cross.to_q.weight.T, text[b] @ cross.to_k.weight.T, text[b] @ cross.to_v.weight.T
            k_b, v_b = tokens[b] @ proc.to_k_bokeh.weight.T, tokens[b] @ proc.to_v_bokeh.weight.T
            inner = _softmax_attention(q, k, v, 2) + 0.6 * _softmax_attention(q, k_b, v_b, 2)
            torch.testing.assert_close(got[b], inner @ cross.to_out[0].weight.T + cross.to_out[0].bias)
            # one bokeh token: its attention is V_b at every position
            torch.testing.assert_close(_softmax_attention(q, k_b, v_b, 2), v_b.expand(9, 16))


def test_grounded_self_attention_formula():
    _, self_attn = _attention_module()
    proc = GroundedSelfAttnProcessor(16, 16, rank=3, lora_scale=0.8)
    randomize(proc)
    self_attn.set_processor(proc)
    x = torch.randn(3, 7, 16)
    index = [2, 1, 2]
    with torch.no_grad():
        got = self_attn(x, pivot_index=torch.tensor(index))
        q = x @ self_attn.to_q.weight.T
        k = x @ self_attn.to_k.weight.T
        v = x @ self_attn.to_v.weight.T
        q = q + 0.8 * (q @ proc.to_q_adp.down.weight.T @ proc.to_q_adp.up.weight.T)
        k = k + 0.8 * (k @ proc.to_k_adp.down.weight.T @ proc.to_k_adp.up.weight.T)
        for b, p in enumerate(index):  # Attention(Q_piv, [K_b, K_piv], [V_b, V_b])
            inner = _softmax_attention(q[p], torch.cat([k[b], k[p]]), torch.cat([v[b], v[b]]), 2)
            torch.testing.assert_close(got[b], inner @ self_attn.to_out[0].weight.T + self_attn.to_out[0].bias)
        # a row tied to itself attends over its keys twice: the same as plain attention
        alone = self_attn(x)
        torch.testing.assert_close(got[1], alone[1])


# ------------------------------------------------------------------ whole model


def test_scale_zero_and_fresh_adapter_reproduce_the_base_exactly():
    unet = tiny_unet()
    inputs = unet_batch()
    with torch.no_grad():
        plain = unet(**inputs, return_dict=False)[0]
        fresh = BokehUNetAdapter(unet, **TINY)
        assert torch.equal(fresh(unet, **inputs, bokeh=[2.0, 28.0]), plain)
        adapter = BokehUNetAdapter(unet, **TINY)
        randomize(adapter)
        changed = adapter(unet, **inputs, bokeh=[2.0, 28.0], pivot_ids=[1, 1])
        assert (changed - plain).abs().max() > 1e-3
        assert (adapter(unet, **inputs, bokeh=-1) - adapter(unet, **inputs, bokeh=0)).abs().max() > 1e-4
        adapter.set_bokeh_scale(0.0)
        adapter.set_lora_scale(0.0)
        assert torch.equal(adapter(unet, **inputs, bokeh=[2.0, 28.0]), plain)
        adapter.uninstall(unet)
        assert torch.equal(unet(**inputs, return_dict=False)[0], plain)


def test_unet_with_class_input_takes_the_bokeh_condition_there():
    from diffusers import UNet2DConditionModel

    from tiny_diffusion import TINY_UNET_CONFIG

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG, class_embed_type="projection", projection_class_embeddings_input_dim=1).eval()
    randomize(unet.class_embedding)
    inputs = unet_batch()
    pristine = copy.deepcopy(unet)
    adapter = BokehUNetAdapter(unet, **TINY)
    with torch.no_grad():
        out = adapter(unet, **inputs, bokeh=[6.0, -1.0])  # fresh adapter: the bokeh branch adds nothing yet
        # K / 30 for a level, -1 for "no condition", as class labels
        expected = pristine(**inputs, class_labels=torch.tensor([[0.2], [-1.0]]), return_dict=False)[0]
        assert torch.equal(out, expected)
        assert (adapter(unet, **inputs, bokeh=[24.0, 24.0]) - out).abs().max() > 1e-4


def test_save_load_round_trip(tmp_path):
    unet = tiny_unet()
    twin = copy.deepcopy(unet)
    adapter = BokehUNetAdapter(unet, lora_alpha=2.0, **TINY)
    randomize(adapter)
    adapter.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config == dict(blocks=["up_blocks"], grounded_blocks=["up_blocks"], bokeh_input_dim=1, bokeh_hidden_dim=8,
                          bokeh_context_dim=12, lora_rank=4, lora_alpha=2.0, lora_scale=1.0, bokeh_scale=1.0)
    loaded = BokehUNetAdapter.from_pretrained(str(tmp_path / "ckpt"), unet=twin)
    assert list(loaded.state_dict()) == list(adapter.state_dict())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in adapter.state_dict().items())
    inputs = unet_batch()
    with torch.no_grad():
        assert torch.equal(loaded(twin, **inputs, bokeh=[9.0, 3.0], pivot_ids=[None, 0]),
                           adapter(unet, **inputs, bokeh=[9.0, 3.0], pivot_ids=[None, 0]))
    other = tmp_path / "rank2"  # weights of another rank under this config: strict shapes refuse them
    BokehUNetAdapter(tiny_unet(), **{**TINY, "lora_rank": 2}).save_pretrained(other)
    (other / "config.json").write_text((tmp_path / "ckpt" / "config.json").read_text())
    with pytest.raises(ModelUnavailableError, match="wrong shape"):
        BokehUNetAdapter.from_pretrained(other, tiny_unet())
    with pytest.raises(ModelUnavailableError, match="built on its UNet's attention layers: pass the unet$"):
        BokehUNetAdapter.from_pretrained(tmp_path / "ckpt")  # the processors' sizes are the UNet's
    half = BokehUNetAdapter.from_pretrained(tmp_path / "ckpt", tiny_unet(), torch_dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.equal(half.embedding_layer[0].weight, adapter.embedding_layer[0].weight.half())


def test_training_adapter_only_with_checkpointing_and_autocast():
    unet = tiny_unet()
    adapter = BokehUNetAdapter(unet, **TINY)
    params = adapter.set_trainable(unet)
    frozen = {k: v.clone() for k, v in unet.state_dict().items() if ".processor." not in k}
    inputs = unet_batch()
    target = torch.randn_like(inputs["sample"])

    def loss_and_grads(checkpointing):
        unet.enable_gradient_checkpointing() if checkpointing else unet.disable_gradient_checkpointing()
        unet.train(checkpointing)
        adapter.zero_grad()
        loss = F.mse_loss(adapter(unet, **inputs, bokeh=[5.0, 25.0], pivot_ids=[1, 1]), target)
        loss.backward()
        return [p.grad.clone() for p in params]

    randomize(adapter, std=0.05)
    for plain, checkpointed in zip(loss_and_grads(False), loss_and_grads(True)):
        torch.testing.assert_close(checkpointed, plain)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = adapter(unet, **inputs, bokeh=[5.0, 25.0], pivot_ids=[1, 1])
        F.mse_loss(half.float(), target).backward()
    with torch.no_grad():
        full = adapter(unet, **inputs, bokeh=[5.0, 25.0], pivot_ids=[1, 1])
    assert (half.float() - full).norm() / full.norm() < 0.05

    fresh = BokehUNetAdapter(unet, **TINY)
    params = fresh.set_trainable(unet)
    unet.enable_gradient_checkpointing()
    optimizer = torch.optim.Adam(params, lr=1e-1)
    losses = []
    for _ in range(10):
        loss = F.mse_loss(fresh(unet, **inputs, bokeh=[5.0, 25.0], pivot_ids=[1, None]), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0]
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in frozen.items())
    assert all(p.grad is None for n, p in unet.named_parameters() if ".processor." not in n)
