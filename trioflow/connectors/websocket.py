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

import contextlib
import ipaddress
import itertools
import json
import logging
import urllib.parse
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

logger = logging.getLogger("trioflow")


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
    except RecursionError as exc:  # "[[[[..." deeper than the interpreter's recursion limit
        error = ValueError("JSON nesting too deep")
        error.__cause__ = exc
        return raw, error


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
        self.format: Format = format
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
        self.format: Format = format
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

#: refusals answered at once (503 then a short linger); past this many, excess sockets are closed
_MAX_REFUSING = 32
#: how long a refused socket lingers to let the client read the 503 (reads are discarded)
_REFUSE_LINGER = 1.0
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_Origins = frozenset[tuple[str, str, int | None]]


def _address(sockaddr: Any) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False


def _origin(text: str) -> tuple[str, str, int | None] | None:
    """``scheme://host[:port]`` as ``(scheme, host, port)``; ``None`` when it is not an origin."""
    try:
        parts = urllib.parse.urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username is not None:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)


def _response(status: int, phrase: str, body: str) -> bytes:
    data = body.encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(data)}\r\nconnection: close\r\nretry-after: 1\r\n\r\n"
    )
    return head.encode("ascii") + data


@final
class _ReaderNursery:
    """Stands in for the nursery trio-websocket starts a connection's reader task in.

    ``wrap_server_stream`` waits for the HTTP request even when the reader has ended (the client
    left): ``on_exit`` lets the handshake end with it instead of holding the socket to the timeout.
    """

    def __init__(self, nursery: trio.Nursery, on_exit: Callable[[], object]) -> None:
        self._nursery = nursery
        self._on_exit = on_exit

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        async def run() -> None:
            try:
                await fn(*args)
            finally:
                self._on_exit()

        self._nursery.start_soon(run)


@final
class _Client:
    """One connected client: the acknowledger of its events, which queues their replies."""

    def __init__(self, ws: WebSocketConnection, number: int, peer: str, max_in_flight: int) -> None:
        self.ws = ws
        self.number = number
        self.peer = peer
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
        try:
            text = json.dumps(body, default=str)
        except (ValueError, RecursionError):  # an id that cannot be written back (too deep)
            text = json.dumps({**body, "id": None}, default=str)
        # ClosedResourceError: the client is gone, nobody to tell
        with contextlib.suppress(
            trio.ClosedResourceError, trio.BrokenResourceError, trio.WouldBlock
        ):
            self.replies.send_nowait(text)

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
    once (``id`` null when it has none); so is JSON nested too deeply for Python's parser
    (``"ValueError: JSON nesting too deep"``). With ``envelope=False`` each frame is an event
    (decoded from JSON with ``format="json"``, else ``str``/``bytes``) and its id is its 1-based
    position on the connection. Metadata: ``id``, ``peer`` (``"host:port"``) and ``connection``
    (a number).

    Hostile or broken clients: whatever one connection does (leave mid-handshake, send garbage,
    vanish) ends that connection only, never the run.

    * ``handshake_timeout``: seconds a new connection has to complete the WebSocket handshake;
      a client that leaves before finishing it frees its socket at once.
    * ``max_connections``: sockets served at once (handshaking or open). When it is reached, a
      new connection takes the slot of the oldest one still in its handshake (that one is
      closed); when every slot holds an open WebSocket, the newcomer gets ``HTTP 503``.
    * ``allowed_origins``: which web pages may connect, checked before the handshake completes
      (``HTTP 403`` otherwise). A request without ``Origin`` (not a browser) is always allowed.
      ``None`` (the default): same origin only, i.e. the ``Origin``'s host and port are those of
      the ``Host`` header, and when the server listens on loopback the ``Host`` must be a
      loopback name too (a DNS-rebinding page is refused). A list of origins
      (``["https://app.example"]``) allows exactly those; ``["*"]`` allows any page.

    Refusals are counted in ``refused`` (``"capacity"``, ``"origin"``, ``"handshake"``) and
    logged (the 1st, 2nd, 4th, 8th... of each kind) under the ``"trioflow"`` logger.

    Back-pressure: a connection's reader takes a slot per event and gives it back when the reply
    is sent; with ``max_in_flight`` unanswered events it stops reading, and the client's sends
    block once TCP buffers fill. Memory: at most ``max_in_flight`` events (of at most
    ``max_message_size`` bytes) per connection, times ``max_connections``.

    Shutdown: a drain stops handing events over, the run acks what is in flight and the replies
    are sent; then each client is closed with 1001 (going away), and new connections get 503.
    An event a client sent but never got a reply for was not processed: a client resends it on
    reconnect (at-least-once, given idempotent handling or an id to deduplicate on).

    Examples:
        >>> source = WebSocketServerSource("0.0.0.0", 8765, max_in_flight=50,
        ...                                allowed_origins=["https://app.example"])
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
        max_connections: int = 100,
        handshake_timeout: float = 5.0,
        allowed_origins: Iterable[str] | None = None,
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
        if (
            not isinstance(max_connections, int)
            or isinstance(max_connections, bool)
            or max_connections < 1
        ):
            raise ValueError(f"max_connections={max_connections!r} must be a positive integer")
        if (
            not isinstance(handshake_timeout, (int, float))
            or isinstance(handshake_timeout, bool)
            or not handshake_timeout > 0
        ):
            raise ValueError(
                f"handshake_timeout={handshake_timeout!r} must be a positive number of seconds"
            )
        self.host = host
        self.port = port
        self.envelope = envelope
        self.format: Format = format
        self.max_in_flight = max_in_flight
        self.max_message_size = max_message_size
        self.max_connections = max_connections
        self.handshake_timeout = float(handshake_timeout)
        #: ``None`` (same origin), ``"*"``, or the allowed origins as (scheme, host, port)
        self.allowed_origins: _Origins | Literal["*"] | None = (
            None if allowed_origins is None else _origins(allowed_origins)
        )
        self.on_listen = on_listen
        self.shutdown_timeout = shutdown_timeout
        self.name = name
        #: connections refused so far (all runs), by reason, for monitoring
        self.refused: dict[str, int] = {"capacity": 0, "origin": 0, "handshake": 0}

    def open(self) -> AbstractAsyncContextManager[Source[Any]]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Source[Any]]:
        require("trio_websocket", "websocket")
        run = _ServerRun(self)
        async with trio.open_nursery() as nursery:
            await nursery.start(run.serve)
            self.port = run.port
            if self.on_listen is not None:
                self.on_listen(run.port)
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


