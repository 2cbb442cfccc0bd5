"""Validation and coercion shared by the frozen config dataclasses (pure Python, no JAX).

Errors name the key and the allowed values, e.g. ``eps=2 is out of range; allowed: [0, 1]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping


def check_choice(key: str, value: Any, allowed: Mapping[str, Any] | tuple | list) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; allowed: {sorted(allowed)}")


def range_text(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    left, right = "(" if lo_open else "[", ")" if hi_open or hi is None else "]"
    return f"{left}{lo}, {'inf' if hi is None else hi}{right}"


def check_number(key: str, value: Any, *, lo=None, hi=None, lo_open=False, hi_open=False) -> None:
    rng = range_text(lo, hi, lo_open, hi_open)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number in {rng}, got {value!r}")
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or (
        hi is not None and (value > hi or (hi_open and value == hi)))
    if bad:
        raise ValueError(f"{key}={value!r} is out of range; allowed: {rng}")


def check_integer(key: str, value: Any, *, lo=None, hi=None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer in {range_text(lo, hi)}, got {value!r}")
    check_number(key, value, lo=lo, hi=hi)


def coerce(key: str, value: Any, type_name: Any) -> Any:
    """Strings from YAML (``3e-4`` stays a string there) or the CLI -> the field's type;
    ints are accepted for floats."""
    t = str(type_name)
    if t == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return value
    try:
        if t == "float":
            return float(value)
        if t.startswith("int"):
            return None if value.lower() in ("none", "null") and "None" in t else int(value)
    except ValueError:
        raise ValueError(f"{key}={value!r} is not a valid {t}") from None
    if t == "bool":
        low = value.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"{key}={value!r} is not allowed; allowed: true, false")
    return value


def strict_from_dict(cls, data: Mapping[str, Any]):
    """`cls(**data)` after rejecting unknown keys and coercing strings to the fields' types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; allowed: {sorted(fields)}")
    return cls(**{k: coerce(k, v, fields[k].type) for k, v in data.items()})


class ConfigMixin:
    """`from_dict` (strict: unknown keys rejected, strings coerced), `to_dict` and `replace`
    for the frozen config dataclasses."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Build from a mapping (YAML / ``key=value`` overrides); numeric strings are coerced."""
        return strict_from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)
