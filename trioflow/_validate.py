"""Argument checks shared by the stage constructors: each error names the argument and value."""

from __future__ import annotations

import math
import reprlib
from typing import Any


def positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return value


def optional_positive_int(name: str, value: Any) -> int | None:
    return None if value is None else positive_int(name, value)


def positive_number(name: str, value: Any) -> float:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not value > 0
        or math.isnan(value)
    ):
        raise ValueError(f"{name}={value!r} must be a positive number of seconds")
    return float(value)


def optional_positive_number(name: str, value: Any) -> float | None:
    return None if value is None else positive_number(name, value)


def callable_(name: str, value: Any, where: str) -> Any:
    if not callable(value):
        raise TypeError(f"{where}: {name}={value!r} must be callable")
    return value


def optional_callable(name: str, value: Any, where: str) -> Any:
    return None if value is None else callable_(name, value, where)


_short_repr = reprlib.Repr()
_short_repr.maxstring = _short_repr.maxother = _short_repr.maxlong = 200
_short_repr.maxlevel = 3


def excerpt(value: Any, limit: int = 200) -> str:
    """At most ``limit`` characters of ``repr(value)``, for any value (one whose ``repr`` raises
    reads ``<unrepresentable T>``): what error notes and logs show of an item."""
    try:
        text = _short_repr.repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__qualname__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(value: Any, limit: int = 60) -> str:
    """A short text for a value in reprs and error messages: functions by name."""
    if callable(value) and not isinstance(value, type):
        name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
        if isinstance(name, str):
            return name.replace(".<locals>", "")
        if getattr(type(value), "__repr__", None) is object.__repr__:
            return f"{type(value).__qualname__}()"
    text = repr(value)
    if len(text) <= limit or hasattr(type(value), "__attrs_attrs__"):  # pyright: ignore[reportUnknownArgumentType]
        return text
    return text[: limit - 3] + "..."
