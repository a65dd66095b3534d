"""The reconnect loop of broker sources (``trioflow.connectors.Reconnect``), with a fake session:
the servers themselves are restarted in each connector's tests."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
import trioflow.abc
from trioflow.connectors import Reconnect, SourceUnavailable
from trioflow.connectors._reconnect import Outage, keep_connected


class Events(tf.abc.Instrument):
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def source_disconnected(
        self, source: str, exc: BaseException, attempt: int, delay: float
    ) -> None:
        self.seen.append(("down", source, type(exc).__name__, attempt))

    def source_reconnected(self, source: str, attempts: int, downtime: float) -> None:
        self.seen.append(("up", source, attempts, round(downtime, 3)))


class Flaky(tf.abc.Source[int]):
    """Fails ``failures`` times with ``error`` before it connects, then hands ``items`` over."""

    def __init__(self, failures: int, error: BaseException, policy: Reconnect | None) -> None:
        self.failures = failures
        self.error = error
        self.policy = policy
        self.sessions = 0

    async def produce(self, out: tf.abc.Outlet) -> None:
        async def session(connected: Any) -> None:
            self.sessions += 1
            if self.sessions <= self.failures:
                await trio.sleep(0.5)  # connecting takes a while, then fails
                raise self.error
            connected()
            await out.send_many([1, 2, 3])

        await keep_connected(out, self.policy, session, what="flaky")

    @property
    def label(self) -> str:
        return "flaky"


async def test_a_lost_connection_is_retried_with_backoff_and_reported(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    events = Events()
    policy = Reconnect(backoff=tf.Backoff.constant(1.0), give_up_after=60.0)
    src = Flaky(3, ConnectionResetError("reset by peer"), policy)
    with caplog.at_level(logging.WARNING, logger="trioflow"):
        report = await (src | tf.sink(lambda x: None)).run(telemetry=events)
    assert report.acked == 3
    assert src.sessions == 4
    assert events.seen == [
        ("down", "flaky", "ConnectionResetError", 1),
        ("down", "flaky", "ConnectionResetError", 2),
        ("down", "flaky", "ConnectionResetError", 3),
        ("up", "flaky", 3, 4.0),  # three tries of 0.5 s, three waits of 1 s, one more 0.5 s
    ]
    assert "lost its connection (ConnectionResetError: reset by peer)" in caplog.text
    assert "reconnected after 4.0 s (3 attempt(s))" in caplog.text


async def test_an_exception_group_of_connection_errors_is_transient(
    autojump_clock: trio.testing.MockClock,
) -> None:
    error = ExceptionGroup("channel", [ConnectionError("closed"), EOFError()])
    src = Flaky(1, error, Reconnect(backoff=tf.Backoff.constant(0.1)))
    report = await (src | tf.sink(lambda x: None)).run()
    assert report.acked == 3


async def test_an_outage_past_give_up_after_fails_the_run_naming_the_source(
    autojump_clock: trio.testing.MockClock,
) -> None:
    src = Flaky(10**6, ConnectionRefusedError("refused"), Reconnect(give_up_after=30.0))
    start = trio.current_time()
    with pytest.raises(tf.PipelineError) as info:
        await (src | tf.sink(lambda x: None)).run()
    cause = info.value.__cause__
    assert isinstance(cause, SourceUnavailable)
    assert str(cause).startswith("flaky: no connection for 30.")
    assert "last error: ConnectionRefusedError: refused" in str(cause)
    assert 30.0 <= trio.current_time() - start <= 31.0


async def test_without_a_policy_or_for_other_errors_the_first_failure_is_final(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(tf.PipelineError):
        await (Flaky(1, ConnectionError("x"), None) | tf.sink(lambda x: None)).run()
    src = Flaky(1, ValueError("a bug, not a network"), Reconnect())
    with pytest.raises(tf.PipelineError):
        await (src | tf.sink(lambda x: None)).run()
    assert src.sessions == 1


def test_the_policy_validates_its_limit() -> None:
    with pytest.raises(ValueError, match=r"give_up_after=-1"):
        Reconnect(give_up_after=-1)
    assert Reconnect(give_up_after=None).give_up_after is None


async def test_an_outage_waits_the_backoff_never_past_give_up_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # the one count of tries that the reconnect loop and Redis's ack retries share
    outage = Outage(Reconnect(backoff=tf.Backoff.constant(4.0), give_up_after=10.0))
    waits: list[float] = []
    while (delay := outage.next_delay()) is not None:
        waits.append(delay)
        await trio.sleep(delay)
    assert waits == [4.0, 4.0, 2.0]  # the last wait ends at give_up_after
    assert (outage.attempt, outage.elapsed) == (4, 10.0)
    forever = Outage(Reconnect(backoff=tf.Backoff.constant(100.0), give_up_after=None))
    assert [forever.next_delay() for _ in range(3)] == [100.0] * 3
