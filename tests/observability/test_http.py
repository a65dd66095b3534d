"""The metrics and dashboard server against real clients on 127.0.0.1: hostile and broken ones
(garbage, huge or slow heads, half-open and vanishing sockets, too many connections), foreign
``Host`` and ``Origin`` headers, and the ``allow_remote`` opt-in. None of them may stop the
pipeline the server watches.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket, open_websocket_url

import trioflow as tf
from trioflow.observe import serve_dashboard, serve_metrics


async def noop(item: Any) -> None:
    pass


@asynccontextmanager
async def serving(
    server: Any = serve_metrics, **options: Any
) -> AsyncIterator[tuple[tf.PipelineHandle, int]]:
    """A running pipeline (fed by a channel, so it has no timers of its own) and ``server``
    watching it on 127.0.0.1; the pipeline must still be running when the block ends."""
    send, receive = trio.open_memory_channel[int](10)
    pipeline = tf.from_channel(receive) | tf.sink(noop)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        port = await nursery.start(partial(server, handle, host="127.0.0.1", port=0, **options))
        await send.send(1)
        yield handle, port
        # whatever the clients did, the pipeline runs on and the server still answers
        await send.send(2)
        async with httpx.AsyncClient() as client:
            got = await client.get(f"http://127.0.0.1:{port}/metrics.json")
        assert got.status_code == 200
        assert handle.snapshot()["state"] == "running"
        nursery.cancel_scope.cancel()


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, then read until the server closes (within 20 s)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    with trio.fail_after(20):
        async with stream:
            await stream.send_all(data)
            try:
                while chunk := await stream.receive_some():
                    received += chunk
            except trio.BrokenResourceError:  # a reset after the answer
                pass
    return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def get(path: str, host: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *extra, "", ""]
    return "\r\n".join(lines).encode()


def upgrade(host: str, *extra: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return get(
        "/ws",
        host,
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *extra,
    )


def reset(sock: trio.socket.SocketType) -> None:
    """Close with a TCP reset, as a crashed client or a dropped route looks to the server."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- parsing with h11 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /metrics.json HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n",
        b"GET /metrics.json HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n",
        b"GET /metrics.json HTTP/1.1\r\nHost: 127.0.0.1\r\nX: a\x00b\r\n\r\n",
        b"GET /metrics.json HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n"
        b"Content-Length: 2\r\n\r\n",
        b"GET /metrics.json HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET /metrics.json FTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ],
)
async def test_malformed_requests_get_400(request_bytes: bytes) -> None:
    async with serving() as (_, port):
        response = await exchange(port, request_bytes)
        assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n"), response


async def test_head_post_and_http_1_0() -> None:
    async with serving() as (_, port):
        response = await exchange(port, b"HEAD /metrics.json HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"content-length: " in head.lower()
        assert body == b""
        post = b"POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nabc"
        response = await exchange(port, post)
        assert response.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
        assert b"allow: GET, HEAD\r\n" in response.lower().replace(b"get, head", b"GET, HEAD")
        # HEAD is answered without a body whatever the status
        for host, status in (("evil.example", 421), ("localhost", 404)):
            head = f"HEAD /nope HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            response = await exchange(port, head)
            assert status_of(response) == status
            assert response.endswith(b"\r\n\r\n")
        response = await exchange(port, b"GET /metrics.json HTTP/1.0\r\nHost: localhost\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 200 OK\r\n")
        assert json.loads(response.partition(b"\r\n\r\n")[2])["state"] == "running"


async def test_oversized_head_gets_431() -> None:
    async with serving() as (_, port):
        padding = "X-Padding: " + "a" * 20_000
        response = await exchange(port, get("/metrics.json", "127.0.0.1", padding))
        assert status_of(response) == 431
        assert response.endswith(b"request head too large\n")


async def test_slow_head_gets_408_after_head_timeout(autojump_clock: trio.abc.Clock) -> None:
    async with serving(head_timeout=2.0) as (_, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)

        async def drip() -> None:
            # a slow-loris client: one header line a second, never the end of the head
            await stream.send_all(b"GET /metrics.json HTTP/1.1\r\n")
            for n in range(10):
                await trio.sleep(1.0)
                await stream.send_all(f"X-{n}: y\r\n".encode())

        async with stream, trio.open_nursery() as nursery:
            start = trio.current_time()
            nursery.start_soon(drip)
            response = await stream.receive_some()
            assert trio.current_time() - start == pytest.approx(2.0)
            nursery.cancel_scope.cancel()
        assert response.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


async def test_a_silent_client_is_dropped_after_the_default_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serving() as (_, port):
        start = trio.current_time()
        response = await exchange(port, b"")
        assert status_of(response) == 408
        assert trio.current_time() - start == pytest.approx(5.0)


# -- connection limit ---------------------------------------------------------------------------


async def test_connections_past_max_connections_get_503(autojump_clock: trio.abc.Clock) -> None:
    async with serving(max_connections=3) as (_, port):
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        response = await exchange(port, get("/metrics.json", "127.0.0.1"))
        assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"Retry-After: 1\r\n" in response
        assert trio.current_time() - start < 1.0  # refused at once, not queued
        await idle.pop().aclose()
        await trio.testing.wait_all_tasks_blocked()
        response = await exchange(port, get("/metrics.json", "127.0.0.1"))
        assert status_of(response) == 200
        for stream in idle:
            await stream.aclose()


async def test_default_limit_bounds_idle_sockets(autojump_clock: trio.abc.Clock) -> None:
    # 64 by default: the 65th idle socket is refused at once rather than held
    async with serving() as (_, port):
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(64)]
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        assert status_of(await exchange(port, b"")) == 503
        assert trio.current_time() - start < 1.0
        for stream in idle:
            await stream.aclose()


