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
  the server stops reading that connection and TCP pushes back on the client.

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

import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal, final

import attrs
import trio

from .._exceptions import TrioflowError
from .._message import Message
from .._retry import Backoff
from .._sources import Outlet, Source
from ._lazy import require

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection, WebSocketRequest

__all__ = [
    "WebSocketClosed",
    "WebSocketConnectError",
    "WebSocketError",
    "WebSocketServerSource",
    "WebSocketSink",
    "WebSocketSource",
]

Format = Literal["json"] | None
_MIB = 1 << 20


class WebSocketError(TrioflowError):
    """Base of the WebSocket connectors' errors."""


@final
class WebSocketConnectError(WebSocketError, ConnectionError):
    """Connecting failed: refused, unreachable, timed out, or the handshake was rejected."""


@final
class WebSocketClosed(WebSocketError, ConnectionError):
    """The connection closed; ``code`` and ``reason`` are the close frame's (1006: abnormal)."""

    def __init__(self, message: str, code: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


def _closed(exc: Any, url: str) -> WebSocketClosed:
    reason = getattr(exc, "reason", None)
    code = getattr(reason, "code", None)
    text = getattr(reason, "reason", None)
    name = getattr(reason, "name", None)
    what = f"{code} {name}" if code is not None else "closed"
    return WebSocketClosed(
        f"{url}: connection closed ({what}{f': {text}' if text else ''})", code, text
    )


def _connect_error(exc: BaseException, url: str) -> WebSocketConnectError:
    cause = exc.__cause__ or exc.__context__
    detail = str(exc) or (str(cause) if cause is not None else "") or type(exc).__name__
    status = getattr(exc, "status_code", None)
    if status is not None:
        detail = f"handshake rejected with HTTP {status}"
    return WebSocketConnectError(f"{url}: could not connect: {detail}")


async def _release(ws: WebSocketConnection) -> None:
    # trio-websocket 0.12 leaves a client's socket open when the server closed first (it waits
    # for the server's TCP close, then never closes its own end): close it ourselves.
    stream = getattr(ws, "_stream", None)
    if ws.closed is not None and stream is not None:
        await trio.aclose_forcefully(stream)


def _reason_text(reason: BaseException | str | None) -> str:
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"
    return str(reason)


def _decode(raw: str | bytes, format: Format) -> tuple[Any, BaseException | None]:
    if format != "json":
        return raw, None
    try:
        return json.loads(raw), None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        return raw, exc


def _jsonable(value: Any) -> Any:
    if attrs.has(type(value)):
        return attrs.asdict(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


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
        max_message_size: int = _MIB,
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
        self.format = format
        self.reconnect = reconnect or Backoff.exponential(0.1, max=10.0, jitter=True)
        self.max_reconnects = max_reconnects
        self.reconnect_on_close = reconnect_on_close
        self.heartbeat = heartbeat
        self.on_connect = on_connect
        self.connect_timeout = connect_timeout
        self.max_message_size = max_message_size
        self.extra_headers = list(extra_headers)
        self.subprotocols = list(subprotocols)
        self.name = name
        #: connections opened so far (all runs), for monitoring
        self.connections = 0

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
                        await _release(ws)
            except (tw.HandshakeError, OSError) as exc:
                if not connected:  # once connected, an error while closing changes nothing
                    error, cause = _connect_error(exc, self.url), exc
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
                    data, bad = _decode(raw, self.format)
                    message = Message(data, {"connection": connection, "index": index})
                    await out.send(message.fail(bad) if bad is not None else message)
            except tw.ConnectionClosed as exc:
                nursery.cancel_scope.cancel()
                error = _closed(exc, self.url)
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
        max_message_size: int = _MIB,
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
        self.format = format
        self.batch = batch
        self.encode = encode
        self.attempts = attempts
        self.reconnect = reconnect or Backoff.exponential(0.1, max=5.0, jitter=True)
        self.connect_timeout = connect_timeout
        self.max_message_size = max_message_size
        self.extra_headers = list(extra_headers)
        self.subprotocols = list(subprotocols)
        self.sent = 0
        self.connections = 0
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
                            await _release(ws)
                except (tw.HandshakeError, OSError) as exc:
                    if connected:
                        continue  # an error while closing changes nothing
                    error = _connect_error(exc, self.url)
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
            return [self._frame(x) for x in item]
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
                    error, cause = _closed(exc, self.url), exc
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


# --- server source -------------------------------------------------------------------------------


@final
class _Client:
    """One connected client: the acknowledger of its events, which queues their replies."""

    def __init__(self, ws: WebSocketConnection, number: int, max_in_flight: int) -> None:
        self.ws = ws
        self.number = number
        self.peer = str(ws.remote)
        self.slots = trio.Semaphore(max_in_flight)
        # one reply per event in flight: the buffer never fills, so ack() never blocks
        self.replies, self._pending = trio.open_memory_channel[str](max_in_flight)
        self.reading = trio.CancelScope()
        self.done = trio.Event()

    async def ack(self, successful: list[Message[Any]], failed: list[Message[Any]]) -> None:
        for m in successful:
            self._reply({"id": m.metadata["id"], "status": "ok"})
        for m in failed:
            self._reply(
                {"id": m.metadata["id"], "status": "failed", "reason": _reason_text(m.reason)}
            )

    def _reply(self, body: dict[str, Any]) -> None:
        # ClosedResourceError: the client is gone, nobody to tell
        with contextlib.suppress(
            trio.ClosedResourceError, trio.BrokenResourceError, trio.WouldBlock
        ):
            self.replies.send_nowait(json.dumps(body, default=str))

    async def write_replies(self) -> None:
        tw = require("trio_websocket", "websocket")
        async with self._pending:
            async for reply in self._pending:
                try:
                    await self.ws.send_message(reply)
                except tw.ConnectionClosed:
                    pass
                finally:
                    self.slots.release()

    def __repr__(self) -> str:
        return f"<websocket client {self.number} {self.peer}>"


@final
class WebSocketServerSource(Source[Any]):
    """Events pushed by WebSocket clients, each answered once acked or failed downstream.

    The server listens on ``host:port`` for the run (``port=0`` picks a free port: read it from
    ``on_listen(port)`` or ``.port``). With ``envelope=True`` (the default) a client sends
    ``{"id": ..., "data": ...}`` as JSON text; the message's data is ``data`` and the reply
    carries ``id``: ``{"id": ..., "status": "ok"}`` or ``{"id": ..., "status": "failed",
    "reason": "ValueError: ..."}``. A frame that is not such an envelope is answered failed at
    once (``id`` null when it has none). With ``envelope=False`` each frame is an event (decoded
    from JSON with ``format="json"``, else ``str``/``bytes``) and its id is its 1-based position
    on the connection. Metadata: ``id``, ``peer`` (``"host:port"``) and ``connection`` (a number).

    Back-pressure: a connection's reader takes a slot per event and gives it back when the reply
    is sent; with ``max_in_flight`` unanswered events it stops reading, and the client's sends
    block once TCP buffers fill. Memory: at most ``max_in_flight`` events (of at most
    ``max_message_size`` bytes) per connection.

    Shutdown: a drain stops handing events over, the run acks what is in flight and the replies
    are sent; then each client is closed with 1001 (going away). An event a client sent but never
    got a reply for was not processed: a client resends it on reconnect (at-least-once, given
    idempotent handling or an id to deduplicate on).

    Examples:
        >>> source = WebSocketServerSource("0.0.0.0", 8765, max_in_flight=50)
        >>> await (source | tf.decode(Order, format=None) | tf.sink(place)).run(stop=stop)
    """

    _options: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        envelope: bool = True,
        format: Format = "json",
        max_in_flight: int = 100,
        max_message_size: int = _MIB,
        on_listen: Callable[[int], object] | None = None,
        shutdown_timeout: float = 5.0,
        name: str | None = None,
    ) -> None:
        if format not in ("json", None):
            raise ValueError(f"format={format!r} must be 'json' or None")
        if envelope and format != "json":
            raise ValueError("envelope=True needs format='json' (an envelope is a JSON object)")
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight!r} must be a positive integer")
        self.host = host
        self.port = port
        self.envelope = envelope
        self.format = format
        self.max_in_flight = max_in_flight
        self.max_message_size = max_message_size
        self.on_listen = on_listen
        self.shutdown_timeout = shutdown_timeout
        self.name = name

    def open(self) -> AbstractAsyncContextManager[Source[Any]]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Source[Any]]:
        tw = require("trio_websocket", "websocket")
        run = _ServerRun(self)
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: tw.serve_websocket(
                    run.serve_client,
                    self.host,
                    self.port,
                    None,
                    max_message_size=self.max_message_size,
                    task_status=task_status,
                )
            )
            self.port = run.port = server.port
            if self.on_listen is not None:
                self.on_listen(server.port)
            try:
                yield run
            finally:
                with trio.move_on_after(self.shutdown_timeout, shield=True):
                    await run.shutdown()
                nursery.cancel_scope.cancel()

    async def produce(self, out: Outlet) -> None:  # pragma: no cover - open() yields the runner
        raise RuntimeError("WebSocketServerSource runs through open()")

    @property
    def label(self) -> str:
        return self.name or f"WebSocketServerSource({self.host}:{self.port})"

    def __repr__(self) -> str:
        return f"WebSocketServerSource({self.host!r}, {self.port!r})"


