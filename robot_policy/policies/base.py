"""What every inference object returns, and the interface the evaluation harness and runtime call.

    chunk = policy.predict_chunk(obs)      # obs: the env observation dict (unbatched)
    chunk.unified                          # (Ta, 128) actions in the unified space, SI units
    chunk.execute_horizon                  # how many of them to run before asking again
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from robot_policy.spaces.embodiment import EmbodimentSpec
from robot_policy.spaces.unified import UNIFIED_DIM


@dataclass
class ActionChunk:
    """A chunk of future actions, stamped relative to the observation it was computed from.

    Attributes:
        unified: (Ta, 128) float32 unified actions; row i is meant for ``obs_time + timestamps[i]``.
        mask: (128,) float32, 1 for the action slots the embodiment uses.
        timestamps: (Ta,) seconds after the observation: ``i / control_hz``.
        execute_horizon: actions to execute before the next inference (1 <= h <= Ta).
        embodiment: the robot the chunk is for; gives :attr:`native`.
    """

    unified: np.ndarray
    mask: np.ndarray
    timestamps: np.ndarray
    execute_horizon: int
    embodiment: EmbodimentSpec | None = None

    @functools.cached_property
    def native(self) -> dict[str, np.ndarray]:
        """The embodiment's native action fields ``{name: (Ta, dim)}``, converted on first access."""
        if self.embodiment is None:
            raise ValueError("this ActionChunk has no embodiment, so no native actions")
        return self.embodiment.action.from_unified(self.unified)

    def __post_init__(self) -> None:
        if self.unified.ndim != 2 or self.unified.shape[1] != UNIFIED_DIM:
            raise ValueError(f"ActionChunk.unified: expected (Ta, {UNIFIED_DIM}), got {self.unified.shape}")
        horizon = self.unified.shape[0]
        if self.timestamps.shape != (horizon,):
            raise ValueError(f"ActionChunk.timestamps: expected ({horizon},), got {self.timestamps.shape}")
        if not 1 <= self.execute_horizon <= horizon:
            raise ValueError(f"ActionChunk.execute_horizon must be in [1, {horizon}], got {self.execute_horizon}")

    @property
    def horizon(self) -> int:
        return int(self.unified.shape[0])

    @classmethod
    def from_unified(cls, unified: np.ndarray, mask: np.ndarray, control_hz: float,
                     execute_horizon: int | None = None, embodiment: EmbodimentSpec | None = None) -> ActionChunk:
        unified = np.asarray(unified, dtype=np.float32).reshape(-1, UNIFIED_DIM)
        horizon = unified.shape[0]
        return cls(unified=unified, mask=np.asarray(mask, np.float32),
                   timestamps=np.arange(horizon, dtype=np.float64) / control_hz,
                   execute_horizon=horizon if execute_horizon is None else execute_horizon, embodiment=embodiment)


@runtime_checkable
class Policy(Protocol):
    """Anything with ``predict_chunk``.

    Optional: ``reset(seed)`` at each episode start, and ``observe(obs)`` for every observation that is
    not passed to ``predict_chunk`` (the steps executed from a chunk), so that a policy conditioned on an
    observation history sees consecutive control steps, as in training.
    """

    def predict_chunk(self, obs: dict[str, np.ndarray]) -> ActionChunk: ...


def reset_policy(policy: object, seed: int) -> None:
    """Call ``policy.reset(seed)`` if the policy has one (stateful or stochastic policies)."""
    reset = getattr(policy, "reset", None)
    if callable(reset):
        reset(seed)


def observe(policy: object, obs: dict[str, np.ndarray]) -> None:
    """Call ``policy.observe(obs)`` if the policy keeps an observation history."""
    fn = getattr(policy, "observe", None)
    if callable(fn):
        fn(obs)
