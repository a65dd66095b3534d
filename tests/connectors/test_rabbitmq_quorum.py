"""RabbitQueueSource on a quorum queue (``x-queue-type: quorum``), end to end on a real broker:
per-consumer QoS (quorum queues refuse ``global=True``), ``delivery_count`` from the broker's
``x-delivery-count``, and what a lost connection does to it."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.connectors.rabbitmq import RabbitQueueSource, connect, open_channel, publish

from .rabbit_server import RabbitServer, shared_broker
from .servers import serve_until

pytestmark = pytest.mark.server

QUORUM = {"x-queue-type": "quorum"}


@pytest.fixture
def rabbit(request: pytest.FixtureRequest) -> RabbitServer:
    return shared_broker(request.config)


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> str:
    return f"qq-{request.node.name}"


async def fill(port: int, queue: str, bodies: list[bytes]) -> None:
    async with RabbitQueueSource(queue, port=port, arguments=QUORUM).open():
        pass
    async with connect(port=port) as conn, open_channel(conn) as ch:
        await ch.queue_purge(queue)
        await publish(ch, queue, bodies)


async def counts(port: int, queue: str) -> int:
    async with connect(port=port) as conn, open_channel(conn) as ch:
        count: int = (await ch.queue_declare(queue, passive=True)).message_count
        return count


async def test_a_quorum_queue_is_consumed_and_counts_deliveries(
    rabbit: RabbitServer, queue: str
) -> None:
    await fill(rabbit.port, queue, [b"%d" % i for i in range(100)])
    seen: list[tuple[bytes, Any]] = []

    def handle(message: tf.Message[bytes]) -> tf.Message[bytes]:
        seen.append((message.data, message.metadata.get("delivery_count")))
        if message.data == b"7" and len([s for s in seen if s[0] == b"7"]) < 3:
            raise ValueError("fails twice")
        return message

    source = RabbitQueueSource(
        queue, port=rabbit.port, arguments=QUORUM, on_failure="requeue", requeue_delay=0.05
    )
    report = await serve_until(
        source | tf.process(handle, messages=True) | tf.sink(lambda x: None),
        lambda m: m.acked >= 100,
    )
    assert (report.acked, report.failed) == (100, 2)
    assert [s for s in seen if s[0] == b"7"] == [(b"7", 1), (b"7", 2), (b"7", 3)]
    assert sorted(b for b, n in seen if n == 1) == sorted(b"%d" % i for i in range(100))
    assert await counts(rabbit.port, queue) == 0


async def test_a_lost_connection_on_a_quorum_queue(rabbit: RabbitServer, queue: str) -> None:
    """What the pipeline held when the connection closed comes again, counted by the broker
    (delivery_count 2); nothing is lost, the queue ends empty."""
    await fill(rabbit.port, queue, [b"%d" % i for i in range(200)])
    seen: list[tuple[bytes, int]] = []

    async def slow(message: tf.Message[bytes]) -> tf.Message[bytes]:
        await trio.sleep(0.01)
        seen.append((message.data, message.metadata["delivery_count"]))
        return message

    source = RabbitQueueSource(queue, port=rabbit.port, arguments=QUORUM, prefetch=20)
    closed = False

    def done(m: tf.RunReport) -> bool:
        nonlocal closed
        if not closed and len(seen) >= 40:
            closed = True
            rabbit.close_all_connections()
        return len({b for b, _ in seen}) >= 200 and m.received == m.acked

    report = await serve_until(source | tf.sink(slow, n=5, messages=True), done, timeout=30)
    assert {b for b, _ in seen} == {b"%d" % i for i in range(200)}
    reconnects = report.sources[source.label]["reconnects"]
    assert 1 <= reconnects <= 2  # 2 if the new connection was up before rabbitmqctl finished
    again = [b for b, n in seen if n >= 2]
    assert len(seen) - 200 == len(again)  # each duplicate is a counted redelivery
    assert 0 < len(again) <= 20 * reconnects
    assert await counts(rabbit.port, queue) == 0
