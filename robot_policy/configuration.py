"""Configuration plumbing below every layer: compose a Hydra config, convert plain data to a typed dataclass.

The CLI and the pipelines (the demo runs the same stages as the verbs) both compose configs through here,
so neither has to import the other.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from robot_policy.paths import CONFIG_DIR

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad override or config value; the message names the key."""


def compose(config_name: str, overrides: list[str], config_dir: Path = CONFIG_DIR) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with Hydra-style ``key=value`` overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"expected key=value overrides, got {bad}")
    try:
        with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(str(e).splitlines()[0]) from None


def to_dataclass(cls: type[T], data: Any, where: str = "") -> T:
    """Plain data (or a DictConfig) -> dataclass ``cls``, recursively; unknown keys are an error."""
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True)
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints.get(key)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = to_dataclass(hint, value, f"{where}.{key}" if where else key)  # type: ignore[arg-type]
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def parse_overrides(cls: type[T], overrides: list[str], where: str = "") -> T:
    """``key=value`` overrides on the defaults of dataclass ``cls`` (typed by OmegaConf); unknown keys fail."""
    from omegaconf.errors import OmegaConfBaseException

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"expected key=value overrides, got {bad}")
    try:
        base = OmegaConf.structured(cls)
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where or cls.__name__}: {str(e).splitlines()[0]}") from None
    return to_dataclass(cls, merged, where)
