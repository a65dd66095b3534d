"""``handle.resize(stage, n)``: a process/sink stage's concurrency changed while it runs."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import TestSource


class Meter:
    """A slow call (0.1 s) that records how many calls run at once."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.order: list[int] = []

    def reset(self) -> None:
        self.peak = self.running

    async def __call__(self, x: int) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await trio.sleep(0.1)
        self.running -= 1
        self.order.append(x)
        return x


def workers(handle: Any, name: str) -> int:
    (entry,) = [s for s in handle.snapshot()["stages"] if s["name"] == name]
    n: int = entry["workers"]
    return n


@pytest.mark.parametrize("keyed", [False, True])
@pytest.mark.parametrize("breaker", [None, tf.Breaker()])
async def test_grow_from_one_and_shrink_back(
    autojump_clock: trio.testing.MockClock, keyed: bool, breaker: tf.Breaker | None
) -> None:
    meter = Meter()
    src = TestSource(range(3_000))
    key = (lambda x: x % 50) if keyed else None
    stage = tf.process(meter, partition_by=key, name="work", breaker=breaker)
    pipeline = src | stage | tf.sink(lambda x: None)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        await trio.sleep(2.0)
        assert meter.peak == 1
        assert workers(handle, "work") == 1
        handle.resize("work", 8)
        assert workers(handle, "work") == 8
        meter.reset()
        await trio.sleep(2.0)
        assert meter.peak == 8
        handle.resize("work", 20)  # beyond any size it had
        meter.reset()
        await trio.sleep(2.0)
        assert meter.peak == 20
        handle.resize("work", 1)
        await trio.sleep(0.2)  # the calls under way finish
        meter.reset()
        await trio.sleep(2.0)
        assert meter.peak == 1
        assert handle.metrics.stages["work"].workers == 1
        handle.resize("work", 4)
        report = await handle.wait()
    assert report.stages["work"].workers == 4
    assert sorted(src.acked) == list(range(3_000))
    if keyed:
        for k in range(50):
            mine = [x for x in meter.order if x % 50 == k]
            assert mine == sorted(mine)


async def test_ordered_pool_keeps_order_across_resizes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    meter = Meter()
    src = TestSource(range(500))
    out: list[int] = []
    pipeline = src | tf.process(meter, n=2, ordered=True, name="work") | tf.sink(out.append)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        await trio.sleep(1.0)
        handle.resize("work", 10)
        await trio.sleep(1.0)
        handle.resize("work", 3)
        await handle.wait()
    assert out == list(range(500))


async def test_resize_errors(autojump_clock: trio.testing.MockClock) -> None:
    pipeline = (
        tf.from_iterable(range(10**6))
        | tf.process(Meter(), n=2, name="work")
        | tf.process(Meter(), n=tf.Adaptive(min=1, max=8), name="auto")
        | tf.batch(10)
        | tf.sink(lambda batch: None, name="save")
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        await trio.sleep(1.0)
        with pytest.raises(
            KeyError,
            match=r"resize: no stage named 'nope' \(stages: work, auto, batch\(10, 1.0\), save\)",
        ):
            handle.resize("nope", 2)
        with pytest.raises(
            TypeError, match=r"^resize: stage 'batch\(10, 1.0\)' is not a process or sink stage$"
        ):
            handle.resize("batch(10, 1.0)", 2)
        for bad in (0, -1, 1.5, True, "3"):
            with pytest.raises(
                ValueError, match=r"^resize: n=.* must be a positive integer \(stage 'work'\)$"
            ):
                handle.resize("work", bad)
        with pytest.raises(
            ValueError,
            match=r"^resize: stage 'auto' has an adaptive limit \(Adaptive\(min=1, max=8, "
            r"initial=None\), now \d+\) that follows its calls' latency; it cannot be resized$",
        ):
            handle.resize("auto", 4)
        # one request (the dashboard's, or a typo) must not start a million tasks
        with pytest.raises(
            ValueError,
            match=r"^resize: n=1000000 for stage 'work' is more than 4096 calls at once ",
        ):
            handle.resize("work", 1_000_000)
        assert workers(handle, "work") == 2
        handle.resize("work", 4096)  # the cap itself is allowed
        assert workers(handle, "work") == 4096
        handle.resize("save", 3)
        assert workers(handle, "save") == 3
        handle.stop()
        await handle.wait()


async def test_resize_after_the_stage_ended(autojump_clock: trio.testing.MockClock) -> None:
    gate = trio.Event()

    async def slow_sink(x: int) -> None:
        await gate.wait()

    pipeline = tf.from_iterable(range(3)) | tf.process(Meter(), name="work") | tf.sink(slow_sink)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        await trio.sleep(5.0)  # "work" is done with its input and ended
        tasks = _count_tasks()
        handle.resize("work", 5)  # nothing to start: no error, no stray task
        await trio.sleep(1.0)
        assert _count_tasks() == tasks
        gate.set()
        report = await handle.wait()
    assert report.acked == 3


def _count_tasks() -> int:
    """The tasks alive in this run."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    todo = [root]
    count = 0
    while todo:
        task = todo.pop()
        count += 1
        todo.extend(t for n in task.child_nurseries for t in n.child_tasks)
    return count
