"""RL fine-tuning of a frozen diffusion policy in simulation: ``robot-policy finetune``.

    run_dir = finetune(FinetuneConfig(algorithm="residual_ppo", base="runs/lift/checkpoints/latest", out="runs/ft"),
                       task, algo_cfg)

Builds ``num_envs`` envs of ``task`` in worker processes (gymnasium AsyncVectorEnv), the frozen base, and
the algorithm (``robot_policy.algorithms``: residual PPO, DSRL-SAC, DSRL-NA), then alternates the
algorithm's iterations (rollouts + updates) until the env-step or the wall-time budget is spent.

Seeds: training episodes use ``train_seed_start + 1_000_000 * seed + k`` (k = 0, 1, ...), periodic
evaluation the tuning seeds ``eval_seed ..``: never the held-out seeds 1_000_000.. of the reported
results, nor the collection seeds 0...

Outputs in ``out``: ``checkpoints/step_<env steps>/`` (the composite: ``config.json`` + ``model.safetensors``,
loadable by ``robot-policy eval policy=...``; resume state in ``train_state.*``), ``metrics.jsonl`` and
``tb/`` (TensorBoard), ``finetune_config.json``. ``resume=true`` continues from the latest checkpoint:
networks, optimisers, replay, reward statistics, the seed counter, the step and wall-time counters.
Episodes in flight at the checkpoint are not resumed (the envs restart on the next seeds).

SIGINT or SIGTERM stops the run after the iteration in progress, writes a checkpoint of it and raises
:class:`FinetuneInterrupted`; a second signal aborts at once (the last periodic checkpoint stays).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from robot_policy.algorithms.registry import ALGORITHMS, make_algorithm
from robot_policy.algorithms.vector_rollout import VectorRollout
from robot_policy.envs.base import TaskConfig
from robot_policy.envs.vector import make_vector_env
from robot_policy.eval.stats import wilson_interval
from robot_policy.models import checkpoint as ckpt
from robot_policy.models.frozen_base import FrozenBase
from robot_policy.pipelines.base_backend import check_base_backend, use_base_backend
from robot_policy.policies.composite import COMPOSITE_FORMAT


@dataclass
class FinetuneConfig:
    """Options of ``robot-policy finetune`` besides the task and the algorithm's own (``rl.*``)."""

    #: the algorithm: residual_ppo, dsrl_sac or dsrl_na (the CLI: rl=NAME, its options rl.KEY=VALUE)
    algorithm: str = "residual_ppo"
    #: the frozen base policy: a checkpoint directory or a run directory (its latest checkpoint)
    base: str = ""
    #: run directory: checkpoints/, metrics.jsonl, tb/ (required)
    out: str = ""
    #: envs stepped in lockstep, one worker process each
    num_envs: int = 8
    #: budget in env steps (control steps summed over the envs)
    total_env_steps: int = 300_000
    #: budget in wall time (minutes, summed over resumes); the run stops at whichever budget ends first
    max_wall_minutes: float = 60.0
    #: env steps between evaluations on the tuning seeds (and checkpoints)
    eval_every: int = 50_000
    #: episodes per evaluation (tuning seeds eval_seed.., the same ones every time)
    eval_episodes: int = 50
    #: first tuning seed of the periodic evaluations
    eval_seed: int = 200_000
    #: the run's seed: network initialisation, exploration noise and which training seeds are used
    seed: int = 0
    #: first training episode seed (plus 1_000_000 per run seed)
    train_seed_start: int = 10_000_000
    #: sampler of the base during fine-tuning (null: the checkpoint's own; DDIM eta=0 or DPM-Solver++ are
    #: deterministic given the noise)
    base_sampler: str | None = None
    #: its denoising steps (null: the checkpoint's own)
    base_steps: int | None = None
    #: actions of each base chunk executed before the next (null: the checkpoint's own)
    execute_horizon: int | None = None
    #: continue the run in ``out`` from its latest checkpoint
    resume: bool = False
    #: torch threads of the learner process (the env workers use one each)
    torch_threads: int = 1
    #: show a progress bar
    progress: bool = True
    #: checkpoints kept (the newest; periodic ones are written at every evaluation)
    keep_last: int = 20
    #: fsync checkpoints (off: faster, a machine crash may lose the newest)
    fsync: bool = True
    #: what runs the base's networks in the rollouts: torch or onnxruntime (the graphs are exported into
    #: out/base_graphs and checked against torch to 1e-4; the saved composites keep the torch base)
    base_backend: str = "torch"

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"rl: unknown algorithm {self.algorithm!r}; algorithms: {', '.join(ALGORITHMS)}")
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self.num_envs}")
        if self.total_env_steps < 1 or self.max_wall_minutes <= 0:
            raise ValueError("total_env_steps must be >= 1 and max_wall_minutes > 0")
        if self.eval_every < 1 or self.eval_episodes < 0:
            raise ValueError("eval_every must be >= 1 and eval_episodes >= 0")
        check_base_backend(self.base_backend)


