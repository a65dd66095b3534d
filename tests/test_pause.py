"""``handle.pause()`` / ``resume()``: sources stop pulling, what is in flight finishes."""

from __future__ import annotations

from typing import Any

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
