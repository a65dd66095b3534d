"""Acknowledgement: every message acked exactly once, in groups, with a consistent report."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.lowlevel

import trioflow as tf
from trioflow.testing import TestSource


def fail_7(x: int) -> int:
    if x % 7 == 3:
        raise ValueError(x)
    return x


async def jitter(x: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return x


SHAPES = {
    "process": lambda: tf.process(fail_7, n=3) | tf.sink(jitter),
    "ordered": lambda: tf.process(jitter, n=4, ordered=True) | tf.process(fail_7),
    "partition": lambda: tf.process(fail_7, n=3, partition_by=lambda x: x % 5),
    "filter": lambda: tf.filter(lambda x: x % 2) | tf.process(fail_7),
    "flat_map": lambda: (
        tf.flat_map(lambda x: [x] * (x % 3)) | tf.process(fail_7) | tf.sink(jitter, n=2)
    ),
    "batch": lambda: tf.batch(8, 0.5) | tf.sink(lambda b: fail_7(len(b)) and None),
    "batch_key": lambda: tf.batch(4, 1.0, key=lambda x: x % 3) | tf.sink(jitter),
    "route": lambda: (
        tf.route(
            lambda x: x % 3,
            {0: tf.sink(fail_7), 1: tf.batch(3) | tf.sink(jitter), 2: tf.process(fail_7)},
        )
        | tf.process(jitter)
    ),
    "rate_limit": lambda: tf.rate_limit(100, per=0.1) | tf.process(fail_7),
    "messages": lambda: tf.process(lambda m: m.fail("odd") if m.data % 2 else m, messages=True),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("with_handler", [False, True])
async def test_every_message_acked_exactly_once(
    shape: str, with_handler: bool, autojump_clock: trio.testing.MockClock
) -> None:
    src = TestSource(range(500))
    handled: list[Any] = []
    p = src | SHAPES[shape]()
    if with_handler:
        p = p.on_failure(handled.extend)
    report = await p.run()
    outcomes = src.acked + [d for d, _ in src.failed]
    assert sorted(outcomes) == list(range(500))  # exactly once: TestSource raises on a double ack
    assert src.pulled == 500
    assert report.received == 500
    assert report.received == report.acked + report.failed + report.unsettled
    assert (report.acked, report.failed, report.unsettled) == (len(src.acked), len(src.failed), 0)
    assert sum(report.failed_by_reason.values()) == report.failed
    if with_handler:
        assert sorted(m.data for m in handled) == sorted(d for d, _ in src.failed)


async def test_acknowledger_called_in_groups() -> None:
    src = TestSource(range(1000))
    await (src | tf.process(lambda x: x) | tf.sink(lambda x: None)).run()
    assert src.acked == list(range(1000))
    assert 1 <= src.acknowledger.calls < 100


async def test_ack_order_follows_settlement() -> None:
    release = {i: trio.Event() for i in range(3)}

    async def wait(x: int) -> int:
        await release[x].wait()
        return x

    src = TestSource(range(3))
    async with trio.open_nursery() as nursery:
        nursery.start_soon((src | tf.sink(wait, n=3)).run)
        for i in (2, 0, 1):
            await trio.testing.wait_all_tasks_blocked()
            release[i].set()
    assert src.acked == [2, 0, 1]


async def test_n1_ack_order_is_input_order() -> None:
    src = TestSource(range(300))
    await (src | tf.process(jitter) | tf.batch(7) | tf.sink(jitter)).run()
    assert src.acked == list(range(300))


async def test_ack_happens_after_last_stage_finished() -> None:
    src = TestSource([1])
    gate = trio.Event()

    async def sink(x: int) -> None:
        await gate.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon((src | tf.sink(sink)).run)
        await trio.testing.wait_all_tasks_blocked()
        assert src.acked == []
        gate.set()
    assert src.acked == [1]


async def test_several_acknowledgers_each_get_their_messages() -> None:
    class Rec:
        def __init__(self) -> None:
            self.ok: list[Any] = []
            self.bad: list[Any] = []

        async def ack(self, successful: list[Any], failed: list[Any]) -> None:
            self.ok += [m.data for m in successful]
            self.bad += [m.data for m in failed]

    a, b = Rec(), Rec()
    msgs = [tf.Message(i, acknowledger=a if i % 2 else b) for i in range(20)]
    report = await (tf.from_iterable(msgs) | tf.process(fail_7)).run()
    assert a.ok == [i for i in range(1, 20, 2) if i % 7 != 3]
    assert b.ok == [i for i in range(0, 20, 2) if i % 7 != 3]
    assert sorted(a.bad + b.bad) == [3, 10, 17]
    assert (report.acked, report.failed) == (17, 3)


async def test_plain_data_is_counted_only() -> None:
    report = await (
        tf.from_iterable(range(50)) | tf.process(fail_7) | tf.filter(lambda x: x > 10)
    ).run()
    assert report.received == 50
    assert report.failed == 7
    assert report.filtered == 9  # 0..10 without 3 and 10, which failed
    assert report.acked == 43  # filtered ones count as acked
    assert report.unsettled == 0


async def test_report_fields(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(x: int) -> int:
        await trio.sleep(1)
        return x

    report = await (tf.from_iterable(range(4)) | tf.process(slow, name="slow")).run()
    assert report.elapsed == 4.0
    assert report.throughput == 1.0
    assert report.stages["slow"].count == 4
    assert 0.9 < report.stages["slow"].p50 < 1.1
    assert 0.9 < report.stages["slow"].p99 < 1.1
