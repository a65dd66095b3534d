"""RabbitMQ (AMQP 0-9-1): a queue source, with serena (anyio-native, runs under trio).

Why serena: it runs natively under ``trio.run`` (it is built on anyio), and it is typed; trio-amqp
no longer imports on current trio, and aio-pika / aiormq are asyncio-only. Install with
``pip install 'trioflow[rabbitmq]'``.

Semantics of :class:`RabbitQueueSource` (at-least-once, as the broker's acknowledgements give):

* it connects in ``open()`` (so the connection outlives a drain until the last ack), declares the
  queue (durable, with ``x-dead-letter-exchange``) and its dead-letter exchange and queue, unless
  ``declare=False``;
* **prefetch tied to demand**: ``Basic.Qos`` caps the messages the broker has out, un-acked, to
  this consumer at ``prefetch`` (default: the pipeline's first demand, i.e. its entry buffer,
  ``DEFAULT_BUFFER`` = 256 items unless the first stage sets ``buffer``), and the source takes
  deliveries off the channel only as the pipeline's demand allows, so what waits in the client
  is bounded by ``prefetch - in flight``. As messages are acked the broker sends more;
* **ack after the last stage**, in groups: a group of successful messages with no older message
  still outstanding is one ``Basic.Ack(multiple=True)``, otherwise one ack per message;
* **failed messages** get their own ``message.action``, or the source's ``on_failure`` default:
  ``"dead_letter"`` (the default) is ``Basic.Reject requeue=false``, which sends the message to
  the queue's dead-letter exchange (``<queue>.dead`` when the source declares the queue);
  ``"discard"`` acks it; ``"redeliver"`` requeues it (``Basic.Reject requeue=true``) after
  ``requeue_delay`` seconds, holding its prefetch slot meanwhile, so a message that fails at once
  cannot spin in a hot requeue loop. The older words still work: ``"reject"`` is
  ``"dead_letter"``, ``"requeue"`` is ``"redeliver"``, and ``"requeue_once"`` redelivers a
  message unless it was already redelivered, then dead-letters it. With ``dead_letter=False``
  the queue has no dead-letter exchange: a ``"dead_letter"`` default is refused when the source
  is built, and a message's own ``"dead_letter"`` is logged once and gets the default;
* ``metadata["redelivered"]`` flags a redelivery (a consumer died holding it, or it was
  requeued); ``metadata["delivery_count"]`` (and its older name ``"deliveries"``) is the
  broker's ``x-delivery-count`` + 1 on quorum queues, else 1, or 2 for a redelivery (a lower
  bound: classic queues do not count);
* ``max_deliveries``: a message delivered more often is dead-lettered (discarded when the queue
  has no dead-letter exchange, as RabbitMQ's own ``x-delivery-limit`` drops it) without reaching
  the stages. Only quorum queues count past 2, so on a classic queue the source declares, a
  ``max_deliveries`` above 1 is refused;
* **poison isolation**: what comes back redelivered (a crash returns everything un-acked) is
  handed over in groups, 1 at first, each settled before the next, doubling as they settle (on
  a new channel pulled with ``Basic.Get`` before consuming); first deliveries go at full speed;
* a drain stops consuming (``Basic.Cancel``) once the hand-over in progress is done; messages
  the broker had sent but the pipeline never took are returned to the queue when the channel
  closes, after the last ack. A consumer that dies (a killed process, a dropped connection)
  returns every un-acked message to the queue, flagged redelivered, for another consumer;
* **a lost connection** (a broker restart, a connection closed by the broker, a network cut) is
  reconnected under ``reconnect`` (a :class:`~trioflow.connectors.Reconnect`: backoff, and
  ``give_up_after`` seconds after which the run fails with ``PipelineError``). Delivery tags
  belong to a channel, so each delivery carries its channel's generation (its id is
  ``(generation, tag)``, ``metadata["channel_generation"]``); settlements of a channel that is
  gone are dropped, never sent on the new one (the broker has requeued those messages and
  delivers them again: at-least-once), and counted in the source's figures
  (``redelivered_after_reconnect``).

Message data is the body (``bytes``); ``tf.decode`` turns JSON bodies into typed values. Metadata:
``delivery_tag``, ``redelivered``, ``delivery_count``, ``deliveries``, ``exchange``,
``routing_key``, ``queue``, ``headers`` and the message properties that are set (``message_id``,
``content_type``, ``correlation_id``, ...); a ``traceparent`` (and ``tracestate``) header is also
copied to ``metadata["traceparent"]``, the trace context ``OpenTelemetry`` continues, and
:func:`publish` sends the current span's.

Examples:
    >>> source = RabbitQueueSource("payments", host="127.0.0.1", port=5672, prefetch=200)
    >>> pipeline = source | tf.decode(Payment) | tf.batch(100, 1.0) | tf.sink(save)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any, ClassVar, Literal, cast, final

import trio

from .._message import ACTIONS, FailureAction, Message, check_failure_options
from .._sources import Outlet, Source
from ._poison import poison
from ._rabbit_acker import Link, QueueAcker
from ._rabbit_client import (
    CONNECT_TIMEOUT,
    PROPERTIES,
    CannotOpen,
    ConnectionFactory,
    ConnectionLost,
    connect,
    declare,
    delivery_count,
    describe,
    is_lost,
    open_channel,
    publish,
    serena_connection,
    set_prefetch,
)
from ._rabbit_isolation import Isolation, alone, settled, take
from ._reconnect import Reconnect, keep_connected
from ._trace_context import TRACEPARENT, from_headers

__all__ = [
    "ConnectionLost",
    "FailureMode",
    "RabbitQueueSource",
    "connect",
    "open_channel",
    "publish",
]

logger: logging.Logger = logging.getLogger("trioflow")

#: ``on_failure`` values: the failure actions, and the older words kept as aliases
FailureMode = Literal["redeliver", "dead_letter", "discard", "reject", "requeue", "requeue_once"]
#: older ``on_failure`` words and the action each stands for (``requeue_once``: see the docs)
_ALIASES: dict[str, FailureAction] = {
    "reject": "dead_letter",
    "requeue": "redeliver",
    "requeue_once": "redeliver",
}
_MODES = (*ACTIONS, *_ALIASES)
#: prefetch when none is given and the pipeline's demand is not known yet (a cap, too)
MAX_PREFETCH = 4096
#: frames a message takes in serena's channel buffer (method, header, body up to frame_max)
_FRAMES = 3
#: the reconnect policy of a source that is given none
DEFAULT_RECONNECT = Reconnect()
#: seconds a consumer whose channel ended waits for serena to say why the connection closed
_LOST_WAIT = 2.0


@final
class RabbitQueueSource(Source[bytes]):
    """Messages of a RabbitMQ queue (see the module docs for the semantics).

    Args:
        queue: the queue to consume.
        host: broker host.
        port: broker AMQP port.
        username: user (``guest`` may only connect over loopback).
        password: its password.
        virtual_host: the vhost.
        prefetch: most un-acked messages out to this consumer (``Basic.Qos``); ``None`` takes
            the pipeline's first demand (its entry buffer), at most ``MAX_PREFETCH``.
        declare: declare the queue (durable) with a dead-letter exchange, and that exchange
            and its queue. With ``False`` the queue must exist.
        dead_letter: name of the dead-letter exchange and queue (default ``<queue>.dead``);
            ``False``: the queue has no dead-letter exchange (none is declared), so
            ``on_failure="dead_letter"`` is refused.
        on_failure: what to do with a failed message whose ``action`` is ``None``:
            ``"dead_letter"`` (default), ``"discard"`` or ``"redeliver"``; the older
            ``"reject"`` (= ``"dead_letter"``), ``"requeue"`` (= ``"redeliver"``) and
            ``"requeue_once"`` (redeliver, then dead-letter a redelivered one) still work.
        requeue_delay: seconds a failed message waits before it is requeued.
        max_deliveries: a message delivered more often than this is dead-lettered without
            reaching the stages (``None``: no limit). Above 1 it needs a quorum queue.
        arguments: more ``x-`` arguments for the queue declaration (e.g. ``x-queue-type``).
        heartbeat: AMQP heartbeat interval asked for, in seconds.
        reconnect: how to reconnect after the connection is lost (a broker restart, a closed
            connection, a network cut): backoff, and ``give_up_after`` seconds of outage after
            which the run fails with ``PipelineError`` (default ``Reconnect()``: 0.1 s doubling
            up to 5 s, jittered, for 60 s). ``None``: the first lost connection fails the run.
        name: the stage label.
        connection: opens the source's connections, ``connection(source, **options)`` giving
            an async context manager of a connection (serena's ``AMQPConnection`` shape: an
            ``open`` flag and ``open_channel()``); a lost connection raises out of its
            ``async with``. ``None``: serena's, to ``host``:``port``. Tests pass
            :class:`~trioflow.testing.SimulatedRabbit` to run the source's own logic
            (requeues, dead letters, reconnects) through a simulated broker's faults.

    Examples:
        >>> source = RabbitQueueSource("payments", port=5672, on_failure="redeliver")
        >>> report = await (source | tf.sink(handle)).run()

    Raises:
        ValueError: for an argument out of range, or an ``on_failure`` or ``max_deliveries``
            the queue cannot honour (``dead_letter`` without a dead-letter exchange; a delivery
            limit above 1 on a classic queue).
    """

    _options: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        queue: str,
        *,
        host: str = "127.0.0.1",
        port: int = 5672,
        username: str = "guest",
        password: str = "guest",
        virtual_host: str = "/",
        prefetch: int | None = None,
        declare: bool = True,
        dead_letter: str | Literal[False] | None = None,
        on_failure: FailureMode = "dead_letter",
        requeue_delay: float = 1.0,
        max_deliveries: int | None = None,
        arguments: dict[str, Any] | None = None,
        heartbeat: int = 60,
        reconnect: Reconnect | None = DEFAULT_RECONNECT,
        name: str | None = None,
        connection: ConnectionFactory | None = None,
    ) -> None:
        if not isinstance(queue, str) or not queue:
            raise ValueError(f"queue={queue!r} must be a non-empty string")
        if prefetch is not None and (
            not isinstance(prefetch, int) or not 0 < prefetch <= MAX_PREFETCH
        ):
            raise ValueError(f"prefetch={prefetch!r} must be an integer in 1..{MAX_PREFETCH}")
        if on_failure not in _MODES:
            raise ValueError(
                f"on_failure={on_failure!r} must be one of "
                f"{', '.join(map(repr, ACTIONS))} (or the older {', '.join(map(repr, _ALIASES))})"
            )
        if not isinstance(requeue_delay, (int, float)) or not requeue_delay >= 0:
            raise ValueError(f"requeue_delay={requeue_delay!r} must be a non-negative number")
        if reconnect is not None and not isinstance(reconnect, Reconnect):
            raise TypeError(
                f"reconnect={reconnect!r} must be a trioflow.connectors.Reconnect or None"
            )
        if not (dead_letter is None or dead_letter is False or isinstance(dead_letter, str)):
            raise ValueError(f"dead_letter={dead_letter!r} must be a name, None or False")
        args = dict(arguments or {})
        #: whether the queue has a dead-letter exchange, as far as the source can know (a queue
        #: it does not declare is taken to have one: AMQP cannot tell)
        self.can_dead_letter: bool = dead_letter is not False or bool(
            args.get("x-dead-letter-exchange")
        )
        action = _ALIASES[on_failure] if on_failure in _ALIASES else cast(FailureAction, on_failure)
        check_failure_options(action, max_deliveries)
        self.requeue_once: bool = on_failure == "requeue_once"
        if not self.can_dead_letter and (action == "dead_letter" or self.requeue_once):
            raise ValueError(
                f"RabbitQueueSource({queue!r}): on_failure={on_failure!r} cannot be honoured: "
                "with dead_letter=False the queue has no dead-letter exchange, so a rejected "
                "message would be dropped; use on_failure='discard' to drop failed messages or "
                "'redeliver' to requeue them, or give the queue a dead-letter exchange"
            )
        queue_type = args.get("x-queue-type", "classic")
        if declare and max_deliveries is not None and max_deliveries > 1 and queue_type != "quorum":
            raise ValueError(
                f"RabbitQueueSource({queue!r}): max_deliveries={max_deliveries} cannot be "
                f"honoured on a {queue_type} queue: only quorum queues count deliveries "
                "(x-delivery-count), a classic one only flags a redelivery, so delivery_count "
                "never exceeds 2 there; use arguments={'x-queue-type': 'quorum'}, or "
                "max_deliveries=1 (dead-letter every redelivered message)"
            )
        self.queue = queue
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.virtual_host = virtual_host
        self.prefetch = prefetch
        self.declare = declare
        #: the dead-letter exchange and queue the source declares (None: it declares none)
        self.dead_letter: str | None = (
            None if dead_letter is False else (dead_letter or f"{queue}.dead")
        )
        #: the default action of failed messages (an older word, normalized)
        self.on_failure: FailureAction = action
        #: ``on_failure`` as given
        self.on_failure_mode: FailureMode = on_failure
        self.requeue_delay: float = float(requeue_delay)
        self.max_deliveries = max_deliveries
        self.arguments = args
        self.heartbeat = heartbeat
        self.reconnect = reconnect
        self.name = name
        #: opens the connection (``serena_connection``, serena's, unless a test passes another)
        self.connection: ConnectionFactory = connection or serena_connection

    def open(self) -> AbstractAsyncContextManager[Source[bytes]]:
        """Connect, open a channel and declare the queues; closed after the last ack."""
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncGenerator[Source[bytes], None]:
        async with trio.open_nursery() as nursery:
            run = _RabbitRun(self, nursery)
            # the first connection is not retried: a wrong address or password fails at once
            try:
                await run.connect()
            except ConnectionLost:
                raise
            except Exception as exc:  # a refused login, a declaration the broker refused
                raise CannotOpen(f"{run.where}: {describe(exc)}") from exc
            yield run
            # un-acked messages (a requeue still waiting) go back when the channel closes
            nursery.cancel_scope.cancel()

    async def produce(self, out: Outlet) -> None:  # pragma: no cover - open() yields the runner
        raise RuntimeError("RabbitQueueSource runs through open()")

    @property
    def label(self) -> str:
        return self.name or f"rabbitmq:{self.queue}"

    def __repr__(self) -> str:
        return f"RabbitQueueSource({self.queue!r})"


@final
class _RabbitRun(Source[bytes]):
    """One run of a :class:`RabbitQueueSource`: its connection (one after another, when the
    broker goes away and comes back), channel and acknowledger."""

    #: longest wait (seconds) for an isolated group of redeliveries to be settled; past it the
    #: source goes on at full prefetch (a stage that holds items must not stall the run)
    ISOLATION_WAIT: ClassVar[float] = 10.0

    def __init__(self, spec: RabbitQueueSource, nursery: trio.Nursery) -> None:
        self.spec = spec
        self.nursery = nursery
        self.acker = QueueAcker(self)
        self.prefetch = 0
        self.link = Link(0)  # none yet: connect() makes generation 1
        self.link.lost.set()
        self.reconnects = 0

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def conn(self) -> Any:
        """The current serena connection."""
        return self.link.conn

    @property
    def channel(self) -> Any:
        """The current channel."""
        return self.link.channel

    @property
    def connected(self) -> bool:
        """Whether the connection and the channel are open."""
        return self.link.alive

    def source_metrics(self) -> dict[str, float]:
        """The source's own figures (in ``report.sources`` and the metrics endpoints)."""
        acker = self.acker
        return {
            "acked": acker.acked,
            "dead_lettered": acker.rejected,
            "requeued": acker.requeued,
            "discarded": acker.discarded,
            "reconnects": self.reconnects,
            "channel_generation": self.link.generation,
            "redelivered_after_reconnect": acker.stale,
        }

    async def connect(self) -> Link:
        """Open a connection and a channel (the next generation), declaring the queues."""
        try:
            link: Link = await self.nursery.start(self._hold, self.link.generation + 1)
        except Exception as exc:
            if is_lost(exc):
                raise ConnectionLost(f"{self.where}: cannot connect: {describe(exc)}") from exc
            raise
        self.link = link
        return link

    @property
    def where(self) -> str:
        """The queue and the broker, for errors: ``queue 'q' on guest@127.0.0.1:5672 vhost '/'``."""
        spec = self.spec
        return (
            f"queue {spec.queue!r} on {spec.username}@{spec.host}:{spec.port} "
            f"vhost {spec.virtual_host!r}"
        )

    async def _hold(self, generation: int, task_status: trio.TaskStatus[Link]) -> None:
        """Keep one connection open until the run ends or the connection is lost.

        serena runs a connection in a task group whose body it cancels when the broker closes
        the connection: that body is this task, not the pipeline, so a lost connection ends
        here, with the error kept for the source to report.
        """
        spec = self.spec
        # serena parks its reader when a channel's frame buffer is full, and then no reply (a
        # Basic.Cancel-Ok at drain, say) gets through: the buffer must hold a full prefetch
        cap = spec.prefetch or MAX_PREFETCH
        link = Link(generation)
        started = False
        try:
            async with AsyncExitStack() as stack:
                link.conn = await stack.enter_async_context(
                    spec.connection(
                        spec,
                        heartbeat_interval=spec.heartbeat,
                        channel_buffer_size=_FRAMES * cap + 64,
                    )
                )
                with trio.fail_after(CONNECT_TIMEOUT):
                    link.channel = await stack.enter_async_context(open_channel(link.conn))
                    if spec.declare:
                        await declare(link.channel, spec)
                started = True
                task_status.started(link)
                await trio.sleep_forever()
        except Exception as exc:
            if not started:
                raise
            link.error = exc
        finally:
            link.lost.set()
            link.notify()

    def requeue_later(self, link: Link, tags: list[int]) -> None:
        """Requeue ``tags`` after ``requeue_delay`` (they hold their prefetch slots meanwhile)."""

        async def later() -> None:
            await trio.sleep(self.spec.requeue_delay)
            await self.acker.requeue(link, tags)

        self.nursery.start_soon(later)

    async def produce(self, out: Outlet) -> None:
        room = await out.demand()
        self.prefetch = self.spec.prefetch or min(room, MAX_PREFETCH)
        session = partial(self._session, out)
        await keep_connected(out, self.spec.reconnect, session, what=repr(self.spec))

    async def _session(self, out: Outlet, connected: Callable[[], None]) -> None:
        """Consume on the current channel (a new one if it is gone) until it is lost."""
        link = self.link
        if not link.alive:
            old = link
            link = await self.connect()
            self.reconnects += 1
            if old.outstanding:
                logger.warning(
                    "trioflow: %r: %d message(s) were in flight when channel %d was lost; the "
                    "broker requeued them and delivers them again (their acks are dropped)",
                    self.spec,
                    len(old.outstanding),
                    old.generation,
                )
        channel = link.channel
        state = Isolation()  # a new channel starts careful: what a crash returned comes first
        try:
            if hasattr(channel, "basic_get"):
                # RabbitMQ applies a prefetch when a consumer starts, so the careful start pulls
                # (Basic.Get, no consumer) until a first delivery shows the backlog is through
                connected()
                await self._careful_gets(out, link, state)
                # what the gets left un-acked counts: the broker's total stays within prefetch
                await set_prefetch(channel, max(1, self.prefetch - len(link.outstanding)))
            else:  # a client whose Basic.Qos applies at once (SimulatedRabbit)
                await set_prefetch(channel, 1)
            async with channel.basic_consume(self.spec.queue, auto_ack=False) as deliveries:
                if not hasattr(channel, "basic_get"):
                    connected()
                await self._consume(out, link, aiter(deliveries), state)
        except Exception as exc:
            # the channel's stream ends a moment before serena reports why the connection closed
            with trio.move_on_after(_LOST_WAIT):
                await link.lost.wait()
            if link.alive:
                raise
            raise ConnectionLost(describe(link.error or exc)) from exc
        await link.lost.wait()
        raise ConnectionLost(describe(link.error))

    async def _careful_gets(self, out: Outlet, link: Link, state: Isolation) -> None:
        """The careful start on a broker: groups of ``state.window`` messages pulled with
        ``Basic.Get``, each settled before the next, until the queue is empty, a group holds
        only first deliveries, or a group is not settled in time (then ``state.careful`` is
        False and the consumer starts at the full prefetch)."""
        channel = link.channel
        while state.careful and link.alive:
            room = await out.demand()
            batch: list[Any] = []
            while len(batch) < min(room, state.window):
                got = await channel.basic_get(self.spec.queue)
                if got is None:
                    break
                batch.append(got)
            if not any(d.envelope.redelivered for d in batch):
                state.careful = False
            if batch:
                await self._careful_group(out, link, state, batch)

    async def _careful_group(
        self, out: Outlet, link: Link, state: Isolation, batch: list[Any]
    ) -> bool:
        """Hand ``batch`` over; if it holds redeliveries, wait until it is settled and grow the
        window (False: not settled in time, isolation ends)."""
        await self._hand_over(out, link, batch)
        if not state.careful:
            return True
        limit = self.spec.max_deliveries
        state.alone = state.alone or any(alone(d, limit) for d in batch)
        tags = {d.envelope.delivery_tag for d in batch}
        if not await settled(link, tags, self.ISOLATION_WAIT, self.spec):
            # a stage holds them (a batch without a timeout, a stuck sink): waiting on would
            # stall the run, so isolation gives way to progress
            state.careful = False
            return False
        state.window = 1 if state.alone else min(state.window * 2, self.prefetch)
        return True

    async def _consume(self, out: Outlet, link: Link, it: Any, state: Isolation) -> None:
        """Hand deliveries over until the channel is lost: first deliveries at full speed,
        redelivered ones isolated (in settled groups, 1 at first, doubling; see the module
        docs). A redelivery at full speed keeps the consumer's prefetch on a broker (RabbitMQ
        applies ``Basic.Qos`` to new consumers only); a simulated client applies it at once."""
        channel, held = link.channel, state.held
        while True:
            room = await out.demand()
            if state.careful:
                if held:
                    batch = [held.popleft() for _ in range(min(state.window, room, len(held)))]
                else:
                    batch = await take(it, channel, min(room, state.window))
                if not link.alive:
                    return  # the broker has taken them back: they come again
                if not held and not any(d.envelope.redelivered for d in batch):
                    state.careful = False
                    await set_prefetch(channel, self.prefetch)
                window = state.window
                if not await self._careful_group(out, link, state, batch):
                    await set_prefetch(channel, self.prefetch)
                    if held:
                        await self._hand_over(out, link, list(held))
                        held.clear()
                elif state.careful and state.window != window:
                    await set_prefetch(channel, state.window)
                continue
            batch = await take(it, channel, room)
            if not link.alive:
                return
            again = [d for d in batch if d.envelope.redelivered]
            if not again:
                await self._hand_over(out, link, batch)
                continue
            # a redelivery at full speed (another consumer died, a requeue): what is in flight
            # is settled, then the redelivered ones go isolated
            state.restart()
            await set_prefetch(channel, 1)
            held.extend(again)
            mine = {d.envelope.delivery_tag for d in again}
            link.outstanding.update(mine)  # held: a multiple ack must not cover them
            batch = [d for d in batch if not d.envelope.redelivered]
            if batch:
                await self._hand_over(out, link, batch)
            await settled(link, link.outstanding - mine, self.ISOLATION_WAIT, self.spec)

    async def _hand_over(self, out: Outlet, link: Link, deliveries: list[Any]) -> None:
        """Hand deliveries over in bulk ((generation, tag) as ids, metadata made only when a
        message is needed); a poison one goes already failed."""
        outstanding = link.outstanding
        generation = link.generation
        data: list[bytes] = []
        ids: list[tuple[int, int]] = []
        held: dict[tuple[int, int], Any] = {}
        failed: list[Message[Any]] = []
        limit = self.spec.max_deliveries
        for delivery in deliveries:
            tag: int = delivery.envelope.delivery_tag
            outstanding.add(tag)
            if limit is not None and (count := delivery_count(delivery)) > limit:
                action: FailureAction = "dead_letter" if self.spec.can_dead_letter else "discard"
                meta = self._metadata(delivery, generation)
                failed.append(poison(delivery.body, meta, self.acker, count, limit, action=action))
                continue
            ident = (generation, tag)
            data.append(delivery.body)
            ids.append(ident)
            held[ident] = delivery

        def metadata(ident: tuple[int, int]) -> dict[str, Any]:
            return self._metadata(held.pop(ident), generation)

        # one hand-over: a drain cannot separate the poison messages from the rest of the pull
        await out.send_bulk(
            data, acknowledger=self.acker, ids=ids, metadata=metadata, failed=failed
        )

    def _metadata(self, delivery: Any, generation: int) -> dict[str, Any]:
        envelope, header = delivery.envelope, delivery.header
        headers = dict(header.headers or {})
        deliveries = delivery_count(delivery)
        meta: dict[str, Any] = {
            "channel_generation": generation,
            "delivery_tag": envelope.delivery_tag,
            "redelivered": envelope.redelivered,
            "delivery_count": deliveries,
            "deliveries": deliveries,
            "exchange": envelope.exchange_name,
            "routing_key": envelope.routing_key,
            "queue": self.spec.queue,
            "headers": headers,
        }
        if headers and TRACEPARENT in headers:
            from_headers(headers, meta)
        for prop in PROPERTIES:
            value = getattr(header, prop, None)
            if value is not None:
                meta[prop] = value
        return meta

    def __repr__(self) -> str:
        return repr(self.spec)
