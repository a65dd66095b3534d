"""JSON for the HTTP and WebSocket sinks: what ``json.dumps`` cannot encode by itself."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """``json.dumps(..., default=jsonable)``: attrs instances as dicts, bytes as UTF-8 text."""
    if attrs.has(type(value)):
        return attrs.asdict(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
