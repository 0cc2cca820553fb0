"""BokehFluxAdapter: released checkpoint layout, released processor maths, grounding, I/O and training."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from safetensors.torch import load_file, save_file

from estimators.model_loading import ModelUnavailableError
from tiny_diffusion import TINY_ADAPTER as TINY, TINY_FLUX_CONFIG, flux_batch, meta_flux, randomize, single_thread, tiny_flux
from bokeh_models import BokehFluxAdapter
from bokeh_models.attention_processors import BokehFluxAttnProcessor

HEADS, HEAD_DIM = TINY_FLUX_CONFIG["num_attention_heads"], TINY_FLUX_CONFIG["attention_head_dim"]


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


# ------------------------------------------------------------------ layout on FLUX.1-dev dimensions


@pytest.fixture(scope="module")
def flux_dev_adapter():
    transformer = meta_flux()
    return transformer, BokehFluxAdapter(transformer)


def test_flux_dev_adapter_matches_released_layout(flux_dev_adapter):
    transformer, adapter = flux_dev_adapter
    expected = {
        "embedding_layer.0.weight": (64, 1), "embedding_layer.0.bias": (64,),
        "embedding_layer.2.weight": (768, 64), "embedding_layer.2.bias": (768,),
    }
    for i in range(57):
        for name, in_dim in (("to_k_bokeh", 768), ("to_v_bokeh", 768), ("to_q_adp", 3072), ("to_k_adp", 3072)):
            expected[f"adapter_modules.{i}.{name}.down.weight"] = (128, in_dim)
            expected[f"adapter_modules.{i}.{name}.up.weight"] = (3072, 128)
    got = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    assert got == expected
    assert sum(p.numel() for p in adapter.parameters()) == 145_736_576
    assert adapter.config == dict(
        blocks=[f"transformer_blocks.{i}" for i in range(19)] + [f"single_transformer_blocks.{i}" for i in range(38)],
        attn_hidden_dim=3072, bokeh_input_dim=1, bokeh_hidden_dim=64, bokeh_context_dim=768, lora_rank=128,
        lora_alpha=None, lora_scale=1.0, bokeh_scale=1.0, unfreeze_q=True, unfreeze_k=True,
    )
    names = list(transformer.attn_processors)
    assert names[0] == "transformer_blocks.0.attn.processor" and names[19] == "single_transformer_blocks.0.attn.processor"
    assert all(transformer.get_submodule(n.removesuffix(".processor")).processor is m
               for n, m in zip(names, adapter.adapter_modules))


def test_flux_adapter_rejects_unknown_blocks_and_width():
    transformer = tiny_flux()
    with pytest.raises(ValueError, match="transformer_blocks.7"):
        BokehFluxAdapter(transformer, blocks=["transformer_blocks.7"], **TINY)
    with pytest.raises(ValueError, match="attn_hidden_dim 64"):
        BokehFluxAdapter(transformer, attn_hidden_dim=64, **TINY)


# ------------------------------------------------------------------ the released processor, written out


def _lora(x, weights, prefix, alpha, rank):
    out = x @ weights[f"{prefix}.down.weight"].T @ weights[f"{prefix}.up.weight"].T
    return out * (alpha / rank) if alpha is not None else out


class ReleasedFluxProcessor:
    """BokehFluxAttnProcessor2_0 of the released code (bokeh_diffusion/adapter_flux.py), written out with
    plain tensors in its [batch, heads, seq, dim] layout; ``weights`` None = its plain FluxAttnProcessor2_0."""

    def __init__(self, weights=None, alpha=None, rank=None):
        self.w, self.alpha, self.rank = weights, alpha, rank

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None, bokeh_embeds=None, perform_swap=False, batch_swap_ids=None):
        w = self.w
        batch = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if w is not None:
            query = query + _lora(query, w, "to_q_adp", self.alpha, self.rank)
            key = key + _lora(key, w, "to_k_adp", self.alpha, self.rank)
        heads = attn.heads
        dim = key.shape[-1] // heads
        split = lambda t: t.view(batch, -1, heads, dim).transpose(1, 2)  # noqa: E731
        query, key, value = attn.norm_q(split(query)), attn.norm_k(split(key)), split(value)
        if encoder_hidden_states is not None:
            eq = attn.norm_added_q(split(attn.add_q_proj(encoder_hidden_states)))
            ek = attn.norm_added_k(split(attn.add_k_proj(encoder_hidden_states)))
            ev = split(attn.add_v_proj(encoder_hidden_states))
            query, key, value = torch.cat([eq, query], 2), torch.cat([ek, key], 2), torch.cat([ev, value], 2)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb)
            key = apply_rotary_emb(key, image_rotary_emb)
        if w is not None and perform_swap:
            query = query[batch_swap_ids]
            key = torch.cat([key, key[batch_swap_ids]], dim=2)
            value = torch.cat([value, value], dim=2)
        out = F.scaled_dot_product_attention(query, key, value)
        out = out.transpose(1, 2).reshape(batch, -1, heads * dim)
        if w is not None and bokeh_embeds is not None:
            kb = split(_lora(bokeh_embeds, w, "to_k_bokeh", self.alpha, self.rank))
            vb = split(_lora(bokeh_embeds, w, "to_v_bokeh", self.alpha, self.rank))
            cam = F.scaled_dot_product_attention(query, kb, vb).transpose(1, 2).reshape(batch, -1, heads * dim)
            out = out + 1.0 * cam
        if encoder_hidden_states is None:
            return out
        text, image = out[:, : encoder_hidden_states.shape[1]], out[:, encoder_hidden_states.shape[1]:]
        return attn.to_out[1](attn.to_out[0](image)), attn.to_add_out(text)


def _released_reference(base, adapter, blocks, alpha, rank):
    """A copy of ``base`` running the released processors with ``adapter``'s weights."""
    ref = copy.deepcopy(base)
    state = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
    procs = {}
    for i, name in enumerate(ref.attn_processors):
        if name.split(".attn")[0] in blocks:
            w = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"adapter_modules.{i}.")}
            procs[name] = ReleasedFluxProcessor(w, alpha, rank)
        else:
            procs[name] = ReleasedFluxProcessor()
    ref.set_attn_processor(procs)

    def embed(levels):
        cond = torch.tensor([[-1.0 if k < 0 else k / 30.0] for k in levels])
        hidden = torch.relu(cond @ state["embedding_layer.0.weight"].T + state["embedding_layer.0.bias"])
        return hidden @ state["embedding_layer.2.weight"].T + state["embedding_layer.2.bias"]

    return ref, embed


