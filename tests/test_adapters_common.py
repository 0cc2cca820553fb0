"""Bokeh condition, low-rank pair, pivot map and the one-token bokeh attention, against hand-worked values."""
import math

import pytest
import torch

from bokeh_models.attention_processors import bokeh_attention, ground, pivot_index
from bokeh_models.bokeh_embedding import BokehEmbedding, bokeh_condition
from bokeh_models.lora import LowRankLinear


def test_bokeh_condition_scales_k_and_marks_no_condition():
    got = bokeh_condition([0, 15, 30, -1, -7.5], 5)
    assert got.shape == (5, 1)
    assert got.flatten().tolist() == [0.0, 0.5, 1.0, -1.0, -1.0]
    assert bokeh_condition(6.0, 3).flatten().tolist() == pytest.approx([0.2] * 3)
    assert bokeh_condition(torch.tensor([[3.0], [-2.0]]), 2).flatten().tolist() == pytest.approx([0.1, -1.0])
    assert bokeh_condition(torch.tensor(24.0), 2).flatten().tolist() == pytest.approx([0.8, 0.8])


@pytest.mark.parametrize(
    "bokeh, batch, message",
    [(31, 1, "0..30"), (float("nan"), 1, "NaN"), ([1, 2, 3], 2, "3 bokeh levels for a batch of 2")],
)
def test_bokeh_condition_rejects_bad_levels(bokeh, batch, message):
    with pytest.raises(ValueError, match=message):
        bokeh_condition(bokeh, batch)


