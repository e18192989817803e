"""Vectorised rollouts through gymnasium's AsyncVectorEnv: one env per process, one process per core.

Autoreset is off: the caller resets finished envs itself, with the seeds it wants, so every episode of a
vectorised rollout is reproducible from its seed (``reset(seed=[...], options={"reset_mask": done})``).
"""

from __future__ import annotations

import functools
import os
import signal

from gymnasium.vector import AsyncVectorEnv, AutoresetMode

from robot_policy.envs.base import ManipulationEnv, TaskConfig
from robot_policy.envs.registry import make_env


def _build(task: TaskConfig) -> ManipulationEnv:
    # Ctrl-C reaches the whole process group; the parent decides what an interrupt means (a fine-tuning run
    # saves a checkpoint first, which needs its envs alive), so the workers ignore it. They exit with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return make_env(task)


def make_vector_env(task: TaskConfig, num_envs: int | None = None, context: str = "spawn") -> AsyncVectorEnv:
    """``num_envs`` copies of ``task`` in worker processes (default: one per core).

    ``spawn`` by default: pybullet, MuJoCo's renderer and torch keep state that does not survive fork.
    Observations come back as a dict of arrays batched on axis 0.
    """
    n = num_envs or os.cpu_count() or 1
    if n < 1:
        raise ValueError(f"num_envs must be >= 1, got {n}")
    return AsyncVectorEnv([functools.partial(_build, task) for _ in range(n)], context=context,
                          autoreset_mode=AutoresetMode.DISABLED)
