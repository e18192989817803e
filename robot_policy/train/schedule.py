"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_ratio`` of the peak."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                   min_ratio: float = 0.0, last_step: int = 0) -> LambdaLR:
    """The schedule for a run of ``total_steps``, positioned after ``last_step`` finished steps: the
    optimizer's learning rate is set for step ``last_step`` (0-based). ``last_step > 0`` continues a run
    whose optimizer state (with each group's ``initial_lr``) was restored, for the same or a new total."""
    return LambdaLR(optimizer, lambda s: cosine_with_warmup(s, warmup_steps, total_steps, min_ratio),
                    last_epoch=last_step - 1)
