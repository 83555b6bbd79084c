"""Typed round trips between nested frozen dataclasses and text: dotted overrides, dicts, JSON.

`apply_overrides(config, ["optim.lr=3e-4", "schedule.steps=2000"])` walks the dotted path through the nested
dataclasses and replaces the leaf with `dataclasses.replace`, rebuilding each parent, so every `__post_init__`
check runs again. Values are parsed against the field's annotation:

| annotation                  | accepted text                                           |
|-----------------------------|---------------------------------------------------------|
| `int`                       | `2000`, `2_000`                                         |
| `float`                     | `3e-4`, `0.1`, `5`                                      |
| `bool`                      | `true/false`, `yes/no`, `on/off`, `1/0`                 |
| `str`                       | anything                                                |
| `Literal[...]`              | one of the listed values                                |
| `X | None`                  | `none` / `null`, or an X                                |
| `tuple[int, ...]` etc.      | `0.9,0.999`, `(0.9, 0.999)` or `[0.9, 0.999]`          |

`config_from_dict` reads the same tree back from JSON values (strictly: an unknown key is an error), which is
how the resolved config stored in a checkpoint or a config JSON file is loaded. Every error is a `ValueError`
with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Literal, Sequence, TypeVar, Union

__all__ = ["apply_overrides", "parse_override", "config_to_dict", "config_from_dict", "config_diff"]

T = TypeVar("T")
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_NONE = {"none", "null"}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    """(True, X) for `X | None` / `Optional[X]`, else (False, tp)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (text from the command line, or a JSON value) to the annotation `tp`."""
    optional, tp = _is_optional(tp)
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
        return None
    if value is None:
        raise ValueError(f"{key} may not be null (expected {_type_name(tp)})")
    origin = typing.get_origin(tp)

    if origin is Literal:
        choices = typing.get_args(tp)
        for c in choices:
            if value == c or (isinstance(value, str) and not isinstance(c, str) and value == str(c)):
                return c
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"{key}: {value!r} is not a boolean (true / false)")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{key}: {value!r} is not an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{key}: {value!r} is not a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{key}: {value!r} is not a string")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip()
            if text[:1] in "([" and text[-1:] in ")]":
                text = text[1:-1]
            items: Sequence[Any] = [t.strip() for t in text.split(",") if t.strip()]
        elif isinstance(value, (list, tuple)):
            items = value
        else:
            raise ValueError(f"{key}: {value!r} is not a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(items))
        if len(items) != len(args):
            raise ValueError(f"{key}: expected {len(args)} values, got {len(items)} ({value!r})")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(items, args)))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return config_from_dict(tp, value, prefix=f"{key}.")
        raise ValueError(f"{key} is a section ({tp.__name__}); set one of its fields, e.g. {key}.<field>=...")
    raise ValueError(f"{key}: unsupported annotation {tp!r}")


def _known(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _tree(config: Any) -> dict:
    """A dataclass tree as nested dicts of its (typed) leaf values."""
    return {f.name: _tree(v) if dataclasses.is_dataclass(v := getattr(config, f.name)) else v
            for f in dataclasses.fields(config)}


def _set(tree: dict, cls: type, path: list[str], value: Any, full_key: str) -> None:
    """Coerce `value` to the annotation of the field at `path` and store it in `tree`."""
    name = path[0]
    if name not in {f.name for f in dataclasses.fields(cls)}:
        where = full_key[: len(full_key) - len(".".join(path))].rstrip(".") or "the config"
        raise ValueError(f"unknown config key {full_key!r}: {where} has {_known(cls)}")
    tp = _field_types(cls)[name]
    if len(path) == 1:
        tree[name] = _coerce(value, tp, full_key)
    elif dataclasses.is_dataclass(tp):
        _set(tree[name], tp, path[1:], value, full_key)
    else:
        section = full_key[: len(full_key) - len(".".join(path[1:]))].rstrip(".")
        raise ValueError(f"unknown config key {full_key!r}: {section} is a value, not a section")


def parse_override(text: str) -> tuple[str, str]:
    """'a.b=c' -> ('a.b', 'c')."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} is not of the form key=value (e.g. optim.lr=3e-4)")
    return key.strip(), value.strip()


def apply_overrides(config: T, overrides: Sequence[str] | dict[str, Any]) -> T:
    """Return `config` with dotted-key overrides applied, each type-checked against its field.

    All overrides are applied before the config is rebuilt, so their order does not matter and the checks
    in `__post_init__` see the final values.

    Args:
        config: a (nested) frozen dataclass.
        overrides: 'key=value' strings, or {dotted key: value} with text or already typed values.
    Raises:
        ValueError: unknown key, a value that does not parse, or a check of the rebuilt config failing.
    """
    items = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides]
    if not items:
        return config
    tree = _tree(config)
    for key, value in items:
        _set(tree, type(config), key.split("."), value, key)
    return config_from_dict(type(config), tree)


def config_to_dict(config: Any) -> dict:
    """A JSON-ready dict of a dataclass tree (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build `cls` from a (possibly partial) dict; missing fields keep their defaults, unknown keys fail."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'the config'} must be a JSON object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key {prefix + unknown[0]!r}: {prefix.rstrip('.') or 'the config'} "
                         f"has {_known(cls)}")
    hints = _field_types(cls)
    values = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: {err}") from None


def config_diff(a: Any, b: Any) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (a's value, b's value)} for every leaf that differs between two configs of one type."""
    out: dict[str, tuple[Any, Any]] = {}

    def walk(x: dict, y: dict, prefix: str) -> None:
        for k in x.keys() | y.keys():
            xv, yv = x.get(k), y.get(k)
            if isinstance(xv, dict) and isinstance(yv, dict):
                walk(xv, yv, f"{prefix}{k}.")
            elif xv != yv:
                out[prefix + k] = (xv, yv)

    walk(config_to_dict(a), config_to_dict(b), "")
    return out
