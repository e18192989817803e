"""torch Dataset and DataLoader over the sequence sampler.

Items are whole batches: the DataLoader's sampler yields lists of window indices (a BatchSampler) and
``batch_size=None`` turns off torch's per-item collation, so a batch is one vectorised gather per key
instead of B Python calls. Worker processes each gather their own batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from robot_policy.data import format as fmt
from robot_policy.data.disk_reader import TensorstoreReader
from robot_policy.data.sampler import SequenceSampler, gather_windows
from robot_policy.data.store import EpisodeData, EpisodeStore
from robot_policy.keys import ACTION_MASK, EPISODE, OBS_STATE_MASK


class WindowBatchDataset(Dataset[dict[str, torch.Tensor]]):
    """Batches of windows from one store.

    Each batch holds ``key -> (B, To, ...)`` for ``obs_keys`` (images stay uint8), ``key -> (B, Ta, ...)``
    for ``action_keys``, ``episode`` (B,) int64 and the episodes'
    ``state_mask`` / ``action_mask`` (B, 128).

    Args:
        store: the episode store.
        sampler: windows to draw from (a train or val split).
        obs_keys, action_keys: keys read over To and Ta steps.
        in_memory: hold the non-image keys in RAM (images are always read from disk).
        ram: those keys already loaded (``store.load``), to share one copy between datasets of a store.
    """

    def __init__(self, store: EpisodeStore, sampler: SequenceSampler, obs_keys: tuple[str, ...] = (fmt.STATE,),
                 action_keys: tuple[str, ...] = (fmt.ACTION,), in_memory: bool = True,
                 ram: EpisodeData | None = None) -> None:
        missing = [k for k in (*obs_keys, *action_keys) if k not in store.data_keys]
        if missing:
            raise KeyError(f"{store.path}: no data key(s) {missing}; keys: {store.data_keys}")
        self.sampler = sampler
        self.obs_keys, self.action_keys = tuple(obs_keys), tuple(action_keys)
        keys = list(dict.fromkeys((*obs_keys, *action_keys)))
        ram_keys = [k for k in keys if in_memory and not fmt.is_image_key(k)]
        disk_keys = [k for k in keys if k not in ram_keys]
        if ram is not None and ram_keys:
            missing_ram = set(ram_keys) - set(ram.data)
            if missing_ram:
                raise KeyError(f"the shared in-RAM data lacks {sorted(missing_ram)}")
            self._ram: EpisodeData | None = ram
        else:
            self._ram = store.load(ram_keys) if ram_keys else None
        self._disk = TensorstoreReader(store.path, disk_keys) if disk_keys else None
        meta = store.episode_meta()
        self._state_mask = meta[fmt.STATE_MASK]
        self._action_mask = meta[fmt.ACTION_MASK]
        self.languages: np.ndarray = meta[fmt.LANGUAGE]

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def reads_disk(self) -> bool:
        return self._disk is not None

    def __getitem__(self, windows: Any) -> dict[str, torch.Tensor]:
        idx = np.asarray(windows, dtype=np.int64).reshape(-1)
        out: dict[str, np.ndarray] = {}
        if self._ram is not None:
            out.update(gather_windows(self._ram, self.sampler, idx,
                                      tuple(k for k in self.obs_keys if k in self._ram.data),
                                      tuple(k for k in self.action_keys if k in self._ram.data)))
        if self._disk is not None:
            out.update(self._disk.gather(self.sampler, idx,
                                         tuple(k for k in self.obs_keys if k in self._disk.keys),
                                         tuple(k for k in self.action_keys if k in self._disk.keys)))
        episode = out[EPISODE]
        out[OBS_STATE_MASK] = self._state_mask[episode]
        out[ACTION_MASK] = self._action_mask[episode]
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def make_dataloader(dataset: WindowBatchDataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                    num_workers: int = 0, drop_last: bool = True) -> DataLoader:
    """A DataLoader yielding batch dicts; ``seed`` fixes the shuffling order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    base: Sampler[int]
    if shuffle:
        base = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        base = SequentialSampler(dataset)
    # tensorstore aborts a process that forks after its thread pool started, so workers that read from
    # disk are spawned; RAM-only datasets keep fork's copy-on-write sharing of the arrays.
    context = "spawn" if num_workers > 0 and dataset.reads_disk else None
    return DataLoader(dataset, sampler=BatchSampler(base, batch_size, drop_last=drop_last), batch_size=None,
                      num_workers=num_workers, persistent_workers=num_workers > 0, multiprocessing_context=context)