def _origins(allowed: Iterable[str]) -> _Origins | Literal["*"]:
    entries = [allowed] if isinstance(allowed, str) else list(allowed)
    keys: set[tuple[str, str, int | None]] = set()
    for entry in entries:
        if entry == "*":
            return "*"
        key = _origin(entry) if isinstance(entry, str) else None
        if key is None:
            raise ValueError(
                f"allowed_origins entry {entry!r} must be '*' or an origin such as "
                "'https://app.example' or 'http://127.0.0.1:8000'"
            )
        keys.add(key)
    return frozenset(keys)


@final
class _ServerRun(Source[Any]):
    """One run of a :class:`WebSocketServerSource`: its clients and the events they push."""

    def __init__(self, spec: WebSocketServerSource) -> None:
        self.spec = spec
        self.port = spec.port
        self.clients: set[_Client] = set()
        self.events, self._incoming = trio.open_memory_channel[Message[Any]](0)
        self._numbers = itertools.count(1)
        self.connections = 0  # sockets being served: handshaking or open
        self._handshaking: dict[object, trio.CancelScope] = {}  # oldest first
        self._refusing = 0
        self._closing = False
        self._loopback = False

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

    async def serve(
        self,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until cancelled (accept errors such as EMFILE: back off, go on)."""
        listeners = await trio.open_tcp_listeners(self.spec.port, host=self.spec.host)
        names = [listener.socket.getsockname() for listener in listeners]
        self._loopback = all(_is_loopback(name[0]) for name in names)
        self.port = names[0][1]
        # trio's serve_listeners sleeps 0.1 s and retries on EMFILE, ENFILE, ENOMEM, ENOBUFS
        await trio.serve_listeners(self._serve_stream, listeners, task_status=task_status)

    def _note(self, kind: str, what: str) -> None:
        count = self.spec.refused[kind] = self.spec.refused[kind] + 1
        if count & (count - 1) == 0:  # 1st, 2nd, 4th, 8th...: a flood cannot flood the log
            logger.warning(
                "trioflow: %s %s (%d %s refusal(s) so far)", self.spec.label, what, count, kind
            )

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        if self._closing:
            await self._refuse(stream, "server shutting down")
            return
        if self.connections >= self.spec.max_connections:
            if not self._handshaking:
                self._note("capacity", f"refused a connection: {self.connections} are open")
                await self._refuse(stream, "too many connections")
                return
            key = next(iter(self._handshaking))
            self._handshaking.pop(key).cancel()  # the newcomer takes the slot
            self._note("handshake", "dropped the oldest unfinished handshake to make room")
        self.connections += 1
        try:
            await self._serve_connection(stream)
        except Exception as exc:  # one connection never stops the server
            logger.error(
                "trioflow: %s: a connection failed (%s: %s); the server goes on",
                self.spec.label,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        finally:
            self.connections -= 1

    async def _refuse(self, stream: trio.SocketStream, why: str) -> None:
        """Answer 503 before any handshake; under a flood of refusals, just close the socket."""
        if self._refusing >= _MAX_REFUSING:
            return  # serve_listeners closes it
        self._refusing += 1
        try:
            with trio.move_on_after(_REFUSE_LINGER):
                await stream.send_all(_response(503, "Service Unavailable", why + "\n"))
                await stream.send_eof()
                # closing with the request unread would reset the connection, and a reset can
                # destroy the 503 before the client reads it: read (and drop) until it leaves
                received = 0
                while received < 65536 and (data := await stream.receive_some(16384)):
                    received += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._refusing -= 1

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        tw = require("trio_websocket", "websocket")
        spec = self.spec
        try:
            peer = _address(stream.socket.getpeername())
        except OSError:  # ENOTCONN: it left already
            return
        async with trio.open_nursery() as nursery:  # holds trio-websocket's reader task
            ws: WebSocketConnection | None = None
            key = object()
            deadline = trio.current_time() + spec.handshake_timeout
            with trio.CancelScope(deadline=deadline) as handshake:
                self._handshaking[key] = handshake
                try:
                    request = await tw.wrap_server_stream(
                        _ReaderNursery(nursery, handshake.cancel),
                        stream,
                        max_message_size=spec.max_message_size,
                    )
                    self._handshaking.pop(key, None)
                    refusal = self._origin_refusal(request)
                    if refusal is None:
                        ws = await request.accept()
                    else:
                        self._note("origin", f"refused {peer}: {refusal}")
                        await request.reject(403, body=f"{refusal}\n".encode())
                except tw.ConnectionClosed:
                    pass  # it left during the handshake
                finally:
                    self._handshaking.pop(key, None)
            if handshake.cancelled_caught and trio.current_time() >= deadline:
                self._note(
                    "handshake", f"closed {peer}: no handshake in {spec.handshake_timeout:g}s"
                )
            if ws is not None:
                await self._serve_client(ws, peer)
            nursery.cancel_scope.cancel()  # the reader, if the close handshake did not end it

    def _origin_refusal(self, request: WebSocketRequest) -> str | None:
        """Why this request's ``Origin`` is not allowed; ``None`` when it is."""
        values = [value for name, value in request.headers if name.lower() == b"origin"]
        if not values:
            return None  # not a browser
        allowed = self.spec.allowed_origins
        if allowed == "*":
            return None
        text = values[0].decode("latin-1")
        origin = _origin(text) if len(values) == 1 else None
        if origin is not None and allowed is not None:
            return None if origin in allowed else f"origin {text!r} is not allowed"
        # same origin: the page's host and port are those the client reached this server at
        host = getattr(getattr(request, "_event", None), "host", None)
        if origin is None or not isinstance(host, str):
            return f"origin {text!r} is not allowed"
        try:
            parts = urllib.parse.urlsplit("//" + host)
            host_name, host_port = (parts.hostname or "").lower(), parts.port
        except ValueError:
            return f"host {host!r} is not valid"
        scheme, name, port = origin
        same_port = port == host_port or (host_port is None and port == _DEFAULT_PORTS.get(scheme))
        if name != host_name or not same_port:
            return f"origin {text!r} is not this server's ({host}); see allowed_origins"
        if self._loopback and not _is_loopback(host_name):
            return f"host {host!r} is not a loopback name (DNS rebinding?); see allowed_origins"
        return None

    async def _serve_client(self, ws: WebSocketConnection, peer: str) -> None:
        tw = require("trio_websocket", "websocket")
        client = _Client(ws, next(self._numbers), peer, self.spec.max_in_flight)
        self.clients.add(client)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.write_replies)
                with client.reading:
                    if self._closing:
                        client.reading.cancel()
                    await self._read(client)
                client.replies.close()  # the writer sends what is queued, then ends
            code, why = (
                (1001, "server shutting down") if client.reading.cancel_called else (1000, None)
            )
            with trio.move_on_after(1.0, shield=True), contextlib.suppress(tw.ConnectionClosed):
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
        """Stop reading, let the replies out, close every client with 1001; refuse newcomers."""
        self._closing = True
        clients = list(self.clients)
        for client in clients:
            client.reading.cancel()
        for client in clients:
            await client.done.wait()

    def __repr__(self) -> str:
        return repr(self.spec)
