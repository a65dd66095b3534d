"""RabbitMQ queue source against a real broker on 127.0.0.1 (Debian's rabbitmq-server).

Each test uses its own queues. The broker is shared by the session (it takes 5-10 s to start).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.connectors.rabbitmq import RabbitQueueSource, connect, open_channel, publish

from .rabbit_server import RabbitServer, shared_broker

pytestmark = pytest.mark.server


@pytest.fixture
def rabbit(request: pytest.FixtureRequest) -> RabbitServer:
    return shared_broker(request.config)


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> str:
    return f"q-{request.node.name}"


async def until(condition: Any, timeout: float) -> None:
    """Poll ``condition`` (a broker's effects are not events we can wait on)."""
    with trio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.02)


async def counts(port: int, *queues: str) -> list[int]:
    async with connect(port=port) as conn, open_channel(conn) as ch:
        return [(await ch.queue_declare(q, passive=True)).message_count for q in queues]


async def fill(port: int, queue: str, bodies: list[bytes], **options: Any) -> None:
    source = RabbitQueueSource(queue, port=port, **options)
    async with source.open():  # declares the queue and its dead letter
        pass
    async with connect(port=port) as conn, open_channel(conn) as ch:
        await ch.queue_purge(queue)
        await publish(ch, queue, bodies)


async def test_consume_ack_and_dead_letter(rabbit: RabbitServer, queue: str) -> None:
    await fill(rabbit.port, queue, [b"%d" % i for i in range(300)])
    seen: list[int] = []

    def handle(body: bytes) -> None:
        if body == b"13":
            raise ValueError("unlucky")
        seen.append(int(body))

    source = RabbitQueueSource(queue, port=rabbit.port)
    async with trio.open_nursery() as nursery:
        handle_ = await nursery.start(
            (source | tf.process(handle, n=4) | tf.sink(lambda x: x)).serve
        )
        await until(lambda: not (handle_.metrics.acked + handle_.metrics.failed < 300), 10)
        handle_.stop()
    report = handle_.report
    assert report is not None
    assert (report.acked, report.failed, report.unsettled) == (299, 1, 0)
    assert sorted(seen) == [i for i in range(300) if i != 13]
    assert await counts(rabbit.port, queue, f"{queue}.dead") == [0, 1]
    async with connect(port=rabbit.port) as conn, open_channel(conn) as ch:
        dead = await ch.basic_get(f"{queue}.dead", no_ack=True)
    assert dead.body == b"13"
    assert dead.header.headers["x-death"][0]["reason"] == b"rejected"


async def test_prefetch_bounds_what_the_broker_hands_out(rabbit: RabbitServer, queue: str) -> None:
    await fill(rabbit.port, queue, [b"x"] * 200)
    gate = trio.Event()
    metas: list[dict[str, Any]] = []

    async def blocked(message: tf.Message[bytes]) -> tf.Message[bytes]:
        metas.append(message.metadata)
        await gate.wait()
        return message

    source = RabbitQueueSource(queue, port=rabbit.port, prefetch=30)
    pipeline = source | tf.sink(blocked, n=5, messages=True, buffer=10)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        await trio.sleep(0.5)
        ready = (await counts(rabbit.port, queue))[0]
        assert ready == 200 - 30  # the broker holds back what exceeds the prefetch
        assert handle.metrics.received == 15  # and the pipeline took only its demand
        gate.set()
        await until(lambda: not (handle.metrics.acked < 200), 10)
        handle.stop()
    assert await counts(rabbit.port, queue) == [0]
    m = metas[0]
    assert (m["queue"], m["redelivered"], m["deliveries"], m["delivery_mode"]) == (
        queue,
        False,
        1,
        2,
    )
    assert isinstance(m["delivery_tag"], int)


