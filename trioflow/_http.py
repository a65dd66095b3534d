"""A small HTTP/1.1 server on trio and h11 for the metrics endpoint and the dashboard.

It answers ``GET`` (and ``HEAD``) for a fixed set of paths, ``POST`` for a fixed set of
actions (a body of at most :data:`MAX_BODY` bytes), one request per connection, and hands a
WebSocket upgrade on ``/ws`` to trio-websocket. Everything runs in the pipeline's own thread,
so handlers read the live figures without locks. It is not a general web server: no
keep-alive, no chunked bodies.

What a client can cost is bounded, and nothing a client does reaches the pipeline:

* the request head must arrive within ``head_timeout`` seconds (408) and fit in
  :data:`MAX_HEAD` bytes (431); bytes that are not HTTP get a 400;
* at most ``max_connections`` connections are served at once (WebSocket feeds included); the
  excess is answered 503 at once and closed;
* a response (or a WebSocket message) that cannot be sent within :data:`SEND_TIMEOUT` seconds
  closes the connection;
* the ``Host`` header must name the server (DNS rebinding), and a WebSocket upgrade must come
  from the same origin (cross-site pages): see :class:`Access`.

An error in one connection is logged and closes that connection only.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from typing import Any, cast, final
from urllib.parse import urlsplit

import attrs
import h11
import trio

__all__ = ["Access", "Request", "Response", "check_loopback", "serve_http"]


@final
@attrs.frozen
class Request:
    """What a route sees of a request: ``headers`` have lowercase names; ``body`` is empty for
    ``GET``/``HEAD``."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes = b""


#: what a GET route returns: content type and body
Response = tuple[str, bytes]
Route = Callable[[Request], Response | Awaitable[Response]]
#: what a POST action returns: status, content type and body
Action = Callable[[Request], tuple[int, str, bytes]]
WebSocketHandler = Callable[[Any], Awaitable[None]]

#: largest request head (request line and headers), in bytes
MAX_HEAD = 16 * 1024
#: default seconds a client has to send its request head
HEAD_TIMEOUT = 5.0
#: default number of connections served at once
MAX_CONNECTIONS = 64
#: seconds a response, or one WebSocket message, may take to be sent
SEND_TIMEOUT = 10.0
#: largest POST body, in bytes
MAX_BODY = 4096
#: largest message the dashboard's WebSocket accepts from a page (it expects none)
WS_MAX_MESSAGE = 4096

_RECEIVE = 4096
_LOOPBACK_NAMES = frozenset({"localhost"})
_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    408: "Request Timeout",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}

logger = logging.getLogger("trioflow")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (``127.0.0.0/8``, ``::1``)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_loopback(host: str, what: str, *, hint: str = "") -> None:
    """Raise ``ValueError`` unless ``host`` is a loopback address (or ``localhost``).

    ``hint`` ends the message: how to serve on another address anyway.
    """
    if not is_loopback(host):
        raise ValueError(
            f"{what} binds to loopback addresses only (127.0.0.1, ::1, localhost), not "
            f"{host!r}: it has no authentication" + (f"; {hint}" if hint else "")
        )


