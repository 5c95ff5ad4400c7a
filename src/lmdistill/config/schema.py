"""Config machinery: strict dataclass construction from YAML data, ``a.b=c`` overrides, serialisation.

Schema-free: every recipe section (shared or a method's own) is a dataclass validated in ``__post_init__``;
``from_dict`` builds it strictly (an unknown key is an error with a "did you mean"), ``apply_overrides`` edits
the parsed YAML before validation (list items addressed by index, e.g. ``teachers.members.0.train.epochs=2``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

import yaml

from lmdistill.registry import did_you_mean

__all__ = [
    "ConfigError",
    "apply_overrides",
    "check",
    "check_finite",
    "flatten",
    "from_dict",
    "to_dict",
    "to_yaml",
]


class ConfigError(ValueError):
    """A recipe key or value is wrong; the message names the key path and what was expected."""


def check(cond: bool, key: str, msg: str) -> None:
    """Raise ``ConfigError("<key>: <msg>")`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def check_finite(value: float | None, key: str) -> None:
    """Raise ``ConfigError`` for a NaN or infinite number (YAML reads ``.inf`` and ``.nan`` as floats)."""
    check(value is None or math.isfinite(value), key, f"must be a finite number, got {value}")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _convert(value: Any, tp: Any, key: str) -> Any:
    inner, optional = _unwrap_optional(tp)
    if value is None:
        check(optional, key, "may not be null")
        return None
    origin = typing.get_origin(inner)
    if origin in (typing.Union, types.UnionType):  # e.g. str | list[int]: the first alternative that fits
        errors = []
        for alternative in typing.get_args(inner):
            try:
                return _convert(value, alternative, key)
            except ConfigError as err:
                errors.append(str(err).split(": ", 1)[-1])
        raise ConfigError(f"{key}: {' or '.join(errors)}")
    if dataclasses.is_dataclass(inner):
        return from_dict(inner, value, prefix=key)
    if origin is list:
        check(isinstance(value, list), key, f"expected a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(inner)
        return [_convert(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        check(isinstance(value, dict), key, f"expected a mapping, got {type(value).__name__}")
        key_tp, value_tp = typing.get_args(inner)
        return {_convert(k, key_tp, f"{key}.{k}"): _convert(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is Literal:
        choices = typing.get_args(inner)
        check(value in choices, key, f"must be one of {list(choices)}, got {value!r}")
        return value
    if inner is bool:
        check(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if inner is int:
        check(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return value
    if inner is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        check(
            isinstance(value, (int, float)) and not isinstance(value, bool), key, f"expected a number, got {value!r}"
        )
        return float(value)
    if inner is str:
        check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported config type {inner!r}")  # pragma: no cover - a bug in this module


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a plain dict, strictly.

    Args:
        cls (type): a config dataclass, e.g. ``RecipeConfig``.
        data (dict): parsed YAML.
        prefix (str): key path of ``data`` for error messages.

    Returns:
        An instance of ``cls``, validated by its ``__post_init__``.

    Raises:
        ConfigError: on an unknown or missing key, a wrong type or an out-of-range value; the message names
            the full key path (e.g. ``teachers.members.0.train.lr``) and, for a typo, the closest valid keys.
    """
    where = prefix or "recipe"
    if hasattr(cls, "normalize"):  # presets, list shorthands
        data = cls.normalize(data)
    check(isinstance(data, dict), where, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"{prefix + '.' if prefix else ''}{key}: unknown key.{did_you_mean(str(key), list(fields))} "
                f"Valid keys here: {', '.join(fields)}"
            )
    kwargs = {}
    for name, f in fields.items():
        path = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}: missing required key")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix + '.' if prefix else ''}{err}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict form of a config dataclass (the inverse of ``from_dict``)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    """YAML text of a config dataclass; ``from_dict(cls, yaml.safe_load(to_yaml(cfg))) == cfg``."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to a parsed recipe dict (in place) and return it.

    Values are parsed as YAML (``3`` is an int, ``null`` is None, ``[a, b]`` a list). List items are addressed
    by index (``teachers.members.1.train.lr=1e-4``).

    Raises:
        ConfigError: on a malformed override or a path through a missing key or index.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE")
        path, raw = item.split("=", 1)
        parts = path.strip().split(".")
        value = yaml.safe_load(raw) if raw.strip() else None
        node: Any = data
        for i, part in enumerate(parts):
            here = ".".join(parts[: i + 1])
            last = i == len(parts) - 1
            if isinstance(node, list):
                check(part.isdigit() and int(part) < len(node), here, f"no list item {part} (length {len(node)})")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value  # an unknown key is reported by from_dict, with suggestions
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise ConfigError(f"{here}: cannot set a key inside a {type(node).__name__}")
    return data


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.0.c": value}`` leaves of nested dicts and lists (for naming the keys two recipes differ at)."""
    if isinstance(data, dict):
        return {k: v for key, val in data.items() for k, v in flatten(val, f"{prefix}{key}.").items()}
    if isinstance(data, list):
        return {k: v for i, val in enumerate(data) for k, v in flatten(val, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): data}
