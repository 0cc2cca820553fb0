"""Diffusers attention processors for Bokeh Diffusion: decoupled bokeh cross-attention and grounding.

Every processor accepts the per-call keyword arguments ``bokeh_embeds`` (``[B, tokens, C]`` bokeh
tokens), ``pivot_index`` (``[B]`` long tensor: the row whose queries each row uses, or None) and
``prepared`` (:class:`bokeh_models.prepared.PreparedAdapter`: tensors computed once for all blocks, or None) and
ignores what it does not use, so one ``cross_attention_kwargs`` / ``joint_attention_kwargs`` dict
reaches every attention layer of a model without warnings.

- Decoupled cross-attention: ``out = attn(Q, K, V) + bokeh_scale * attn(Q, K_b, V_b)``, the bokeh term
  added before the output projection.
- Grounded attention: ``Attention(Q_piv, [K_own, K_piv], [V_own, V_own])`` per row, with trainable
  low-rank adapters acting residually on the projected q and k (``q + lora_scale * lora(q)``).
"""
from __future__ import annotations

from numbers import Integral
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

from bokeh_models.lora import LowRankLinear, scaled
from bokeh_models.prepared import PreparedAdapter, bokeh_value_for, weights_for

PivotIds = Optional[Union[Sequence[Optional[int]], torch.Tensor]]


