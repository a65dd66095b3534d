"""Regressions of flow control (issue 17's review), each under MockClock: bad items and the
breaker, suspects under ``partition_by``, a raising retry predicate, events, resize after the
run, a source's item in hand at a drain, and the orders that the stage promises."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._operators._limit import PROBE_SAMPLES, GradientLimit
from trioflow.abc import Instrument
from trioflow.testing import TestSource


class States(Instrument):
    def __init__(self) -> None:
        self.states: list[str] = []
        self.exceptions = 0

    def breaker(self, stage: str, state: str) -> None:
        self.states.append(state)

    def stage_exception(self, stage: str, data: Any, exc: BaseException) -> None:
        self.exceptions += 1


# -- 1: bad items in a row and the breaker -----------------------------------------------------


@pytest.mark.parametrize(("failures", "bad"), [(1, 1), (5, 5), (2, 3), (3, 1)])
async def test_bad_items_that_open_the_breaker_do_not_keep_it_open(
    autojump_clock: trio.testing.MockClock, failures: int, bad: int
) -> None:
    src = TestSource(range(100))
    calls: list[int] = []

    async def save(x: int) -> None:
        calls.append(x)
        await trio.sleep(0.01)
        if 10 <= x < 10 + bad:
            raise ValueError(f"bad row {x}")

    sink = tf.sink(save, breaker=tf.Breaker(failures=failures, reset=5.0), name="save")
    with trio.fail_after(3600):
        report = await (src | sink).run()
    assert sorted(x for x, _ in src.failed) == list(range(10, 10 + bad))
    assert sorted(src.acked) == [x for x in range(100) if not 10 <= x < 10 + bad]
    assert report.stages["save"].breaker == "closed"
    # each bad item: its failed call(s), at most one probe, one call after the breaker closed
    assert len(calls) <= 100 + 2 * bad


async def test_probes_rotate_and_held_items_are_called_first_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # down until t=25; failures=2, reset=10: items 0 and 1 open the breaker at ~0. Probes: 0
    # (the oldest held) at ~10, then 1 (not 0 again) at ~20, then, every held item having
    # failed a probe, a fresh one (2) at ~30 that closes it; then the held ones, in order
    src = TestSource(range(6))
    calls: list[int] = []
    t0 = trio.current_time()

    async def save(x: int) -> None:
        calls.append(x)
        await trio.sleep(0.01)
        if trio.current_time() - t0 < 25.0:
            raise ConnectionError("down")

    states = States()
    sink = tf.sink(save, n=1, buffer=8, breaker=tf.Breaker(failures=2, reset=10.0))
    with trio.fail_after(3600):
        report = await (src | sink).run(telemetry=states)
    assert calls == [0, 1, 0, 1, 2, 0, 1, 3, 4, 5]
    assert report.failed == 0
    assert sorted(src.acked) == list(range(6))
    assert states.exceptions == 4  # once per failed call


async def test_an_item_failing_again_after_a_close_fails_without_reopening(
    autojump_clock: trio.testing.MockClock,
) -> None:
    src = TestSource(range(20))
    calls: list[int] = []

    async def save(x: int) -> None:
        calls.append(x)
        await trio.sleep(0.01)
        if x == 5:
            raise ValueError("bad row")

    states = States()
    sink = tf.sink(save, n=1, buffer=8, breaker=tf.Breaker(failures=1, reset=5.0))
    with trio.fail_after(3600):
        report = await (src | sink).run(telemetry=states)
    # 5 opens it, fails as the probe, 6 closes it, and 5's call after that judges it bad
    assert calls.count(5) == 3
    assert states.states == ["open", "half_open", "open", "half_open", "closed"]
    assert [x for x, _ in src.failed] == [5]
    assert report.failed == 1
    assert report.acked == 19


async def test_held_items_have_the_retry_deadline_as_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # nothing else to probe with: without a budget it would wait for ever (an outage)
    src = TestSource(range(1))
    calls = 0

    async def save(x: int) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad row")

    retry = tf.Retry(attempts=2, backoff=tf.Backoff.constant(1.0), deadline=20.0, hold=False)
    sink = tf.sink(save, retry=retry, breaker=tf.Breaker(failures=1, reset=5.0))
    with trio.fail_after(100):
        report = await (src | sink).run()
    assert report.failed == 1
    assert calls == 5  # the first call, then a probe every 5 s until 20 s had passed
    assert trio.current_time() >= 20.0


# -- 2: suspects under partition_by ------------------------------------------------------------


@pytest.mark.parametrize(("keys", "buffer", "items"), [(1, 16, 20), (1, 4, 50), (3, 2, 60)])
async def test_a_suspect_never_hangs_its_key(
    autojump_clock: trio.testing.MockClock, keys: int, buffer: int, items: int
) -> None:
    src = TestSource(range(items))
    seen: dict[int, list[int]] = {}

    async def fn(x: int) -> None:
        await trio.sleep(0.01)
        if x == 10:
            raise ValueError("bad row 10")
        seen.setdefault(x % keys, []).append(x)

    stage = tf.process(
        fn,
        n=2,
        buffer=buffer,
        partition_by=lambda x: x % keys,
        breaker=tf.Breaker(failures=5, reset=30.0),
    )
    with trio.fail_after(600):
        report = await (src | stage | tf.sink(print)).run()
    assert [x for x, _ in src.failed] == [10]
    assert report.acked == items - 1
    assert all(xs == sorted(xs) for xs in seen.values())


async def test_a_suspect_is_decided_after_reset_seconds_when_input_is_quiet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    failed_at: list[float] = []

    async def gen() -> AsyncIterator[int]:
        for i in range(3):
            yield i
        await trio.sleep(1000.0)  # the source is quiet: nothing will decide item 1

    async def fn(x: int) -> None:
        await trio.sleep(0.01)
        if x == 1:
            raise ValueError("bad")

    async def on_failure(messages: list[tf.Message[Any]]) -> None:
        failed_at.extend(trio.current_time() for _ in messages)

    stage = tf.process(fn, partition_by=lambda x: 0, breaker=tf.Breaker(failures=5, reset=10.0))
    pipeline = (tf.from_aiter(gen()) | stage | tf.sink(print)).on_failure(on_failure)
    with trio.fail_after(2000):
        report = await pipeline.run()
    assert report.failed == 1
    assert len(failed_at) == 1
    assert failed_at[0] < 20.0


# -- 3: a retry predicate that raises -----------------------------------------------------------


@pytest.mark.parametrize("hold", [True, False])
async def test_a_raising_retry_predicate_fails_the_item(
    autojump_clock: trio.testing.MockClock, hold: bool
) -> None:
    def transient(exc: BaseException) -> bool:
        return bool(exc.args[0]["transient"])  # a bug: args[0] is a str

    async def fn(x: int) -> int:
        await trio.sleep(0.01)
        if x == 3:
            raise ValueError("no dict here")
        return x

    src = TestSource(range(10))
    retry = tf.Retry(attempts=3, backoff=tf.Backoff.constant(1.0), on=transient, hold=hold)
    with trio.fail_after(3600):
        report = await (src | tf.process(fn, n=2, retry=retry, name="fn") | tf.sink(print)).run()
    assert report.failed_by_reason == {"RuntimeError": 1}
    ((item, reason),) = src.failed
    assert item == 3
    assert isinstance(reason, RuntimeError)
    text = str(reason)
    assert "Retry(on=" in text
    assert "transient" in text
    assert "TypeError" in text
    assert isinstance(reason.__cause__, TypeError)
    if not hold:
        assert "stage 'fn'" in text
        assert "item 3" in text
    else:  # the stage and item are on the failure's note
        assert any("'fn'" in note for note in getattr(reason, "__notes__", []))


# -- 4: stage_exception once per failed call -----------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"retry": tf.Retry(attempts=3, backoff=tf.Backoff.constant(1.0), hold=False)},
        {"breaker": tf.Breaker(failures=5)},
        {"n": tf.Adaptive(min=1, max=4)},
    ],
)
async def test_stage_exception_once_per_failed_call(
    autojump_clock: trio.testing.MockClock, options: dict[str, Any]
) -> None:
    calls = 0

    async def fn(x: int) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("x")

    states = States()
    with trio.fail_after(3600):
        report = await (tf.from_iterable([1]) | tf.sink(fn, **options)).run(telemetry=states)
    assert report.failed == 1
    assert states.exceptions == calls


# -- 5: resize after the run ended ---------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"n": 4}, {"n": 1}, {"n": 4, "breaker": tf.Breaker()}, {"n": 2, "partition_by": abs}],
)
@pytest.mark.parametrize("hard", [False, True])
async def test_resize_after_a_drain_timeout_or_hard_stop_is_a_no_op(
    autojump_clock: trio.testing.MockClock, options: dict[str, Any], hard: bool
) -> None:
    async def slow(x: int) -> None:
        await trio.sleep(100)

    stage = tf.process(
        slow,
        name="s",
        n=int(options["n"]),
        breaker=options.get("breaker"),
        partition_by=options.get("partition_by"),
    )
    pipeline = tf.from_iterable(range(100)) | stage | tf.sink(print)

    async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await pipeline.serve(drain_timeout=1.0, task_status=task_status)

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve)
        await trio.sleep(1)
        if hard:
            nursery.cancel_scope.cancel()
        else:
            handle.stop()
            report = await handle.wait()
            assert report.unsettled == 100
            assert report.stages["s"].workers == options["n"]
    handle.resize("s", 8)  # no error, nothing started
    with pytest.raises(ValueError, match="positive"):
        handle.resize("s", 0)  # still validated


# -- 6: a source's item in hand at the gate -------------------------------------------------------


@pytest.mark.parametrize("by", ["user", "breaker"])
async def test_an_item_held_at_the_pause_is_handed_over_on_drain(
    autojump_clock: trio.testing.MockClock, by: str
) -> None:
    pulled = 0

    async def gen() -> AsyncIterator[int]:  # never asks for demand: waits at the gate
        nonlocal pulled
        i = 0
        while True:
            await trio.sleep(0.01)
            pulled += 1
            yield i
            i += 1

    async def save(x: int) -> None:
        await trio.sleep(0.001)
        if by == "breaker" and 1 <= trio.current_time() < 60:
            raise ConnectionError("down")

    breaker = tf.Breaker(failures=3, reset=30.0)
    sink = tf.sink(save, n=2, buffer=100_000, breaker=breaker, name="s")
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_aiter(gen()) | sink).serve)
        if by == "user":
            await trio.sleep(1.0)
            handle.pause()
        await trio.sleep(20.0)
        assert handle.paused or by == "breaker"
        handle.stop()
        with trio.fail_after(3600):
            report = await handle.wait()
    assert report.received == pulled
    assert report.failed == 0


# -- 7: what the tests must be able to catch -----------------------------------------------------


async def test_an_open_breaker_pauses_a_source_the_buffer_would_not_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pulled = 0

    async def gen() -> AsyncIterator[int]:  # 100 items/s: the buffer never fills in this test
        nonlocal pulled
        i = 0
        while True:
            await trio.sleep(0.01)
            pulled += 1
            yield i
            i += 1

    t0 = trio.current_time()

    async def save(x: int) -> None:
        await trio.sleep(0.001)
        if 1 <= trio.current_time() - t0 < 60:
            raise ConnectionError("down")

    sink = tf.sink(save, n=2, buffer=10**6, breaker=tf.Breaker(failures=3, reset=30.0), name="s")
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_aiter(gen()) | sink).serve)
        await trio.sleep(10.0)
        assert handle.metrics.stages["s"].breaker == "open"
        before = pulled
        await trio.sleep(20.0)
        assert pulled - before <= 1  # the buffer had room for 2000: the pause stopped it
        handle.stop()
        with trio.fail_after(3600):
            await handle.wait()


async def test_a_due_retry_is_called_before_ready_items(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[int] = []
    failed_once: set[int] = set()

    async def fn(x: int) -> None:
        calls.append(x)
        await trio.sleep(0.3)
        if x == 0 and x not in failed_once:
            failed_once.add(x)
            raise ConnectionError("flaky")

    retry = tf.Retry(attempts=2, backoff=tf.Backoff.constant(1.0), hold=False)
    src = TestSource(range(8))
    with trio.fail_after(3600):
        await (src | tf.sink(fn, n=1, buffer=8, retry=retry)).run()
    # 0 fails at 0.3 and is due at 1.3: 4 is running then (1.2 to 1.5), 0 goes next, before 5
    assert calls == [0, 1, 2, 3, 4, 0, 5, 6, 7]


def _feed(limit: GradientLimit, rtt: float, in_flight: int, now: float) -> None:
    """One window (or the first measurement) of calls of ``rtt`` seconds."""
    epoch = limit.epoch
    count = PROBE_SAMPLES if limit.probing else max(4, limit.limit)
    for _ in range(count):
        limit.started(in_flight)
    for _ in range(count):
        limit.finished(epoch, rtt, now)


def test_adaptive_slow_start_doubles_until_queueing() -> None:
    limit = GradientLimit(tf.Adaptive(min=1, max=1000), 0.0)
    _feed(limit, 0.1, 1, 0.0)  # min_rtt
    _feed(limit, 0.1, 1, 0.1)  # the window after a measurement is not judged
    seen: list[int] = []
    for i in range(5):
        _feed(limit, 0.1, limit.limit, 0.2 + i / 10)
        seen.append(limit.limit)
    assert seen == [2, 4, 8, 16, 32]
    _feed(limit, 0.2, limit.limit, 1.0)  # queueing: slow start ends, the gradient shrinks it
    assert limit.limit < 32
    assert not limit.slow_start


def test_adaptive_starved_input_does_not_grow_the_limit() -> None:
    limit = GradientLimit(tf.Adaptive(min=1, max=1000, initial=20), 0.0)
    _feed(limit, 0.1, 2, 0.0)
    _feed(limit, 0.1, 2, 0.1)
    for i in range(5):
        _feed(limit, 0.1, 2, 0.2 + i / 10)  # only 2 calls at once: no evidence for more
        assert limit.limit == 20


def test_adaptive_starts_at_initial() -> None:
    assert GradientLimit(tf.Adaptive(min=1, max=64, initial=12), 0.0).limit == 12
    assert GradientLimit(tf.Adaptive(min=3, max=64), 0.0).limit == 3
