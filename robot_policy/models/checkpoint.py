"""Checkpoints: a directory of safetensors + JSON, written atomically. No pickle anywhere.

    run/checkpoints/step_0001000/
      config.json          policy config, normaliser, embodiments, tasks, versions, step (human-readable)
      model.safetensors    EMA weights (what inference loads)
      train_state.safetensors  raw weights and optimiser moments (only what resume needs; every random
                           draw of training is a function of (seed, step), so no RNG state is saved)
      train_state.json     optimiser hyper-parameters and the scalar parts of its state, LR schedule
    run/checkpoints/latest -> step_0001000     (a symlink, replaced atomically)

A checkpoint is written into ``step_<step>.tmp-<pid>`` and renamed into place, so a crash leaves either
the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from robot_policy import __version__

CONFIG = "config.json"
MODEL = "model.safetensors"
TRAIN_STATE = "train_state.safetensors"
TRAIN_STATE_JSON = "train_state.json"
LATEST = "latest"


class CheckpointError(RuntimeError):
    pass


def versions() -> dict[str, str]:
    import numpy

    return {"robot_policy": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage (tied weights, views)
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and plain data (for JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{param_id}.{name}"] = value
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param_id, name = key.split(".", 2)
            state.setdefault(int(param_id), {})[name] = value
    for param_id, values in plain["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": plain["param_groups"]}


def save_checkpoint(run_dir: Path, step: int, config: dict[str, Any], model_state: dict[str, torch.Tensor],
                    train_tensors: dict[str, torch.Tensor] | None = None,
                    train_json: dict[str, Any] | None = None, keep_last: int = 3) -> Path:
    """Write ``run_dir/checkpoints/step_<step>`` atomically, point ``latest`` at it, prune old ones."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:07d}"
    tmp = ckpt_root / f"{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_contiguous(model_state), str(tmp / MODEL))
    meta = {**config, "step": step, "versions": versions()}
    (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
    if train_tensors is not None:
        save_file(_contiguous(train_tensors), str(tmp / TRAIN_STATE))
        (tmp / TRAIN_STATE_JSON).write_text(json.dumps(train_json or {}, indent=1))
    for f in tmp.iterdir():  # data on disk before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    link_tmp = ckpt_root / f".{LATEST}.tmp-{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    link_tmp.symlink_to(final.name)
    os.replace(link_tmp, ckpt_root / LATEST)
    _prune(ckpt_root, keep_last)
    return final


def _prune(ckpt_root: Path, keep_last: int) -> None:
    done = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and ".tmp-" not in p.name)
    for old in done[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob("step_*.tmp-*"):  # left by a crash mid-write
        if stale.name.rsplit("-", 1)[-1] != str(os.getpid()):
            shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint under ``run_dir/checkpoints``, or None."""
    ckpt_root = Path(run_dir) / "checkpoints"
    link = ckpt_root / LATEST
    if link.exists():
        return link.resolve()
    done = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and ".tmp-" not in p.name)
    return done[-1] if done else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its latest checkpoint), with links resolved: the
    ``latest`` link moves while a run trains, so readers pin the step directory it points to now."""
    path = Path(path)
    if (path / CONFIG).exists():
        return path.resolve()
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path}: neither a checkpoint (no {CONFIG}) nor a run directory with checkpoints")
    return latest


def load_config(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / CONFIG
    if not path.exists():
        raise CheckpointError(f"{ckpt}: no {CONFIG}")
    return json.loads(path.read_text())


def load_model_state(ckpt: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(ckpt) / MODEL
    if not path.exists():
        raise CheckpointError(f"{ckpt}: no {MODEL}")
    return load_file(str(path), device=str(device))


def load_train_state(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    t, j = Path(ckpt) / TRAIN_STATE, Path(ckpt) / TRAIN_STATE_JSON
    if not t.exists() or not j.exists():
        raise CheckpointError(f"{ckpt}: no training state to resume from ({TRAIN_STATE}, {TRAIN_STATE_JSON})")
    return load_file(str(t)), json.loads(j.read_text())
