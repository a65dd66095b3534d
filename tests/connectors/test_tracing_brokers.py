"""Trace context through real brokers: Redis, RabbitMQ and Kafka on 127.0.0.1.

A producer publishes inside a span of its own; the pipeline, traced with the SDK's in-memory
exporter, must continue that trace (its stage spans are children of the producer's span), and
its sink must write the sink span's ``traceparent`` into what it sends, which a consumer on the
other side of the broker reads back.
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import trioflow as tf
from trioflow.connectors.kafka import KafkaSink, KafkaSource
from trioflow.connectors.rabbitmq import RabbitQueueSource, connect, open_channel, publish
from trioflow.connectors.redis import RedisStreamSink, RedisStreamSource
from trioflow.connectors.redis import connect as redis_connect
from trioflow.observe import OpenTelemetry

from .kafka_server import FAST_GROUP, KafkaServer, kafka_server
from .rabbit_server import RabbitServer, shared_broker
from .servers import RedisServer

pytestmark = pytest.mark.server

__all__ = ["kafka_server"]  # the fixture


@pytest.fixture
def rabbit(request: pytest.FixtureRequest) -> RabbitServer:
    return shared_broker(request.config)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ids(span: ReadableSpan) -> tuple[str, str]:
    """(trace id, span id) in hex, as in a traceparent."""
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def parent_ids(span: ReadableSpan) -> tuple[str, str] | None:
    if span.parent is None:
        return None
    return f"{span.parent.trace_id:032x}", f"{span.parent.span_id:016x}"


def parsed(traceparent: str | bytes) -> tuple[str, str]:
    text = traceparent.decode() if isinstance(traceparent, bytes) else traceparent
    _, trace_id, span_id, _ = text.split("-")
    return trace_id, span_id


def check_trace(
    spans: tuple[ReadableSpan, ...],
    produced: dict[str, tuple[str, str]],
    written: dict[str, str | bytes],
    system: str,
) -> None:
    """Per item: the process span is the child of the producer's span, the sink span the child
    of the process span, and what the sink wrote is the sink span's context."""
    work = {s.attributes["item"]: s for s in spans if s.name == "work process"}  # type: ignore[index]
    out = {s.attributes["item"]: s for s in spans if s.name == "out process"}  # type: ignore[index]
    assert sorted(work) == sorted(produced)
    assert sorted(out) == sorted(produced)
    for item, parent in produced.items():
        assert parent_ids(work[item]) == parent
        assert work[item].parent is not None
        assert work[item].parent.is_remote
        assert work[item].attributes is not None
        assert work[item].attributes["messaging.system"] == system
        assert parent_ids(out[item]) == ids(work[item])
        assert parsed(written[item]) == ids(out[item])


def produce_context(tracer: Any, name: str) -> tuple[dict[str, str], tuple[str, str]]:
    """A producer's span (ended), and the carrier with its traceparent."""
    with tracer.start_as_current_span(f"produce {name}") as span:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        context = span.get_span_context()
    return carrier, (f"{context.trace_id:032x}", f"{context.span_id:016x}")


def tag(value: str) -> Any:
    """A stage function that names its item on the current span, so the test can find it."""
    from opentelemetry import trace

    trace.get_current_span().set_attribute("item", value)
    return value


