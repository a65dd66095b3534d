"""Shutdown: graceful drain with ``stop``, drain deadline, hard cancel, and ``serve``."""

from __future__ import annotations

import itertools

import pytest
import trio

import trioflow as tf
from trioflow.testing import TestSource, record


async def test_graceful_drain_finishes_in_flight_and_stops_pulling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    src = TestSource(itertools.count())
    stop = trio.Event()

    async def slow(x: int) -> int:
        await trio.sleep(1)
        return x

    batches: list[list[int]] = []

    async def stopper() -> None:
        await trio.sleep(10.5)
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stopper)
        report = await (
            src | tf.process(slow, n=4, buffer=8) | tf.batch(100, 60.0) | tf.sink(batches.append)
        ).run(stop=stop)
    pulled = src.pulled
    assert pulled == report.received
    # everything pulled finished: acked, with the partial batch flushed
    assert sorted(src.acked) == list(range(pulled))
    assert sorted(x for b in batches for x in b) == list(range(pulled))
    assert (report.acked, report.failed, report.unsettled) == (pulled, 0, 0)
    # 4 workers, 1 s per item: 44 items done by 10.5 s, plus what was buffered or in hand
    assert 44 < pulled <= 44 + 8 + 8 + 4


async def test_drain_past_deadline_leaves_unsettled(autojump_clock: trio.testing.MockClock) -> None:
    src = TestSource(range(100))
    stop = trio.Event()
    finished: list[int] = []

    async def slow(x: int) -> None:
        await trio.sleep(10)
        finished.append(x)

    async def stopper() -> None:
        await trio.sleep(25)
        stop.set()

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stopper)
        report = await (src | tf.sink(slow, n=2, buffer=4)).run(stop=stop, drain_timeout=12)
    assert trio.current_time() - t0 == 25 + 12
    # two workers take chunks of at most two: six calls end by 30 s, the deadline cuts the run
    # at 37 s, before the calls started at 30 s end
    assert len(finished) == 6
    # a chunk settles when its last call returns: nothing unfinished was acked
    assert set(src.acked) <= set(finished)
    assert len(src.acked) >= 4
    assert src.failed == []
    assert report.unsettled == report.received - len(src.acked)
    assert report.unsettled > 0
    assert report.received == report.acked + report.failed + report.unsettled


async def test_hard_cancel_acks_nothing_unfinished(autojump_clock: trio.testing.MockClock) -> None:
    src = TestSource(range(100))
    finished: list[int] = []

    async def slow(x: int) -> None:
        await trio.sleep(1)
        finished.append(x)

    with trio.move_on_after(5.5):
        await (src | tf.sink(slow, buffer=4)).run()
    assert finished == [0, 1, 2, 3, 4]
    assert set(src.acked) <= set(finished)
    assert src.failed == []


async def test_serve_with_handle(autojump_clock: trio.testing.MockClock) -> None:
    src = TestSource(itertools.count())

    async def slow(x: int) -> None:
        await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        handle = await nursery.start((src | tf.sink(slow, buffer=2)).serve)
        assert isinstance(handle, tf.PipelineHandle)
        await trio.sleep(5.5)
        metrics = handle.metrics
        assert isinstance(metrics, tf.RunReport)
        assert metrics.acked == 5  # each acked as its call finished, at 1, 2, 3, 4, 5 s
        assert handle.report is None
        assert handle.stop() is None  # returns at once
        handle.stop()  # idempotent
        report = await handle.wait()
    assert handle.report is report
    assert report.unsettled == 0
    assert report.acked == report.received == src.pulled


async def test_stop_already_set_runs_nothing_more() -> None:
    stop = trio.Event()
    stop.set()
    src = TestSource(itertools.count())
    report = await (src | tf.sink(lambda x: None)).run(stop=stop)
    assert report.received == src.pulled == src.settled
    assert report.unsettled == 0


def test_drain_timeout_validated() -> None:
    async def main() -> None:
        await (tf.from_iterable([1]) | tf.sink(print)).run(drain_timeout=-1)

    with pytest.raises(ValueError, match=r"^drain_timeout=-1 must be a non-negative number$"):
        trio.run(main)


async def test_handle_wait_raises_the_crash() -> None:
    async def boom(x: int) -> None:
        raise tf.Fatal("stop")

    waited: list[BaseException] = []
    with pytest.RaisesGroup(tf.PipelineError):  # the serve task itself fails the nursery
        async with trio.open_nursery() as nursery:
            handle = await nursery.start((tf.from_iterable(range(3)) | tf.sink(boom)).serve)
            try:
                await handle.wait()
            except tf.PipelineError as exc:
                waited.append(exc)
    assert len(waited) == 1
    assert (
        str(waited[0])
        == "stage 'test_handle_wait_raises_the_crash.boom' stopped the pipeline: Fatal('stop')"
    )


async def test_an_item_in_the_sources_hands_when_the_drain_starts_is_not_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The source got an item from its system just as the drain stopped it: it still goes in."""
    for _ in range(50):
        send, receive = trio.open_memory_channel[str](10)
        stop = trio.Event()
        src = record(tf.from_channel(receive))
        seen: list[str] = []

        async def feed(send: trio.MemorySendChannel[str], stop: trio.Event) -> None:
            await trio.sleep(1)  # the source is parked in receive()
            send.send_nowait("precious")  # handed straight to it...
            stop.set()  # ...and the drain starts before it runs again

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed, send, stop)
            report = await (src | tf.sink(seen.append)).run(stop=stop)
        assert src.unsettled() == []
        assert seen == ["precious"]
        assert report.received == report.acked == 1


async def test_the_drain_deadline_covers_the_last_acks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Hangs:
        async def ack(self, ok: list[tf.Message[int]], failed: list[tf.Message[int]]) -> None:
            await trio.sleep_forever()  # a broker that went away

    hangs = Hangs()
    stop = trio.Event()
    source = tf.from_iterable([tf.Message(i, acknowledger=hangs) for i in range(3)])
    t0 = trio.current_time()
    report = await (source | tf.sink(lambda x: stop.set())).run(stop=stop, drain_timeout=5)
    assert trio.current_time() - t0 == 5  # cut off at the deadline, not waited on forever
    assert report.received == 3
    assert report.unsettled == 3
