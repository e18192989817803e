"""Real-time chunking (RTC; Black, Galliker, Levine, "Real-Time Execution of Action Chunking Flow Policies",
Physical Intelligence 2025) in the one sampling loop.

While a chunk is inferred, the robot keeps executing the previous one, so the new chunk must agree with what
runs meanwhile and join the old plan smoothly. Positions of the new chunk (Ta of them, i = 0 at its
observation time) fall in three parts::

    i < d                frozen: these actions run from the OLD chunk during inference   W = 1
    d <= i < overlap     the rest of the old chunk's plan: inpainted, guidance decays    1 > W > 0
    overlap <= i < Ta    beyond the old chunk: the model's own prediction                 W = 0

``d`` (``frozen``) = actions that execute during inference: the rows already due when the chunk arrives
(row 0 always, one more per control period of delay); ``overlap`` = actions of the old chunk still queued at
the new chunk's time steps (the paper's H - s). :meth:`ChunkScheduler.prefix_for_next
<robot_policy.runtime.scheduler.ChunkScheduler.prefix_for_next>` gives both, and the prefix.

This is the cheap **x0-replacement** form of the paper's guidance: at every denoising step, after the
denoiser predicts the clean chunk x0_hat, ``x0_hat <- W * prefix + (1 - W) * x0_hat`` and the sampler's
update (DDPM, DDIM, DPM-Solver++) continues from the edited estimate. The paper instead corrects the flow
velocity with pseudo-inverse guidance, ``(prefix - x0_hat) W`` pulled back through the denoiser's Jacobian
(a vector-Jacobian product per step, plus a guidance-weight clip). Replacement needs no gradient, so it
runs unchanged through the ONNX Runtime / TensorRT backends, which have none; the price is that the network
only sees the prefix through x_t at the next step (it does not steer the unguided tail towards the prefix
within a step, as the VJP does), so the join at ``overlap`` relies on the soft decay of W.

The RDT network predicts x0 (``prediction_type="sample"``), so the hook edits the model output itself; the
samplers accept any prediction type (they convert to x0 and back, :meth:`Sampler.run
<robot_policy.models.diffusion.Sampler.run>`). With W = 1 on a slot, DDIM (eta 0) and DPM-Solver++ end
exactly on the prefix there (their last update returns the last x0 estimate); with W = 0 everywhere the
result is the plain loop's, bit for bit (tests/test_rtc.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from robot_policy.models.diffusion import Sampler, x0_inpainting
from robot_policy.models.rdt import ChunkNetwork, ModelInputs, sample_with

#: guidance schedules over [frozen, overlap), the names of PI's reference implementation
SCHEDULES = ("exp", "linear", "ones", "zeros")


def rtc_weights(horizon: int, frozen: int, overlap: int, schedule: str = "exp") -> np.ndarray:
    """Guidance weights W (Ta,) float32 for a new chunk of ``horizon`` actions.

    W_i = 1 for i < frozen; for frozen <= i < overlap with c_i = (overlap - i) / (overlap - frozen + 1):
    ``exp`` c_i (e^c_i - 1) / (e - 1) (the paper's Eq. 5), ``linear`` c_i, ``ones`` 1 (hard inpainting of the
    whole overlap), ``zeros`` 0 (freeze only); W_i = 0 for i >= overlap.

    Args:
        horizon: Ta, actions per chunk.
        frozen: d, actions that execute during inference (0 <= d <= overlap).
        overlap: actions of the previous chunk that overlap the new one (d <= overlap <= Ta).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"rtc schedule: unknown {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if not 0 <= frozen <= overlap <= horizon:
        raise ValueError(f"rtc_weights: need 0 <= frozen <= overlap <= horizon, got frozen={frozen}, "
                         f"overlap={overlap}, horizon={horizon}")
    i = np.arange(horizon, dtype=np.float64)
    c = (overlap - i) / (overlap - frozen + 1)  # (Ta,) in (0, 1) on [frozen, overlap)
    if schedule == "exp":
        mid = c * np.expm1(c) / (math.e - 1)
    elif schedule == "linear":
        mid = c
    else:
        mid = np.full(horizon, 1.0 if schedule == "ones" else 0.0)
    w = np.where(i < frozen, 1.0, np.where(i < overlap, mid, 0.0))
    return w.astype(np.float32)


@torch.no_grad()
def sample_chunk_rtc(network: ChunkNetwork, sampler: Sampler, inputs: ModelInputs, noise: Tensor,
                     prefix: Tensor, weights: Tensor | np.ndarray,
                     generator: torch.Generator | None = None) -> Tensor:
    """A chunk (B, Ta, Da) in normalised action space (masked slots zero) that agrees with ``prefix``.

    Args:
        network: the model itself or a runtime backend (anything with ``encode`` / ``denoise``); a backend's
            ``device`` (if it has one) is where the inputs go, as in :func:`~robot_policy.runtime.sampling.sample_chunk`.
        noise: x_T (B, Ta, Da).
        prefix: (B, Ta, Da) or (Ta, Da) the previous chunk's actions at the new chunk's time steps, normalised
            like the model's actions; rows with W = 0 are ignored (they must still be finite).
        weights: (Ta,) in [0, 1], e.g. :func:`rtc_weights`.
    """
    device = getattr(network, "device", inputs.state.device)
    inputs = inputs.to(device)
    noise = noise.to(device, torch.float32)
    target = torch.as_tensor(prefix, dtype=torch.float32, device=device)
    if target.dim() == 2:
        target = target[None].expand_as(noise)  # (B, Ta, Da)
    if target.shape != noise.shape:
        raise ValueError(f"prefix: expected {tuple(noise.shape)} like the noise, got {tuple(target.shape)}")
    w = torch.as_tensor(weights, dtype=torch.float32, device=device)  # (Ta,)
    return sample_with(network, sampler, inputs, noise, generator, x0_inpainting(target, w))  # (B, Ta, Da)