def pivot_index(pivot_ids: PivotIds, batch_size: int, device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """The ``[batch_size]`` row -> pivot-row map for grounded attention, or None when no row is grounded.

    ``pivot_ids`` has, for each batch row, the index of its pivot row, or None / -1 for a row that is
    not grounded (it keeps its own queries and keys: attention over its keys twice, which is plain
    attention). A pivot row may list itself.
    """
    if pivot_ids is None:
        return None
    ids = pivot_ids.tolist() if isinstance(pivot_ids, torch.Tensor) else list(pivot_ids)
    if len(ids) != batch_size:
        raise ValueError(f"pivot_ids has {len(ids)} entries for a batch of {batch_size}")
    index = []
    for row, pivot in enumerate(ids):
        if pivot is None or pivot == -1:
            index.append(row)
        elif isinstance(pivot, Integral) and not isinstance(pivot, bool) and 0 <= pivot < batch_size:
            index.append(int(pivot))
        else:
            raise ValueError(f"pivot_ids[{row}] = {pivot!r} is not a row index in 0..{batch_size - 1}, None or -1")
    if index == list(range(batch_size)):
        return None
    return torch.tensor(index, dtype=torch.long, device=device)


def ground(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    index: torch.Tensor,
    seq_dim: int,
    extend_keys: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grounded attention inputs: row b gets the queries of row ``index[b]``, keys ``[K_b, K_index[b]]``
    and values ``[V_b, V_b]`` (concatenated along ``seq_dim``). Without ``extend_keys`` only the
    queries are swapped, as the released code does when k is not adapted."""
    index = index.to(query.device)
    query = query.index_select(0, index)
    if extend_keys:
        key = torch.cat([key, key.index_select(0, index)], dim=seq_dim)
        value = torch.cat([value, value], dim=seq_dim)
    return query, key, value


def bokeh_attention(
    query: torch.Tensor, tokens: torch.Tensor, to_k: nn.Module, to_v: nn.Module
) -> torch.Tensor:
    """``attn(Q, K_b, V_b)`` for ``query`` ``[B, H, S, D]`` and bokeh ``tokens`` ``[B, T, C]``, as ``[B, S, H*D]``
    (``[B, 1, H*D]``, to broadcast over S, for one token).

    With one bokeh token (the adapters' case) the softmax over its single logit is exactly 1, so the
    result is V_b at every position: returned as such, which spares an attention over the whole sequence
    and its backward in every adapted block (57 in FLUX). K_b is then unused (its gradient would be 0):
    the adapters freeze it for training (``BokehAdapter.set_trainable``).
    """
    batch, heads, seq, head_dim = query.shape
    if tokens.shape[1] == 1:
        return to_v(tokens).to(query.dtype)
    key = to_k(tokens).to(query.dtype).unflatten(-1, (heads, head_dim)).transpose(1, 2)
    value = to_v(tokens).to(query.dtype).unflatten(-1, (heads, head_dim)).transpose(1, 2)
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(batch, seq, heads * head_dim)


#: What a bokeh processor called without its condition says (a stock pipeline not handed the adapter's kwargs).
MISSING_CONDITION = (
    "the bokeh adapter's attention processors got no bokeh condition: pass the adapter's attention_kwargs(K) to the "
    "pipeline (joint_attention_kwargs for FLUX, cross_attention_kwargs for a UNet), or sample with the Bokeh pipelines"
)


def _no_mask_when_grounded(attention_mask: Optional[torch.Tensor]) -> None:
    if attention_mask is not None:
        raise ValueError("grounded attention does not support an attention mask")


class _AdapterHooks(nn.Module):
    """The three places an adapter hooks into attention; the plain processors leave all three alone."""

    def adapt_qk(
        self, query: torch.Tensor, key: torch.Tensor, prepared: Optional[PreparedAdapter]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected q and k (``[B, S, inner]``; FLUX: the ``hidden_states`` stream) after the adapter."""
        return query, key

    def ground_qkv(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        attention_mask: Optional[torch.Tensor], index: Optional[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head q, k, v after grounding (UNet ``[B, H, S, D]``, FLUX joint sequence ``[B, S, H, D]``)."""
        return query, key, value

    def bokeh_term(
        self, query: torch.Tensor, bokeh_embeds: Optional[torch.Tensor], prepared: Optional[PreparedAdapter]
    ) -> Optional[torch.Tensor]:
        """What is added to the attention output before the output projection(s)."""
        return None


# --------------------------------------------------------------------------------------------- UNet


class UNetAttnProcessor(_AdapterHooks):
    """Plain scaled-dot-product attention for ``diffusers`` ``Attention`` (same maths as AttnProcessor2_0)
    that accepts and ignores the bokeh keyword arguments. Subclasses hook in adapters and grounding."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        temb: Optional[torch.Tensor] = None,
        bokeh_embeds: Optional[torch.Tensor] = None,
        pivot_index: Optional[torch.Tensor] = None,
        prepared: Optional[PreparedAdapter] = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, sequence_length, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)

        query, key = self.adapt_qk(attn.to_q(hidden_states), attn.to_k(context), prepared)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        query, key, value = self.ground_qkv(query, key, value, attention_mask, pivot_index)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        extra = self.bokeh_term(query, bokeh_embeds, prepared)
        if extra is not None:
            hidden_states = hidden_states + extra.to(hidden_states.dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class BokehCrossAttnProcessor(UNetAttnProcessor):
    """UNet cross-attention plus the decoupled bokeh branch, with dense K_b / V_b (no bias).

    V_b starts at zero, so a fresh processor leaves the base output unchanged.
    """

    def __init__(
        self, context_dim: int, key_dim: int, value_dim: int, bokeh_scale: float = 1.0,
        device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.bokeh_scale = bokeh_scale
        self.to_k_bokeh = nn.Linear(context_dim, key_dim, bias=False, device=device, dtype=dtype)
        self.to_v_bokeh = nn.Linear(context_dim, value_dim, bias=False, device=device, dtype=dtype)
        nn.init.zeros_(self.to_v_bokeh.weight)

    def bokeh_term(
        self, query: torch.Tensor, bokeh_embeds: Optional[torch.Tensor], prepared: Optional[PreparedAdapter]
    ) -> Optional[torch.Tensor]:
        if bokeh_embeds is None:
            raise ValueError(MISSING_CONDITION)
        return scaled(bokeh_attention(query, bokeh_embeds, self.to_k_bokeh, self.to_v_bokeh), self.bokeh_scale)


class GroundedSelfAttnProcessor(UNetAttnProcessor):
    """UNet self-attention with low-rank q / k adapters and grounding on the pivot rows (V frozen)."""

    def __init__(
        self, query_dim: int, key_dim: int, rank: int, alpha: Optional[float] = None, lora_scale: float = 1.0,
        device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.lora_scale = lora_scale
        self.to_q_adp = LowRankLinear(query_dim, query_dim, rank, alpha, device=device, dtype=dtype)
        self.to_k_adp = LowRankLinear(key_dim, key_dim, rank, alpha, device=device, dtype=dtype)

    def adapt_qk(
        self, query: torch.Tensor, key: torch.Tensor, prepared: Optional[PreparedAdapter]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.to_q_adp.add_to(query, self.lora_scale, weights_for(prepared, self.to_q_adp)),
                self.to_k_adp.add_to(key, self.lora_scale, weights_for(prepared, self.to_k_adp)))

    def ground_qkv(self, query, key, value, attention_mask, index):
        if index is None:
            return query, key, value
        _no_mask_when_grounded(attention_mask)
        return ground(query, key, value, index, seq_dim=2)


# --------------------------------------------------------------------------------------------- FLUX


def _flux_projections(attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor]):
    """q, k, v of the image stream and (or Nones) of the text stream, fused or separate projections."""
    if getattr(attn, "fused_projections", False):
        query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        if encoder_hidden_states is not None and hasattr(attn, "to_added_qkv"):
            return (query, key, value, *attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1))
        return query, key, value, None, None, None
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
        return (query, key, value, attn.add_q_proj(encoder_hidden_states),
                attn.add_k_proj(encoder_hidden_states), attn.add_v_proj(encoder_hidden_states))
    return query, key, value, None, None, None


class FluxJointAttnProcessor(_AdapterHooks):
    """FLUX double- / single-stream attention (same maths as diffusers' FluxAttnProcessor) that accepts
    and ignores the bokeh keyword arguments; used for blocks the adapter leaves alone."""

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        image_rotary_emb: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        bokeh_embeds: Optional[torch.Tensor] = None,
        pivot_index: Optional[torch.Tensor] = None,
        prepared: Optional[PreparedAdapter] = None,
    ):
        query, key, value, text_query, text_key, text_value = _flux_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query, key = self.adapt_qk(query, key, prepared)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        if text_query is not None:
            text_query = attn.norm_added_q(text_query.unflatten(-1, (-1, attn.head_dim)))
            text_key = attn.norm_added_k(text_key.unflatten(-1, (-1, attn.head_dim)))
            text_value = text_value.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([text_query, query], dim=1)
            key = torch.cat([text_key, key], dim=1)
            value = torch.cat([text_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        query, key, value = self.ground_qkv(query, key, value, attention_mask, pivot_index)

        hidden_states = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask,
            backend=self._attention_backend, parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        extra = self.bokeh_term(query, bokeh_embeds, prepared)
        if extra is not None:
            hidden_states = hidden_states + extra.to(hidden_states.dtype)

        if encoder_hidden_states is None:
            return hidden_states
        text_len = encoder_hidden_states.shape[1]
        text_states, hidden_states = hidden_states.split_with_sizes(
            [text_len, hidden_states.shape[1] - text_len], dim=1
        )
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        text_states = attn.to_add_out(text_states.contiguous())
        return hidden_states, text_states


class BokehFluxAttnProcessor(FluxJointAttnProcessor):
    """FLUX attention with the released adapter: low-rank K_b / V_b bokeh branch added to the joint
    attention output (text and image tokens) before the output projections (double-stream: ``to_out`` /
    ``to_add_out``; single-stream: the block's ``proj_out``), and low-rank q / k adapters on the
    image-stream projections (single-stream: on all tokens) with grounding on the pivot rows."""

    def __init__(
        self,
        hidden_dim: int,
        context_dim: int,
        rank: int,
        alpha: Optional[float] = None,
        unfreeze_q: bool = True,
        unfreeze_k: bool = True,
        bokeh_scale: float = 1.0,
        lora_scale: float = 1.0,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.bokeh_scale = bokeh_scale
        self.lora_scale = lora_scale
        low_rank = dict(rank=rank, alpha=alpha, device=device, dtype=dtype)
        self.to_k_bokeh = LowRankLinear(context_dim, hidden_dim, **low_rank)
        self.to_v_bokeh = LowRankLinear(context_dim, hidden_dim, **low_rank)
        self.to_q_adp = LowRankLinear(hidden_dim, hidden_dim, **low_rank) if unfreeze_q else None
        self.to_k_adp = LowRankLinear(hidden_dim, hidden_dim, **low_rank) if unfreeze_k else None

    def adapt_qk(
        self, query: torch.Tensor, key: torch.Tensor, prepared: Optional[PreparedAdapter]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.to_q_adp is not None:
            query = self.to_q_adp.add_to(query, self.lora_scale, weights_for(prepared, self.to_q_adp))
        if self.to_k_adp is not None:
            key = self.to_k_adp.add_to(key, self.lora_scale, weights_for(prepared, self.to_k_adp))
        return query, key

    def ground_qkv(self, query, key, value, attention_mask, index):
        if index is None:
            return query, key, value
        _no_mask_when_grounded(attention_mask)
        return ground(query, key, value, index, seq_dim=1, extend_keys=self.to_k_adp is not None)

    def bokeh_term(
        self, query: torch.Tensor, bokeh_embeds: Optional[torch.Tensor], prepared: Optional[PreparedAdapter]
    ) -> Optional[torch.Tensor]:
        if bokeh_embeds is None:
            raise ValueError(MISSING_CONDITION)
        value = bokeh_value_for(prepared, self.to_v_bokeh, bokeh_embeds)
        if value is None:
            value = bokeh_attention(query.transpose(1, 2), bokeh_embeds, self.to_k_bokeh, self.to_v_bokeh)
        return scaled(value, self.bokeh_scale)
