"""The schema machinery: range metadata on dataclass fields, validation, and OmegaConf views.

A config schema is a plain dataclass. Its type hints say what a value may be (`Literal[...]` for modes), and
`param(default, ge=..., le=...)` adds a range. `validate` checks both, then the class's own `check()` (for rules
that tie fields together), and turns the first bad value into one line:

    <key>=<value> is invalid: <why>; valid: <range or choices>

OmegaConf types ints, floats, bools, strings, lists, string-keyed dicts and nested dataclasses, but not `Literal`;
`omegaconf_schema` gives Hydra a twin of a schema with each `Literal` replaced by its value type, and `validate` checks
the choices.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import operator
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from crl.errors import CRLError

T = TypeVar("T")
_OPS = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}
_NOT = {bool: "not true or false", int: "not an integer", float: "not a number", str: "not a string"}
# The largest seed every random generator CRL seeds accepts (NumPy's legacy `np.random.seed` stops at 2**32 - 1).
SEED_MAX = 2**32 - 1


class ConfigError(CRLError):
    """One bad config value, as the one line the CLI prints after `crl: error: `."""

    def __init__(self, key: str, value: Any, why: str, valid: str):
        self.key, self.value, self.why, self.valid = key, value, why, valid
        super().__init__(f"{key}={show(value)} is invalid: {why}; valid: {valid}")

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key read from the root config (`num_envs` -> `ppo.num_envs`)."""
        return ConfigError(prefix + self.key, self.value, self.why, self.valid)


def param(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    min_len: int | None = None,
) -> Any:
    """A dataclass field with a range, checked by `validate` (on each item when the value is a list)."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, min_len=min_len).items() if v is not None}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def seed_param(default: int | None = 0) -> Any:
    """A seed field: an integer in [0, 2**32-1], the range every generator CRL seeds accepts."""
    return param(default, ge=0, le=SEED_MAX)


def group(cls: type, **changes: Any) -> Any:
    """A nested config group, defaulting to its schema's defaults (with `changes`, where a command differs)."""
    return dataclasses.field(default_factory=functools.partial(cls, **changes) if changes else cls)


