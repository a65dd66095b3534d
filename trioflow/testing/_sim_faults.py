"""Faults a :class:`~trioflow.testing.SimulatedBroker` injects, as values (a *fault schedule*).

A fault schedule is a list of these frozen values. Each fires at a point counted in deliveries
(``after``: once the broker has made that many deliveries in all, the first one counting 1), so
the same schedule with the same seed replays the same run under ``MockClock``. ``after=None``
draws the point from the broker's seed. A list of them shrinks well: drop a fault, lower an
``after``.

* :class:`CrashConsumer`: the consumer dies; what it had in flight comes back after the
  visibility timeout (its acks are dropped), and it is started again;
* :class:`DuplicateDelivery`: a message is delivered a second time while its first delivery is
  in flight;
* :class:`RestartBroker`: every connection drops; what was in flight is delivered again at once;
* :class:`DelayAcks`: acks take ``seconds`` to reach the broker from then on;
* :class:`SlowPartition`: a partition hands out one chunk per ``seconds`` from then on.
"""

from __future__ import annotations

from typing import final

import attrs

__all__ = [
    "BrokerFault",
    "CrashConsumer",
    "DelayAcks",
    "DuplicateDelivery",
    "RestartBroker",
    "SlowPartition",
]


def _non_negative_int_or_none(
    instance: object, attribute: attrs.Attribute[int], value: object
) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"{attribute.name}={value!r} must be a non-negative integer or None")


def _non_negative_number(
    instance: object, attribute: attrs.Attribute[float], value: object
) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{attribute.name}={value!r} must be a non-negative number of seconds")


@final
@attrs.frozen
class CrashConsumer:
    """Kill consumer ``consumer`` after the broker's ``after``-th delivery.

    Its pipeline stops at once (a hard stop: nothing in flight finishes, no ack gets out), the
    messages it held come back after the broker's visibility timeout, and ``check_service``
    starts it again ``restart_delay`` seconds later.

    Example:
        >>> CrashConsumer("c0", after=3)
    """

    consumer: str = "c0"
    after: int | None = attrs.field(default=None, validator=_non_negative_int_or_none)


@final
@attrs.frozen
class DuplicateDelivery:
    """Deliver message number ``message`` (0-based, in publish order on the topic under test)
    twice: on its first delivery the broker makes it visible again at once.

    Example:
        >>> DuplicateDelivery(message=4)
    """

    message: int = attrs.field(default=0, validator=_non_negative_int_or_none)


@final
@attrs.frozen
class RestartBroker:
    """Restart the broker after its ``after``-th delivery: every consumer's connection drops
    (acks sent on it are lost), what was in flight is visible again at once, and for
    ``downtime`` seconds nothing is delivered or acked.

    Example:
        >>> RestartBroker(after=10, downtime=2.0)
    """

    after: int | None = attrs.field(default=None, validator=_non_negative_int_or_none)
    downtime: float = attrs.field(default=0.0, validator=_non_negative_number)


@final
@attrs.frozen
class DelayAcks:
    """From the broker's ``after``-th delivery on, acks of ``consumer`` (``None``: of every
    consumer) take ``seconds`` to reach the broker.

    Example:
        >>> DelayAcks(seconds=5.0, after=0)
    """

    seconds: float = attrs.field(default=1.0, validator=_non_negative_number)
    after: int | None = attrs.field(default=0, validator=_non_negative_int_or_none)
    consumer: str | None = None


@final
@attrs.frozen
class SlowPartition:
    """From the broker's ``after``-th delivery on, partition ``partition`` of the topic under
    test hands out one chunk per ``seconds`` (the others overtake it).

    Example:
        >>> SlowPartition(partition=1, seconds=3.0)
    """

    partition: int = attrs.field(default=0, validator=_non_negative_int_or_none)
    seconds: float = attrs.field(default=1.0, validator=_non_negative_number)
    after: int | None = attrs.field(default=0, validator=_non_negative_int_or_none)


#: any fault of a schedule
BrokerFault = CrashConsumer | DuplicateDelivery | RestartBroker | DelayAcks | SlowPartition
