"""Policies by name or checkpoint path: ``load_policy("scripted", env)``, ``load_policy("runs/x/ckpt", env)``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from robot_policy.envs.base import ManipulationEnv
from robot_policy.eval.builtin_policies import RandomPolicy, ScriptedPolicy
from robot_policy.models import checkpoint as ckpt
from robot_policy.policies.base import Policy

PolicyFactory = Callable[..., Policy]

_BUILTIN: dict[str, PolicyFactory] = {"scripted": ScriptedPolicy, "random": RandomPolicy}


def register_policy(name: str, factory: PolicyFactory) -> None:
    if name in _BUILTIN:
        raise KeyError(f"policy {name!r} is already registered")
    _BUILTIN[name] = factory


def is_checkpoint(spec: str | Path) -> bool:
    """A checkpoint directory, or a run directory with checkpoints."""
    path = Path(spec)
    return path.is_dir() and ((path / ckpt.CONFIG).exists() or ckpt.latest_checkpoint(path) is not None)


def load_policy(spec: str | Path, env: ManipulationEnv, **kwargs: Any) -> Policy:
    """A built-in policy by name (built for ``env``), or a trained policy from a checkpoint directory.

    ``kwargs`` go to the built-in's constructor, or to ``DiffusionPolicy.from_checkpoint`` (a fine-tuned
    composite's to ``load_composite``: ``base=`` where its base lives now); a checkpoint
    drives ``env``'s embodiment with ``env``'s instruction unless ``embodiment``/``language`` say otherwise
    (a multi-task checkpoint holds several).
    """
    if is_checkpoint(spec):
        from robot_policy.policies.composite import is_composite, load_composite
        from robot_policy.policies.diffusion import DiffusionPolicy

        kwargs.setdefault("embodiment", env.embodiment.name)
        if is_composite(ckpt.load_config(ckpt.resolve_checkpoint(spec))):
            return load_composite(spec, **kwargs)  # its base's instruction is the one it was fine-tuned with
        kwargs.setdefault("language", env.task.language)
        return DiffusionPolicy.from_checkpoint(spec, **kwargs)
    name = str(spec)
    if name not in _BUILTIN:
        choices = f"built-in policies: {', '.join(sorted(_BUILTIN))}, or a checkpoint directory"
        path = Path(name)
        if path.exists():
            raise KeyError(f"policy {name}: not a checkpoint directory (no {ckpt.CONFIG}) nor a run directory "
                           f"with checkpoints; {choices}")
        if "/" in name or isinstance(spec, Path):
            raise KeyError(f"policy {name}: no such checkpoint directory; {choices}")
        raise KeyError(f"unknown policy {name!r}; {choices}")
    return _BUILTIN[name](env, **kwargs)
