"""``SimulatedRabbit``: AMQP connections to a :class:`SimulatedBroker`, for the real
:class:`~trioflow.connectors.rabbitmq.RabbitQueueSource` (``connection=SimulatedRabbit(...)``).

It answers what the source asks of serena's connection and channel (``open_channel``,
``Basic.Qos``, ``basic_consume``, ``basic_ack``, ``basic_reject``, ``basic_nack``, the queue and
exchange declarations) with RabbitMQ's semantics over the broker's topics (a topic is a queue,
its consumer group the queue's competing consumers):

* the broker *pushes*: a channel holds at most ``prefetch`` un-acked deliveries (those in its
  client buffer and those handed to the pipeline), and gets more as they are settled. Nothing
  comes back on a timer (RabbitMQ has no visibility timeout): an un-acked delivery returns to
  the queue, at its head and flagged ``redelivered``, when its channel closes, its consumer is
  crashed, or the broker restarts;
* ``basic_ack`` settles by delivery tag (``multiple=True``: every tag up to it);
  ``basic_reject``/``basic_nack`` with ``requeue=True`` puts the message back at once;
  ``requeue=False`` dead-letters it when the queue has a dead-letter exchange (declared with
  ``x-dead-letter-exchange``, or ``dead_letter_exchange=True`` for a queue the source does not
  declare): it is published to the broker's dead-letter topic ``<queue>:dead`` with the reason
  ``"rejected"``, as RabbitMQ's ``x-death`` says; without one the message is dropped (a discard);
* ``delivery_count``: a quorum queue (``x-queue-type: quorum`` in the declaration, or
  ``queue_type="quorum"``) sends ``x-delivery-count`` (the deliveries before this one) on a
  redelivery; a classic queue only flags it, as the real ones do;
* the broker's faults apply: a crashed consumer's connection raises out of its ``async with``
  (its deliveries go back to the queue at once) and that client refuses to connect again (the
  process is dead: ``check_service`` builds a new one); a broker restart drops every connection
  and refuses new ones during the downtime (the source reconnects; settlements on the old
  channel are lost, those messages come again); delayed acks delay each ack, reject and nack.
  Slow partitions do not apply (a queue has no partitions).

A discard is a ``Basic.Ack`` in RabbitMQ, like a success: the broker cannot tell them apart, so
``check_service`` counts a discarded message as acked. Message bodies are the broker's data:
``bytes`` as they are, ``str`` in UTF-8, anything else as JSON.
"""

from __future__ import annotations

# pyright: reportPrivateUsage=false
# (a collaborator of SimulatedBroker: it reads and books the broker's private state)
import json
import math
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, final

import attrs
import trio

from ._sim_model import ConsumerCrashed, Published, _now
from ._simulated import SimulatedBroker

__all__ = ["SimulatedRabbit"]


@final
@attrs.frozen
class _Envelope:
    delivery_tag: int
    redelivered: bool
    exchange_name: str
    routing_key: str


@final
@attrs.frozen
class _Header:
    headers: Mapping[str, Any]
    message_id: str | None = None
    content_type: str | None = None


@final
@attrs.frozen
class _Delivery:
    """A delivery as serena gives it: ``envelope``, ``header``, ``body``."""

    envelope: _Envelope
    header: _Header
    body: bytes


def _body(data: Any) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    return json.dumps(data).encode()