def test_bokeh_embedding_is_the_released_mlp():
    torch.manual_seed(0)
    emb = BokehEmbedding(1, 8, 6)
    assert [k for k in emb.state_dict()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    tokens = emb.tokens([15.0, -3.0], 2)
    assert tokens.shape == (2, 1, 6)
    w0, b0, w2, b2 = emb[0].weight, emb[0].bias, emb[2].weight, emb[2].bias
    for row, cond in enumerate([0.5, -1.0]):
        hidden = torch.clamp(cond * w0[:, 0] + b0, min=0)
        torch.testing.assert_close(tokens[row, 0], w2 @ hidden + b2)


def test_low_rank_pair_with_and_without_alpha():
    torch.manual_seed(0)
    x = torch.randn(3, 10)
    plain = LowRankLinear(10, 7, rank=4)
    assert torch.count_nonzero(plain(x)) == 0  # up starts at zero
    assert plain.down.weight.std().item() == pytest.approx(0.25, rel=0.5)  # std 1/rank
    scaled = LowRankLinear(10, 7, rank=4, alpha=2.0)
    for layer in (plain, scaled):
        torch.nn.init.normal_(layer.up.weight)
        assert layer.down.bias is None and layer.up.bias is None
    by_hand = x @ plain.down.weight.T @ plain.up.weight.T
    torch.testing.assert_close(plain(x), by_hand)
    torch.testing.assert_close(scaled(x), (x @ scaled.down.weight.T @ scaled.up.weight.T) * 0.5)
    assert scaled(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_pivot_index():
    assert pivot_index(None, 3) is None
    assert pivot_index([1, 1], 2).tolist() == [1, 1]
    assert pivot_index([2, None, -1, 2], 4).tolist() == [2, 1, 2, 2]
    assert pivot_index(torch.tensor([0, 0]), 2).tolist() == [0, 0]
    assert pivot_index([None, -1, 2], 3) is None  # nobody grounded: plain attention
    with pytest.raises(ValueError, match="2 entries for a batch of 3"):
        pivot_index([0, 0], 3)
    with pytest.raises(ValueError, match=r"pivot_ids\[1\]"):
        pivot_index([0, 5], 2)
    with pytest.raises(ValueError, match=r"pivot_ids\[0\]"):
        pivot_index([True, 0], 2)


def test_ground_builds_pivot_queries_and_doubled_keys():
    q = torch.arange(3.0).view(3, 1, 1, 1)
    k = 10 + torch.arange(3.0).view(3, 1, 1, 1)
    v = 20 + torch.arange(3.0).view(3, 1, 1, 1)
    gq, gk, gv = ground(q, k, v, torch.tensor([2, 1, 2]), seq_dim=1)
    assert gq.flatten().tolist() == [2, 1, 2]
    assert gk[:, :, 0, 0].tolist() == [[10, 12], [11, 11], [12, 12]]
    assert gv[:, :, 0, 0].tolist() == [[20, 20], [21, 21], [22, 22]]
    gq, gk, gv = ground(q, k, v, torch.tensor([2, 1, 2]), seq_dim=1, extend_keys=False)
    assert gq.flatten().tolist() == [2, 1, 2] and gk.shape == k.shape and gv.shape == v.shape


def test_one_bokeh_token_attention_is_its_value():
    torch.manual_seed(0)
    batch, heads, seq, dim, context = 2, 3, 5, 4, 6
    query = torch.randn(batch, heads, seq, dim)
    tokens = torch.randn(batch, 1, context)
    to_k, to_v = LowRankLinear(context, heads * dim, 2), LowRankLinear(context, heads * dim, 2)
    for layer in (to_k, to_v):
        torch.nn.init.normal_(layer.up.weight)
    got = bokeh_attention(query, tokens, to_k, to_v)
    value = to_v(tokens)  # [B, 1, H*D]
    # the identity: attention over one key returns its value at every query position (broadcast)
    torch.testing.assert_close(got.expand(batch, seq, -1), value.expand(batch, seq, heads * dim))
    # and the full attention written out: softmax over the single logit, times V_b
    key = to_k(tokens).view(batch, 1, heads, dim).transpose(1, 2)
    v = value.view(batch, 1, heads, dim).transpose(1, 2)
    logits = query @ key.transpose(-1, -2) / math.sqrt(dim)
    full = (torch.softmax(logits, dim=-1) @ v).transpose(1, 2).reshape(batch, seq, heads * dim)
    torch.testing.assert_close(got.expand(batch, seq, -1), full)
    # K_b is not used (the adapters freeze it); V_b learns
    got.sum().backward()
    assert to_k.up.weight.grad is None and to_v.up.weight.grad.abs().sum() > 0


def test_several_bokeh_tokens_attention_by_hand():
    torch.manual_seed(1)
    batch, heads, seq, dim, context, tokens_n = 2, 3, 5, 4, 6, 3
    query = torch.randn(batch, heads, seq, dim)
    tokens = torch.randn(batch, tokens_n, context)
    to_k, to_v = torch.nn.Linear(context, heads * dim, bias=False), torch.nn.Linear(context, heads * dim, bias=False)
    key = to_k(tokens).view(batch, tokens_n, heads, dim).transpose(1, 2)
    v = to_v(tokens).view(batch, tokens_n, heads, dim).transpose(1, 2)
    logits = query @ key.transpose(-1, -2) / math.sqrt(dim)
    full = (torch.softmax(logits, dim=-1) @ v).transpose(1, 2).reshape(batch, seq, heads * dim)
    torch.testing.assert_close(bokeh_attention(query, tokens, to_k, to_v), full)


def test_low_rank_pair_in_a_bf16_model_with_and_without_autocast():
    """fp32 weights, bf16 activations: without autocast the product runs in fp32 (weights exact); under
    autocast it runs in bf16 on autocast's copies of the weights, with no fp32 copy of the input."""
    torch.manual_seed(0)
    layer = LowRankLinear(16, 8, rank=4)
    torch.nn.init.normal_(layer.up.weight)
    x = torch.randn(5, 16).to(torch.bfloat16)
    down, up = layer.down.weight, layer.up.weight
    fp32 = (x.float() @ down.T @ up.T).to(torch.bfloat16)
    torch.testing.assert_close(layer(x), fp32)
    with torch.profiler.profile(record_shapes=True) as prof, torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    bf16 = (x @ down.to(torch.bfloat16).T) @ up.to(torch.bfloat16).T
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, bf16)
    copied = [e.input_shapes[0] for e in prof.events() if e.name == "aten::_to_copy" and e.input_shapes]
    assert [4, 16] in copied and [8, 4] in copied  # autocast cast the weights
    assert [5, 16] not in copied  # ... and not the activations
