"""An exponential moving average of the trained weights (Polyak averaging), the weights a run publishes
when ``optim.ema_decay`` is set: it averages out the step-to-step jitter of the last updates.

The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates (TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``; diffusers' ``EMAModel`` uses the same ramp), so early
weights, far from the final ones, are forgotten fast.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from estimators.cli_util import UserError


class WeightAverage:
    """The running average of ``params`` (kept in float32 beside them)."""

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the average's decay must be in (0, 1), got {decay}")
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in self.params]

    def decay_at(self, updates: int) -> float:
        """The decay of the update that follows ``updates`` earlier ones."""
        return min(self.decay, (1 + updates) / (10 + updates))

    @torch.no_grad()
    def update(self, updates: int) -> None:
        """Move the average towards the current weights; ``updates`` is how many updates came before."""
        weight = 1.0 - self.decay_at(updates)
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], weight)

    @torch.no_grad()
    def restart(self) -> None:
        """Start the average again from the current weights (after loading a checkpoint's averaged weights)."""
        for s, p in zip(self.shadow, self.params):
            s.copy_(p.detach())

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in the parameters while inside (to save or sample them), the trained ones after
        (held in a copy meanwhile: the average itself stays float32 even where the parameters are not)."""
        with torch.no_grad():
            trained = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(self.params, trained):
                    p.copy_(t)


def save_trained(params: list[nn.Parameter], path: Path) -> None:
    """The optimizer's own weights (not the average), by position in the trainable list, for resuming."""
    from safetensors.torch import save_file

    save_file({f"param.{i}": p.detach().cpu().contiguous() for i, p in enumerate(params)}, str(path))


def load_trained(params: list[nn.Parameter], path: Path) -> None:
    """Put what :func:`save_trained` wrote back into ``params``; a list of another length or shape is one error."""
    from trainer.checkpoint import load_tensors

    state = load_tensors(path)
    if sorted(state) != sorted(f"param.{i}" for i in range(len(params))):
        raise UserError(f"{path} holds {len(state)} trained tensors, this run trains {len(params)}: another config")
    with torch.no_grad():
        for i, p in enumerate(params):
            saved = state[f"param.{i}"]
            if saved.shape != p.shape:
                raise UserError(f"{path}: trained tensor {i} is {tuple(saved.shape)}, this run's is {tuple(p.shape)}: another config")
            p.copy_(saved)
