"""An invalid W3C trace context a producer wrote is dropped on read, not forwarded.

With tracing off a sink forwards a message's own ``traceparent`` (and ``tracestate``) as headers,
so a value that is not W3C's format (``"00-abc\\n-01"``) used to reach the HTTP sink and fail
every request (h11: ``Illegal header value``). Real peers: Redis, and the h11 server of
``http_server`` on 127.0.0.1.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
import trio
import trio_websocket as tw

import trioflow as tf
from trioflow.connectors._trace_context import MAX_TRACESTATE, checked, from_header_pairs
from trioflow.connectors.http import HttpSink
from trioflow.connectors.redis import RedisStreamSource
from trioflow.connectors.redis import connect as redis_connect
from trioflow.connectors.websocket import WebSocketServerSource

from .http_server import Request, Response, serve_http
from .servers import RedisServer

GOOD = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
BAD = [
    "00-abc\n-01",
    GOOD + "\r\nx-injected: 1",
    GOOD.upper(),
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # trace id all zeros
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # parent id all zeros
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
    "",
]


@pytest.mark.parametrize("value", BAD)
def test_an_invalid_traceparent_is_dropped_with_its_tracestate(value: str) -> None:
    assert checked(value, "a=b") == {}
    assert checked(value.encode("latin-1")) == {}
    assert from_header_pairs([(b"traceparent", value.encode("latin-1"))]) == {}


def test_a_valid_traceparent_is_kept_and_a_bad_tracestate_dropped() -> None:
    assert checked(GOOD, "a=b,c=d") == {"traceparent": GOOD, "tracestate": "a=b,c=d"}
    assert checked(GOOD.encode(), b"a=b") == {"traceparent": GOOD, "tracestate": "a=b"}
    assert checked(GOOD, "a=b\nx") == {"traceparent": GOOD}
    assert checked(GOOD, "a=\x7f") == {"traceparent": GOOD}
    assert checked(GOOD, "a=" + "b" * MAX_TRACESTATE) == {"traceparent": GOOD}
    assert checked("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00") != {}  # a version 01
    assert from_header_pairs([(b"TraceParent", GOOD.encode()), (b"tracestate", b"a=\x00")]) == {
        "traceparent": GOOD
    }


async def test_redis_entries_with_a_bad_traceparent_reach_the_http_sink(
    redis_server: RedisServer,
) -> None:
    stream, group = f"tc-{uuid.uuid4().hex[:8]}", "g"
    got: list[Request] = []

    async def handler(request: Request) -> Response:
        got.append(request)
        return Response.json({"ok": True})

    entries: list[dict[str, str]] = [{"traceparent": value} for value in BAD]
    entries.append({"traceparent": GOOD, "tracestate": "a=b\r\nx: y"})
    entries.append({"traceparent": GOOD, "tracestate": "a=b"})
    async with redis_connect(port=redis_server.port) as client:
        for n, fields in enumerate(entries):
            await client.xadd(stream, {"n": str(n), **fields})
        source = RedisStreamSource(stream, group, "c1", port=redis_server.port, block=0.05)
        seen: list[dict[str, Any]] = []
        stop = trio.Event()

        def note(m: tf.Message[dict[str, str]]) -> tf.Message[int]:
            seen.append(dict(m.metadata))
            if len(seen) == len(entries):
                stop.set()
            return m.replace(int(m.data["n"]))

        async with serve_http(handler) as server, httpx.AsyncClient(base_url=server.url) as http:
            out = HttpSink(http, "/in", batch="each")
            pipeline = (
                source
                | tf.process(note, messages=True)
                | tf.batch(4, 0.05)
                | tf.sink(out, messages=True)
            )
            with trio.fail_after(30):
                report = await pipeline.run(stop=stop)
    assert (report.acked, report.failed) == (len(entries), 0)
    headers = {json.loads(r.body): r.headers for r in got}
    assert sorted(headers) == list(range(len(entries)))
    for n in range(len(BAD)):
        assert "traceparent" not in headers[n], BAD[n]
        assert "traceparent" not in seen[n]
    bad_state, good = len(BAD), len(BAD) + 1
    assert headers[bad_state]["traceparent"] == GOOD
    assert "tracestate" not in headers[bad_state]
    assert (headers[good]["traceparent"], headers[good]["tracestate"]) == (GOOD, "a=b")


async def test_a_websocket_envelope_with_a_bad_traceparent_falls_back_to_the_handshake() -> None:
    ports: list[int] = []
    source = WebSocketServerSource(on_listen=ports.append)
    seen: list[dict[str, Any]] = []

    async def work(m: tf.Message[Any]) -> tf.Message[Any]:
        seen.append(dict(m.metadata))
        return m

    pipeline = source | tf.sink(work, messages=True)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        url = f"ws://127.0.0.1:{ports[0]}"
        async with tw.open_websocket_url(
            url, extra_headers=[(b"traceparent", GOOD.encode())]
        ) as ws:
            await ws.send_message(json.dumps({"id": "a", "data": 1, "traceparent": BAD[0]}))
            await ws.get_message()
        async with tw.open_websocket_url(url, extra_headers=[(b"traceparent", b"00-x-01")]) as ws:
            await ws.send_message(json.dumps({"id": "b", "data": 2, "traceparent": BAD[1]}))
            await ws.get_message()
        handle.stop()
    assert seen[0]["traceparent"] == GOOD
    assert "traceparent" not in seen[1]
