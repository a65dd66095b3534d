"""OpenTelemetry tracing: spans per message per stage, links, retries, failures, propagation.

Spans are collected with the SDK's in-memory exporter. The brokers' side (a ``traceparent``
read from Redis, RabbitMQ and Kafka, and written by the sinks) is in tests/connectors/.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

import trioflow as tf
from trioflow._telemetry import Instrument, Telemetry
from trioflow._tracing import current_context, messaging_attributes, outgoing_context
from trioflow.observe import OpenTelemetry

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


def by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def inc(x: int) -> int:
    return x + 1


async def test_a_span_per_message_per_stage(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    seen: list[int] = []

    async def save(x: int) -> None:
        seen.append(x)

    pipeline = tf.from_iterable([1, 2, 3]) | tf.process(inc) | tf.sink(save, name="save")
    report = await pipeline.run(telemetry=[OpenTelemetry(provider)])
    assert report.acked == 3
    assert seen == [2, 3, 4]  # a stage of plain data still gets plain data
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["inc process"] * 3 + ["save process"] * 3
    for s in spans:
        assert s.kind is SpanKind.CONSUMER
        assert s.attributes is not None
        assert s.attributes["trioflow.stage"] == s.name.removesuffix(" process")
        assert s.status.status_code is StatusCode.UNSET
    # each message's sink span is the child of its process span: one trace per message
    incs = by_name(spans, "inc process")
    saves = by_name(spans, "save process")
    assert len({trace_id(s) for s in incs}) == 3
    assert all(parent_id(s) is None for s in incs)
    assert sorted((trace_id(s), parent_id(s)) for s in saves) == sorted(
        (trace_id(s), span_id(s)) for s in incs
    )


async def test_a_trace_is_continued_from_the_metadata(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    state = "vendor=opaque"
    messages = [
        tf.Message(1, {"traceparent": TRACEPARENT, "tracestate": state}),
        tf.Message(2, {"traceparent": "not a traceparent"}),
        tf.Message(3, {"traceparent": TRACEPARENT.encode()}),  # not text: ignored too
    ]
    carried: list[dict[str, Any]] = []

    async def save(m: tf.Message[int]) -> None:
        carried.append(dict(m.metadata))

    pipeline = (
        tf.from_iterable(messages) | tf.process(inc) | tf.sink(save, messages=True, name="save")
    )
    await pipeline.run(telemetry=[OpenTelemetry(provider)])
    first, second = _split_by_trace(by_name(exporter.get_finished_spans(), "inc process"))
    assert trace_id(first) == TRACE_ID
    assert parent_id(first) == PARENT_ID
    assert first.parent is not None
    assert first.parent.is_remote
    assert first.context is not None
    assert first.context.trace_state.get("vendor") == "opaque"
    # a malformed traceparent is ignored: a new trace starts
    assert trace_id(second) != TRACE_ID
    assert parent_id(second) is None
    # the next stage sees the process span's context in the metadata (and so would a sink)
    tp = {c["traceparent"] for c in carried}
    assert f"00-{TRACE_ID}-{span_id(first)}-01" in tp
    assert f"00-{trace_id(second)}-{span_id(second)}-03" in tp  # sampled, random trace id


def _split_by_trace(spans: list[ReadableSpan]) -> tuple[ReadableSpan, ReadableSpan]:
    assert len(spans) == 3
    ours = [s for s in spans if trace_id(s) == TRACE_ID]
    other = [s for s in spans if trace_id(s) != TRACE_ID]
    assert len(ours) == 1
    assert len(other) == 2
    assert all(parent_id(s) is None for s in other)
    return ours[0], other[0]


async def test_a_batch_span_links_its_messages(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    sizes: list[int] = []

    async def save(batch: list[int]) -> None:
        sizes.append(len(batch))

    pipeline = (
        tf.from_iterable(range(5))
        | tf.process(inc)
        | tf.batch(2, 60.0)
        | tf.sink(save, name="save")
    )
    await pipeline.run(telemetry=[OpenTelemetry(provider)])
    assert sizes == [2, 2, 1]
    spans = exporter.get_finished_spans()
    incs = {span_id(s) for s in by_name(spans, "inc process")}
    saves = by_name(spans, "save process")
    assert len(incs) == 5
    assert len(saves) == 3
    linked = [f"{link.context.span_id:016x}" for s in saves for link in s.links]
    assert sorted(linked) == sorted(incs)
    assert sorted(s.attributes["messaging.batch.message_count"] for s in saves) == [1, 2, 2]  # type: ignore[index]
    assert all(parent_id(s) is None for s in saves)


async def test_retries_are_events_on_the_span(
    provider: TracerProvider, exporter: InMemorySpanExporter, autojump_clock: trio.testing.MockClock
) -> None:
    calls = {"n": 0}

    async def flaky(x: int) -> int:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError(f"try {calls['n']}")
        return x

    retry = tf.Retry(attempts=3, backoff=tf.Backoff.constant(1.5), on=(ConnectionError,))
    pipeline = (
        tf.from_iterable([7])
        | tf.process(flaky, retry=retry, name="flaky")
        | tf.sink(lambda x: None)
    )
    report = await pipeline.run(telemetry=[OpenTelemetry(provider)])
    assert report.acked == 1
    assert report.retried == 2
    (span,) = by_name(exporter.get_finished_spans(), "flaky process")
    events = [e for e in span.events if e.name == "retry"]
    assert [e.attributes for e in events] == [
        {
            "trioflow.attempt": 2,
            "trioflow.retry.delay": 1.5,
            "exception.type": "ConnectionError",
            "exception.message": "try 1",
        },
        {
            "trioflow.attempt": 3,
            "trioflow.retry.delay": 1.5,
            "exception.type": "ConnectionError",
            "exception.message": "try 2",
        },
    ]
    assert span.status.status_code is StatusCode.UNSET


async def test_a_failure_is_recorded_on_the_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def check(x: int) -> int:
        if x == 2:
            raise ValueError("two is bad")
        return x

    async def mark(m: tf.Message[int]) -> tf.Message[int]:
        return m.fail("odd") if m.data % 2 else m

    pipeline = (
        tf.from_iterable([1, 2, 4])
        | tf.process(check, name="check")
        | tf.process(mark, messages=True, name="mark")
        | tf.sink(lambda x: None)
    )
    report = await pipeline.run(telemetry=[OpenTelemetry(provider)])
    assert report.failed == 2
    assert report.acked == 1
    spans = exporter.get_finished_spans()
    (raised,) = [
        s for s in by_name(spans, "check process") if s.status.status_code is StatusCode.ERROR
    ]
    assert raised.status.description == "ValueError: two is bad"
    (event,) = raised.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    marked = [s for s in by_name(spans, "mark process") if s.status.status_code is StatusCode.ERROR]
    assert [s.status.description for s in marked] == ["odd"]
    assert len(by_name(spans, "mark process")) == 2  # the item that raised never got there


async def test_failed_messages_of_a_batch_mark_its_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def save(batch: tf.Batch[tf.Message[int]]) -> list[tf.Message[int]]:
        return [m.fail("no") if m.data == 1 else m for m in batch]

    pipeline = (
        tf.from_iterable([0, 1, 2]) | tf.batch(3, 60.0) | tf.sink(save, messages=True, name="save")
    )
    report = await pipeline.run(telemetry=[OpenTelemetry(provider)])
    assert report.failed == 1
    assert report.acked == 2
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "1 of 3 failed"
    assert [e.attributes for e in span.events] == [{"reason": "no"}]
    assert span.links == ()  # plain data: no context to link


async def test_user_spans_inside_a_stage_are_its_children(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("user")
    sent: list[dict[str, str] | None] = []

    async def work(x: int) -> int:
        with tracer.start_as_current_span("query"):
            pass
        sent.append(current_context())
        return x

    await (tf.from_iterable([1]) | tf.sink(work, name="work")).run(
        telemetry=[OpenTelemetry(provider)]
    )
    query, stage = sorted(exporter.get_finished_spans(), key=lambda s: s.name)
    assert stage.name == "work process"
    assert parent_id(query) == span_id(stage)
    assert sent == [{"traceparent": f"00-{trace_id(stage)}-{span_id(stage)}-03"}]


async def test_unsampled_spans_are_not_recorded_but_propagated(
    exporter: InMemorySpanExporter,
) -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sent: list[dict[str, str] | None] = []

    async def work(x: int) -> None:
        sent.append(current_context())

    await (tf.from_iterable([1]) | tf.sink(work, name="work")).run(
        telemetry=[OpenTelemetry(provider)]
    )
    assert exporter.get_finished_spans() == ()
    (context,) = sent
    assert context is not None
    assert int(context["traceparent"][-2:], 16) & 1 == 0  # not sampled


def test_tracing_off_wraps_nothing() -> None:
    assert Telemetry([]).call_wrappers("stage") == []
    assert Telemetry([Instrument()]).call_wrappers("stage") == []
    # a no-op provider declines to wrap
    assert OpenTelemetry(NoOpTracerProvider()).wrap_call("stage", inc) is None


async def test_a_no_op_provider_changes_nothing() -> None:
    seen: list[Any] = []

    async def save(m: tf.Message[int]) -> None:
        seen.append((m.data, m.metadata))

    messages = [tf.Message(1, {"traceparent": TRACEPARENT})]
    pipeline = (
        tf.from_iterable(messages) | tf.process(inc) | tf.sink(save, messages=True, name="save")
    )
    report = await pipeline.run(telemetry=[OpenTelemetry(NoOpTracerProvider())])
    assert report.acked == 1
    assert seen == [(2, {"traceparent": TRACEPARENT})]


async def test_the_global_provider_is_used_by_default(
    provider: TracerProvider, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # none set: the API's proxy provider; the instrument leaves the stages alone
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert OpenTelemetry().wrap_call("stage", inc) is None
    pipeline = tf.from_iterable([1, 2]) | tf.process(inc) | tf.sink(lambda x: None)
    assert (await pipeline.run(telemetry=[OpenTelemetry()])).acked == 2
    assert repr(OpenTelemetry()) == "OpenTelemetry()"
    # one set before the run (set_tracer_provider can only be called once per process)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    assert (await pipeline.run(telemetry=[OpenTelemetry()])).acked == 2
    assert [s.name for s in exporter.get_finished_spans()].count("inc process") == 2


def test_outgoing_context_falls_back_to_the_message() -> None:
    assert outgoing_context(None) is None
    assert outgoing_context({"id": 1}) is None
    assert outgoing_context({"traceparent": TRACEPARENT, "tracestate": "a=b"}) == {
        "traceparent": TRACEPARENT,
        "tracestate": "a=b",
    }


def test_messaging_attributes() -> None:
    assert messaging_attributes({}) == {}
    assert messaging_attributes({"attempt": 2}) == {"trioflow.attempt": 2}
    assert messaging_attributes(
        {"topic": "t", "partition": 2, "offset": 40, "key": b"k", "delivery_count": 1}
    ) == {
        "messaging.system": "kafka",
        "messaging.destination.name": "t",
        "messaging.destination.partition.id": "2",
        "messaging.kafka.offset": 40,
        "messaging.kafka.message.key": "k",
        "messaging.operation.type": "process",
        "trioflow.delivery_count": 1,
    }
    assert messaging_attributes(
        {"delivery_tag": 3, "queue": "q", "routing_key": "q", "message_id": "m-1"}
    ) == {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": "q",
        "messaging.rabbitmq.destination.routing_key": "q",
        "messaging.rabbitmq.message.delivery_tag": 3,
        "messaging.message.id": "m-1",
        "messaging.operation.type": "process",
    }
    assert messaging_attributes({"stream": "s", "id": "1-0"}) == {
        "messaging.system": "redis",
        "messaging.destination.name": "s",
        "messaging.message.id": "1-0",
        "messaging.operation.type": "process",
    }


@pytest.mark.parametrize("options", [{"n": 4}, {"n": 3, "partition_by": lambda x: x % 2}])
async def test_workers_in_a_pool_each_trace_their_own_calls(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    autojump_clock: trio.testing.MockClock,
    options: dict[str, Any],
) -> None:
    failed_once: set[int] = set()

    async def slow(x: int) -> int:
        trace.get_current_span().set_attribute("item", x)
        await trio.sleep(0.1 * (x % 3))
        if x % 4 == 0 and x not in failed_once:
            failed_once.add(x)
            raise ConnectionError(f"flaky {x}")
        return x

    retry = tf.Retry(attempts=2, backoff=tf.Backoff.constant(1.0), on=(ConnectionError,))
    stage = tf.process(slow, retry=retry, name="slow", **options)
    report = await (tf.from_iterable(range(12)) | stage | tf.sink(lambda x: None)).run(
        telemetry=[OpenTelemetry(provider)]
    )
    assert report.acked == 12
    spans = by_name(exporter.get_finished_spans(), "slow process")
    assert len(spans) == 12
    retried = sorted(
        e.attributes["exception.message"]  # type: ignore[index]
        for s in spans
        for e in s.events
        if e.name == "retry"
    )
    assert retried == ["flaky 0", "flaky 4", "flaky 8"]
    # each retry is on the span of the call that failed (its own item's)
    for s in spans:
        assert s.attributes is not None
        for e in s.events:
            assert e.attributes is not None
            assert e.attributes["exception.message"] == f"flaky {s.attributes['item']}"
    assert sorted(len(s.events) for s in spans) == [0] * 9 + [1] * 3


async def test_a_hard_stop_ends_the_span_without_an_error(
    provider: TracerProvider, exporter: InMemorySpanExporter, autojump_clock: trio.testing.MockClock
) -> None:
    async def stuck(x: int) -> None:
        await trio.sleep_forever()

    with trio.move_on_after(5) as scope:
        await (tf.from_iterable([1]) | tf.sink(stuck, name="stuck")).run(
            telemetry=[OpenTelemetry(provider)]
        )
    assert scope.cancelled_caught
    (span,) = exporter.get_finished_spans()
    assert span.name == "stuck process"
    assert span.status.status_code is StatusCode.UNSET
    assert span.events == ()


async def test_the_seam_tells_when_every_wrapper_declines(provider: TracerProvider) -> None:
    from trioflow._operators._traced import view_call, wrapped_call

    declined = [partial(OpenTelemetry(NoOpTracerProvider()).wrap_call, "stage")]
    assert wrapped_call(inc, True, False, declined) is None
    # the bare call of views: a plain stage's result goes on as the message's data
    bare = view_call(inc, True, False)
    assert (await bare(tf.Message(1, {"k": "v"}))).metadata == {"k": "v"}
    wrapping = [partial(OpenTelemetry(provider).wrap_call, "stage"), *declined]
    call = wrapped_call(inc, True, False, wrapping)
    assert call is not None
    result = await call(tf.Message(1))
    assert result.data == 2
    assert "traceparent" in result.metadata
