"""WebSocketServerSource against hostile and broken clients (issue 13), on 127.0.0.1, port 0.

Every client here is real: raw TCP sockets that speak (or do not speak) HTTP, and
trio-websocket clients. One client may only ever end its own connection, never the run.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket as tw

import trioflow as tf
from trioflow.connectors.websocket import WebSocketServerSource, WebSocketSource


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    yield
    gc.collect()


@asynccontextmanager
async def serving(source: WebSocketServerSource, **run: Any) -> AsyncIterator[list[Any]]:
    """Run ``source | sink`` as a service; yields the list the sink appends to."""
    got: list[Any] = []
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((source | tf.sink(got.append)).serve)
        yield got
        handle.stop()


def upgrade(port: int, *, host: str | None = None, origin: str | None = None) -> bytes:
    lines = [
        "GET / HTTP/1.1",
        f"Host: {host or f'127.0.0.1:{port}'}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def handshake_status(port: int, **headers: str) -> tuple[int, bytes]:
    """Send an upgrade request on a raw socket; the response's status and body (up to 4 KiB)."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(upgrade(port, **headers))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            while len(body) < 4096 and (chunk := await stream.receive_some(4096)):
                body += chunk
        return int(head.split(b" ", 2)[1]), body


@asynccontextmanager
async def idle_sockets(port: int, n: int) -> AsyncIterator[list[trio.SocketStream]]:
    """``n`` TCP connections that never send a byte."""
    streams: list[trio.SocketStream] = []
    try:
        for _ in range(n):
            streams.append(await trio.open_tcp_stream("127.0.0.1", port))
        yield streams
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)


async def round_trip(port: int, event_id: object = "good") -> dict[str, Any]:
    """A well-behaved client: one event, its reply."""
    async with tw.open_websocket_url(f"ws://127.0.0.1:{port}") as ws:
        await ws.send_message(json.dumps({"id": event_id, "data": 1}))
        reply: dict[str, Any] = json.loads(await ws.get_message())
    return reply


# --- 1. a client that leaves right after (or during) the handshake --------------------------------


async def test_clients_that_close_right_after_the_handshake_do_not_stop_the_run() -> None:
    source = WebSocketServerSource()
    async with serving(source) as got:
        for _ in range(30):  # the request, then a close before reading the 101
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", source.port))
            await sock.send(upgrade(source.port))
            sock.close()
        for _ in range(10):  # a real client that completes the handshake and leaves at once
            async with tw.open_websocket_url(f"ws://127.0.0.1:{source.port}"):
                pass
        await trio.sleep(0.2)  # the server handles the departures
        with trio.fail_after(5):
            assert await round_trip(source.port) == {"id": "good", "status": "ok"}
    assert got == [1]


# --- 2. JSON nested too deeply ----------------------------------------------------------------


#: deeper than any Python's JSON parser allows (3.11: ~1,000; 3.12: ~1,500; 3.13: more than 5,000)
DEEP = 100_000


@pytest.mark.parametrize("depth", [DEEP])
async def test_deeply_nested_json_fails_that_event_with_a_reason(depth: int) -> None:
    source = WebSocketServerSource()
    async with (
        serving(source) as got,
        tw.open_websocket_url(f"ws://127.0.0.1:{source.port}") as ws,  # after the server starts
    ):
        await ws.send_message("[" * depth)
        nested = '{"id": "deep", "data": ' + "[" * depth + "]" * depth + "}"
        await ws.send_message(nested)
        await ws.send_message(json.dumps({"id": "after", "data": 2}))  # same connection
        with trio.fail_after(5):
            replies = [json.loads(await ws.get_message()) for _ in range(3)]
    deep = {"status": "failed", "reason": "ValueError: JSON nesting too deep"}
    assert sorted(replies, key=str) == sorted(
        [{"id": None, **deep}, {"id": None, **deep}, {"id": "after", "status": "ok"}], key=str
    )
    assert got == [2]


async def test_deeply_nested_json_without_envelope_fails_that_event() -> None:
    source = WebSocketServerSource(envelope=False)
    async with (
        serving(source) as got,
        tw.open_websocket_url(f"ws://127.0.0.1:{source.port}") as ws,  # after the server starts
    ):
        await ws.send_message("[" * DEEP)
        await ws.send_message("[1]")
        with trio.fail_after(5):
            replies = [json.loads(await ws.get_message()) for _ in range(2)]
    assert sorted(replies, key=lambda r: r["id"]) == [
        {"id": 1, "status": "failed", "reason": "ValueError: JSON nesting too deep"},
        {"id": 2, "status": "ok"},
    ]
    assert got == [[1]]


async def test_client_source_fails_a_deeply_nested_message_and_goes_on() -> None:
    async def handler(request: tw.WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("[" * DEEP)
        await ws.send_message('{"x": 1}')
        await ws.aclose()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: tw.serve_websocket(
                handler, "127.0.0.1", 0, None, task_status=task_status
            )
        )
        out: list[Any] = []
        report = await (
            WebSocketSource(f"ws://127.0.0.1:{server.port}", format="json") | tf.sink(out.append)
        ).run()
        nursery.cancel_scope.cancel()
    assert out == [{"x": 1}]
    assert report.failed_by_reason == {"ValueError": 1}


