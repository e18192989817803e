"""The one sampling loop of deployment: encode once, then the sampler's update rule (diffusers' DDPM, DDIM
or DPM-Solver++, through :class:`~robot_policy.models.diffusion.Sampler`) around the backend's denoiser
step: :func:`robot_policy.models.rdt.sample_with`, the loop of :meth:`RDTPolicyModel.sample
<robot_policy.models.rdt.RDTPolicyModel.sample>`, with the network behind any backend and the inputs moved to
its device."""

from __future__ import annotations

import torch
from torch import Tensor

from robot_policy.models.diffusion import Sampler
from robot_policy.models.rdt import ModelInputs, sample_with
from robot_policy.runtime.backends.base import Backend


@torch.no_grad()
def sample_chunk(backend: Backend, sampler: Sampler, inputs: ModelInputs, noise: Tensor,
                 generator: torch.Generator | None = None) -> Tensor:
    """A chunk (B, Ta, Da) in normalised action space, masked slots zero, from the initial noise x_T
    (B, Ta, Da). ``generator`` drives the fresh noise of the stochastic samplers (DDPM, DDIM eta > 0)."""
    inputs = inputs.to(backend.device)
    return sample_with(backend, sampler, inputs, noise.to(backend.device, torch.float32), generator)  # (B, Ta, Da)
