"""Exponential moving average of model weights (the weights a diffusion policy is evaluated with)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Diffusion Policy's EMA: decay warms up as ``1 - (1 + step / inv_gamma) ** -power``, capped at ``max_decay``.

    The warm-up keeps early averages from being dominated by the random initialisation, which matters for
    short CPU runs of a few thousand steps.
    """

    def __init__(self, model: nn.Module, max_decay: float = 0.9999, power: float = 0.75, inv_gamma: float = 1.0,
                 min_decay: float = 0.0) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay, self.power, self.inv_gamma, self.min_decay = max_decay, power, inv_gamma, min_decay
        self.step = 0

    def decay(self) -> float:
        value = 1.0 - (1.0 + self.step / self.inv_gamma) ** -self.power
        return float(min(self.max_decay, max(self.min_decay, value))) if self.step > 0 else 0.0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay()
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
        self.step += 1