async def test_limit_out_of_range_is_refused() -> None:
    handle: Any = None
    with pytest.raises(ValueError, match=r"^max_connections=0 must be a positive integer$"):
        await serve_metrics(handle, port=0, max_connections=0)
    with pytest.raises(ValueError, match=r"^head_timeout=0 must be a positive number of seconds$"):
        await serve_metrics(handle, port=0, head_timeout=0)


# -- clients that vanish ------------------------------------------------------------------------


async def test_vanishing_clients_never_stop_the_pipeline() -> None:
    async with serving(serve_dashboard) as (_, port):
        host = f"127.0.0.1:{port}"
        # connect and leave at once; reset mid-head; reset after the request
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.aclose()
        for data in (b"GET /metrics.json HT", get("/", host)):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(data)
            reset(stream.socket)
        # half-open: the client shuts its side after the request, then reads the answer
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(get("/metrics.json", host))
        await stream.send_eof()
        answer = b""
        while chunk := await stream.receive_some():
            answer += chunk
        assert status_of(answer) == 200
        await stream.aclose()
        # WebSocket: handshake, then close at once, or reset at once
        for leave in ("close", "reset"):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(upgrade(host))
            answer = await stream.receive_some()
            assert answer.startswith(b"HTTP/1.1 101 ")
            if leave == "close":
                await stream.aclose()
            else:
                reset(stream.socket)
        await trio.sleep(0.2)  # real time: let the server meet the closed sockets


# -- Host ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("server", [serve_metrics, serve_dashboard])
async def test_foreign_host_is_refused_with_421(server: Any) -> None:
    async with serving(server) as (_, port), httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{port}/metrics.json"
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
            got = await client.get(url, headers={"Host": host})
            assert got.status_code == 421, host
            assert got.text == "this server does not answer for that Host (see allowed_hosts)\n"
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"LOCALHOST.:{port}",
            f"[::1]:{port}",
            "localhost",
            "localhost:9000",  # an SSH tunnel or port mapping to another port
            f"127.0.0.2:{port}",
        ):
            got = await client.get(url, headers={"Host": host})
            assert got.status_code == 200, host
            assert got.json()["state"] == "running"


async def test_allowed_hosts_adds_names() -> None:
    options = {"allowed_hosts": ["dash.internal", "other.internal:8080"]}
    async with serving(serve_dashboard, **options) as (_, port), httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{port}/"
        for host, status in [
            (f"dash.internal:{port}", 200),
            ("DASH.internal", 200),
            ("other.internal:8080", 200),
            ("other.internal:8081", 421),
            ("evil.example", 421),
            (f"localhost:{port}", 200),
        ]:
            got = await client.get(url, headers={"Host": host})
            assert got.status_code == status, host


# -- Origin -------------------------------------------------------------------------------------


async def first_message(url: str, origin: str | None) -> dict[str, Any]:
    headers = [(b"Origin", origin.encode())] if origin is not None else None
    async with open_websocket_url(url, extra_headers=headers) as ws:
        message: dict[str, Any] = json.loads(await ws.get_message())
    return message