@final
class _ServerRun(Source[Any]):
    """One run of a :class:`WebSocketServerSource`: its clients and the events they push."""

    def __init__(self, spec: WebSocketServerSource) -> None:
        self.spec = spec
        self.port = spec.port
        self.clients: set[_Client] = set()
        self.events, self._incoming = trio.open_memory_channel[Message[Any]](0)
        self._numbers = itertools.count(1)

    @property
    def label(self) -> str:
        return self.spec.label

    async def produce(self, out: Outlet) -> None:
        incoming = self._incoming
        while True:
            room = await out.demand()
            chunk = [await incoming.receive()]
            try:
                while len(chunk) < room:
                    chunk.append(incoming.receive_nowait())
            except trio.WouldBlock:
                pass
            await out.send_many(chunk)

    async def serve_client(self, request: WebSocketRequest) -> None:
        tw = require("trio_websocket", "websocket")
        try:
            ws = await request.accept()
        except tw.ConnectionClosed:
            return
        client = _Client(ws, next(self._numbers), self.spec.max_in_flight)
        self.clients.add(client)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.write_replies)
                with client.reading:
                    await self._read(client)
                client.replies.close()  # the writer sends what is queued, then ends
            code, why = (
                (1001, "server shutting down") if client.reading.cancel_called else (1000, None)
            )
            with trio.move_on_after(1.0, shield=True):
                await ws.aclose(code, why)
        finally:
            self.clients.discard(client)
            client.done.set()

    async def _read(self, client: _Client) -> None:
        tw = require("trio_websocket", "websocket")
        position = 0
        while True:
            await client.slots.acquire()
            try:
                raw = await client.ws.get_message()
            except tw.ConnectionClosed:
                client.slots.release()
                return
            position += 1
            await self.events.send(self._message(raw, position, client))

    def _message(self, raw: str | bytes, position: int, client: _Client) -> Message[Any]:
        spec = self.spec
        data, bad = _decode(raw, spec.format)
        ident: Any = None if spec.envelope else position
        if spec.envelope and bad is None:
            if isinstance(data, dict) and "id" in data and "data" in data:
                ident, data = data["id"], data["data"]
            else:
                ident = data.get("id") if isinstance(data, dict) else None
                bad = ValueError('an event must be a JSON object {"id": ..., "data": ...}')
        meta = {"id": ident, "peer": client.peer, "connection": client.number}
        message = Message(data, meta, client)
        return message.fail(bad) if bad is not None else message

    async def shutdown(self) -> None:
        """Stop reading, let the replies out, close every client with 1001."""
        clients = list(self.clients)
        for client in clients:
            client.reading.cancel()
        for client in clients:
            await client.done.wait()

    def __repr__(self) -> str:
        return repr(self.spec)
