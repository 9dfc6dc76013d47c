"""Strict, readable configuration: dataclasses filled from YAML and ``--set key=value`` overrides.

Every config in nestlearn is a dataclass with typed fields and an optional ``validate()`` method.
:func:`from_dict` fills one from a mapping and rejects unknown keys and wrongly typed values with a
:class:`~nestlearn.errors.ConfigError` that names the dotted field; nothing is coerced silently
(an int is accepted where a float is expected, nothing else).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from nestlearn.errors import ConfigError

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: ``1e-3`` is a number and only true/false are booleans.

    PyYAML follows YAML 1.1, which reads ``1e-3`` (no dot) as a string and ``on``/``off``/``yes``/``no``
    as booleans; configs are full of such learning rates, and ``off`` is a switch value (D9).
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    """``yaml.safe_load`` with YAML 1.2 numbers and booleans (see :class:`_Loader`)."""
    return yaml.load(text, Loader=_Loader)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, field: str, stored: bool = False) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in that type (``stored``: as
    :func:`from_dict`'s, passed on to nested configs)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, field, stored)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(field, f"expected {_type_name(tp)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(field, f"expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(field, f"expected {len(args)} values, got {len(value)}")
            items = [_convert(v, a, f"{field}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, f"{field}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(field, f"expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=field, stored=stored)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(field, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(field, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(field, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(field, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {field}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "", stored: bool = False) -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and types, then run its ``validate()``.

    Args:
        cls: a dataclass type.
        data: field name -> value (nested mappings for nested dataclasses).
        prefix: dotted path of this config, used in error messages.
        stored: ``data`` was written by an earlier run (a checkpoint's config), not by a user.

    A field listed in ``cls.REMOVED_FIELDS`` (name -> (its old default, advice)) is dropped when it
    holds its old default, so configs and checkpoints written before its removal still load, and is
    an error naming the advice otherwise. A field listed in ``cls.LEGACY_VALUES`` (name -> value) was
    added with a default that changes what older runs computed: a ``stored`` config that lacks it
    takes that value, so it rebuilds the model it was trained as; a user's config takes the default.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    removed = getattr(cls, "REMOVED_FIELDS", {})
    if stored:
        data = {**getattr(cls, "LEGACY_VALUES", {}), **data}
    for key, value in data.items():
        if key in fields:
            continue
        name = f"{prefix}.{key}" if prefix else str(key)
        if key in removed:
            old_default, advice = removed[key]
            if value == old_default:  # a config or checkpoint written before the removal, at the default
                continue
            raise ConfigError(name, f"was removed; {advice}")
        raise ConfigError(name, f"unknown key; allowed keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            continue
        name = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _convert(value, hints[key], name, stored)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        # Nested configs (e.g. ``model.cms``) name their fields by the path they were read from.
        if prefix and "prefix" in inspect.signature(validate).parameters:
            validate(prefix)
        else:
            validate()
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass (possibly nested) as plain dicts/lists, ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", f"file not found: {path}")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError("--config", f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                          f"{err.start}); a config is a YAML file") from None
    except yaml.YAMLError as err:
        # PyYAML's message spans several lines (problem, context, a caret under the line).
        raise ConfigError("--config", f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        # An empty file is more likely a mistake than a request for every default (a long run).
        raise ConfigError("--config", f"{path} is empty; expected a mapping with sections model, data, optim, train")
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a nested dict; values are parsed as YAML scalars or lists."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", f"expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError("--set", f"bad key {key!r}")
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[:-1]), "is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data