@pytest.mark.parametrize(
    "blocks, alpha", [(None, None), (["single_transformer_blocks.0"], 2.0)], ids=["all-blocks", "single-only-alpha"]
)
def test_flux_adapter_matches_released_processor(blocks, alpha):
    base = tiny_flux()
    pristine = copy.deepcopy(base)
    adapter = BokehFluxAdapter(base, blocks=blocks, lora_alpha=alpha, **TINY)
    randomize(adapter)
    ref, embed = _released_reference(pristine, adapter, adapter.config["blocks"], alpha, TINY["lora_rank"])
    cases = [  # (K per row, our pivot_ids, released batch_swap_ids)
        ([12.0, -1.0], None, None),
        ([0.0, 15.0], [1, 1], [1, 1]),
        ([4.0, 30.0, 20.0], [2, None, 2], [2, 1, 2]),
    ]
    with torch.no_grad():
        for levels, pivots, swap_ids in cases:
            inputs = flux_batch(batch=len(levels))
            ours = adapter(base, bokeh=levels, pivot_ids=pivots, **inputs)
            released = ref(**inputs, return_dict=False, joint_attention_kwargs=dict(
                bokeh_embeds=embed(levels), perform_swap=swap_ids is not None, batch_swap_ids=swap_ids))[0]
            torch.testing.assert_close(ours, released, rtol=1e-4, atol=1e-5)
            plain = pristine(**inputs, return_dict=False)[0]
            assert (ours - plain).abs().max() > 1e-3  # the adapter does change the prediction


# ------------------------------------------------------------------ grounding and bokeh term, by hand


