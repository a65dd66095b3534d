"""The AMQP client side of the RabbitMQ connector: connecting with serena, and what counts as a
lost connection. See :mod:`trioflow.connectors.rabbitmq`."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from .._groups import leaves
from .._tracing import current_context
from ._lazy import require
from ._reconnect import CONNECTION_ERRORS

if TYPE_CHECKING:
    from .rabbitmq import RabbitQueueSource

__all__ = [
    "PROPERTIES",
    "CannotOpen",
    "ConnectionFactory",
    "ConnectionLost",
    "connect",
    "delivery_count",
    "open_channel",
    "publish",
    "set_prefetch",
]

#: what opens a source's connection: ``factory(source, **options)`` (``options``: serena's
#: ``heartbeat_interval`` and ``channel_buffer_size``), an async context manager of a
#: connection; a lost connection raises out of its ``async with``
ConnectionFactory = Callable[..., AbstractAsyncContextManager[Any]]

#: seconds a (re)connection may take: TCP connect, AMQP handshake, channel, declarations
CONNECT_TIMEOUT = 10.0
#: AMQP reply code of a connection the broker closed on purpose (shutdown, close_connection)
_CONNECTION_FORCED = 320


class ConnectionLost(ConnectionError):
    """The source's connection to the broker is gone (or could not be made again): transient,
    so the source reconnects under its ``reconnect`` policy."""


class CannotOpen(Exception):
    """The source's first connection failed for a reason other than a lost connection (a
    refused login, a declaration the broker refused): the message names the queue and the
    broker, the cause is the client's error."""


