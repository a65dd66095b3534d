"""``Retry`` and ``Backoff``: attempts, exact delays in virtual time, filtering, reporting."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import trio

import trioflow as tf
from trioflow.testing import TestSource


def flaky(fails: int, exc: type[Exception] = ConnectionError):  # type: ignore[no-untyped-def]
    """A function failing ``fails`` times per item, recording the time of each call."""
    calls: dict[int, list[float]] = {}

    async def fn(x: int) -> int:
        times = calls.setdefault(x, [])
        times.append(trio.current_time())
        if len(times) <= fails:
            raise exc(f"try {len(times)}")
        return x

    return fn, calls


async def test_attempts_counts_every_call(autojump_clock: trio.testing.MockClock) -> None:
    fn, calls = flaky(fails=10)
    src = TestSource([7])
    report = await (
        src | tf.process(fn, retry=tf.Retry(attempts=3, backoff=tf.Backoff.constant(1)))
    ).run()
    assert len(calls[7]) == 3
    assert report.retried == 2
    [(data, reason)] = src.failed
    assert data == 7
    assert isinstance(reason, ConnectionError)
    assert str(reason) == "try 3"


async def test_success_after_retries(autojump_clock: trio.testing.MockClock) -> None:
    fn, _calls = flaky(fails=2)
    src = TestSource([1, 2])
    report = await (
        src | tf.sink(fn, retry=tf.Retry(attempts=3, backoff=tf.Backoff.constant(0.5)))
    ).run()
    assert src.acked == [1, 2]
    assert report.retried == 4
    assert report.failed == 0


async def test_exponential_backoff_delays_exact(autojump_clock: trio.testing.MockClock) -> None:
    fn, calls = flaky(fails=10)
    backoff = tf.Backoff.exponential(0.1, factor=3.0, max=2.0)
    await (
        tf.from_iterable([0]) | tf.process(fn, retry=tf.Retry(attempts=6, backoff=backoff))
    ).run()
    times = calls[0]
    gaps = [round(b - a, 9) for a, b in itertools.pairwise(times)]
    # min(max, base * factor**(k-1)) for k = 1..5
    assert gaps == [0.1, 0.3, 0.9, 2.0, 2.0]


async def test_exponential_default_factor_is_two(autojump_clock: trio.testing.MockClock) -> None:
    fn, calls = flaky(fails=10)
    await (
        tf.from_iterable([0])
        | tf.process(fn, retry=tf.Retry(attempts=5, backoff=tf.Backoff.exponential(0.25)))
    ).run()
    times = calls[0]
    assert [b - a for a, b in itertools.pairwise(times)] == [0.25, 0.5, 1.0, 2.0]


async def test_constant_backoff(autojump_clock: trio.testing.MockClock) -> None:
    fn, calls = flaky(fails=10)
    t0 = trio.current_time()
    await (
        tf.from_iterable([0])
        | tf.process(fn, retry=tf.Retry(attempts=4, backoff=tf.Backoff.constant(1.5)))
    ).run()
    assert [t - t0 for t in calls[0]] == [0.0, 1.5, 3.0, 4.5]
    assert trio.current_time() - t0 == 4.5


def test_backoff_delay_values() -> None:
    b = tf.Backoff.exponential(0.1, max=5.0)
    assert [b.delay(k) for k in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.8]
    assert b.delay(100) == 5.0
    assert b.delay(10_000) == 5.0  # no overflow
    assert tf.Backoff.exponential(1.0).max == math.inf
    assert tf.Backoff.constant(2.0).delay(9) == 2.0


def test_jitter_draws_within_zero_and_delay() -> None:
    random.seed(1)
    b = tf.Backoff.exponential(1.0, factor=2.0, max=3.0, jitter=True)
    for k, cap in [(1, 1.0), (2, 2.0), (3, 3.0), (9, 3.0)]:
        draws = [b.delay(k) for _ in range(500)]
        assert all(0.0 <= d <= cap for d in draws)
        assert max(draws) > 0.8 * cap
        assert min(draws) < 0.2 * cap


async def test_jittered_waits_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    fn, calls = flaky(fails=10)
    backoff = tf.Backoff.exponential(1.0, jitter=True)
    await (
        tf.from_iterable([0]) | tf.process(fn, retry=tf.Retry(attempts=4, backoff=backoff))
    ).run()
    times = calls[0]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert [0 <= g <= cap for g, cap in zip(gaps, [1.0, 2.0, 4.0], strict=True)] == [True] * 3


async def test_on_filters_retried_exceptions(autojump_clock: trio.testing.MockClock) -> None:
    retry = tf.Retry(attempts=5, backoff=tf.Backoff.constant(1), on=(ConnectionError,))
    conn, conn_calls = flaky(fails=10, exc=ConnectionError)
    val, val_calls = flaky(fails=10, exc=ValueError)
    r1 = await (tf.from_iterable([0]) | tf.process(conn, retry=retry)).run()
    r2 = await (tf.from_iterable([0]) | tf.process(val, retry=retry)).run()
    assert len(conn_calls[0]) == 5
    assert len(val_calls[0]) == 1  # not in `on`: fails at once
    assert (r1.retried, r2.retried) == (4, 0)
    assert r2.failed_by_reason == {"ValueError": 1}


def test_retry_on_accepts_single_class() -> None:
    assert tf.Retry(on=KeyError).on == (KeyError,)


async def test_retry_holds_worker_slot(autojump_clock: trio.testing.MockClock) -> None:
    running = peak = 0

    async def fn(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(0.1)
        running -= 1
        raise ConnectionError

    retry = tf.Retry(attempts=3, backoff=tf.Backoff.constant(1.0))
    t0 = trio.current_time()
    report = await (tf.from_iterable(range(4)) | tf.process(fn, n=2, retry=retry, buffer=2)).run()
    assert peak == 2
    # each item: 3 calls of 0.1 s and 2 waits of 1 s = 2.3 s; two workers, two items each
    assert round(trio.current_time() - t0, 9) == 4.6
    assert (report.failed, report.retried) == (4, 8)


async def test_retry_with_timeout_per_call(autojump_clock: trio.testing.MockClock) -> None:
    calls: list[float] = []

    async def hang(x: int) -> int:
        calls.append(trio.current_time())
        await trio.sleep(10)
        return x

    t0 = trio.current_time()
    src = TestSource([1])
    await (
        src
        | tf.process(
            hang, timeout=1.0, retry=tf.Retry(attempts=2, backoff=tf.Backoff.constant(0.5))
        )
    ).run()
    assert [t - t0 for t in calls] == [0.0, 1.5]
    assert isinstance(src.failed[0][1], tf.StageTimeout)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: tf.Retry(attempts=0), r"^attempts=0 must be a positive integer$"),
        (lambda: tf.Backoff.exponential(-1), r"^base=-1 must be a non-negative number$"),
        (lambda: tf.Backoff.exponential(1, factor=0.5), r"^factor=0.5 must be a number >= 1$"),
        (lambda: tf.Backoff.constant(-0.1), r"^seconds=-0.1 must be a non-negative number$"),
    ],
)
def test_policy_validation(make, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        make()


def test_retry_must_be_a_retry() -> None:
    with pytest.raises(TypeError, match=r"^retry=3 must be a trioflow.Retry or None$"):
        tf.process(print, retry=3)  # type: ignore[arg-type]


# -- Retry(on=predicate, deadline=, hold=) ------------------------------------------------------


async def test_on_predicate(autojump_clock: trio.testing.MockClock) -> None:
    def transient(exc: BaseException) -> bool:
        return isinstance(exc, OSError) and exc.errno == 11

    retry = tf.Retry(attempts=4, backoff=tf.Backoff.constant(1), on=transient)
    calls: list[int] = []

    async def fn(x: int) -> int:
        calls.append(x)
        raise OSError(11 if x == 0 else 2, "busy")

    report = await (tf.from_iterable([0, 1]) | tf.process(fn, retry=retry)).run()
    assert calls.count(0) == 4  # retried: the predicate says so
    assert calls.count(1) == 1  # not retried
    assert report.retried == 3


async def test_on_predicate_looks_inside_groups(autojump_clock: trio.testing.MockClock) -> None:
    retry = tf.Retry(attempts=3, backoff=tf.Backoff.constant(1), on=lambda e: "busy" in str(e))
    calls: list[int] = []

    async def fn(x: int) -> int:
        calls.append(x)
        raise ExceptionGroup(
            "g", [ValueError("busy")] if x == 0 else [ValueError("busy"), KeyError()]
        )

    await (tf.from_iterable([0, 1]) | tf.process(fn, retry=retry)).run()
    assert (calls.count(0), calls.count(1)) == (3, 1)


async def test_deadline_bounds_the_time_spent(autojump_clock: trio.testing.MockClock) -> None:
    fn, calls = flaky(fails=100)
    src = TestSource([0])
    retry = tf.Retry(attempts=100, backoff=tf.Backoff.constant(1.0), deadline=3.5)
    await (src | tf.process(fn, retry=retry)).run()
    t0 = calls[0][0]
    # calls at 0, 1, 2, 3; a retry at 4 would pass the deadline of 3.5 s
    assert [t - t0 for t in calls[0]] == [0.0, 1.0, 2.0, 3.0]
    assert str(src.failed[0][1]) == "try 4"


@pytest.mark.parametrize("hold", [True, False])
async def test_hold_false_frees_the_worker(
    autojump_clock: trio.testing.MockClock, hold: bool
) -> None:
    done: dict[int, float] = {}
    tries: dict[int, int] = {}

    async def fn(x: int) -> int:
        tries[x] = tries.get(x, 0) + 1
        await trio.sleep(0.1)
        if x == 0 and tries[x] < 3:
            raise ConnectionError("busy")
        done[x] = trio.current_time()
        return x

    src = TestSource(range(10))
    t0 = trio.current_time()
    retry = tf.Retry(attempts=3, backoff=tf.Backoff.constant(10.0), hold=hold)
    report = await (src | tf.sink(fn, retry=retry)).run()
    assert sorted(src.acked) == list(range(10))
    assert report.retried == 2
    others = max(done[x] for x in range(1, 10)) - t0
    if hold:
        assert others == pytest.approx(20.0 + 1.2)  # they waited behind item 0's backoff
    else:
        assert others == pytest.approx(1.0)  # they went on meanwhile
        assert done[0] - t0 == pytest.approx(20.3)


async def test_hold_false_keeps_key_order(autojump_clock: trio.testing.MockClock) -> None:
    order: list[int] = []
    tries: dict[int, int] = {}

    async def fn(x: int) -> int:
        tries[x] = tries.get(x, 0) + 1
        await trio.sleep(0.1)
        if x % 7 == 0 and tries[x] == 1:
            raise ConnectionError("busy")
        order.append(x)
        return x

    retry = tf.Retry(attempts=2, backoff=tf.Backoff.constant(5.0), hold=False)
    src = TestSource(range(60))
    await (
        src | tf.process(fn, n=4, partition_by=lambda x: x % 3, retry=retry) | tf.sink(print)
    ).run()
    assert sorted(order) == list(range(60))
    for key in range(3):
        mine = [x for x in order if x % 3 == key]
        assert mine == sorted(mine)
    # and the keys without a waiting item went on: item 1 (key 1) was done before item 0
    assert order.index(1) < order.index(0)


async def test_hold_false_in_flight_bound(autojump_clock: trio.testing.MockClock) -> None:
    # every item fails once and waits 100 s: the stage holds at most max(buffer, n) of them
    tries: dict[int, int] = {}

    async def fn(x: int) -> None:
        tries[x] = tries.get(x, 0) + 1
        if tries[x] == 1:
            raise ConnectionError("busy")

    src = TestSource(range(200))
    retry = tf.Retry(attempts=2, backoff=tf.Backoff.constant(100.0), hold=False)
    peak = 0
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((src | tf.sink(fn, n=2, buffer=8, retry=retry)).serve)
        for _ in range(50):
            await trio.sleep(10.0)
            peak = max(peak, src.pulled - src.settled)
        await handle.wait()
    assert sorted(src.acked) == list(range(200))
    # the entry buffer (8) and the stage's cap (max(8, 2)): held, and reached
    assert peak == 16


@pytest.mark.parametrize("hold", [True, False])
async def test_attempt_in_metadata(autojump_clock: trio.testing.MockClock, hold: bool) -> None:
    seen: list[tuple[int, int]] = []

    async def fn(message: tf.Message[int]) -> tf.Message[int]:
        seen.append((message.data, message.metadata["attempt"]))
        if message.metadata["attempt"] < 3:
            raise ConnectionError("busy")
        return message

    retry = tf.Retry(attempts=3, backoff=tf.Backoff.constant(1.0), hold=hold)
    src = TestSource([5])
    await (src | tf.process(fn, messages=True, retry=retry) | tf.sink(print)).run()
    assert seen == [(5, 1), (5, 2), (5, 3)]
    assert src.acked == [5]


def test_new_options_repr_and_validation() -> None:
    def transient(exc: BaseException) -> bool:
        return True

    assert repr(tf.Retry(on=transient, deadline=60.0, hold=False)) == (
        "Retry(attempts=3, on=test_new_options_repr_and_validation.<locals>.transient, "
        "deadline=60.0, hold=False)"
    )
    assert tf.Retry(on=transient).on is transient
    assert tf.Retry().deadline is None
    assert tf.Retry().hold is True
    with pytest.raises(
        ValueError, match=r"^deadline=0 must be a positive number of seconds or None$"
    ):
        tf.Retry(deadline=0)
    with pytest.raises(TypeError, match=r"must be a tuple of Exception subclasses or a predicate"):
        tf.Retry(on=(KeyError, 3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^hold=1 must be True or False$"):
        tf.Retry(hold=1)  # type: ignore[arg-type]


async def test_hold_false_with_ordered_emits_in_input_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tries: dict[int, int] = {}

    async def fn(x: int) -> int:
        tries[x] = tries.get(x, 0) + 1
        await trio.sleep(0.1)
        if x % 5 == 0 and tries[x] == 1:
            raise ConnectionError("busy")
        return x

    out: list[int] = []
    retry = tf.Retry(attempts=2, backoff=tf.Backoff.constant(3.0), hold=False)
    stage = tf.process(fn, n=4, ordered=True, retry=retry)
    await (tf.from_iterable(range(40)) | stage | tf.sink(out.append)).run()
    assert out == list(range(40))
