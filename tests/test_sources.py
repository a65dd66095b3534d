"""Built-in sources: iterables (endless too), async iterables, channels, merge, messages."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
import trio.lowlevel

import trioflow as tf
from trioflow.abc import Outlet, Source
from trioflow.testing import TestSource


class Recorder:
    """An acknowledger that records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], list[tuple[Any, Any]]]] = []

    async def ack(self, successful: list[tf.Message[Any]], failed: list[tf.Message[Any]]) -> None:
        self.calls.append(([m.data for m in successful], [(m.data, m.reason) for m in failed]))

    @property
    def acked(self) -> list[Any]:
        return [d for ok, _ in self.calls for d in ok]

    @property
    def failed(self) -> list[tuple[Any, Any]]:
        return [f for _, bad in self.calls for f in bad]


async def test_from_iterable() -> None:
    assert await tf.collect(tf.from_iterable(range(5))) == [0, 1, 2, 3, 4]


async def test_from_iterable_is_iterated_anew_each_run() -> None:
    p = tf.from_iterable([1, 2])
    assert await tf.collect(p) == [1, 2]
    assert await tf.collect(p) == [1, 2]


async def test_from_iterable_endless_iterator_stops_on_drain() -> None:
    stop = trio.Event()
    seen: list[int] = []

    def save(x: int) -> None:
        seen.append(x)
        if x == 99:
            stop.set()

    report = await (tf.from_iterable(itertools.count()) | tf.sink(save)).run(stop=stop)
    assert seen[:100] == list(range(100))
    assert seen == list(range(len(seen)))
    assert report.received == len(seen)
    assert (report.acked, report.unsettled) == (len(seen), 0)


def test_from_iterable_refuses_non_iterable() -> None:
    with pytest.raises(TypeError, match=r"^from_iterable: 5 is not iterable$"):
        tf.from_iterable(5)  # type: ignore[arg-type]


async def test_from_aiter() -> None:
    async def gen():  # type: ignore[no-untyped-def]
        for i in range(4):
            await trio.lowlevel.checkpoint()
            yield i

    assert await tf.collect(tf.from_aiter(gen()) | tf.process(lambda x: -x)) == [0, -1, -2, -3]


def test_from_aiter_refuses_sync_iterable() -> None:
    with pytest.raises(TypeError, match=r"^from_aiter: \[1\] is not an async iterable$"):
        tf.from_aiter([1])  # type: ignore[arg-type]


async def test_async_generator_closed_when_drained() -> None:
    closed = trio.Event()
    stop = trio.Event()

    async def endless():  # type: ignore[no-untyped-def]
        try:
            for i in itertools.count():
                yield i
                if i == 10:
                    stop.set()
        finally:
            closed.set()

    report = await (endless | tf.sink(lambda x: None)).run(stop=stop)
    assert closed.is_set()
    assert report.received == report.acked >= 11
    assert report.unsettled == 0


async def test_from_channel_reads_until_end_of_channel() -> None:
    send, receive = trio.open_memory_channel[int](100)
    out: list[int] = []
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            await (tf.from_channel(receive) | tf.sink(out.append)).run()

        nursery.start_soon(run)
        async with send:
            for i in range(50):
                await send.send(i)
                if i % 7 == 0:
                    await trio.testing.wait_all_tasks_blocked()
    assert out == list(range(50))


def test_from_channel_refuses_other_objects() -> None:
    with pytest.raises(TypeError, match=r"^from_channel: \[\] is not a trio.abc.ReceiveChannel$"):
        tf.from_channel([])  # type: ignore[arg-type]


async def test_merge_fans_in_every_source() -> None:
    async def letters():  # type: ignore[no-untyped-def]
        for c in "abc":
            yield c

    a = TestSource(range(100))
    p = tf.merge(a, [1000, 1001], letters) | tf.process(lambda x: x)
    out = await tf.collect(p)
    assert sorted(map(str, out)) == sorted(map(str, [*range(100), 1000, 1001, "a", "b", "c"]))
    assert sorted(a.acked) == list(range(100))
    assert repr(tf.merge(tf.from_iterable([1]), tf.from_iterable([2]))) == (
        "merge(from_iterable([1]), from_iterable([2]))"
    )


def test_merge_needs_a_source() -> None:
    with pytest.raises(TypeError, match=r"^merge\(\) needs at least one source$"):
        tf.merge()
    with pytest.raises(TypeError, match=r"^merge argument 1: 3 cannot be a source"):
        tf.merge([1], 3)


async def test_merge_of_endless_sources_stops_on_drain() -> None:
    a, b = TestSource(itertools.repeat("a")), TestSource(itertools.repeat("b"))
    stop = trio.Event()
    seen: list[str] = []

    def save(x: str) -> None:
        seen.append(x)
        if "a" in seen and "b" in seen and len(seen) > 1000:
            stop.set()

    report = await (tf.merge(a, b) | tf.sink(save)).run(stop=stop)
    assert report.received == a.pulled + b.pulled == len(seen)
    assert a.settled == a.pulled
    assert b.settled == b.pulled
    assert report.unsettled == 0


async def test_source_messages_carry_their_own_acknowledger_and_metadata() -> None:
    rec = Recorder()
    metas: list[dict[str, Any]] = []

    async def see(msg: tf.Message[int]) -> tf.Message[int]:
        metas.append(msg.metadata)
        if msg.data == 2:
            return msg.fail("two")
        return msg.replace(msg.data * 10)

    msgs = [tf.Message(i, metadata={"id": f"{i}-0"}, acknowledger=rec) for i in range(4)]
    out = await tf.collect(tf.from_iterable(msgs) | tf.process(see, messages=True))
    assert out == [0, 10, 30]
    assert metas == [{"id": f"{i}-0"} for i in range(4)]
    # the acknowledger sees the source messages with their original data
    assert rec.acked == [0, 1, 3]
    assert rec.failed == [(2, "two")]


async def test_plain_data_and_messages_mixed_in_one_source() -> None:
    rec = Recorder()
    items: list[Any] = [1, tf.Message(2, acknowledger=rec), 3]
    report = await (tf.from_iterable(items) | tf.sink(lambda x: None)).run()
    assert rec.acked == [2]
    assert (report.received, report.acked) == (3, 3)


async def test_custom_source_subclass() -> None:
    class Down(Source[int]):
        async def produce(self, out: Outlet) -> None:
            assert await out.demand() >= 1
            for i in range(3, 0, -1):
                await out.send(i)
            await out.send_many([0, -1])

    assert await tf.collect(Down() | tf.process(lambda x: x)) == [3, 2, 1, 0, -1]


async def test_sources_are_cancelled_by_drain_not_left_running() -> None:
    send, receive = trio.open_memory_channel[int](10)
    stop = trio.Event()
    async with send:
        await send.send(1)

        async def save(x: int) -> None:
            stop.set()

        report = await (tf.from_channel(receive) | tf.sink(save)).run(stop=stop)
    assert (report.received, report.acked) == (1, 1)
