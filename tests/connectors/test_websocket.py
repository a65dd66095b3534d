"""WebSocket connectors against real trio-websocket peers on 127.0.0.1, port 0.

Half-open connections are simulated with a TCP proxy that stops forwarding without closing.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio_websocket as tw

import trioflow as tf
from trioflow.connectors.websocket import (
    WebSocketClosed,
    WebSocketConnectError,
    WebSocketServerSource,
    WebSocketSink,
    WebSocketSource,
)
from trioflow.testing import TestSource

QUICK = tf.Backoff.constant(0.01)


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    # a socket left open is reported by the test that leaked it, not by a later one
    yield
    gc.collect()


Handler = Callable[[tw.WebSocketRequest], Awaitable[None]]


@asynccontextmanager
async def serve_ws(handler: Handler, **options: Any) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: tw.serve_websocket(
                handler, "127.0.0.1", 0, None, task_status=task_status, **options
            )
        )
        yield f"ws://127.0.0.1:{server.port}"
        nursery.cancel_scope.cancel()


async def free_port() -> int:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- client source --------------------------------------------------------------------------------


async def test_source_emits_text_and_bytes_until_a_normal_close() -> None:
    async def handler(request: tw.WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("a")
        await ws.send_message(b"b")
        await ws.aclose(1000)

    async with serve_ws(handler) as url:
        got: list[tf.Message[Any]] = []
        await (WebSocketSource(url) | tf.sink(got.append, messages=True)).run()
    assert [m.data for m in got] == ["a", b"b"]
    assert [m.metadata for m in got] == [
        {"connection": 1, "index": 1},
        {"connection": 1, "index": 2},
    ]


async def test_source_json_decode_fails_only_the_bad_message() -> None:
    async def handler(request: tw.WebSocketRequest) -> None:
        ws = await request.accept()
        for text in ['{"x": 1}', "nope", "[2]"]:
            await ws.send_message(text)
        await ws.aclose()

    async with serve_ws(handler) as url:
        src = WebSocketSource(url, format="json")
        out: list[Any] = []
        report = await (src | tf.sink(out.append)).run()
    assert out == [{"x": 1}, [2]]
    assert report.failed_by_reason == {"JSONDecodeError": 1}


async def test_source_reconnects_when_the_connection_drops() -> None:
    connections = 0

    async def handler(request: tw.WebSocketRequest) -> None:
        nonlocal connections
        connections += 1
        ws = await request.accept()
        if connections == 1:
            await ws.send_message("1")
            await ws.send_message("2")
            await ws._stream.aclose()  # TCP closes without a close frame: 1006
        elif connections == 2:
            await ws.aclose(1011, "internal error")  # an error close: reconnect too
        else:
            await ws.send_message("3")
            await ws.aclose(1000)

    async with serve_ws(handler) as url:
        source = WebSocketSource(url, reconnect=QUICK)
        got: list[tf.Message[str]] = []
        with trio.fail_after(5):
            await (source | tf.sink(got.append, messages=True)).run()
    assert [(m.data, m.metadata["connection"]) for m in got] == [("1", 1), ("2", 1), ("3", 3)]
    assert source.connections == 3


async def test_source_reconnect_on_close_and_give_up_after_max_reconnects() -> None:
    served = 0

    async def handler(request: tw.WebSocketRequest) -> None:
        nonlocal served
        served += 1
        ws = await request.accept()
        await ws.send_message(str(served))
        await ws.aclose(1000, "done")

    async with serve_ws(handler) as url:
        source = WebSocketSource(url, reconnect=QUICK, reconnect_on_close=True, max_reconnects=0)
        got: list[str] = []
        with pytest.raises(tf.PipelineError) as info:
            await (source | tf.sink(got.append)).run()
    assert got == ["1"]
    cause = info.value.__cause__
    assert isinstance(cause, WebSocketClosed)
    assert (cause.code, cause.reason) == (1000, "done")
    assert str(cause) == f"{url}: connection closed (1000 NORMAL_CLOSURE: done)"


async def test_source_connection_refused_retries_then_fails() -> None:
    url = f"ws://127.0.0.1:{await free_port()}/feed"
    source = WebSocketSource(url, reconnect=QUICK, max_reconnects=2)
    with trio.fail_after(5), pytest.raises(tf.PipelineError) as info:
        await tf.collect(source)
    cause = info.value.__cause__
    assert isinstance(cause, WebSocketConnectError)
    assert isinstance(cause, ConnectionError)
    assert str(cause).startswith(f"{url}: could not connect: ")
    assert source.connections == 0


# trio-websocket 0.12 leaves the client's socket of a rejected handshake for the GC to close
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_source_rejected_handshake_names_the_status() -> None:
    async def handler(request: tw.WebSocketRequest) -> None:
        await request.reject(403)

    async with serve_ws(handler) as url:
        source = WebSocketSource(url, max_reconnects=0)
        with pytest.raises(tf.PipelineError) as info:
            await tf.collect(source)
    assert (
        str(info.value.__cause__) == f"{url}: could not connect: handshake rejected with HTTP 403"
    )


@asynccontextmanager
async def frozen_proxy(target_port: int) -> AsyncIterator[tuple[int, list[trio.Event]]]:
    """A TCP proxy; setting a connection's event stops forwarding (a half-open connection)."""
    freezes: list[trio.Event] = []

    async def pump(src: trio.SocketStream, dst: trio.SocketStream, freeze: trio.Event) -> None:
        try:
            while data := await src.receive_some(65536):
                if freeze.is_set():
                    await trio.sleep_forever()
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def handle(client: trio.SocketStream) -> None:
        freeze = trio.Event()
        freezes.append(freeze)
        upstream = await trio.open_tcp_stream("127.0.0.1", target_port)
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, upstream, freeze)
            nursery.start_soon(pump, upstream, client, freeze)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1], freezes
        nursery.cancel_scope.cancel()


