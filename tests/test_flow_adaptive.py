"""``n=tf.Adaptive(...)``: the limit finds a downstream's hidden capacity, under MockClock.

The simulated downstream answers in ``BASE`` seconds while at most ``C`` calls are in flight and
in ``BASE * k / C`` with ``k > C`` in flight (a server with ``C`` slots and a queue): its
throughput is at most ``C / BASE`` whatever the concurrency, and latency grows beyond ``C``.
The stage is not told ``C``.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._operators._limit import GradientLimit

BASE = 0.05


class Downstream:
    """A service with ``capacity`` parallel slots and a queue behind them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self.peak = 0
        self.t0 = trio.current_time()
        #: (time the call ended since t0, its latency)
        self.calls: list[tuple[float, float]] = []

    async def __call__(self, item: Any) -> Any:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        latency = BASE * max(1.0, self.in_flight / self.capacity)
        try:
            await trio.sleep(latency)
        finally:
            self.in_flight -= 1
        self.calls.append((trio.current_time() - self.t0, latency))
        return item

    def window(self, start: float, end: float) -> tuple[float, float]:
        """Throughput (calls/s) and p95 latency of the calls that ended in [start, end)."""
        lat = sorted(latency for t, latency in self.calls if start <= t < end)
        assert len(lat) > 100, "too few calls in the window to measure"
        return len(lat) / (end - start), lat[int(0.95 * (len(lat) - 1))]


async def simulate(
    n: int | tf.Adaptive,
    capacity: int,
    seconds: float,
    *,
    halve_at: float | None = None,
) -> tuple[Downstream, list[tuple[float, int]], tf.RunReport]:
    """Run ``process(downstream, n=n)`` for ``seconds``; the limit sampled every 0.5 s."""
    down = Downstream(capacity)
    pipeline = (
        tf.from_iterable(itertools.count())
        | tf.process(down, n=n, name="call")
        | tf.sink(lambda x: None)
    )
    limits: list[tuple[float, int]] = []
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        start = trio.current_time()
        while trio.current_time() - start < seconds:
            await trio.sleep(0.5)
            now = trio.current_time() - start
            if halve_at is not None and now >= halve_at and down.capacity == capacity:
                down.capacity = capacity // 2
            (stage,) = [s for s in handle.snapshot()["stages"] if s["name"] == "call"]
            limits.append((now, stage["workers"]))
        handle.stop()
        report = await handle.wait()
    return down, limits, report


async def test_adaptive_reaches_the_best_fixed_throughput_at_low_latency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    capacity = 16
    best = 0.0
    for n in (4, 8, 16, 32, 64):
        fixed, _, _ = await simulate(n, capacity, 12.0)
        best = max(best, fixed.window(2.0, 12.0)[0])
    assert best == pytest.approx(capacity / BASE, rel=0.02)  # the simulation's own ceiling

    down, limits, report = await simulate(tf.Adaptive(min=1, max=64), capacity, 30.0)
    throughput, p95 = down.window(10.0, 30.0)
    assert throughput >= 0.9 * best
    assert p95 <= 2 * BASE
    assert all(1 <= limit <= 64 for _, limit in limits)
    assert report.stages["call"].workers == limits[-1][1]
    # a fixed n of 64 has the throughput too, but at four times the latency
    fixed64, _, _ = await simulate(64, capacity, 12.0)
    assert fixed64.window(2.0, 12.0)[1] >= 3.5 * BASE


async def test_adaptive_settles_near_a_halved_capacity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    down, limits, _report = await simulate(tf.Adaptive(min=1, max=64), 16, 60.0, halve_at=20.0)
    before = [limit for t, limit in limits if 15.0 <= t < 20.0]
    settled = [limit for t, limit in limits if 45.0 <= t <= 50.0 + 10.0]
    assert min(before) >= 16  # at full capacity it ran at least C calls
    assert max(settled) <= 1.5 * 8
    assert min(settled) >= 0.9 * 8
    throughput, p95 = down.window(30.0, 50.0)
    assert throughput >= 0.9 * 8 / BASE
    assert p95 <= 2 * BASE


async def test_adaptive_stays_within_min_and_max(autojump_clock: trio.testing.MockClock) -> None:
    # a downstream that never slows down: the limit climbs to max and stays there
    down, limits, _ = await simulate(tf.Adaptive(min=2, max=10), 1000, 20.0)
    assert max(limit for _, limit in limits) == 10
    assert down.peak <= 10
    # one that is saturated by a single call: the limit stays near min, never below (min
    # calls at once is what it measures the no-load latency with: 3 x BASE here)
    down, limits, _ = await simulate(tf.Adaptive(min=3, max=40), 1, 20.0)
    assert min(limit for _, limit in limits) >= 3
    assert max(limit for t, limit in limits if t > 10.0) <= 5
    assert down.peak <= 40


async def test_adaptive_starts_at_initial_after_measuring(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _, limits, _ = await simulate(tf.Adaptive(min=1, max=64, initial=12), 1000, 2.0)
    assert limits[0][1] >= 12


def test_gradient_limit_arithmetic() -> None:
    limit = GradientLimit(tf.Adaptive(min=1, max=100), 0.0)
    # the first calls (at min concurrency) measure the no-load latency
    for _ in range(8):
        assert limit.limit == 1
        epoch = limit.started(1)
        limit.finished(epoch, 0.1, 0.0)
    assert limit.min_rtt == 0.1
    # windows at twice the no-load latency (stage busy): the first after the measurement is
    # not judged (the stage was refilling), the next shrinks the limit
    limit.value = 40.0
    for expect in (40, int(40 * 0.1 * 1.1 / 0.2 + 0.5 * 40**0.5)):
        epoch = limit.epoch
        for _ in range(40):
            limit.started(40)
        for _ in range(40):
            limit.finished(epoch, 0.2, 1.0)
        assert limit.limit == expect
    # a call started under an earlier limit is not counted
    assert not limit.finished(epoch, 10.0, 2.0)
    assert limit.samples == []


async def test_adaptive_with_partition_by_keeps_key_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    down = Downstream(8)
    seen: list[int] = []

    async def call(x: int) -> int:
        await down(x)
        seen.append(x)
        return x

    stage = tf.process(call, n=tf.Adaptive(min=2, max=32), partition_by=lambda x: x % 50)
    src = tf.from_iterable(range(5_000))
    report = await (src | stage | tf.sink(lambda x: None)).run()
    assert report.acked == 5_000
    assert 2 <= down.peak <= 32
    for key in range(50):
        mine = [x for x in seen if x % 50 == key]
        assert mine == sorted(mine)
    # it found the capacity here too: most calls ran at the base latency
    assert down.window(5.0, report.elapsed - 1.0)[1] <= 2 * BASE
