"""What an adapter computes once per model call for all its blocks, instead of once in every block.

FLUX's batch-1 training step is bound by kernel launches (docs/benchmarks.md, "FLUX at batch 1"), and each of
the 57 adapted blocks casting its low-rank weights for autocast and running its own V_b projection of the one bokeh
token would be hundreds of tiny launches, forward and backward. Here the same-shape low-rank layers of all blocks
are stacked, cast once, and the bokeh values V_b(token) of every block come from two batched matmuls; each block
then only looks its tensors up. Same values as the per-block path, up to bf16 rounding (tested).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

from bokeh_models.lora import LowRankLinear, LowRankWeights, compute_dtype, matmul_input, scaled

#: The processor attributes whose low-rank layers are prepared: grounding q / k adapters and V_b.
QK_LAYERS = ("to_q_adp", "to_k_adp")
VALUE_LAYER = "to_v_bokeh"


@dataclass
class PreparedAdapter:
    """Per-call tensors of every block, keyed by the layer they stand for (absent: the block computes it).
    ``tokens`` are the bokeh tokens the values were computed from."""

    tokens: torch.Tensor
    weights: dict[nn.Module, LowRankWeights] = field(default_factory=dict)
    bokeh_values: dict[nn.Module, torch.Tensor] = field(default_factory=dict)


def weights_for(prepared: Optional[PreparedAdapter], layer: Optional[nn.Module]) -> Optional[LowRankWeights]:
    """``layer``'s (down, up) weights cast for this call, or None: use its own."""
    return None if prepared is None else prepared.weights.get(layer)


def bokeh_value_for(
    prepared: Optional[PreparedAdapter], layer: nn.Module, tokens: torch.Tensor
) -> Optional[torch.Tensor]:
    """V_b of ``tokens`` (``[B, 1, out]``) for the block owning ``layer``, or None: compute it there (also
    when the call passes other tokens than those the values came from)."""
    if prepared is None or prepared.tokens is not tokens:
        return None
    return prepared.bokeh_values.get(layer)


def _groups(layers: Sequence[LowRankLinear]) -> list[list[LowRankLinear]]:
    """``layers`` split into runs that can be stacked: same weight shapes, dtype, device and factor."""
    groups: dict[tuple, list[LowRankLinear]] = {}
    for layer in layers:
        down, up = layer.down.weight, layer.up.weight
        key = (tuple(down.shape), tuple(up.shape), down.dtype, down.device, layer.factor)
        groups.setdefault(key, []).append(layer)
    return list(groups.values())


def _stacked(layers: Sequence[LowRankLinear], dtype: torch.dtype) -> LowRankWeights:
    """The layers' down ``[N, rank, in]`` and up ``[N, out, rank]`` weights, stacked and cast to ``dtype``
    (two casts for all N layers instead of 2N; backward gathers their gradients in two stack operations)."""
    downs = torch.stack([layer.down.weight for layer in layers]).to(dtype)
    ups = torch.stack([layer.up.weight for layer in layers]).to(dtype)
    return downs, ups


def prepare(processors: Sequence[nn.Module], tokens: torch.Tensor) -> PreparedAdapter:
    """Cast weights and V_b values for one call of a model whose attention runs ``processors``.

    Weights are prepared only under autocast with weights in another dtype (otherwise every block uses
    its own as they are); V_b values only for one bokeh token per row (``tokens`` ``[B, 1, C]``; with more
    the blocks attend over them).
    """
    prepared = PreparedAdapter(tokens)
    device_type = tokens.device.type

    def layers(names: Sequence[str]) -> list[LowRankLinear]:
        return [layer for p in processors for name in names if isinstance(layer := getattr(p, name, None), LowRankLinear)]

    for group in _groups(layers(QK_LAYERS)):
        dtype = compute_dtype(device_type, group[0].down.weight.dtype)
        if dtype != group[0].down.weight.dtype:
            downs, ups = _stacked(group, dtype)
            prepared.weights.update(zip(group, zip(downs.unbind(0), ups.unbind(0))))
    if tokens.shape[1] != 1:
        return prepared
    flat = tokens.flatten(0, 1)  # [B, C]
    for group in _groups(layers((VALUE_LAYER,))):
        downs, ups = _stacked(group, compute_dtype(device_type, group[0].down.weight.dtype))
        inputs = matmul_input(flat, downs.dtype)
        # Transposed (weights on the left): the weights' gradients then come out in their own layout,
        # with no copy per block when they are accumulated.
        values = scaled(torch.matmul(ups, torch.matmul(downs, inputs.t())), group[0].factor)  # [N, out, B]
        prepared.bokeh_values.update(zip(group, values.transpose(1, 2).unsqueeze(2).unbind(0)))  # N x [B, 1, out]
    return prepared
