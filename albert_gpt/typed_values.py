"""One config value against its field: typed, finite and in range, or a one-line ConfigError.

YAML values arrive typed, `--set` values as text; both end here. Used by config.py for every field,
and for names that become paths (`run.name`, a sweep's name, its cells).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from typing import Any, Literal

from albert_gpt.errors import ConfigError

MAX_NAME_CHARS = 100
MAX_INT_DIGITS = 30  # far above any bound a field has; int() of a huge string is slow
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _type_name(tp: Any) -> str:
    if isinstance(tp, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else tp.__name__


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxdict, _SHOWN.maxset = 3, 4, 4, 4, 4
_SHOWN.maxstring, _SHOWN.maxother = 60, 60


def _repr_int(value: int, level: int) -> str:  # repr of a huge int is slow (and refused past 4,300 digits)
    return repr(value) if value.bit_length() <= 200 else f"<integer of {value.bit_length():,} bits>"


setattr(_SHOWN, "repr_int", _repr_int)  # noqa: B010 (an instance attribute, as reprlib documents)


def short_repr(value: Any) -> str:
    """repr of a value, bounded before it is built (a YAML alias bomb or a huge number is never expanded)
    and cut to one short line."""
    try:
        text = _SHOWN.repr(value)
    except (RecursionError, ValueError):
        text = f"<{type(value).__name__}>"
    text = text.replace("\n", "\\n")
    return text if len(text) <= 60 else text[:57] + "..."


def coerce(key: str, value: Any, tp: Any, from_text: bool) -> Any:
    """Convert `value` to type `tp`, or raise ConfigError naming `key`.

    A float written as `3e-4` is a string to PyYAML (YAML 1.1), so number fields accept numeric
    text; NaN and infinity are refused wherever they are written.
    """
    if isinstance(tp, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (from_text and str(value).lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return coerce(key, value, inner[0], from_text)
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, str) and value in choices:
            return value
        raise ConfigError(f"{key}: unknown value {short_repr(value)} (choose one of: {', '.join(choices)})")
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {short_repr(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise bad
    if tp is int:
        return _to_int(key, value, from_text, bad)
    if tp is float:
        return _to_float(key, value, bad)
    if tp is str:
        if isinstance(value, str):
            return value
        if from_text:
            return str(value)
        raise bad
    raise bad


def _to_int(key: str, value: Any, from_text: bool, bad: ConfigError) -> int:
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and not from_text:
        return int(value)
    if isinstance(value, str):
        digits = value.strip().replace("_", "")
        if digits.lstrip("+-").isascii() and digits.lstrip("+-").isdigit():
            if len(digits) > MAX_INT_DIGITS:
                raise ConfigError(f"{key}: a number of {len(digits):,} digits is out of "
                                  f"range (at most {MAX_INT_DIGITS})")
            return int(digits)
        try:
            number = float(value)  # "1e3" is an int written as a float
        except ValueError:
            raise bad from None
        if number.is_integer():  # False for nan and inf
            return int(number)
    raise bad


def _to_float(key: str, value: Any, bad: ConfigError) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise bad from None
    if not math.isfinite(number):
        raise ConfigError(f"{key}: must be a finite number, got {short_repr(value)}")
    return number


def check_field(key: str, f: dataclasses.Field, hint: Any, value: Any) -> None:
    """A coerced value against its field's choices and bounds (`min`, `max`, `min_exclusive`)."""
    meta = f.metadata
    if value is None:
        return
    if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
        choices = ", ".join(typing.get_args(hint))
        raise ConfigError(f"{key}: unknown value {short_repr(value)} (choose one of: {choices})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63 and "max" not in meta:
        raise ConfigError(f"{key}: {short_repr(value)} is out of range (a 64-bit integer at most)")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{key}: {short_repr(value)} is out of range (must be >= {meta['min']})")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{key}: {short_repr(value)} is out of range (must be <= {meta['max']:,})")
    if "min_exclusive" in meta and value <= meta["min_exclusive"]:
        raise ConfigError(f"{key}: {short_repr(value)} is out of range (must be > {meta['min_exclusive']})")
    if meta.get("path_name"):
        check_path_name(key, value)


def check_path_name(key: str, name: str) -> None:
    """`name` must be one plain path component, so a directory named by it stays where it belongs."""
    problem = None
    if not name:
        problem = "is empty"
    elif len(name) > MAX_NAME_CHARS:
        problem = f"has {len(name)} characters (at most {MAX_NAME_CHARS})"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif name.startswith("."):
        problem = "starts with a dot" if name not in (".", "..") else "is a relative path"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains a control character"
    if problem:
        raise ConfigError(f"{key}: {short_repr(name)} {problem}; it must be one plain folder name "
                          f"(no / or \\, not starting with '.', at most {MAX_NAME_CHARS} characters)")


def unknown_key(key: Any, known: list[str]) -> ConfigError:
    """The error for a key no section (or no field) has, with the closest known name."""
    key = str(key)
    if not key.isprintable() or len(key) > 60:  # a stray newline or a pasted blob: show it escaped
        return ConfigError(f"unknown config key {short_repr(key)} (known: {', '.join(sorted(known))})")
    leaf = key.rsplit(".", 1)[-1]
    prefix = key[: len(key) - len(leaf)]
    match = difflib.get_close_matches(leaf, known, n=1)
    hint = f" (did you mean {prefix}{match[0]}?)" if match else f" (known: {', '.join(sorted(known))})"
    return ConfigError(f"unknown config key {key}{hint}")
