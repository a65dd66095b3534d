"""The WebSocket server source: clients push events, each answered once settled.

See :mod:`trioflow.connectors.websocket` (which exports :class:`WebSocketServerSource`) and
docs/connectors/websocket.md.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast, final

import trio

from .._http import Access, is_loopback
from .._message import Message
from .._message import reason_text as _reason_text
from .._sources import Outlet, Source
from ._lazy import require
from ._trace_context import TRACEPARENT, TRACESTATE, checked, from_header_pairs
from ._ws_common import MIB, Format, decode, logger

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection, WebSocketRequest

__all__ = ["WebSocketServerSource"]

# --- server source -------------------------------------------------------------------------------

#: refusals answered at once (503 then a short linger); past this many, excess sockets are closed
_MAX_REFUSING = 32
#: how long a refused socket lingers to let the client read the 503 (reads are discarded)
_REFUSE_LINGER = 1.0
_Origins = frozenset[str]


def _address(sockaddr: Any) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


#: the dashboard's rules, one implementation: an Access with no listed origins answers
#: "is this Origin the same as the Host?"
_SAME_ORIGIN = Access(bound="")


def _origin(text: str) -> str | None:
    """``text`` as ``scheme://host:port`` (http or https, default port filled in, lowercase),
    as the dashboard normalizes origins; ``None`` when it is not one."""
    try:
        access = Access.build("", allow_remote=True, allowed_hosts=None, allowed_origins=[text])
    except ValueError:
        return None
    [normal] = access.origins
    return normal


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
        #: the trace context of the handshake's headers (``traceparent``, ``tracestate``)
        self.trace: dict[str, str] = {}

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
    position on the connection. Metadata: ``id``, ``peer`` (``"host:port"``), ``connection``
    (a number) and the W3C trace context ``OpenTelemetry`` continues, ``traceparent`` (and
    ``tracestate``): an envelope's own ``"traceparent"`` member, else the handshake's header.

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
        max_message_size: int = MIB,
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
        self.port: int = port
        self.envelope = envelope
        self.format: Format = format
        self.max_in_flight = max_in_flight
        self.max_message_size = max_message_size
        self.max_connections = max_connections
        self.handshake_timeout: float = float(handshake_timeout)
        #: ``None`` (same origin), ``"*"``, or the allowed origins (``scheme://host:port``)
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
    async def _open(self) -> AsyncGenerator[Source[Any], None]:
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
    keys: set[str] = set()
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
        self._loopback = all(is_loopback(name[0]) for name in names)
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
            request: WebSocketRequest | None = None
            key = object()
            deadline = trio.current_time() + spec.handshake_timeout
            with trio.CancelScope(deadline=deadline) as handshake:
                self._handshaking[key] = handshake
                try:
                    shaking: WebSocketRequest = await tw.wrap_server_stream(
                        _ReaderNursery(nursery, handshake.cancel),
                        stream,
                        max_message_size=spec.max_message_size,
                    )
                    request = shaking
                    self._handshaking.pop(key, None)
                    refusal = self._origin_refusal(shaking)
                    if refusal is None:
                        ws = await shaking.accept()
                    else:
                        self._note("origin", f"refused {peer}: {refusal}")
                        await shaking.reject(403, body=f"{refusal}\n".encode())
                except tw.ConnectionClosed:
                    pass  # it left during the handshake
                finally:
                    self._handshaking.pop(key, None)
            if handshake.cancelled_caught and trio.current_time() >= deadline:
                self._note(
                    "handshake", f"closed {peer}: no handshake in {spec.handshake_timeout:g}s"
                )
            if ws is not None and request is not None:
                await self._serve_client(ws, peer, from_header_pairs(request.headers))
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
        if not _SAME_ORIGIN.origin_allowed(text, host):
            return f"origin {text!r} is not this server's ({host}); see allowed_origins"
        if self._loopback and not _SAME_ORIGIN.host_allowed(host):
            return f"host {host!r} is not a loopback name (DNS rebinding?); see allowed_origins"
        return None

    async def _serve_client(
        self, ws: WebSocketConnection, peer: str, trace: dict[str, str]
    ) -> None:
        tw = require("trio_websocket", "websocket")
        client = _Client(ws, next(self._numbers), peer, self.spec.max_in_flight)
        client.trace = trace
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
        data, bad = decode(raw, spec.format)
        payload: Any = data
        ident: Any = None if spec.envelope else position
        trace = client.trace  # the handshake's trace context, if it had one
        if spec.envelope and bad is None:
            if isinstance(data, dict) and "id" in data and "data" in data:
                event = cast("dict[str, Any]", data)
                parent = event.get(TRACEPARENT)
                if isinstance(parent, str):  # this event's own trace context, if valid
                    state = event.get(TRACESTATE)
                    trace = checked(parent, state if isinstance(state, str) else None) or trace
                ident, payload = event["id"], event["data"]
            else:
                ident = cast("dict[str, Any]", data).get("id") if isinstance(data, dict) else None
                bad = ValueError('an event must be a JSON object {"id": ..., "data": ...}')
        meta: dict[str, Any] = {"id": ident, "peer": client.peer, "connection": client.number}
        if trace:
            meta.update(trace)
        message = Message(payload, meta, client)
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
