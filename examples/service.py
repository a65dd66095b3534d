"""A trioflow service: two declarative consumers, Redis Streams and RabbitMQ, one manager.

What it shows: ``tf.Consumer`` classes (topic, concurrency, batching, retry), a
``tf.ConsumerManager`` that starts them in one nursery, restarts one whose broker connection
drops (with backoff, leaving the other alone), reports readiness, and on SIGTERM or SIGINT drains
them in a defined order (the last registered first) so every message taken is processed and
acked before the process exits.

Run it against local servers (see docs/services.md)::

    python examples/service.py --redis-port 6379 --rabbit-port 5672 --out /tmp/service

Each consumer appends what it handled to ``<out>/<topic>.jsonl``; the manager's status is printed
when readiness changes and at exit.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

import trioflow as tf
from trioflow.connectors.rabbitmq import RabbitQueueSource
from trioflow.connectors.redis import RedisStreamSource


class Orders(tf.Consumer):
    """Orders from a Redis stream, written in batches."""

    topic = "orders"
    concurrency = 4
    batch_size = 50
    batch_timeout = 0.5
    retry = tf.Retry(attempts=3, backoff=tf.Backoff.exponential(0.05, max=1.0))

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out

    async def handle(self, data: dict[str, str], ctx: tf.ConsumerContext) -> dict[str, Any]:
        return {"id": int(data["id"]), "amount": float(data["amount"]), "entry": ctx.metadata["id"]}

    async def handle_batch(self, batch: list[dict[str, Any]], ctx: tf.ConsumerContext) -> None:
        lines = "".join(json.dumps(order) + "\n" for order in batch)
        await trio.to_thread.run_sync(_append, self.out / f"{self.topic}.jsonl", lines)


class Payments(tf.Consumer):
    """Payments from a RabbitMQ queue, one at a time per worker; bad JSON is dead-lettered."""

    topic = "payments"
    concurrency = 8

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out

    async def handle(self, data: bytes, ctx: tf.ConsumerContext) -> None:
        payment = json.loads(data)  # a ValueError fails the message: rejected to payments.dead
        payment["redelivered"] = ctx.metadata["redelivered"]
        line = json.dumps(payment) + "\n"
        await trio.to_thread.run_sync(_append, self.out / f"{self.topic}.jsonl", line)


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def source_factory(args: argparse.Namespace) -> Callable[[str], Any]:
    """Topics map to a broker: ``orders`` is a Redis stream, the rest are RabbitMQ queues."""

    def build(topic: str) -> Any:
        if topic == "orders":
            return RedisStreamSource(
                topic, "service", f"service-{args.name}", port=args.redis_port, claim_idle=30.0
            )
        return RabbitQueueSource(topic, port=args.rabbit_port, prefetch=100)

    return build


async def report_readiness(manager: tf.ConsumerManager, scope: trio.CancelScope) -> None:
    """Print the manager's status whenever readiness changes (a probe endpoint would serve it)."""
    last: dict[str, bool] = {}
    with scope:
        while True:
            now = {name: s.ready for name, s in manager.status().items()}
            if now != last:
                print("ready" if manager.ready else "not ready", json.dumps(now), flush=True)
                last = now
            await trio.sleep(0.1)


async def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at startup
    manager = tf.ConsumerManager(
        [Orders(out), Payments(out)],  # drained in reverse: Payments first, then Orders
        source_factory=source_factory(args),
        restart_backoff=tf.Backoff.exponential(0.2, max=5.0, jitter=True),
    )
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.serve)
            reporter = trio.CancelScope()
            nursery.start_soon(report_readiness, manager, reporter)
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: draining", flush=True)
                break
            reporter.cancel()
            manager.stop()  # serve() returns once every consumer has drained
    for name, status in manager.status().items():
        m = status.metrics
        figures = f"acked={m.acked} failed={m.failed} unsettled={m.unsettled}" if m else "-"
        print(f"{name}: {status.state} restarts={status.restarts} {figures}", flush=True)
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--rabbit-port", type=int, default=5672)
    parser.add_argument("--name", default="1", help="this instance's consumer name suffix")
    parser.add_argument("--out", default="examples/out/service")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(trio.run(main, parse(sys.argv[1:])))
