"""The acknowledger of :class:`~trioflow.connectors.rabbitmq.RabbitQueueSource`: one channel's
deliveries (:class:`Link`), settled in groups, rejected, or requeued later. See
:mod:`trioflow.connectors.rabbitmq`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol, final

import trio

from .._message import FailureAction, Message
from ._rabbit_client import describe, is_lost

if TYPE_CHECKING:
    from .rabbitmq import RabbitQueueSource

__all__ = ["Link", "QueueAcker", "RabbitRun"]

logger = logging.getLogger("trioflow")


@final
class Link:
    """One connection and its channel. Delivery tags belong to a channel: once it is gone, the
    broker has requeued what it had not acked, and its tags mean nothing on the next one."""

    def __init__(self, generation: int) -> None:
        #: 1 for the run's first channel, one more after each reconnect
        self.generation = generation
        self.conn: Any = None
        self.channel: Any = None
        #: delivery tags handed to the pipeline and not yet settled with the broker
        self.outstanding: set[int] = set()
        #: set when the connection is gone (or closed at the end of the run)
        self.lost = trio.Event()
        #: what closed it, if the broker or the network did
        self.error: BaseException | None = None
        #: set (and replaced) each time deliveries are settled or the channel is lost
        self.changed = trio.Event()

    def notify(self) -> None:
        """Wake what waits on :attr:`changed` (deliveries were settled, or the link is lost)."""
        self.changed.set()
        self.changed = trio.Event()

    @property
    def alive(self) -> bool:
        """Whether acks sent on this channel still mean something to the broker."""
        return bool(
            not self.lost.is_set()
            and self.conn is not None
            and self.conn.open
            and self.channel.open
        )


class RabbitRun(Protocol):
    """What the acknowledger needs of a source's run: its settings, its current channel, and
    a way to requeue later."""

    spec: RabbitQueueSource
    link: Link

    def requeue_later(self, link: Link, tags: list[int]) -> None: ...


@final
class QueueAcker:
    """Acknowledger of one run: acks in groups, rejects or (later) requeues failed messages.

    Each delivery is known by its channel's generation and its tag; what belongs to a channel
    that is gone is dropped, not sent (the broker delivers those messages again).
    """

    def __init__(self, run: RabbitRun) -> None:
        self.run = run
        self.acked = 0
        self.rejected = 0
        self.requeued = 0
        self.discarded = 0
        #: settlements dropped because their channel was gone: delivered again
        self.stale = 0
        self._warned = False

    def __repr__(self) -> str:
        return f"<rabbitmq acker {self.run.spec.queue!r}>"

    @property
    def outstanding(self) -> set[int]:
        """Tags of the current channel handed over and not yet settled."""
        return self.run.link.outstanding

    def action_of(self, m: Message[Any]) -> FailureAction:
        """What to do with failed message ``m``: its own action if this queue can take it, else
        the source's default (``requeue_once``: redeliver, unless already redelivered)."""
        spec = self.run.spec
        action = m.action
        if action == "dead_letter" and not spec.can_dead_letter:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "%r: a message failed with action='dead_letter', which this source cannot "
                    "honour (dead_letter=False: its queue has no dead-letter exchange); it gets "
                    "on_failure=%r instead (logged once)",
                    spec,
                    spec.on_failure_mode,
                )
            action = None
        if action is not None:
            return action
        if spec.requeue_once and m.metadata.get("redelivered"):
            return "dead_letter"
        return spec.on_failure

    def _live(self, generation: int, count: int) -> Link | None:
        """The channel of ``generation`` if acks can still go to it; else count ``count``
        settlements as dropped (their messages come again) and give None."""
        link = self.run.link
        if link.generation == generation and link.alive:
            return link
        self.stale += count
        return None

    async def ack_ids(self, ids: list[tuple[int, int]]) -> None:
        """Ack successful deliveries handed over in bulk, by (channel generation, tag)."""
        by_generation: dict[int, list[int]] = {}
        for generation, tag in ids:
            by_generation.setdefault(generation, []).append(tag)
        for generation, tags in by_generation.items():
            link = self._live(generation, len(tags))
            if link is not None:
                await self._settle(link, self._ack_tags(link, tags), len(tags))

    async def ack(self, successful: list[Message[Any]], failed: list[Message[Any]]) -> None:
        groups: dict[int, tuple[list[int], list[Message[Any]]]] = {}
        for m in successful:
            groups.setdefault(_generation(m), ([], []))[0].append(m.metadata["delivery_tag"])
        for m in failed:
            groups.setdefault(_generation(m), ([], []))[1].append(m)
        for generation, (tags, fails) in groups.items():
            link = self._live(generation, len(tags) + len(fails))
            if link is not None:
                await self._settle(link, self._ack_group(link, tags, fails), len(tags) + len(fails))

    async def _settle(self, link: Link, sending: Any, count: int) -> None:
        """Await ``sending`` (frames to ``link``'s channel); if the connection breaks meanwhile,
        those messages are the broker's again: count them, never fail the run for it."""
        try:
            await sending
        except Exception as exc:
            if link.alive and not is_lost(exc):
                raise
            self.stale += count
            logger.info(
                "trioflow: %r: %d settlement(s) not sent, channel %d is gone (%s); the broker "
                "delivers those messages again",
                self.run.spec,
                count,
                link.generation,
                describe(exc),
            )
        finally:
            link.notify()

    async def _ack_group(self, link: Link, tags: list[int], failed: list[Message[Any]]) -> None:
        channel = link.channel
        later: list[int] = []
        for m in failed:
            tag = m.metadata["delivery_tag"]
            action = self.action_of(m)
            if action == "redeliver":
                later.append(tag)  # stays outstanding until requeued: multiple acks skip it
            elif action == "discard":
                tags.append(tag)
                self.discarded += 1
            else:
                link.outstanding.discard(tag)
                await channel.basic_reject(tag, requeue=False)
                self.rejected += 1
        if later:
            self.run.requeue_later(link, later)
        await self._ack_tags(link, tags)

    async def _ack_tags(self, link: Link, tags: list[int]) -> None:
        channel = link.channel
        if tags:
            tags.sort()
            outstanding = link.outstanding
            outstanding.difference_update(tags)
            oldest = min(outstanding) if outstanding else None
            if oldest is None or tags[-1] < oldest:
                await channel.basic_ack(tags[-1], multiple=True)
            else:
                # one multiple ack covers the tags older than every outstanding one
                below = [t for t in tags if t < oldest]
                if below:
                    await channel.basic_ack(below[-1], multiple=True)
                for t in tags[len(below) :]:
                    await channel.basic_ack(t)
            self.acked += len(tags)

    async def requeue(self, link: Link, tags: list[int]) -> None:
        tags = [tag for tag in tags if tag in link.outstanding]
        if not tags or self._live(link.generation, len(tags)) is None:
            return
        await self._settle(link, self._requeue(link, tags), len(tags))

    async def _requeue(self, link: Link, tags: list[int]) -> None:
        for tag in tags:
            link.outstanding.discard(tag)
            await link.channel.basic_reject(tag, requeue=True)
            self.requeued += 1


def _generation(m: Message[Any]) -> int:
    generation: int = m.metadata.get("channel_generation", 1)
    return generation
