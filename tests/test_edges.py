"""The core at its edges (issue 11, defects 1-14): each test names the defect it pins.

Every test here failed on commit 535b9dd. Every run is bounded by ``trio.fail_after``: virtual
seconds with the ``autojump_clock`` fixture, real ones otherwise (never long enough to matter).
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import trioflow as tf
import trioflow._runner as runner
from trioflow._topology import compile_pipeline
from trioflow.abc import Instrument, Outlet, Source
from trioflow.testing import TestSource

# -- defect 1: a plain function whose result is awaitable ------------------------------------


async def double(x: int) -> int:
    await trio.lowlevel.checkpoint()
    return 2 * x


async def is_even(x: int) -> bool:
    await trio.lowlevel.checkpoint()
    return x % 2 == 0


async def test_sync_sink_returning_a_coroutine_has_it_awaited() -> None:
    """Defect 1: ``sink(lambda x: save(x))`` runs ``save``, it is not acked unrun."""
    saved: list[int] = []

    async def save(x: int) -> None:
        await trio.lowlevel.checkpoint()
        saved.append(x)

    src = TestSource(range(5))
    with trio.fail_after(30):
        report = await (src | tf.sink(lambda x: save(x))).run()
    assert saved == [0, 1, 2, 3, 4]
    assert src.acked == [0, 1, 2, 3, 4]
    assert report.failed == 0


@pytest.mark.parametrize(
    "stage",
    [
        tf.process(lambda x: double(x)),
        tf.process(lambda x: double(x), n=3, ordered=True),
        tf.process(lambda x: double(x), thread=True),
        tf.process(lambda x: double(x), retry=tf.Retry(attempts=2)),
    ],
    ids=["plain", "n3_ordered", "thread", "retry"],
)
async def test_sync_process_returning_a_coroutine_has_it_awaited(stage: Any) -> None:
    """Defect 1: the awaited value is the result (inline, in a thread, under retry)."""
    with trio.fail_after(30):
        out = await tf.collect(tf.from_iterable(range(6)) | stage)
    assert out == [0, 2, 4, 6, 8, 10]


async def test_sync_process_coroutine_failures_are_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Defect 1: an exception of the awaited coroutine is retried like any call's."""
    calls: list[int] = []

    async def flaky(x: int) -> int:
        calls.append(x)
        await trio.sleep(0.1)
        if calls.count(x) < 2:
            raise ConnectionError(x)
        return x

    src = TestSource(range(3))
    retry = tf.Retry(attempts=3, on=(ConnectionError,), backoff=tf.Backoff.constant(0.1))
    with trio.fail_after(100):
        report = await (src | tf.sink(lambda x: flaky(x), retry=retry)).run()
    assert sorted(src.acked) == [0, 1, 2]
    assert sorted(calls) == [0, 0, 1, 1, 2, 2]
    assert report.retried == 3


async def test_sync_filter_returning_a_coroutine_uses_its_awaited_truth() -> None:
    """Defect 1: ``filter(lambda x: is_even(x))`` keeps the even items, not every item."""
    src = TestSource(range(10))
    with trio.fail_after(30):
        out = await tf.collect(src | tf.filter(lambda x: is_even(x)))
    assert out == [0, 2, 4, 6, 8]
    assert sorted(src.acked) == list(range(10))


def ignore(x: Any) -> None:
    pass


async def key_of(x: int) -> int:  # pragma: no cover - never awaited: the key call fails
    return x % 2


@pytest.mark.parametrize(
    "stage",
    [
        tf.process(lambda x: x, n=2, partition_by=lambda x: key_of(x)),
        tf.batch(2, key=lambda x: key_of(x)),
        tf.route(lambda x: key_of(x), {0: tf.sink(ignore), 1: tf.sink(ignore)}),
    ],
    ids=["partition_by", "batch_key", "route"],
)
async def test_key_function_returning_a_coroutine_fails_the_item(stage: Any) -> None:
    """Defect 1: a key function returning a coroutine fails that item with a TypeError (and the
    coroutine is closed: no 'never awaited' warning); the run goes on."""
    src = TestSource(range(4))
    with trio.fail_after(30):
        report = await (src | stage).run()
    assert src.acked == []
    assert sorted(d for d, _ in src.failed) == [0, 1, 2, 3]
    for _, reason in src.failed:
        assert isinstance(reason, TypeError)
        assert re.search(r"awaitable|coroutine", str(reason))
    assert report.failed_by_reason == {"TypeError": 4}


