"""Evaluation harness: run a policy on seeds S..S+N-1 of a task in parallel workers, report success.

Each worker process builds its own env and policy once and runs whole episodes; an episode depends only
on its seed (the env's initial state, and the policy's noise through ``policy.reset(seed)``), so results
do not depend on the number of workers or on scheduling. The first ``videos`` seeds are rendered to mp4.

Outputs in ``out``: ``eval.json`` (task, episodes, seed, success_rate, ci95_low, ci95_high,
mean_episode_length, per-episode results, ...) and ``videos/episode_<seed>.mp4``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from robot_policy.envs.base import ManipulationEnv, TaskConfig
from robot_policy.envs.registry import make_env
from robot_policy.eval.policies import load_policy
from robot_policy.eval.stats import wilson_interval
from robot_policy.eval.video import write_mp4
from robot_policy.policies.base import Policy, observe, reset_policy

PolicySource = str | Path | Policy | Callable[[ManipulationEnv], Policy]


@dataclass
class EvalConfig:
    """How to evaluate (the task and policy are passed separately)."""

    #: episodes to run, one per seed
    episodes: int = 100
    #: first seed; seeds S..S+N-1. Default far from the collection seeds (0..) so they are held out.
    seed: int = 1_000_000
    #: output directory: eval.json and videos/
    out: str = "runs/eval"
    #: worker processes; 0 = one per core; 1 runs in this process
    workers: int = 0
    #: actions executed per chunk before re-planning; None = the chunk's own execute_horizon
    execute_horizon: int | None = None
    #: number of episodes (the first seeds) rendered to mp4
    videos: int = 2
    #: camera for the videos; None = the task's first available camera
    video_camera: str | None = None
    #: video frame height and width (px)
    video_size: int = 256
    #: inference sampler of a checkpoint policy: ddpm, ddim or dpmsolver++; None = the checkpoint's own
    sampler: str | None = None
    #: denoising steps of the sampler; None = the checkpoint's own
    sampler_steps: int | None = None
    #: other keyword arguments for the policy (a built-in's options, or DiffusionPolicy.from_checkpoint's),
    #: added with +policy_kwargs.KEY=VALUE, e.g. +policy_kwargs.noise=0.0 for the scripted expert
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    #: torch threads per worker (inference is small; more threads than cores only thrash)
    torch_threads: int = 1

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.execute_horizon is not None and self.execute_horizon < 1:
            raise ValueError(f"execute_horizon must be >= 1, got {self.execute_horizon}")
        if self.videos < 0 or self.video_size < 16:
            raise ValueError(f"videos must be >= 0 and video_size >= 16, got {self.videos}, {self.video_size}")
        if self.sampler is not None:
            from robot_policy.models.diffusion import SAMPLERS

            if self.sampler not in SAMPLERS:
                raise ValueError(f"sampler: unknown {self.sampler!r}; samplers: {', '.join(SAMPLERS)}")
        if self.sampler_steps is not None and self.sampler_steps < 1:
            raise ValueError(f"sampler_steps must be >= 1, got {self.sampler_steps}")
        for option, kwarg in (("sampler", "sampler"), ("sampler_steps", "num_steps")):
            if getattr(self, option) is not None and kwarg in self.policy_kwargs:
                raise ValueError(f"{option}={getattr(self, option)} and policy_kwargs.{kwarg}="
                                 f"{self.policy_kwargs[kwarg]} are both given: use {option}")

    def policy_loader_kwargs(self) -> dict[str, Any]:
        """``policy_kwargs`` plus the sampler options, under ``DiffusionPolicy.from_checkpoint``'s names."""
        kwargs = dict(self.policy_kwargs)
        if self.sampler is not None:
            kwargs["sampler"] = self.sampler
        if self.sampler_steps is not None:
            kwargs["num_steps"] = self.sampler_steps
        return kwargs


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    length: int
    #: sum of the env's sparse rewards
    episode_return: float
    #: mean wall time of one predict_chunk call (ms) and number of calls
    inference_ms: float
    inferences: int
    #: actions executed per chunk (the config's, or the policy's own)
    execute_horizon: int = 0
    video: str | None = None


