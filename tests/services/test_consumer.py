"""Declarative consumers compile to ordinary pipelines."""

from __future__ import annotations

from typing import Any

import pytest

import trioflow as tf
from trioflow.testing import TestSource


class Payments(tf.Consumer):
    topic = "payments.created"
    concurrency = 4
    batch_size = 3
    batch_timeout = 1.0
    retry = tf.Retry(attempts=2, backoff=tf.Backoff.constant(0.0))

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[Any]] = []
        self.metas: list[tuple[Any, ...]] = []

    async def handle(self, data: int, ctx: tf.ConsumerContext) -> int:
        assert ctx.topic == "payments.created"
        assert ctx.consumer == "Payments"
        if data == 5:
            raise ValueError("bad payment")
        return data * 10

    async def handle_batch(self, batch: list[int], ctx: tf.ConsumerContext) -> None:
        self.batches.append(batch)
        self.metas.append(ctx.batch_metadata)


def test_pipeline_shows_what_it_compiles_to() -> None:
    pipeline = Payments().pipeline(lambda topic: tf.from_iterable([], name=topic))
    assert repr(pipeline) == (
        "from_iterable([]) | process(Payments.handle, n=4, retry=Retry(attempts=2, "
        "backoff=Backoff.constant(0.0)), messages=True) | batch(3, 1.0) | "
        "sink(Payments.handle_batch, retry=Retry(attempts=2, backoff=Backoff.constant(0.0)), "
        "messages=True)"
    )
    assert isinstance(pipeline, tf.Pipeline)


async def test_handle_then_batches_acks_and_failures() -> None:
    source = TestSource(range(10))
    consumer = Payments()
    report = await consumer.pipeline(lambda topic: source).run()
    assert sorted(x for b in consumer.batches for x in b) == [x * 10 for x in range(10) if x != 5]
    assert all(len(b) <= 3 for b in consumer.batches)
    assert sorted(source.acked) == [x for x in range(10) if x != 5]
    assert [d for d, _ in source.failed] == [5]
    assert report.failed_by_reason == {"ValueError": 1}
    assert report.retried == 1  # attempts=2: one retry of the bad payment
    assert all(len(m) == len(b) for m, b in zip(consumer.metas, consumer.batches, strict=True))


async def test_per_message_consumer_sees_metadata_and_handle_failed() -> None:
    seen: list[Any] = []
    failed: list[Any] = []

    class Audit(tf.Consumer):
        topic = "audit"
        concurrency = 2

        def handle(self, data: Any, ctx: tf.ConsumerContext) -> None:  # a plain function works
            if data == "boom":
                raise RuntimeError("boom")
            seen.append((data, dict(ctx.metadata)))

        async def handle_failed(self, messages: list[tf.Message[Any]]) -> None:
            failed.extend(m.data for m in messages)

    async def source() -> Any:
        yield tf.Message("a", metadata={"id": 1})
        yield tf.Message("boom", metadata={"id": 2})

    consumer = Audit()
    pipeline = consumer.pipeline(lambda topic: source)
    assert "source | sink(Audit.handle, n=2, messages=True)).on_failure(" in repr(pipeline)
    report = await pipeline.run()
    assert seen == [("a", {"id": 1})]
    assert failed == ["boom"]
    assert report.acked == 1
    assert report.failed == 1


async def test_consumer_source_factory_wins_over_the_default() -> None:
    class Own(tf.Consumer):
        topic = "t"
        source_factory = staticmethod(lambda topic: tf.from_iterable([topic], name="own"))

        async def handle(self, data: Any, ctx: tf.ConsumerContext) -> None:
            pass

    pipeline = Own().pipeline(lambda topic: tf.from_iterable([], name="default"))
    assert pipeline.stages[0].label == "own"


def test_validation_names_class_and_value() -> None:
    class NoTopic(tf.Consumer):
        async def handle(self, data: Any, ctx: tf.ConsumerContext) -> None:
            pass

    with pytest.raises(TypeError, match=r"^NoTopic: topic=None must be a non-empty string$"):
        NoTopic()

    class Zero(tf.Consumer):
        topic = "t"
        concurrency = 0

        async def handle(self, data: Any, ctx: tf.ConsumerContext) -> None:
            pass

    with pytest.raises(ValueError, match=r"^Zero: concurrency=0 must be a positive integer$"):
        Zero()

    class NoBatchHandler(tf.Consumer):
        topic = "t"
        batch_size = 10

        async def handle(self, data: Any, ctx: tf.ConsumerContext) -> None:
            pass

    with pytest.raises(TypeError, match=r"^NoBatchHandler: batch_size=10 needs a handle_batch"):
        NoBatchHandler()

    class Nothing(tf.Consumer):
        topic = "t"

    with pytest.raises(TypeError, match=r"^Nothing: define handle"):
        Nothing()

    class NoFactory(tf.Consumer):
        topic = "t"

        async def handle(self, data: Any, ctx: tf.ConsumerContext) -> None:
            pass

    with pytest.raises(TypeError, match=r"^NoFactory: no source factory for topic 't'"):
        NoFactory().pipeline()


class Rows(tf.Consumer):
    """handle_batch fails the rows the 'database' rejected, and reads the batch's info."""

    topic = "rows"
    batch_size = 4
    batch_timeout = None

    def __init__(self) -> None:
        super().__init__()
        self.infos: list[Any] = []

    async def handle_batch(self, batch: list[int], ctx: tf.ConsumerContext) -> None:
        self.infos.append((ctx.batch_info.size, ctx.batch_info.trigger))
        for i, row in enumerate(batch):
            if row % 4 == 1:
                ctx.fail(i, "rejected", action="dead_letter")


async def test_handle_batch_fails_only_the_rows_it_names() -> None:
    consumer = Rows()
    src = TestSource(range(10))
    failed: list[tf.Message[Any]] = []
    report = await consumer.pipeline(lambda topic: src).on_failure(failed.extend).run()
    assert consumer.infos == [(4, "size"), (4, "size"), (2, "end")]
    assert sorted(src.acked) == [0, 2, 3, 4, 6, 7, 8]
    assert sorted(d for d, _ in src.failed) == [1, 5, 9]
    assert report.failed_by_reason == {"rejected": 3}
    assert {m.action for m in failed} == {"dead_letter"}


async def test_ctx_fail_names_a_real_index() -> None:
    class Bad(Rows):
        async def handle_batch(self, batch: list[int], ctx: tf.ConsumerContext) -> None:
            ctx.fail(len(batch), "x")

    src = TestSource(range(4))
    await Bad().pipeline(lambda topic: src).run()
    reason = src.failed[0][1]
    assert isinstance(reason, IndexError)
    assert "the batch has 4 items" in str(reason)
