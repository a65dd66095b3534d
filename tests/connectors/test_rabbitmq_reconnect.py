"""RabbitQueueSource when the broker goes away: it reconnects, loses nothing, never acks a tag
of a dead channel, and gives up with ``PipelineError`` (CLI exit 3) after ``give_up_after``.

The broker is real: connections are closed from the server side (``rabbitmqctl
close_all_connections``, on the session's broker) or the broker itself is stopped and started
again (a broker of the test's own, since that takes 5-10 s).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf
import trioflow.abc
from trioflow.connectors.rabbitmq import RabbitQueueSource, connect, open_channel, publish

from .rabbit_server import RabbitServer, own_broker, shared_broker

pytestmark = pytest.mark.server

N = 300


@pytest.fixture
def rabbit(request: pytest.FixtureRequest) -> RabbitServer:
    return shared_broker(request.config)


@pytest.fixture(scope="module")
def own() -> Iterator[RabbitServer]:
    with own_broker() as server:
        yield server


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> str:
    return f"qr-{request.node.name}"


class Events(tf.abc.Instrument):
    """Records the reconnect telemetry."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def source_disconnected(
        self, source: str, exc: BaseException, attempt: int, delay: float
    ) -> None:
        self.seen.append(("down", source))

    def source_reconnected(self, source: str, attempts: int, downtime: float) -> None:
        self.seen.append(("up", source))


async def fill(port: int, queue: str, bodies: list[bytes]) -> None:
    async with RabbitQueueSource(queue, port=port).open():  # declares the queue and dead letter
        pass
    async with connect(port=port) as conn, open_channel(conn) as ch:
        await ch.queue_purge(queue)
        await ch.queue_purge(f"{queue}.dead")
        await publish(ch, queue, bodies)


async def counts(port: int, *queues: str) -> list[int]:
    async with connect(port=port) as conn, open_channel(conn) as ch:
        return [(await ch.queue_declare(q, passive=True)).message_count for q in queues]


async def until(condition: Any, timeout: float) -> None:
    with trio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - the broker's effects are polled
            await trio.sleep(0.02)


def bodies() -> list[bytes]:
    return [b"%d" % i for i in range(N)]


