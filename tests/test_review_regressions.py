"""Regressions found by review (issue 11): coroutine results stolen before they ran, a lone
error in a group from a source, results held behind a slow call, n=1 partition_by order."""

from __future__ import annotations

import types
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import TestSource

# -- from review: test_r1_sync_coroutine_steal


async def test_sync_sink_coroutines_not_acked_before_they_run(autojump_clock):
    ran: list[int] = []

    async def save(x: int) -> None:
        await trio.sleep(1)
        if x == 0:
            raise ValueError("boom")  # settles item 0 as failed: wakes the acker
        ran.append(x)

    src = TestSource(range(5))
    with trio.fail_after(60):
        report = await (src | tf.sink(lambda x: save(x))).run()
    assert sorted(ran) == [1, 2, 3, 4]
    assert src.failed
    assert src.failed[0][0] == 0
    assert sorted(src.acked) == [1, 2, 3, 4]
    assert report.acked == 4
    assert report.failed == 1


async def test_sync_sink_coroutine_failures_not_double_settled(autojump_clock):
    async def save(x: int) -> None:
        await trio.sleep(1)
        raise ValueError(f"boom {x}")

    src = TestSource(range(5))
    with trio.fail_after(60):
        await (src | tf.sink(lambda x: save(x))).run()
    assert src.acked == []
    assert [d for d, _ in src.failed] == [0, 1, 2, 3, 4]


async def test_batch_deadline_does_not_steal_unawaited_coroutines(autojump_clock):
    async def slow(x: int) -> int:
        await trio.sleep(1)
        return x * 10

    async def gen():
        for i in range(10):
            yield i
            await trio.sleep(0.1)

    seen: list = []

    async def save(batch) -> None:
        seen.extend(batch)

    with trio.fail_after(60):
        await (
            tf.from_aiter(gen()) | (lambda x: slow(x)) | tf.batch(100, 0.5) | tf.sink(save)
        ).run()
    assert all(isinstance(v, int) for v in seen), seen
    assert sorted(seen) == [i * 10 for i in range(10)]


async def test_sync_sink_item_acked_only_after_its_coroutine_ran(autojump_clock):
    """The acker steals the Pending results (unawaited coroutines) and acks their items before
    the coroutines ran (API.md: acked after the message's last stage finished)."""
    ran: list[int] = []
    early: list[int] = []

    class Ack:
        async def ack(self, ok, failed):
            early.extend(m.data for m in ok if m.data not in ran)

    async def save(x: int) -> None:
        await trio.sleep(1)
        ran.append(x)

    async def gen():
        yield tf.Message(-1, acknowledger=Ack())  # first chunk: one item
        await trio.sleep(5)
        for i in range(5):
            yield tf.Message(i, acknowledger=Ack())

    def fail_first(x):
        if x == 0:
            raise ValueError("no")  # a failure settles item 0 at once and wakes the acker
        return save(x)

    with trio.fail_after(60):
        await (tf.from_aiter(gen()) | tf.sink(fail_first)).run()
    assert early == [], f"acked before their call ran: {early}"


# -- from review: test_r2_source_group


async def test_source_error_in_a_nursery_stops_the_run(autojump_clock):
    async def gen():
        yield 1
        async with trio.open_nursery() as n:

            async def broken():
                await trio.sleep(0.1)
                raise ConnectionError("broker went away")

            n.start_soon(broken)
            await trio.sleep(10)
        yield 2

    got = []
    with trio.fail_after(60):
        with pytest.raises(tf.PipelineError) as info:
            await (tf.from_aiter(gen()) | tf.sink(got.append)).run()
    assert isinstance(info.value.__cause__, ConnectionError)


async def test_stage_bug_in_group_from_plain_source(autojump_clock):
    async def agen():
        async with trio.open_nursery():
            raise RuntimeError("source bug")
        yield 1  # pragma: no cover

    with trio.fail_after(60):
        with pytest.raises(tf.PipelineError):
            await (tf.from_aiter(agen()) | tf.sink(lambda x: None)).run()


# -- from review: test_r3_watch_heuristic


class ClockedAck:
    def __init__(self):
        self.at: dict[Any, float] = {}
        self.t0 = trio.current_time()

    async def ack(self, ok, failed):
        for m in [*ok, *failed]:
            assert m.data not in self.at
            self.at[m.data] = trio.current_time() - self.t0


async def test_cache_hit_acked_before_a_slow_miss_in_the_same_chunk(autojump_clock):
    acker = ClockedAck()

    async def gen():
        yield tf.Message(0, acknowledger=acker)  # chunk 1: a cache hit (no await)
        await trio.sleep(1)
        yield tf.Message(1, acknowledger=acker)  # chunk 2: a hit ...
        yield tf.Message(2, acknowledger=acker)  # ... and a miss (100 s)

    async def lookup(x: int) -> int:
        if x == 2:
            await trio.sleep(100)
        return x

    with trio.fail_after(1000):
        await (tf.from_aiter(gen()) | tf.sink(lookup)).run()
    assert acker.at[1] <= 2, acker.at  # hit: acked ~t=1, not at t=101


async def test_process_result_handed_on_before_slow_call(autojump_clock):
    t0 = trio.current_time()
    arrived: dict[int, float] = {}

    async def gen():
        yield 0
        await trio.sleep(1)
        yield 1
        yield 2

    async def lookup(x: int) -> int:
        if x == 2:
            await trio.sleep(100)
        return x

    async def save(x):
        arrived[x] = trio.current_time() - t0

    with trio.fail_after(1000):
        await (tf.from_aiter(gen()) | tf.process(lookup) | tf.sink(save)).run()
    assert arrived[1] <= 2, arrived


# -- from review: test_r4_partition_n1_order


async def test_n1_partition_by_keeps_input_order(autojump_clock):
    async def work(x):
        await trio.lowlevel.checkpoint()
        return x

    with trio.fail_after(60):
        out = await tf.collect(
            tf.from_iterable([1, 3, 2]) | tf.process(work, partition_by=lambda x: x % 2)
        )
    assert out == [1, 3, 2]


async def test_n1_partition_by_sync_keeps_input_order(autojump_clock):
    with trio.fail_after(60):
        out = await tf.collect(
            tf.from_iterable([1, 3, 2, 4, 5])
            | tf.process(lambda x: x, partition_by=lambda x: x % 2)
        )
    assert out == [1, 3, 2, 4, 5]


# -- from review: a @types.coroutine result is awaited too


@types.coroutine
def legacy(x):
    yield from trio.lowlevel.checkpoint().__await__()  # noqa
    return x * 2


@pytest.mark.parametrize(
    "stage",
    [
        tf.process(lambda x: legacy(x)),
        tf.process(lambda x: legacy(x), n=2, ordered=True),
        tf.process(lambda x: legacy(x), n=2, partition_by=lambda x: x),
    ],
    ids=["n1", "pool", "partition"],
)
async def test_generator_based_coroutine_result_is_awaited(autojump_clock, stage):
    with trio.fail_after(60):
        out = await tf.collect(tf.from_iterable([1, 2, 3]) | stage)
    assert sorted(out) == [2, 4, 6], out
