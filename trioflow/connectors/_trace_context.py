"""W3C trace context in broker messages: what sources read, what sinks write.

Sources copy a ``traceparent`` (and ``tracestate``) header or field into the message's metadata
under the same names, looking only at headers that are there; sinks write the context of the
current span (a traced stage's) or, without one, the message's own (see
``trioflow._tracing``). Nothing here imports OpenTelemetry.

What a producer wrote is checked on read: a ``traceparent`` that is not W3C's
``version-trace_id-parent_id-flags`` (lower-case hex, version not ``ff``, ids not all zeros) is
dropped with its ``tracestate``, and a ``tracestate`` that is not printable ASCII of at most
:data:`MAX_TRACESTATE` characters is dropped alone: a sink forwards the message's context as a
header, and ``"00-abc\n-01"`` there would fail every request (``Illegal header value``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .._message import Message, is_message
from .._tracing import TRACEPARENT, TRACESTATE, current_context, metadata_context

__all__ = [
    "MAX_TRACESTATE",
    "TRACEPARENT",
    "TRACESTATE",
    "checked",
    "from_header_pairs",
    "from_headers",
    "outgoing",
]

logger = logging.getLogger("trioflow")

#: longest ``tracestate`` kept (W3C: 32 members; 512 characters is what it asks to propagate)
MAX_TRACESTATE = 512
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_TRACESTATE = re.compile(r"[\x20-\x7e]*")
_warned: set[str] = set()


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return str(value)


def _valid_parent(value: str) -> bool:
    found = _TRACEPARENT.fullmatch(value)
    return (
        found is not None
        and not value.startswith("ff")
        and found[1] != "0" * 32
        and found[2] != "0" * 16
    )


def _drop(what: str, value: str) -> None:
    if what not in _warned:  # once per process: a producer that writes one writes many
        _warned.add(what)
        logger.warning(
            "trioflow: dropped an invalid %s %r (W3C trace context) a producer sent; "
            "later ones are dropped silently",
            what,
            value[:80],
        )


def checked(parent: Any, state: Any = None) -> dict[str, str]:
    """The trace context ``parent`` (``traceparent``) and ``state`` (``tracestate``, or
    ``None``) give, as text, with what is not valid W3C left out (see the module docs): ``{}``
    for an invalid ``traceparent``.

    Examples:
        >>> checked("00-abc\n-01")
        {}
    """
    text = _text(parent)
    if not _valid_parent(text):
        _drop(TRACEPARENT, text)
        return {}
    found = {TRACEPARENT: text}
    if state is not None:
        text = _text(state)
        if len(text) <= MAX_TRACESTATE and _TRACESTATE.fullmatch(text):
            found[TRACESTATE] = text
        else:
            _drop(TRACESTATE, text)
    return found


def from_headers(headers: Mapping[str, Any], metadata: dict[str, Any]) -> None:
    """Copy ``headers``' ``traceparent`` (and ``tracestate``), when present and valid, into
    ``metadata`` as text (header names as W3C spells them: lower case)."""
    parent = headers.get(TRACEPARENT)
    if parent is not None:
        metadata.update(checked(parent, headers.get(TRACESTATE)))


def from_header_pairs(pairs: Iterable[tuple[Any, Any]]) -> dict[str, str]:
    """The trace context among HTTP header ``pairs`` (names in any case, bytes or text)."""
    found: dict[str, str] = {}
    for name, value in pairs:
        key = _text(name).lower()
        if key in (TRACEPARENT, TRACESTATE):
            found[key] = _text(value)
    if TRACEPARENT not in found:
        return {}
    return checked(found[TRACEPARENT], found.get(TRACESTATE))


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
