"""A tiny HTTP/1.1 server on trio and h11, for the HTTP connector's tests (127.0.0.1, port 0).

A test gives it a handler ``async (Request) -> Response``; the handler can also stall
(``await trio.sleep_forever()``), or raise :class:`Drop` to close the connection without an
answer. Keep-alive is supported, so a client reuses its pooled connections as with a real server.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import h11
import trio


class Drop(Exception):
    """Raise from a handler to close the connection without answering."""


@attrs.define
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query))

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = attrs.field(factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200, **headers: str) -> Response:
        hs = {
            "content-type": "application/json",
            **{k.replace("_", "-"): v for k, v in headers.items()},
        }
        return cls(status, json.dumps(data).encode(), hs)


Handler = Callable[[Request], Awaitable[Response]]


@attrs.define
class HttpServer:
    handler: Handler
    port: int = 0
    requests: list[Request] = attrs.field(factory=list)
    connections: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(stream, conn)
                if request is None:
                    return
                self.requests.append(request)
                try:
                    response = await self.handler(request)
                except Drop:
                    return
                headers = [(k, v) for k, v in response.headers.items()]
                headers.append(("content-length", str(len(response.body))))
                reason = HTTPStatus(response.status).phrase.encode()
                head = h11.Response(status_code=response.status, headers=headers, reason=reason)
                data = conn.send(head)
                data += conn.send(h11.Data(data=response.body)) or b""
                data += conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(data)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()

    async def _read_request(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> Request | None:
        head: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                chunk = await stream.receive_some(65536)
                conn.receive_data(chunk)
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                headers = {k.decode().lower(): v.decode() for k, v in head.headers}
                return Request(head.method.decode(), head.target.decode(), headers, body)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def run(
        self, *, task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._connection, listeners)
            task_status.started(self)


@asynccontextmanager
async def serve_http(handler: Handler) -> AsyncIterator[HttpServer]:
    """Run a server with ``handler`` for the duration of the block."""
    async with trio.open_nursery() as nursery:
        server: HttpServer = await nursery.start(HttpServer(handler).run)
        yield server
        nursery.cancel_scope.cancel()
