"""Built-in policies that need no checkpoint: the task's scripted expert, and random actions."""

from __future__ import annotations

import numpy as np

from robot_policy.envs.base import ManipulationEnv
from robot_policy.envs.expert import make_expert
from robot_policy.policies.base import ActionChunk
from robot_policy.spaces.unified import slot


class ScriptedPolicy:
    """The task's scripted expert behind ``predict_chunk`` (one action per chunk: it replans every step).

    It reads the simulator, so it only runs next to its env. ``noise`` is the expert's perturbation scale.
    """

    #: actions per chunk: one, it replans every step
    horizon = 1

    def __init__(self, env: ManipulationEnv, noise: float = 0.0) -> None:
        self.env = env
        self.expert = make_expert(env, noise=noise)
        self._started = False

    def reset(self, seed: int) -> None:
        self.expert.seed(seed)
        self._started = False

    def predict_chunk(self, obs: dict[str, np.ndarray]) -> ActionChunk:
        if not self._started:  # the expert plans from the first observation of the episode
            self.expert.reset(obs)
            self._started = True
        action = self.expert.act(obs)
        return ActionChunk.from_unified(action[None], self.env.action_mask, self.env.task.control_hz,
                                        embodiment=self.env.embodiment)


class RandomPolicy:
    """Random actions near the current pose: a floor for success rates and a smoke test for harnesses.

    Each action is the hold action plus Gaussian noise of ``scale`` (SI units of each slot), clipped to
    the embodiment's joint limits; gripper openings are uniform in [0, 1].
    """

    def __init__(self, env: ManipulationEnv, scale: float = 0.05, horizon: int = 8) -> None:
        self.env = env
        self.scale = scale
        self.horizon = horizon
        self.rng = np.random.default_rng(0)
        self.lower, self.upper = env.embodiment.joint_position_bounds()
        self.grippers = [slot(f"{side}_gripper_open").start for side in ("right", "left")]

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def predict_chunk(self, obs: dict[str, np.ndarray]) -> ActionChunk:
        mask = self.env.action_mask
        hold = self.env.current_unified_action().astype(np.float64)
        actions = hold + self.scale * self.rng.standard_normal((self.horizon, mask.size)) * mask
        for g in self.grippers:
            if mask[g] > 0:
                actions[:, g] = self.rng.uniform(0.0, 1.0, self.horizon)
        actions = np.clip(actions, self.lower, self.upper) * mask
        return ActionChunk.from_unified(actions, mask, self.env.task.control_hz, embodiment=self.env.embodiment)