# -- defect 2: exception groups --------------------------------------------------------------


async def hangs_then_breaks_on_cancel(x: Any) -> Any:
    """A call that opened a nursery and whose cleanup raises when it is cancelled: it ends with
    an exception group holding ``Cancelled`` and ``ValueError``."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever)
        try:
            await trio.sleep_forever()
        finally:
            raise ValueError("cleanup failed")
    return x  # pragma: no cover


async def test_fatal_is_the_cause_when_another_stage_breaks_while_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Defect 2a: ``Fatal`` in one stage, a group (Cancelled + ValueError) from another stage
    being cancelled: ``PipelineError`` caused by the ``Fatal``, not a raw exception group."""
    fatal = tf.Fatal("stop")

    async def first(x: int) -> int:
        if x == 1:
            await hangs_then_breaks_on_cancel(x)
        return x

    async def second(x: int) -> None:
        await trio.sleep(1)
        raise fatal

    with trio.fail_after(100), pytest.raises(tf.PipelineError) as info:
        await (
            tf.from_iterable([0, 1])
            | tf.process(first, n=2, name="first")
            | tf.sink(second, name="second")
        ).run()
    assert info.value.__cause__ is fatal
    assert info.value.stage == "second"


async def test_drain_past_deadline_returns_its_report_when_a_call_breaks_on_cancel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Defect 2b: a graceful drain whose deadline passes while a call ends with a group
    (Cancelled + ValueError) returns its report (the call's item unsettled); it does not raise."""
    src = TestSource(range(3))
    stop = trio.Event()

    async def stopper() -> None:
        await trio.sleep(1)
        stop.set()

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stopper)
            report = await (src | tf.sink(hangs_then_breaks_on_cancel)).run(
                stop=stop, drain_timeout=2.0
            )
    assert report.unsettled > 0
    assert report.received == report.acked + report.failed + report.unsettled


async def test_retry_matches_an_exception_inside_a_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Defect 2c: ``Retry(on=(ConnectionError,))`` retries a ``ConnectionError`` that arrives in an
    ``ExceptionGroup`` from a nursery."""
    calls = 0

    async def refuse() -> None:
        raise ConnectionError("refused")

    async def fetch(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(refuse)
        return x

    src = TestSource([7])
    retry = tf.Retry(attempts=3, on=(ConnectionError,), backoff=tf.Backoff.constant(0.1))
    with trio.fail_after(100):
        report = await (src | tf.sink(fetch, retry=retry)).run()
    assert calls == 3
    assert src.acked == [7]
    assert report.retried == 2


async def test_failure_reason_key_looks_inside_a_group() -> None:
    """Defect 2d: an item failing with ``ExceptionGroup([ValueError()])`` counts as
    ``"ValueError"`` in ``failed_by_reason``."""

    async def bad() -> None:
        raise ValueError("bad")

    async def work(x: int) -> int:
        if x == 1:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bad)
        return x

    src = TestSource(range(3))
    with trio.fail_after(30):
        report = await (src | tf.sink(work)).run()
    assert report.failed_by_reason == {"ValueError": 1}
    assert sorted(src.acked) == [0, 2]


async def test_fatal_inside_a_nursery_is_the_cause() -> None:
    """Defect 2e: a ``Fatal`` raised in a nursery inside a stage (so it arrives in a group) stops
    the run with ``PipelineError`` whose cause is that ``Fatal``."""
    fatal = tf.Fatal("credentials rejected")

    async def reject() -> None:
        raise fatal

    async def save(x: int) -> None:
        if x == 2:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reject)

    with trio.fail_after(30), pytest.raises(tf.PipelineError) as info:
        await (tf.from_iterable(range(5)) | tf.sink(save, name="save")).run()
    assert info.value.__cause__ is fatal
    assert info.value.stage == "save"


# -- defect 3: errors of a source's connection surface as PipelineError ----------------------


def holds(cause: BaseException | None, kind: type[BaseException]) -> bool:
    """Whether ``cause`` is a ``kind``, or a group with one among its leaves."""
    if isinstance(cause, BaseExceptionGroup):
        return cause.subgroup(kind) is not None
    return isinstance(cause, kind)


class BrokerSource(Source[int]):
    """A connector whose ``open()`` keeps a connection task in a nursery (as broker clients do);
    the connection drops ``drop_after`` seconds into the run."""

    def __init__(self, drop_after: float) -> None:
        self.drop_after = drop_after
        self.name = "broker"

    async def _connection(self) -> None:
        await trio.sleep(self.drop_after)
        raise ConnectionResetError("the broker restarted")

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[BrokerSource]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._connection)
            yield self
            nursery.cancel_scope.cancel()

    def open(self) -> Any:
        return self._open()

    async def produce(self, out: Outlet) -> None:
        for i in itertools.count():
            await out.send(i)
            await trio.sleep(0.1)


async def slow_save(x: Any) -> None:
    await trio.sleep(0.5)


async def test_source_background_task_error_is_a_pipeline_error_naming_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Defect 3: a connector's background task failing mid-run: ``PipelineError`` naming the
    source, with the original error as (or in) its cause, not a raw exception group."""
    with trio.fail_after(100), pytest.raises(tf.PipelineError, match="broker") as info:
        await (BrokerSource(drop_after=1.0) | tf.sink(slow_save)).run()
    assert holds(info.value.__cause__, ConnectionResetError)


