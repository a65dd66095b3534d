"""``handle.pause()`` / ``resume()``: sources stop pulling, what is in flight finishes."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import TestSource


async def test_pause_stops_pulling_and_resume_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    src = TestSource(range(10_000))
    done: list[int] = []

    async def slow(x: int) -> int:
        await trio.sleep(0.01)
        return x

    pipeline = src | tf.process(slow, n=4, buffer=8) | tf.sink(done.append)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        await trio.sleep(1.0)
        handle.pause()
        assert handle.paused
        await trio.sleep(5.0)  # what was in flight finishes
        pulled, settled = src.pulled, src.settled
        assert pulled == settled  # nothing in flight any more
        await trio.sleep(10.0)
        assert (src.pulled, src.settled) == (pulled, settled)  # and nothing new pulled
        handle.resume()
        assert not handle.paused
        await trio.sleep(1.0)
        assert src.pulled > pulled
        handle.pause()
        handle.stop()  # a drain while paused ends
    assert src.unsettled() == []
    assert handle.report is not None
    assert handle.report.acked == src.pulled


async def test_a_source_that_never_asks_for_demand_pauses_at_its_next_item(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pulled: list[int] = []

    async def numbers() -> Any:
        for i in range(1000):
            pulled.append(i)
            yield i
            await trio.sleep(0.01)

    got: list[int] = []
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_aiter(numbers()) | tf.sink(got.append)).serve)
        await trio.sleep(1.0)
        handle.pause()
        await trio.sleep(0.5)
        count = len(pulled)
        await trio.sleep(10.0)
        assert len(pulled) == count  # the generator is not advanced
        handle.resume()
    assert sorted(got) == list(range(1000))


async def test_set_rate_changes_a_running_rate_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []

    async def save(x: int) -> None:
        times.append(trio.current_time())

    limit = tf.rate_limit(10, per=1.0, name="limit")
    pipeline = tf.from_iterable(range(300)) | limit | tf.sink(save)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        await trio.sleep(5.0)
        handle.set_rate("limit", 100, per=1.0)
        await trio.sleep(1.0)
        handle.set_rate("limit", 1, per=0.5)  # slower again: a waiting release re-checks
    first = [t for t in times if t - start < 5.0]
    assert 45 <= len(first) <= 60  # 10 per second
    fast = [t for t in times if 5.0 <= t - start < 6.0]
    assert 90 <= len(fast) <= 110  # 100 per second
    slow = [t for t in times if t - start >= 7.0]
    assert slow  # then 1 per 0.5 s: 2 per second
    assert 1.8 <= len(slow) / (slow[-1] - slow[0] + 0.5) <= 2.2


async def test_set_rate_names_what_is_wrong() -> None:
    work = tf.process(lambda x: x, name="work")
    pipeline = tf.from_iterable([1]) | work | tf.sink(lambda x: None)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        with pytest.raises(KeyError, match="no stage named 'nope'"):
            handle.set_rate("nope", 5)
        with pytest.raises(TypeError, match="is not a rate_limit stage"):
            handle.set_rate("work", 5)
        with pytest.raises(ValueError, match="count=0 must be a positive integer"):
            handle.set_rate("x", 0)
