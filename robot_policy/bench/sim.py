"""Simulation benchmark: control steps/s per task, with state observations and with a camera.

Actions hold the arms near their current pose with small noise (the simulator's cost barely depends on
the action); episodes reset when they end, and reset time counts, as in a rollout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot_policy.envs.registry import env_class, load_task_config, make_env


@dataclass
class SimBenchConfig:
    """Options of ``robot-policy bench sim``."""

    #: tasks whose control steps/s are measured
    tasks: list[str] = field(default_factory=lambda: ["pybullet_bimanual_lift", "robosuite_two_arm_lift",
                                                       "robosuite_two_arm_handover"])
    #: seconds measured per task and observation mode
    seconds: float = 10.0
    #: camera frame height and width (px) of the camera-observation row
    image_size: int = 128
    #: camera for the camera-observation row; None = the task's first available camera
    camera: str | None = None
    #: tasks timed collecting ``collect_episodes`` scripted episodes into a store (0 = skip)
    collect_tasks: list[str] = field(default_factory=lambda: ["pybullet_bimanual_lift", "robosuite_two_arm_lift"])
    #: scripted episodes per timed collection
    collect_episodes: int = 50
    #: where the timed collections write their stores
    workdir: str = "bench_out/sim"


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


def collect_seconds(task: str, episodes: int, out: Path) -> dict[str, float]:
    """Wall time of ``robot-policy collect``'s library call for ``episodes`` scripted episodes."""
    from robot_policy.pipelines.collect import CollectConfig, collect

    start = time.perf_counter()
    summary = collect(load_task_config(task), CollectConfig(episodes=episodes, out=str(out), overwrite=True),
                      progress=False)
    return {"seconds": time.perf_counter() - start, "episodes": summary["episodes_written"],
            "steps": summary["steps"], "expert_success_rate": summary["expert_success_rate"]}


def run_sim_bench(cfg: SimBenchConfig) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for task in cfg.tasks:
        camera = cfg.camera or env_class(load_task_config(task).env).available_cameras[0]
        results[task] = {
            "state_steps_per_s": steps_per_second(task, [], cfg.image_size, cfg.seconds),
            "camera": camera,
            "camera_steps_per_s": steps_per_second(task, [camera], cfg.image_size, cfg.seconds),
        }
    if cfg.collect_episodes > 0:
        for task in cfg.collect_tasks:
            results.setdefault(task, {})["collect"] = collect_seconds(
                task, cfg.collect_episodes, Path(cfg.workdir) / f"{task}.zarr")
    return results
