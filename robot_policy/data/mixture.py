"""Training batches drawn from several stores with sampling weights, reproducible by step.

The global batch of training step ``k`` is a pure function of ``(seed, k)``: which store each window comes
from (by weight) and which window. So a run resumed at step k sees exactly the batches the uninterrupted
run saw, and a data-parallel run whose rank r takes rows ``r::world`` of each global batch trains on the
same global batches as one process.

Stores may differ in embodiment, cameras and object-state width: batches carry the union of cameras
(``camera_present`` marks the real ones; a missing camera is a blank frame, as in RDT) and object states
zero-padded to the widest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from robot_policy.data import format as fmt
from robot_policy.data.torch_dataset import WindowBatchDataset
from robot_policy.keys import CAMERA_PRESENT, CTRL_FREQ, EPISODE, IMAGES, LANGUAGE_ID, SOURCE


class StepBatchSampler(Sampler[np.ndarray]):
    """Yields, for steps ``start_step .. total_steps - 1``, this rank's rows of the step's global batch.

    Each item is an int64 array (b, 2) of (source index, window index), b = batch_size / world_size.
    """

    def __init__(self, source_sizes: Sequence[int], weights: Sequence[float], batch_size: int, seed: int,
                 total_steps: int, start_step: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if len(source_sizes) != len(weights) or not source_sizes:
            raise ValueError("need one weight per source and at least one source")
        if any(n <= 0 for n in source_sizes):
            raise ValueError(f"every source needs windows, sizes are {list(source_sizes)}")
        w = np.asarray(weights, dtype=np.float64)
        if np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
        if batch_size % world_size:
            raise ValueError(f"global batch_size {batch_size} is not divisible by world_size {world_size}")
        self.sizes = np.asarray(source_sizes, dtype=np.int64)
        self.p = w / w.sum()
        self.batch_size, self.seed = batch_size, seed
        self.total_steps, self.start_step = total_steps, start_step
        self.rank, self.world_size = rank, world_size

    def global_batch(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        source = rng.choice(self.sizes.size, size=self.batch_size, p=self.p)
        window = (rng.random(self.batch_size) * self.sizes[source]).astype(np.int64)
        return np.stack([source, window], axis=1)

    def __iter__(self) -> Iterator[np.ndarray]:
        for step in range(self.start_step, self.total_steps):
            yield self.global_batch(step)[self.rank::self.world_size]

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


class MixtureDataset(Dataset[dict[str, torch.Tensor]]):
    """Batches over several window datasets; items are (b, 2) arrays of (source, window) pairs.

    Adds to each batch: ``language_id`` (b,) index into :attr:`languages`, ``ctrl_freq`` (b,) Hz,
    ``source`` (b,), and for cameras ``camera_present`` (b, V) over :attr:`cameras`.
    """

    def __init__(self, sources: Sequence[WindowBatchDataset], control_hz: Sequence[float],
                 cameras: Sequence[str] = (), object_state_dim: int = 0,
                 image_size: tuple[int, int] = (128, 128)) -> None:
        if len(sources) != len(control_hz):
            raise ValueError("need one control frequency per source")
        self.sources = list(sources)
        self.control_hz = np.asarray(control_hz, dtype=np.float32)
        self.cameras = tuple(cameras)
        self.object_state_dim = object_state_dim
        self.image_size = tuple(image_size)  # (H, W) of blank frames for cameras a store lacks
        vocab: dict[str, int] = {}
        self._episode_language = []
        for src in self.sources:
            ids = [vocab.setdefault(str(text), len(vocab)) for text in src.languages.tolist()]
            self._episode_language.append(np.asarray(ids, dtype=np.int64))
        self.languages = list(vocab)

    @property
    def sizes(self) -> list[int]:
        return [len(s) for s in self.sources]

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, pairs: np.ndarray) -> dict[str, torch.Tensor]:
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        parts: list[dict[str, torch.Tensor]] = []
        order: list[np.ndarray] = []
        for s in np.unique(pairs[:, 0]):
            rows = np.flatnonzero(pairs[:, 0] == s)
            batch = self.sources[int(s)][pairs[rows, 1]]
            parts.append(self._harmonise(batch, int(s)))
            order.append(rows)
        merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        inverse = np.argsort(np.concatenate(order))  # back to the sampler's row order
        return {k: v[torch.from_numpy(inverse)] for k, v in merged.items()}

    def _harmonise(self, batch: dict[str, torch.Tensor], source: int) -> dict[str, torch.Tensor]:
        b = batch[EPISODE].shape[0]
        out = {k: v for k, v in batch.items() if not fmt.is_image_key(k) and k != fmt.OBJECT_STATE}
        out[LANGUAGE_ID] = torch.from_numpy(self._episode_language[source][batch[EPISODE].numpy()])
        out[CTRL_FREQ] = torch.full((b,), float(self.control_hz[source]))
        out[SOURCE] = torch.full((b,), source, dtype=torch.int64)
        if self.object_state_dim:
            obj = batch.get(fmt.OBJECT_STATE)
            to = batch[fmt.STATE].shape[1]
            padded = torch.zeros(b, to, self.object_state_dim)
            if obj is not None:
                padded[..., : obj.shape[-1]] = obj
            out[fmt.OBJECT_STATE] = padded
        if self.cameras:
            present, frames = [], []
            to = batch[fmt.STATE].shape[1]
            for cam in self.cameras:
                key = fmt.image_key(cam)
                if key in batch:
                    frames.append(batch[key])
                    present.append(torch.ones(b, dtype=torch.bool))
                else:  # blank; the encoder replaces frames of absent cameras with its blank image anyway
                    frames.append(torch.zeros(b, to, *self.image_size, 3, dtype=torch.uint8))
                    present.append(torch.zeros(b, dtype=torch.bool))
            out[IMAGES] = torch.stack(frames, dim=2)  # (b, To, V, H, W, 3) uint8
            out[CAMERA_PRESENT] = torch.stack(present, dim=1)  # (b, V)
        return out


def make_step_loader(dataset: MixtureDataset, sampler: StepBatchSampler, num_workers: int = 0) -> DataLoader:
    """A DataLoader over the step sampler (items are whole batches; disk-reading workers are spawned)."""
    reads_disk = any(s.reads_disk for s in dataset.sources)
    context = "spawn" if num_workers > 0 and reads_disk else None
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
                      persistent_workers=False, multiprocessing_context=context,
                      prefetch_factor=4 if num_workers > 0 else None)
