"""Configuration plumbing below every layer: compose a Hydra config, convert it to a typed dataclass.

The CLI and the pipelines (the demo runs the same stages as the verbs) both compose configs through here,
so neither has to import the other.

A component's config dataclass is the one place its options are defined: type, default, and a one-line
doc in a ``#:`` comment above the field (the Sphinx autodoc convention; ``--help`` prints it). The YAML
files in ``configs/`` only choose config groups (task, policy): ``compose(name, overrides, schema)``
registers ``schema`` as the Hydra structured config ``<name>_options`` that the YAML's defaults list
names, so OmegaConf checks and converts every value to its field's type, naming the key.

Values are read with Hydra's override grammar, then converted by OmegaConf, with two rules on top:

- a boolean is exactly true/false, yes/no or 1/0 (any case). OmegaConf alone would also read on/off/y/n
  and any integer (``overwrite=2`` would be true): too loose for options that delete data.
- a value the grammar cannot read (non-ASCII characters, ``=``, ...) that is not a mapping or quoted
  string is read as one quoted string, and a flat list as a list of quoted strings, so ``out=/data/démo``
  means that path and ``train_overrides=[batch_size=8]`` that one override; the grammar's own quoting
  (``out='/data/a,b'``) works as Hydra documents it.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import enum
import functools
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from robot_policy.paths import CONFIG_DIR

if typing.TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

T = TypeVar("T")

#: the spellings of a boolean value (compared lower-case)
BOOLEANS: dict[str, bool] = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
BOOLEAN_RULE = "true/false, yes/no or 1/0"


class ConfigError(ValueError):
    """A bad override or config value; the message names the key."""


# --- the options of a config dataclass: types, defaults, docs -------------------------------------------


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of a config dataclass, as ``--help`` lists it."""

    #: dotted key, e.g. ``optim.lr``
    name: str
    type: Any
    #: the default value; ``dataclasses.MISSING`` (or OmegaConf's ``???``) when there is none
    default: Any
    doc: str


