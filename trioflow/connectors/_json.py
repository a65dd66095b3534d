"""JSON for the HTTP and WebSocket sinks: what ``json.dumps`` cannot encode by itself."""

from __future__ import annotations

from typing import Any, cast

import attrs

__all__ = ["is_attrs", "items_of", "jsonable"]


def is_attrs(value: object) -> bool:
    """Whether ``value`` is an attrs instance."""
    return attrs.has(type(value))


def items_of(item: Any) -> list[Any]:
    """The items of a sink's call: a batch (a list) as it is, anything else as one item."""
    if isinstance(item, list):
        return cast("list[object]", item)
    return [item]


def jsonable(value: Any) -> Any:
    """``json.dumps(..., default=jsonable)``: attrs instances as dicts, bytes as UTF-8 text."""
    if is_attrs(value):
        return attrs.asdict(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
