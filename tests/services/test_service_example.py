"""examples/service.py against real Redis and RabbitMQ: a broker connection drop, then SIGTERM.

The example runs as a user would run it (a subprocess). Midway, the broker closes every
client connection (``rabbitmqctl close_all_connections``): the RabbitMQ source reconnects on
its own (no restart of the consumer) while the Redis one keeps going. SIGTERM then drains
both: every message is handled (at least once), nothing is left pending in either broker, and
the process exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from connectors.rabbit_server import RabbitServer
from connectors.servers import RedisServer

from trioflow.connectors.rabbitmq import connect as amqp
from trioflow.connectors.rabbitmq import open_channel, publish
from trioflow.connectors.redis import connect as redis

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "service.py"
N = 300

pytestmark = pytest.mark.server


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def reconnected(text: str) -> bool:
    # the source's own warning on the "trioflow" logger (Python's last-resort handler: stderr)
    return "reconnected after" in text


async def wait_for(what: str, check: Any, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not check():  # noqa: ASYNC110 - polling files a subprocess writes
            await trio.sleep(0.05)


async def test_service_example_drop_and_sigterm(
    rabbit_server: RabbitServer, services_redis: RedisServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    log = tmp_path / "service.log"
    async with redis(port=services_redis.port) as client:
        for i in range(N):
            await client.xadd("orders", {"id": str(i), "amount": str(i / 10)})
    with open(log, "w") as log_file:  # noqa: ASYNC230
        proc = subprocess.Popen(  # noqa: ASYNC220 - signalled below
            [
                sys.executable,
                str(EXAMPLE),
                "--redis-port",
                str(services_redis.port),
                "--rabbit-port",
                str(rabbit_server.port),
                "--out",
                str(out),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        await wait_for("ready", lambda: "ready {" in log.read_text())
        async with amqp(port=rabbit_server.port) as conn, open_channel(conn) as ch:
            await publish(ch, "payments", [json.dumps({"id": i}).encode() for i in range(N)])
            await publish(ch, "payments", [b"not json"])
        await wait_for("orders", lambda: len(lines(out / "orders.jsonl")) >= N)
        await wait_for("payments", lambda: len(lines(out / "payments.jsonl")) >= N)

        # the broker drops every connection: the RabbitMQ source reconnects with backoff
        await trio.to_thread.run_sync(rabbit_server.close_all_connections)
        await wait_for("reconnected", lambda: reconnected(log.read_text()))
        async with amqp(port=rabbit_server.port) as conn, open_channel(conn) as ch:
            await publish(
                ch, "payments", [json.dumps({"id": i}).encode() for i in range(N, N + 50)]
            )
        await wait_for("after", lambda: len(lines(out / "payments.jsonl")) >= N + 50)

        proc.send_signal(signal.SIGTERM)
        code = await trio.to_thread.run_sync(proc.wait, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code == 0, text
    assert "SIGTERM: draining" in text
    assert "Orders: stopped restarts=0" in text
    assert "Payments: stopped restarts=0" in text  # the source reconnected by itself
    assert "lost its connection" in text
    assert sorted({o["id"] for o in lines(out / "orders.jsonl")}) == list(range(N))
    assert sorted({p["id"] for p in lines(out / "payments.jsonl")}) == list(range(N + 50))
    async with redis(port=services_redis.port) as client:
        assert (await client.xpending("orders", "service")).pending == 0
    async with amqp(port=rabbit_server.port) as conn, open_channel(conn) as ch:
        assert (await ch.queue_declare("payments", passive=True)).message_count == 0
        assert (await ch.queue_declare("payments.dead", passive=True)).message_count == 1
