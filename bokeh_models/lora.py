"""Bias-free low-rank projection ``up(down(x))``, the building block of the bokeh adapters."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

#: A low-rank layer's (down, up) weights as one call uses them (its own, or cast once for every block).
LowRankWeights = tuple[torch.Tensor, torch.Tensor]


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for this device type (False for types without autocast, e.g. meta)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def compute_dtype(device_type: str, weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype matmuls of weights in ``weight_dtype`` run in: autocast's when it is on, else the weights'."""
    return torch.get_autocast_dtype(device_type) if _autocast_on(device_type) else weight_dtype


def matmul_input(x: torch.Tensor, weight_dtype: torch.dtype) -> torch.Tensor:
    """``x`` as a product with weights in ``weight_dtype`` takes it: cast to their dtype, or left to autocast
    when it is on (an fp32 copy of a bf16 activation would only be cast straight back)."""
    return x if _autocast_on(x.device.type) else x.to(weight_dtype)


def scaled(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * tensor``, with no multiply (forward or backward) at the usual scale 1: one kernel launch
    less per use, and launches are what bound FLUX's batch-1 step (docs/benchmarks.md, "FLUX at batch 1")."""
    return tensor if scale == 1 else scale * tensor


class LowRankLinear(nn.Module):
    """``up(down(x))``, times ``alpha / rank`` when ``alpha`` is set; starts at zero output.

    ``down`` is drawn from N(0, 1/rank^2) and ``up`` is zero, as in the released FLUX adapter, so a
    fresh adapter leaves the base model unchanged. The input goes in as :func:`matmul_input` has it and the
    output comes back in the input's dtype, so an fp32 adapter can sit in a bf16 model.
    ``weights`` replaces the layer's own (down, up) for one call: the same values already cast for
    autocast (:mod:`bokeh_models.prepared`). The weights go to ``F.linear`` directly, so forward hooks on
    ``down`` / ``up`` (e.g. per-module offloading) do not run.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: Optional[float] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"low-rank projection needs rank >= 1, got {rank}")
        self.rank = rank
        self.alpha = alpha
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=False, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw ``down`` (std 1/rank) and zero ``up``."""
        nn.init.normal_(self.down.weight, std=1.0 / self.rank)
        nn.init.zeros_(self.up.weight)

    @property
    def factor(self) -> float:
        """The output multiplier: ``alpha / rank``, or 1 without alpha."""
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def forward(self, x: torch.Tensor, weights: Optional[LowRankWeights] = None) -> torch.Tensor:
        down, up = weights or (self.down.weight, self.up.weight)
        out = F.linear(F.linear(matmul_input(x, down.dtype), down), up)
        return scaled(out, self.factor).to(x.dtype)

    def add_to(self, x: torch.Tensor, scale: float = 1.0, weights: Optional[LowRankWeights] = None) -> torch.Tensor:
        """``x + scale * self(x)`` (the q / k adapters' residual form), the add and the scale fused into the
        up projection's matmul (addmm): the add, and the multiplies by ``scale`` and alpha / rank, launch nothing."""
        down, up = weights or (self.down.weight, self.up.weight)
        if x.dtype != compute_dtype(x.device.type, down.dtype):  # the sum would round x to another dtype
            return x + scaled(self(x, weights), scale)
        hidden = F.linear(x, down)
        out = torch.addmm(x.reshape(-1, x.shape[-1]), hidden.reshape(-1, hidden.shape[-1]), up.t(),
                          alpha=scale * self.factor)
        return out.view(x.shape).to(x.dtype)
