"""A tiny trained checkpoint for tests (a plain module: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from robot_policy.cli.main import main
from robot_policy.models import checkpoint as ckpt


def train_tiny_checkpoint(root: Path, task: str = "pybullet_bimanual_lift", steps: int = 2,
                          overrides: Sequence[str] = ()) -> Path:
    """``rdt_tiny`` trained ``steps`` steps on one expert episode of ``task`` under ``root`` (``overrides``: more
    ``robot-policy train`` options); its checkpoint directory. With 2 steps its chunks sit near the
    demonstration's mean (the head is still ~0). Torch's thread count is restored."""
    store, run = root / "lift.zarr", root / "run"
    threads = torch.get_num_threads()
    try:
        assert main(["collect", f"task={task}", "episodes=1", f"out={store}", "seed=0", "record_sim_state=false"]) == 0
        assert main(["train", f"dataset.path={store}", f"out={run}", "policy=rdt_tiny", f"steps={steps}", "batch_size=8",
                     "val_fraction=0", "torch_threads=1", "progress=false", *overrides]) == 0
    finally:
        torch.set_num_threads(threads)
    path = ckpt.latest_checkpoint(run)
    assert path is not None
    return path
