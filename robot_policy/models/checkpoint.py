"""Checkpoints: a directory of safetensors + JSON, written atomically. No pickle anywhere.

    run/checkpoints/step_0001000/
      config.json          policy config, normaliser, embodiments, tasks, versions, step (human-readable)
      model.safetensors    EMA weights (what inference loads)
      train_state.safetensors  raw weights and optimiser moments (only what resume needs; every random
                           draw of training is a function of (seed, step), so no RNG state is saved)
      train_state.json     optimiser hyper-parameters and the scalar parts of its state, LR schedule
    run/checkpoints/latest -> step_0001000     (a symlink, replaced atomically)

Replacing a checkpoint never leaves a moment without a valid one (``latest`` is the commit point):

1. write every file into ``step_<step>.tmp-<pid>``, fsync the files and the directory;
2. rename it to a step directory no one else uses (``step_<step>``, or ``step_<step>.<n>`` when that step was
   saved before, e.g. on SIGINT right after a periodic save) and fsync ``checkpoints/``;
3. point ``latest`` at it (a new symlink renamed over the old one) and fsync ``checkpoints/``;
4. only then prune: older step directories are renamed to ``*.trash-<pid>`` (never seen half-deleted under
   a checkpoint's name) and deleted, with leftovers of crashed writers.

Readers follow ``latest``, and when it is missing or points at an incomplete directory (deleted files),
the newest complete step directory. Every step has a fault point (``ROBOT_POLICY_FAULT``, see
:data:`robot_policy.durability.FAULT_POINTS`) for the crash tests.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from robot_policy import __version__
from robot_policy.durability import fault_point, fsync_path

CONFIG = "config.json"
MODEL = "model.safetensors"
TRAIN_STATE = "train_state.safetensors"
TRAIN_STATE_JSON = "train_state.json"
LATEST = "latest"
#: files a checkpoint cannot be loaded without (the train state is only needed to resume)
REQUIRED = (CONFIG, MODEL)
#: a complete checkpoint's directory name: step_<step>, or step_<step>.<n> for the n-th re-save of a step
_STEP_DIR = re.compile(r"^step_(\d+)(?:\.(\d+))?$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or cannot be read; the message names the file, on one line."""


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


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` whose key starts with ``prefix``, with it removed (one module's state)."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def modules_to_flat(modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Named modules' weights and optimisers' moments as ``<name>.<key>`` tensors, with the optimisers'
    plain parts (hyper-parameters, scalars) under their names: what a resumable train state holds."""
    tensors = {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}
    plain: dict[str, Any] = {}
    for name, opt in optimizers.items():
        t, plain[name] = optimizer_to_flat(opt.state_dict())
        tensors.update({f"{name}.{k}": v for k, v in t.items()})
    return tensors, plain


def load_modules_from_flat(modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                           tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    """Inverse of :func:`modules_to_flat`: load each named module and optimiser in place."""
    for name, module in modules.items():
        module.load_state_dict(strip_prefix(tensors, f"{name}."))
    for name, opt in optimizers.items():
        opt.load_state_dict(optimizer_from_flat(strip_prefix(tensors, f"{name}."), plain[name]))


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
                    train_json: dict[str, Any] | None = None, keep_last: int = 3, fsync: bool = True) -> Path:
    """Write a checkpoint of ``step`` under ``run_dir/checkpoints`` (see the module docstring for the
    replace protocol), point ``latest`` at it, prune all but the ``keep_last`` newest. Returns its dir.

    ``fsync=False`` skips the fsyncs (a crash of the machine, not the process, may then lose it).
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    if not ckpt_root.is_dir():
        ckpt_root.mkdir(parents=True)
        if fsync:
            fsync_path(ckpt_root.parent)
    tmp = ckpt_root / f"step_{step:07d}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_contiguous(model_state), str(tmp / MODEL))
    fault_point("checkpoint_files_partial")
    meta = {**config, "step": step, "versions": versions()}
    (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
    if train_tensors is not None:
        save_file(_contiguous(train_tensors), str(tmp / TRAIN_STATE))
        (tmp / TRAIN_STATE_JSON).write_text(json.dumps(train_json or {}, indent=1))
    if fsync:  # data on disk before the rename makes it visible
        for f in tmp.iterdir():
            fsync_path(f)
        fsync_path(tmp)
    fault_point("checkpoint_tmp_complete")
    final = _unused_step_dir(ckpt_root, step)
    os.rename(tmp, final)
    if fsync:
        fsync_path(ckpt_root)
    fault_point("checkpoint_renamed")
    link_tmp = ckpt_root / f".{LATEST}.tmp-{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    link_tmp.symlink_to(final.name)
    os.replace(link_tmp, ckpt_root / LATEST)  # the commit point: atomic on POSIX
    if fsync:
        fsync_path(ckpt_root)
    fault_point("checkpoint_latest_updated")
    _prune(ckpt_root, keep_last, final)
    return final


def _unused_step_dir(ckpt_root: Path, step: int) -> Path:
    """``step_<step>``, or the next ``step_<step>.<n>`` when a checkpoint of that step exists: the directory
    ``latest`` may point at is never replaced in place."""
    final = ckpt_root / f"step_{step:07d}"
    n = 0
    while final.exists() or final.is_symlink():
        n += 1
        final = ckpt_root / f"step_{step:07d}.{n}"
    return final


def _step_dirs(ckpt_root: Path) -> list[Path]:
    """Directories named like checkpoints (complete or not), oldest first: by step, then re-save number."""
    found = []
    for p in ckpt_root.glob("step_*"):
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and not p.is_symlink():
            found.append(((int(m.group(1)), int(m.group(2) or 0)), p))
    return [p for _, p in sorted(found)]


def is_complete(ckpt: Path) -> bool:
    """Whether ``ckpt`` holds every file a load needs (a checkpoint dir only appears complete; one that is
    not was damaged after the fact, or half-deleted by hand)."""
    return all((ckpt / name).is_file() for name in REQUIRED)


def _prune(ckpt_root: Path, keep_last: int, current: Path) -> None:
    """Delete all but the ``keep_last`` newest steps (a step re-saved keeps only its newest directory), and
    what crashed writers left; never ``current``, which ``latest`` points at."""
    newest: dict[int, Path] = {}
    for p in _step_dirs(ckpt_root):
        m = _STEP_DIR.match(p.name)
        assert m is not None
        newest[int(m.group(1))] = p  # later re-saves win
    keep = {current}
    if keep_last > 0:
        keep |= {newest[s] for s in sorted(newest)[-keep_last:]}
    else:
        keep |= set(newest.values())
    doomed = [p for p in _step_dirs(ckpt_root) if p not in keep]
    for old in doomed:
        trash = old.with_name(f"{old.name}.trash-{os.getpid()}")
        os.rename(old, trash)  # atomic: no half-deleted directory keeps a checkpoint's name
        fault_point("checkpoint_pruning")
        shutil.rmtree(trash, ignore_errors=True)
    # Left by crashed writers (one writer per run: this one's own temp dir was renamed already).
    for stale in [*ckpt_root.glob("step_*.tmp-*"), *ckpt_root.glob("step_*.trash-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    for link in ckpt_root.glob(f".{LATEST}.tmp-*"):
        link.unlink(missing_ok=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` points at under ``run_dir/checkpoints``; if that is missing or incomplete,
    the newest complete step directory (with a warning); None if there is none."""
    ckpt_root = Path(run_dir) / "checkpoints"
    link = ckpt_root / LATEST
    if link.exists():
        target = link.resolve()
        if is_complete(target):
            return target
    done = [p for p in _step_dirs(ckpt_root) if is_complete(p)]
    if not done:
        return None
    if link.is_symlink():
        warnings.warn(f"{link} points at {os.readlink(link)}, which is missing or incomplete; using {done[-1].name}",
                      stacklevel=2)
    return done[-1].resolve()


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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt checkpoint file ({type(e).__name__}: {e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint file (expected a JSON object, got {type(value).__name__})")
    return value


def _read_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # noqa: BLE001  # safetensors raises its own error type (and OSError) for a bad file
        why = " ".join(str(e).split())  # one line
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({type(e).__name__}: {why})") from None


def load_config(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / CONFIG
    if not path.exists():
        raise CheckpointError(f"{ckpt}: no {CONFIG}")
    return _read_json(path)


def load_model_state(ckpt: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(ckpt) / MODEL
    if not path.exists():
        raise CheckpointError(f"{ckpt}: no {MODEL}")
    return _read_safetensors(path, str(device))


def load_train_state(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    t, j = Path(ckpt) / TRAIN_STATE, Path(ckpt) / TRAIN_STATE_JSON
    if not t.exists() or not j.exists():
        raise CheckpointError(f"{ckpt}: no training state to resume from ({TRAIN_STATE}, {TRAIN_STATE_JSON})")
    return _read_safetensors(t), _read_json(j)