@functools.cache
def _source_docs(cls: type) -> dict[str, str]:
    """The ``#:`` comment lines right above each field in ``cls``'s own source (empty when it has none)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # made with make_dataclass: its docs are in the fields' metadata
        return {}
    lines = source.splitlines()
    node = next((n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)), None)
    docs: dict[str, str] = {}
    for stmt in node.body if node is not None else []:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            above: list[str] = []
            i = stmt.lineno - 2  # lineno is 1-based: the line above is lines[lineno - 2]
            while i >= 0 and lines[i].strip().startswith("#:"):
                above.insert(0, lines[i].strip()[2:].strip())
                i -= 1
            if above:
                docs[stmt.target.id] = " ".join(above)
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its one-line doc: a ``#:`` comment in the source of ``cls`` (or of the dataclass it
    inherits the field from), or ``metadata["doc"]`` for schemas made by :func:`merge_schemas`."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_source_docs(klass))
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.metadata.get("doc"):
            docs[f.name] = f.metadata["doc"]
    return docs


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def field_defaults(cls: type) -> dict[str, Any]:
    """Field name -> default value of dataclass ``cls`` (``dataclasses.MISSING`` for a required field), without
    constructing it (a config's ``__post_init__`` may reject the defaults of its required fields)."""
    return {f.name: _default(f) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def _is_required(default: Any) -> bool:
    return default is dataclasses.MISSING or default == "???"  # "???": omegaconf.MISSING


def options(cls: type, prefix: str = "") -> list[Option]:
    """Every option of dataclass ``cls``; a nested dataclass with a default (``optim``) is flattened to its
    dotted keys (``optim.lr``), one without (a config group such as ``task``) is one option."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out: list[Option] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp, default = hints[f.name], _default(f)
        if dataclasses.is_dataclass(tp) and not _is_required(default):
            out.extend(options(tp, f"{prefix}{f.name}."))  # type: ignore[arg-type]
        else:
            out.append(Option(prefix + f.name, tp, default, docs.get(f.name, "")))
    return out


def merge_schemas(name: str, *classes: type, drop: Collection[str] = ()) -> type:
    """A dataclass with the fields of ``classes``, less ``drop``: the first class that has a field defines its
    type, default and doc. For a verb whose options are a library config plus what the CLI adds (its
    config groups, a field whose CLI default depends on another option), without restating the
    library's defaults."""
    defined: dict[str, tuple[str, Any, dataclasses.Field[Any]]] = {}
    for klass in classes:
        hints, docs = typing.get_type_hints(klass), field_docs(klass)
        for f in dataclasses.fields(klass):  # type: ignore[arg-type]
            if f.name in defined or f.name in drop:
                continue
            kwargs: dict[str, Any] = ({"default_factory": f.default_factory}
                                      if f.default_factory is not dataclasses.MISSING else {"default": f.default})
            defined[f.name] = (f.name, hints[f.name],
                               dataclasses.field(**kwargs, metadata={**f.metadata, "doc": docs.get(f.name, "")}))
    return dataclasses.make_dataclass(name, list(defined.values()), kw_only=True)


# --- types: lookup by key, description, strict checks ----------------------------------------------------


def _split_optional(tp: Any) -> tuple[bool, Any]:
    """``X | None`` -> (True, X); anything else -> (False, tp)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return True, args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007
    return False, tp


def describe_type(tp: Any) -> str:
    """``int | None``, ``list[str]``, ``TaskConfig``: a type as a user reads it in ``--help``."""
    optional, tp = _split_optional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        text = "Any"
    elif origin in (list, tuple, dict):
        inner = ", ".join("..." if a is Ellipsis else describe_type(a) for a in args)
        text = f"{origin.__name__}[{inner}]" if args else origin.__name__
    else:
        text = getattr(tp, "__name__", str(tp))
    return f"{text} | None" if optional else text


def _expected(tp: Any) -> str:
    """What a value of type ``tp`` must be, for an error message."""
    optional, tp = _split_optional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        text = f"a boolean ({BOOLEAN_RULE})"
    elif tp is int:
        text = "an integer"
    elif tp is float:
        text = "a number"
    elif tp is str:
        text = "a string"
    elif tp is Path:
        text = "a path"
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        text = "one of " + ", ".join(m.name for m in tp)
    elif origin is tuple and args and Ellipsis not in args:
        text = f"a list of {len(args)} values, e.g. [a,b]"
    elif origin in (list, tuple):
        text = "a list, e.g. [a,b]"
    elif origin is dict or dataclasses.is_dataclass(tp):
        text = "a mapping, e.g. {key: value}"
    else:
        text = f"a {describe_type(tp)}"
    return f"{text} or null" if optional else text


_KEY_PART = re.compile(r"[^.\[\]]+|\[\d+\]")


def _lookup(schema: Any, key: str) -> Any:
    """The declared type at dotted ``key`` (``optim.lr``, ``dataset.weights[1]``) of dataclass ``schema``;
    ``None`` where the key is not declared, ``Any`` inside an untyped value."""
    tp = schema
    for part in _KEY_PART.findall(key):
        _, tp = _split_optional(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is Any:
            return Any
        if part.startswith("["):
            if origin is list or (origin is tuple and Ellipsis in args):
                tp = args[0] if args else Any
            elif origin is tuple:
                index = int(part[1:-1])
                tp = args[index] if index < len(args) else None
            else:
                return None
        elif dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp).get(part)
        elif origin is dict:
            tp = args[1] if args else Any
        else:
            return None
        if tp is None:
            return None
    return tp


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _check_value(tp: Any, value: Any, key: str) -> None:
    """What OmegaConf reads too loosely: booleans (``2``, ``on``), tuple lengths; recursive into mappings and lists."""
    _, tp = _split_optional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if value is None or tp is Any:
        return  # a null in a non-optional field is OmegaConf's error, with the same wording
    if tp is bool:
        ok = isinstance(value, bool) or (type(value) is int and value in (0, 1)) or (
            isinstance(value, str) and value.lower() in BOOLEANS)
        if not ok:
            raise ConfigError(f"{key}: expected {_expected(tp)}, got {_show(value)}")
    elif dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        hints = typing.get_type_hints(tp)
        for k, v in value.items():
            if k in hints:
                _check_value(hints[k], v, _join(key, str(k)))
    elif origin is dict and isinstance(value, Mapping) and args:
        for k, v in value.items():
            _check_value(args[1], v, _join(key, str(k)))
    elif origin in (list, tuple) and isinstance(value, (list, tuple)):
        if origin is tuple and args and Ellipsis not in args and len(value) != len(args):
            raise ConfigError(f"{key}: expected {_expected(tp)}, got {len(value)} values {list(value)}")
        for i, v in enumerate(value):
            _check_value(_lookup(tp, f"[{i}]") or Any, v, f"{key}[{i}]")


# --- error messages --------------------------------------------------------------------------------------


def _unknown_key(schema: Any, key: str, overrides: Collection[str] = ()) -> str:
    """``unknown option 'stepz'; did you mean 'steps'?``, or the ``+key=`` hint for a mapping's new key."""
    parent, _, leaf = key.rpartition(".")
    parent_type = _split_optional(_lookup(schema, parent) if parent else schema)[1]
    if parent and (parent_type is Any or typing.get_origin(parent_type) is dict):
        given = next((o.lstrip("+") for o in overrides if o.lstrip("+").partition("=")[0] == key), f"{key}=VALUE")
        return f"{parent} has no key {leaf!r}; add one with +{given}"
    if not dataclasses.is_dataclass(parent_type):
        return f"unknown option {key!r}"
    names = [f.name for f in dataclasses.fields(parent_type)]
    scores = {n: difflib.SequenceMatcher(None, leaf, n).ratio() for n in names}
    best = max(scores.values(), default=0.0)
    # the closest, and any as close: "task.camera" -> "task.cameras", not also "task.name"
    close = sorted((n for n, r in scores.items() if r >= max(0.6, best - 0.05)), key=lambda n: -scores[n])[:3]
    if close:
        return f"unknown option {key!r}; did you mean {' or '.join(repr(_join(parent, c)) for c in close)}?"
    return f"unknown option {key!r}; the options{' of ' + parent if parent else ''} are {', '.join(names)}"


def _explain(error: Exception, schema: Any, overrides: Collection[str] = ()) -> str:
    """One line naming the key (and the value) for the errors a user makes; otherwise the full message."""
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, ValidationError

    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        group, _, name = str(error.missing_cfg_file).rpartition("/")
        return f"unknown {group or 'config'} {name!r}; available: {', '.join(error.options)}"
    cause = error.__cause__ if isinstance(error, ConfigCompositionException) and error.__cause__ else error
    key = getattr(cause, "full_key", None)
    if key and schema is not None and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return _unknown_key(schema, key, overrides)
    if key and isinstance(cause, MissingMandatoryValue):
        return f"{key}: required, give {key}=..."
    if key and isinstance(cause, ValidationError):
        tp = _lookup(schema, key) if schema is not None else None
        if tp is not None:
            return f"{key}: expected {_expected(tp)}, got {_show(getattr(cause, 'value', None))}"
        return f"{key}: {getattr(cause, 'msg', str(cause)).strip()}"
    message = str(error)
    if cause is not error:
        message += f" ({cause})"
    return message


# --- overrides -------------------------------------------------------------------------------------------


def _quote(value: str) -> str | None:
    for quote in ("'", '"'):
        if quote not in value and not value.endswith("\\"):
            return f"{quote}{value}{quote}"
    return None


def _quoted(text: str) -> str | None:
    """``key=value`` with the value (or each element of a flat list) in quotes, or None where quoting cannot
    be what was meant (already quoted, nested, a mapping)."""
    key, _, value = text.partition("=")
    if value.startswith("[") and value.endswith("]") and not any(c in value[1:-1] for c in "[]{}'\""):
        items = [_quote(v.strip()) for v in value[1:-1].split(",")] if value[1:-1].strip() else []
        return None if None in items else f"{key}=[{','.join(typing.cast(list[str], items))}]"
    if not value or value[0] in "[{'\"":
        return None
    quoted = _quote(value)
    return None if quoted is None else f"{key}={quoted}"


def _quoting_help(text: str, error: Exception) -> str:
    key, _, value = text.partition("=")
    if value.startswith("[") and value.endswith("]"):
        example = key + "=[" + ",".join(f"'{v.strip()}'" for v in value[1:-1].split(",")) + "]"
    else:
        example = f"{key}='{value}'"
    reason = str(error).splitlines()[0]
    return (f"cannot read {text!r} ({reason}): Hydra's override grammar needs quotes around a value (or a "
            f"list element) with spaces, non-ASCII or special characters, e.g. {example} (in a shell: \"{example}\")")


def parse_override_list(overrides: list[str]) -> list[tuple[str, Override]]:
    """Each ``key=value`` as Hydra will read it: (the text to give Hydra, the parsed override).

    A value the grammar cannot read is quoted for the user when that is unambiguous (see the module
    docstring); otherwise the error explains the quoting.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed: list[tuple[str, Override]] = []
    for text in overrides:
        if "=" not in text and not text.startswith("~"):
            raise ConfigError(f"expected key=value, got {text!r}")
        try:
            override = parser.parse_overrides([text])[0]
        except OverrideParseException as e:
            quoted = _quoted(text)
            try:
                if quoted is None:
                    raise ConfigError(_quoting_help(text, e)) from None
                override, text = parser.parse_overrides([quoted])[0], quoted
            except OverrideParseException:  # quoting the value did not help: the key is what it cannot read
                raise ConfigError(f"cannot read {text!r} ({str(e).splitlines()[0]}): an option's name is a dotted "
                                  "ASCII name, e.g. task.cameras=[front]") from None
        if override.is_sweep_override():
            key, _, value = text.partition("=")
            raise ConfigError(f"{key}: {value!r} reads as several values (a comma separates them in Hydra's "
                              f"grammar): write a list as {key}=[a,b], or quote a string with a comma: {key}='{value}'")
        parsed.append((text, override))
    return parsed


def _check_overrides(schema: Any, parsed: list[tuple[str, Override]]) -> None:
    for text, override in parsed:
        if override.is_delete() or override.package:
            continue
        key = override.key_or_group
        parent = key.rpartition(".")[0]
        if override.is_add() and dataclasses.is_dataclass(_split_optional(_lookup(schema, parent) if parent else
                                                                          schema)[1]) and _lookup(schema, key) is None:
            raise ConfigError(_unknown_key(schema, key, [text]))  # + adds keys to mappings, not options
        tp = _lookup(schema, key)
        if tp is not None:
            _check_value(tp, override.value(), override.key_or_group)


def _hydra_compose(config_name: str, overrides: list[str], config_dir: Path | None, schema: Any) -> DictConfig:
    """Hydra's compose; ``config_dir=None`` searches only the structured configs (no config groups: a
    dataclass field named like a group, e.g. ``task: str``, stays a plain value)."""
    from hydra import compose as hydra_compose
    from hydra import initialize, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    parsed = parse_override_list(overrides)
    if schema is not None:
        _check_overrides(schema, parsed)
    texts = [text for text, _ in parsed]
    try:
        context = (initialize(config_path=None, version_base="1.3") if config_dir is None
                   else initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"))
        with context:
            return hydra_compose(config_name=config_name, overrides=texts)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_explain(e, schema, texts)) from None


def _store(name: str, node: Any) -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=name, node=node)


def compose(config_name: str, overrides: list[str], config_dir: Path = CONFIG_DIR,
            schema: type | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with Hydra ``key=value`` overrides.

    ``schema`` (a dataclass) is registered as the structured config ``<config_name>_options`` that the
    YAML's defaults list starts with: it defines every option's type and default. Without it, that entry
    is empty and the config holds only what the YAML and its groups define (e.g. the task).
    """
    _store(f"{config_name}_options", schema if schema is not None else {})
    return _hydra_compose(config_name, overrides, config_dir, schema)


# --- plain data -> dataclass -----------------------------------------------------------------------------


def _check_keys(cls: Any, data: Mapping[str, Any], prefix: str, root: Any = None) -> None:
    """Every key of ``data`` is a field of ``cls`` (recursively); ``root`` is the top schema, which
    :func:`_unknown_key` resolves the dotted key against."""
    root = cls if root is None else root
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(_unknown_key(root, _join(prefix, str(key))))
        tp = _split_optional(hints[key])[1]
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            _check_keys(tp, value, _join(prefix, key), root)


def _build(tp: Any, value: Any, where: str) -> Any:
    """Typed plain data (OmegaConf's container) -> nested dataclasses; tuples where the field says tuple."""
    _, tp = _split_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        hints = typing.get_type_hints(tp)
        kwargs = {k: _build(hints[k], v, _join(where, k)) for k, v in value.items()}
        try:
            return tp(**kwargs)  # type: ignore[operator]
        except (TypeError, ValueError) as e:  # __post_init__ checks name the field
            raise ConfigError(f"{where}: {e}" if where else str(e)) from None
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        items = [_build(_lookup(tp, f"[{i}]") or Any, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict and isinstance(value, Mapping):
        return {k: _build(_lookup(tp, str(k)) or Any, v, _join(where, str(k))) for k, v in value.items()}
    return value


def to_dataclass(cls: type[T], data: Any, where: str = "") -> T:
    """Plain data (or a DictConfig) -> dataclass ``cls``, recursively, every value converted to its field's
    type by OmegaConf (booleans by :data:`BOOLEANS`); an unknown key names the closest valid ones.
    ``where`` prefixes the messages of the dataclasses' own checks (``collect: out: give ...``)."""
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    _check_keys(cls, data, "")
    _check_value(cls, data, "")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(cls), data)
        plain = OmegaConf.to_container(typed, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(_explain(e, cls)) from None
    return typing.cast(T, _build(cls, plain, where))


def parse_overrides(cls: type[T], overrides: list[str], where: str = "") -> T:
    """``key=value`` overrides on the defaults of dataclass ``cls`` (a config with no YAML), read and typed as
    :func:`compose` reads them; unknown keys fail naming the closest valid ones."""
    name = f"_{cls.__module__}.{cls.__qualname__}".replace(".", "_")
    _store(name, cls)
    return to_dataclass(cls, _hydra_compose(name, overrides, None, cls), where)
