"""``filter`` and ``flat_map``: dropped items are acked; children settle their parent."""

from __future__ import annotations

import trio
import trio.lowlevel

import trioflow as tf
from trioflow.testing import TestSource


async def test_filter_drops_and_acks_at_once() -> None:
    src = TestSource(range(10))
    out: list[int] = []
    gate = trio.Event()

    async def sink(x: int) -> None:
        await gate.wait()
        out.append(x)

    async with trio.open_nursery() as nursery:
        reports: list[tf.RunReport] = []

        async def run() -> None:
            reports.append(await (src | tf.filter(lambda x: x % 3 == 0) | tf.sink(sink)).run())

        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        # dropped items are acked while the kept ones still wait in the sink
        assert sorted(src.acked) == [1, 2, 4, 5, 7, 8]
        gate.set()
    assert out == [0, 3, 6, 9]
    assert sorted(src.acked) == list(range(10))
    [report] = reports
    assert (report.received, report.acked, report.filtered, report.failed) == (10, 10, 6, 0)


async def test_async_predicate() -> None:
    async def even(x: int) -> bool:
        await trio.lowlevel.checkpoint()
        return x % 2 == 0

    assert await tf.collect(tf.from_iterable(range(6)) | tf.filter(even)) == [0, 2, 4]


async def test_failing_predicate_fails_the_item() -> None:
    src = TestSource([1, 0, 2])
    report = await (src | tf.filter(lambda x: 1 / x)).run()
    assert src.acked == [1, 2]
    assert [(d, type(r)) for d, r in src.failed] == [(0, ZeroDivisionError)]
    assert report.failed_by_reason == {"ZeroDivisionError": 1}


async def test_flat_map_parent_acked_after_all_children() -> None:
    src = TestSource(["ab", "cde"])
    done: list[str] = []
    release = {c: trio.Event() for c in "abcde"}

    async def sink(c: str) -> None:
        await release[c].wait()
        done.append(c)

    async with trio.open_nursery() as nursery:
        nursery.start_soon((src | tf.flat_map(list) | tf.sink(sink, n=5)).run)
        for c in "abdc":
            release[c].set()
            await trio.testing.wait_all_tasks_blocked()
        assert src.acked == ["ab"]  # "cde" still has child "e" in flight
        release["e"].set()
    assert src.acked == ["ab", "cde"]
    assert src.failed == []


async def test_flat_map_parent_fails_if_any_child_fails() -> None:
    src = TestSource(["ab", "cxd", "ef"])

    def check(c: str) -> str:
        if c == "x":
            raise ValueError("x is bad")
        return c

    out: list[str] = []
    report = await (src | tf.flat_map(list) | tf.process(check) | tf.sink(out.append)).run()
    assert sorted(out) == ["a", "b", "c", "d", "e", "f"]  # the other children go on
    assert sorted(src.acked) == ["ab", "ef"]
    [(data, reason)] = src.failed
    assert data == "cxd"
    assert isinstance(reason, ValueError)
    assert str(reason) == "x is bad"
    assert (report.received, report.acked, report.failed) == (3, 2, 1)
    assert report.failed_by_reason == {"ValueError": 1}


async def test_flat_map_zero_children_acks_parent() -> None:
    src = TestSource([0, 2, 0])
    out = await tf.collect(src | tf.flat_map(range))
    assert out == [0, 1]
    assert sorted(src.acked) == [0, 0, 2]


async def test_flat_map_forms_async_function_and_async_generator() -> None:
    async def pair(x: int) -> list[int]:
        return [x, x]

    async def spread(x: int):  # type: ignore[no-untyped-def]
        for i in range(x):
            await trio.lowlevel.checkpoint()
            yield i

    assert await tf.collect(tf.from_iterable([1, 2]) | tf.flat_map(pair)) == [1, 1, 2, 2]
    assert await tf.collect(tf.from_iterable([2, 3]) | tf.flat_map(spread)) == [0, 1, 0, 1, 2]
    # an async generator function right of | is a flat_map
    assert await tf.collect(tf.from_iterable([2]) | spread) == [0, 1]


async def test_flat_map_function_raising_fails_parent() -> None:
    src = TestSource([1, 2])

    def bad(x: int) -> list[int]:
        if x == 2:
            raise KeyError("nope")
        return [x]

    report = await (src | tf.flat_map(bad)).run()
    assert src.acked == [1]
    assert [(d, type(r)) for d, r in src.failed] == [(2, KeyError)]
    assert report.failed_by_reason == {"KeyError": 1}


async def test_flat_map_non_iterable_result_fails_item() -> None:
    src = TestSource([1])
    await (src | tf.flat_map(lambda x: x)).run()
    [(data, reason)] = src.failed
    assert data == 1
    assert isinstance(reason, TypeError)
    assert str(reason) == "flat_map function returned int, not an iterable or async iterable"


async def test_flat_map_then_batch_settles_parents() -> None:
    src = TestSource(["abc", "de", "f"])
    batches: list[list[str]] = []
    report = await (src | tf.flat_map(list) | tf.batch(4) | tf.sink(batches.append)).run()
    assert batches == [["a", "b", "c", "d"], ["e", "f"]]
    assert sorted(src.acked) == ["abc", "de", "f"]
    assert (report.received, report.acked, report.unsettled) == (3, 3, 0)


async def test_a_predicate_result_without_a_truth_value_fails_the_item() -> None:
    class Ambiguous:
        def __bool__(self) -> bool:
            raise ValueError("the truth value of an array is ambiguous")

    src = TestSource([1, 2, 3])
    saved: list[int] = []
    report = await (
        src | tf.filter(lambda x: Ambiguous() if x == 2 else True) | tf.sink(saved.append)
    ).run()
    assert saved == [1, 3]
    assert [d for d, _ in src.failed] == [2]
    assert report.failed_by_reason == {"ValueError": 1}
