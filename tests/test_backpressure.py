"""Back-pressure: with a slow sink and an endless source, pulled-but-unacked stays bounded.

The bound is ``compile_pipeline(p, ack_buffer=...).in_flight_bound()`` (documented in
docs/back-pressure): the tests check it holds for the implementation, and that it is not loose
by orders of magnitude.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio

import trioflow as tf
import trioflow._runner as runner
from trioflow._topology import compile_pipeline
from trioflow.abc import Outlet, Source
from trioflow.testing import TestSource

ACK_BUFFER = 64


@pytest.fixture(autouse=True)
def small_ack_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "ACK_BUFFER", ACK_BUFFER)


async def slow(x: Any) -> None:
    await trio.sleep(1)


async def measure(
    src: Any, pipeline: tf.Pipeline, seconds: float
) -> tuple[list[int], tf.RunReport]:
    """Sample pulled-but-unacked every 0.1 s for ``seconds``, then drain."""
    samples: list[int] = []
    stop = trio.Event()
    reports: list[tf.RunReport] = []

    async def run() -> None:
        reports.append(await pipeline.run(stop=stop, drain_timeout=10_000))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        for _ in range(int(seconds * 10)):
            await trio.sleep(0.1)
            samples.append(src.pulled - src.settled)
        stop.set()
    return samples, reports[0]


def bound(p: tf.Pipeline) -> int:
    b = compile_pipeline(p, ack_buffer=ACK_BUFFER).in_flight_bound()
    assert b is not None
    return b


PIPELINES = {
    "sink": lambda: tf.sink(slow, buffer=10),
    "process_n": lambda: tf.process(lambda x: x, buffer=16) | tf.sink(slow, n=4, buffer=8),
    "batch": lambda: tf.batch(10, buffer=20) | tf.sink(slow, buffer=5),
    "route": lambda: tf.route(
        lambda x: x % 2, {0: tf.sink(slow, buffer=5), 1: tf.sink(slow, buffer=5)}, buffer=30
    ),
    "partition": lambda: tf.process(slow, n=3, partition_by=lambda x: x % 7, buffer=9),
    "filter_rate": lambda: tf.filter(lambda x: x % 2, buffer=8) | tf.rate_limit(5, buffer=8),
}


@pytest.mark.parametrize("shape", sorted(PIPELINES))
async def test_in_flight_bounded_and_not_growing(
    shape: str, autojump_clock: trio.testing.MockClock
) -> None:
    src = TestSource(itertools.count())
    p = src | PIPELINES[shape]()
    samples, report = await measure(src, p, seconds=60)
    limit = bound(p)
    assert max(samples) <= limit
    # steady: the second half holds no more than the first
    assert max(samples[300:]) <= max(samples[:300])
    assert src.pulled > 50  # it did run
    assert report.unsettled == 0
    assert report.received == src.pulled == src.settled


class SlowAckSource(Source[int]):
    """An endless source whose acknowledger takes a second per call."""

    def __init__(self) -> None:
        self.pulled = 0
        self.settled = 0

    async def ack(self, successful: list[Any], failed: list[Any]) -> None:
        await trio.sleep(1)
        self.settled += len(successful) + len(failed)

    async def produce(self, out: Outlet) -> None:
        while True:
            room = await out.demand()
            chunk = [
                tf.Message(i, acknowledger=self) for i in range(self.pulled, self.pulled + room)
            ]
            self.pulled += room
            await out.send_many(chunk)


@pytest.mark.parametrize("with_handler", [False, True])
async def test_bound_counts_messages_waiting_for_a_slow_acknowledger(
    with_handler: bool, autojump_clock: trio.testing.MockClock
) -> None:
    src = SlowAckSource()

    def half_fail(x: int) -> None:
        if x % 2:
            raise ValueError

    p = src | tf.sink(half_fail, buffer=8)
    if with_handler:

        async def handler(msgs: list[Any]) -> None:
            await trio.sleep(0.5)

        p = p.on_failure(handler)
    samples, _ = await measure(src, p, seconds=30)
    limit = bound(p)
    assert max(samples) <= limit
    assert max(samples) > ACK_BUFFER  # the settled-but-unacked part is really exercised


def test_bound_formula_values() -> None:
    src = tf.from_iterable([1])
    k = ACK_BUFFER
    # source (one entry buffer) + process: buffer + max(buffer, n) + 2 * ack_buffer
    assert bound(src | tf.process(print, n=4, buffer=10)) == 10 + (10 + 10) + 2 * k
    assert bound(src | tf.process(print, n=40, buffer=10)) == 10 + (10 + 40) + 2 * k
    # batch: its buffer, a chunk and the open batch; after it items weigh `size`
    assert bound(src | tf.batch(5, buffer=20) | tf.sink(print, buffer=3)) == (
        20 + (2 * 20 + 5 - 1) + (3 + 3) * 5 + 2 * k
    )
    # route: dispatcher buffer and chunk, then each branch up to the join, then the rest once
    assert (
        bound(
            src
            | tf.route(len, {1: tf.process(print, buffer=4), 2: tf.sink(print, buffer=6)}, buffer=2)
            | tf.process(print, buffer=3)
        )
        == 2 + 2 * 2 + (4 + 4) + (6 + 6) + (3 + 3) + 2 * k
    )
    # two sources may each hold a chunk; a failure handler doubles the settled part
    assert bound((tf.merge([1], [2]) | tf.sink(print, buffer=5)).on_failure(print)) == (
        2 * 5 + 10 + 4 * k
    )
    assert compile_pipeline(src | tf.flat_map(list), ack_buffer=k).in_flight_bound() is None
    assert compile_pipeline(src | tf.batch(2, key=len), ack_buffer=k).in_flight_bound() is None


async def test_source_pulls_only_what_the_pipeline_can_take() -> None:
    src = TestSource(itertools.count())
    gate = trio.Event()

    async def blocked(x: int) -> None:
        await gate.wait()

    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        nursery.start_soon(lambda: (src | tf.sink(blocked, buffer=5)).run(stop=stop))
        await trio.testing.wait_all_tasks_blocked()
        # the input buffer (5) and the worker's chunk (5); nothing more is pulled
        assert src.pulled == 10
        stop.set()
        gate.set()
    assert src.settled == src.pulled == 10