async def test_closed_connections_reconnect_without_loss_or_stale_acks(
    rabbit: RabbitServer, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker closes the connection while 20 messages are in flight: the source reconnects;
    their acks and dead-letters (tags of the dead channel) are dropped, not sent on the new
    channel; they come again, so every message is settled, and dead-lettered exactly once."""
    await fill(rabbit.port, queue, bodies())
    seen: list[bytes] = []
    # work waits while the connections are closed, so messages are in flight then (rabbitmqctl
    # takes a second or two to start: without the gate the run could be over before it acts)
    gate = trio.Event()

    async def slow(body: bytes) -> None:
        if len(seen) >= 60:
            await gate.wait()
        await trio.sleep(0.01)
        seen.append(body)
        if int(body) % 50 == 0:
            raise ValueError("bad")

    events = Events()
    source = RabbitQueueSource(queue, port=rabbit.port, prefetch=20)
    with caplog.at_level(logging.INFO, logger="trioflow"), trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(
                partial((source | tf.sink(slow, n=5)).serve, telemetry=events)
            )
            await until(lambda: len(seen) >= 60, 20)
            await trio.to_thread.run_sync(rabbit.close_all_connections)
            await until(lambda: ("down", source.label) in events.seen, 10)
            gate.set()
            await until(lambda: len(set(seen)) >= N and handle.metrics.unsettled == 0, 30)
            await until(
                lambda: handle.metrics.received == handle.metrics.acked + handle.metrics.failed, 10
            )
            handle.stop()
    report = handle.report
    assert report is not None
    assert sorted(set(seen)) == sorted(bodies())  # nothing lost
    figures = report.sources[source.label]
    # usually 1; 2 when the new connection came up (a 0-jittered retry) while rabbitmqctl was
    # still closing connections, and was closed too
    reconnects = figures["reconnects"]
    assert 1 <= reconnects <= 2
    assert figures["channel_generation"] == reconnects + 1
    duplicated = len(seen) - N
    # seen twice: those whose settlement the source dropped with the dead channel, and those
    # whose ack was sent but not taken by the broker before it closed the connection; never
    # more than the broker had out un-acked (the prefetch)
    assert figures["redelivered_after_reconnect"] <= duplicated <= 20 * reconnects
    assert report.unsettled == 0
    assert report.ack_errors == 0
    # the broker holds nothing un-acked, and each bad message is dead-lettered once
    assert await counts(rabbit.port, queue, f"{queue}.dead") == [0, N // 50]
    assert figures["acked"] + figures["dead_lettered"] == N
    assert events.seen == [("down", source.label), ("up", source.label)] * int(reconnects)
    text = caplog.text
    assert "lost its connection (ConnectionLost: UnexpectedCloseError: connection_forced" in text
    assert "were in flight when channel 1 was lost" in text
    assert "reconnected after" in text


async def test_broker_restart_reconnects_and_loses_nothing(own: RabbitServer, queue: str) -> None:
    """A real broker restart (clean shutdown, 5-10 s down) in the middle of a run."""
    await fill(own.port, queue, bodies())
    seen: list[bytes] = []

    async def slow(body: bytes) -> None:
        await trio.sleep(0.01)
        seen.append(body)

    events = Events()
    source = RabbitQueueSource(
        queue,
        port=own.port,
        prefetch=20,
        reconnect=tf.connectors.Reconnect(backoff=tf.Backoff.constant(0.2), give_up_after=60.0),
    )
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(
                partial((source | tf.sink(slow, n=5)).serve, telemetry=events)
            )
            await until(lambda: len(seen) >= 60, 20)
            await trio.to_thread.run_sync(own.restart)
            await until(lambda: len(set(seen)) >= N, 30)
            await until(lambda: handle.metrics.received == handle.metrics.acked, 10)
            handle.stop()
    report = handle.report
    assert report is not None
    assert sorted(set(seen)) == sorted(bodies())
    figures = report.sources[source.label]
    assert figures["reconnects"] == 1
    assert (report.failed, report.unsettled, report.ack_errors) == (0, 0, 0)
    assert await counts(own.port, queue) == [0]
    assert events.seen[0] == ("down", source.label)
    assert events.seen[-1] == ("up", source.label)
    assert events.seen.count(("up", source.label)) == 1


async def test_a_drain_during_an_outage_ends_and_loses_nothing(
    own: RabbitServer, queue: str
) -> None:
    await fill(own.port, queue, bodies())
    seen: list[bytes] = []

    async def slow(body: bytes) -> None:
        await trio.sleep(0.01)
        seen.append(body)

    events = Events()
    source = RabbitQueueSource(
        queue,
        port=own.port,
        prefetch=20,
        reconnect=tf.connectors.Reconnect(backoff=tf.Backoff.constant(0.2), give_up_after=600),
    )
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                handle = await nursery.start(
                    partial((source | tf.sink(slow, n=5)).serve, telemetry=events)
                )
                await until(lambda: len(seen) >= 60, 20)
                await trio.to_thread.run_sync(own.stop)
                await until(lambda: ("down", source.label) in events.seen, 10)
                await trio.sleep(1.0)  # a few tries fail
                handle.stop()
                with trio.fail_after(10):  # the drain ends although the broker is away
                    while handle.report is None:  # noqa: ASYNC110
                        await trio.sleep(0.05)
    finally:
        await trio.to_thread.run_sync(own.start)
    report = handle.report
    figures = report.sources[source.label]
    assert report.unsettled == 0
    assert figures["reconnects"] == 0
    # what the broker got acks for is gone; everything else is back in the queue
    left = (await counts(own.port, queue))[0]
    assert left + figures["acked"] == N
    assert left > 0


PIPELINE = textwrap.dedent(
    """
    import os
    import trio
    import trioflow as tf
    from trioflow.connectors import Reconnect
    from trioflow.connectors.rabbitmq import RabbitQueueSource

    async def slow(body):
        print(body.decode(), flush=True)
        await trio.sleep(0.01)

    source = RabbitQueueSource(
        os.environ["RABBIT_QUEUE"], port=int(os.environ["RABBIT_PORT"]), prefetch=20,
        reconnect=Reconnect(backoff=tf.Backoff.constant(0.2), give_up_after=2.0),
    )
    pipeline = source | tf.sink(slow, n=5)
    """
)


async def test_the_cli_exits_3_when_the_broker_stays_away(
    own: RabbitServer, queue: str, tmp_path: Path
) -> None:
    await fill(own.port, queue, bodies())
    (tmp_path / "rabbit_pipeline.py").write_text(PIPELINE)
    proc = subprocess.Popen(  # noqa: ASYNC220 - waited for in a thread
        [
            sys.executable,
            "-m",
            "trioflow",
            "run",
            str(tmp_path / "rabbit_pipeline.py") + ":pipeline",
            "--no-progress",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "RABBIT_QUEUE": queue, "RABBIT_PORT": str(own.port)},
    )
    try:
        assert proc.stdout is not None
        for _ in range(40):
            await trio.to_thread.run_sync(proc.stdout.readline)
        await trio.to_thread.run_sync(own.stop)
        start = trio.current_time()
        _out, err = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=60))
        waited = trio.current_time() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await trio.to_thread.run_sync(own.start)
    stderr = err.decode()
    assert proc.returncode == 3, stderr
    assert "no connection for 2." in stderr
    assert "give_up_after=2.0" in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("trioflow: "), stderr
    assert "SourceUnavailable" in last, stderr
    assert waited < 20
    # nothing lost: what was not acked is back in the queue
    assert (await counts(own.port, queue))[0] > 0
