"""The state a :class:`~trioflow.testing.SimulatedBroker` keeps: stored messages, and each
message's state in each consumer group (deliveries, lease, outcome)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, final

import attrs
import trio

__all__ = [
    "AckObserver",
    "Consumer",
    "ConsumerCrashed",
    "GroupState",
    "Published",
    "Receipt",
    "TopicLog",
    "sim_now",
]


#: a delivery's receipt: (message id, delivery count, connection generation)
Receipt = tuple[str, int, int]
#: a consumer connection's key: (topic, group, consumer)
Consumer = tuple[str, str, str]


class ConsumerCrashed(ConnectionError):
    """The simulated consumer was crashed by a fault; its pipeline stops (as a killed process)."""


def sim_now() -> float:
    """The trio clock's time, or 0.0 outside a trio run (publishing before trio runs)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return 0.0


#: the former name (testing/_sim_rabbit.py imports it)
_now = sim_now


@final
@attrs.frozen
class Published:
    """A message as the broker stores it.

    Example:
        >>> broker.messages("orders")[0]
        Published(id='orders/0/0', topic='orders', partition=0, offset=0, data=b'...', ...)
    """

    id: str
    topic: str
    partition: int
    offset: int
    data: Any
    key: Any = None
    headers: Mapping[str, Any] = attrs.field(factory=dict[str, Any])


@final
class _State:
    """One message's state in one group."""

    __slots__ = ("deliveries", "lease_until", "outcome", "owner")

    def __init__(self) -> None:
        self.deliveries = 0
        self.owner: str | None = None
        self.lease_until = math.inf
        #: None (not settled), "acked", "dead_letter" or "discard"
        self.outcome: str | None = None


@final
class GroupState:
    """What a consumer group of one topic has been handed: cursors, leases, message states."""

    __slots__ = (
        "cursor",
        "forced",
        "leased",
        "name",
        "ready_at",
        "returned",
        "states",
        "topic",
    )

    def __init__(self, topic: TopicLog, name: str) -> None:
        self.topic = topic
        self.name = name
        self.states: dict[str, _State] = {}
        #: per partition: the next offset never delivered
        self.cursor = [0] * len(topic.logs)
        #: per partition: offsets visible again (a lease expired, a redeliver, a restart)
        self.returned: list[set[int]] = [set() for _ in topic.logs]
        #: message id -> state, for messages leased (or waiting for a delayed redelivery)
        self.leased: dict[str, _State] = {}
        #: per partition: offsets a fault delivers once more, settled or not
        self.forced: list[set[int]] = [set() for _ in topic.logs]
        #: per partition: when a slow partition may hand out its next chunk
        self.ready_at = [-math.inf] * len(topic.logs)

    def state(self, mid: str) -> _State:
        st = self.states.get(mid)
        if st is None:
            st = self.states[mid] = _State()
        return st


@final
class TopicLog:
    """A topic's stored messages: one log per partition, and every message in publish order."""

    __slots__ = ("logs", "name", "order")

    def __init__(self, name: str, partitions: int) -> None:
        self.name = name
        self.logs: list[list[Published]] = [[] for _ in range(partitions)]
        #: every message, in publish order (what a Redis stream's ids follow)
        self.order: list[Published] = []


AckObserver = Callable[[str, str, int, str, Any, bool], None]