@final
class SimulatedRabbit:
    """A connection factory for ``RabbitQueueSource(..., connection=SimulatedRabbit(broker))``:
    the source's own logic (prefetch, grouped acks, requeues, dead letters, poison limits,
    reconnects) runs against the broker's faults, with RabbitMQ's semantics (see the module).

    Args:
        broker: the broker whose topics are the queues.
        consumer: the consumer this client is (its deliveries, crashes and ack delays).
        group: the broker's consumer group standing for the queue's consumers (``check_service``
            uses ``"service"``: pass ``source.group``).
        queue_type: ``"quorum"`` (deliveries counted in ``x-delivery-count``) or ``"classic"``
            (only ``redelivered``); ``None``: as the source declares the queue (classic when it
            does not declare it).
        dead_letter_exchange: whether a queue the source does not declare has a dead-letter
            exchange (a declared queue has one when its arguments name it).

    Examples:
        >>> def build(source):
        ...     rabbit = RabbitQueueSource(
        ...         source.topic,
        ...         connection=SimulatedRabbit(
        ...             source.broker, consumer=source.consumer, group=source.group
        ...         ),
        ...         on_failure="redeliver",
        ...     )
        ...     return rabbit | tf.sink(save)
        >>> check_service(build, broker, "orders", expect=[], consumers=2)
    """

    def __init__(
        self,
        broker: SimulatedBroker,
        *,
        consumer: str = "c0",
        group: str = "service",
        queue_type: str | None = None,
        dead_letter_exchange: bool = True,
    ) -> None:
        if queue_type not in (None, "classic", "quorum"):
            raise ValueError(f"queue_type={queue_type!r} must be 'classic', 'quorum' or None")
        self.broker = broker
        self.consumer = consumer
        self.group = group
        self.queue_type = queue_type
        self.dead_letter_exchange = dead_letter_exchange
        #: the consumer's crash count when this client first connected (None: not yet)
        self._crashes: int | None = None
        #: queue -> its declared arguments
        self.declared: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"SimulatedRabbit({self.broker!r}, consumer={self.consumer!r}, group={self.group!r})"

    def __call__(self, source: Any, **options: Any) -> AbstractAsyncContextManager[_Connection]:
        """A connection for ``source`` (a ``RabbitQueueSource``); serena's options are ignored."""
        return self._connection(str(source.queue))

    @asynccontextmanager
    async def _connection(self, queue: str) -> AsyncGenerator[_Connection, None]:
        broker = self.broker
        await trio.lowlevel.checkpoint()
        if _now() < broker._down_until:
            raise ConnectionRefusedError("the simulated broker is restarting: connection refused")
        crashes = broker._crashes_of(queue, self.group, self.consumer)
        if self._crashes is None:
            self._crashes = crashes
        elif crashes != self._crashes:
            raise ConsumerCrashed(f"rabbitmq {queue}/{self.consumer}: the consumer was crashed")
        broker._connect(queue, self.group, self.consumer)
        conn = _Connection(self, queue, broker._generation[(queue, self.group, self.consumer)])
        try:
            async with trio.open_nursery() as nursery:
                # as serena's task group: a lost connection cancels the body and raises here
                nursery.start_soon(conn._watch)
                try:
                    yield conn
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            conn._close()

    def _queue_type(self, queue: str) -> str:
        if self.queue_type is not None:
            return self.queue_type
        return str(self.declared.get(queue, {}).get("x-queue-type", "classic"))

    def _dead_letters(self, queue: str) -> bool:
        if queue in self.declared:
            return bool(self.declared[queue].get("x-dead-letter-exchange"))
        return self.dead_letter_exchange


@final
class _Connection:
    """One connection: open until the broker restarts, its consumer is crashed, or it closes."""

    def __init__(self, client: SimulatedRabbit, queue: str, generation: int) -> None:
        self.client = client
        self.queue = queue
        self.generation = generation
        self.closed = False
        self.channels: list[_Channel] = []

    @property
    def open(self) -> bool:
        """Whether the connection is up (False once the broker dropped it)."""
        c = self.client
        key = (self.queue, c.group, c.consumer)
        return (
            not self.closed
            and c.broker._generation.get(key) == self.generation
            and c.broker._crashes_of(*key) == c._crashes
            and _now() >= c.broker._down_until
        )

    async def _watch(self) -> None:
        broker = self.client.broker
        while self.open:
            await broker._wait(self.queue, self.client.group)
        c = self.client
        if broker._crashes_of(self.queue, c.group, c.consumer) != c._crashes:
            raise ConsumerCrashed(f"rabbitmq {self.queue}/{c.consumer}: the consumer was crashed")
        raise ConnectionResetError("the simulated broker restarted: connection reset")

    @asynccontextmanager
    async def open_channel(self) -> AsyncGenerator[_Channel, None]:
        """A channel (closing it returns its un-acked deliveries to the queue)."""
        await trio.lowlevel.checkpoint()
        self._check()
        channel = _Channel(self)
        self.channels.append(channel)
        try:
            yield channel
        finally:
            channel._close()

    def _check(self) -> None:
        if not self.open:
            raise ConnectionResetError("the simulated connection is closed")

    def _close(self) -> None:
        self.closed = True
        for channel in self.channels:
            channel._close()


