"""Running moments, and the reward scaling PPO uses with sparse rewards (gymnasium's NormalizeReward rule).

Written here rather than wrapping the envs: the scaling must see the rewards of the composite's whole
rollout, across resets done by :class:`~robot_policy.algorithms.vector_rollout.VectorRollout`, and be
saved in the fine-tuning checkpoint so a resumed run scales as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class RunningMeanStd:
    """Mean and variance of a stream of (batches of) scalars, merged exactly (Chan et al.)."""

    def __init__(self, epsilon: float = 1e-4) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, epsilon

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).ravel()
        if x.size == 0:
            return
        b_mean, b_var, b_count = float(x.mean()), float(x.var()), x.size
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean += delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta ** 2 * self.count * b_count / total
        self.var, self.count = m2 / total, total

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])


class RewardScaler:
    """Divides rewards by the running std of the discounted return (per env, reset at episode ends)."""

    def __init__(self, num_envs: int, gamma: float, epsilon: float = 1e-8) -> None:
        self.gamma, self.epsilon = gamma, epsilon
        self.returns = np.zeros(num_envs)
        self.rms = RunningMeanStd()

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        """Scaled (N,) rewards of one step; ``done`` (N,) marks the envs whose episode ended with it."""
        self.returns = self.returns * self.gamma + reward
        self.rms.update(self.returns)
        self.returns[done] = 0.0
        return reward / np.sqrt(self.rms.var + self.epsilon)

    def state_dict(self) -> dict[str, Any]:
        return {"returns": self.returns.tolist(), **self.rms.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns = np.asarray(state["returns"], np.float64)
        self.rms.load_state_dict(state)
