"""A small typed loader: YAML mapping + environment overrides -> frozen dataclasses.

Every problem becomes one :class:`ConfigError` whose message names the key, where the value
came from (the file or the environment variable) and what was expected, so an operator can fix
it without reading code. Only the types the config tree uses are supported, on purpose.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, field
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")

ENV_PREFIX = "RAMPART__"
"""Environment overrides are ``RAMPART__<SECTION>__<KEY>=value`` (double underscores separate levels)."""

FILE_SUFFIX = "_file"
"""A secret key ``k`` may instead be given as ``k_file: PATH`` (or ``RAMPART__…__K_FILE=PATH``): its value is
read from that file, which is how container secrets (``/run/secrets/…``) reach Rampart."""


class ConfigError(Exception):
    """A configuration value is missing, unknown, of the wrong type or out of range."""

    def __init__(self, key: str, source: str, problem: str) -> None:
        self.key = key
        self.source = source
        self.problem = problem
        super().__init__(f"config error: {key or '<top level>'} in {source}: {problem}")


def bounded(default: T, *, min: float | None = None, max: float | None = None) -> T:
    """A dataclass field with an inclusive numeric range checked at load time."""
    return field(default=default, metadata={"min": min, "max": max})


def matching(default: T, pattern: str, hint: str) -> T:
    """A string field that must match ``pattern`` (``hint`` says what is expected in words)."""
    return field(default=default, metadata={"pattern": re.compile(pattern), "hint": hint})


def internal_field(default: T) -> T:
    """A field set by the program, never by the config file or environment."""
    return field(default=default, metadata={"internal": True})


def path_field() -> Any:
    """An optional file path; relative paths are resolved against the config file's folder."""
    return field(default=None, metadata={"path": True})


