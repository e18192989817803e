"""Data-parallel context: one process by default, DDP when launched by ``torchrun``.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; then the process group starts with NCCL on GPUs and gloo
on CPUs (the CPU path is what the tests run), and is torn down when the context exits, even on error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average of ``value`` over ranks (the global-batch loss when each rank's loss is its local mean)."""
        if self.world_size == 1:
            return value
        out = value.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


@contextlib.contextmanager
def distributed_context() -> Iterator[DistributedContext]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield DistributedContext()
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    try:
        yield DistributedContext(rank=rank, world_size=world, local_rank=local_rank)
    finally:
        dist.destroy_process_group()