class FinetuneInterrupted(KeyboardInterrupt):
    """A signal stopped the run; a checkpoint of its last finished iteration was written."""

    def __init__(self, signum: int, env_steps: int, checkpoint: Path) -> None:
        self.signum, self.env_steps, self.checkpoint = signum, env_steps, checkpoint
        super().__init__(f"interrupted by {signal.Signals(signum).name} after {env_steps} env steps; saved "
                         f"{checkpoint} (resume=true continues)")


class _StopFlag:
    """SIGINT/SIGTERM handlers for the run: the first sets ``signum``, a second raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class SeedStream:
    """Episode seeds start, start+1, ...; ``consumed`` is saved in checkpoints so a resume continues."""

    def __init__(self, start: int, consumed: int = 0) -> None:
        self.start, self.consumed = start, consumed

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        seed = self.start + self.consumed
        self.consumed += 1
        return seed


def evaluate_composite(algo: Any, envs: Any, base: FrozenBase, seeds: list[int],
                       execute_horizon: int | None = None) -> list[tuple[int, bool, int]]:
    """Run the composite's deterministic policy once on each seed; (seed, success, length) per episode.

    The envs are reset for it (a training rollout restarts afterwards)."""
    rollout = VectorRollout(envs, base, iter(seeds), execute_horizon)
    rollout.start()
    results: list[tuple[int, bool, int]] = []
    while rollout.active.any():
        step = rollout.step(algo.policy_step(rollout))
        for i in np.flatnonzero(step.done):
            results.append((int(step.finished_seed[i]), bool(step.success[i]), int(step.finished_length[i])))
    return sorted(results)


class _Log:
    """metrics.jsonl + TensorBoard, keyed by env steps; entries past a resumed checkpoint are dropped."""

    def __init__(self, run_dir: Path, start_step: int) -> None:
        self.path = run_dir / "metrics.jsonl"
        if self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # torn by a crash mid-append
                    continue
                if entry.get("env_steps", 0) <= start_step:
                    kept.append(line)
            self.path.write_text("".join(line + "\n" for line in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)

    def log(self, env_steps: int, values: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"env_steps": env_steps, **values}) + "\n")
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.tb.add_scalar(k, v, env_steps)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def _checkpoint_config(cfg: FinetuneConfig, task: TaskConfig, algo_cfg: Any, algo: Any, base: FrozenBase,
                       command: str) -> dict[str, Any]:
    return {
        "format": COMPOSITE_FORMAT,
        "composite": {"kind": cfg.algorithm, **algo.policy_config()},
        "base": {"path": str(base.path), "absolute_path": str(Path(str(base.path)).resolve()),
                 "content_hash": base.content_hash,
                 "sampler": base.sampler.kind, "num_steps": base.sampler.num_steps,
                 "execute_horizon": cfg.execute_horizon or base.default_execute_horizon,
                 "embodiment": base.embodiment.name, "language": base.language},
        "finetune": dataclasses.asdict(cfg),
        "rl": dataclasses.asdict(algo_cfg),
        "task": dataclasses.asdict(task),
        "command": command,
    }


def finetune(cfg: FinetuneConfig, task: TaskConfig, algo_cfg: Any, command: str = "") -> Path:
    """Run (or resume) a fine-tuning run; returns its directory. See the module docstring."""
    if not cfg.out:
        raise ValueError("out: the run directory is required")
    if not cfg.base:
        raise ValueError("base: the base policy's checkpoint directory is required")
    run_dir = Path(cfg.out)
    latest = ckpt.latest_checkpoint(run_dir) if run_dir.exists() else None
    if cfg.resume and latest is None:
        raise FileNotFoundError(f"resume=true but {run_dir} has no checkpoint to resume from")
    if not cfg.resume and latest is not None:
        raise FileExistsError(f"{run_dir} already holds a fine-tuning run ({latest.name}); resume=true to "
                              "continue it, or choose another out=")
    torch.set_num_threads(cfg.torch_threads)
    base = FrozenBase.from_checkpoint(cfg.base, sampler=cfg.base_sampler, num_steps=cfg.base_steps,
                                      embodiment=None, language=task.language)
    if not base.sampler.deterministic:
        # the batched rollouts and the composites draw only x_T from the episode's seed: a sampler's per-step
        # noise would come from torch's global RNG, and DSRL needs chunk = f(observation, w)
        raise ValueError(f"base_sampler={base.sampler.kind} (eta {base.sampler.eta}) is stochastic; fine-tuning "
                         "needs a deterministic sampler: dpmsolver++, or ddim with eta 0")
    if base.embodiment.name != task.embodiment:
        raise ValueError(f"base {base.path} drives {base.embodiment.name}; task {task.name} is "
                         f"{task.embodiment}")
    algo = make_algorithm(cfg.algorithm, algo_cfg, base, cfg.num_envs, cfg.seed, cfg.execute_horizon)
    env_steps, wall_before, seeds_used = 0, 0.0, 0
    if latest is not None:
        meta = ckpt.load_config(latest)
        if meta.get("base", {}).get("content_hash") != base.content_hash:
            raise ValueError(f"{latest}: fine-tuned on a base with content hash "
                             f"{meta.get('base', {}).get('content_hash')}; {base.path} has {base.content_hash}")
        tensors, plain = ckpt.load_train_state(latest)
        algo.load(ckpt.load_model_state(latest), tensors, plain["algo"])
        env_steps, wall_before = int(plain["env_steps"]), float(plain["wall_seconds"])
        seeds_used = int(plain["seeds_used"])
    run_dir.mkdir(parents=True, exist_ok=True)
    export_check = use_base_backend(base, cfg.base_backend, run_dir / "base_graphs", cfg.torch_threads)
    rollout_base = {"backend": cfg.base_backend, "network": type(base.network).__name__, **export_check}
    (run_dir / "finetune_config.json").write_text(json.dumps(
        {"finetune": dataclasses.asdict(cfg), "rl": dataclasses.asdict(algo_cfg), "task": dataclasses.asdict(task),
         "rollout_base": rollout_base, "command": command}, indent=2))
    config = _checkpoint_config(cfg, task, algo_cfg, algo, base, command)
    log = _Log(run_dir, env_steps)
    seeds = SeedStream(cfg.train_seed_start + 1_000_000 * cfg.seed, seeds_used)
    eval_seeds = list(range(cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes))
    envs = make_vector_env(task, cfg.num_envs)
    t_start = time.perf_counter()

    def wall() -> float:
        return wall_before + time.perf_counter() - t_start

    def save() -> Path:
        tensors, plain = algo.train_state()
        return ckpt.save_checkpoint(run_dir, env_steps, {**config, "env_steps": env_steps, "wall_seconds": wall()},
                                    algo.policy_state(), tensors,
                                    {"algo": plain, "env_steps": env_steps, "wall_seconds": wall(),
                                     "seeds_used": seeds.consumed}, keep_last=cfg.keep_last, fsync=cfg.fsync)

    def run_eval() -> None:
        if not eval_seeds:
            return
        t0 = time.perf_counter()
        results = evaluate_composite(algo, envs, base, eval_seeds, cfg.execute_horizon)
        wins = sum(s for _, s, _ in results)
        lo, hi = wilson_interval(wins, len(results))
        seconds = time.perf_counter() - t0
        # stamped with the wall time at which the evaluated policy existed (before this evaluation ran)
        log.log(env_steps, {"eval/success_rate": wins / len(results), "eval/ci95_low": lo, "eval/ci95_high": hi,
                            "eval/episodes": len(results), "eval/seconds": seconds,
                            "wall_seconds": wall() - seconds})
        bar.set_postfix_str(f"tuning success {wins}/{len(results)}")

    bar = tqdm(total=cfg.total_env_steps, initial=min(env_steps, cfg.total_env_steps), unit="step",
               desc=f"finetune {cfg.algorithm}", disable=not cfg.progress, dynamic_ncols=True)
    stop = _StopFlag()
    try:
        stop.install()
        if env_steps == 0:
            run_eval()  # the starting point on the same tuning seeds (the composite starts as the base)
        next_eval = (env_steps // cfg.eval_every + 1) * cfg.eval_every
        rollout = VectorRollout(envs, base, seeds, cfg.execute_horizon)
        rollout.start()
        window: list[tuple[int, bool, int]] = []
        while env_steps < cfg.total_env_steps and wall() < 60 * cfg.max_wall_minutes and not stop.signum:
            before = rollout.throughput()
            t0 = time.perf_counter()
            if hasattr(algo, "set_progress"):  # learning-rate schedules: env steps only, never the wall clock
                algo.set_progress(env_steps / cfg.total_env_steps)
            metrics, episodes = algo.train_iteration(rollout)
            seconds = time.perf_counter() - t0
            after = rollout.throughput()
            steps = int(after["env_steps"] - before["env_steps"])
            env_steps += steps
            bar.update(steps)
            window = (window + episodes)[-200:]
            row = _train_row(metrics, episodes, window, before, after, seconds)
            row["wall_seconds"] = wall()
            log.log(env_steps, row)
            if env_steps >= next_eval:
                run_eval()
                save()
                next_eval = (env_steps // cfg.eval_every + 1) * cfg.eval_every
                if eval_seeds:
                    rollout.start()  # evaluation reset the envs
        if stop.signum:
            raise FinetuneInterrupted(stop.signum, env_steps, save())
        if _step_of(ckpt.latest_checkpoint(run_dir)) != env_steps:
            run_eval()
            save()
    finally:
        stop.restore()
        bar.close()
        envs.close()
        log.close()
    return run_dir


def _train_row(metrics: dict[str, float], episodes: list[tuple[int, bool, int]],
               window: list[tuple[int, bool, int]], before: dict[str, float], after: dict[str, float],
               seconds: float) -> dict[str, Any]:
    """One iteration's metrics.jsonl row: the algorithm's metrics, the episodes that ended (and the last 200),
    throughput and the shares of its ``seconds`` spent in the envs and in the base."""
    row: dict[str, Any] = {f"train/{k}": v for k, v in metrics.items()}
    row["rollout/episodes"] = len(episodes)
    if episodes:
        row["rollout/success_rate"] = float(np.mean([s for _, s, _ in episodes]))
        row["rollout/episode_length"] = float(np.mean([n for _, _, n in episodes]))
    row["rollout/success_rate_last200"] = float(np.mean([s for _, s, _ in window])) if window else 0.0
    seconds = max(seconds, 1e-9)
    row["perf/env_steps_per_second"] = (after["env_steps"] - before["env_steps"]) / seconds
    row["perf/base_share"] = (after["base_seconds"] - before["base_seconds"]) / seconds
    row["perf/env_share"] = (after["env_seconds"] - before["env_seconds"]) / seconds
    return row


def _step_of(path: Path | None) -> int:
    if path is None:
        return -1
    return int(ckpt.load_config(path).get("env_steps", -1))

