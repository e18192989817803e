"""DiffusionPolicy: a trained RDT-style policy behind ``predict_chunk(obs) -> ActionChunk``.

    policy = DiffusionPolicy.from_checkpoint("runs/lift/checkpoints/latest")
    policy.reset(seed=0)                 # clears the observation history, seeds the sampling noise
    chunk = policy.predict_chunk(obs)    # obs: env observation dict; chunk.unified (Ta, 128)

The policy keeps the last To observations (the first one repeated at an episode start, as the training
windows are padded): ``predict_chunk`` adds its observation, and ``observe(obs)`` must be called for every
other control step's observation so the history holds consecutive steps, as in training. It normalises them
with the statistics stored in the checkpoint. The sampler (DDPM, DDIM, DPM-Solver++) and its step count can
be changed at load time without retraining; ``noise`` (Ta, 128) can be given to make a chunk a deterministic
function of it (DDIM with eta=0, DPM-Solver++), as latent-noise RL needs.

Real-time chunking: ``predict_chunk(obs, prefix=ActionPrefix(...))`` inpaints the chunk against the actions
still queued from the previous one (:mod:`robot_policy.runtime.rtc` describes the method). The prefix is in
unified SI actions, like the chunk the policy returns, so the caller needs no normaliser; the policy
normalises it with its own statistics. Without a prefix the chunk is what it always was, bit for bit.

The network, normaliser and sampler are a :class:`~robot_policy.models.frozen_base.FrozenBase` (``.base``),
the batched form that fine-tuning drives over many envs at once; this class adds one episode's history and
seeded noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_policy.models.diffusion import X0Hook, x0_inpainting
from robot_policy.models.frozen_base import FrozenBase
from robot_policy.models.inputs import make_model_inputs
from robot_policy.models.rdt import sample_with
from robot_policy.policies.base import ActionChunk
from robot_policy.spaces.embodiment import EmbodimentSpec
from robot_policy.spaces.unified import UNIFIED_DIM


@dataclass(frozen=True)
class ActionPrefix:
    """The actions a new chunk must agree with, for real-time chunking.

    Attributes:
        unified: (Ta, 128) unified actions in SI units at the new chunk's time steps (row i at
            ``obs_time + i / control_hz``), e.g. the scheduler's queue (:meth:`ChunkScheduler.prefix_for_next
            <robot_policy.runtime.scheduler.ChunkScheduler.prefix_for_next>`); rows with weight 0 are ignored.
        weights: (Ta,) guidance weights in [0, 1] (:func:`robot_policy.runtime.rtc.rtc_weights`).
    """

    unified: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        if self.unified.ndim != 2 or self.unified.shape[1] != UNIFIED_DIM:
            raise ValueError(f"ActionPrefix.unified: expected (Ta, {UNIFIED_DIM}), got {self.unified.shape}")
        if self.weights.shape != (self.unified.shape[0],):
            raise ValueError(f"ActionPrefix.weights: expected ({self.unified.shape[0]},), got {self.weights.shape}")

    @classmethod
    def from_native(cls, native: np.ndarray, weights: np.ndarray, embodiment: EmbodimentSpec) -> ActionPrefix:
        """From native actions (Ta, n), the embodiment's action fields concatenated in declaration order."""
        unified = embodiment.action.flat_to_unified(np.asarray(native, np.float64)).astype(np.float32)
        return cls(unified, np.asarray(weights, np.float32))

    def hook(self, to_normalized: Callable[[np.ndarray], torch.Tensor], horizon: int, device: torch.device) -> X0Hook:
        """The sampler's x0 hook for this prefix. ``to_normalized`` maps unified SI actions (Ta, 128) to the
        policy's normalised space (masked slots 0)."""
        if self.unified.shape[0] != horizon:
            raise ValueError(f"ActionPrefix: {self.unified.shape[0]} rows for a policy chunk of {horizon}")
        target = torch.as_tensor(to_normalized(self.unified), dtype=torch.float32, device=device)[None]  # (1, Ta, Da)
        return x0_inpainting(target, torch.as_tensor(self.weights, dtype=torch.float32, device=device))


def initial_noise(noise: torch.Tensor | np.ndarray | None, generator: torch.Generator, horizon: int,
                  device: torch.device) -> torch.Tensor:
    """x_T (1, Ta, 128) for one chunk: ``noise`` (Ta, 128) if given, else the next draw of the episode's
    ``generator``. The one rule for every single-episode policy (checkpoint or deploy bundle), so the same
    seed gives the same chunks whatever runs the networks."""
    if noise is None:
        return torch.randn(1, horizon, UNIFIED_DIM, generator=generator, device=device)
    return torch.as_tensor(noise, dtype=torch.float32, device=device).reshape(1, horizon, UNIFIED_DIM)


class DiffusionPolicy:
    """See the module docstring. Build with :meth:`from_checkpoint`."""

    def __init__(self, base: FrozenBase, execute_horizon: int | None = None) -> None:
        self.base = base
        self.model = base.model
        self.normalizer = base.normalizer
        self.embodiment = base.embodiment
        self.language = base.language
        self.device = base.device
        self.horizon = base.horizon
        self.obs_horizon = base.obs_horizon
        self.cameras = base.cameras
        self.object_state_dim = base.object_state_dim
        self.meta: dict[str, Any] = base.meta
        execute_horizon = execute_horizon or base.default_execute_horizon
        if not 1 <= execute_horizon <= self.horizon:
            raise ValueError(f"execute_horizon={execute_horizon} does not fit the policy's chunk of {self.horizon} "
                             f"actions (its horizon): choose 1..{self.horizon}")
        self.execute_horizon = execute_horizon
        self._history = base.new_history()
        self._generator = torch.Generator(device=self.device).manual_seed(0)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "cpu", sampler: str | None = None,
                        num_steps: int | None = None, execute_horizon: int | None = None,
                        embodiment: str | None = None, language: str | None = None) -> DiffusionPolicy:
        """Load a checkpoint directory (or a run directory: its latest checkpoint).

        Args:
            sampler, num_steps: inference sampler (``ddpm``, ``ddim``, ``dpmsolver++``) and its steps;
                default the checkpoint's (RDT: DPM-Solver++, 5 steps).
            execute_horizon: actions executed per chunk; default the checkpoint's.
            embodiment: for a multi-embodiment checkpoint, which one this policy drives (default: the first).
            language: the instruction; default the first instruction seen in training.
        """
        base = FrozenBase.from_checkpoint(path, device=device, sampler=sampler, num_steps=num_steps,
                                          embodiment=embodiment, language=language)
        return cls(base, execute_horizon)

    def reset(self, seed: int = 0) -> None:
        """Start an episode: forget the observation history, reseed the sampling noise."""
        self._history.clear()
        self._generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """Add an observation to the history without predicting (steps executed from a chunk)."""
        self._history.add(obs)

    def draw_noise(self) -> torch.Tensor:
        """The next initial sample x_T (1, Ta, 128) from this episode's generator."""
        return initial_noise(None, self._generator, self.horizon, self.device)

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, np.ndarray], noise: torch.Tensor | np.ndarray | None = None,
                      prefix: ActionPrefix | None = None) -> ActionChunk:
        """Observe ``obs`` and return the next chunk. ``noise`` (Ta, 128): the initial sample x_T; ``prefix``:
        the queued actions to inpaint against (real-time chunking, the module docstring)."""
        self._history.add(obs)
        x_T = initial_noise(noise, self._generator, self.horizon, self.device)
        # The generator also drives the stochastic samplers' per-step noise (DDPM, DDIM with eta > 0), so a
        # chunk depends only on the episode seed, never on torch's global RNG.
        if prefix is None:
            sample = self.base.sample(self._history.as_batch(), x_T, generator=self._generator)
        else:
            # FrozenBase.sample's two lines with the x0 hook added; the path without a prefix stays untouched.
            hook = prefix.hook(self.base.to_normalized, self.horizon, self.device)
            inputs = make_model_inputs(self._history.as_batch(), self.normalizer, self.base.language_table,
                                       self.device)
            sample = sample_with(self.base.network, self.base.sampler, inputs, x_T, self._generator, hook)
        actions = self.base.to_unified(sample[0])
        return ActionChunk.from_unified(actions, self.base.action_mask, self.embodiment.control_hz,
                                        self.execute_horizon, embodiment=self.embodiment)
