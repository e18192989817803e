"""Collect demonstrations of a simulated task into an episode store (``robot-policy collect``)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from robot_policy.data import format as fmt
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
    #: episodes the store ends with (appending adds the difference; failed attempts count with keep_failures)
    episodes: int = 50
    #: store path (required), e.g. datasets/lift.zarr
    out: str = ""
    #: first seed; attempts use seeds seed, seed+1, ... (appending continues after the store's last seed)
    seed: int = 0
    #: expert noise; None = the expert's collection default
    noise: float | None = None
    #: also write failed attempts (with success=0)
    keep_failures: bool = False
    #: give up after this many attempts; None = 2 x the episodes to add
    max_attempts: int | None = None
    #: delete an existing store at out and record a new one (only an explicit true does; not with append)
    overwrite: bool = False
    #: append to an existing store instead of failing (not with overwrite)
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
        if self.overwrite and self.append:
            raise ValueError("overwrite=true and append=true contradict each other: overwrite=true deletes the "
                             f"store at {self.out} and records a new one, append=true adds to it; pass one of them")


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


def open_task_store(task: TaskConfig, env: ManipulationEnv, out: str | Path, *, append: bool, overwrite: bool,
                    provenance: dict[str, Any]) -> EpisodeStore:
    """The store a simulated task records into (``collect``, ``teleop``): the existing one at ``out`` with
    ``append`` (it must hold the same embodiment and task), else a new one with the env's cameras."""
    out = Path(out)
    if out.exists() and append:
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
    return EpisodeStore.create(out, env.embodiment, cameras=camera_infos(env), overwrite=overwrite,
                               provenance=provenance, task=dataclasses.asdict(task))


@dataclass(frozen=True)
class CollectPlan:
    """What a collect run adds to its store: ``episodes`` more, trying seeds from ``first_seed`` up."""

    #: episodes already in the store (0 for a new one)
    existing: int
    #: episodes to write so that the store ends with ``cfg.episodes``; 0 = nothing to do
    episodes: int
    first_seed: int
    max_attempts: int
    #: (lowest, highest) seed the store already records, None when it records none
    recorded_seeds: tuple[int, int] | None


def plan_collection(cfg: CollectConfig, recorded_seeds: np.ndarray) -> CollectPlan:
    """``cfg.episodes`` is the size the store ends with; appending continues after the last recorded seed.

    Starting over at ``cfg.seed`` would record the same demonstrations twice (an episode is a function of
    its seed); continuing after the highest recorded seed also skips seeds whose attempts failed and were
    discarded, which would fail again. A ``cfg.seed`` past the recorded ones is kept. ``recorded_seeds``
    are the store's per-episode seeds (``meta/seed``; -1 = an episode recorded without one).
    """
    seeds = recorded_seeds[recorded_seeds >= 0]
    recorded = (int(seeds.min()), int(seeds.max())) if seeds.size else None
    first = cfg.seed if recorded is None else max(cfg.seed, recorded[1] + 1)
    to_write = max(0, cfg.episodes - len(recorded_seeds))
    return CollectPlan(existing=len(recorded_seeds), episodes=to_write, first_seed=first,
                       max_attempts=cfg.max_attempts or 2 * to_write, recorded_seeds=recorded)


def collect(task: TaskConfig, cfg: CollectConfig, progress: bool = True) -> dict[str, Any]:
    """Record episodes of ``task`` into ``cfg.out`` until it holds ``cfg.episodes``; returns a summary
    (episodes written, seeds tried, expert success rate). See :func:`plan_collection` for appending."""
    env = make_env(task)
    try:
        expert = make_expert(env, noise=cfg.noise)
        store = open_task_store(task, env, cfg.out, append=cfg.append, overwrite=cfg.overwrite,
                                provenance={"source": cfg.source, "noise": expert.noise})
        with store:
            plan = plan_collection(cfg, np.asarray(store.episode_meta()[fmt.SEED], np.int64))
            attempts, successes, written, steps = 0, 0, 0, 0
            start = time.perf_counter()
            with tqdm(total=plan.episodes, desc=f"collect {task.name}", unit="ep",
                      disable=not progress or plan.episodes == 0) as bar:
                while written < plan.episodes and attempts < plan.max_attempts:
                    seed = plan.first_seed + attempts
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
    if written < plan.episodes:
        raise RuntimeError(f"only {written} of {plan.episodes} episodes succeeded in {attempts} attempts "
                           f"(expert success {successes}/{attempts}, seeds {plan.first_seed}-"
                           f"{plan.first_seed + attempts - 1}); {n_episodes} episodes are in {cfg.out}: "
                           "rerun with append=true to continue, raise max_attempts or lower noise")
    low, high = wilson_interval(successes, attempts) if attempts else (None, None)
    return {"task": task.name, "out": cfg.out, "episodes_written": written, "store_episodes": n_episodes,
            "existing_episodes": plan.existing, "recorded_seeds": plan.recorded_seeds,
            "attempts": attempts, "expert_successes": successes,
            "expert_success_rate": successes / attempts if attempts else None,
            "ci95_low": low, "ci95_high": high, "steps": steps, "elapsed_s": elapsed,
            "first_seed": plan.first_seed, "last_seed": plan.first_seed + attempts - 1 if attempts else None}
