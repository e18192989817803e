"""Shared CLI plumbing: compose a verb's Hydra config from overrides, convert it to a typed dataclass."""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from robot_policy.configuration import ConfigError, compose, parse_overrides, to_dataclass

__all__ = ["ConfigError", "command_line", "compose", "fail", "parse_overrides", "pop_override", "to_dataclass",
           "verb_help"]


def describe_config(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def verb_help(verb: str, doc: str, config_name: str | None) -> str:
    """Help text: the verb's docstring, then its default config (every key can be overridden)."""
    text = doc.strip()
    if config_name is not None:
        try:
            cfg = compose(config_name, [])
            text += "\n\ndefaults (override any with key=value):\n" + OmegaConf.to_yaml(cfg)
        except ConfigError as e:
            text += f"\n\n(could not compose defaults: {e})"
    return text


def command_line(verb: str, argv: list[str]) -> str:
    """The command as a user would retype it, for provenance in outputs."""
    import shlex

    return " ".join(["robot-policy", verb, *(shlex.quote(a) for a in argv)])


def fail(message: str, code: int = 2) -> int:
    print(f"robot-policy: {message}", file=sys.stderr)
    return code


def pop_override(overrides: list[str], key: str) -> tuple[list[str], str | None]:
    """Take ``key=value`` out of ``overrides``. For keys whose name is also a config group (``policy``):
    Hydra would read ``policy=<checkpoint dir>`` as a group choice."""
    rest, value = [], None
    for item in overrides:
        if item.startswith(key + "="):
            value = item.split("=", 1)[1]
        else:
            rest.append(item)
    return rest, value
