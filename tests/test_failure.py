"""Failures: user exceptions fail items, bugs and ``Fatal`` stop the pipeline."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import TestSource


def boom_on(bad: int) -> Any:
    def fn(x: int) -> int:
        if x == bad:
            raise ValueError(f"bad {x}")
        return x

    return fn


async def test_exception_fails_the_item_not_the_pipeline() -> None:
    src = TestSource(range(5))
    out: list[int] = []
    report = await (src | tf.process(boom_on(2), name="check") | tf.sink(out.append)).run()
    assert out == [0, 1, 3, 4]
    assert src.acked == [0, 1, 3, 4]
    [(data, reason)] = src.failed
    assert data == 2
    # the reason is the exception itself, noted with where it happened
    assert type(reason) is ValueError
    assert reason.args == ("bad 2",)
    assert reason.__notes__ == ["trioflow: in stage 'check', item 2"]
    assert (report.received, report.acked, report.failed, report.unsettled) == (5, 4, 1, 0)
    assert report.failed_by_reason == {"ValueError": 1}


async def test_failed_item_skips_remaining_stages() -> None:
    later: list[int] = []
    await (tf.from_iterable(range(3)) | tf.process(boom_on(1)) | tf.process(later.append)).run()
    assert later == [0, 2]


async def test_on_failure_receives_original_source_data_with_reason_in_groups() -> None:
    groups: list[list[tuple[Any, Any, str]]] = []

    async def dead_letter(msgs: list[tf.Message[Any]]) -> None:
        groups.append([(m.data, type(m.reason).__name__, m.status) for m in msgs])

    src = TestSource(range(10))
    p = (
        src
        | tf.process(lambda x: x * 100)
        | tf.process(boom_on(300))
        | tf.batch(2)
        | tf.sink(lambda b: 1 / (len(b) - 2))
    )
    report = await p.on_failure(dead_letter).run()
    flat = [x for g in groups for x in g]
    # original data (not 300), with the reason; the failed batches fail all their members
    assert sorted(flat) == sorted(
        [(3, "ValueError", "failed")]
        + [(i, "ZeroDivisionError", "failed") for i in [0, 1, 2, 4, 5, 6, 7, 8]]
    )
    assert len(groups) < len(flat)  # handed over in groups, not one by one
    # after the handler, they are acked as failed to their source
    assert sorted(d for d, _ in src.failed) == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert src.acked == [9]
    assert report.failed_by_reason == {"ValueError": 1, "ZeroDivisionError": 8}


async def test_sync_on_failure_handler_and_plain_data() -> None:
    seen: list[Any] = []
    report = await (
        (tf.from_iterable([1, 2, 3]) | tf.process(boom_on(2))).on_failure(
            lambda ms: seen.extend(ms)
        )
    ).run()
    assert [(m.data, m.status, str(m.reason)) for m in seen] == [(2, "failed", "bad 2")]
    assert (report.acked, report.failed) == (2, 1)


async def test_failed_batch_of_ten_counts_ten() -> None:
    src = TestSource(range(10))

    def save(batch: list[int]) -> None:
        raise ConnectionError("db down")

    report = await (src | tf.batch(10) | tf.sink(save)).run()
    assert report.failed_by_reason == {"ConnectionError": 10}
    assert (report.received, report.failed, report.acked) == (10, 10, 0)
    assert sorted(d for d, _ in src.failed) == list(range(10))
    assert {str(r) for _, r in src.failed} == {"db down"}


@pytest.mark.parametrize(
    "stage",
    [
        tf.process(lambda x: x, n=2, partition_by=lambda x: 1 // x),
        tf.batch(2, key=lambda x: 1 // x),
        tf.route(lambda x: 1 // x, {1: tf.sink(lambda x: None), -1: tf.sink(lambda x: None)}),
    ],
    ids=["partition_by", "batch_key", "route"],
)
async def test_key_function_errors_are_item_failures(stage: Any) -> None:
    src = TestSource([1, 0, -1])
    report = await (src | stage).run()
    assert sorted(src.acked) == [-1, 1]
    assert [(d, type(r)) for d, r in src.failed] == [(0, ZeroDivisionError)]
    assert report.failed_by_reason == {"ZeroDivisionError": 1}


async def test_unhashable_batch_key_fails_item() -> None:
    src = TestSource([1, 2])
    await (src | tf.batch(2, key=lambda x: [x] if x == 2 else x)).run()
    assert src.acked == [1]
    assert [(d, type(r)) for d, r in src.failed] == [(2, TypeError)]


async def test_fatal_stops_pipeline_with_pipeline_error() -> None:
    src = TestSource(range(100))
    fatal = tf.Fatal("credentials rejected")

    async def save(x: int) -> None:
        if x == 3:
            raise fatal

    with pytest.raises(tf.PipelineError) as info:
        await (src | tf.process(lambda x: x) | tf.sink(save, name="save")).run()
    err = info.value
    assert err.stage == "save"
    assert err.__cause__ is fatal
    assert str(err) == "stage 'save' stopped the pipeline: Fatal('credentials rejected')"
    assert 3 not in src.acked
    assert src.failed == []


async def test_fatal_cancels_every_stage() -> None:
    cancelled: list[str] = []

    async def waits_forever(x: int) -> int:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append("waits")
        return x  # pragma: no cover

    def fatal_on_5(x: int) -> int:
        if x == 5:
            raise tf.Fatal("stop")
        return x

    with pytest.raises(
        tf.PipelineError, match=r"^stage 'fatal_on_5' stopped the pipeline: Fatal\('stop'\)$"
    ):
        await (
            tf.from_iterable(range(10))
            | tf.route(
                lambda x: x < 5,
                {True: tf.sink(waits_forever), False: tf.sink(fatal_on_5, name="fatal_on_5")},
            )
        ).run()
    assert cancelled == ["waits"]


async def test_fatal_is_never_retried() -> None:
    calls = 0

    def f(x: int) -> None:
        nonlocal calls
        calls += 1
        raise tf.Fatal("no")

    with pytest.raises(tf.PipelineError) as info:
        await (
            tf.from_iterable([1])
            | tf.sink(f, retry=tf.Retry(attempts=5, backoff=tf.Backoff.constant(0)))
        ).run()
    assert calls == 1
    assert isinstance(info.value.__cause__, tf.Fatal)


@pytest.mark.parametrize("where", ["filter", "flat_map", "key"])
async def test_fatal_from_other_stage_functions(where: str) -> None:
    def fatal(x: Any) -> Any:
        raise tf.Fatal(where)

    stage = {
        "filter": tf.filter(fatal),
        "flat_map": tf.flat_map(fatal),
        "key": tf.batch(2, key=fatal),
    }[where]
    with pytest.raises(tf.PipelineError) as info:
        await (tf.from_iterable([1]) | stage).run()
    assert isinstance(info.value.__cause__, tf.Fatal)
    assert info.value.__cause__.args == (where,)


class BrokenAcknowledger:
    async def ack(self, successful: list[Any], failed: list[Any]) -> None:
        raise RuntimeError("broker gone")


async def test_exception_from_acknowledger_is_contained() -> None:
    """Contract, second part: an ``ack`` that raises leaves its messages un-acked."""
    msgs = [tf.Message(i, acknowledger=BrokenAcknowledger()) for i in range(3)]
    report = await (tf.from_iterable(msgs) | tf.sink(lambda x: None)).run()
    assert report.unsettled == report.ack_errors == 3
    assert report.acked == 0


async def test_exception_from_on_failure_handler_is_contained() -> None:
    def handler(msgs: list[Any]) -> None:
        raise LookupError("dead letter queue full")

    src = TestSource(range(3))
    report = await (src | tf.process(boom_on(1))).on_failure(handler).run()
    assert report.failure_handler_errors == report.unsettled == 1
    assert src.failed == []  # nothing acked as failed: the handler did not finish
    assert src.acked == [0, 2]


async def test_exception_from_source_is_a_bug() -> None:
    def gen():  # type: ignore[no-untyped-def]
        yield 1
        raise OSError("disk")

    with pytest.raises(
        tf.PipelineError, match=r"^stage 'from_iterable' stopped the pipeline: OSError\('disk'\)$"
    ):
        await (tf.from_iterable(gen()) | tf.sink(lambda x: None)).run()


def test_pipeline_error_is_a_trioflow_error() -> None:
    assert issubclass(tf.PipelineError, tf.TrioflowError)
    assert issubclass(tf.InvalidPipeline, ValueError)
    assert issubclass(tf.StageTimeout, TimeoutError)
    assert not issubclass(tf.Fatal, tf.TrioflowError)


async def test_fatal_inside_an_exception_group_still_stops_the_pipeline() -> None:
    async def fn(x: int) -> int:
        async with trio.open_nursery() as nursery:

            async def boom() -> None:
                raise tf.Fatal("gone")

            nursery.start_soon(boom)
        return x

    with pytest.raises(tf.PipelineError) as info:
        await (tf.from_iterable([1]) | tf.process(fn) | tf.sink(lambda x: None)).run()
    assert isinstance(info.value.__cause__, tf.Fatal)  # the Fatal itself, not its group
