"""Poison messages: delivered more often than a source's ``max_deliveries``, handed over already
failed (straight to failure handling, never to a stage), with one reason text for every broker
source."""

from __future__ import annotations

from typing import Any

from .._message import Acknowledger, FailureAction, Message

__all__ = ["poison"]


def poison(
    data: Any,
    metadata: dict[str, Any],
    acknowledger: Acknowledger,
    count: int,
    limit: int,
    *,
    action: FailureAction = "dead_letter",
) -> Message[Any]:
    """A failed message for a delivery past ``max_deliveries=limit`` (its ``count``-th).

    Examples:
        >>> poison(b"...", meta, acker, 6, 5).reason
        'poison: delivered 6 times (max_deliveries=5)'
    """
    reason = f"poison: delivered {count} times (max_deliveries={limit})"
    return Message(data, metadata, acknowledger).fail(reason, action=action)