def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def test_grounded_attention_formula_single_stream():
    """Row b: softmax(Q_piv [K_b, K_piv]^T / sqrt(d)) [V_b, V_b], with q/k adapters before the q/k norm."""
    base = tiny_flux()
    attn = base.single_transformer_blocks[0].attn
    proc = BokehFluxAttnProcessor(HEADS * HEAD_DIM, 12, rank=4, lora_scale=0.7, bokeh_scale=0.0)  # attention alone
    randomize(proc, std=0.2)
    torch.manual_seed(5)
    x = torch.randn(3, 6, HEADS * HEAD_DIM)
    index = [2, 1, 2]
    with torch.no_grad():
        got = proc(attn, x, bokeh_embeds=torch.randn(3, 1, 12), pivot_index=torch.tensor(index))
        q = attn.to_q(x)
        k = attn.to_k(x)
        q = q + 0.7 * (q @ proc.to_q_adp.down.weight.T @ proc.to_q_adp.up.weight.T)
        k = k + 0.7 * (k @ proc.to_k_adp.down.weight.T @ proc.to_k_adp.up.weight.T)
        v = attn.to_v(x)
        q = _rms(q.view(3, 6, HEADS, HEAD_DIM), attn.norm_q.weight, attn.norm_q.eps)
        k = _rms(k.view(3, 6, HEADS, HEAD_DIM), attn.norm_k.weight, attn.norm_k.eps)
        v = v.view(3, 6, HEADS, HEAD_DIM)
        for b, p in enumerate(index):
            for h in range(HEADS):
                keys = torch.cat([k[b, :, h], k[p, :, h]])
                values = torch.cat([v[b, :, h], v[b, :, h]])
                weights = torch.softmax(q[p, :, h] @ keys.T / math.sqrt(HEAD_DIM), dim=-1)
                torch.testing.assert_close(got[b, :, h * HEAD_DIM:(h + 1) * HEAD_DIM], weights @ values)


