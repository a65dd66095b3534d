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
