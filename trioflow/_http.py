"""A minimal HTTP/1.1 server on trio for the metrics endpoint and the dashboard.

It answers ``GET`` (and ``HEAD``) for a fixed set of paths, one request per connection, and
hands a WebSocket upgrade on ``/ws`` to trio-websocket. Everything runs in the pipeline's own
thread, so handlers read the live figures without locks. It is not a general web server: no
keep-alive, no request bodies, headers up to 16 KiB.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any, final

import trio

__all__ = ["Response", "check_loopback", "serve_http"]

#: what a route returns: content type and body
Response = tuple[str, bytes]
Route = Callable[[], Response]
WebSocketHandler = Callable[[Any], Awaitable[None]]

MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def check_loopback(host: str, what: str) -> None:
    """Raise ``ValueError`` unless ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"{what} binds to loopback addresses only (127.0.0.1, ::1), not {host!r}: "
            "it has no authentication"
        )


@final
class _Replay(trio.abc.Stream):
    """A stream that first returns bytes already read from it (the upgrade request)."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
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


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    buf = b""
    with trio.move_on_after(HEAD_TIMEOUT):
        while b"\r\n\r\n" not in buf:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return None
            buf += chunk
            if len(buf) > MAX_HEAD:
                return None
        return buf
    return None


async def _respond(
    stream: trio.abc.Stream, status: int, content_type: str, body: bytes, head_only: bool = False
) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    await stream.send_all(head if head_only else head + body)


async def serve_http(
    routes: dict[str, Route],
    *,
    host: str,
    port: int,
    websocket: WebSocketHandler | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` on ``host:port`` until cancelled; ``task_status`` gets the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def handle(stream: trio.abc.Stream) -> None:
        async with stream:
            raw = await _read_head(stream)
            if raw is None:
                return
            head, _, _rest = raw.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split()
            if len(parts) != 3:
                await _respond(stream, 400, "text/plain", b"bad request\n")
                return
            method, target, _version = parts
            path = target.split("?", 1)[0]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if (
                websocket is not None
                and path == "/ws"
                and headers.get("upgrade", "").lower() == "websocket"
            ):
                await _upgrade(stream, raw, websocket)
                return
            if method not in ("GET", "HEAD"):
                await _respond(stream, 405, "text/plain", b"only GET\n")
                return
            route = routes.get(path)
            if route is None:
                await _respond(stream, 404, "text/plain", b"not found\n", method == "HEAD")
                return
            content_type, body = route()
            await _respond(stream, 200, content_type, body, method == "HEAD")

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, _quiet(handle), listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


def _quiet(
    handle: Callable[[trio.abc.Stream], Awaitable[None]],
) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    """A client that goes away mid-response is its own business, not the pipeline's."""

    async def run(stream: trio.abc.Stream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await handle(stream)

    return run


async def _upgrade(stream: trio.abc.Stream, raw: bytes, handler: WebSocketHandler) -> None:
    from trio_websocket import ConnectionClosed, wrap_server_stream

    async with trio.open_nursery() as nursery:
        request = await wrap_server_stream(nursery, _Replay(stream, raw))
        ws = await request.accept()
        try:
            await handler(ws)
        except ConnectionClosed:
            pass
        finally:
            with trio.move_on_after(1.0, shield=True):
                await ws.aclose()
        nursery.cancel_scope.cancel()
