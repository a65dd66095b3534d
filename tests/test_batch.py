"""``batch``: size, exact timeout after the first item, keys with their own timers, flushes."""

from __future__ import annotations

import trio

import trioflow as tf
from trioflow.testing import TestSource


async def test_batches_by_size_and_flushes_partial_at_end() -> None:
    out = await tf.collect(tf.from_iterable(range(10)) | tf.batch(4))
    assert out == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_partial_batch_leaves_exactly_timeout_after_first_item(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[int](10)
    emitted: list[tuple[float, list[int]]] = []
    t0 = trio.current_time()

    def save(items: list[int]) -> None:
        emitted.append((trio.current_time() - t0, items))

    async def feed() -> None:
        async with send:
            await trio.sleep(1.0)
            await send.send(1)  # opens a batch at t=1.0: it leaves at t=3.0
            await trio.sleep(0.7)
            await send.send(2)
            await trio.sleep(5.0)  # t=6.7
            await send.send(3)  # a new batch...
            await send.send(4)
            await send.send(5)  # ...full at once: leaves at t=6.7
            await trio.sleep(1.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        await (tf.from_channel(receive) | tf.batch(3, 2.0) | tf.sink(save)).run()
    assert emitted == [(3.0, [1, 2]), (6.7, [3, 4, 5])]


async def test_timer_starts_at_first_item_of_each_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[int](10)
    emitted: list[tuple[float, list[int]]] = []
    t0 = trio.current_time()

    async def feed() -> None:
        async with send:
            for at, item in [(0.5, 1), (2.0, 2), (2.9, 3), (3.2, 4), (10.0, 5)]:
                await trio.sleep_until(t0 + at)
                await send.send(item)

    def save(items: list[int]) -> None:
        emitted.append((round(trio.current_time() - t0, 9), items))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        await (tf.from_channel(receive) | tf.batch(10, 1.5) | tf.sink(save)).run()
    # [1] opened at 0.5 leaves at 2.0; 2 opens the next at 2.0 (3 and 4 join it) -> 3.5;
    # [5] opened at 10.0 is flushed at the end of input
    assert emitted == [(2.0, [1]), (3.5, [2, 3, 4]), (10.0, [5])]


async def test_keyed_batches_never_mix_keys_and_have_own_timers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[str](10)
    emitted: list[tuple[float, list[str]]] = []
    t0 = trio.current_time()

    async def feed() -> None:
        async with send:
            for at, item in [(0.0, "a1"), (0.5, "b1"), (0.6, "a2"), (1.2, "b2"), (1.3, "a3")]:
                await trio.sleep_until(t0 + at)
                await send.send(item)
            await trio.sleep_until(t0 + 5.0)

    def save(items: list[str]) -> None:
        emitted.append((round(trio.current_time() - t0, 9), items))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        await (
            tf.from_channel(receive) | tf.batch(3, 1.0, key=lambda s: s[0]) | tf.sink(save)
        ).run()
    assert emitted == [(1.0, ["a1", "a2"]), (1.5, ["b1", "b2"]), (2.3, ["a3"])]


async def test_keyed_batch_size_and_flush_per_key() -> None:
    out = await tf.collect(tf.from_iterable(range(20)) | tf.batch(3, key=lambda x: x % 4))
    assert all(len({x % 4 for x in b}) == 1 for b in out)
    assert all(1 <= len(b) <= 3 for b in out)
    assert sorted(x for b in out for x in b) == list(range(20))
    assert [b for b in out if b[0] % 4 == 1] == [[1, 5, 9], [13, 17]]


async def test_batch_settles_all_its_messages_with_the_sink() -> None:
    src = TestSource(range(7))
    report = await (src | tf.batch(3) | tf.sink(lambda b: None)).run()
    assert sorted(src.acked) == list(range(7))
    assert (report.received, report.acked) == (7, 7)


async def test_partial_batches_flush_on_drain(autojump_clock: trio.testing.MockClock) -> None:
    send, receive = trio.open_memory_channel[int](10)
    stop = trio.Event()
    emitted: list[tuple[float, list[int]]] = []
    src_acked: list[int] = []

    def save(items: list[int]) -> None:
        emitted.append((trio.current_time(), items))
        src_acked.extend(items)

    t0 = trio.current_time()
    async with send:
        for i in range(5):
            await send.send(i)
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                report = await (
                    tf.from_channel(receive)
                    | tf.batch(100, 60.0, key=lambda x: x % 2)
                    | tf.sink(save)
                ).run(stop=stop)
                assert (report.received, report.acked, report.unsettled) == (5, 5, 0)

            nursery.start_soon(run)
            await trio.sleep(10)
            assert emitted == []
            stop.set()
    assert sorted(sorted(b) for _, b in emitted) == [[0, 2, 4], [1, 3]]
    assert {t - t0 for t, _ in emitted} == {10.0}
