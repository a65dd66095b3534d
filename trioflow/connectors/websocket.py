"""WebSocket with trio-websocket: a client source, a client sink, and a server source with acks.

Install with ``pip install 'trioflow[websocket]'``.

* :class:`WebSocketSource` connects to a ``ws://`` (or ``wss://``) URL and emits the messages
  the server sends, reconnecting with backoff when the connection drops. WebSocket has no
  redelivery: delivery is **at most once**. Whatever the server sends while the client is
  disconnected is lost (unless the server replays it, e.g. from a cursor you send in
  ``on_connect``), and so is a message trio-websocket had buffered when a drain stops the source.
* :class:`WebSocketSink` sends each item (or each batch) as a message on one connection,
  reconnecting when it drops. A message counts as sent once it is written to the socket: the
  peer may still lose it. When the socket's send buffer is full the sink waits, so a slow peer
  slows the pipeline down (back-pressure).
* :class:`WebSocketServerSource` listens for clients that push events. Each event is answered,
  once its message is acked or failed downstream, with ``{"id": ..., "status": "ok"}`` or
  ``{"id": ..., "status": "failed", "reason": "..."}``, so acknowledgement reaches the remote
  producer end to end. At most ``max_in_flight`` events per connection are unanswered: past that
  the server stops reading that connection and TCP pushes back on the client. One client can
  only end its own connection: handshakes are timed (``handshake_timeout``), connections are
  bounded (``max_connections``, the excess refused with HTTP 503) and browser pages are checked
  by their ``Origin`` (``allowed_origins``, HTTP 403).

Errors of trio-websocket are translated at the boundary::

    TrioflowError
    └── WebSocketError
        ├── WebSocketConnectError (ConnectionError)   connecting or the handshake failed
        └── WebSocketClosed (ConnectionError)         the connection closed (``code``, ``reason``)

Examples:
    >>> source = WebSocketSource("ws://127.0.0.1:8000/ticks", format="json")
    >>> async with WebSocketSink("ws://127.0.0.1:9000/out") as out:
    ...     await (source | tf.process(enrich) | tf.sink(out)).run(stop=stop)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, ClassVar, Literal, final

import trio

from .._message import Message
from .._retry import Backoff
from .._sources import Outlet, Source
from ._json import items_of
from ._json import jsonable as _jsonable
from ._lazy import require
from ._ws_common import (
    MIB,
    Format,
    WebSocketClosed,
    WebSocketConnectError,
    WebSocketError,
    closed_error,
    connect_error,
    decode,
    release,
)
from ._ws_server import WebSocketServerSource

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

__all__ = [
    "WebSocketClosed",
    "WebSocketConnectError",
    "WebSocketError",
    "WebSocketServerSource",
    "WebSocketSink",
    "WebSocketSource",
]

# --- client source -------------------------------------------------------------------------------


@final
class WebSocketSource(Source[Any]):
    """Messages from a WebSocket server, with reconnects (at most once: see the module docs).

    Each message is handed over as it arrives, when the pipeline has room: as ``str`` (text
    frames) or ``bytes`` (binary frames), or, with ``format="json"``, decoded (a message that is
    not JSON is handed over already failed, with the ``JSONDecodeError`` as reason). Metadata:
    ``connection`` (1 for the first connection, 2 after the first reconnect...) and ``index``
    (the message's position on its connection).

    When the connection drops (an abnormal close, a close other than 1000, a heartbeat that
    goes unanswered) or cannot be opened, the source waits ``reconnect.delay(k)`` before attempt
    ``k`` and connects again; after ``max_reconnects`` failed attempts in a row it raises
    :class:`WebSocketConnectError` or :class:`WebSocketClosed` and the run stops. A normal close
    (1000) ends the source, unless ``reconnect_on_close=True``.

    ``heartbeat``: seconds between pings; a ping unanswered for as long again means the
    connection is half-open (the peer vanished without a FIN) and it is dropped and reopened.
    ``on_connect(connection)`` runs after each (re)connect, before reading: send a subscription,
    or a cursor the server can replay from.

    Back-pressure: the source reads the next message only when the pipeline has room; the socket
    then fills and TCP pushes back on the server. A drain cancels the read in progress.

    Examples:
        >>> source = WebSocketSource("wss://stream.example.com/trades", format="json",
        ...                          on_connect=subscribe)
        >>> await (source | tf.batch(500, 1.0) | tf.sink(store)).run(stop=stop)
    """

    _options: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        url: str,
        *,
        format: Format = None,
        reconnect: Backoff | None = None,
        max_reconnects: int | None = None,
        reconnect_on_close: bool = False,
        heartbeat: float | None = 20.0,
        on_connect: Callable[[WebSocketConnection], Awaitable[Any]] | None = None,
        connect_timeout: float = 10.0,
        max_message_size: int = MIB,
        extra_headers: Iterable[tuple[bytes, bytes]] = (),
        subprotocols: Iterable[str] = (),
        name: str | None = None,
    ) -> None:
        if format not in ("json", None):
            raise ValueError(f"format={format!r} must be 'json' or None")
        if max_reconnects is not None and (
            not isinstance(max_reconnects, int) or max_reconnects < 0
        ):
            raise ValueError(f"max_reconnects={max_reconnects!r} must be a non-negative integer")
        if heartbeat is not None and not heartbeat > 0:
            raise ValueError(f"heartbeat={heartbeat!r} must be a positive number of seconds")
        self.url = url
        self.format: Format = format
        self.reconnect: Backoff = reconnect or Backoff.exponential(0.1, max=10.0, jitter=True)
        self.max_reconnects = max_reconnects
        self.reconnect_on_close = reconnect_on_close
        self.heartbeat = heartbeat
        self.on_connect = on_connect
        self.connect_timeout = connect_timeout
        self.max_message_size = max_message_size
        self.extra_headers: list[tuple[bytes, bytes]] = list(extra_headers)
        self.subprotocols: list[str] = list(subprotocols)
        self.name = name
        #: connections opened so far (all runs), for monitoring
        self.connections: int = 0

    async def produce(self, out: Outlet) -> None:
        tw = require("trio_websocket", "websocket")
        failures = 0
        connection = 0
        while True:
            error: WebSocketError | None = None
            cause: BaseException | None = None
            closed: tuple[WebSocketError, BaseException] | None = None
            connected = False
            try:
                async with tw.open_websocket_url(
                    self.url,
                    subprotocols=self.subprotocols or None,
                    extra_headers=self.extra_headers or None,
                    max_message_size=self.max_message_size,
                    connect_timeout=self.connect_timeout,
                    disconnect_timeout=1.0,
                ) as ws:
                    connected = True
                    connection += 1
                    self.connections += 1
                    failures = 0
                    try:
                        closed = await self._read(ws, out, connection)
                    finally:
                        await release(ws)
            except (tw.HandshakeError, OSError) as exc:
                if not connected:  # once connected, an error while closing changes nothing
                    error, cause = connect_error(exc, self.url), exc
            if connected:
                if closed is None:
                    return
                error, cause = closed
            assert error is not None
            failures += 1
            if self.max_reconnects is not None and failures > self.max_reconnects:
                raise error from cause
            await trio.sleep(self.reconnect.delay(failures))

    async def _read(
        self, ws: WebSocketConnection, out: Outlet, connection: int
    ) -> tuple[WebSocketError, BaseException] | None:
        """Read until the connection closes; ``None`` when the source should end."""
        tw = require("trio_websocket", "websocket")
        stale = False

        async def heartbeat(interval: float) -> None:
            nonlocal stale
            while True:
                await trio.sleep(interval)
                with trio.move_on_after(interval):
                    try:
                        await ws.ping()
                    except tw.ConnectionClosed:
                        return
                    continue
                stale = True
                with trio.move_on_after(1.0):
                    await ws.aclose(1001, "heartbeat unanswered")
                return

        async with trio.open_nursery() as nursery:
            if self.heartbeat is not None:
                nursery.start_soon(heartbeat, self.heartbeat)
            try:
                if self.on_connect is not None:
                    await self.on_connect(ws)
                index = 0
                while True:
                    await out.demand()
                    raw = await ws.get_message()
                    index += 1
                    data, bad = decode(raw, self.format)
                    message = Message(data, {"connection": connection, "index": index})
                    await out.send(message.fail(bad) if bad is not None else message)
            except tw.ConnectionClosed as exc:
                nursery.cancel_scope.cancel()
                error = closed_error(exc, self.url)
                if stale:
                    error = WebSocketClosed(
                        f"{self.url}: no pong within {self.heartbeat:g}s (half-open connection)",
                        1006,
                    )
                elif error.code == 1000 and not self.reconnect_on_close:
                    return None
                return error, exc
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def label(self) -> str:
        return self.name or f"WebSocketSource({self.url})"

    def __repr__(self) -> str:
        return f"WebSocketSource({self.url!r})"


# --- client sink ---------------------------------------------------------------------------------


@final
class WebSocketSink:
    """Send each item as a WebSocket message on one connection; use it with ``async with``.

    With ``format="json"`` (the default) an item is sent as JSON text (attrs instances as
    dicts); with ``format=None`` it must be ``str`` (a text frame) or ``bytes`` (a binary
    frame). ``encode(item)`` replaces both. A batch (a list) is sent as one message per item with
    ``batch="each"``, or as one JSON array with ``batch="array"``.

    The connection opens on entry (or lazily on the first call) and reopens when it drops: a
    send that finds it closed waits ``reconnect.delay(k)`` and resends what the call had not
    sent yet, up to ``attempts`` connections per call; then the call fails with
    :class:`WebSocketClosed` (or :class:`WebSocketConnectError`), failing the item's messages.
    Calls are serialized (``tf.sink(out, n=4)`` still sends one message at a time, in order).

    Back-pressure: ``send_message`` returns once the frame is written to the socket; when the
    peer reads slowly the kernel's buffer fills, the call waits, and so does the pipeline.
    Cancelling a call (a hard stop) may leave a frame half-written: the connection is then
    dropped and reopened by the next call.

    Examples:
        >>> async with WebSocketSink("ws://127.0.0.1:9000/events") as out:
        ...     await (source | tf.batch(50, 0.5) | tf.sink(out)).run()
    """

    def __init__(
        self,
        url: str,
        *,
        format: Format = "json",
        batch: Literal["each", "array"] = "each",
        encode: Callable[[Any], str | bytes] | None = None,
        attempts: int = 3,
        reconnect: Backoff | None = None,
        connect_timeout: float = 10.0,
        max_message_size: int = MIB,
        extra_headers: Iterable[tuple[bytes, bytes]] = (),
        subprotocols: Iterable[str] = (),
    ) -> None:
        if format not in ("json", None):
            raise ValueError(f"format={format!r} must be 'json' or None")
        if batch not in ("each", "array"):
            raise ValueError(f"batch={batch!r} must be 'each' or 'array'")
        if not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts={attempts!r} must be a positive integer")
        self.url = url
        self.format: Format = format
        self.batch = batch
        self.encode = encode
        self.attempts = attempts
        self.reconnect: Backoff = reconnect or Backoff.exponential(0.1, max=5.0, jitter=True)
        self.connect_timeout = connect_timeout
        self.max_message_size = max_message_size
        self.extra_headers: list[tuple[bytes, bytes]] = list(extra_headers)
        self.subprotocols: list[str] = list(subprotocols)
        self.sent: int = 0
        self.connections: int = 0
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._ws: WebSocketConnection | None = None
        self._error: WebSocketConnectError | None = None
        self._closing = False
        self._want = trio.Event()  # set: the owner task opens a new connection (or closes)
        self._ready = trio.Event()  # set by the owner once it has (or failed to get) one
        self._owner_done = trio.Event()
        self._lock = trio.Lock()

    async def __aenter__(self) -> WebSocketSink:
        if self._stack is not None:
            raise RuntimeError(f"{self!r} is already open")
        stack = AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        try:
            # the first connection opens here: an error is raised from `async with`
            await nursery.start(self._own_connections)
        except BaseException:
            nursery.cancel_scope.cancel()
            await stack.aclose()
            raise
        self._stack, self._nursery = stack, nursery
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (a normal close, 1000) and stop its tasks (idempotent)."""
        stack, self._stack = self._stack, None
        nursery, self._nursery = self._nursery, None
        if stack is None or nursery is None:
            return
        self._closing = True
        self._want.set()
        with trio.move_on_after(2.0, shield=True):
            await self._owner_done.wait()
        nursery.cancel_scope.cancel()
        await stack.aclose()

    async def _own_connections(self, task_status: trio.TaskStatus[None]) -> None:
        """Hold one connection at a time in this task (trio-websocket's nursery lives here)."""
        tw = require("trio_websocket", "websocket")
        started = False
        self._owner_done = trio.Event()
        try:
            while not self._closing:
                connected = False
                try:
                    async with tw.open_websocket_url(
                        self.url,
                        subprotocols=self.subprotocols or None,
                        extra_headers=self.extra_headers or None,
                        max_message_size=self.max_message_size,
                        connect_timeout=self.connect_timeout,
                        disconnect_timeout=1.0,
                    ) as ws:
                        connected = True
                        self._ws, self._error = ws, None
                        self.connections += 1
                        if not started:
                            started = True
                            task_status.started()
                        self._ready.set()
                        self._want = trio.Event()
                        try:
                            await self._want.wait()  # a caller found it closed, or aclose()
                        finally:
                            self._ws = None
                            await release(ws)
                except (tw.HandshakeError, OSError) as exc:
                    if connected:
                        continue  # an error while closing changes nothing
                    error = connect_error(exc, self.url)
                    if not started:
                        raise error from exc
                    self._error = error
                    self._ready.set()
                    self._want = trio.Event()
                    await self._want.wait()
        finally:
            self._owner_done.set()

    async def _connection(self) -> WebSocketConnection:
        if self._stack is None:
            raise RuntimeError(f"use {self!r} inside `async with` (it owns a connection)")
        ws = self._ws
        if ws is not None and ws.closed is None:
            return ws
        self._ready = trio.Event()
        self._want.set()
        await self._ready.wait()
        if self._error is not None or self._ws is None:
            raise self._error or WebSocketConnectError(f"{self.url}: could not connect")
        return self._ws

    def _frames(self, item: Any) -> list[str | bytes]:
        if isinstance(item, list) and self.batch == "each":
            return [self._frame(x) for x in items_of(item)]
        return [self._frame(item)]

    def _frame(self, item: Any) -> str | bytes:
        if self.encode is not None:
            return self.encode(item)
        if self.format == "json":
            return json.dumps(item, default=_jsonable)
        if isinstance(item, (str, bytes)):
            return item
        raise TypeError(f"WebSocketSink(format=None) sends str or bytes, not {type(item).__name__}")

    async def __call__(self, item: Any) -> None:
        tw = require("trio_websocket", "websocket")
        frames = self._frames(item)
        async with self._lock:
            done, attempt = 0, 1
            while done < len(frames):
                error: WebSocketError
                try:
                    ws = await self._connection()
                    while done < len(frames):
                        await ws.send_message(frames[done])
                        done += 1
                        self.sent += 1
                    return
                except tw.ConnectionClosed as exc:
                    error, cause = closed_error(exc, self.url), exc
                except WebSocketConnectError as exc:
                    error, cause = exc, exc.__cause__ or exc
                except trio.Cancelled:
                    # a frame may be half-written: never reuse this connection
                    self._ws = None
                    self._want.set()
                    raise
                if attempt >= self.attempts:
                    raise error from cause
                await trio.sleep(self.reconnect.delay(attempt))
                attempt += 1

    @property
    def __name__(self) -> str:  # for reprs: sink(WebSocketSink(...))
        return f"WebSocketSink({self.url})"

    def __repr__(self) -> str:
        return f"WebSocketSink({self.url!r})"
