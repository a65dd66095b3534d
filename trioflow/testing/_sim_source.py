"""The source of a :class:`~trioflow.testing.SimulatedBroker`: a drop-in for the broker sources.

It hands over with ``out.send_bulk`` (poison messages, delivered more than ``max_deliveries``
times, handed over already failed in the same call) and its acknowledger acks by receipt with
``ack_ids``, and settles failed messages by their action, as the Redis Streams and RabbitMQ
sources do.
"""

from __future__ import annotations

# pyright: reportPrivateUsage=false
# (a collaborator of SimulatedBroker: it reads and books the broker's private state)
from collections.abc import AsyncGenerator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar, final

import trio

from .._message import FailureAction, Message, check_failure_options
from .._sources import Outlet, Source
from ._simulated import ConsumerCrashed, Receipt, SimulatedBroker

__all__ = ["SimulatedSource"]


@final
class _SimAcker:
    """Acknowledger of one consumer connection: acks by receipt, settles failed messages by
    their action."""

    def __init__(self, spec: SimulatedSource) -> None:
        self.spec = spec

    def __repr__(self) -> str:
        return f"<simulated acker {self.spec.topic!r}/{self.spec.group!r}/{self.spec.consumer!r}>"

    async def _delay(self) -> None:
        delay = self.spec.broker._delay_for(self.spec.consumer)
        if delay > 0:
            await trio.sleep(delay)

    async def ack_ids(self, ids: list[Receipt]) -> None:
        """Ack successful deliveries handed over in bulk, by receipt."""
        await self._delay()
        spec = self.spec
        for receipt in ids:
            spec.broker._ack(spec.topic, spec.group, spec.consumer, receipt)

    async def ack(self, successful: list[Message[Any]], failed: list[Message[Any]]) -> None:
        await self._delay()
        spec = self.spec
        broker = spec.broker
        for m in successful:
            broker._ack(spec.topic, spec.group, spec.consumer, m.metadata["receipt"])
        for m in failed:
            action: FailureAction = m.action or spec.on_failure
            broker._fail(
                spec.topic,
                spec.group,
                spec.consumer,
                m.metadata["receipt"],
                action,
                m.reason,
                spec.dead_letter,
            )


@final
class SimulatedSource(Source[Any]):
    """A consumer of a :class:`SimulatedBroker` topic; a drop-in for the broker sources in tests.

    Args:
        broker: the broker.
        topic: the topic to read.
        group: the consumer group (created on first use, reading the topic from its start).
        consumer: this consumer's name in the group.
        on_failure: what to do with a failed message whose ``action`` is ``None``:
            ``"dead_letter"`` (default), ``"discard"`` or ``"redeliver"``.
        max_deliveries: a message delivered more often than this is dead-lettered without
            reaching the stages (handed over already failed, ``action="dead_letter"``);
            ``None``: no limit.
        count: most messages handed over at once (also bounded by the pipeline's demand).
        partitions: the partitions this consumer reads (default: all, shared with the group).
        dead_letter: the dead-letter topic (default ``<topic>:dead``).
        name: the stage label.

    Metadata of each message: ``id``, ``topic``, ``partition``, ``offset``, ``key``,
    ``headers``, ``delivery_count`` (1 on first delivery), ``deliveries`` (the same),
    ``consumer`` and ``receipt`` (what the acknowledger acks by). Under a hard stop or a crash,
    what was in flight is delivered again after the broker's visibility timeout.

    Examples:
        >>> source = broker.source("orders", "billing", "c0", on_failure="redeliver")
        >>> report = await (source | tf.process(handle) | tf.sink(save)).run(stop=stop)
    """

    _options: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        broker: SimulatedBroker,
        topic: str,
        group: str,
        consumer: str = "c0",
        *,
        on_failure: FailureAction = "dead_letter",
        max_deliveries: int | None = 5,
        count: int = 10,
        partitions: Sequence[int] | None = None,
        dead_letter: str | None = None,
        name: str | None = None,
    ) -> None:
        check_failure_options(on_failure, max_deliveries)
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count={count!r} must be a positive integer")
        self.broker: SimulatedBroker = broker
        self.topic: str = topic
        self.group: str = group
        self.consumer: str = consumer
        self.on_failure: FailureAction = on_failure
        self.max_deliveries: int | None = max_deliveries
        self.count: int = count
        self.partitions: tuple[int, ...] | None = None if partitions is None else tuple(partitions)
        self.dead_letter: str = dead_letter or f"{topic}:dead"
        self.name: str | None = name

    def open(self) -> AbstractAsyncContextManager[Source[Any]]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncGenerator[Source[Any], None]:
        self.broker._connect(self.topic, self.group, self.consumer)
        yield _SimRun(self)

    async def produce(self, out: Outlet) -> None:  # pragma: no cover - open() yields the runner
        raise RuntimeError("SimulatedSource runs through open()")

    @property
    def label(self) -> str:
        return self.name or f"sim:{self.topic}/{self.group}/{self.consumer}"

    def __repr__(self) -> str:
        return f"broker.source({self.topic!r}, {self.group!r}, {self.consumer!r})"


@final
class _SimRun(Source[Any]):
    """One run of a :class:`SimulatedSource`: one connection of its consumer."""

    def __init__(self, spec: SimulatedSource) -> None:
        self.spec = spec
        self.acker = _SimAcker(spec)

    @property
    def label(self) -> str:
        return self.spec.label

    def _check_alive(self, crashes: int) -> None:
        # a broker restart drops the connection too, but the source reconnects; a crash kills it
        spec = self.spec
        if spec.broker._crashes_of(spec.topic, spec.group, spec.consumer) != crashes:
            raise ConsumerCrashed(f"{self.spec.label}: the consumer was crashed by a fault")

    async def produce(self, out: Outlet) -> None:
        spec, broker = self.spec, self.spec.broker
        crashes = broker._crashes_of(spec.topic, spec.group, spec.consumer)
        limit = spec.max_deliveries
        while True:
            room = min(await out.demand(), spec.count)
            while True:
                self._check_alive(crashes)
                taken = broker._take(spec.topic, spec.group, spec.consumer, room, spec.partitions)
                if taken:
                    break
                await broker._wait(spec.topic, spec.group)
            self._check_alive(crashes)  # crashed by a fault this very delivery fired
            data: list[Any] = []
            ids: list[Receipt] = []
            metas: list[dict[str, Any]] = []
            poison: list[Message[Any]] = []
            for msg, count, receipt in taken:
                meta = {
                    "id": msg.id,
                    "topic": msg.topic,
                    "partition": msg.partition,
                    "offset": msg.offset,
                    "key": msg.key,
                    "headers": dict(msg.headers),
                    "delivery_count": count,
                    "deliveries": count,
                    "consumer": spec.consumer,
                    "receipt": receipt,
                }
                if limit is not None and count > limit:
                    poison.append(
                        Message(msg.data, meta, self.acker).fail(
                            f"poison: delivered {count} times (max_deliveries={limit})",
                            action="dead_letter",
                        )
                    )
                    continue
                data.append(msg.data)
                ids.append(receipt)
                metas.append(meta)
            await out.send_bulk(
                data, acknowledger=self.acker, ids=ids, metadata=metas, failed=poison
            )

    def __repr__(self) -> str:
        return repr(self.spec)