@final
class _Channel:
    """One channel: its prefetch window, client buffer and un-acked delivery tags."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.client = conn.client
        self.broker = conn.client.broker
        self.queue = conn.queue
        self.prefetch = 0  # unlimited until Basic.Qos
        self.consuming = False
        self.closed = False
        self.next_tag = 1
        #: tag -> (message, delivery count), delivered and not settled
        self.unacked: dict[int, tuple[Published, int]] = {}
        self.buffer: deque[_Delivery] = deque()

    @property
    def open(self) -> bool:
        """Whether the channel (and its connection) is open."""
        return not self.closed and self.conn.open

    @property
    def current_buffer_size(self) -> int:
        """Deliveries pushed to the client and not yet taken by the consumer."""
        self._fill()
        return len(self.buffer)

    # -- declarations ----------------------------------------------------------------------

    async def exchange_declare(self, name: str, *args: Any, **options: Any) -> None:
        await self._op()

    async def queue_bind(self, queue: str, exchange: str, routing_key: str = "") -> None:
        await self._op()

    async def queue_declare(
        self, name: str, *, durable: bool = False, arguments: Mapping[str, Any] | None = None
    ) -> None:
        await self._op()
        self.client.declared[name] = dict(arguments or {})

    async def basic_qos(self, *, prefetch_count: int, global_: bool = False) -> None:
        """``Basic.Qos``: at most ``prefetch_count`` un-acked deliveries on this channel."""
        await self._op()
        self.prefetch = prefetch_count

    async def _op(self) -> None:
        await trio.lowlevel.checkpoint()
        if not self.open:
            raise ConnectionResetError("the simulated channel is closed")

    # -- consuming -------------------------------------------------------------------------

    @asynccontextmanager
    async def basic_consume(
        self, queue_name: str, consumer_tag: str = "", *, auto_ack: bool = True, **_: Any
    ) -> AsyncGenerator[_Channel, None]:
        """Consume ``queue_name`` (deliveries come by ``async for``) until the block ends."""
        if auto_ack:
            raise NotImplementedError("SimulatedRabbit consumes with auto_ack=False only")
        if queue_name != self.queue:
            raise NotImplementedError("SimulatedRabbit consumes the source's own queue only")
        await self._op()
        self.consuming = True
        try:
            yield self
        finally:
            self.consuming = False  # Basic.Cancel: what is buffered returns at channel close

    def __aiter__(self) -> _Channel:
        return self

    async def __anext__(self) -> _Delivery:
        while True:
            await trio.lowlevel.checkpoint()
            if not self.open or not self.consuming:
                raise StopAsyncIteration  # serena's stream ends with its connection
            self._fill()
            if self.buffer:
                return self.buffer.popleft()
            await self.broker._wait(self.queue, self.client.group)

    def _fill(self) -> None:
        """The broker pushes deliveries up to the prefetch window."""
        if not self.open or not self.consuming:
            return
        c = self.client
        room = (self.prefetch or 2**31) - len(self.unacked)
        if room <= 0:
            return
        taken = self.broker._take(self.queue, c.group, c.consumer, room, None)
        g = self.broker._group(self.queue, c.group)
        holders = _holders(self.broker)
        quorum = c._queue_type(self.queue) == "quorum"
        for msg, count, _ in taken:
            st = g.state(msg.id)
            st.lease_until = math.inf  # no visibility timeout: only a closed channel returns it
            tag = self.next_tag
            self.next_tag += 1
            self.unacked[tag] = (msg, count)
            holders[msg.id] = self
            headers: dict[str, Any] = dict(msg.headers)
            if quorum and count > 1:
                headers["x-delivery-count"] = count - 1
            self.buffer.append(
                _Delivery(
                    _Envelope(tag, count > 1, "", self.queue),
                    _Header(headers, message_id=msg.id),
                    _body(msg.data),
                )
            )

    # -- settling --------------------------------------------------------------------------

    async def _settling(self) -> None:
        delay = self.broker._delay_for(self.client.consumer)
        if delay > 0:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()

    def _tags(self, tag: int, multiple: bool) -> list[int]:
        if multiple:
            return sorted(t for t in self.unacked if t <= tag)
        if tag not in self.unacked:
            raise ValueError(f"PRECONDITION_FAILED - unknown delivery tag {tag}")
        return [tag]

    async def basic_ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        """``Basic.Ack``: settle ``delivery_tag`` (and every older one with ``multiple``)."""
        await self._settling()
        c = self.client
        tags = self._tags(delivery_tag, multiple) if self.open else [delivery_tag]
        for tag in tags:
            entry = self.unacked.pop(tag, None) if self.open else self.unacked.get(tag)
            if entry is None:
                continue
            msg, count = entry
            # a dead channel's ack is recorded as stale (the broker never sees it)
            receipt = (msg.id, count, self.conn.generation if self.open else -1)
            self.broker._ack(self.queue, c.group, c.consumer, receipt)
        self.broker._notify()
        if not self.open:
            raise ConnectionResetError("the simulated channel is closed: the ack is lost")

    async def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        """``Basic.Reject``: requeue the delivery, or dead-letter it (drop it without a
        dead-letter exchange)."""
        await self._reject([delivery_tag], requeue)

    async def basic_nack(
        self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True
    ) -> None:
        """``Basic.Nack``: :meth:`basic_reject` of one or (``multiple``) every older tag."""
        await self._reject(self._tags(delivery_tag, multiple) if self.open else [], requeue)

    async def _reject(self, tags: list[int], requeue: bool) -> None:
        await self._settling()
        if not self.open:
            raise ConnectionResetError("the simulated channel is closed: the reject is lost")
        broker, c = self.broker, self.client
        now = _now()
        g = broker._group(self.queue, c.group)
        held = broker._outstanding.get((self.queue, c.group, c.consumer), {})
        for tag in tags:
            entry = self.unacked.pop(tag, None)
            if entry is None:
                raise ValueError(f"PRECONDITION_FAILED - unknown delivery tag {tag}")
            msg, count = entry
            held.pop(msg.id, None)
            st = g.state(msg.id)
            if st.outcome is not None:
                continue
            if requeue:
                self._return(msg)
                broker._record(now, "requeue", f"{msg.id}#{count}")
                continue
            g.leased.pop(msg.id, None)
            if c._dead_letters(self.queue):
                st.outcome = "dead_letter"
                broker.publish(
                    f"{self.queue}:dead",
                    msg.data,
                    headers={"reason": "rejected", "original_id": msg.id, "delivery_count": count},
                )
                broker._record(now, "dead_letter", f"{msg.id}#{count}")
            else:
                st.outcome = "discard"
                broker._record(now, "discard", f"{msg.id}#{count} (no dead-letter exchange)")
        broker._notify()

    def _return(self, msg: Published) -> None:
        """Put ``msg`` back at the head of the queue (RabbitMQ requeues in place)."""
        g = self.broker._group(self.queue, self.client.group)
        st = g.state(msg.id)
        holders = _holders(self.broker)
        if holders.get(msg.id) is self:
            del holders[msg.id]
        if st.outcome is not None or msg.id not in g.leased:
            return  # settled, or returned already (a broker restart)
        del g.leased[msg.id]
        st.owner = None
        st.lease_until = math.inf
        g.returned[msg.partition].add(msg.offset)

    def _close(self) -> None:
        """Closing a channel returns what it had not acked to the queue."""
        if self.closed:
            return
        self.closed = True
        self.consuming = False
        self.buffer.clear()
        holders = _holders(self.broker)
        key = (self.queue, self.client.group, self.client.consumer)
        held = self.broker._outstanding.get(key, {})
        for msg, _ in self.unacked.values():
            if holders.get(msg.id) is self:
                held.pop(msg.id, None)
                self._return(msg)
        self.unacked.clear()
        self.broker._notify()


def _holders(broker: SimulatedBroker) -> dict[str, _Channel]:
    """message id -> the channel its latest delivery went to."""
    holders: dict[str, _Channel] = broker._extensions.setdefault("rabbitmq", {})
    return holders