def test_bokeh_term_is_v_b_before_the_output_projection():
    base = tiny_flux()
    adapter = BokehFluxAdapter(base, **TINY)
    randomize(adapter)
    adapter.set_bokeh_scale(0.5)
    tokens = adapter.bokeh_tokens([6.0, 21.0], 2)
    v_b = adapter.adapter_modules[1].to_v_bokeh(tokens)  # [2, 1, inner]
    torch.manual_seed(0)
    with torch.no_grad():
        # single-stream: the processor returns the joint attention output, before the block's proj_out
        single = base.single_transformer_blocks[0].attn
        x = torch.randn(2, 7, HEADS * HEAD_DIM)
        text = torch.randn(2, 3, HEADS * HEAD_DIM)
        double = base.transformer_blocks[0].attn
        on = single(x, bokeh_embeds=tokens), double(x, text, bokeh_embeds=tokens)
        adapter.set_bokeh_scale(0.0)  # the branch off: plain attention
        off = single(x, bokeh_embeds=tokens), double(x, text, bokeh_embeds=tokens)
        delta = on[0] - off[0]
        torch.testing.assert_close(delta, (0.5 * v_b).expand_as(delta))
        # double-stream: added to text and image tokens before to_out / to_add_out (linear, so bias cancels)
        v_b0 = adapter.adapter_modules[0].to_v_bokeh(tokens)
        (img_on, txt_on), (img_off, txt_off) = on[1], off[1]
        torch.testing.assert_close(img_on - img_off, (0.5 * v_b0 @ double.to_out[0].weight.T).expand_as(img_on), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(txt_on - txt_off, (0.5 * v_b0 @ double.to_add_out.weight.T).expand_as(txt_on), atol=1e-5, rtol=1e-4)


def test_no_condition_k_is_minus_one():
    base = tiny_flux()
    adapter = BokehFluxAdapter(base, **TINY)
    randomize(adapter)
    inputs = flux_batch(batch=2)
    with torch.no_grad():
        minus_one = adapter(base, bokeh=-1.0, **inputs)
        torch.testing.assert_close(adapter(base, bokeh=[-5.0, -30.0], **inputs), minus_one, rtol=0, atol=0)
        assert (adapter(base, bokeh=0.0, **inputs) - minus_one).abs().max() > 1e-3
        expected_token = adapter.embedding_layer(torch.tensor([[-1.0]]))
        torch.testing.assert_close(adapter.bokeh_tokens(-3, 1)[0], expected_token)


def test_scale_zero_and_fresh_adapter_reproduce_the_base_exactly():
    base = tiny_flux()
    inputs = flux_batch(batch=2)
    with torch.no_grad():
        plain = base(**inputs, return_dict=False)[0]
        fresh = BokehFluxAdapter(base, **TINY)  # zero up-projections: no change at all
        assert torch.equal(fresh(base, bokeh=[3.0, 27.0], **inputs), plain)
        adapter = BokehFluxAdapter(base, **TINY)
        randomize(adapter)
        adapter.set_bokeh_scale(0.0)
        adapter.set_lora_scale(0.0)
        assert torch.equal(adapter(base, bokeh=[3.0, 27.0], **inputs), plain)
        adapter.uninstall(base)
        assert torch.equal(base(**inputs, return_dict=False)[0], plain)
        with pytest.raises(ValueError, match="not installed"):
            adapter(base, bokeh=1.0, **inputs)


# ------------------------------------------------------------------ checkpoints


def test_save_load_round_trip(tmp_path):
    base = tiny_flux()
    twin = copy.deepcopy(base)
    adapter = BokehFluxAdapter(base, lora_alpha=8.0, **TINY)
    randomize(adapter)
    adapter.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == adapter.config and config["lora_alpha"] == 8.0
    stored = load_file(tmp_path / "model.safetensors")
    assert set(stored) == set(adapter.state_dict()) and all(t.dtype == torch.float32 for t in stored.values())

    loaded = BokehFluxAdapter.from_pretrained(tmp_path, transformer=twin)
    for key, value in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    inputs = flux_batch(batch=2)
    with torch.no_grad():
        assert torch.equal(loaded(twin, [8.0, 16.0], [1, 1], **inputs), adapter(base, [8.0, 16.0], [1, 1], **inputs))


def test_loads_a_checkpoint_written_in_the_released_layout(tmp_path):
    """Files made by hand from docs/design.md's layout (§3.1) (not by save_pretrained) load unchanged."""
    base = tiny_flux()
    inner = HEADS * HEAD_DIM
    config = {"blocks": ["transformer_blocks.0", "single_transformer_blocks.0"], "attn_hidden_dim": inner,
              "bokeh_input_dim": 1, "bokeh_hidden_dim": 8, "bokeh_context_dim": 12, "lora_rank": 4,
              "lora_alpha": None, "lora_scale": 1.0, "bokeh_scale": 1.0, "unfreeze_q": True, "unfreeze_k": True}
    g = torch.Generator().manual_seed(0)
    tensors = {"embedding_layer.0.weight": torch.randn(8, 1, generator=g), "embedding_layer.0.bias": torch.randn(8, generator=g),
               "embedding_layer.2.weight": torch.randn(12, 8, generator=g), "embedding_layer.2.bias": torch.randn(12, generator=g)}
    for i in range(2):
        for name, in_dim in (("to_k_bokeh", 12), ("to_v_bokeh", 12), ("to_q_adp", inner), ("to_k_adp", inner)):
            tensors[f"adapter_modules.{i}.{name}.down.weight"] = torch.randn(4, in_dim, generator=g)
            tensors[f"adapter_modules.{i}.{name}.up.weight"] = torch.randn(inner, 4, generator=g)
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(tensors, tmp_path / "model.safetensors")
    adapter = BokehFluxAdapter.from_pretrained(str(tmp_path), base)
    assert torch.equal(adapter.adapter_modules[1].to_q_adp.up.weight, tensors["adapter_modules.1.to_q_adp.up.weight"])
    assert torch.equal(base.single_transformer_blocks[0].attn.processor.to_v_bokeh.down.weight,
                       tensors["adapter_modules.1.to_v_bokeh.down.weight"])
    assert torch.equal(adapter.embedding_layer[2].bias, tensors["embedding_layer.2.bias"])

    del tensors["adapter_modules.0.to_k_adp.up.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ModelUnavailableError, match="1 missing"):
        BokehFluxAdapter.from_pretrained(tmp_path, tiny_flux())
    (tmp_path / "config.json").write_text(json.dumps({**config, "extra": 1}))
    with pytest.raises(ModelUnavailableError, match="unknown fields"):
        BokehFluxAdapter.from_pretrained(tmp_path, tiny_flux())
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelUnavailableError, match="no model.safetensors"):
        BokehFluxAdapter.from_pretrained(tmp_path, tiny_flux())


def test_a_diffusers_model_loaded_without_its_transformer(tmp_path):
    """The released layout loads with no transformer (diffusers' ConfigMixin + ModelMixin conventions), installs
    on one later and predicts as the adapter it was saved from; a subset of blocks needs the transformer."""
    from diffusers import ConfigMixin, ModelMixin

    base = tiny_flux()
    adapter = BokehFluxAdapter(base, lora_alpha=8.0, **TINY)
    randomize(adapter)
    adapter.save_pretrained(tmp_path / "full")
    loaded = BokehFluxAdapter.from_pretrained(tmp_path / "full", torch_dtype=torch.float64)
    assert isinstance(loaded, ModelMixin) and isinstance(loaded, ConfigMixin)
    assert loaded.dtype == torch.float64 and loaded.device.type == "cpu" and dict(loaded.config) == adapter.config
    loaded.to(torch.float32)
    twin = tiny_flux()
    loaded.install(twin)
    inputs = flux_batch(batch=2)
    with torch.no_grad():
        assert torch.equal(loaded(twin, [8.0, 16.0], [1, 1], **inputs), adapter(base, [8.0, 16.0], [1, 1], **inputs))
    BokehFluxAdapter(tiny_flux(), blocks=["single_transformer_blocks.0"], **TINY).save_pretrained(tmp_path / "part")
    with pytest.raises(ModelUnavailableError, match="only some of the transformer's blocks: pass the transformer"):
        BokehFluxAdapter.from_pretrained(tmp_path / "part")
    assert BokehFluxAdapter.from_pretrained(tmp_path / "part", tiny_flux()).fits(tiny_flux())


def test_push_to_hub_uploads_the_released_layout(tmp_path, monkeypatch):
    """diffusers' push_to_hub with the hub calls replaced (no network): the uploaded folder holds the layout."""
    import diffusers.utils.hub_utils as hub_utils

    uploaded = {}

    class Repo:
        repo_id = "me/bokeh-adapter"

    def upload_folder(repo_id, folder_path, **kwargs):
        uploaded.update({p.name: p.read_bytes() for p in __import__("pathlib").Path(folder_path).iterdir()})
        uploaded["repo"] = repo_id

    monkeypatch.setattr(hub_utils, "create_repo", lambda repo_id, **kwargs: Repo())
    monkeypatch.setattr(hub_utils, "load_or_create_model_card", lambda *a, **k: __import__("types").SimpleNamespace(
        save=lambda path: open(path, "w").write("card")))
    monkeypatch.setattr(hub_utils, "populate_model_card", lambda card, *a, **k: card)
    monkeypatch.setattr(hub_utils, "upload_folder", upload_folder)
    adapter = BokehFluxAdapter(tiny_flux(), **TINY)
    adapter.push_to_hub("me/bokeh-adapter")
    assert uploaded["repo"] == "me/bokeh-adapter"
    assert sorted(uploaded) == ["README.md", "config.json", "model.safetensors", "repo"]
    assert json.loads(uploaded["config.json"]) == adapter.config


def test_unreachable_hub_id_or_missing_folder_is_one_line_error(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    asked = []

    def no_hub(repo_id, filename, **kwargs):  # what an offline machine's hub client raises; no network here
        asked.append(repo_id)
        raise LocalEntryNotFoundError(f"cannot find {filename} of {repo_id} in the local cache\nand the hub is offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    with pytest.raises(ModelUnavailableError) as info:
        BokehFluxAdapter.from_pretrained("test-org/no-such-adapter", tiny_flux())
    assert asked == ["test-org/no-such-adapter"]
    assert "\n" not in str(info.value) and "'test-org/no-such-adapter'" in str(info.value)
    with pytest.raises(ModelUnavailableError, match="no_such_adapter does not exist"):
        BokehFluxAdapter.from_pretrained(tmp_path / "no_such_adapter", tiny_flux())


# ------------------------------------------------------------------ training


def _grads(params):
    return [p.grad.detach().clone() for p in params]


# FLUX's own q/k RMSNorm warns that bf16 input meets fp32 weight under autocast (base-model behaviour)
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_gradient_checkpointing_and_autocast():
    base = tiny_flux()
    adapter = BokehFluxAdapter(base, **TINY)
    randomize(adapter)
    params = adapter.set_trainable(base)
    inputs = flux_batch(batch=2)
    target = torch.randn_like(inputs["hidden_states"])

    def grads(checkpointing):
        base.enable_gradient_checkpointing() if checkpointing else base.disable_gradient_checkpointing()
        adapter.zero_grad()
        F.mse_loss(adapter(base, [5.0, 25.0], [1, 1], **inputs), target).backward()
        return _grads(params)

    for plain, checkpointed in zip(grads(False), grads(True)):
        torch.testing.assert_close(checkpointed, plain)
    assert all(p.grad is not None for p in params)
    base.disable_gradient_checkpointing()
    with torch.no_grad():
        full = adapter(base, [5.0, 25.0], [1, 1], **inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = adapter(base, [5.0, 25.0], [1, 1], **inputs)
        F.mse_loss(half.float(), target).backward()
    assert torch.isfinite(half).all()
    assert (half.float() - full).norm() / full.norm() < 0.05


def test_fp32_adapter_on_a_bf16_base():
    """The usual GPU set-up: frozen base in bf16, trained adapter in fp32."""
    base = tiny_flux().to(torch.bfloat16)
    adapter = BokehFluxAdapter(base, **TINY)
    randomize(adapter)
    params = adapter.set_trainable(base)
    inputs = {k: v.to(torch.bfloat16) for k, v in flux_batch(batch=2).items()}
    out = adapter(base, [3.0, 20.0], [1, 1], **inputs)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(p.dtype == torch.float32 and p.grad is not None for p in params)


def test_training_adapter_only_reduces_loss_and_keeps_base():
    base = tiny_flux()
    adapter = BokehFluxAdapter(base, **TINY)
    params = adapter.set_trainable(base)
    # every adapter parameter but the bokeh keys K_b, whose gradient is 0 with one bokeh token
    inert = {n for n, _ in adapter.named_parameters() if ".to_k_bokeh." in n}
    assert len(inert) == 2 * len(adapter.adapter_modules)
    assert {id(p) for p in params} == {id(p) for n, p in adapter.named_parameters() if n not in inert}
    frozen = {k: v.clone() for k, v in base.state_dict().items() if ".processor." not in k}
    frozen.update({n: p.detach().clone() for n, p in adapter.named_parameters() if n in inert})
    base.enable_gradient_checkpointing()
    inputs = flux_batch(batch=2)
    target = torch.randn_like(inputs["hidden_states"])
    optimizer = torch.optim.Adam(params, lr=3e-2)
    losses = []
    for _ in range(10):
        loss = F.mse_loss(adapter(base, [5.0, 25.0], [1, None], **inputs), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0]
    state = {**base.state_dict(), **dict(adapter.named_parameters())}
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert all(p.grad is None for n, p in base.named_parameters() if ".processor." not in n or ".to_k_bokeh." in n)


def test_train_everything_for_tiny_models():
    base = tiny_flux()
    adapter = BokehFluxAdapter(base, **TINY)
    params = adapter.set_trainable(base, train_base=True)
    inert = {id(p) for n, p in adapter.named_parameters() if ".to_k_bokeh." in n}
    everything = ({id(p) for p in adapter.parameters()} | {id(p) for p in base.parameters()}) - inert
    assert {id(p) for p in params} == everything and len(params) == len(everything)
    assert all(p.requires_grad for p in params) and inert and not any(p.requires_grad for p in base.parameters() if id(p) in inert)