def show(value: Any) -> str:
    """A value as a user would type it in an override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{show(v)}" for k, v in value.items()) + "}"
    return str(value)


# -- describing and checking one value -----------------------------------------------------------------------
def _optional(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)):
            return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True
    return tp, False


def _bound(v: Any) -> str:
    """A range limit as a user reads it: 4294967295 -> 2**32-1."""
    if isinstance(v, int) and v >= 2**16 and (v + 1) & v == 0:
        return f"2**{v.bit_length()}-1"
    return str(v)


def _range_text(meta: Mapping[str, Any]) -> str:
    b = {k: _bound(v) for k, v in meta.items()}
    lo = f"[{b['ge']}" if "ge" in b else f"({b['gt']}" if "gt" in b else None
    hi = f"{b['le']}]" if "le" in b else f"{b['lt']})" if "lt" in b else None
    if lo and hi:
        return f" in {lo}, {hi}"
    sign = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return "".join(f" {sign[k]} {b[k]}" for k in _OPS if k in b)


def describe(tp: Any, meta: Mapping[str, Any] | None = None) -> str:
    """What a field accepts, for the `valid:` part of an error."""
    meta = meta or {}
    tp, nullable = _optional(tp)
    tail = " or null" if nullable else ""
    if get_origin(tp) is Literal:
        return ", ".join(show(c) for c in get_args(tp)) + tail
    if get_origin(tp) is list:
        size = f" of at least {meta['min_len']}" if "min_len" in meta else ""
        return f"a list{size}, each {describe(get_args(tp)[0], meta)}" + tail
    if get_origin(tp) is dict:
        return f"a mapping of names to {describe(get_args(tp)[1], meta)}" + tail
    if dataclasses.is_dataclass(tp):
        return "keys " + ", ".join(f.name for f in dataclasses.fields(tp)) + tail
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp))) + _range_text(meta) + tail


def _type_ok(value: Any, tp: Any) -> bool:
    tp, nullable = _optional(tp)
    if value is None:
        return nullable
    if get_origin(tp) is Literal:
        return value in get_args(tp)
    if get_origin(tp) is list:
        return isinstance(value, list) and all(_type_ok(v, get_args(tp)[0]) for v in value)
    if get_origin(tp) is dict:
        key, item = get_args(tp)
        return isinstance(value, Mapping) and all(_type_ok(k, key) and _type_ok(v, item) for k, v in value.items())
    if tp is float:  # numbers.Real and Integral also take NumPy scalars, as library callers may pass
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return tp is Any or isinstance(value, tp)


def _in_range(value: Any, meta: Mapping[str, Any]) -> bool:
    if value is None:
        return True
    if isinstance(value, list):
        return len(value) >= meta.get("min_len", 0) and all(_in_range(v, meta) for v in value)
    if isinstance(value, Mapping):
        return all(_in_range(v, meta) for v in value.values())
    return all(op(value, meta[k]) for k, op in _OPS.items() if k in meta)


def why_invalid(value: Any, tp: Any) -> str:
    inner = _optional(tp)[0]
    if get_origin(inner) is Literal:
        return "unknown choice"
    if get_origin(inner) is list and isinstance(value, list):
        return "an item has the wrong type"
    if get_origin(inner) is dict:
        return "an item has the wrong type" if isinstance(value, Mapping) else "not a mapping"
    return "not a list" if get_origin(inner) is list else _NOT.get(inner, "wrong type")


def check_value(key: str, value: Any, tp: Any, meta: Mapping[str, Any] | None = None) -> None:
    """Raise a `ConfigError` naming `key` unless `value` has type `tp` and lies in the range `meta`."""
    meta = meta or {}
    if not _type_ok(value, tp):
        raise ConfigError(key, value, why_invalid(value, tp), describe(tp, meta))
    if not _in_range(value, meta):
        raise ConfigError(key, value, "out of range", describe(tp, meta))


# -- whole configs ---------------------------------------------------------------------------------------------
def validate(obj: Any, prefix: str = "") -> None:
    """Check the type and range of every field (nested groups too), then each class's `check()` from the root
    down, so a rule about the whole config (`crl sae build` takes only sae=default) speaks before a detail."""
    _check_fields(obj, prefix)
    _check_rules(obj, prefix)


def _check_fields(obj: Any, prefix: str) -> None:
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_fields(value, f"{prefix}{f.name}.")
        else:
            check_value(prefix + f.name, value, hints[f.name], f.metadata)


def _check_rules(obj: Any, prefix: str) -> None:
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except ConfigError as e:
            raise e.under(prefix) from None
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_rules(value, f"{prefix}{f.name}.")


def load(cls: type[T], data: Any, prefix: str = "") -> T:
    """`data` (an OmegaConf node, a mapping, or already a `cls`) as a validated `cls`. Missing keys take the
    schema defaults; unknown keys, wrong types and out-of-range values raise one `ConfigError`."""
    obj = data if isinstance(data, cls) else _construct(cls, _plain(data), prefix)
    validate(obj, prefix)
    return obj


def _plain(data: Any) -> Any:
    if data is None:
        return {}
    if hasattr(data, "_metadata"):  # an OmegaConf node; a `???` stays as it is, for the command to report
        from omegaconf import OmegaConf

        return OmegaConf.to_container(data, resolve=True)
    return data


def _construct(cls: type[T], data: Any, prefix: str) -> T:
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(data, Mapping):
        raise ConfigError(prefix.rstrip("."), data, "not a mapping", "keys " + ", ".join(names))
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(prefix + str(unknown[0]), data[unknown[0]], "no such key", ", ".join(names))
    hints = get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        tp = _optional(hints[name])[0]
        if dataclasses.is_dataclass(tp) and value is not None:
            value = _construct(tp, value, f"{prefix}{name}.")
        elif tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # as OmegaConf's typed nodes do
        kwargs[name] = value
    return cls(**kwargs)


def field_type(cls: type, key: str) -> tuple[Any, Mapping[str, Any]] | None:
    """(type, range metadata) of a dotted `key` under the schema `cls`, or None when there is no such field."""
    tp: Any = cls
    meta: Mapping[str, Any] = {}
    for part in key.split("."):
        tp = _optional(tp)[0]
        if get_origin(tp) is dict:  # any key of a mapping: its value type
            tp, meta = get_args(tp)[1], {}
            continue
        if not dataclasses.is_dataclass(tp):
            return None
        f = {f.name: f for f in dataclasses.fields(tp)}.get(part)
        if f is None:
            return None
        tp, meta = get_type_hints(tp)[part], f.metadata
    return tp, meta


# -- Hydra's view of a schema ------------------------------------------------------------------------------------
def _omegaconf_type(tp: Any) -> Any:
    inner, nullable = _optional(tp)
    if get_origin(inner) is Literal:
        inner = type(get_args(inner)[0])  # the choices are checked by `validate`
    elif get_origin(inner) is list:
        inner = list[_omegaconf_type(get_args(inner)[0])]
    elif get_origin(inner) is dict:
        inner = dict[get_args(inner)[0], _omegaconf_type(get_args(inner)[1])]  # type: ignore[misc]
    elif dataclasses.is_dataclass(inner):
        inner = omegaconf_schema(inner)
    return inner | None if nullable else inner


def _to_view(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        view = omegaconf_schema(type(value))
        return view(**{f.name: _to_view(getattr(value, f.name)) for f in dataclasses.fields(value)})
    return value


@functools.cache
def omegaconf_schema(cls: type) -> type:
    """`cls` as OmegaConf can type it (same name, fields and defaults; each `Literal` becomes its value type)."""
    hints = get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            make = f.default_factory
            spec = dataclasses.field(default_factory=lambda make=make: _to_view(make()))
        else:
            spec = dataclasses.field(default=f.default)
        specs.append((f.name, _omegaconf_type(hints[f.name]), spec))
    return dataclasses.make_dataclass(cls.__name__, specs)