def _split_authority(value: str) -> tuple[str, int | None]:
    """``name``, ``name:port``, ``[v6]`` or ``[v6]:port`` as (lowercase name, port)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(value)
        port_text = rest[1:] if rest else None
    else:
        name, colon, port_text_ = value.rpartition(":")
        if not colon:
            name, port_text = value, None
        else:
            if ":" in name:  # a bare IPv6 address, not valid in Host
                raise ValueError(value)
            port_text = port_text_
    if port_text is not None and not (port_text.isdigit() and len(port_text) <= 5):
        raise ValueError(value)
    name = name.rstrip(".")
    if not name or any(c.isspace() or c in "/?#@" for c in name):
        raise ValueError(value)
    return name, int(port_text) if port_text is not None else None


@final
@attrs.frozen
class Access:
    """Which ``Host`` headers and WebSocket ``Origin`` headers the server accepts.

    ``Host``: always ``localhost`` and loopback addresses (a DNS-rebinding page cannot use an
    address literal), the bound address, and each of ``hosts`` (``"name"`` or
    ``"name:port"``; ``"*"``: any). The port of a ``Host`` without one in the rule is not
    checked, so SSH tunnels and port mappings to another port keep working. ``any_host``
    (``allow_remote=True`` without ``allowed_hosts``) accepts every ``Host``.

    ``Origin`` (WebSocket upgrades only): absent (not a browser), the same origin as the
    request's ``Host``, or one of ``origins`` (``"https://grafana.example:3000"``).
    """

    bound: str
    hosts: tuple[tuple[str, int | None], ...] = ()
    any_host: bool = False
    origins: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        bound: str,
        *,
        allow_remote: bool,
        allowed_hosts: Iterable[str] | None,
        allowed_origins: Iterable[str] = (),
    ) -> Access:
        """Validate the user's options (``ValueError`` naming the bad one) into an ``Access``."""
        hosts: list[tuple[str, int | None]] = []
        any_host = allow_remote and allowed_hosts is None
        if isinstance(allowed_hosts, str):
            raise ValueError(f"allowed_hosts={allowed_hosts!r} must be a list of host names")
        for entry in allowed_hosts or ():
            if entry == "*":
                any_host = True
                continue
            try:
                hosts.append(_split_authority(entry))
            except ValueError:
                raise ValueError(
                    f"allowed_hosts: {entry!r} is not a host name or host:port"
                ) from None
        if isinstance(allowed_origins, str):
            raise ValueError(f"allowed_origins={allowed_origins!r} must be a list of origins")
        origins: set[str] = set()
        for origin in allowed_origins:
            normal = _normal_origin(origin)
            if normal is None:
                raise ValueError(
                    f"allowed_origins: {origin!r} is not an origin such as 'https://host:port'"
                )
            origins.add(normal)
        return cls(bound.strip("[]").lower(), tuple(hosts), any_host, frozenset(origins))

    def host_allowed(self, host: str) -> bool:
        if self.any_host:
            return True
        try:
            name, port = _split_authority(host)
        except ValueError:
            return False
        if is_loopback(name) or name == self.bound:
            return True
        return any(name == n and (p is None or p == port) for n, p in self.hosts)

    def origin_allowed(self, origin: str | None, host: str) -> bool:
        if origin is None:
            return True
        normal = _normal_origin(origin)
        if normal is None:
            return False
        if normal in self.origins:
            return True
        scheme, _, authority = normal.partition("://")
        try:
            origin_authority = _split_authority(authority)
            name, port = _split_authority(host)
        except ValueError:
            return False
        default = 443 if scheme in ("https", "wss") else 80
        return origin_authority == (name, port if port is not None else default)


def _normal_origin(origin: str) -> str | None:
    """``scheme://host:port`` with the default port filled in, or ``None`` (``"null"``...)."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
        return None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{name}:{port}"


def check_limits(*, max_connections: int, head_timeout: float) -> None:
    """Raise ``ValueError`` naming an out-of-range limit."""
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise ValueError(f"max_connections={max_connections!r} must be a positive integer")
    if max_connections < 1:
        raise ValueError(f"max_connections={max_connections!r} must be a positive integer")
    if not (isinstance(head_timeout, int | float) and 0 < head_timeout < math.inf):
        raise ValueError(f"head_timeout={head_timeout!r} must be a positive number of seconds")


@final
class _Replay(trio.abc.Stream):
    """A stream that first returns bytes already read from it (the upgrade request)."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with trio.fail_after(SEND_TIMEOUT):
            await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


