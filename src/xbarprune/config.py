"""Strict construction of (nested) dataclasses from plain mappings, e.g. parsed YAML.

Unknown keys are rejected with their dotted path; values are coerced to the annotated type
where that is unambiguous (int -> float, list -> tuple). YAML is always read with
``yaml.safe_load``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import yaml

from xbarprune.errors import ConfigError, SpecError

T = TypeVar("T")


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file safely, turning I/O and syntax problems into :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        with p.open("r", encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p} is not a UTF-8 text file (byte {exc.start}); a config is YAML text"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {yaml_problem(exc)}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from exc


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line describing a YAML error (its problem and position), without the source dump."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def _kind(value: Any) -> str:
    """The YAML kind of a value, for matching it to one arm of a union type."""
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, str):
        return "str"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list | tuple):
        return "list"
    return "other"


def _accepts(tp: Any) -> set[str]:
    """The YAML kinds a type annotation can take."""
    origin = get_origin(tp)
    if tp is Any:
        return {"mapping", "str", "bool", "number", "list", "other"}
    if origin in (typing.Union, types.UnionType):
        out: set[str] = set()
        for a in get_args(tp):
            out |= _accepts(a)
        return out
    if origin is typing.Literal:
        return {_kind(v) for v in get_args(tp)}
    if dataclasses.is_dataclass(tp) or origin is dict or tp is dict:
        return {"mapping"}
    if origin in (tuple, list) or tp in (tuple, list):
        return {"list", "str", "number", "bool"}  # a scalar is taken as a one-item list
    if tp in (int, float):
        return {"number"}
    if tp is bool:
        return {"bool"}
    if tp is str:
        return {"str"}
    return {"other"}


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        arms = [a for a in args if a is not type(None)]
        # the arms that take this kind of value: the error of the one that fits is the cause
        fitting = [a for a in arms if _kind(value) in _accepts(a)]
        for arg in fitting or arms:
            try:
                return _coerce(arg, value, path)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        kinds = sorted({k for a in arms for k in _accepts(a)} - {"other"})
        if not fitting:
            raise ConfigError(
                f"{path}: {value!r} is a {_kind(value)}; allowed: {' or '.join(kinds)}"
            )
        raise ConfigError(f"{path}: " + "; ".join(str(e) for e in errors))
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{path}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, path)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            value = [value]
        args = get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(kt, k, path): _coerce(vt, v, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        out = float(value) if not isinstance(value, int) or abs(value) < 2**1000 else math.inf
        if not math.isfinite(out):
            raise ConfigError(f"{path} = {value!r}; allowed: a finite number")
        return out
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ConfigError naming them."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    # cls is a dataclass type, but T is unbounded (typeshed's DataclassInstance is private)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in section '{path}'" if path else ""
        raise ConfigError(
            f"unknown config key(s){where}: {', '.join(map(str, unknown))}; "
            f"allowed: {', '.join(sorted(fields))}"
        )
    hints = get_type_hints(cls)
    kwargs = {k: _coerce(hints[k], v, f"{path}.{k}" if path else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except SpecError as exc:
        raise ConfigError(_user_names(str(exc), cls, path)) from exc
    except TypeError as exc:  # missing required field
        raise ConfigError(f"{path or cls.__name__}: {exc}") from exc


def _user_names(msg: str, cls: type, path: str) -> str:
    """A spec's message in the user's config keys: ``CrossbarSpec.rows`` -> ``crossbar.rows``.

    A message that already names a dotted key of this section is kept; otherwise the section
    path is put in front."""
    name = cls.__name__
    if not path:
        return msg
    if f"{name}." in msg:
        return msg.replace(f"{name}.", f"{path}.")
    if msg.startswith(f"{path}.") or msg.startswith(f"{path} "):
        return msg
    # a message naming one of this section's fields under another prefix ("train.lr" for the
    # finetune section): name it under the user's path
    m = re.match(r"[A-Za-z_]\w*(?:\.\w+)*\.(\w+)\b", msg)
    fields = {f.name for f in dataclasses.fields(cls)}
    if m and m.group(1) in fields:
        return f"{path}.{m.group(1)}{msg[m.end() :]}"
    return f"{path}: {msg}"


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict/list structure suitable for JSON/YAML."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
