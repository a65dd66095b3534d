"""Batches that know why they left (API.md, second part: "Messages all the way through batches")."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.abc import Instrument
from trioflow.testing import TestSource


async def slow_source(n: int, gap: float) -> Any:
    for i in range(n):
        yield i
        await trio.sleep(gap)


async def test_default_timeout_leaves_a_partial_batch_after_one_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[float, tf.Batch[int]]] = []
    t0 = trio.current_time()

    def save(batch: tf.Batch[int]) -> None:
        seen.append((trio.current_time() - t0, batch))

    async def quiet() -> Any:
        yield 1
        yield 2
        await trio.sleep(60)
        yield 3

    with trio.fail_after(100):
        await (tf.from_aiter(quiet()) | tf.batch(100) | tf.sink(save)).run()
    assert [(t, list(b), b.info.trigger) for t, b in seen] == [
        (1.0, [1, 2], "timeout"),
        (60.0, [3], "end"),
    ]


async def test_timeout_none_keeps_only_full_batches(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tf.Batch[int]] = []
    with trio.fail_after(100):
        await (tf.from_aiter(slow_source(5, 10)) | tf.batch(2, None) | tf.sink(seen.append)).run()
    assert [(list(b), b.info.trigger) for b in seen] == [
        ([0, 1], "size"),
        ([2, 3], "size"),
        ([4], "end"),
    ]


async def test_a_batch_is_a_list_with_its_info() -> None:
    out = await tf.collect(tf.from_iterable(range(5)) | tf.batch(2, key=lambda x: x % 2))
    assert all(isinstance(b, tf.Batch) and isinstance(b, list) for b in out)
    assert sorted(map(sum, out)) == [2, 4, 4]
    assert sorted((b.info.key, b.info.size, b.info.weight, b.info.trigger) for b in out) == [
        (0, 1, 1, "end"),
        (0, 2, 2, "size"),
        (1, 2, 2, "size"),
    ]
    assert out[0] == list(out[0])  # compares as a list


async def test_branch_names_the_route_key() -> None:
    saved: list[tf.Batch[int]] = []
    branches = {"even": tf.batch(10) | tf.sink(saved.append), "odd": tf.sink(lambda x: None)}
    await (
        tf.from_iterable(range(6)) | tf.route(lambda x: "odd" if x % 2 else "even", branches)
    ).run()
    assert [(list(b), b.info.branch) for b in saved] == [([0, 2, 4], "even")]


async def test_weight_makes_a_batch_leave_before_the_item_that_would_overfill_it() -> None:
    src = TestSource(["aaaa", "bbb", "cc", "dddddd", "e"])
    out = await tf.collect(src | tf.batch(10, weight=len, max_weight=8))
    assert [(list(b), b.info.weight, b.info.trigger) for b in out] == [
        (["aaaa", "bbb"], 7, "weight"),
        (["cc", "dddddd"], 8, "weight"),
        (["e"], 1, "end"),
    ]


async def test_an_item_heavier_than_max_weight_fails_alone() -> None:
    src = TestSource([b"x" * 3, b"y" * 20, b"z"])
    out = await tf.collect(src | tf.batch(10, weight=len, max_weight=8))
    assert [list(b) for b in out] == [[b"xxx", b"z"]]
    [(data, reason)] = src.failed
    assert data == b"y" * 20
    assert isinstance(reason, ValueError)
    assert "weighs 20" in str(reason)
    assert "max_weight=8" in str(reason)


def test_max_weight_needs_weight() -> None:
    with pytest.raises(ValueError, match=r"^batch: max_weight=10 needs weight="):
        tf.batch(10, max_weight=10)


async def test_a_drain_flushes_with_trigger_drain(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tf.Batch[int]] = []
    stop = trio.Event()

    async def endless() -> Any:
        i = 0
        while True:
            yield i
            i += 1
            if i == 3:
                stop.set()
            await trio.sleep(0.01)

    with trio.fail_after(100):
        await (tf.from_aiter(endless()) | tf.batch(100, None) | tf.sink(seen.append)).run(stop=stop)
    assert [b.info.trigger for b in seen] == ["drain"]
    assert sum(len(b) for b in seen) >= 3


async def test_the_batch_event_carries_the_info() -> None:
    got: list[Any] = []

    class Rec(Instrument):
        def batch(self, stage: str, size: int, trigger: str, info: Any = None) -> None:
            got.append((size, trigger, info))

    class Old(Instrument):  # an override written before info existed still works
        calls = 0

        def batch(self, stage: str, size: int, trigger: str) -> None:  # type: ignore[override]
            Old.calls += 1

    await (tf.from_iterable(range(3)) | tf.batch(2) | tf.sink(lambda b: None)).run(
        telemetry=[Rec(), Old()]
    )
    assert [(s, t, i.size, i.trigger) for s, t, i in got] == [
        (2, "size", 2, "size"),
        (1, "end", 1, "end"),
    ]
    assert Old.calls == 2