# --- 3. handshake timeout and connection limit ---------------------------------------------------


async def test_a_connection_that_never_handshakes_is_closed_after_the_default_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = WebSocketServerSource()
    async with serving(source):
        async with await trio.open_tcp_stream("127.0.0.1", source.port) as idle:
            start = trio.current_time()
            with trio.fail_after(30):  # trio-websocket's own timeout is 60 s
                assert await idle.receive_some(1024) == b""
            assert trio.current_time() - start == pytest.approx(5.0)
        async with await trio.open_tcp_stream("127.0.0.1", source.port) as slow:
            await slow.send_all(upgrade(source.port)[:20])  # a slowloris: part of a request
            start = trio.current_time()
            assert await slow.receive_some(1024) == b""
            assert trio.current_time() - start == pytest.approx(5.0)
    assert source.refused == {"capacity": 0, "origin": 0, "handshake": 2}


async def test_handshake_timeout_is_configurable(autojump_clock: trio.testing.MockClock) -> None:
    source = WebSocketServerSource(handshake_timeout=0.5)
    async with serving(source), await trio.open_tcp_stream("127.0.0.1", source.port) as idle:
        start = trio.current_time()
        assert await idle.receive_some(1024) == b""
        assert trio.current_time() - start == pytest.approx(0.5)


async def test_unfinished_handshakes_make_room_for_a_good_client() -> None:
    source = WebSocketServerSource(max_connections=5, handshake_timeout=60.0)
    async with serving(source) as got, idle_sockets(source.port, 20) as idle:
        await trio.sleep(0.1)
        start = time.monotonic()
        with trio.fail_after(5):
            assert await round_trip(source.port) == {"id": "good", "status": "ok"}
        assert time.monotonic() - start < 1.0  # not after a handshake timeout
        # the oldest idle sockets were closed to make room; the newest still wait
        closed = 0
        for stream in idle:
            with trio.move_on_after(0.05):
                closed += await stream.receive_some(1) == b""
        assert closed >= 15
    assert got == [1]
    assert source.refused["handshake"] >= 16


# trio-websocket 0.12 leaves the client's socket of a rejected handshake for the GC to close
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_open_connections_past_the_limit_get_503() -> None:
    source = WebSocketServerSource(max_connections=2)
    url = "ws://127.0.0.1:{}"
    async with serving(source):
        async with (
            tw.open_websocket_url(url.format(source.port)),
            tw.open_websocket_url(url.format(source.port)),
        ):
            await trio.sleep(0.1)
            with pytest.raises(tw.ConnectionRejected) as info:
                async with tw.open_websocket_url(url.format(source.port)):
                    pass  # pragma: no cover
            assert info.value.status_code == 503
            assert info.value.body == b"too many connections\n"
            assert await handshake_status(source.port) == (503, b"too many connections\n")
        await trio.sleep(0.1)  # the two leave: there is room again
        with trio.fail_after(5):
            assert await round_trip(source.port) == {"id": "good", "status": "ok"}
    assert source.refused["capacity"] == 2


SERVER = """
import json, resource, sys
import trio
import trioflow as tf
from trioflow.connectors.websocket import WebSocketServerSource

resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

async def main():
    source = WebSocketServerSource(on_listen=lambda port: print(port, flush=True), **json.loads(
        sys.argv[1]))
    await (source | tf.sink(lambda x: None)).run()

trio.run(main)
"""


