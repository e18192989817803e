"""The one sampling loop of deployment: encode once, then the sampler's update rule (diffusers' DDPM, DDIM
or DPM-Solver++, through :class:`~robot_policy.models.diffusion.Sampler`) around the backend's denoiser
step. The same loop as :meth:`RDTPolicyModel.sample <robot_policy.models.rdt.RDTPolicyModel.sample>`, with
the network behind any backend."""

from __future__ import annotations

import torch
from torch import Tensor

from robot_policy.models.diffusion import Sampler
from robot_policy.models.rdt import ModelInputs
from robot_policy.runtime.backends.base import Backend


@torch.no_grad()
def sample_chunk(backend: Backend, sampler: Sampler, inputs: ModelInputs, noise: Tensor,
                 generator: torch.Generator | None = None) -> Tensor:
    """A chunk (B, Ta, Da) in normalised action space, masked slots zero, from the initial noise x_T
    (B, Ta, Da). ``generator`` drives the fresh noise of the stochastic samplers (DDPM, DDIM eta > 0)."""
    inputs = inputs.to(backend.device)
    cond = backend.encode(inputs)
    x = sampler.run(lambda x_t, t: backend.denoise(x_t, t, cond), noise.to(backend.device, torch.float32),
                    generator)
    return x * inputs.action_mask[:, None].to(x.dtype)  # (B, Ta, Da)
