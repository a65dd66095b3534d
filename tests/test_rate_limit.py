"""``rate_limit``: at most ``count`` items in any window of ``per`` seconds (virtual time)."""

from __future__ import annotations

import trio

import trioflow as tf


async def test_at_most_count_per_window(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []
    t0 = trio.current_time()
    await (
        tf.from_iterable(range(10))
        | tf.rate_limit(3, per=2.0)
        | tf.sink(lambda x: times.append(trio.current_time() - t0))
    ).run()
    assert times == [0.0] * 3 + [2.0] * 3 + [4.0] * 3 + [6.0]


async def test_sliding_window_with_spaced_arrivals(autojump_clock: trio.testing.MockClock) -> None:
    send, receive = trio.open_memory_channel[int](10)
    times: list[float] = []
    t0 = trio.current_time()

    async def feed() -> None:
        async with send:
            for at in [0.0, 0.5, 0.9, 1.2, 1.3]:
                await trio.sleep_until(t0 + at)
                await send.send(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        await (
            tf.from_channel(receive)
            | tf.rate_limit(2, per=1.0)
            | tf.sink(lambda x: times.append(round(trio.current_time() - t0, 9)))
        ).run()
    # releases at 0.0, 0.5; the third waits for 0.0 + 1 = 1.0; the fourth for 0.5 + 1 = 1.5;
    # the fifth for 1.0 + 1 = 2.0
    assert times == [0.0, 0.5, 1.0, 1.5, 2.0]
    for i in range(len(times)):
        assert sum(1 for t in times if times[i] <= t < times[i] + 1.0) <= 2


async def test_rate_limit_default_per_is_one_second(autojump_clock: trio.testing.MockClock) -> None:
    t0 = trio.current_time()
    await (tf.from_iterable(range(5)) | tf.rate_limit(1)).run()
    assert trio.current_time() - t0 == 4.0


async def test_a_period_that_floats_inexactly_does_not_spin(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # (0.6 + 0.3) - 0.3 < 0.6 in floating point: the window must be tested as it is slept on
    with trio.fail_after(10):
        out = await tf.collect(tf.from_iterable(range(5)) | tf.rate_limit(1, per=0.3))
    assert out == [0, 1, 2, 3, 4]


async def test_a_stall_downstream_is_not_followed_by_a_burst(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered: list[float] = []

    async def work(x: int) -> int:
        entered.append(trio.current_time())
        if x == 0:
            await trio.sleep(10)  # the stage behind the limiter stalls
        return x

    t0 = trio.current_time()
    await (tf.from_iterable(range(12)) | tf.rate_limit(2, per=1.0) | tf.process(work, buffer=2)
           | tf.sink(lambda x: None)).run()  # fmt: skip
    times = [round(t - t0, 9) for t in entered]
    # releases are stamped when they get through, so no window of 1 s after the stall sees
    # more than the 2 that the limiter allows plus what the stage's buffer held during it
    for t in times:
        assert sum(1 for u in times if t <= u < t + 1.0) <= 2 + 2 + 1
