"""Poison isolation of :class:`~trioflow.connectors.rabbitmq.RabbitQueueSource`: what comes back
redelivered is handed over in small, settled groups. See :mod:`trioflow.connectors.rabbitmq`.

RabbitMQ applies a consumer's prefetch (``Basic.Qos``, per consumer) when the consumer starts, so
a new window is a new consumer on the same channel (``Basic.Cancel``, ``Basic.Qos``,
``Basic.Consume``): deliveries the old one had received stay on the channel, un-acked, and come
first through the new one.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, final

import trio

from ._rabbit_acker import Link
from ._rabbit_client import delivery_count

__all__ = ["Isolation", "alone", "settled", "take"]

logger = logging.getLogger("trioflow")


@final
class Isolation:
    """One channel's isolation state: careful (redeliveries in hand) or at full speed."""

    def __init__(self) -> None:
        #: whether redelivered messages are handed over in settled groups
        self.careful = True
        #: messages per group while careful (doubles as groups settle)
        self.window = 1
        #: a group held a message to retry alone: the window stays 1
        self.alone = False
        #: redelivered deliveries received at full speed, not handed over yet
        self.held: deque[Any] = deque()

    def restart(self) -> None:
        """A redelivery at full speed: careful again, from a window of 1."""
        self.careful, self.window, self.alone = True, 1, False


def alone(delivery: Any, limit: int | None) -> bool:
    """Whether a redelivered ``delivery`` must be retried alone: delivered twice before
    (counted on quorum queues), or its next delivery would be past ``max_deliveries``."""
    count = delivery_count(delivery)
    return count >= 3 or (limit is not None and count + 1 > limit)


async def take(it: Any, channel: Any, room: int) -> list[Any]:
    """The next delivery, and up to ``room - 1`` more that have already arrived."""
    batch: list[Any] = [await anext(it)]
    while len(batch) < room and channel.current_buffer_size > 0:
        batch.append(await anext(it))
    return batch


async def settled(link: Link, tags: set[int], wait: float, what: Any) -> bool:
    """Wait until ``tags`` are settled (acked, rejected or requeued), or the channel is lost
    (the broker has them back): True; False (logged) after ``wait`` seconds."""
    with trio.move_on_after(wait):
        while tags & link.outstanding and link.alive:
            await link.changed.wait()
        return True
    logger.warning(
        "trioflow: %r: %d redelivered message(s) not settled after %.0f s (a stage holds "
        "them: a batch without a timeout?); going on at the full prefetch, without poison "
        "isolation for the redeliveries in hand",
        what,
        len(tags & link.outstanding),
        wait,
    )
    return False
