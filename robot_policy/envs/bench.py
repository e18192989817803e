"""Simulation benchmark: control steps/s per task, with state observations and with a camera.

Actions hold the arms near their current pose with small noise (the simulator's cost barely depends on
the action); episodes reset when they end, and reset time counts, as in a rollout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robot_policy.envs.registry import load_task_config, make_env


@dataclass
class SimBenchConfig:
    """Options of ``robot-policy bench sim``."""

    tasks: list[str] = field(default_factory=lambda: ["pybullet_bimanual_lift", "robosuite_two_arm_lift",
                                                       "robosuite_two_arm_handover"])
    #: seconds measured per task and observation mode
    seconds: float = 10.0
    image_size: int = 128
    #: camera for the camera-observation row; None = the task's first available camera
    camera: str | None = None


def steps_per_second(task: str, cameras: list[str], size: int, seconds: float) -> float:
    env = make_env(load_task_config(task, cameras=cameras, image_height=size, image_width=size))
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    hold = env.current_unified_action()
    steps, episodes = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        action = hold + 0.005 * rng.standard_normal(hold.shape).astype(np.float32) * env.action_mask
        _, _, terminated, truncated, _ = env.step(action)
        steps += 1
        if terminated or truncated:
            episodes += 1
            env.reset(seed=episodes)
            hold = env.current_unified_action()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def run_sim_bench(cfg: SimBenchConfig) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for task in cfg.tasks:
        env = make_env(task)
        camera = cfg.camera or env.available_cameras[0]
        env.close()
        results[task] = {
            "state_steps_per_s": steps_per_second(task, [], cfg.image_size, cfg.seconds),
            "camera": camera,
            "camera_steps_per_s": steps_per_second(task, [camera], cfg.image_size, cfg.seconds),
        }
    return results
