"""Evaluation harness: run a policy on seeds S..S+N-1 of a task in parallel workers, report success.

Each worker process builds its own env and policy once and runs whole episodes; an episode depends only
on its seed (the env's initial state, and the policy's noise through ``policy.reset(seed)``), so results
do not depend on the number of workers or on scheduling. The first ``videos`` seeds are rendered to mp4.

Outputs in ``out``: ``eval.json`` (task, episodes, seed, success_rate, ci95_low, ci95_high,
mean_episode_length, errored, per-episode results, ...) and ``videos/episode_<seed>.mp4``.

Errors: the policy is built once in this process before any worker starts, so a missing checkpoint, an
unknown policy or an ``execute_horizon`` beyond the policy's chunk is one :class:`EvalSetupError` with the
original message. An episode that raises is recorded as failed with its seed and error (``errored`` counts
them) and the other seeds still run; workers return such errors as data, never as a broken pool.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
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


class EvalSetupError(RuntimeError):
    """The evaluation cannot start (no such policy, a bad checkpoint, options that do not fit it); the
    message is the original error's, once, whichever process met it."""


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
    #: ``"<ExceptionType>: <message>"`` when the episode raised (it then counts as failed), else None;
    #: ``length`` etc. are what ran before the error
    error: str | None = None
    #: the formatted traceback of ``error``, for debugging from eval.json
    traceback: str | None = None


def error_message(e: BaseException) -> str:
    """An exception as one line: its message as written (a KeyError's str() adds quotes)."""
    return str(e.args[0]) if isinstance(e, KeyError) and len(e.args) == 1 else str(e)


class _Worker:
    """One env and one policy, reused across the episodes a worker runs."""

    def __init__(self, task: TaskConfig, policy: PolicySource, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self.env = make_env(task)
        try:
            self.policy = self._build(policy)
            check_execute_horizon(cfg.execute_horizon, getattr(self.policy, "horizon", None))
            cams = self.env.available_cameras
            self.camera = cfg.video_camera or (cams[0] if cams else None)
            if cfg.videos and self.camera is None:
                raise ValueError(f"task {task.name} has no camera to render videos from; set videos=0")
        except BaseException:
            self.env.close()
            raise
        self._steps = 0  # of the episode in progress, reported when it raises

    def _build(self, policy: PolicySource) -> Policy:
        if isinstance(policy, (str, Path)):
            return load_policy(policy, self.env, **self.cfg.policy_loader_kwargs())
        if hasattr(policy, "predict_chunk"):
            return policy  # type: ignore[return-value]
        if callable(policy):
            return policy(self.env)
        raise TypeError(f"policy must be a name, a checkpoint path, an object with predict_chunk, or a "
                        f"factory of one; got {type(policy).__name__}")

    def close(self) -> None:
        self.env.close()

    def run_recorded(self, seed: int, video_dir: Path | None) -> EpisodeResult:
        """:meth:`run`, with an exception recorded in the result instead of raised: one bad episode must
        not cost the others (and an exception object need not survive pickling back from a worker)."""
        try:
            return self.run(seed, video_dir)
        except Exception as e:  # noqa: BLE001 -- any policy or env error is this episode's result
            return EpisodeResult(seed=seed, success=False, length=self._steps, episode_return=0.0,
                                 inference_ms=0.0, inferences=0, error=f"{type(e).__name__}: {error_message(e)}",
                                 traceback=traceback.format_exc())

    def run(self, seed: int, video_dir: Path | None) -> EpisodeResult:
        env, cfg = self.env, self.cfg
        self._steps = 0
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
            horizon = cfg.execute_horizon or chunk.execute_horizon
            check_execute_horizon(horizon, chunk.horizon)
            for i, action in enumerate(chunk.unified[:horizon]):
                obs, reward, terminated, truncated, info = env.step(action)
                steps += 1
                self._steps = steps
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


def check_execute_horizon(execute_horizon: int | None, chunk_horizon: int | None) -> None:
    """An ``execute_horizon`` beyond the policy's chunk is an error: capping it would run another
    horizon than the one eval.json records."""
    if execute_horizon is not None and chunk_horizon is not None and execute_horizon > chunk_horizon:
        actions = "action" if chunk_horizon == 1 else "actions"
        raise ValueError(f"execute_horizon={execute_horizon} is beyond the policy's chunk of {chunk_horizon} "
                         f"{actions}: choose 1..{chunk_horizon} (or leave it unset for the policy's own)")


_worker: _Worker | None = None  # one per worker process, set by the pool initializer
_worker_error: str | None = None  # why this worker could not set up, returned by _run_in_worker


def _init_worker(task: TaskConfig, policy: PolicySource, cfg: EvalConfig) -> None:
    # An exception here would only be printed by the worker and break the pool ("terminated abruptly");
    # kept, it goes back to the parent as the result of the first task.
    global _worker, _worker_error
    import torch

    torch.set_num_threads(cfg.torch_threads)
    try:
        _worker = _Worker(task, policy, cfg)
    except Exception as e:  # noqa: BLE001 -- reported by _run_in_worker, whatever it was
        _worker_error = error_message(e)


def _run_in_worker(seed: int, video_dir: Path | None) -> EpisodeResult:
    if _worker is None:
        raise EvalSetupError(_worker_error or "worker not initialised")
    return _worker.run_recorded(seed, video_dir)


def _setup(task: TaskConfig, policy: PolicySource, cfg: EvalConfig, name: str) -> _Worker:
    """Build the env and the policy here, reporting a failure once as :class:`EvalSetupError`."""
    try:
        return _Worker(task, policy, cfg)
    except Exception as e:
        message = error_message(e)
        what = "" if name in message else f" {name}"  # most messages name the policy already
        raise EvalSetupError(f"cannot evaluate{what} on {task.name}: {message}") from e


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
    name = policy_name or _describe(policy)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    bar = None
    try:
        # The policy is built here first even when workers run the episodes: a bad policy is then one
        # error, before any worker starts.
        worker = _setup(task, policy, cfg, name)
        bar = tqdm(total=len(seeds), desc=f"eval {task.name}", unit="ep", disable=not progress)
        if workers == 1:
            try:
                for i, seed in enumerate(seeds):
                    results.append(worker.run_recorded(seed, video_dir if i < cfg.videos else None))
                    _progress(bar, results)
            finally:
                worker.close()
        else:
            worker.close()
            del worker  # the parent's copy of the policy is not needed while the workers run
            results = _run_pool(task, policy, cfg, seeds, video_dir, workers, bar)
    finally:
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()
    results.sort(key=lambda r: r.seed)
    report = summarize(task, results, cfg, name, time.perf_counter() - start, workers)
    report["command"] = command
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    return report


def _run_pool(task: TaskConfig, policy: PolicySource, cfg: EvalConfig, seeds: list[int], video_dir: Path,
              workers: int, bar: tqdm) -> list[EpisodeResult]:
    """The episodes in ``workers`` spawned processes; episode errors come back inside the results."""
    results: list[EpisodeResult] = []
    ctx = mp.get_context("spawn")  # simulators and torch do not survive fork reliably
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(task, policy, cfg)) as pool:
        futures = {pool.submit(_run_in_worker, seed, video_dir if i < cfg.videos else None): seed
                   for i, seed in enumerate(seeds)}
        try:
            for fut in as_completed(futures):
                results.append(fut.result())
                _progress(bar, results)
        except EvalSetupError:  # a worker could not build what the parent built: the same for all
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        except BrokenProcessPool as e:  # a worker died without a Python exception (killed, out of memory)
            pool.shutdown(wait=False, cancel_futures=True)
            running = sorted(set(futures.values()) - {r.seed for r in results})
            raise RuntimeError(f"an evaluation worker process died (killed, out of memory or crashed in native "
                               f"code) with seeds {running[0]}.. unfinished; rerun with workers=1 to see the "
                               "failing episode's error") from e
    return results