async def test_dashboard_feed_accepts_only_its_own_origin() -> None:
    async with serving(serve_dashboard) as (_, port):
        url = f"ws://127.0.0.1:{port}/ws"
        # the scheme is not compared: only this server can serve a page of this host and port,
        # and a proxy that terminates TLS in front of it sends https origins
        for origin in (
            None,
            f"http://127.0.0.1:{port}",
            f"HTTP://127.0.0.1:{port}/",
            f"https://127.0.0.1:{port}",
        ):
            assert (await first_message(url, origin))["type"] == "graph", origin
        # trio-websocket's client leaks its socket when refused, so refusals are read raw
        for origin in (
            "http://evil.example",
            f"http://evil.example:{port}",
            f"http://localhost:{port}",  # another origin than the page's (127.0.0.1)
            "http://127.0.0.1",  # another port
            "null",  # a sandboxed frame or a file:// page
        ):
            response = await exchange(port, upgrade(f"127.0.0.1:{port}", f"Origin: {origin}"))
            assert response.startswith(b"HTTP/1.1 403 Forbidden\r\n"), origin
            assert response.endswith(
                b"\r\n\r\ncross-origin WebSocket refused (see allowed_origins)\n"
            )
        # through localhost the page's origin is http://localhost:PORT
        async with open_websocket(
            "localhost",
            port,
            "/ws",
            use_ssl=False,
            extra_headers=[(b"Origin", f"http://localhost:{port}".encode())],
        ) as ws:
            assert json.loads(await ws.get_message())["type"] == "graph"


async def test_dns_rebinding_upgrade_is_refused_by_host() -> None:
    # a rebinding page: its Origin matches its Host, but the Host is not ours
    async with serving(serve_dashboard) as (_, port):
        request = upgrade(f"evil.example:{port}", f"Origin: http://evil.example:{port}")
        assert status_of(await exchange(port, request)) == 421


async def test_allowed_origins() -> None:
    options = {"allowed_origins": ["https://grafana.example"]}
    async with serving(serve_dashboard, **options) as (_, port):
        url = f"ws://127.0.0.1:{port}/ws"
        assert (await first_message(url, "https://grafana.example:443"))["type"] == "graph"
        refused = upgrade(f"127.0.0.1:{port}", "Origin: http://grafana.example")
        assert status_of(await exchange(port, refused)) == 403
    with pytest.raises(ValueError, match=r"^allowed_origins: 'grafana' is not an origin"):
        await serve_dashboard(None, port=0, allowed_origins=["grafana"])  # type: ignore[arg-type]


# -- allow_remote -------------------------------------------------------------------------------

# TEST-NET-3: never an address of this machine, so a server that took it would fail to bind
FOREIGN = "203.0.113.7"


@pytest.mark.parametrize(
    ("server", "what"), [(serve_metrics, "serve_metrics"), (serve_dashboard, "the dashboard")]
)
async def test_non_loopback_host_needs_allow_remote(server: Any, what: str) -> None:
    _send, receive = trio.open_memory_channel[int](0)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_channel(receive) | tf.sink(noop)).serve)
        for host in (FOREIGN, "0.0.0.0", "example.com", ""):
            with pytest.raises(ValueError) as raised:
                await nursery.start(partial(server, handle, host=host, port=0))
            assert str(raised.value) == (
                f"{what} binds to loopback addresses only (127.0.0.1, ::1, localhost), not "
                f"{host!r}: it has no authentication; pass allow_remote=True to serve on it anyway"
            )
        assert handle.snapshot()["state"] == "running"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("server", [serve_metrics, serve_dashboard])
async def test_allow_remote_answers_any_host(server: Any) -> None:
    # as Prometheus in another container names the target: by service name or address
    async with (
        serving(server, allow_remote=True) as (_, port),
        httpx.AsyncClient() as client,
    ):
        for host in ("app.default.svc:9464", "10.1.2.3:9464", f"{FOREIGN}:{port}"):
            got = await client.get(f"http://127.0.0.1:{port}/metrics.json", headers={"Host": host})
            assert got.status_code == 200, host


async def test_allow_remote_with_allowed_hosts_checks_them() -> None:
    options: dict[str, Any] = {"allow_remote": True, "allowed_hosts": ["app.default.svc"]}
    async with serving(**options) as (_, port), httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{port}/metrics"
        assert (await client.get(url, headers={"Host": "app.default.svc:9464"})).status_code == 200
        assert (await client.get(url, headers={"Host": "evil.example"})).status_code == 421
