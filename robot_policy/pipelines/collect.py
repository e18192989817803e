"""Collect demonstrations of a simulated task into an episode store (``robot-policy collect``)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from robot_policy.data.store import CameraInfo, EpisodeStore
from robot_policy.envs.base import ManipulationEnv, TaskConfig
from robot_policy.envs.expert import make_expert
from robot_policy.envs.registry import make_env
from robot_policy.eval.stats import wilson_interval
from robot_policy.teleop.recorder import record_episode

SOURCES = ("scripted",)


@dataclass
class CollectConfig:
    """Options of ``robot-policy collect`` (the task comes from the ``task=`` config group)."""

    #: who acts: "scripted" (the task's scripted expert)
    source: str = "scripted"
    #: successful episodes to write (or all attempts with keep_failures)
    episodes: int = 50
    #: store path (required), e.g. datasets/lift.zarr
    out: str = ""
    #: first seed; attempts use seeds seed, seed+1, ...
    seed: int = 0
    #: expert noise; None = the expert's collection default
    noise: float | None = None
    #: also write failed attempts (with success=0)
    keep_failures: bool = False
    #: give up after this many attempts; None = 2 x episodes
    max_attempts: int | None = None
    #: delete an existing store at out and record a new one (only an explicit true does)
    overwrite: bool = False
    #: append to an existing store instead of failing
    append: bool = False
    #: record env.get_state() per step (for replay)
    record_sim_state: bool = True

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source: unknown {self.source!r}; sources: {', '.join(SOURCES)}")
        if not self.out:
            raise ValueError("out: give the store path, e.g. out=datasets/lift.zarr")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.noise is not None and self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 (or null), got {self.max_attempts}")


def camera_infos(env: ManipulationEnv) -> dict[str, CameraInfo]:
    """The task's cameras with their intrinsics and, for cameras fixed in the scene, their pose in the
    world (rig) frame; a camera on a robot gets none, its pose changes with the arm."""
    task, infos = env.task, {}
    for cam in task.cameras:
        params = env.camera_params(cam, task.image_height, task.image_width)
        fixed = cam not in env.moving_cameras
        infos[cam] = CameraInfo(task.image_height, task.image_width, intrinsics=params["K"],
                                extrinsics=params["world_T_camera"] if fixed else None)
    return infos


def _open_store(task: TaskConfig, cfg: CollectConfig, env: ManipulationEnv, noise: float) -> EpisodeStore:
    """The store to record into: appended to (same embodiment and task), or created."""
    out = Path(cfg.out)
    if out.exists() and cfg.append:
        store = EpisodeStore.open(out, mode="a")
        recorded_task = (store.attrs.get("task") or {}).get("name")
        problem = None
        if store.embodiment.name != env.embodiment.name:
            problem = f"holds embodiment {store.embodiment.name}, task {task.name} uses {env.embodiment.name}"
        elif recorded_task not in (None, task.name):
            problem = f"holds task {recorded_task}; record {task.name} into its own store"
        if problem is not None:
            store.close()
            raise ValueError(f"{out} {problem}")
        return store
    return EpisodeStore.create(out, env.embodiment, cameras=camera_infos(env), overwrite=cfg.overwrite,
                               provenance={"source": cfg.source, "noise": noise}, task=dataclasses.asdict(task))


def collect(task: TaskConfig, cfg: CollectConfig, progress: bool = True) -> dict[str, Any]:
    """Record ``cfg.episodes`` episodes of ``task`` into ``cfg.out``; returns a summary (expert success rate)."""
    env = make_env(task)
    try:
        expert = make_expert(env, noise=cfg.noise)
        store = _open_store(task, cfg, env, expert.noise)
        max_attempts = cfg.max_attempts or 2 * cfg.episodes
        attempts, successes, written, steps = 0, 0, 0, 0
        start = time.perf_counter()
        with store, tqdm(total=cfg.episodes, desc=f"collect {task.name}", unit="ep", disable=not progress) as bar:
            while written < cfg.episodes and attempts < max_attempts:
                seed = cfg.seed + attempts
                expert.seed(seed)
                ep = record_episode(env, expert.act, store, seed, on_reset=expert.reset,
                                    keep_failures=cfg.keep_failures, record_sim_state=cfg.record_sim_state)
                attempts += 1
                successes += ep.success
                steps += ep.length
                if ep.index is not None:
                    written += 1
                    bar.update(1)
                bar.set_postfix(expert_success=f"{successes}/{attempts}")
            n_episodes = store.n_episodes
    finally:
        env.close()
    elapsed = time.perf_counter() - start
    low, high = wilson_interval(successes, attempts)
    if written < cfg.episodes:
        raise RuntimeError(f"only {written} of {cfg.episodes} episodes succeeded in {attempts} attempts "
                           f"(expert success {successes}/{attempts}); raise max_attempts or lower noise")
    return {"task": task.name, "out": cfg.out, "episodes_written": written, "store_episodes": n_episodes,
            "attempts": attempts, "expert_successes": successes, "expert_success_rate": successes / attempts,
            "ci95_low": low, "ci95_high": high, "steps": steps, "elapsed_s": elapsed,
            "first_seed": cfg.seed, "last_seed": cfg.seed + attempts - 1}