CLI_PIPELINE = """
    import itertools
    from contextlib import asynccontextmanager

    import trio

    import trioflow as tf
    from trioflow.abc import Source


    class BrokerSource(Source):
        name = "broker"

        async def _connection(self):
            await trio.sleep(0.3)
            raise ConnectionResetError("the broker restarted")

        @asynccontextmanager
        async def _open(self):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._connection)
                yield self
                nursery.cancel_scope.cancel()

        def open(self):
            return self._open()

        async def produce(self, out):
            for i in itertools.count():
                await out.send(i)
                await trio.sleep(0.01)


    async def save(x):
        await trio.sleep(0.001)


    pipeline = BrokerSource() | tf.sink(save)
"""


def test_cli_exits_3_with_its_report_when_a_source_connection_fails(tmp_path: Path) -> None:
    """Defect 3: ``trioflow run`` exits 3 with its report when a connector's background task
    fails, not 1 with a raw exception-group traceback."""
    module = tmp_path / "broker_pipeline.py"
    module.write_text(textwrap.dedent(CLI_PIPELINE))
    got = subprocess.run(
        [sys.executable, "-m", "trioflow", "run", f"{module}:pipeline", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 3, got.stderr
    assert "received" in got.stdout  # the report
    assert "broker" in got.stderr
    assert "Exception Group Traceback" not in got.stderr


# -- defect 4: work-conserving pools -----------------------------------------------------------


@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
async def test_one_slow_call_does_not_strand_other_items(
    ordered: bool, autojump_clock: trio.testing.MockClock
) -> None:
    """Defect 4: ``process(f, n=4)``: while item 0 takes 100 s, the other three workers take every
    other item (39 items of 1 s on 3 workers: done by t=13); no item waits in a private chunk."""
    t0 = trio.current_time()
    done: dict[int, float] = {}

    async def work(x: int) -> int:
        await trio.sleep(100 if x == 0 else 1)
        done[x] = trio.current_time() - t0
        return x

    with trio.fail_after(1000):
        out = await tf.collect(tf.from_iterable(range(40)) | tf.process(work, n=4, ordered=ordered))
    assert sorted(out) == list(range(40))
    if ordered:
        assert out == list(range(40))
    assert done[0] == 100
    late = {x: t for x, t in done.items() if x and t > 14}
    assert late == {}


async def test_partition_by_lets_idle_workers_take_other_keys(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Defect 4, per key: a slow item holds up only its own key; every other key's items are
    taken by the idle workers (keys 1..39 of 1 s on 3 workers: done by t=13), and items of the
    slow key wait for it, in order."""
    t0 = trio.current_time()
    done: dict[tuple[int, int], float] = {}

    async def work(item: tuple[int, int]) -> tuple[int, int]:
        key, i = item
        await trio.sleep(100 if (key, i) == (0, 0) else 1)
        done[item] = trio.current_time() - t0
        return item

    items = [(0, 0), (0, 1), *((k, 0) for k in range(1, 40))]
    with trio.fail_after(1000):
        out = await tf.collect(
            tf.from_iterable(items) | tf.process(work, n=4, partition_by=lambda it: it[0])
        )
    assert sorted(out) == sorted(items)
    assert out.index((0, 0)) < out.index((0, 1))
    assert done[(0, 0)] == 100
    assert done[(0, 1)] == 101
    assert {it: t for it, t in done.items() if it[0] and t > 14} == {}


# -- defect 5: results leave as soon as they are ready -------------------------------------------


class ClockedAcknowledger:
    """Records when each message was acked (trio clock), and how."""

    def __init__(self) -> None:
        self.t0 = trio.current_time()
        self.at: dict[Any, float] = {}
        self.failed: list[Any] = []

    async def ack(self, successful: list[tf.Message[Any]], failed: list[tf.Message[Any]]) -> None:
        now = trio.current_time() - self.t0
        for m in [*successful, *failed]:
            assert m.data not in self.at, f"acked twice: {m.data!r}"
            self.at[m.data] = now
        self.failed += [m.data for m in failed]


def clocked_source(items: Any, acker: ClockedAcknowledger) -> Any:
    return tf.from_iterable([tf.Message(x, acknowledger=acker) for x in items])


@pytest.mark.parametrize("buffer", [None, 4])
async def test_suspending_sink_acks_each_item_right_after_its_call(
    buffer: int | None, autojump_clock: trio.testing.MockClock
) -> None:
    """No private trio state: a sink whose calls wait acks each item right after its call,
    decided from public signals only (chunk after chunk: ``buffer=4`` over 12 items)."""
    acker = ClockedAcknowledger()

    async def save(x: int) -> None:
        await trio.sleep(1)

    with trio.fail_after(1000):
        await (clocked_source(range(12), acker) | tf.sink(save, buffer=buffer)).run()
    assert acker.at == {i: i + 1 for i in range(12)}


async def test_a_pool_hands_each_result_on_as_it_finishes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A pool whose calls wait hands each result on as it finishes (no chunk held back)."""
    acker = ClockedAcknowledger()

    async def work(x: int) -> int:
        await trio.sleep(1 + x)
        return x

    with trio.fail_after(1000):
        await (
            clocked_source(range(8), acker) | tf.process(work, n=8) | tf.sink(lambda x: None)
        ).run()
    assert acker.at == {i: i + 1 for i in range(8)}


async def test_ordered_pool_hands_on_a_finished_head_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Defect 5: ``ordered=True``: item 0 (1 s) is acked at t=1, not when its chunk is done."""
    acker = ClockedAcknowledger()

    async def work(x: int) -> int:
        await trio.sleep(1 if x == 0 else 10)
        return x

    with trio.fail_after(1000):
        report = await (
            clocked_source(range(10), acker) | tf.process(work, n=4, ordered=True)
        ).run()
    assert report.acked == 10
    assert acker.at[0] <= 1.5


async def test_filter_acks_each_dropped_item_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Defect 5: a dropped item is acked as soon as its (slow, async) predicate said no, not at
    the end of the filter's chunk."""
    acker = ClockedAcknowledger()

    async def drop_all(x: int) -> bool:
        await trio.sleep(1)
        return False

    with trio.fail_after(1000):
        report = await (clocked_source(range(10), acker) | tf.filter(drop_all)).run()
    assert report.filtered == report.acked == 10
    assert acker.at[0] <= 1.5
    assert all(acker.at[x] <= x + 1.5 for x in range(10)), acker.at


async def test_async_flat_map_hands_children_on_per_parent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Defect 5: an async ``flat_map`` returning a list: each parent's children reach the next
    stage when that parent is done (t=1, 2, ...), not all at the end of the chunk."""
    t0 = trio.current_time()
    arrived: dict[tuple[int, int], float] = {}

    async def expand(x: int) -> list[tuple[int, int]]:
        await trio.sleep(1)
        return [(x, 0), (x, 1)]

    def save(child: tuple[int, int]) -> None:
        arrived[child] = trio.current_time() - t0

    with trio.fail_after(1000):
        await (tf.from_iterable(range(10)) | tf.flat_map(expand) | tf.sink(save)).run()
    assert len(arrived) == 20
    late = {child: t for child, t in arrived.items() if t > child[0] + 1.5}
    assert late == {}


# -- defect 6: a Message subclass is a message -------------------------------------------------


class Delivery(tf.Message):  # type: ignore[type-arg]
    """A connector's own message type."""


async def test_message_subclass_yielded_by_a_source_is_acked() -> None:
    """Defect 6: a ``tf.Message`` subclass from a source reaches its acknowledger (once), and
    stages see its data."""
    acker = ClockedAcknowledger()
    seen: list[Any] = []
    src = tf.from_iterable([Delivery(i, acknowledger=acker) for i in range(3)])
    with trio.fail_after(30):
        report = await (src | tf.process(lambda x: x + 1) | tf.sink(seen.append)).run()
    assert seen == [1, 2, 3]
    assert sorted(acker.at) == [0, 1, 2]
    assert acker.failed == []
    assert (report.received, report.acked) == (3, 3)


# -- defect 7: failure bookkeeping never crashes nor bloats -------------------------------------


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def reject(x: Any) -> None:
    raise ValueError("rejected")


async def test_item_whose_repr_raises_fails_normally() -> None:
    """Defect 7a: an item whose ``repr()`` raises fails like any other; the run completes."""
    with trio.fail_after(30):
        report = await (tf.from_iterable([Unprintable()]) | tf.sink(reject)).run()
    assert (report.received, report.failed) == (1, 1)
    assert report.failed_by_reason == {"ValueError": 1}


@dataclass(frozen=True)
class Frozen(Exception):
    code: int


async def test_exception_that_cannot_take_notes_fails_the_item() -> None:
    """Defect 7b: a frozen dataclass exception (``add_note`` raises ``FrozenInstanceError``)
    fails its item under its own class name; the run completes."""

    def check(x: int) -> int:
        if x == 1:
            raise Frozen(404)
        return x

    src = TestSource(range(3))
    with trio.fail_after(30):
        report = await (src | tf.sink(check)).run()
    assert report.failed_by_reason == {"Frozen": 1}
    assert [(d, type(r)) for d, r in src.failed] == [(1, Frozen)]
    assert sorted(src.acked) == [0, 2]


async def test_one_shared_exception_for_many_items_does_not_grow_notes() -> None:
    """Defect 7c: one exception instance raised for 3,000 items does not collect 3,000 notes."""
    shared = ConnectionError("the database is down")

    def save(x: int) -> None:
        raise shared

    with trio.fail_after(30):
        report = await (tf.from_iterable(range(3000)) | tf.sink(save)).run()
    assert report.failed == 3000
    assert report.failed_by_reason == {"ConnectionError": 3000}
    assert len(getattr(shared, "__notes__", [])) <= 10


@attrs.define
class Blob:
    payload: str


async def test_note_of_a_large_attrs_item_is_an_excerpt() -> None:
    """Defect 7d: the note trioflow adds for a failing 1 MB attrs item is an excerpt (at most
    1,000 characters), not a copy of the item."""
    src = TestSource([Blob("x" * 1_000_000)])
    with trio.fail_after(30):
        report = await (src | tf.process(reject, name="check")).run()
    assert report.failed == 1
    [(_, reason)] = src.failed
    assert isinstance(reason, ValueError)
    notes = getattr(reason, "__notes__", [])
    assert [len(note) for note in notes if len(note) > 1000] == []


# -- defect 8: a sync failure handler's return value -------------------------------------------


async def test_sync_failure_handler_returning_a_value_is_not_awaited() -> None:
    """Defect 8: a plain ``on_failure`` handler returning a non-awaitable (``len(messages)``) does
    not stop the run; the failures are acked as failed after it."""
    handled: list[Any] = []

    def dead_letter(messages: list[tf.Message[Any]]) -> int:
        handled.extend(m.data for m in messages)
        return len(messages)

    src = TestSource(range(6))
    p = (src | tf.sink(lambda x: reject(x) if x % 2 else None)).on_failure(dead_letter)
    with trio.fail_after(30):
        report = await p.run()
    assert sorted(handled) == [1, 3, 5]
    assert sorted(d for d, _ in src.failed) == [1, 3, 5]
    assert sorted(src.acked) == [0, 2, 4]
    assert (report.acked, report.failed, report.unsettled) == (3, 3, 0)


# -- defect 9: the default buffer after a route of batching branches -----------------------------


async def test_default_buffer_after_a_route_of_batches_is_counted_in_messages() -> None:
    """Defect 9: after a route whose branches ``batch(100)``, the next stage's default buffer
    holds ``DEFAULT_BUFFER // 100`` batches (about DEFAULT_BUFFER messages), not 512 batches."""
    p = (
        tf.from_iterable(range(1000))
        | tf.route(lambda x: "ab"[x % 2], {"a": tf.batch(100), "b": tf.batch(100)})
        | tf.sink(ignore, name="save")
    )
    with trio.fail_after(30):
        report = await p.run()
    assert report.acked == 1000
    assert report.stages["save"].capacity == tf.DEFAULT_BUFFER // 100


# -- defect 10: the in-flight bound holds with slow acknowledgers ------------------------------


async def test_in_flight_bound_holds_with_a_slow_acknowledger_behind_a_wide_sink(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Defect 10: ``batch(100) | sink(n=40)`` with a 5 s ``ack``: pulled-but-unacked messages stay
    within ``Topology.in_flight_bound()``."""

    async def save(batch: list[int]) -> None:
        await trio.sleep(0.01)

    src = TestSource(range(30_000), ack_delay=5.0)
    p = src | tf.batch(100) | tf.sink(save, n=40)
    limit = compile_pipeline(p, ack_buffer=runner.ACK_BUFFER).in_flight_bound()
    assert limit is not None
    with trio.fail_after(10_000):
        report = await p.run()
    assert report.acked == 30_000
    assert src.meter.peak <= limit


# -- defect 11: a source-only pipeline lets other tasks run --------------------------------------


async def test_source_only_pipeline_lets_other_tasks_run_while_it_runs() -> None:
    """Defect 11: ``collect(from_iterable(...))`` over 200k items yields to the scheduler as it
    goes: another task gets turns while items are being pulled, not only before and after."""
    total = 200_000
    pulled = 0

    def items() -> Any:
        nonlocal pulled
        for i in range(total):
            pulled += 1
            yield i

    turns_between = 0

    async def spin() -> None:
        nonlocal turns_between
        while True:
            await trio.lowlevel.checkpoint()
            if 0 < pulled < total:
                turns_between += 1

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(spin)
            out = await tf.collect(tf.from_iterable(items()))
            nursery.cancel_scope.cancel()
    assert len(out) == total
    assert turns_between >= 10


# -- defect 12: from_aiter leaves the caller's channel open ---------------------------------------


async def test_from_aiter_closes_its_generator_but_not_the_callers_channel() -> None:
    """Defect 12: at the end of a run, ``from_aiter`` closes an async generator it was given (it
    is the run's), but not a trio receive channel (the caller's: still usable afterwards)."""
    closed: list[bool] = []

    async def endless() -> AsyncIterator[int]:
        try:
            for i in itertools.count():
                yield i
        finally:
            closed.append(True)

    async def run_until_three(source: Any) -> list[Any]:
        seen: list[Any] = []
        stop = trio.Event()

        def save(x: Any) -> None:
            seen.append(x)
            if len(seen) >= 3:
                stop.set()

        with trio.fail_after(10):
            await (source | tf.sink(save)).run(stop=stop)
        return seen

    assert (await run_until_three(tf.from_aiter(endless())))[:3] == [0, 1, 2]
    assert closed == [True]

    send, receive = trio.open_memory_channel[int](10)
    for i in range(3):
        send.send_nowait(i)
    assert await run_until_three(tf.from_aiter(receive)) == [0, 1, 2]
    send.send_nowait(99)  # BrokenResourceError if the run closed the receiving end
    assert receive.receive_nowait() == 99
    send.close()
    with pytest.raises(trio.EndOfChannel):
        receive.receive_nowait()


# -- defect 13: the failure hook gets the bare data ---------------------------------------------


class Failures(Instrument):
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any, Any]] = []

    def failure(self, stage: str, data: Any, reason: BaseException | str) -> None:
        self.seen.append((stage, data, reason))


async def test_failure_hook_gets_bare_data_from_a_messages_stage() -> None:
    """Defect 13: in a ``messages=True`` stage, ``failure`` receives the data (never a
    ``tf.Message``) whether the item was failed with ``message.fail`` or by an exception."""

    def check(m: tf.Message[int]) -> tf.Message[int]:
        if m.data == 1:
            return m.fail("odd")
        if m.data == 2:
            raise ValueError("two")
        return m

    hook = Failures()
    p = tf.from_iterable(range(4)) | tf.process(check, messages=True, name="check")
    with trio.fail_after(30):
        report = await p.run(telemetry=hook)
    assert report.failed == 2
    seen = sorted(((stage, data) for stage, data, _ in hook.seen), key=repr)
    assert seen == [("check", 1), ("check", 2)]


# -- defect 14: a misspelt option of a @tf.stage function ---------------------------------------


async def test_misspelt_stage_option_names_it_and_the_valid_ones() -> None:
    """Defect 14: ``decode(n=10, bufer=5)`` raises a TypeError naming ``bufer`` and listing the
    options; ``decode(n=10)`` still configures and ``await decode(item)`` still calls."""

    @tf.stage
    async def decode(raw: bytes) -> str:
        await trio.lowlevel.checkpoint()
        return raw.decode()

    with pytest.raises(TypeError, match="bufer") as info:
        decode(n=10, bufer=5)
    assert "buffer" in str(info.value)
    configured = decode(n=10)
    assert isinstance(configured, tf.Stage)
    assert configured.n == 10
    assert await decode(b"hi") == "hi"
