"""A fixed-capacity replay buffer of named float32 arrays (a ring: the oldest rows are overwritten).

Written by hand: the off-policy learners here need only append, uniform sampling and a state dict of
tensors for resume (safetensors), which fits in a page; the RL libraries' buffers bring their env APIs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class ReplayBuffer:
    """``fields``: name -> per-row shape. Rows are added in batches; ``sample`` draws uniformly."""

    def __init__(self, capacity: int, fields: dict[str, tuple[int, ...]]) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.data = {name: np.zeros((capacity, *shape), np.float32) for name, shape in fields.items()}
        self.size = 0
        self.pos = 0

    def __len__(self) -> int:
        return self.size

    def add(self, **rows: np.ndarray) -> None:
        """Append k rows: every field as a (k, *shape) array."""
        if set(rows) != set(self.data):
            raise KeyError(f"replay rows: expected fields {sorted(self.data)}, got {sorted(rows)}")
        k = len(next(iter(rows.values())))
        for i in range(k):
            for name, value in rows.items():
                self.data[name][self.pos] = value[i]
            self.pos = (self.pos + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        idx = torch.randint(0, self.size, (batch_size,), generator=generator).numpy()
        return {name: torch.from_numpy(arr[idx]) for name, arr in self.data.items()}

    def state_tensors(self, prefix: str = "replay.") -> dict[str, Tensor]:
        return {prefix + name: torch.from_numpy(arr[:self.size].copy()) for name, arr in self.data.items()}

    def load_tensors(self, tensors: dict[str, Tensor], size: int, pos: int, prefix: str = "replay.") -> None:
        for name, arr in self.data.items():
            saved = tensors[prefix + name].numpy()
            arr[:len(saved)] = saved
        self.size, self.pos = size, pos
