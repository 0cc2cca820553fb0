"""The bokeh level K as the network sees it: K/30 in [0, 1] (-1 = no condition), embedded as one token."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from estimators.lens import MAX_BOKEH_LEVEL

NO_CONDITION = -1.0

BokehLevels = Union[float, int, Sequence[float], torch.Tensor]


def bokeh_condition(
    bokeh: BokehLevels,
    batch_size: int,
    device: Optional[torch.device] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The ``[batch_size, 1]`` network input for bokeh levels K (0..30, or negative for "no condition").

    One value (float, 0-d tensor, length-1 list) applies to every row; otherwise one K per row.
    K in [0, 30] enters as K/30; any negative K enters as -1 (the classifier-free branch).
    """
    levels = torch.as_tensor(bokeh, dtype=torch.float64).detach().cpu().reshape(-1)
    if levels.numel() == 1:
        levels = levels.expand(batch_size)
    if levels.numel() != batch_size:
        raise ValueError(f"got {levels.numel()} bokeh levels for a batch of {batch_size}")
    if torch.isnan(levels).any():
        raise ValueError("bokeh level K is NaN")
    if (levels > MAX_BOKEH_LEVEL).any():
        raise ValueError(
            f"bokeh level K must be in 0..{MAX_BOKEH_LEVEL:g} (or negative for no condition), "
            f"got {levels.max().item():g}"
        )
    condition = torch.where(levels < 0, torch.full_like(levels, NO_CONDITION), levels / MAX_BOKEH_LEVEL)
    return condition.to(device=device, dtype=dtype).unsqueeze(1)


class BokehEmbedding(nn.Sequential):
    """Linear(1 -> 64) -> ReLU -> Linear(64 -> 768): the bokeh condition as one token per image.

    A ``Sequential`` so its state-dict keys are ``0.*`` and ``2.*``, as in the released checkpoint.
    """

    def __init__(
        self,
        input_dim: int = 1,
        hidden_dim: int = 64,
        context_dim: int = 768,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        if input_dim != 1:
            raise ValueError(f"the bokeh condition is one number per image (input_dim 1), got {input_dim}")
        super().__init__(
            nn.Linear(input_dim, hidden_dim, device=device, dtype=dtype),
            nn.ReLU(),
            nn.Linear(hidden_dim, context_dim, device=device, dtype=dtype),
        )

    def tokens(self, bokeh: BokehLevels, batch_size: int) -> torch.Tensor:
        """The ``[batch_size, 1, context_dim]`` bokeh tokens for levels K (see ``bokeh_condition``)."""
        weight = self[0].weight
        condition = bokeh_condition(bokeh, batch_size, device=weight.device, dtype=weight.dtype)
        return self(condition).unsqueeze(1)