def _simple(status: int, body: bytes, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole ``Connection: close`` response, for when h11 cannot frame one (no request)."""
    head = f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
    head += "Content-Type: text/plain; charset=utf-8\r\n"
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in extra)
    return head.encode() + b"\r\n" + body


async def _send_simple(
    stream: trio.abc.Stream, status: int, body: bytes, extra: tuple[tuple[str, str], ...] = ()
) -> None:
    with trio.move_on_after(SEND_TIMEOUT):
        await stream.send_all(_simple(status, body, extra))


async def _linger(stream: trio.abc.Stream) -> None:
    """Read what the client sent before closing, so the kernel does not reset the connection
    (and lose our answer) over unread bytes; bounded in time and bytes."""
    with trio.move_on_after(0.5):
        if isinstance(stream, trio.SocketStream):
            await stream.send_eof()
        read = 0
        while read < MAX_HEAD and (chunk := await stream.receive_some(_RECEIVE)):
            read += len(chunk)


async def _respond(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    status: int,
    content_type: str,
    body: bytes,
    *,
    head_only: bool = False,
    extra: tuple[tuple[str, str], ...] = (),
) -> None:
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
        # never inside another site's frame: a framed dashboard would carry its token, and a
        # click there (clickjacking) would pass every guard of the controls
        ("X-Frame-Options", "DENY"),
        ("Content-Security-Policy", "frame-ancestors 'none'"),
        ("X-Content-Type-Options", "nosniff"),
        *extra,
    ]
    data = conn.send(h11.Response(status_code=status, headers=headers, reason=_REASONS[status]))
    assert data is not None
    if not head_only and body:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    with trio.move_on_after(SEND_TIMEOUT):
        await stream.send_all(data)


async def _read_request(
    stream: trio.abc.Stream, conn: h11.Connection, head_timeout: float
) -> tuple[h11.Request | None, bytes]:
    """The request head and every byte read so far; ``None`` when the client left or failed
    (then the client has been answered if it deserved an answer)."""
    received = bytearray()
    with trio.move_on_after(head_timeout):
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if exc.error_status_hint in _REASONS else 400
                message = "request head too large" if status == 431 else "bad request"
                await _send_simple(stream, status, f"{message}\n".encode())
                await _linger(stream)
                return None, b""
            if isinstance(event, h11.Request):
                return event, bytes(received)
            if event is not h11.NEED_DATA:  # ConnectionClosed: the client went away
                return None, b""
            chunk = bytes(await stream.receive_some(_RECEIVE))
            received += chunk
            if len(received) > MAX_HEAD:  # h11 only bounds a head that is still incomplete
                await _send_simple(stream, 431, b"request head too large\n")
                await _linger(stream)
                return None, b""
            conn.receive_data(chunk)
    await _send_simple(stream, 408, b"request head not received in time\n")
    return None, b""


async def serve_http(
    routes: Mapping[str, Route],
    *,
    host: str,
    port: int,
    access: Access,
    actions: Mapping[str, Action] | None = None,
    websocket: WebSocketHandler | None = None,
    max_connections: int = MAX_CONNECTIONS,
    head_timeout: float = HEAD_TIMEOUT,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` (GET; a route may be async) and ``actions`` (POST) on ``host:port``
    until cancelled;
    ``task_status`` gets the bound port.

    An action is called with the request and its body (at most :data:`MAX_BODY` bytes, sized
    by ``Content-Length``); it must check what it needs (a token, the ``Origin``) itself. The
    caller has checked that ``host`` may be bound (:func:`check_loopback`) and built
    ``access`` from the user's options.
    """
    check_limits(max_connections=max_connections, head_timeout=head_timeout)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port: int = listeners[0].socket.getsockname()[1]
    active = 0

    async def handle(stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        request, raw = await _read_request(stream, conn, head_timeout)
        if request is None:
            return
        # h11 refuses to send a body in answer to HEAD, whatever the status
        respond = partial(_respond, stream, conn, head_only=request.method == b"HEAD")
        headers = {name.decode("latin-1"): value for name, value in request.headers}
        try:
            host_header = headers["host"].decode("ascii")
            origin_bytes = headers.get("origin")
            origin = origin_bytes.decode("ascii") if origin_bytes is not None else None
            target = request.target.decode("ascii")
        except (KeyError, UnicodeDecodeError):
            await respond(400, "text/plain", b"bad or missing Host header\n")
            return
        if not access.host_allowed(host_header):
            # a name we were not told about: possibly a DNS-rebinding page
            await respond(
                421,
                "text/plain",
                b"this server does not answer for that Host (see allowed_hosts)\n",
            )
            return
        path = target.split("?", 1)[0]
        upgrade = headers.get("upgrade", b"").lower() == b"websocket"
        if websocket is not None and path == "/ws" and upgrade:
            if not access.origin_allowed(origin, host_header):
                await respond(
                    403, "text/plain", b"cross-origin WebSocket refused (see allowed_origins)\n"
                )
                return
            await _upgrade(stream, raw, websocket)
            return
        method = request.method.decode("ascii", "replace")
        text_headers = {k: v.decode("latin-1") for k, v in headers.items()}
        action = (actions or {}).get(path)
        if action is not None:
            if method != "POST":
                await respond(405, "text/plain", b"only POST\n", extra=(("Allow", "POST"),))
                return
            got = await _read_body(stream, conn, headers, head_timeout)
            if isinstance(got, int):
                message = {411: b"Content-Length required\n", 413: b"body too large\n"}
                await respond(got, "text/plain", message.get(got, b"bad request\n"))
                return
            status, kind, reply = action(Request(method, path, text_headers, got))
            await respond(status, kind, reply)
            return
        if method not in ("GET", "HEAD"):
            await respond(405, "text/plain", b"only GET\n", extra=(("Allow", "GET, HEAD"),))
            return
        route = routes.get(path)
        if route is None:
            await respond(404, "text/plain", b"not found\n")
            return
        answer = route(Request(method, path, text_headers))
        response = await answer if inspect.isawaitable(answer) else answer
        await respond(200, *response)

    async def serve_one(stream: trio.abc.Stream) -> None:
        nonlocal active
        async with stream:
            if active >= max_connections:
                logger.debug("HTTP server on port %s: connection limit reached", bound_port)
                await _send_simple(stream, 503, b"too many connections\n", (("Retry-After", "1"),))
                await _linger(stream)
                return
            active += 1
            try:
                await handle(stream)
            except Exception as exc:
                # a client that went away or stopped reading is its own business; anything
                # else is logged, but never the pipeline's business either
                if not _client_gone(exc):
                    logger.warning("HTTP server: a connection failed", exc_info=True)
            finally:
                active -= 1

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, serve_one, listeners)
        task_status.started(bound_port)


async def _read_body(
    stream: trio.abc.Stream, conn: h11.Connection, headers: dict[str, bytes], timeout: float
) -> bytes | int:
    """The request's body, or the status to refuse it with: 411 (no ``Content-Length``), 413
    (over :data:`MAX_BODY`), 400 (malformed), 408 (not received within ``timeout``)."""
    length = headers.get("content-length")
    if length is None:
        return b"" if headers.get("transfer-encoding") is None else 411
    if int(length) > MAX_BODY:  # h11 has checked that it is a number
        return 413
    body = bytearray()
    with trio.move_on_after(timeout):
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return 400
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            elif event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(_RECEIVE)))
            else:
                return 400
    return 408


_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError)


def _client_gone(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", exc)
        return all(_client_gone(e) for e in group.exceptions)
    from_ws = type(exc).__module__.startswith("trio_websocket")  # ConnectionClosed and kin
    return isinstance(exc, _GONE) or from_ws


async def _upgrade(stream: trio.abc.Stream, raw: bytes, handler: WebSocketHandler) -> None:
    from trio_websocket import ConnectionClosed, wrap_server_stream

    async with trio.open_nursery() as nursery:
        request = await wrap_server_stream(
            nursery, _Replay(stream, raw), max_message_size=WS_MAX_MESSAGE
        )
        ws = await request.accept()
        try:
            await handler(ws)
        except ConnectionClosed:
            pass
        finally:
            with trio.move_on_after(1.0, shield=True):
                await ws.aclose()
        nursery.cancel_scope.cancel()
