"""The PostgreSQL sink's own retries: a budget in seconds, counted in the run like a stage's."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.abc import Instrument
from trioflow.connectors.postgres import PostgresSink, TransientDatabaseError
from trioflow.observe import prometheus_text

from .servers import free_port

psycopg = pytest.importorskip("psycopg")


class Retries(Instrument):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any, int, str, float]] = []

    def retry(self, stage: str, data: Any, attempt: int, exc: BaseException, delay: float) -> None:
        self.events.append((stage, data, attempt, type(exc).__name__, delay))


def unreachable_dsn() -> str:
    # a real connection attempt, refused: nothing listens on the port
    return f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres"


async def test_the_default_budget_retries_for_30_seconds_and_every_retry_is_counted(
    autojump_clock: trio.abc.Clock,
) -> None:
    row = {"id": 1, "name": "a", "n": 1}
    save = PostgresSink(unreachable_dsn(), "t", key="id")  # the defaults, as a user gets them
    failed: list[tf.Message[Any]] = []
    retries = Retries()
    pipeline = (tf.from_iterable([row]) | tf.sink(save)).on_failure(failed.extend)
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            lambda task_status: pipeline.serve(telemetry=retries, task_status=task_status)
        )
        report = await handle.wait()
    elapsed = trio.current_time() - started
    text = prometheus_text(handle, pipeline="p").decode()

    [message] = failed
    assert isinstance(message.reason, TransientDatabaseError)
    attempts = save.retried + 1
    assert str(message.reason).endswith(f"(after {attempts} attempts in 30.0 s)")
    assert math.isclose(elapsed, 30.0)  # the budget, not 0.75 s
    assert attempts >= 15  # waits of at most 2 s (jittered) the whole time
    # counted where a stage's own Retry is counted: the report, Prometheus, instruments
    assert report.retried == save.retried
    assert f'trioflow_retried_total{{pipeline="p"}} {float(save.retried)}' in text
    [stage] = report.stages
    assert [e[0] for e in retries.events] == [stage] * save.retried
    assert [e[2] for e in retries.events] == list(range(2, attempts + 1))
    assert {(repr(e[1]), e[3]) for e in retries.events} == {(repr(row), "OperationalError")}
    delays = [e[4] for e in retries.events]
    assert all(0 <= d <= 2.0 for d in delays)
    assert math.isclose(sum(delays), 30.0)  # the last wait was cut to end at the deadline


async def test_retry_deadline_and_attempts_both_bound_the_retries(
    autojump_clock: trio.abc.Clock,
) -> None:
    row = {"id": 1, "name": "a", "n": 1}
    constant = tf.Retry(attempts=100, backoff=tf.Backoff.constant(1.0))
    short = PostgresSink(unreachable_dsn(), "t", key="id", retry=constant, retry_deadline=2.5)
    with pytest.raises(TransientDatabaseError, match=r"\(after 4 attempts in 2\.5 s\)$"):
        await short([row])  # called outside a pipeline: counted on the sink only
    assert short.retried == 3
    few = PostgresSink(
        unreachable_dsn(), "t", key="id", retry=tf.Retry(attempts=3), retry_deadline=None
    )
    with pytest.raises(TransientDatabaseError, match=r"\(after 3 attempts in "):
        await few([row])
    assert few.retried == 2


async def test_a_retrys_own_deadline_bounds_the_sink_and_wins_over_retry_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    row = {"id": 1, "name": "a", "n": 1}
    policy = tf.Retry(attempts=100, backoff=tf.Backoff.constant(1.0), deadline=2.5)
    for save in (
        PostgresSink(unreachable_dsn(), "t", key="id", retry=policy),
        PostgresSink(unreachable_dsn(), "t", key="id", retry=policy, retry_deadline=60.0),
    ):
        assert save.retry_deadline == 2.5
        started = trio.current_time()
        with pytest.raises(TransientDatabaseError, match=r"\(after 4 attempts in 2\.5 s\)$"):
            await save([row])
        assert trio.current_time() - started == 2.5
    # without a deadline of its own, retry_deadline (default 30 s) is the bound
    plain = tf.Retry(attempts=100, backoff=tf.Backoff.constant(1.0))
    assert PostgresSink("dsn", "t", key="id", retry=plain).retry_deadline == 30.0


def test_retry_deadline_is_checked() -> None:
    for bad in (-1, "30", math.nan):
        with pytest.raises(
            ValueError, match=r"^retry_deadline=.* must be a non-negative number or None$"
        ):
            PostgresSink("dsn", "t", key="id", retry_deadline=bad)  # type: ignore[arg-type]


async def test_a_sink_function_counts_its_own_retries_from_its_task_or_a_thread(
    autojump_clock: trio.abc.Clock,
) -> None:
    from trioflow._operators._context import note_retry

    def in_thread(item: int) -> None:
        assert note_retry(item, 2, ConnectionError("lost"), 0.5)

    async def save(items: list[int]) -> None:
        assert note_retry(items, 2, ConnectionError("lost"), 0.25)
        await trio.sleep(0.25)
        await trio.to_thread.run_sync(in_thread, items[0])

    retries = Retries()
    report = await (tf.from_iterable(range(4)) | tf.batch(2) | tf.sink(save)).run(telemetry=retries)
    assert report.retried == 4
    assert [(e[1], e[4]) for e in retries.events] == [
        ([0, 1], 0.25),
        (0, 0.5),
        ([2, 3], 0.25),
        (2, 0.5),
    ]
    assert not note_retry(None, 2, ConnectionError("lost"), 0.0)  # no stage here
