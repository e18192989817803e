"""One optimisation step of behaviour cloning, shared by ``train()`` and ``bench infer``'s training rows.

The step owns the parts that change every step (gradients, optimiser, LR schedule, EMA); the loop around it
owns data loading, logging and checkpoints.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robot_policy.algorithms.bc import BCConfig, StepRandomness, prepare_training_inputs
from robot_policy.models.rdt import ModelInputs
from robot_policy.train.ema import EMA


@dataclass
class BCStep:
    """``step(inputs, actions, r) -> (loss, grad_norm)``: dropout + noise, loss, backward, clip, AdamW, LR, EMA.

    ``loss_module`` is :class:`~robot_policy.algorithms.bc.DiffusionLoss` (possibly DDP-wrapped) around
    ``model``; ``actions`` (B, Ta, 128) are normalised; ``r`` holds the step's random draws.
    """

    model: nn.Module
    loss_module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: EMA
    optim: BCConfig
    autocast: Any = field(default_factory=contextlib.nullcontext)

    def __call__(self, inputs: ModelInputs, actions: Tensor, r: StepRandomness) -> tuple[Tensor, Tensor]:
        inputs = prepare_training_inputs(inputs, r, self.optim)
        with self.autocast:
            loss = self.loss_module(inputs, actions, r.noise, r.t)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        return loss.detach(), grad_norm