def is_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (every leaf of a group) says the connection is gone, not a bug: a socket
    error, an ended stream, or the broker closing the connection (a shutdown, an operator's
    ``close_connection``: CONNECTION_FORCED)."""
    import anyio
    from serena.exc import UnexpectedCloseError

    kinds = (
        *CONNECTION_ERRORS,
        anyio.EndOfStream,
        anyio.BrokenResourceError,
        anyio.ClosedResourceError,
    )
    found = [leaf for leaf in leaves(exc) if not isinstance(leaf, trio.Cancelled)]
    return bool(found) and all(
        isinstance(leaf, kinds)
        or (isinstance(leaf, UnexpectedCloseError) and int(leaf.reply_code) == _CONNECTION_FORCED)
        for leaf in found
    )


def describe(exc: BaseException | None) -> str:
    """One line for the log: the first real error in ``exc``."""
    if exc is None:
        return "the connection closed"
    found = [leaf for leaf in leaves(exc) if not isinstance(leaf, trio.Cancelled)] or [exc]
    first = found[0]
    return f"{type(first).__name__}: {first}" if str(first) else type(first).__name__


PROPERTIES = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type_name",
    "user_id",
    "application_id",
)


def _serena() -> Any:
    """Import serena, fixing its decoding of AMQP field arrays (0.9.1 reads the byte length as
    an item count, so a dead-lettered message's ``x-death`` header broke the connection)."""
    serena = require("serena", "rabbitmq")
    from serena.utils.buffer import DecodingBuffer

    if not getattr(DecodingBuffer, "_trioflow_array_fix", False):

        def read_array(self: Any) -> list[Any]:
            items = DecodingBuffer(self.read_long_string())
            values: list[Any] = []
            while items.has_data:
                values.append(items.read_field_value())
            return values

        DecodingBuffer.read_array = read_array  # type: ignore[method-assign]
        DecodingBuffer._trioflow_array_fix = True  # type: ignore[attr-defined]
    return serena


def connect(
    host: str = "127.0.0.1",
    port: int = 5672,
    *,
    username: str = "guest",
    password: str = "guest",
    virtual_host: str = "/",
    **options: Any,
) -> AbstractAsyncContextManager[Any]:
    """A serena connection (``async with connect(...) as conn``); ``options`` go to serena.

    Examples:
        >>> async with connect(port=5672) as conn, open_channel(conn) as channel:
        ...     await channel.basic_publish("", "payments", b'{"id": 1}')
    """
    serena = _serena()
    cm: AbstractAsyncContextManager[Any] = serena.open_connection(
        host, port=port, username=username, password=password, virtual_host=virtual_host, **options
    )
    return cm


@asynccontextmanager
async def open_channel(conn: Any) -> AsyncGenerator[Any, None]:
    """A channel of serena connection ``conn``, whose streams are all closed on the way out.

    serena 0.9 closes only the sending ends of a channel's internal streams; the receiving ends
    are closed here, so nothing is left for the garbage collector to warn about.

    Examples:
        >>> async with connect(port=5672) as conn, open_channel(conn) as channel:
        ...     await channel.queue_purge("payments")
    """
    async with AsyncExitStack() as stack:
        channel = await stack.enter_async_context(conn.open_channel())
        stack.callback(_close_streams, channel)
        yield channel


@asynccontextmanager
async def serena_connection(spec: RabbitQueueSource, **options: Any) -> AsyncGenerator[Any, None]:
    """A serena connection for a source: serena's ``open_connection``, except that the
    connect and handshake time out after ``CONNECT_TIMEOUT`` (a broker that accepts but never
    answers is an outage too), and the socket is closed whatever fails (serena leaves it open
    when a handshake fails, or when the broker closed the connection before its Close-Ok)."""
    import anyio
    from serena.connection import AMQPConnection

    _serena()
    with trio.fail_after(CONNECT_TIMEOUT):
        if spec.host.startswith("/"):  # a Unix socket, as serena takes it
            sock: Any = await anyio.connect_unix(spec.host)
        else:
            sock = await anyio.connect_tcp(spec.host, spec.port)
        try:
            conn = AMQPConnection(sock, **options)
            # serena opens connections only on sockets of its own (no timeout, no Unix-socket
            # cleanup): its connection class is driven by hand, through protected methods
            handshake = conn._do_startup_handshake  # pyright: ignore[reportPrivateUsage]
            await handshake(spec.username, spec.password, spec.virtual_host)
        except BaseException:
            with trio.CancelScope(shield=True):
                await sock.aclose()
            raise
    try:
        async with anyio.create_task_group() as tasks:
            conn._start_tasks(tasks)  # pyright: ignore[reportPrivateUsage]
            try:
                yield conn
            finally:
                tasks.cancel_scope.cancel()
    finally:
        try:
            await conn.close()
        finally:
            with trio.CancelScope(shield=True):
                await conn._close_ungracefully()  # pyright: ignore[reportPrivateUsage]


async def declare(channel: Any, spec: RabbitQueueSource) -> None:
    """Declare ``spec``'s queue (durable), with its dead-letter exchange and queue if it has
    one (a fanout exchange bound to a durable queue of the same name)."""
    serena = require("serena", "rabbitmq")
    dead = spec.dead_letter
    arguments = dict(spec.arguments)
    if dead is not None:
        await channel.exchange_declare(dead, serena.ExchangeType.FANOUT, durable=True)
        await channel.queue_declare(dead, durable=True)
        await channel.queue_bind(dead, dead, "")
        arguments = {"x-dead-letter-exchange": dead, **arguments}
    await channel.queue_declare(spec.queue, durable=True, arguments=arguments)


async def set_prefetch(channel: Any, count: int) -> None:
    """``Basic.Qos``: at most ``count`` un-acked messages out to each consumer of ``channel``.

    Per consumer (``global_=False``): quorum queues refuse a channel-wide limit, and a source's
    channel has one consumer, so the two are the same there. serena 0.9 has no ``basic_qos``,
    so the frame is sent by hand; a channel that has one (a simulated one) is asked directly.

    Examples:
        >>> await set_prefetch(channel, 200)
    """
    qos = getattr(channel, "basic_qos", None)
    if qos is not None:
        await qos(prefetch_count=count, global_=False)
        return
    require("serena", "rabbitmq")
    from serena.payloads.method import BasicQOSOkPayload, BasicQOSPayload

    payload = BasicQOSPayload(prefetch_size=0, prefetch_count=count, global_=False)
    await channel._send_and_receive_frame(payload, BasicQOSOkPayload)


def _close_streams(channel: Any) -> None:
    for name in ("_send", "_receive", "_delivery_send", "_delivery_receive"):
        stream = getattr(channel, name, None)
        if stream is not None:
            stream.close()


async def publish(
    channel: Any,
    routing_key: str,
    bodies: list[bytes],
    exchange: str = "",
    *,
    headers: Mapping[str, Any] | None = None,
) -> None:
    """Publish ``bodies`` (persistent) to ``exchange`` with ``routing_key``; one confirm each.

    A helper for tests, examples and small producers: serena waits for the broker's confirm of
    each message, so this sends about a thousand messages a second. ``headers`` go with each
    message; so does ``traceparent`` (and ``tracestate``) when a span is current, e.g. when a
    stage traced by :class:`~trioflow.observe.OpenTelemetry` publishes.

    Examples:
        >>> async with connect() as conn, open_channel(conn) as channel:
        ...     await publish(channel, "payments", [b"1", b"2"])
    """
    serena = require("serena", "rabbitmq")
    fields = dict(headers or {})
    context = current_context()
    if context:
        fields.update(context)
    header = (
        serena.BasicHeader(delivery_mode=2, headers=fields)
        if fields
        else serena.BasicHeader(delivery_mode=2)
    )
    for body in bodies:
        await channel.basic_publish(exchange, routing_key, body, header=header)


def delivery_count(delivery: Any) -> int:
    """Quorum queues count deliveries (``x-delivery-count``: the ones before this); classic
    ones only flag a redelivery (so 2 is a lower bound there)."""
    headers = delivery.header.headers
    count = headers.get("x-delivery-count") if headers else None
    if isinstance(count, int):
        return count + 1
    return 2 if delivery.envelope.redelivered else 1
