"""Bias-free low-rank projection ``up(down(x))``, the building block of the bokeh adapters."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for this device type (False for types without autocast, e.g. meta)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


class LowRankLinear(nn.Module):
    """``up(down(x))``, times ``alpha / rank`` when ``alpha`` is set; starts at zero output.

    ``down`` is drawn from N(0, 1/rank^2) and ``up`` is zero, as in the released FLUX adapter, so a
    fresh adapter leaves the base model unchanged. The input is cast to the weights' dtype and the
    output back to the input's dtype, so an fp32 adapter can sit in a bf16 model; under autocast the
    casts are left to autocast (an fp32 copy of every activation would be cast straight back).
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.up(self.down(x if _autocast_on(x.device.type) else x.to(self.down.weight.dtype)))
        if self.alpha is not None:
            out = out * (self.alpha / self.rank)
        return out.to(x.dtype)
