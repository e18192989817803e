"""Behaviour cloning of an RDT-style diffusion policy: one optimisation step, as in RDT's recipe.

Per step: draw the randomness of the whole global batch from ``(seed, step)`` (diffusion timesteps and
noise, condition-dropout decisions, state noise), take this rank's rows, apply RDT's 10% condition dropout
and 40 dB state noise, compute the x0-prediction MSE over all Ta x 128 values, clip gradients, step AdamW
and the cosine schedule, update the EMA.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from robot_policy.models.rdt import ConditionDropoutConfig, ModelInputs, RDTPolicyModel
from robot_policy.spaces.unified import UNIFIED_DIM


@dataclass
class BCConfig:
    """Optimisation of diffusion BC: AdamW, linear warm-up then cosine decay, EMA weights, state noise.

    The defaults are the ones measured on rdt_small (BENCHMARKS.md); ``robot-policy train`` uses them.
    """

    #: peak learning rate of AdamW, reached after the warm-up
    lr: float = 3e-4
    #: AdamW's (beta1, beta2)
    betas: tuple[float, float] = (0.95, 0.999)
    #: AdamW's decoupled weight decay
    weight_decay: float = 1e-6
    #: global L2 norm of gradients is clipped to this
    grad_clip: float = 1.0
    #: steps of linear learning-rate warm-up from 0
    warmup_steps: int = 200
    #: final learning rate as a fraction of ``lr`` (cosine decay)
    min_lr_ratio: float = 0.0
    #: upper bound of the EMA decay (the decay warms up as 1 - (1 + step)^-ema_power)
    ema_max_decay: float = 0.999
    #: exponent of the EMA decay warm-up
    ema_power: float = 0.75
    #: RDT adds Gaussian noise to the state at this signal-to-noise ratio (dB); None disables
    state_noise_snr_db: float | None = 40.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if self.lr <= 0 or self.grad_clip <= 0 or self.warmup_steps < 0:
            raise ValueError(f"lr and grad_clip must be > 0 and warmup_steps >= 0, got {self.lr}, "
                             f"{self.grad_clip}, {self.warmup_steps}")
        if not 0 < self.ema_max_decay < 1:
            raise ValueError(f"ema_max_decay must be in (0, 1), got {self.ema_max_decay}")


@dataclass
class StepRandomness:
    """Every random draw of one training step for the global batch of size B.

    Attributes:
        t: (B,) diffusion timesteps. noise: (B, Ta, Da) standard normal.
        keep_*: (B,) or (B, V) bool, False where a condition is dropped.
        state_noise: (B, Da) standard normal, scaled to the SNR per sample.
    """

    t: Tensor
    noise: Tensor
    keep_lang: Tensor
    keep_camera: Tensor
    keep_state: Tensor
    keep_ctrl_freq: Tensor
    keep_object_state: Tensor
    state_noise: Tensor

    @classmethod
    def draw(cls, seed: int, step: int, batch: int, horizon: int, cameras: int, num_train_timesteps: int,
             dropout: ConditionDropoutConfig) -> StepRandomness:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0] >> 1))
        return cls(
            t=torch.randint(0, num_train_timesteps, (batch,), generator=g),
            noise=torch.randn(batch, horizon, UNIFIED_DIM, generator=g),
            keep_lang=torch.rand(batch, generator=g) >= dropout.lang,
            keep_camera=torch.rand(batch, max(cameras, 1), generator=g) >= dropout.camera,
            keep_state=torch.rand(batch, generator=g) >= dropout.state,
            keep_ctrl_freq=torch.rand(batch, generator=g) >= dropout.ctrl_freq,
            keep_object_state=torch.rand(batch, generator=g) >= dropout.object_state,
            state_noise=torch.randn(batch, UNIFIED_DIM, generator=g),
        )

    def rows(self, rank: int, world_size: int) -> StepRandomness:
        """This rank's rows, matching ``StepBatchSampler``'s ``rank::world_size`` split."""
        return StepRandomness(**{f.name: getattr(self, f.name)[rank::world_size] for f in dataclasses.fields(self)})

    def to(self, device: torch.device | str) -> StepRandomness:
        return StepRandomness(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})


def apply_condition_dropout(inputs: ModelInputs, r: StepRandomness) -> ModelInputs:
    """RDT's condition dropout with decisions drawn in ``r``: a dropped control frequency becomes 0, a
    dropped state zeros with its mask zeroed (the network reads ``state * state_mask``, so no other fill
    could reach it), a dropped camera a blank frame, dropped language no tokens, a dropped object state
    zeros."""
    out = dataclasses.replace(inputs)
    out.ctrl_freq = inputs.ctrl_freq * r.keep_ctrl_freq.to(inputs.ctrl_freq.dtype)
    keep_state = r.keep_state[:, None]
    out.state = inputs.state * keep_state.to(inputs.state.dtype)
    out.state_mask = inputs.state_mask * keep_state.to(inputs.state_mask.dtype)
    if inputs.lang_tokens is not None:
        lang_mask = inputs.lang_mask if inputs.lang_mask is not None else torch.ones(
            inputs.lang_tokens.shape[:2], dtype=torch.bool, device=inputs.lang_tokens.device)
        out.lang_mask = lang_mask & r.keep_lang[:, None]
    if inputs.images is not None:
        present = inputs.camera_present if inputs.camera_present is not None else torch.ones(
            inputs.images.shape[0], inputs.images.shape[2], dtype=torch.bool, device=inputs.images.device)
        out.camera_present = present & r.keep_camera[:, : present.shape[1]]
    if inputs.object_state is not None:
        out.object_state = inputs.object_state * r.keep_object_state[:, None, None].to(inputs.object_state.dtype)
    return out


def add_state_noise(inputs: ModelInputs, unit_noise: Tensor, snr_db: float) -> ModelInputs:
    """Gaussian noise on the real state slots with per-sample power = signal power / 10^(snr/10)."""
    mask = inputs.state_mask
    n_real = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    signal_power = (inputs.state.square() * mask).sum(dim=1, keepdim=True) / n_real
    std = torch.sqrt(signal_power / 10.0 ** (snr_db / 10.0))
    return dataclasses.replace(inputs, state=inputs.state + std * unit_noise * mask)


class DiffusionLoss(nn.Module):
    """The training forward pass as a module, so DistributedDataParallel's hooks see it."""

    def __init__(self, model: RDTPolicyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: ModelInputs, actions: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return self.model.compute_loss(inputs, actions, noise=noise, t=t)


def prepare_training_inputs(inputs: ModelInputs, r: StepRandomness, cfg: BCConfig) -> ModelInputs:
    """A batch's model inputs as the training step sees them: condition dropout, then state noise."""
    inputs = apply_condition_dropout(inputs, r)
    if cfg.state_noise_snr_db is not None:
        inputs = add_state_noise(inputs, r.state_noise, cfg.state_noise_snr_db)
    return inputs
