"""Scripted experts: privileged controllers (they read the simulator) that output unified actions.

Each env key registers one expert class. Experts plan waypoints in the task frame and turn them into the
embodiment's actions (IK or the simulator's operational-space controller); ``noise`` perturbs them so the
demonstrations cover states a learned policy will visit.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from robot_policy.envs.base import ManipulationEnv, Obs
from robot_policy.envs.registry import _ENV_MODULES


class ScriptedExpert(abc.ABC):
    """Base of scripted experts.

    Args:
        env: the env it drives (the expert may read simulator internals).
        noise: scale of the expert's perturbations; 0 = noiseless. Units are expert-specific and
            documented on each subclass (typically metres of waypoint jitter).
        seed: seeds the expert's own noise stream, independent of the env's.
    """

    def __init__(self, env: ManipulationEnv, noise: float = 0.0, seed: int = 0) -> None:
        if noise < 0:
            raise ValueError(f"expert noise must be >= 0, got {noise}")
        self.env = env
        self.noise = noise
        self.rng = np.random.default_rng(seed)

    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    @abc.abstractmethod
    def reset(self, obs: Obs) -> None:
        """Plan for a new episode; called right after ``env.reset``."""

    @abc.abstractmethod
    def act(self, obs: Obs) -> np.ndarray:
        """(128,) float32 unified action for the current step."""


X = TypeVar("X", bound=type[ScriptedExpert])
_EXPERTS: dict[str, type[ScriptedExpert]] = {}


def register_expert(env_key: str) -> Callable[[X], X]:
    def deco(cls: X) -> X:
        _EXPERTS[env_key] = cls
        return cls
    return deco


def make_expert(env: ManipulationEnv, noise: float | None = None, seed: int = 0) -> ScriptedExpert:
    """The scripted expert of ``env``'s task; ``noise=None`` uses the expert's own collection default."""
    key = env.task.env
    if key not in _EXPERTS and key in _ENV_MODULES:
        importlib.import_module(_ENV_MODULES[key])
    if key not in _EXPERTS:
        raise KeyError(f"no scripted expert for env {key!r}; experts exist for: {', '.join(sorted(_EXPERTS))}")
    cls = _EXPERTS[key]
    return cls(env, seed=seed) if noise is None else cls(env, noise=noise, seed=seed)
