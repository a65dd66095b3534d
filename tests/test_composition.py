"""Composition: ``|``, reprs, immutability and reuse, ``@tf.stage``, plain callables, collect."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.lowlevel

import trioflow as tf
from trioflow.abc import Source
from trioflow.testing import TestSource


async def double(x: int) -> int:
    return 2 * x


def inc(x: int) -> int:
    return x + 1


async def save(items: list[int]) -> None:
    pass


def test_or_returns_new_pipeline_and_leaves_operands_alone() -> None:
    src = tf.from_iterable([1, 2])
    proc = tf.process(double, n=2)
    p1 = src | proc
    p2 = p1 | tf.sink(save)
    assert isinstance(p1, tf.Pipeline)
    assert isinstance(p2, tf.Pipeline)
    assert p1 is not p2
    assert p1.stages == (src, proc)
    assert len(p2.stages) == 3
    assert p2.stages[:2] == p1.stages


def test_repr_rebuilds_the_expression() -> None:
    p = tf.from_iterable([1, 2, 3]) | tf.process(double, n=10) | tf.batch(100, 1.0) | tf.sink(save)
    assert repr(p) == (
        "from_iterable([1, 2, 3]) | process(double, n=10) | batch(100, 1.0) | sink(save)"
    )


def test_stage_reprs() -> None:
    assert repr(tf.filter(inc)) == "filter(inc)"
    assert repr(tf.flat_map(inc)) == "flat_map(inc)"
    assert repr(tf.rate_limit(5, per=2.0)) == "rate_limit(5, per=2.0)"
    assert repr(tf.batch(3)) == "batch(3, 1.0)"
    assert repr(tf.batch(3, None)) == "batch(3, timeout=None)"
    assert repr(tf.process(double, n=2, ordered=True)) == "process(double, n=2, ordered=True)"
    assert repr(tf.sink(save, timeout=1.5)) == "sink(save, timeout=1.5)"
    assert repr(tf.route(inc, {"a": tf.sink(save)})) == "route(inc, {'a': sink(save)})"


def test_repr_with_on_failure() -> None:
    p = (tf.from_iterable([1]) | tf.sink(save)).on_failure(save)
    assert repr(p) == "(from_iterable([1]) | sink(save)).on_failure(save)"


def test_stages_and_pipelines_are_frozen_values() -> None:
    proc = tf.process(double, n=3)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        proc.n = 4  # type: ignore[misc]
    p = tf.from_iterable([1]) | proc
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        p.stages = ()  # type: ignore[misc]
    assert tf.process(double, n=3) == proc
    assert (tf.from_iterable(range(3)) | tf.process(double)) != p


def test_on_failure_returns_a_copy() -> None:
    p = tf.from_iterable([1]) | tf.sink(save)
    q = p.on_failure(save)
    assert p.failure_handler is None
    assert q.failure_handler is save
    assert q.stages == p.stages


async def test_same_pipeline_runs_twice() -> None:
    out: list[int] = []
    p = tf.from_iterable(range(5)) | tf.process(double) | tf.sink(out.append)
    r1 = await p.run()
    r2 = await p.run()
    assert out == [0, 2, 4, 6, 8] * 2
    assert (r1.received, r1.acked) == (5, 5)
    assert (r2.received, r2.acked) == (5, 5)


async def test_same_pipeline_in_two_nurseries_at_once() -> None:
    outs: list[list[int]] = [[], []]
    gate = trio.Event()

    async def slow(x: int) -> int:
        await gate.wait()
        return x

    stage = tf.process(slow, n=2)
    base = tf.from_iterable(range(4)) | stage
    reports: list[tf.RunReport] = []

    async def run(out: list[int]) -> None:
        reports.append(await (base | tf.sink(out.append)).run())

    async with trio.open_nursery() as n1, trio.open_nursery() as n2:
        n1.start_soon(run, outs[0])
        n2.start_soon(run, outs[1])
        await trio.testing.wait_all_tasks_blocked()
        assert outs == [[], []]  # both runs are in flight together
        gate.set()
    assert sorted(outs[0]) == [0, 1, 2, 3]
    assert sorted(outs[1]) == [0, 1, 2, 3]
    assert [(r.received, r.acked) for r in reports] == [(4, 4), (4, 4)]


async def test_design_card_form_literally() -> None:
    saved: list[list[int]] = []

    @tf.stage
    async def source():  # type: ignore[no-untyped-def]
        for i in range(250):
            yield i

    @tf.stage
    async def process(item: int) -> int:
        return item * 3

    @tf.stage
    async def sink(items: list[int]) -> None:
        saved.append(items)

    pipeline = source | process(n=10) | tf.batch(100, 1.0) | sink
    prefix = "test_design_card_form_literally."
    assert repr(pipeline).replace(prefix, "") == (
        "source | process(process, n=10) | batch(100, 1.0) | process(sink)"
    )
    report = await pipeline.run()
    assert sorted(x for b in saved for x in b) == [3 * i for i in range(250)]
    assert all(len(b) <= 100 for b in saved)
    assert sum(len(b) for b in saved) == 250
    assert (report.received, report.acked, report.failed, report.unsettled) == (250, 250, 0, 0)


async def test_stage_object_still_calls_the_function() -> None:
    @tf.stage
    async def process(item: int) -> int:
        return item + 100

    @tf.stage(n=4)
    def sync_fn(item: int) -> int:
        return item - 1

    assert await process(1) == 101
    assert sync_fn(5) == 4
    assert process(n=10).n == 10
    assert process.n == 1  # the configured copy did not change the original
    assert sync_fn.n == 4
    assert sync_fn(n=2, ordered=True).ordered is True


def test_stage_options_copy_refuses_unknown_option() -> None:
    @tf.stage
    async def process(item: int) -> int:
        return item

    # keywords that are not all options: the function is called (and raises TypeError itself)
    with pytest.raises(TypeError):
        process(n=3, bogus=1)
    with pytest.raises(TypeError, match=r"unknown option\(s\) bogus"):
        process.configure(bogus=1)


async def test_stage_on_async_generator_is_a_source_called_each_run() -> None:
    calls = 0

    @tf.stage
    async def numbers():  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        for i in range(3):
            yield i

    assert isinstance(numbers, Source)
    p = numbers | tf.process(double)
    assert await tf.collect(p) == [0, 2, 4]
    assert await tf.collect(p) == [0, 2, 4]
    assert calls == 2


async def test_plain_async_and_sync_callables_are_stages() -> None:
    p = tf.from_iterable([1, 2, 3]) | double | inc
    assert repr(p) == "from_iterable([1, 2, 3]) | process(double) | process(inc)"
    assert await tf.collect(p) == [3, 5, 7]


async def test_plain_function_last_is_the_sink_when_run() -> None:
    seen: list[int] = []
    src = TestSource([1, 2, 3])
    report = await (src | double | seen.append).run()
    assert seen == [2, 4, 6]
    assert src.acked == [1, 2, 3]
    assert (report.received, report.acked) == (3, 3)


async def test_collect_treats_last_function_as_processor() -> None:
    assert await tf.collect(tf.from_iterable([1, 2, 3]) | inc) == [2, 3, 4]


async def test_collect_of_pipeline_ending_in_sink_is_empty() -> None:
    seen: list[int] = []
    assert await tf.collect(tf.from_iterable([1, 2]) | tf.sink(seen.append)) == []
    assert seen == [1, 2]


async def test_collect_of_a_bare_source() -> None:
    assert await tf.collect(tf.from_iterable("abc")) == ["a", "b", "c"]
    assert await tf.collect(range(3)) == [0, 1, 2]


async def test_left_of_first_pipe_may_be_iterable_aiter_or_agen_function() -> None:
    async def agen():  # type: ignore[no-untyped-def]
        yield 1
        yield 2

    assert await tf.collect([1, 2] | tf.process(double)) == [2, 4]
    assert await tf.collect(agen | tf.process(double)) == [2, 4]
    assert await tf.collect(agen() | tf.process(double)) == [2, 4]


async def test_n1_chain_keeps_input_order_end_to_end() -> None:
    async def jitter(x: int) -> int:
        await trio.lowlevel.checkpoint()
        return x

    p = tf.from_iterable(range(1000)) | jitter | inc | tf.filter(lambda x: x % 3) | jitter
    assert await tf.collect(p) == [x + 1 for x in range(1000) if (x + 1) % 3]


def test_non_stage_operand_is_refused() -> None:
    with pytest.raises(TypeError, match=r"^right of \|: 42 is not a stage; use a stage"):
        tf.from_iterable([1]) | 42  # type: ignore[operator]
