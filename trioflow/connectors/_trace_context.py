"""W3C trace context in broker messages: what sources read, what sinks write.

Sources copy a ``traceparent`` (and ``tracestate``) header or field into the message's metadata
under the same names, looking only at headers that are there; sinks write the context of the
current span (a traced stage's) or, without one, the message's own (see
``trioflow._tracing``). Nothing here imports OpenTelemetry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .._message import Message
from .._tracing import TRACEPARENT, TRACESTATE, current_context, is_message, metadata_context

__all__ = ["TRACEPARENT", "TRACESTATE", "from_header_pairs", "from_headers", "outgoing"]


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return str(value)


def from_headers(headers: Mapping[str, Any], metadata: dict[str, Any]) -> None:
    """Copy ``headers``' ``traceparent`` (and ``tracestate``), when present, into ``metadata``
    as text (header names as W3C spells them: lower case)."""
    parent = headers.get(TRACEPARENT)
    if parent is not None:
        metadata[TRACEPARENT] = _text(parent)
        state = headers.get(TRACESTATE)
        if state is not None:
            metadata[TRACESTATE] = _text(state)


def from_header_pairs(pairs: Iterable[tuple[Any, Any]]) -> dict[str, str]:
    """The trace context among HTTP header ``pairs`` (names in any case, bytes or text)."""
    found: dict[str, str] = {}
    for name, value in pairs:
        key = _text(name).lower()
        if key in (TRACEPARENT, TRACESTATE):
            found[key] = _text(value)
    return found if TRACEPARENT in found else {}


def outgoing(items: list[Any]) -> tuple[list[Any], list[dict[str, str] | None]]:
    """A sink's items as data, and the trace context to send with each: the current span's
    (one per call, when a traced stage runs the sink), else each message's own (for items that
    are :class:`~trioflow.Message`\\ s, a ``messages=True`` sink), else ``None``."""
    current = current_context()
    if not items or not isinstance(items[0], Message):
        return items, [current] * len(items)
    data: list[Any] = []
    contexts: list[dict[str, str] | None] = []
    for item in items:
        if is_message(item):
            data.append(item.data)
            contexts.append(current or metadata_context(item.metadata))
        else:
            data.append(item)
            contexts.append(current)
    return data, contexts