async def test_source_heartbeat_detects_a_half_open_connection() -> None:
    async def handler(request: tw.WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("hello")
        await trio.sleep_forever()

    async with serve_ws(handler) as url:
        port = int(url.rsplit(":", 1)[1])
        async with frozen_proxy(port) as (proxy_port, freezes):
            source = WebSocketSource(f"ws://127.0.0.1:{proxy_port}", heartbeat=0.1, reconnect=QUICK)
            seen: list[tf.Message[str]] = []

            async def record(m: tf.Message[str]) -> None:
                seen.append(m)
                if len(seen) == 1:
                    freezes[0].set()  # the peer vanishes: no FIN, no pong
                else:
                    stop.set()

            stop = trio.Event()
            with trio.fail_after(5):
                await (source | tf.sink(record, messages=True)).run(stop=stop)
    assert [(m.data, m.metadata["connection"]) for m in seen] == [("hello", 1), ("hello", 2)]


async def test_source_large_messages_and_the_size_limit() -> None:
    big = "x" * (3 * 1024 * 1024)

    async def handler(request: tw.WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message(big)
        await ws.aclose()

    async with serve_ws(handler) as url:
        assert await tf.collect(WebSocketSource(url, max_message_size=4 * 1024 * 1024)) == [big]
        too_small = WebSocketSource(url, max_message_size=1024 * 1024, max_reconnects=0)
        with pytest.raises(tf.PipelineError) as info:
            await tf.collect(too_small)
    cause = info.value.__cause__
    assert isinstance(cause, WebSocketClosed)
    assert cause.code == 1009  # MESSAGE_TOO_BIG


async def test_source_drain_stops_reading() -> None:
    async def handler(request: tw.WebSocketRequest) -> None:
        ws = await request.accept()
        with contextlib.suppress(tw.ConnectionClosed):  # the client leaves when drained
            for i in range(1000):
                await ws.send_message(str(i))
                await trio.sleep(0.001)

    async with serve_ws(handler) as url:
        stop = trio.Event()
        src = WebSocketSource(url)

        def maybe_stop(x: str) -> None:
            if x == "20":
                stop.set()

        with trio.fail_after(5):
            report = await (src | tf.sink(maybe_stop)).run(stop=stop)
    assert report.received == report.acked
    assert 21 <= report.received < 1000


# --- client sink ----------------------------------------------------------------------------------


async def recorder() -> tuple[Handler, list[tuple[int, str | bytes]]]:
    got: list[tuple[int, str | bytes]] = []
    connections = 0

    async def handler(request: tw.WebSocketRequest) -> None:
        nonlocal connections
        connections += 1
        number = connections
        ws = await request.accept()
        try:
            while True:
                got.append((number, await ws.get_message()))
        except tw.ConnectionClosed:
            pass

    return handler, got


async def test_sink_sends_items_and_batches() -> None:
    handler, got = await recorder()
    async with serve_ws(handler) as url:
        async with WebSocketSink(url) as each, WebSocketSink(url, batch="array") as arrays:
            await (tf.from_iterable(range(5)) | tf.batch(2) | tf.sink(each)).run()
            await (tf.from_iterable(range(5)) | tf.batch(2) | tf.sink(arrays)).run()
            async with WebSocketSink(url, format=None) as raw:
                await (tf.from_iterable(["t", b"b"]) | tf.sink(raw)).run()
            await trio.sleep(0.1)
        assert (each.sent, arrays.sent) == (5, 3)
    by_connection: dict[int, list[Any]] = {}
    for number, message in got:
        by_connection.setdefault(number, []).append(message)
    assert sorted(by_connection.values(), key=len) == [
        ["t", b"b"],
        ["[0, 1]", "[2, 3]", "[4]"],
        ["0", "1", "2", "3", "4"],
    ]


async def test_sink_reconnects_and_resends_what_was_not_sent() -> None:
    first_closed = trio.Event()
    got: list[str | bytes] = []

    async def handler(request: tw.WebSocketRequest) -> None:
        ws = await request.accept()
        if not first_closed.is_set():
            await ws.aclose(1001, "restarting")
            first_closed.set()
            return
        try:
            while True:
                got.append(await ws.get_message())
        except tw.ConnectionClosed:
            pass

    async with serve_ws(handler) as url:
        async with WebSocketSink(url, reconnect=QUICK) as out:
            await first_closed.wait()
            await trio.sleep(0.1)  # the close frame reaches the sink
            src = TestSource(["a", "b", "c"])
            await (src | tf.sink(out)).run()
            await trio.sleep(0.1)
        assert src.acked == ["a", "b", "c"]
        assert out.connections == 2
    assert got == ['"a"', '"b"', '"c"']


# trio-websocket 0.12 leaves the client's socket of a rejected handshake for the GC to close
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_sink_rejected_handshake_fails_on_entry() -> None:
    async def handler(request: tw.WebSocketRequest) -> None:
        await request.reject(401)

    async with serve_ws(handler) as url:
        with pytest.raises(WebSocketConnectError, match=r"handshake rejected with HTTP 401$"):
            async with WebSocketSink(url):
                pass


async def test_sink_back_pressure_from_a_peer_that_does_not_read() -> None:
    async def handler(request: tw.WebSocketRequest) -> None:
        await request.accept()
        await trio.sleep_forever()  # never reads: the socket's buffers fill up

    chunk = "y" * 256 * 1024
    async with serve_ws(handler) as url:
        src = TestSource([chunk] * 400)  # 100 MiB, far more than socket buffers hold
        async with WebSocketSink(url) as out:
            with trio.move_on_after(1.0):
                await (src | tf.sink(out)).run()
        assert out.sent < 200
        assert len(src.acked) == out.sent


async def test_sink_outside_async_with_says_so() -> None:
    out = WebSocketSink("ws://127.0.0.1:1")
    src = TestSource([1])
    await (src | tf.sink(out)).run()
    [(_, reason)] = src.failed
    assert (
        str(reason)
        == "use WebSocketSink('ws://127.0.0.1:1') inside `async with` (it owns a connection)"
    )


# --- server source --------------------------------------------------------------------------------


def check_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


@asynccontextmanager
async def running(pipeline: tf.Pipeline) -> AsyncIterator[tf.PipelineHandle]:
    async with trio.open_nursery() as nursery:
        handle: tf.PipelineHandle = await nursery.start(pipeline.serve)
        yield handle


async def test_server_replies_once_each_event_is_acked_or_failed() -> None:
    ports: list[int] = []
    source = WebSocketServerSource(on_listen=ports.append)
    async with running(source | tf.process(check_odd) | tf.sink(lambda x: None)) as handle:
        async with tw.open_websocket_url(f"ws://127.0.0.1:{ports[0]}") as ws:
            for i in range(4):
                await ws.send_message(json.dumps({"id": f"e{i}", "data": i}))
            await ws.send_message('{"id": 7}')
            await ws.send_message("not json")
            replies = [json.loads(await ws.get_message()) for _ in range(6)]
        handle.stop()
    assert sorted(replies, key=str) == sorted(
        [
            {"id": "e0", "status": "ok"},
            {"id": "e1", "status": "failed", "reason": "ValueError: odd 1"},
            {"id": "e2", "status": "ok"},
            {"id": "e3", "status": "failed", "reason": "ValueError: odd 3"},
            {
                "id": 7,
                "status": "failed",
                "reason": 'ValueError: an event must be a JSON object {"id": ..., "data": ...}',
            },
            {
                "id": None,
                "status": "failed",
                "reason": "JSONDecodeError: Expecting value: line 1 column 1 (char 0)",
            },
        ],
        key=str,
    )
    assert source.port == ports[0]


async def test_server_bounds_in_flight_events_per_connection() -> None:
    ports: list[int] = []
    release = trio.Event()
    entered: list[Any] = []

    async def slow(x: Any) -> None:
        entered.append(x)
        await release.wait()

    source = WebSocketServerSource(on_listen=ports.append, envelope=False, max_in_flight=3)
    async with running(source | tf.sink(slow, n=10)) as handle:
        async with tw.open_websocket_url(f"ws://127.0.0.1:{ports[0]}") as ws:
            for i in range(10):
                await ws.send_message(json.dumps(i))
            await trio.sleep(0.3)
            assert entered == [0, 1, 2]  # three unanswered: the server stops reading
            release.set()
            replies = [json.loads(await ws.get_message()) for _ in range(10)]
        handle.stop()
    assert sorted(r["id"] for r in replies) == list(range(1, 11))  # positions, without envelope
    assert {r["status"] for r in replies} == {"ok"}


# the test's client: trio-websocket 0.12 never closes a client socket the server closed first
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_server_drain_answers_in_flight_then_closes_with_going_away() -> None:
    ports: list[int] = []
    release = trio.Event()

    async def slow(x: Any) -> None:
        await release.wait()

    source = WebSocketServerSource(on_listen=ports.append)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((source | tf.sink(slow)).serve)
        async with tw.open_websocket_url(f"ws://127.0.0.1:{ports[0]}") as ws:
            await ws.send_message(json.dumps({"id": 1, "data": "x"}))
            await trio.sleep(0.1)
            handle.stop()
            release.set()
            assert json.loads(await ws.get_message()) == {"id": 1, "status": "ok"}
            with pytest.raises(tw.ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == 1001


async def test_server_survives_a_client_that_leaves_with_events_in_flight() -> None:
    ports: list[int] = []
    release = trio.Event()

    async def slow(x: Any) -> None:
        await release.wait()

    source = WebSocketServerSource(on_listen=ports.append)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((source | tf.sink(slow)).serve)
        async with tw.open_websocket_url(f"ws://127.0.0.1:{ports[0]}") as ws:
            for i in range(3):
                await ws.send_message(json.dumps({"id": i, "data": i}))
            await trio.sleep(0.1)
        release.set()  # acks now find the client gone
        async with tw.open_websocket_url(f"ws://127.0.0.1:{ports[0]}") as ws:
            await ws.send_message(json.dumps({"id": "next", "data": 0}))
            assert json.loads(await ws.get_message()) == {"id": "next", "status": "ok"}
        handle.stop()


async def test_server_large_event_with_decode() -> None:
    ports: list[int] = []
    source = WebSocketServerSource(on_listen=ports.append, max_message_size=8 * 1024 * 1024)
    sizes: list[int] = []
    async with running(source | tf.sink(lambda s: sizes.append(len(s)))) as handle:
        async with tw.open_websocket_url(f"ws://127.0.0.1:{ports[0]}") as ws:
            await ws.send_message(json.dumps({"id": 1, "data": "z" * 5_000_000}))
            assert json.loads(await ws.get_message()) == {"id": 1, "status": "ok"}
        handle.stop()
    assert sizes == [5_000_000]


# --- pieces ---------------------------------------------------------------------------------------


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match=r"^format='xml' must be 'json' or None$"):
        WebSocketSource("ws://h", format="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_reconnects=-1 must be a non-negative integer$"):
        WebSocketSource("ws://h", max_reconnects=-1)
    with pytest.raises(ValueError, match=r"^batch='all' must be 'each' or 'array'$"):
        WebSocketSink("ws://h", batch="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_in_flight=0 must be a positive integer$"):
        WebSocketServerSource(max_in_flight=0)
    with pytest.raises(ValueError, match=r"^envelope=True needs format='json'"):
        WebSocketServerSource(format=None)


def test_reprs() -> None:
    pipeline = WebSocketSource("ws://h/in") | tf.sink(WebSocketSink("ws://h/out"))
    assert repr(pipeline) == "WebSocketSource('ws://h/in') | sink(WebSocketSink(ws://h/out))"
    assert repr(WebSocketServerSource("0.0.0.0", 8765)) == "WebSocketServerSource('0.0.0.0', 8765)"
