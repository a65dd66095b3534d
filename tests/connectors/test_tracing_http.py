"""Trace context over HTTP and WebSocket: the server source reads it, the HTTP sink writes it.

Real peers on 127.0.0.1, port 0 (trio-websocket, and the h11 server of ``http_server``); spans
are collected with the SDK's in-memory exporter.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import httpx
import trio
import trio_websocket as tw
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import trioflow as tf
from trioflow.connectors.http import HttpSink
from trioflow.connectors.websocket import WebSocketServerSource
from trioflow.observe import OpenTelemetry

from .http_server import Request, Response, serve_http

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
OTHER = "00-11111111111111111111111111111111-2222222222222222-01"


def traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}"


def parent_of(span: ReadableSpan) -> str | None:
    if span.parent is None:
        return None
    return f"00-{span.parent.trace_id:032x}-{span.parent.span_id:016x}-01"


async def test_websocket_server_reads_the_handshake_and_the_envelope(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ports: list[int] = []
    source = WebSocketServerSource(on_listen=ports.append)
    seen: list[dict[str, Any]] = []

    async def work(m: tf.Message[Any]) -> tf.Message[Any]:
        seen.append(dict(m.metadata))
        return m

    pipeline = source | tf.sink(work, messages=True, name="work")
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(partial(pipeline.serve, telemetry=[OpenTelemetry(provider)]))
        headers = [(b"traceparent", TRACEPARENT.encode()), (b"TraceState", b"v=1")]
        url = f"ws://127.0.0.1:{ports[0]}"
        async with tw.open_websocket_url(url, extra_headers=headers) as ws:
            await ws.send_message(json.dumps({"id": "a", "data": 1}))
            await ws.send_message(json.dumps({"id": "b", "data": 2, "traceparent": OTHER}))
            replies = [json.loads(await ws.get_message()) for _ in range(2)]
        async with tw.open_websocket_url(url) as ws:  # no trace context
            await ws.send_message(json.dumps({"id": "c", "data": 3}))
            replies.append(json.loads(await ws.get_message()))
        handle.stop()
    assert sorted(r["id"] for r in replies) == ["a", "b", "c"]
    metadata = {m["id"]: m for m in seen}
    assert metadata["a"]["traceparent"] == TRACEPARENT
    assert metadata["a"]["tracestate"] == "v=1"
    assert metadata["b"]["traceparent"] == OTHER
    assert "tracestate" not in metadata["b"]
    assert "traceparent" not in metadata["c"]
    parents = sorted(str(parent_of(s)) for s in exporter.get_finished_spans())
    assert parents == sorted([TRACEPARENT, OTHER, "None"])


async def test_http_sink_sends_the_sink_span_context(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    got: list[Request] = []

    async def handler(request: Request) -> Response:
        got.append(request)
        return Response.json({"ok": True})

    async with serve_http(handler) as server, httpx.AsyncClient(base_url=server.url) as client:
        out = HttpSink(client, "/in")
        pipeline = tf.from_iterable([1, 2, 3]) | tf.batch(2, 60.0) | tf.sink(out, name="out")
        report = await pipeline.run(telemetry=[OpenTelemetry(provider)])
    assert report.acked == 3
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    sent = sorted(r.headers["traceparent"][:-3] for r in got)  # flags aside
    assert sent == sorted(traceparent_of(s) for s in spans)
    assert sorted(r.json() for r in got) == [[1, 2], [3]]


async def test_http_sink_passes_each_message_trace_on_without_tracing() -> None:
    got: list[Request] = []

    async def handler(request: Request) -> Response:
        got.append(request)
        return Response.json({"ok": True})

    messages = [
        tf.Message(1, {"traceparent": TRACEPARENT, "tracestate": "v=1"}),
        tf.Message(2, {"traceparent": OTHER}),
        tf.Message(3),
    ]
    async with serve_http(handler) as server, httpx.AsyncClient(base_url=server.url) as client:
        out = HttpSink(client, "/in", batch="each", headers={"x-app": "t"})
        pipeline = tf.from_iterable(messages) | tf.batch(3, 60.0) | tf.sink(out, messages=True)
        report = await pipeline.run()
    assert report.acked == 3
    by_body = {r.json(): r.headers for r in got}
    assert by_body[1]["traceparent"] == TRACEPARENT
    assert by_body[1]["tracestate"] == "v=1"
    assert by_body[2]["traceparent"] == OTHER
    assert "traceparent" not in by_body[3]
    assert {h["x-app"] for h in by_body.values()} == {"t"}


async def test_http_sink_leaves_a_traceparent_the_caller_set(
    provider: TracerProvider,
) -> None:
    got: list[Request] = []

    async def handler(request: Request) -> Response:
        got.append(request)
        return Response.json({"ok": True})

    def request(client: httpx.AsyncClient, item: Any) -> httpx.Request:
        return client.build_request("PUT", "/x", json=item, headers={"traceparent": OTHER})

    async with serve_http(handler) as server, httpx.AsyncClient(base_url=server.url) as client:
        mine = HttpSink(client, request=request)
        default = HttpSink(client, "/y", headers={"traceparent": TRACEPARENT})
        pipeline = tf.from_iterable([1]) | tf.process(mine) | tf.sink(default)
        await pipeline.run(telemetry=[OpenTelemetry(provider)])
    assert [(r.method, r.headers["traceparent"]) for r in got] == [
        ("PUT", OTHER),
        ("POST", TRACEPARENT),
    ]
