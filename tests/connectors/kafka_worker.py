"""One consumer of the crash test (test_kafka_crash.py): records what it processed, drains on
SIGTERM. Run as ``python kafka_worker.py BOOTSTRAP TOPIC GROUP OUTFILE``."""

from __future__ import annotations

import signal
import sys
from typing import TextIO

import trio

import trioflow as tf
from trioflow.connectors.kafka import KafkaSource, record_key


async def main(bootstrap: str, topic: str, group: str, out: TextIO) -> None:
    stop = trio.Event()

    async def handle(m: tf.Message[bytes]) -> None:
        await trio.sleep(0.001)
        out.write(f"{m.metadata['partition']} {m.metadata['offset']} {m.data.decode()}\n")

    async def on_term() -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                stop.set()
                return

    source = KafkaSource(
        topic,
        group,
        bootstrap=bootstrap,
        **{"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
    )
    pipeline = source | tf.process(handle, n=64, partition_by=record_key, messages=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_term)
        await (pipeline | tf.sink(lambda m: None)).run(stop=stop)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    with open(sys.argv[4], "a", buffering=1) as lines:  # a line per message, flushed
        trio.run(main, *sys.argv[1:4], lines)
