"""Poison isolation of RabbitQueueSource on a real broker (a quorum queue counts deliveries).

A message that crashes the process returns, with every other un-acked message, to the queue
when the connection closes, and the quorum queue counts each of them a delivery. The source hands
what comes back redelivered over isolated (a prefetch window of 1 that doubles as groups settle,
alone near ``max_deliveries``), so only the poison reaches ``max_deliveries``; the good messages
that were in flight at a crash are processed. The "crash" here is the pipeline's task being
cancelled mid-message, which closes the connection without an ack, as a killed process would.
"""

from __future__ import annotations

import json

import pytest
import trio

import trioflow as tf
from trioflow.connectors.rabbitmq import RabbitQueueSource, connect, open_channel, publish

from .rabbit_server import RabbitServer, shared_broker

pytestmark = pytest.mark.server

QUORUM = {"x-queue-type": "quorum"}
N = 60
POISON = 5


@pytest.fixture
def rabbit(request: pytest.FixtureRequest) -> RabbitServer:
    return shared_broker(request.config)


async def message_count(port: int, queue: str) -> int:
    async with connect(port=port) as conn, open_channel(conn) as ch:
        count: int = (await ch.queue_declare(queue, passive=True)).message_count
        return count


async def test_a_crashing_message_is_the_only_one_dead_lettered(rabbit: RabbitServer) -> None:
    queue = "qq-poison-isolation"
    source = RabbitQueueSource(queue, port=rabbit.port, arguments=QUORUM, max_deliveries=3)
    async with source.open():
        pass
    async with connect(port=rabbit.port) as conn, open_channel(conn) as ch:
        await ch.queue_purge(queue)
        await ch.queue_purge(f"{queue}.dead")
        await publish(ch, queue, [json.dumps({"id": i}).encode() for i in range(N)])

    saved: set[int] = set()
    crashes = 0
    for _ in range(10):
        done = trio.Event()
        with trio.CancelScope() as crash:

            async def handle(body: bytes, crash: trio.CancelScope = crash) -> int:
                order: int = json.loads(body)["id"]
                await trio.sleep(0.01)
                if order == POISON:
                    crash.cancel()  # the process dies holding everything in flight
                    await trio.sleep_forever()
                return order

            async def save(batch: list[int], done: trio.Event = done) -> None:
                saved.update(batch)
                if len(saved) >= N - 1:
                    done.set()

            source = RabbitQueueSource(
                queue, port=rabbit.port, arguments=QUORUM, prefetch=20, max_deliveries=3
            )
            pipeline = source | tf.process(handle, n=4) | tf.batch(5, 0.05) | tf.sink(save)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipeline.run)
                with trio.move_on_after(20):  # without isolation good ones are dead-lettered
                    await done.wait()
                await trio.sleep(0.3)  # the last acks
                nursery.cancel_scope.cancel()
        if crash.cancelled_caught:
            crashes += 1
        else:
            break
    assert saved == set(range(N)) - {POISON}
    assert crashes == 3  # the poison's deliveries 1..3; the 4th is dead-lettered unhandled
    assert await message_count(rabbit.port, f"{queue}.dead") == 1
    assert await message_count(rabbit.port, queue) == 0