def resolve_paths(obj: T, base: str) -> T:
    """A copy of the config tree with every relative path_field made absolute against ``base``."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return obj
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("path") and isinstance(value, str) and not os.path.isabs(value):
            changes[f.name] = os.path.normpath(os.path.join(base, value))
        elif dataclasses.is_dataclass(value):
            changes[f.name] = resolve_paths(value, base)
    return dataclasses.replace(obj, **changes)


def secret_field() -> Any:
    """A field whose value is never printed by :func:`redacted`."""
    return field(default=None, metadata={"secret": True})


class Secret:
    """A string that never shows itself in repr, str, logs or error messages."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def load(cls: type[T], data: Mapping[str, Any], source: str, env: Mapping[str, str]) -> T:
    """Build ``cls`` from a parsed YAML mapping, then apply ``RAMPART__`` overrides from ``env``."""
    merged: dict[str, Any] = _deep_copy(data)
    for name, raw in env.items():
        if name.startswith(ENV_PREFIX):
            path = tuple(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
            _set_path(merged, path, _EnvValue(raw, name))
    return _build(cls, merged, "", source)


def env_secret(env: Mapping[str, str], name: str) -> str | None:
    """The value of the environment variable ``name``, or else the content of the file named by ``name_FILE``.

    Secrets Rampart reads by variable name (key rings, hash keys, backend credentials) can so be
    mounted as files rather than put into the environment, where they leak into `ps` and crash dumps.
    """
    value = env.get(name)
    if value is not None:
        return value
    path = env.get(f"{name}_FILE")
    if path is None:
        return None
    return _read_secret_file(path, f"environment variable {name}_FILE")


def _read_secret_file(path: str, source: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            # Files written by editors and `echo` end with a newline that is not part of the secret.
            return f.read().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError("", source, f"cannot read secret file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("", source, f"secret file {path} is not UTF-8 text") from None


def parse_yaml_file(path: str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; every failure is a ConfigError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError("", path, "file not found (pass --config PATH or set RAMPART_CONFIG)") from None
    except OSError as exc:
        raise ConfigError("", path, f"cannot read file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", path, f"not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", path, f"expected a mapping at the top level, got {_describe(data)}")
    return data


def redacted(obj: object) -> Any:
    """A plain dict/list view of a config tree with every secret replaced by '********'."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            out[f.name] = "********" if (f.metadata.get("secret") and value is not None) else redacted(value)
        return out
    if isinstance(obj, Secret):
        return "********"
    if isinstance(obj, tuple | list):
        return [redacted(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: redacted(v) for k, v in obj.items()}
    return obj


class _EnvValue:
    """A raw string from the environment; parsed with the field's type, reported with its name."""

    def __init__(self, raw: str, name: str, where: str | None = None) -> None:
        self.raw = raw
        self.name = name
        self.where = where or f"environment variable {name}"


def _set_path(root: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = root
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _build(cls: type[T], data: Any, prefix: str, source: str) -> T:
    if isinstance(data, _EnvValue):
        raise ConfigError(prefix, f"environment variable {data.name}", "expected a section, not a single value")
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, source, f"expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    data = _read_secret_files(data, fields, prefix, source)
    for key in data:
        if key not in fields or fields[key].metadata.get("internal"):
            known = ", ".join(sorted(n for n, f in fields.items() if not f.metadata.get("internal")))
            raise ConfigError(_join(prefix, str(key)), _where(data[key], source),
                              f"unknown key (known keys here: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key, source, f.metadata)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(key, source, "required key is missing")
    return cls(**kwargs)


def _read_secret_files(data: Mapping[str, Any], fields: Mapping[str, dataclasses.Field[Any]], prefix: str,
                       source: str) -> Mapping[str, Any]:
    """Replace each ``<secret>_file: PATH`` with ``<secret>: <content of PATH>``."""
    out = dict(data)
    for key in data:
        base = str(key)[:-len(FILE_SUFFIX)] if str(key).endswith(FILE_SUFFIX) else None
        if base is None or key in fields or base not in fields or not fields[base].metadata.get("secret"):
            continue
        value, where = out.pop(key), _where(data[key], source)
        path = value.raw if isinstance(value, _EnvValue) else value
        if not isinstance(path, str) or not path:
            raise ConfigError(_join(prefix, str(key)), where, f"expected a file path, got {_describe(value)}")
        if base in data:
            from_env, base_from_env = isinstance(value, _EnvValue), isinstance(data[base], _EnvValue)
            if from_env == base_from_env:
                raise ConfigError(_join(prefix, base), where, f"set either {base} or {key}, not both")
            if base_from_env:
                continue  # the environment overrides the file, whichever form either uses
        if not isinstance(value, _EnvValue) and not os.path.isabs(path):
            path = os.path.join(os.path.dirname(source), path)  # like every path in the file: relative to it
        try:
            out[base] = _EnvValue(_read_secret_file(path, where), str(key), f"secret file {path} (from {where})")
        except ConfigError as exc:
            raise ConfigError(_join(prefix, str(key)), exc.source, exc.problem) from None
    return out


def _convert(tp: Any, value: Any, key: str, source: str, meta: Mapping[str, Any]) -> Any:
    where = _where(value, source)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if _is_null(value):
            return None
        return _convert(options[0], value, key, source, meta)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, source)  # type: ignore[arg-type]
    if origin is Literal:
        allowed = get_args(tp)
        text = value.raw if isinstance(value, _EnvValue) else value
        if text not in allowed:
            raise ConfigError(key, where, f"expected one of {', '.join(map(str, allowed))}; got {text!r}")
        return text
    if origin is tuple:
        (item_tp, _ellipsis) = get_args(tp)
        items = _as_list(value, key, where)
        return tuple(_convert(item_tp, v, f"{key}[{i}]", source, meta) for i, v in enumerate(items))
    if origin is dict:
        _key_tp, val_tp = get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(key, where, f"expected a mapping, got {_describe(value)}")
        return {str(k): _convert(val_tp, v, _join(key, str(k)), source, meta) for k, v in value.items()}
    if tp is bool:
        return _to_bool(value, key, where)
    if tp is int or tp is float:
        return _to_number(tp, value, key, where, meta)
    if tp is str or tp is Secret:
        text = value.raw if isinstance(value, _EnvValue) else value
        if not isinstance(text, str):
            raise ConfigError(key, where, f"expected a string, got {_describe(text)}")
        pattern = meta.get("pattern")
        if pattern is not None and not pattern.fullmatch(text):
            raise ConfigError(key, where, f"expected {meta['hint']}, got {text!r}")
        return Secret(text) if tp is Secret else text
    raise TypeError(f"settings loader does not support the type {tp!r} of {key}")  # a bug, not user input


def _to_bool(value: Any, key: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, _EnvValue):
        # Only unambiguous words: "false" must never turn into True.
        lowered = value.raw.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(key, where, f"expected true or false, got {value.raw!r}")
    raise ConfigError(key, where, f"expected true or false, got {_describe(value)}")


def _to_number(tp: type, value: Any, key: str, where: str, meta: Mapping[str, Any]) -> int | float:
    kind = "an integer" if tp is int else "a number"
    if isinstance(value, _EnvValue):
        try:
            number: int | float = tp(value.raw.strip())
        except ValueError:
            raise ConfigError(key, where, f"expected {kind}, got {value.raw!r}") from None
    elif isinstance(value, bool) or not isinstance(value, int | float) or (tp is int and isinstance(value, float)):
        raise ConfigError(key, where, f"expected {kind}, got {_describe(value)}")
    else:
        number = tp(value)
    low, high = meta.get("min"), meta.get("max")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = " and ".join(b for b in (f">= {low}" if low is not None else "",
                                          f"<= {high}" if high is not None else "") if b)
        raise ConfigError(key, where, f"expected {kind} {bounds}, got {number}")
    return number


def _as_list(value: Any, key: str, where: str) -> list[Any]:
    if isinstance(value, _EnvValue):
        return [part.strip() for part in value.raw.split(",") if part.strip()]
    if not isinstance(value, list):
        raise ConfigError(key, where, f"expected a list, got {_describe(value)}")
    return value


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, _EnvValue) and value.raw == "")


def _where(value: Any, source: str) -> str:
    """The environment variable that supplied ``value`` (or anything inside it), else the file."""
    if isinstance(value, _EnvValue):
        return value.where
    if isinstance(value, Mapping):
        for inner in value.values():
            where = _where(inner, source)
            if where != source:
                return where
    return source


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _describe(value: Any) -> str:
    if isinstance(value, _EnvValue):
        return repr(value.raw)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}"
