"""Awaitable results of plain functions: awaited, or refused where a value is needed.

``tf.sink(lambda x: save(x))`` with ``async def save`` is a plain function that returns a
coroutine. Stage functions' awaitable results are awaited (the call is what the user meant); key
functions must return the key itself, so an awaitable key fails the item with a ``TypeError`` that
says so (and the coroutine is closed: no "never awaited" warning). The checks cost one dict look-up
per result type, not an ``isinstance`` against an ABC per item.
"""

from __future__ import annotations

import inspect
from types import GeneratorType
from typing import Any

__all__ = ["checked_key", "has_awaitables", "is_awaitable"]

_AWAITABLE: dict[type, bool] = {}


def _kind_awaits(kind: type) -> bool:
    known = _AWAITABLE.get(kind)
    if known is None:
        known = _AWAITABLE[kind] = hasattr(kind, "__await__")
    return known


def is_awaitable(value: Any) -> bool:
    """Whether ``value`` can be awaited (by its type, cached; a generator is asked itself: a
    ``@types.coroutine`` generator is awaitable, a plain one is not)."""
    kind = type(value)  # pyright: ignore[reportUnknownVariableType]  (type() of Any)
    if kind is GeneratorType:
        return inspect.isawaitable(value)
    return _kind_awaits(kind)  # pyright: ignore[reportUnknownArgumentType]


def has_awaitables(results: list[Any]) -> bool:
    """Whether any of ``results`` is awaitable: one look-up per distinct type."""
    kinds = set(map(type, results))
    if GeneratorType in kinds and any(map(inspect.isawaitable, results)):
        return True
    return any(_kind_awaits(kind) for kind in kinds)


def checked_key(key: Any, what: str) -> Any:
    """``key`` as returned by the key function ``what``; ``TypeError`` if it is awaitable."""
    if is_awaitable(key):
        close = getattr(key, "close", None)
        if close is not None:
            close()
        raise TypeError(
            f"{what} returned {type(key).__name__} (an awaitable), not a key: key functions "
            "are called as plain functions; use a plain def that returns the key"
        )
    return key
