"""Helpers shared by the env tests (a plain module: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import numpy as np

from robot_policy.envs.base import ManipulationEnv, Obs
from robot_policy.envs.expert import make_expert


def run_expert(env: ManipulationEnv, seed: int, noise: float = 0.0,
               steps: int | None = None) -> tuple[list[np.ndarray], list[Obs], bool]:
    """Roll the task's scripted expert from ``reset(seed)``: (actions, observations after each step, success)."""
    obs, _ = env.reset(seed=seed)
    expert = make_expert(env, noise=noise, seed=seed)
    expert.reset(obs)
    actions, observations, success = [], [], False
    for _ in range(steps or env.task.max_steps):
        action = expert.act(obs)
        obs, _, terminated, truncated, info = env.step(action)
        actions.append(action)
        observations.append(obs)
        success = info["success"]
        if terminated or truncated:
            break
    close = getattr(expert, "close", None)  # experts holding resources (the pybullet IK client) release them
    if callable(close):
        close()
    return actions, observations, success