async def test_requeue_once_then_dead_letter(rabbit: RabbitServer, queue: str) -> None:
    await fill(rabbit.port, queue, [b"poison", b"ok"], on_failure="requeue_once")
    deliveries: list[tuple[bytes, bool]] = []

    async def handle(message: tf.Message[bytes]) -> tf.Message[bytes]:
        deliveries.append((message.data, message.metadata["redelivered"]))
        if message.data == b"poison":
            raise RuntimeError("always fails")
        return message

    source = RabbitQueueSource(
        queue, port=rabbit.port, on_failure="requeue_once", requeue_delay=0.2
    )
    async with trio.open_nursery() as nursery:
        handle_ = await nursery.start((source | tf.sink(handle, messages=True)).serve)
        await until(lambda: not (handle_.metrics.failed < 2), 10)
        handle_.stop()
    # the guard: requeued once, after the delay; the redelivery is rejected to the dead letter
    assert deliveries.count((b"poison", False)) == 1
    assert deliveries.count((b"poison", True)) == 1
    assert (b"ok", False) in deliveries
    assert await counts(rabbit.port, queue, f"{queue}.dead") == [0, 1]


async def test_drain_leaves_nothing_unacked(rabbit: RabbitServer, queue: str) -> None:
    await fill(rabbit.port, queue, [b"%d" % i for i in range(500)])
    got: list[bytes] = []

    async def slow(body: bytes) -> None:
        await trio.sleep(0.01)
        got.append(body)

    source = RabbitQueueSource(queue, port=rabbit.port, prefetch=50)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((source | tf.sink(slow, n=5)).serve)
        await trio.sleep(0.3)
        handle.stop()
    report = handle.report
    assert report is not None
    assert report.unsettled == 0
    assert 0 < report.acked < 500
    # what the pipeline never took went back to the queue when the channel closed
    assert await counts(rabbit.port, queue) == [500 - report.acked]


WORKER = textwrap.dedent(
    """
    import sys, trio
    import trioflow as tf
    from trioflow.connectors.rabbitmq import RabbitQueueSource

    async def slow(body):
        print(body.decode(), flush=True)
        await trio.sleep(3600)  # never finishes: everything it holds stays un-acked

    port, queue = int(sys.argv[1]), sys.argv[2]
    source = RabbitQueueSource(queue, port=port, prefetch=20)
    trio.run((source | tf.sink(slow, n=20)).run)
    """
)


async def test_killed_consumer_messages_come_back_to_another(
    rabbit: RabbitServer, queue: str, tmp_path: Path
) -> None:
    await fill(rabbit.port, queue, [b"%d" % i for i in range(100)])
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen(  # noqa: ASYNC220 - killed below with SIGKILL
        [sys.executable, str(script), str(rabbit.port), queue],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        held: list[bytes] = []
        assert proc.stdout is not None
        with trio.fail_after(20):
            while len(held) < 20:
                line = await trio.to_thread.run_sync(proc.stdout.readline)
                held.append(line.strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    seen: dict[bytes, bool] = {}

    async def handle(message: tf.Message[bytes]) -> tf.Message[bytes]:
        seen[message.data] = message.metadata["redelivered"]
        return message

    source = RabbitQueueSource(queue, port=rabbit.port)
    async with trio.open_nursery() as nursery:
        handle_ = await nursery.start((source | tf.sink(handle, messages=True)).serve)
        await until(lambda: not (len(seen) < 100), 15)
        handle_.stop()
    assert sorted(seen) == sorted(b"%d" % i for i in range(100))
    # what the killed consumer held came back, flagged redelivered; nothing else is
    assert {body for body, again in seen.items() if again} == set(held)
    assert await counts(rabbit.port, queue) == [0]


def test_validation() -> None:
    with pytest.raises(ValueError, match=r"^prefetch=0 must be an integer in 1\.\.4096$"):
        RabbitQueueSource("q", prefetch=0)
    with pytest.raises(
        ValueError,
        match=r"^on_failure='drop' must be one of 'redeliver', 'dead_letter', 'discard' "
        r"\(or the older 'reject', 'requeue', 'requeue_once'\)$",
    ):
        RabbitQueueSource("q", on_failure="drop")  # type: ignore[arg-type]
    assert repr(RabbitQueueSource("q")) == "RabbitQueueSource('q')"
    assert RabbitQueueSource("q").label == "rabbitmq:q"