class _Worker:
    """One env and one policy, reused across the episodes a worker runs."""

    def __init__(self, task: TaskConfig, policy: PolicySource, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self.env = make_env(task)
        if isinstance(policy, (str, Path)):
            self.policy: Policy = load_policy(policy, self.env, **cfg.policy_loader_kwargs())
        elif hasattr(policy, "predict_chunk"):
            self.policy = policy  # type: ignore[assignment]
        elif callable(policy):
            self.policy = policy(self.env)
        else:
            raise TypeError(f"policy must be a name, a checkpoint path, an object with predict_chunk, or a "
                            f"factory of one; got {type(policy).__name__}")
        cams = self.env.available_cameras
        self.camera = cfg.video_camera or (cams[0] if cams else None)
        if cfg.videos and self.camera is None:
            raise ValueError(f"task {task.name} has no camera to render videos from; set videos=0")

    def run(self, seed: int, video_dir: Path | None) -> EpisodeResult:
        env, cfg = self.env, self.cfg
        obs, _ = env.reset(seed=seed)
        reset_policy(self.policy, seed)
        frames = [self._frame()] if video_dir is not None else []
        steps, ret, success, done, horizon = 0, 0.0, False, False, 0
        infer_s, infers = 0.0, 0
        while not done:
            t0 = time.perf_counter()
            chunk = self.policy.predict_chunk(obs)
            infer_s += time.perf_counter() - t0
            infers += 1
            horizon = min(cfg.execute_horizon or chunk.execute_horizon, chunk.horizon)
            for i, action in enumerate(chunk.unified[:horizon]):
                obs, reward, terminated, truncated, info = env.step(action)
                steps += 1
                ret += reward
                if video_dir is not None:
                    frames.append(self._frame())
                if terminated or truncated:
                    success, done = bool(info["success"]), True
                    break
                if i < horizon - 1:  # the last observation goes to predict_chunk instead
                    observe(self.policy, obs)
        video = None
        if video_dir is not None:
            video = str(write_mp4(video_dir / f"episode_{seed}.mp4", frames, fps=env.task.control_hz))
        return EpisodeResult(seed=seed, success=success, length=steps, episode_return=ret,
                             inference_ms=1e3 * infer_s / max(infers, 1), inferences=infers,
                             execute_horizon=horizon, video=video)

    def _frame(self) -> np.ndarray:
        assert self.camera is not None
        return self.env.render(self.camera, self.cfg.video_size, self.cfg.video_size)


_worker: _Worker | None = None  # one per worker process, set by the pool initializer


def _init_worker(task: TaskConfig, policy: PolicySource, cfg: EvalConfig) -> None:
    global _worker
    import torch

    torch.set_num_threads(cfg.torch_threads)
    _worker = _Worker(task, policy, cfg)


def _run_in_worker(seed: int, video_dir: Path | None) -> EpisodeResult:
    assert _worker is not None, "worker not initialised"
    return _worker.run(seed, video_dir)


def evaluate(task: TaskConfig, policy: PolicySource, cfg: EvalConfig, *,
             policy_name: str | None = None, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Run the evaluation, write ``out/eval.json`` and videos, and return the eval.json content.

    ``command`` (the CLI line that asked for it) is recorded in eval.json.
    """
    out = Path(cfg.out)
    video_dir = out / "videos"
    workers = cfg.workers or os.cpu_count() or 1
    workers = min(workers, cfg.episodes)
    seeds = list(range(cfg.seed, cfg.seed + cfg.episodes))
    results: list[EpisodeResult] = []
    start = time.perf_counter()
    bar = tqdm(total=len(seeds), desc=f"eval {task.name}", unit="ep", disable=not progress)
    if workers == 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.torch_threads)
        try:
            worker = _Worker(task, policy, cfg)
            for i, seed in enumerate(seeds):
                results.append(worker.run(seed, video_dir if i < cfg.videos else None))
                _progress(bar, results)
        finally:
            torch.set_num_threads(threads)
    else:
        ctx = mp.get_context("spawn")  # simulators and torch do not survive fork reliably
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(task, policy, cfg)) as pool:
            futures = {pool.submit(_run_in_worker, seed, video_dir if i < cfg.videos else None): seed
                       for i, seed in enumerate(seeds)}
            for fut in as_completed(futures):
                try:
                    results.append(fut.result())
                except Exception as e:
                    pool.shutdown(wait=False, cancel_futures=True)  # do not run the rest first
                    raise RuntimeError(f"evaluation of seed {futures[fut]} failed: {e}") from e
                _progress(bar, results)
    bar.close()
    results.sort(key=lambda r: r.seed)
    report = summarize(task, results, cfg, policy_name or _describe(policy), time.perf_counter() - start, workers)
    report["command"] = command
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    return report


def _progress(bar: tqdm, results: list[EpisodeResult]) -> None:
    bar.update(1)
    bar.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}")


def _describe(policy: PolicySource) -> str:
    if isinstance(policy, (str, Path)):
        return str(policy)
    return type(policy).__name__


def summarize(task: TaskConfig, results: list[EpisodeResult], cfg: EvalConfig, policy: str,
              elapsed_s: float, workers: int) -> dict[str, Any]:
    n = len(results)
    successes = sum(r.success for r in results)
    low, high = wilson_interval(successes, n)
    return {
        "task": task.name,
        "policy": policy,
        "episodes": n,
        "seed": cfg.seed,
        "successes": successes,
        "success_rate": successes / n,
        "ci95_low": low,
        "ci95_high": high,
        "mean_episode_length": float(np.mean([r.length for r in results])),
        "mean_successful_episode_length": (float(np.mean([r.length for r in results if r.success]))
                                           if successes else None),
        "mean_inference_ms": float(np.mean([r.inference_ms for r in results])),
        "execute_horizon": cfg.execute_horizon,  # null: the policy's own, as executed below
        "sampler": cfg.sampler,  # null: the checkpoint's own (the CLI records the one it resolves to)
        "sampler_steps": cfg.sampler_steps,
        "executed_horizons": sorted({r.execute_horizon for r in results}),
        "workers": workers,
        "elapsed_s": elapsed_s,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "task_config": dataclasses.asdict(task),
        "per_episode": [dataclasses.asdict(r) for r in results],
    }
