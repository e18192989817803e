"""Observation windows to distil on: demonstration stores and the teacher's own rollouts, mixed by weight.

Every source yields batches in the layout :meth:`~robot_policy.models.observation_history.ObservationHistory.as_batch`
stacks (raw unified units; :func:`~robot_policy.models.inputs.make_model_inputs` normalises them):
``state`` (B, To, 128), ``state_mask`` / ``action_mask`` (B, 128), ``ctrl_freq`` (B,), ``language_id`` (B,)
(always 0: the teacher's one instruction), and where the policy uses them ``object_state`` (B, To, Do),
``images`` (B, To, V, H, W, 3) uint8 with ``camera_present`` (B, V). A bank of a residual teacher's rollouts
also holds ``target`` (B, Ta, 128): the normalised actions the composite executed from each window on.

* :class:`StoreWindows`: every window of the stores (one per step of every episode), read on demand.
* :class:`WindowBank`: windows held in RAM (the teacher's rollouts), saved as safetensors so a resumed run
  does not roll out again.
* :class:`WindowMixture`: the batch of step k is a pure function of (seed, k), as in training.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from robot_policy.algorithms.vector_rollout import VectorRollout
from robot_policy.data import format as fmt
from robot_policy.data.mixture import MixtureDataset, StepBatchSampler
from robot_policy.data.sampler import SequenceSampler
from robot_policy.data.store import EpisodeStore
from robot_policy.data.torch_dataset import WindowBatchDataset
from robot_policy.keys import ACTION_MASK, CAMERA_PRESENT, CTRL_FREQ, IMAGES, LANGUAGE_ID, OBS_STATE_MASK

#: the keys of a window batch that are model inputs
INPUT_KEYS = (fmt.STATE, OBS_STATE_MASK, ACTION_MASK, CTRL_FREQ, LANGUAGE_ID, fmt.OBJECT_STATE, IMAGES,
              CAMERA_PRESENT)
#: a bank's target chunks (B, Ta, 128), normalised
TARGET = "target"
#: a bank's initial noise (B, Ta, 128): for a residual teacher's windows at its chunk starts, the noise its base
#: planned that chunk from, so the student regresses a function of (observation, w) (same-noise regression)
NOISE = "noise"

#: (rollout, due envs (N,) bool) -> their initial noise (k, Ta, 128)
NoiseChooser = Callable[[VectorRollout, np.ndarray], Tensor]


class WindowSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: np.ndarray) -> dict[str, Tensor]: ...


class StoreWindows:
    """Every observation window of one or more episode stores, shaped for a policy with ``obs_horizon``
    steps, ``object_state_dim`` (zero-padded, zeros for a store without object state) and ``cameras``."""

    def __init__(self, paths: Sequence[str | Path], obs_horizon: int, horizon: int, object_state_dim: int,
                 cameras: Sequence[str], image_size: tuple[int, int]) -> None:
        if not paths:
            raise ValueError("no demonstration stores given")
        self.paths = [str(p) for p in paths]
        self.stores = [EpisodeStore.open(p) for p in self.paths]
        sources, hz = [], []
        for store in self.stores:
            if store.n_episodes == 0:
                raise ValueError(f"{store.path} has no episodes")
            missing = [c for c in cameras if c not in store.cameras]
            if missing:
                raise ValueError(f"{store.path}: the teacher sees camera(s) {missing}, which the store does not "
                                 f"record ({sorted(store.cameras) or 'no cameras'})")
            keys = (fmt.STATE,) + tuple(fmt.image_key(c) for c in cameras)
            if object_state_dim and fmt.OBJECT_STATE in store.data_keys:
                keys += (fmt.OBJECT_STATE,)
            sampler = SequenceSampler(store.episode_ends, obs_horizon, horizon)
            sources.append(WindowBatchDataset(store, sampler, obs_keys=keys))
            hz.append(store.control_hz)
        self.mixture = MixtureDataset(sources, hz, cameras, object_state_dim, image_size)
        self._offsets = np.cumsum([0, *self.mixture.sizes])

    @property
    def episodes(self) -> list[int]:
        return [s.n_episodes for s in self.stores]

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: np.ndarray) -> dict[str, Tensor]:
        index = np.asarray(index, np.int64).reshape(-1)
        source = np.searchsorted(self._offsets, index, side="right") - 1
        batch = self.mixture[np.stack([source, index - self._offsets[source]], axis=1)]
        out = {k: batch[k] for k in INPUT_KEYS if k in batch}
        out[LANGUAGE_ID] = torch.zeros(index.size, dtype=torch.int64)  # the teacher's instruction
        return out


class WindowBank:
    """Windows in RAM: ``tensors`` maps each key to (N, ...) (see the module docstring)."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        if fmt.STATE not in tensors:
            raise ValueError(f"a window bank needs {fmt.STATE!r}; got {sorted(tensors)}")
        sizes = {k: int(v.shape[0]) for k, v in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"window bank: keys differ in length {sizes}")
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors[fmt.STATE].shape[0])

    def __getitem__(self, index: np.ndarray) -> dict[str, Tensor]:
        idx = torch.as_tensor(np.asarray(index, np.int64).reshape(-1))
        return {k: v[idx] for k, v in self.tensors.items()}

    @classmethod
    def from_batches(cls, batches: Sequence[dict[str, Tensor]]) -> WindowBank:
        if not batches:
            raise ValueError("no windows to bank")
        return cls({k: torch.cat([b[k] for b in batches]) for k in batches[0] if k in (*INPUT_KEYS, TARGET, NOISE)})

    def save(self, path: str | Path, meta: dict[str, Any]) -> None:
        """Write the windows as safetensors, ``meta`` (JSON) in its header; atomically (temp + rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(tmp), metadata={"meta": json.dumps(meta)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> tuple[WindowBank, dict[str, Any]]:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("meta", "{}"))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118  # safe_open has no iteration
        return cls(tensors), meta


class WindowMixture:
    """Batches of ``batch_size`` windows from ``sources`` with sampling ``weights``; the batch of step k is
    a function of (seed, k) only, so a resumed run draws what the uninterrupted one would have."""

    def __init__(self, sources: Sequence[WindowSource], weights: Sequence[float], batch_size: int,
                 seed: int) -> None:
        keep = [i for i, (s, w) in enumerate(zip(sources, weights)) if len(s) > 0 and w > 0]
        if not keep:
            raise ValueError("no windows to distil on: give a demonstration store or rollout_episodes > 0")
        self.sources = [sources[i] for i in keep]
        self.sampler = StepBatchSampler([len(s) for s in self.sources], [weights[i] for i in keep], batch_size,
                                        seed, total_steps=0)

    def batch(self, step: int) -> dict[str, Tensor]:
        pairs = self.sampler.global_batch(step)  # (B, 2): (source, window)
        parts, order = [], []
        for s in np.unique(pairs[:, 0]):
            rows = np.flatnonzero(pairs[:, 0] == s)
            parts.append(self.sources[int(s)][pairs[rows, 1]])
            order.append(rows)
        keys = set.intersection(*(set(p) for p in parts))
        wanted = (*INPUT_KEYS, TARGET, NOISE)
        partial = {k for p in parts for k in p if k in wanted} - keys
        if partial:  # a model input some sources give and others lack would vanish from the batch silently
            raise KeyError(f"window sources disagree on the inputs {sorted(partial)}: every source (demonstration "
                           "stores, rollout windows) must provide them, or none")
        merged = {k: torch.cat([p[k] for p in parts]) for k in keys}
        inverse = torch.from_numpy(np.argsort(np.concatenate(order)))  # back to the sampler's row order
        return {k: v[inverse] for k, v in merged.items()}


def collect_rollout_windows(rollout: VectorRollout, choose_noise: NoiseChooser | None = None, progress: bool = False,
                            total: int | None = None) -> tuple[WindowBank, list[tuple[int, bool, int]]]:
    """Run the rollout's base (the teacher) until its seeds run out; returns every observation window it
    acted on (one per env step, before the step) and (seed, success, length) per episode.

    ``rollout`` must have a finite seed iterator (each seed is one episode). ``choose_noise(rollout, due)``
    gives the initial noise (k, Ta, 128) of the due envs (default: each episode's seeded draw).
    """
    rollout.start()
    windows: list[dict[str, Tensor]] = []
    results: list[tuple[int, bool, int]] = []
    bar = tqdm(total=total, desc="teacher rollouts", unit="ep", disable=not progress)
    try:
        while rollout.active.any():
            windows.append(rollout.base_inputs(rollout.active.copy()))
            due = rollout.due()
            if due.any():
                rollout.plan(choose_noise(rollout, due) if choose_noise else rollout.draw_noise(due))
            step = rollout.step(rollout.base.to_unified(rollout.base_actions()))
            for i in np.flatnonzero(step.done):
                results.append((int(step.finished_seed[i]), bool(step.success[i]), int(step.finished_length[i])))
                bar.update(1)
    finally:
        bar.close()
    return WindowBank.from_batches(windows), sorted(results)