def _progress(bar: tqdm, results: list[EpisodeResult]) -> None:
    bar.update(1)
    errored = sum(r.error is not None for r in results)
    bar.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}",
                    **({"errored": errored} if errored else {}))


def _describe(policy: PolicySource) -> str:
    if isinstance(policy, (str, Path)):
        return str(policy)
    return type(policy).__name__


def summarize(task: TaskConfig, results: list[EpisodeResult], cfg: EvalConfig, policy: str,
              elapsed_s: float, workers: int) -> dict[str, Any]:
    """eval.json's content. An episode that raised counts as a failure in the success rate (the policy did
    not succeed on that seed) and in ``errored``; ``errors`` lists them as ``{seed, error}``."""
    n = len(results)
    successes = sum(r.success for r in results)
    errors = [{"seed": r.seed, "error": r.error} for r in results if r.error is not None]
    ran = [r for r in results if r.error is None] or results  # means over the episodes that ran to the end
    low, high = wilson_interval(successes, n)
    return {
        "task": task.name,
        "policy": policy,
        "episodes": n,
        "seed": cfg.seed,
        "successes": successes,
        "success_rate": successes / n,
        "errored": len(errors),
        "errors": errors,
        "ci95_low": low,
        "ci95_high": high,
        "mean_episode_length": float(np.mean([r.length for r in ran])),
        "mean_successful_episode_length": (float(np.mean([r.length for r in results if r.success]))
                                           if successes else None),
        "mean_inference_ms": float(np.mean([r.inference_ms for r in ran])),
        "execute_horizon": cfg.execute_horizon,  # null: the policy's own, as executed below
        "sampler": cfg.sampler,  # null: the checkpoint's own (the CLI records the one it resolves to)
        "sampler_steps": cfg.sampler_steps,
        "executed_horizons": sorted({r.execute_horizon for r in results if r.error is None}),
        "workers": workers,
        "elapsed_s": elapsed_s,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "task_config": dataclasses.asdict(task),
        "per_episode": [dataclasses.asdict(r) for r in results],
    }