@pytest.mark.parametrize(
    "options",
    [
        {},  # the defaults: 100 connections, 5 s handshakes
        {"max_connections": 1000, "handshake_timeout": 1.0},  # past the descriptor limit: EMFILE
    ],
)
async def test_300_idle_sockets_under_256_descriptors_do_not_lock_out_a_good_client(
    options: dict[str, Any],
) -> None:
    server = await trio.lowlevel.open_process(
        [sys.executable, "-c", SERVER, json.dumps(options)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # EMFILE is logged by trio.serve_listeners
        env=os.environ,
    )
    try:
        assert server.stdout is not None
        with trio.fail_after(10):
            port = int(await server.stdout.receive_some(100))
        async with idle_sockets(port, 300):
            await trio.sleep(0.2)
            with trio.fail_after(5):  # with max_connections=1000: after the 1 s handshake timeout
                assert await round_trip(port) == {"id": "good", "status": "ok"}
                assert await round_trip(port, "again") == {"id": "again", "status": "ok"}
            assert server.returncode is None  # still serving
    finally:
        server.kill()
        await server.wait()


# --- 4. Origin ------------------------------------------------------------------------------------


async def test_origin_same_origin_by_default() -> None:
    source = WebSocketServerSource()
    async with serving(source):
        port = source.port
        assert (await handshake_status(port))[0] == 101  # no Origin: not a browser
        assert (await handshake_status(port, origin=f"http://127.0.0.1:{port}"))[0] == 101
        assert (await handshake_status(port, origin=f"https://localhost:{port}"))[0] == 403  # host
        assert (await handshake_status(port, origin="http://127.0.0.1:9"))[0] == 403  # port
        assert (await handshake_status(port, origin="null"))[0] == 403
        status, body = await handshake_status(port, origin="https://evil.example")
        assert status == 403
        assert (
            body
            == b"origin 'https://evil.example' is not this server's (127.0.0.1:%d); " % (port)
            + b"see allowed_origins\n"
        )
        # DNS rebinding: the page's name now points at 127.0.0.1; Origin and Host agree
        rebound = {"host": f"evil.example:{port}", "origin": f"http://evil.example:{port}"}
        status, body = await handshake_status(port, **rebound)
        assert status == 403
        assert b"not a loopback name" in body
    assert source.refused["origin"] == 5


# trio-websocket 0.12 leaves the client's socket of a rejected handshake for the GC to close
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_a_cross_origin_page_cannot_push_events() -> None:
    source = WebSocketServerSource()
    async with serving(source) as got:
        with pytest.raises(tw.ConnectionRejected) as info:
            async with tw.open_websocket_url(
                f"ws://127.0.0.1:{source.port}",
                extra_headers=[(b"Origin", b"https://evil.example")],
            ) as ws:
                await ws.send_message(json.dumps({"id": 1, "data": "pushed"}))  # pragma: no cover
        assert info.value.status_code == 403
        assert await round_trip(source.port) == {"id": "good", "status": "ok"}
    assert got == [1]


async def test_allowed_origins_list_and_star() -> None:
    listed = WebSocketServerSource(allowed_origins=["https://app.example", "http://h:8080"])
    async with serving(listed):
        port = listed.port
        assert (await handshake_status(port, origin="https://app.example"))[0] == 101
        assert (await handshake_status(port, origin="https://APP.example:443"))[0] == 101
        assert (await handshake_status(port, origin="http://h:8080"))[0] == 101
        assert (await handshake_status(port, origin="http://app.example"))[0] == 403
        assert (await handshake_status(port, origin=f"http://127.0.0.1:{port}"))[0] == 403
        assert (await handshake_status(port))[0] == 101
    anyone = WebSocketServerSource(allowed_origins=["*"])
    async with serving(anyone):
        assert (await handshake_status(anyone.port, origin="https://evil.example"))[0] == 101


def test_new_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match=r"^max_connections=0 must be a positive integer$"):
        WebSocketServerSource(max_connections=0)
    with pytest.raises(
        ValueError, match=r"^handshake_timeout=0 must be a positive number of seconds$"
    ):
        WebSocketServerSource(handshake_timeout=0)
    with pytest.raises(
        ValueError,
        match=r"^allowed_origins entry 'app.example' must be '\*' or an origin such as ",
    ):
        WebSocketServerSource(allowed_origins=["app.example"])
    with pytest.raises(ValueError, match=r"^allowed_origins entry 'https://a.example/path' "):
        WebSocketServerSource(allowed_origins=["https://a.example/path"])
    assert WebSocketServerSource(allowed_origins="*").allowed_origins == "*"
    # the dashboard's origin rules, one implementation: a page's origin is http or https
    for other in ("ws://app.example", "chrome-extension://abcdef"):
        with pytest.raises(ValueError, match=r"^allowed_origins entry '[^']+' must be '\*' or"):
            WebSocketServerSource(allowed_origins=[other])
    assert WebSocketServerSource(allowed_origins=["HTTPS://App.Example"]).allowed_origins == (
        frozenset({"https://app.example:443"})
    )


# --- pieces ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP, no upgrade: 400
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100),  # a TLS hello
        b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 100_000 + b"\r\n\r\n",  # headers too big
    ],
)
async def test_garbage_instead_of_a_handshake_ends_that_connection_only(garbage: bytes) -> None:
    source = WebSocketServerSource()
    async with serving(source) as got:
        async with await trio.open_tcp_stream("127.0.0.1", source.port) as stream:
            with trio.fail_after(2):  # well before the handshake timeout
                try:
                    await stream.send_all(garbage)
                    while await stream.receive_some(4096):
                        pass
                except trio.BrokenResourceError:
                    pass  # reset: the server closed with our bytes unread
        assert await round_trip(source.port) == {"id": "good", "status": "ok"}
    assert got == [1]


async def test_peer_metadata_is_host_and_port() -> None:
    source = WebSocketServerSource()
    seen: list[tf.Message[Any]] = []
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((source | tf.sink(seen.append, messages=True)).serve)
        async with tw.open_websocket_url(f"ws://127.0.0.1:{source.port}") as ws:
            await ws.send_message(json.dumps({"id": 1, "data": 1}))
            await ws.get_message()
            local = ws.local
        handle.stop()
    [message] = seen
    assert isinstance(local, tw.Endpoint)
    assert message.metadata == {"id": 1, "peer": f"127.0.0.1:{local.port}", "connection": 1}
