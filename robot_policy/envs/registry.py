"""Task registry: env classes register under a key; task configs (``configs/task/*.yaml``) name that key.

    @register_env("pybullet_bimanual_lift")
    class PybulletBimanualLift(ManipulationEnv): ...

    env = make_env("pybullet_bimanual_lift", cameras=["front"])
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from robot_policy.envs.base import ManipulationEnv, Randomization, TaskConfig
from robot_policy.paths import CONFIG_DIR, available_configs, resolve_config

E = TypeVar("E", bound=type[ManipulationEnv])

_ENV_CLASSES: dict[str, type[ManipulationEnv]] = {}
# Modules that register env classes on import; imported lazily so importing the registry does not pull
# in every simulator.
_ENV_MODULES: dict[str, str] = {
    "pybullet_bimanual_lift": "robot_policy.envs.pybullet_lift",
    "robosuite_two_arm": "robot_policy.envs.robosuite_tasks",
}


def register_env(key: str) -> Callable[[E], E]:
    def deco(cls: E) -> E:
        if key in _ENV_CLASSES and _ENV_CLASSES[key] is not cls:
            raise KeyError(f"env {key!r} is already registered by {_ENV_CLASSES[key].__qualname__}")
        _ENV_CLASSES[key] = cls
        return cls
    return deco


def env_class(key: str) -> type[ManipulationEnv]:
    if key not in _ENV_CLASSES and key in _ENV_MODULES:
        importlib.import_module(_ENV_MODULES[key])
    if key not in _ENV_CLASSES:
        raise KeyError(f"unknown env {key!r}; registered: {', '.join(sorted(set(_ENV_CLASSES) | set(_ENV_MODULES)))}")
    return _ENV_CLASSES[key]


def available_tasks(config_dir: Path = CONFIG_DIR) -> list[str]:
    return available_configs("task", config_dir)


def task_config_from_dict(raw: dict[str, Any], where: str = "task") -> TaskConfig:
    """Build a TaskConfig from plain data; an unknown or missing key is an error naming it."""
    names = {f.name for f in dataclasses.fields(TaskConfig)}
    unknown = set(raw) - names
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
    raw = dict(raw)
    rnd = raw.pop("randomization", None) or {}
    rnd_names = {f.name for f in dataclasses.fields(Randomization)}
    if set(rnd) - rnd_names:
        raise ValueError(f"{where}.randomization: unknown key(s) {sorted(set(rnd) - rnd_names)}; "
                         f"allowed: {sorted(rnd_names)}")
    try:
        return TaskConfig(**raw, randomization=Randomization(**rnd))
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def load_task_config(name_or_path: str | Path, config_dir: Path = CONFIG_DIR, **overrides: Any) -> TaskConfig:
    """``configs/task/<name>.yaml`` (or a YAML path) plus keyword overrides -> TaskConfig."""
    path = resolve_config("task", name_or_path, config_dir)
    with open(path) as fh:
        raw = yaml.safe_load(fh)
    rnd_over = overrides.pop("randomization", None)
    raw.update(overrides)
    if rnd_over:
        raw["randomization"] = {**(raw.get("randomization") or {}), **rnd_over}
    return task_config_from_dict(raw, where=str(path))


def make_env(task: str | Path | TaskConfig, **overrides: Any) -> ManipulationEnv:
    """Instantiate a task by name, YAML path or config. Overrides replace top-level task keys."""
    cfg = task if isinstance(task, TaskConfig) else load_task_config(task, **overrides)
    if isinstance(task, TaskConfig) and overrides:
        cfg = dataclasses.replace(task, **overrides)
    return env_class(cfg.env)(cfg)
