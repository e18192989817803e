"""N envs stepped in lockstep around one frozen base: chunk queues, observation histories, episode seeds.

    rollout = VectorRollout(envs, base, seeds=iter(range(10_000_000, 11_000_000)))
    rollout.start()
    while ...:
        due = rollout.due()                        # (N,) bool: envs whose chunk queue is empty
        if due.any():
            rollout.plan(rollout.draw_noise(due))  # ONE base call for all of them
        a_base = rollout.base_actions()           # (N, 128) normalised, the head of each queue
        step = rollout.step(rollout.base.to_unified(a_base))

``envs`` is anything shaped like gymnasium's vector env with autoreset off
(:func:`robot_policy.envs.vector.make_vector_env`): ``reset(seed=[...], options={"reset_mask": m})`` and
``step(actions) -> (obs, reward, terminated, truncated, info)`` with batched dict observations; this module
does not import the env layer. A finished env is reset right away with the next seed of ``seeds``, so the
observation returned for it is its new episode's first; every episode is reproducible from its seed (the
env's initial state and, through a per-episode generator seeded with it, the base's noise x_T, drawn as
:class:`~robot_policy.policies.diffusion.DiffusionPolicy` draws it).

Throughput is counted here: env steps, seconds waiting on the envs and seconds in the base.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from robot_policy.keys import OBS_OBJECT, OBS_STATE
from robot_policy.models.frozen_base import FrozenBase
from robot_policy.models.observation_history import stack_batches
from robot_policy.spaces.unified import UNIFIED_DIM


class VectorEnvLike(Protocol):
    num_envs: int

    def reset(self, *, seed: Any = None, options: Any = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]: ...

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], Any, Any, Any, dict[str, Any]]: ...

    def get_attr(self, name: str) -> tuple[Any, ...]: ...


@dataclass
class StepResult:
    """One lockstep env step. Arrays are (N,). ``done`` = terminated | truncated; done envs were reset."""

    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    #: seeds of the episodes that ended at this step (-1 where none ended)
    finished_seed: np.ndarray
    #: their lengths in control steps (0 where none ended)
    finished_length: np.ndarray

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


class VectorRollout:
    """See the module docstring."""

    def __init__(self, envs: VectorEnvLike, base: FrozenBase, seeds: Iterator[int],
                 execute_horizon: int | None = None) -> None:
        if not base.sampler.deterministic:
            # only x_T is drawn from the episode's seed: a sampler's per-step noise would come from torch's global
            # RNG, so episodes would not be reproducible and the composites would run another policy
            raise ValueError(f"the base samples with {base.sampler.kind} (eta {base.sampler.eta}), a stochastic "
                             "sampler; vectorised rollouts need a deterministic one: dpmsolver++, or ddim with eta 0")
        self.envs = envs
        self.base = base
        self.n = int(envs.num_envs)
        self.seeds = seeds
        self.execute_horizon = execute_horizon or base.default_execute_horizon
        #: each env's time limit in control steps (its task's max_steps), (N,)
        self.max_episode_steps = np.array([task.max_steps for task in envs.get_attr("task")], np.int64)
        if not 1 <= self.execute_horizon <= base.horizon:
            raise ValueError(f"execute_horizon={self.execute_horizon}: choose 1..{base.horizon} (the base's chunk)")
        self.histories = [base.new_history() for _ in range(self.n)]
        self.generators = [torch.Generator().manual_seed(0) for _ in range(self.n)]
        self.episode_seed = np.full(self.n, -1, np.int64)
        self.episode_step = np.zeros(self.n, np.int64)
        #: (N, Ta, 128) normalised chunk per env and the index of its next action (>= execute_horizon: due)
        self.chunks = torch.zeros(self.n, base.horizon, UNIFIED_DIM)
        self.chunk_pos = np.full(self.n, self.execute_horizon, np.int64)
        #: the latest observation of every env, batched (N, ...)
        self.obs: dict[str, np.ndarray] = {}
        self.active = np.ones(self.n, bool)  # False: the env ran out of seeds (finite seed lists)
        self.env_steps = 0
        self.env_seconds = 0.0
        self.base_seconds = 0.0
        self.base_calls = 0

    # ---- episodes -------------------------------------------------------------------------------
    def _next_seed(self) -> int | None:
        return next(self.seeds, None)

    def _begin(self, mask: np.ndarray) -> None:
        """Reset the envs in ``mask`` with fresh seeds (those left without a seed become inactive)."""
        seeds: list[int | None] = [None] * self.n
        for i in np.flatnonzero(mask):
            seed = self._next_seed()
            if seed is None:
                self.active[i] = False
                mask[i] = False
                continue
            seeds[i] = seed
        if not mask.any():
            return
        t0 = time.perf_counter()
        obs, _ = self.envs.reset(seed=seeds, options={"reset_mask": mask.copy()})
        self.env_seconds += time.perf_counter() - t0
        for key, value in obs.items():
            if key not in self.obs:
                self.obs[key] = np.array(value)
            self.obs[key][mask] = value[mask]
        for i in np.flatnonzero(mask):
            seed = seeds[i]
            assert seed is not None
            self.episode_seed[i] = seed
            self.episode_step[i] = 0
            self.histories[i].clear()
            self.histories[i].add(self.obs_of(int(i)))
            self.generators[i] = torch.Generator().manual_seed(int(seed))
            self.chunk_pos[i] = self.execute_horizon

    def start(self) -> None:
        """Reset every env with the first N seeds."""
        self.active[:] = True
        self._begin(np.ones(self.n, bool))

    def obs_of(self, i: int) -> dict[str, np.ndarray]:
        return {key: value[i] for key, value in self.obs.items()}

    # ---- the base -------------------------------------------------------------------------------
    def due(self) -> np.ndarray:
        """(N,) bool: active envs whose chunk is used up (they need a base call before the next step)."""
        return (self.chunk_pos >= self.execute_horizon) & self.active

    def draw_noise(self, mask: np.ndarray) -> Tensor:
        """(k, Ta, 128) initial noise for the envs in ``mask``, each from its episode's generator."""
        return torch.cat([torch.randn(1, self.base.horizon, UNIFIED_DIM, generator=self.generators[i])
                          for i in np.flatnonzero(mask)]) if mask.any() else torch.zeros(0, self.base.horizon,
                                                                                          UNIFIED_DIM)

    def base_inputs(self, mask: np.ndarray) -> dict[str, Tensor]:
        """Stacked observation histories of the envs in ``mask`` (the base's input batch)."""
        return stack_batches([self.histories[i].as_batch() for i in np.flatnonzero(mask)])

    def plan(self, noise: Tensor, mask: np.ndarray | None = None) -> Tensor:
        """One batched base call for the envs in ``mask`` (default: the due ones) from ``noise`` (k, Ta, 128);
        their queues restart. Returns the normalised chunks (k, Ta, 128)."""
        mask = self.due() if mask is None else mask
        if not mask.any():
            return torch.zeros(0, self.base.horizon, UNIFIED_DIM)
        t0 = time.perf_counter()
        chunks = self.base.sample(self.base_inputs(mask), noise)
        self.base_seconds += time.perf_counter() - t0
        self.base_calls += 1
        idx = np.flatnonzero(mask)
        self.chunks[idx] = chunks
        self.chunk_pos[idx] = 0
        return chunks

    def base_actions(self) -> Tensor:
        """(N, 128) normalised base action each env executes now (the head of its queue)."""
        pos = torch.as_tensor(np.minimum(self.chunk_pos, self.base.horizon - 1))
        return self.chunks[torch.arange(self.n), pos]

    # ---- stepping -------------------------------------------------------------------------------
    def elapsed_fraction(self) -> Tensor:
        """Each env's control steps so far over its time limit, (N,) in [0, 1)."""
        return torch.as_tensor(self.episode_step / self.max_episode_steps, dtype=torch.float32)

    def features_state(self) -> tuple[Tensor, Tensor | None]:
        """The latest observation as tensors: state (N, 128) and object_state (N, Do) or None."""
        state = torch.as_tensor(self.obs[OBS_STATE], dtype=torch.float32)
        obj = self.obs.get(OBS_OBJECT)
        return state, (None if obj is None else torch.as_tensor(obj, dtype=torch.float32))

    def step(self, unified_actions: np.ndarray) -> StepResult:
        """Step every env with (N, 128) unified actions; advance the queues; reset the envs that finished.
        Inactive envs step too (a vector env steps all) and their results are dropped."""
        if unified_actions.shape != (self.n, UNIFIED_DIM):
            raise ValueError(f"actions: expected ({self.n}, {UNIFIED_DIM}), got {unified_actions.shape}")
        t0 = time.perf_counter()
        obs, reward, terminated, truncated, info = self.envs.step(np.asarray(unified_actions, np.float32))
        self.env_seconds += time.perf_counter() - t0
        active = self.active.copy()
        self.env_steps += int(active.sum())
        for key, value in obs.items():
            self.obs[key] = np.array(value)
        reward = np.where(active, np.asarray(reward, np.float64), 0.0)
        terminated = np.asarray(terminated, bool) & active
        truncated = np.asarray(truncated, bool) & active
        success = np.asarray(info.get("success", terminated), bool) & active
        self.chunk_pos += 1
        self.episode_step += 1
        done = terminated | truncated
        finished_seed = np.where(done, self.episode_seed, -1)
        finished_length = np.where(done, self.episode_step, 0)
        for i in np.flatnonzero(active & ~done):
            self.histories[i].add(self.obs_of(int(i)))
        if done.any():
            self._begin(done.copy())
        return StepResult(reward, terminated, truncated, success, finished_seed, finished_length)

    def throughput(self) -> dict[str, float]:
        """Counters so far: env steps, seconds in env stepping and in base inference."""
        return {"env_steps": float(self.env_steps), "env_seconds": self.env_seconds,
                "base_seconds": self.base_seconds, "base_calls": float(self.base_calls)}

