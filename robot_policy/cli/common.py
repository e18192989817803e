"""Shared CLI plumbing: compose a verb's Hydra config from overrides, convert it to a typed dataclass, and
the ``--help`` every verb prints (its options from the config dataclasses, the configs that exist)."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from collections.abc import Mapping
from typing import Any

import yaml

from robot_policy.configuration import (
    BOOLEAN_RULE,
    ConfigError,
    compose,
    describe_type,
    options,
    parse_override_list,
    parse_overrides,
    to_dataclass,
)
from robot_policy.paths import CONFIG_DIR, available_configs

__all__ = ["ConfigError", "command_line", "compose", "fail", "parse_overrides", "pop_override", "to_dataclass",
           "verb_help"]

#: the config groups a user chooses from, by ``configs/`` folder, as ``--help`` lists them
CONFIG_GROUPS = {"task": "tasks", "policy": "policies", "embodiment": "embodiments"}

VALUE_RULES = (f"Values: booleans are {BOOLEAN_RULE} (any case; anything else is an error), null is none, lists "
               "are [a,b], mappings {a: 1}. A value (or list element) with spaces, non-ASCII characters or '=' is "
               "read as a string: out=/data/démo, dataset.paths=[/data/é.zarr]; quote one with a comma: "
               "out='/data/a,b' (Hydra's override grammar). A key that is not an option is an error; +key=value "
               "adds a key to a mapping option, e.g. +policy_kwargs.noise=0.0 at eval.")


def _literal(value: Any) -> str:
    """A default as it would be written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value and value.isprintable() and " " not in value else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    widths = [min(max((len(r[i]) for r in rows), default=0), cap) for i, cap in enumerate((30, 18, 16))]
    return [f"  {name:<{widths[0]}}  {tp:<{widths[1]}}  {default:<{widths[2]}}  {doc}".rstrip()
            for name, tp, default, doc in rows]


def group_defaults(config_name: str) -> dict[str, str]:
    """The config-group choices of ``configs/<config_name>.yaml``'s defaults list, e.g. {"task": "...", ...}."""
    with open(CONFIG_DIR / f"{config_name}.yaml") as fh:
        raw = yaml.safe_load(fh) or {}
    return {k: str(v) for entry in raw.get("defaults", []) if isinstance(entry, dict) for k, v in entry.items()}


def _split_keys(tp: Any) -> str:
    """The top-level keys of a config group's dataclass, for ``group.KEY=VALUE``."""
    return ", ".join(f.name for f in dataclasses.fields(tp)) if dataclasses.is_dataclass(tp) else ""


def options_help(schema: type, groups: Mapping[str, str] = {}) -> str:
    """The option table of config dataclass ``schema``: dotted key, type, default, doc. Fields named in
    ``groups`` (field -> chosen config) are config groups, listed after it with their choices."""
    rows: list[tuple[str, str, str, str]] = []
    group_rows: list[str] = []
    for opt in options(schema):
        if opt.name in groups:
            keys = _split_keys(opt.type)
            group_rows.append(f"  {opt.name}=NAME (default {groups[opt.name]}; available: "
                              f"{', '.join(available_configs(opt.name))})\n      {opt.doc}"
                              + (f"\n      keys: {keys}" if keys else ""))
        else:
            default = "(required)" if opt.default == "???" else _literal(opt.default)
            rows.append((opt.name, describe_type(opt.type), default, opt.doc))
    text = "options (key=value):\n" + "\n".join(_table(rows))
    if group_rows:
        text += "\n\nconfig groups (NAME is configs/<group>/NAME.yaml; override its keys as group.KEY=VALUE):\n"
        text += "\n".join(group_rows)
    return text


def available_help() -> str:
    """The tasks, policies and embodiments in ``configs/``."""
    return ("available configs (each task names its embodiment):\n"
            + "\n".join(f"  {label} (configs/{group}): {', '.join(available_configs(group))}"
                        for group, label in CONFIG_GROUPS.items()))


def verb_help(doc: str, schema: type | None, config_name: str | None = None) -> str:
    """A verb's ``--help``: its docstring, every option with type, default and doc (from the config
    dataclasses), the config groups with their default choice, and the configs that exist."""
    parts = [doc.strip()]
    if schema is not None:
        parts.append(options_help(schema, group_defaults(config_name) if config_name else {}))
    parts += [available_help(), textwrap.fill(VALUE_RULES, 110)]
    return "\n\n".join(parts)


def command_line(verb: str, argv: list[str]) -> str:
    """The command as a user would retype it, for provenance in outputs."""
    import shlex

    return " ".join(["robot-policy", verb, *(shlex.quote(a) for a in argv)])


def fail(message: str, code: int = 2) -> int:
    print(f"robot-policy: {message}", file=sys.stderr)
    return code


def pop_override(overrides: list[str], key: str) -> tuple[list[str], str | None]:
    """Take ``key=value`` out of ``overrides``, its value read as Hydra reads it (quotes removed). For keys
    whose name is also a config group (``policy``): Hydra would read ``policy=<checkpoint dir>`` as a group
    choice."""
    rest, value = [], None
    for item in overrides:
        if item.startswith(key + "="):
            ((_, override),) = parse_override_list([item])
            value = str(override.value())
        else:
            rest.append(item)
    return rest, value