async def test_redis_fields_carry_the_trace_both_ways(
    redis_server: RedisServer, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    stream, out_stream, group = _name("in"), _name("out"), _name("g")
    tracer = provider.get_tracer("producer")
    produced: dict[str, tuple[str, str]] = {}
    async with redis_connect(port=redis_server.port) as client:
        for i in range(5):
            carrier, parent = produce_context(tracer, stream)
            await client.xadd(stream, {"n": str(i), **carrier})
            produced[str(i)] = parent
        source = RedisStreamSource(stream, group, "c1", port=redis_server.port, block=0.05)
        stop = trio.Event()
        done: list[str] = []

        async def work(fields: dict[str, str]) -> dict[str, str]:
            tag(fields["n"])
            return {"n": fields["n"]}

        sink = RedisStreamSink(client, out_stream)

        async def out(fields: dict[str, str]) -> None:
            tag(fields["n"])
            await sink(fields)
            done.append(fields["n"])
            if len(done) == 5:
                stop.set()

        pipeline = source | tf.process(work, name="work") | tf.sink(out, name="out")
        with trio.fail_after(30):
            report = await pipeline.run(stop=stop, telemetry=[OpenTelemetry(provider)])
        assert report.acked == 5
        entries = await client.xrange(out_stream)
    written = {e.field_values["n"]: e.field_values["traceparent"] for e in entries}
    check_trace(exporter.get_finished_spans(), produced, written, "redis")
    span = next(s for s in exporter.get_finished_spans() if s.name == "work process")
    assert span.attributes is not None
    assert span.attributes["messaging.destination.name"] == stream


async def test_redis_sink_passes_a_message_trace_on_without_tracing(
    redis_server: RedisServer,
) -> None:
    stream, out_stream, group = _name("in"), _name("out"), _name("g")
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with redis_connect(port=redis_server.port) as client:
        await client.xadd(stream, {"n": "1", "traceparent": traceparent, "tracestate": "a=b"})
        await client.xadd(stream, {"n": "2"})
        source = RedisStreamSource(stream, group, "c1", port=redis_server.port, block=0.05)
        seen: list[dict[str, Any]] = []
        sink = RedisStreamSink(client, out_stream)
        stop = trio.Event()

        async def out(m: tf.Message[dict[str, str]]) -> None:
            seen.append(m.metadata)
            await sink(m.replace({"n": m.data["n"]}))
            if len(seen) == 2:
                stop.set()

        with trio.fail_after(30):
            await (source | tf.sink(out, messages=True)).run(stop=stop)
        entries = await client.xrange(out_stream)
    assert len(seen) == 2
    metas = sorted(seen, key=lambda m: str(m["id"]))
    assert metas[0]["traceparent"] == traceparent
    assert metas[0]["tracestate"] == "a=b"
    assert "traceparent" not in metas[1]
    fields = sorted((dict(e.field_values) for e in entries), key=lambda f: f["n"])
    assert fields == [{"n": "1", "traceparent": traceparent, "tracestate": "a=b"}, {"n": "2"}]


async def test_rabbitmq_headers_carry_the_trace_both_ways(
    rabbit: RabbitServer, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    queue, out_queue = _name("q"), _name("out")
    tracer = provider.get_tracer("producer")
    for q in (queue, out_queue):
        async with RabbitQueueSource(q, port=rabbit.port).open():  # declares the queues
            pass
    produced: dict[str, tuple[str, str]] = {}
    async with connect(port=rabbit.port) as conn, open_channel(conn) as channel:
        for i in range(5):
            # publish() sends the current span's context: the producer's
            with tracer.start_as_current_span(f"produce {queue}") as span:
                await publish(channel, queue, [b"%d" % i])
                context = span.get_span_context()
            produced[str(i)] = (f"{context.trace_id:032x}", f"{context.span_id:016x}")

        def work(body: bytes) -> str:
            return tag(body.decode())

        async def out(text: str) -> None:
            tag(text)
            await publish(channel, out_queue, [text.encode()])

        source = RabbitQueueSource(queue, port=rabbit.port)
        pipeline = source | tf.process(work, name="work") | tf.sink(out, name="out")
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(
                partial(pipeline.serve, telemetry=[OpenTelemetry(provider)])
            )
            with trio.fail_after(30):
                while handle.metrics.acked < 5:  # noqa: ASYNC110 - a broker's effect
                    await trio.sleep(0.02)
            handle.stop()
    # a consumer on the other side reads the sink span's context from the headers
    written: dict[str, str | bytes] = {}
    stop = trio.Event()

    async def read(m: tf.Message[bytes]) -> None:
        written[m.data.decode()] = m.metadata["traceparent"]
        if len(written) == 5:
            stop.set()

    with trio.fail_after(30):
        await (RabbitQueueSource(out_queue, port=rabbit.port) | tf.sink(read, messages=True)).run(
            stop=stop
        )
    check_trace(exporter.get_finished_spans(), produced, written, "rabbitmq")


async def test_kafka_headers_carry_the_trace_both_ways(
    kafka_server: KafkaServer, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    topic = kafka_server.create_topic(_name("in"), 2)
    out_topic = kafka_server.create_topic(_name("out"), 2)
    tracer = provider.get_tracer("producer")
    produced: dict[str, tuple[str, str]] = {}
    for i in range(4):
        carrier, parent = produce_context(tracer, topic)
        await trio.to_thread.run_sync(
            partial(
                kafka_server.produce,
                topic,
                [(None, b"%d" % i)],
                **{k: v.encode() for k, v in carrier.items()},
            )
        )
        produced[str(i)] = parent
    sink = KafkaSink(out_topic, bootstrap=kafka_server.bootstrap)
    done = trio.Event()
    sent: list[str] = []

    def work(value: bytes) -> str:
        return tag(value.decode())

    async def out(text: str) -> None:
        tag(text)
        await sink(text)
        sent.append(text)
        if len(sent) == 4:
            done.set()

    source = KafkaSource(topic, _name("g"), bootstrap=kafka_server.bootstrap, **FAST_GROUP)
    pipeline = source | tf.process(work, name="work") | tf.sink(out, name="out")
    with trio.fail_after(60):
        await pipeline.run(stop=done, drain_timeout=10, telemetry=[OpenTelemetry(provider)])
    sink.close()
    back = await trio.to_thread.run_sync(kafka_server.read_all, out_topic, 4)
    written = {m.value().decode(): dict(m.headers())["traceparent"] for m in back}
    check_trace(exporter.get_finished_spans(), produced, written, "kafka")


async def test_rabbitmq_publish_sends_headers_and_no_trace_without_a_span(
    rabbit: RabbitServer,
) -> None:
    queue = _name("q")
    async with RabbitQueueSource(queue, port=rabbit.port).open():
        pass
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with connect(port=rabbit.port) as conn, open_channel(conn) as channel:
        await publish(channel, queue, [b"plain"])
        await publish(channel, queue, [b"mine"], headers={"x-app": "t", "traceparent": traceparent})
    seen: dict[str, dict[str, Any]] = {}
    stop = trio.Event()

    async def read(m: tf.Message[bytes]) -> None:
        seen[m.data.decode()] = m.metadata
        if len(seen) == 2:
            stop.set()

    with trio.fail_after(30):
        await (RabbitQueueSource(queue, port=rabbit.port) | tf.sink(read, messages=True)).run(
            stop=stop
        )
    assert "traceparent" not in seen["plain"]
    assert not seen["plain"]["headers"]
    assert seen["mine"]["traceparent"] == traceparent
    assert seen["mine"]["headers"]["x-app"] == b"t"  # AMQP strings arrive as bytes
